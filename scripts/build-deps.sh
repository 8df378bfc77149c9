#!/usr/bin/env bash
# What building fnmill needs beyond Rust, installed from Debian's packages if missing: the
# OpenSSL headers and pkg-config (librdkafka is built with TLS and SASL, against the system
# OpenSSL; the openssl tool makes the test certificates), and the wasm32-unknown-unknown
# (what `fnmill build` builds Rust functions for) and wasm32-wasip2 (`--wasi`, the examples)
# targets.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/apt.sh
. scripts/apt.sh

apt_install libssl-dev pkg-config openssl
for target in wasm32-unknown-unknown wasm32-wasip2; do
  if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
  fi
done
