# syntax=docker/dockerfile:1
# Multi-stage build: dependencies are compiled in their own cached layer, the runtime image is
# distroless (glibc, no shell, no package manager) and runs as the non-root user 65532.
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
# Touch so cargo rebuilds the crate itself rather than reusing the stub's artifacts.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && cp target/release/mtls-sidecar /mtls-sidecar

# The same Debian release as the build stage, so the binary finds the glibc it was linked against.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="mtls-sidecar" \
      org.opencontainers.image.description="Validates and hot-reloads cert-manager mTLS credentials in a Kubernetes pod" \
      org.opencontainers.image.source="https://github.com/example/mtls-sidecar" \
      org.opencontainers.image.url="https://github.com/example/mtls-sidecar" \
      org.opencontainers.image.documentation="https://github.com/example/mtls-sidecar/blob/main/README.md" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /mtls-sidecar /mtls-sidecar
# Numeric, so kubelet can verify `runAsNonRoot` without an /etc/passwd lookup.
USER 65532:65532
# Admin endpoint (/healthz, /readyz, /status, /metrics) and the default `server` listener.
EXPOSE 9901 8443
ENTRYPOINT ["/mtls-sidecar"]
