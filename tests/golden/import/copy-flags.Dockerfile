FROM scratch AS files
COPY --chown=1000:1000 --chmod=0640 conf/ /etc/app/
COPY --chmod=755 bin/tool /usr/local/bin/
COPY --exclude=*.md --exclude=tests/ src/ /src/
COPY --parents app/a/one.txt app/b/two.txt /tree/
COPY --parents ./app/./a/one.txt /pivot/
COPY --link data.txt /data/
ADD vendor.tar.gz /opt/vendor/
ADD --chown=0:0 notes.txt more.txt /docs/
copy *.txt /all-text/
