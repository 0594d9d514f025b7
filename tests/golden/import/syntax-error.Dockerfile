FROM scratch
COPY onlyone
