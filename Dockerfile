# syntax=docker/dockerfile:1
# Multi-stage build: dependencies are compiled in their own cached layer, the runtime image is
# distroless (glibc, no shell) and runs as the non-root user 65532.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Cache dependencies: build a stub crate against the real manifest and lock file first.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
# Touch so cargo rebuilds the crate itself rather than reusing the stub's artifacts.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && cp target/release/mtls-sidecar /mtls-sidecar

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="mtls-sidecar" \
      org.opencontainers.image.description="Validates and hot-reloads cert-manager mTLS credentials in a Kubernetes pod" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /mtls-sidecar /mtls-sidecar
USER 65532:65532
ENTRYPOINT ["/mtls-sidecar"]
