# brokk MQTT broker.
#
#   docker build -t brokk .          (or scripts/docker-build, which also works where the build
#                                     container cannot reach crates.io or pull base images)
#   docker run -p 1883:1883 -p 8080:8080 -p 9883:9883 brokk
#
# Configuration is read from /etc/brokk/broker.toml (the repository's broker.toml); mount your
# own over it, e.g. -v $PWD/broker.toml:/etc/brokk/broker.toml:ro. For TLS on 8883, mount the
# certificates too and enable [listeners.tls] in that file.
#
# Build arguments:
#   RUST_IMAGE, RUNTIME_IMAGE  base images (scripts/docker-base-images makes them locally
#                              where nothing can be pulled)
#   CARGO_OFFLINE=1            build from target/docker-vendor (`cargo vendor` output) instead
#                              of fetching crates from crates.io (scripts/docker-build decides)
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# Lets scripts/docker-build find (and remove) untagged images this Dockerfile left behind.
LABEL org.brokk.stage=build
ARG CARGO_OFFLINE=
# Container builds need no debuginfo (the release profile's debug = 1 is for local profiling);
# this keeps the binary small and the compile shorter.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_TERM_COLOR=never
WORKDIR /build

# Dependencies first, against stub sources, so editing src/ reuses this layer. `targe[t]`
# matches only when the context holds target/docker-vendor (see .dockerignore); its contents
# land in /build/docker-vendor. Nothing else of target/ is ever in the context.
COPY Cargo.toml Cargo.lock targe[t] ./
RUN set -eu; \
    if [ -n "$CARGO_OFFLINE" ]; then \
      [ -d docker-vendor ] || { echo "CARGO_OFFLINE set but target/docker-vendor is missing (run cargo vendor target/docker-vendor)" >&2; exit 1; }; \
      mkdir -p .cargo; \
      printf '[source.crates-io]\nreplace-with = "vendored"\n\n[source.vendored]\ndirectory = "/build/docker-vendor"\n\n[net]\noffline = true\n' > .cargo/config.toml; \
    else \
      rm -rf docker-vendor; \
    fi; \
    mkdir -p src; \
    echo 'fn main() {}' > src/main.rs; \
    touch src/lib.rs; \
    cargo build --release --locked; \
    rm -rf src target/release/brokk target/release/deps/brokk-* target/release/deps/libbrokk-* \
      target/release/.fingerprint/brokk-*

COPY broker.toml ./
COPY src ./src
# The web console's close-reason sentences are compiled in from this file.
COPY docs/close-reasons.md ./docs/close-reasons.md
RUN touch src/main.rs src/lib.rs && cargo build --release --locked && \
    ./target/release/brokk --config broker.toml --check-config

FROM ${RUNTIME_IMAGE}
LABEL org.brokk.stage=runtime
RUN groupadd --system --gid 10001 brokk && \
    useradd --uid 10001 --gid brokk --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin brokk
COPY --from=build /build/target/release/brokk /usr/local/bin/brokk
COPY broker.toml /etc/brokk/broker.toml
# The durable session store lives in a volume, writable by brokk's user.
RUN mkdir -p /var/lib/brokk && chown 10001:10001 /var/lib/brokk
ENV BROKK_STORAGE__PATH=/var/lib/brokk
VOLUME /var/lib/brokk
USER 10001:10001
# MQTT, MQTT over TLS (when [listeners.tls] is configured), MQTT over WebSocket
# (ws://HOST:8080/mqtt), Prometheus metrics. The admin API
# listens on the container's loopback only (bind it to 0.0.0.0 with a token_file to publish it).
EXPOSE 1883 8883 8080 9883
# brokk shuts down gracefully (exit 0) on SIGTERM, which `docker stop` sends.
STOPSIGNAL SIGTERM
# GET /v1/health on the admin API (127.0.0.1:9884 inside the container; no token needed): a
# probe that opens no MQTT connection, so it is neither logged nor counted as a close.
# `docker exec CONTAINER brokk ctl sessions` (kick, revoke, closes, ...) uses the same API. A
# configuration with [admin] enabled = false needs `docker run --no-healthcheck` (or its own).
HEALTHCHECK --interval=15s --timeout=5s --start-period=5s --retries=3 \
  CMD ["brokk", "ctl", "health"]
ENTRYPOINT ["brokk"]
CMD ["--config", "/etc/brokk/broker.toml"]
