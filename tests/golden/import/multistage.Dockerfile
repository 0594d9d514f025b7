# A FROM-scratch multistage build: stages by name and by index.
ARG APP=demo
FROM scratch AS sources
WORKDIR /src
COPY app/ ./
COPY README.md ./docs/

FROM sources AS build
WORKDIR lib
ENV MODE=release
COPY --from=sources /src/README.md ./README.copy

FROM scratch
ARG APP
COPY --from=build /src/ /opt/${APP}/
COPY --from=0 /src/docs/README.md /README
ENV APP=$APP
