#!/usr/bin/env bash
# What building fnmill needs beyond Rust, installed from Debian's packages if missing: the
# OpenSSL headers and pkg-config (librdkafka is built with TLS and SASL, against the system
# OpenSSL; the openssl tool makes the test certificates), and the wasm32-wasip2 target.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/apt.sh
. scripts/apt.sh

apt_install libssl-dev pkg-config openssl
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
