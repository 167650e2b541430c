# syntax=docker/dockerfile:1
# Build: docker build -t scoregate .   Run: docker run -p 8443:8443 scoregate demo --listen 0.0.0.0:8443
# `--build-arg BIN=host` takes the binary from the build context's target/release/scoregate (built
# on the host, e.g. where the rust image cannot be pulled) instead of the build stage; the runtime
# stage, what runs, is the same either way.
ARG BIN=build

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits reuse the cached dependency layer.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/request_path.rs \
    && cargo build --release --locked && rm -rf src benches
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin scoregate

FROM scratch AS host
COPY target/release/scoregate /src/target/release/scoregate

# hadolint ignore=DL3006
FROM ${BIN} AS binary

# Runtime: distroless (glibc, CA certificates, no shell, no package manager), non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=binary /src/target/release/scoregate /usr/local/bin/scoregate
USER 65532:65532
# TLS, plain HTTP, admin (metrics, probes). Kubernetes probes replace a HEALTHCHECK.
EXPOSE 8443 8080 9100
ENTRYPOINT ["/usr/local/bin/scoregate"]
CMD ["serve", "--config", "/etc/scoregate/scoregate.toml"]
