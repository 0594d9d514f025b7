FROM scratch AS base
LABEL org.opencontainers.image.title="demo" "multi word"="a value" quoted="say \"hi\""
EXPOSE 80 443/tcp 53/udp 8000-8010
VOLUME ["/data", "/logs"]
VOLUME /cache /tmp/x
USER app:app
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=5m --timeout=3s --start-period=1m30s --start-interval=500ms --retries=4 \
  CMD ["/bin/check", "--quick"]
MAINTAINER Jane Doe <jane@example.com>
ONBUILD ADD . /app/src
ONBUILD RUN make -C /app/src

FROM base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
CMD ["--help"]
ENTRYPOINT /bin/tool --verbose
HEALTHCHECK NONE

FROM base AS cmd-kept
CMD run-me
ENTRYPOINT ["/entry"]
