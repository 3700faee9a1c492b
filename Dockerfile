# syntax=docker/dockerfile:1
# One image holding the pipeline's five binaries (audit-producer, audit-enricher,
# audit-sink-clickhouse, audit-sink-cloudwatch, auditctl); docker-compose.yml picks one per
# service with `command:`.
#
#   docker build -t audit-pipeline .

# ---- build: the whole workspace, release profile, dependencies cached between builds ----
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev zlib1g-dev cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
 && mkdir -p /out \
 && cp target/release/audit-producer target/release/audit-enricher \
       target/release/audit-sink-clickhouse target/release/audit-sink-cloudwatch \
       target/release/auditctl /out/

# ---- runtime: slim Debian, TLS roots for AWS and SASL_SSL brokers, an unprivileged user ----
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/audit audit \
 && mkdir -p /var/lib/audit /etc/audit && chown audit /var/lib/audit
COPY --from=build /out/ /usr/local/bin/
COPY sink-clickhouse/queries/ /usr/share/audit-pipeline/queries/
USER audit
WORKDIR /var/lib/audit
ENV AUDIT__LOG__FORMAT=json
CMD ["auditctl", "--help"]
