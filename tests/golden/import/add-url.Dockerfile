FROM scratch
ADD https://example.com/archive.tar.gz /opt/
ADD git@github.com:example/repo.git /src/
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://example.com/pinned.txt /opt/pinned.txt
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://example.com/dir/file.bin /downloads/
