#!/usr/bin/env bash
# Runs the embedded quickstart on a fresh machine: installs the build dependencies if needed,
# builds the example function from source, runs fnmill on examples/quickstart/fnmill.toml (a
# JSON Lines file in, JSON Lines files out; no broker, no database) and shows what came out.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/build-deps.sh
echo "==> Building the quickstart function (Rust → wasm32-wasip2 component)"
(cd examples && cargo build --release --target wasm32-wasip2 --quiet)

echo "==> Running fnmill on examples/quickstart/fnmill.toml"
rm -rf examples/quickstart/out
cargo run --quiet -- run -c examples/quickstart/fnmill.toml

out=examples/quickstart/out
for f in valid invalid dead-letter; do
  echo
  echo "==> $out/$f.jsonl ($(wc -l < "$out/$f.jsonl") events)"
  cat "$out/$f.jsonl"
done
