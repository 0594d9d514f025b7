FROM scratch
ADD https://example.com/archive.tar.gz /opt/
ADD git@github.com:example/repo.git /src/
ADD https://github.com/example/repo.git#v1.2.0:docs /docs/
ADD --keep-git-dir=true https://example.com/r.git?ref=main&subdir=lib /lib/
ADD https://example.com/r.git#1098e05e93c787431dd85695ea5905a4bf7fba0c /pinned/
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://example.com/pinned.txt /opt/pinned.txt
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://example.com/dir/file.bin /downloads/
