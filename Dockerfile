# Tally's container image: one `tally` binary for every role (`tally ingest`, `tally aggregator`,
# `tally enforcer`, `tally query`, `tally collector`, `tally billing-sync`, `tally admin …`,
# `tally dev`). Build: docker build -t tally .   Run: docker run tally enforcer --help
#
# Build stage: the workspace's pinned toolchain; librdkafka is built from source (vendored) with
# the C toolchain the image already has.
FROM rust:1.95-bookworm AS build
# No debug info in the image's binary: 43 MB instead of 246 MB.
ENV CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tally --bin tally \
    && install -D -m 0755 target/release/tally /out/tally

# Runtime stage: Debian slim with CA certificates (TLS to Stripe, ClickHouse Cloud, managed
# Kafka), no shell tools needed: `tally probe URL` is the health check.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tally \
    && useradd --system --uid 10001 --gid tally --no-create-home --shell /usr/sbin/nologin tally
COPY --from=build /out/tally /usr/local/bin/tally
USER 10001:10001
# ingest, aggregator, enforcer HTTP and gRPC, billing-sync, collector, query (defaults; each
# role's `listen` moves its own).
EXPOSE 8080 8081 8082 8083 8084 8085 8086
ENTRYPOINT ["/usr/local/bin/tally"]
CMD ["--help"]
