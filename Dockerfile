# fnmill's image: the `fnmill` binary and the example functions, built from source.
#
#   docker build -t fnmill .                  (BuildKit: Docker 23+, or DOCKER_BUILDKIT=1)
#   docker run --rm -v $PWD/fnmill.toml:/etc/fnmill/fnmill.toml:ro -p 9464:9464 fnmill
#
# Stages: `runtime-base` (Debian slim, a non-root user, the shared libraries fnmill links),
# `chef` → `plan` → `build` (compiles dependencies in a layer of their own, then fnmill and the
# example components), and `runtime` (the default, last stage). `prebuilt` makes the same
# runtime image from a `fnmill` binary and `functions/*.wasm` that were built outside Docker;
# its build context is a folder holding just those, not this repository:
#
#   docker build --target prebuilt -f Dockerfile -t fnmill <folder with fnmill and functions/>
#
# The binary must be built on Debian bookworm (or with an older glibc) for that to work.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime-base
# libssl3: librdkafka is built against the system OpenSSL (TLS and SASL to Kafka); the CA
# certificates let brokers and databases be verified against public roots; curl runs the
# HEALTHCHECK.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
    && rm -rf /var/lib/apt/lists/*
# A fixed, non-root uid, so a volume or a Kubernetes securityContext can name it.
RUN groupadd --system --gid 10001 fnmill \
    && useradd --system --uid 10001 --gid fnmill --home-dir /var/lib/fnmill --create-home fnmill \
    && mkdir -p /etc/fnmill /opt/fnmill/functions /var/cache/fnmill \
    && chown fnmill:fnmill /var/cache/fnmill
# Compiled components are cached in /var/cache/fnmill (the default `runtime.cache_dir` under
# this XDG_CACHE_HOME): mount a volume there and a restarted container does not recompile.
ENV XDG_CACHE_HOME=/var/cache
# Where the HEALTHCHECK asks; change it with the config's `[admin] listen`.
ENV FNMILL_HEALTHCHECK_URL=http://127.0.0.1:9464/healthz
WORKDIR /var/lib/fnmill
USER 10001:10001
# The admin endpoint (`[admin] listen = "0.0.0.0:9464"`): /healthz, /readyz, /metrics.
EXPOSE 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD curl -fsS -o /dev/null "$FNMILL_HEALTHCHECK_URL" || exit 1
ENTRYPOINT ["fnmill"]
CMD ["run", "-c", "/etc/fnmill/fnmill.toml"]

# ---------------------------------------------------------------------------------------------
# A binary and components built outside Docker (e.g. by the test suite); see the top.
FROM runtime-base AS prebuilt
COPY fnmill /usr/local/bin/fnmill
COPY functions/ /opt/fnmill/functions/

# ---------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS chef
# librdkafka is compiled by rdkafka-sys (make, a C/C++ compiler) against the system OpenSSL.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
RUN rustup target add wasm32-wasip2 \
    && cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# The dependency recipe: changes only when a Cargo.toml or Cargo.lock does.
FROM chef AS plan
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=plan /src/recipe.json recipe.json
# Dependencies only (wasmtime, librdkafka, ...): the slow part, cached as its own layer.
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin fnmill \
    && (cd examples && cargo build --release --locked --target wasm32-wasip2) \
    && mkdir -p /out/functions \
    && cp target/release/fnmill /out/fnmill \
    && cp examples/target/wasm32-wasip2/release/*.wasm /out/functions/

# ---------------------------------------------------------------------------------------------
FROM runtime-base AS runtime
COPY --from=build /out/fnmill /usr/local/bin/fnmill
COPY --from=build /out/functions/ /opt/fnmill/functions/
