FROM scratch AS sources
COPY . /src

FROM scratch
ARG JOBS=2
ENV CC=clang
RUN --mount=type=cache,target=/root/.cache,id=build-$JOBS \
    --mount=type=secret,id=token,target=/run/secrets/token \
    --mount=type=bind,from=0,source=/src,target=/mnt \
    --mount=type=tmpfs,target=/tmp \
    --mount=type=ssh \
    make -j$JOBS CC=$CC
RUN --network=none --security=sandbox ["/bin/echo", "exec", "form"]
RUN --network=host echo "uses the host network"
RUN echo one \
    && echo two \
    # a comment inside the continuation

    && echo three
