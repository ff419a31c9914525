# Multi-stage build for machines with Docker: dependencies are compiled in their own cached
# layer; the runtime image is `FROM scratch` with the release binary, the shared libraries it
# links (glibc, libm, libgcc_s, from the build stage: image/rootfs.sh) and the CA certificates,
# running as the non-root user 65532. It is the image that .ci/image builds without Docker (the
# runtime stage is image/Containerfile's).
#
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     -t ghcr.io/example/mtls-sidecar:0.1.0 .

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Cache dependencies: build a stub crate against the real manifest and lock file first; this
# layer is rebuilt only when Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
COPY image/rootfs.sh ./image/
# Touch so cargo rebuilds the crate itself rather than reusing the stub's artifacts.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && sh image/rootfs.sh target/release/mtls-sidecar /rootfs

FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="mtls-sidecar" \
      org.opencontainers.image.description="Validates and hot-reloads cert-manager mTLS credentials in a Kubernetes pod" \
      org.opencontainers.image.source="https://github.com/example/mtls-sidecar" \
      org.opencontainers.image.url="https://github.com/example/mtls-sidecar" \
      org.opencontainers.image.documentation="https://github.com/example/mtls-sidecar/blob/main/README.md" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /rootfs/mtls-sidecar /mtls-sidecar
COPY --from=build /rootfs/lib /lib
COPY --from=build /rootfs/lib64 /lib64
COPY --from=build /rootfs/etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /rootfs/etc/nsswitch.conf /etc/nsswitch.conf
COPY --from=build --chown=65532:65532 /rootfs/tmp /tmp
# mimalloc, the binary's allocator: commit memory as it is used and give freed memory back at
# once, so the resident set follows the open connections (README "Sizing").
ENV MIMALLOC_ARENA_EAGER_COMMIT=0 \
    MIMALLOC_PURGE_DELAY=0
# Numeric, so kubelet can verify `runAsNonRoot` without an /etc/passwd lookup.
USER 65532:65532
# Admin endpoint (/healthz, /readyz, /status, /metrics) and the default `server` listener.
EXPOSE 9901 8443
ENTRYPOINT ["/mtls-sidecar"]
