# syntax=docker/dockerfile:1
# Build: docker build -t scoregate .   Run: docker run -p 8443:8443 scoregate demo --listen 0.0.0.0:8443
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

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin scoregate
COPY --from=build /src/target/release/scoregate /usr/local/bin/scoregate
USER 10001:10001
EXPOSE 8443 9100
ENTRYPOINT ["/usr/local/bin/scoregate"]
CMD ["serve", "--config", "/etc/scoregate/scoregate.toml"]
