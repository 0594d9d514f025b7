FROM scratch
ADD https://example.com/archive.tar.gz /opt/
ADD git@github.com:example/repo.git /src/
