#!/usr/bin/env bash
# Builds deploy/validate (the Go program that checks the Kubernetes manifests against the
# Kubernetes and KEDA API types) into target/deploy-validate/validate and prints its path.
# tests/deploy.rs runs it; scripts/test.sh runs it early in the background so that the test
# finds the binary built. Go's build cache makes a second build a matter of seconds; the first
# one, from the Go module proxy, takes 2 to 5 minutes on 2 cores.
#
# -trimpath shares the compiled standard library and modules in Go's build cache with the
# other Go builds here (Jaeger, nats-server, Docker Compose); -s -w links no debug tables.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  PATH=$PATH:/usr/local/go/bin
fi
command -v go >/dev/null || { echo "deploy-validate: no \`go\` on PATH or in /usr/local/go/bin" >&2; exit 1; }
out=$root/target/deploy-validate
mkdir -p "$out"
# Two callers at once (the background build and the test): one builds, the other waits.
exec 9>"$out/.lock"
flock 9
(cd "$root/deploy/validate" && go build -trimpath -ldflags="-s -w" -o "$out/validate" .)
echo "$out/validate"
