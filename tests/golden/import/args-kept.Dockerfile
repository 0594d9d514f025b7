ARG REGISTRY=docker.io/library
ARG BASE_TAG=1.36
ARG PREFIX=/opt
ARG FALLBACK
FROM scratch AS build
ARG PREFIX
ARG FALLBACK
ARG MODE=release
WORKDIR ${PREFIX}/src
COPY --chmod=0644 src/ ${PREFIX}/src/
ENV PATH_HINT="${PREFIX}/bin:$$PATH" NESTED=${FALLBACK:-${PREFIX}/default} PRICE='$5 ${PREFIX}'
LABEL org.example.mode=$MODE
RUN --mount=type=cache,target=/cache/${MODE},id=cache-${MODE} echo "$MODE in ${PREFIX}"
COPY <<EOF ${PREFIX}/etc/build.conf
mode=${MODE}
prefix=${PREFIX:+set}
literal=\${PREFIX}
EOF

FROM ${REGISTRY}/busybox:${BASE_TAG} AS app
ARG PREFIX
COPY --from=build ${PREFIX}/ ${PREFIX}/
USER ${PREFIX:+1000}
