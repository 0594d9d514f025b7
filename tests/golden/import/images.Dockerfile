FROM --platform=$BUILDPLATFORM golang:1.22 AS builder
WORKDIR /go/src
COPY . .
RUN go build -o /out/app ./cmd/app

FROM alpine:3.20 AS unused
RUN apk add --no-cache ca-certificates

FROM scratch
COPY --from=builder /out/app /app
COPY --from=docker.io/library/busybox:1.36 /bin/busybox /busybox
ENTRYPOINT ["/app"]
