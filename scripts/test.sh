#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs the build dependencies (OpenSSL
# headers, pkg-config, the wasm32-unknown-unknown and wasm32-wasip2 targets, the JavaScript and Python function tools),
# checks formatting (cargo fmt) and lints (cargo clippy, warnings denied), then runs every test
# of the workspace (unit and integration, the test binaries in two lanes: scripts/run-tests.sh;
# the integration tests build their wasm guests from source), the example functions' and the
# Rust SDK's own unit tests, and prints one summary line (a failed format or lint check counts
# as a failure).
set -uo pipefail
cd "$(dirname "$0")/.."

# How long each phase took, printed before the summary: where a cold run's time goes.
timings=()
mark=$SECONDS
took() {
  timings+=("$1 $((SECONDS - mark)) s")
  mark=$SECONDS
}

./scripts/build-deps.sh || exit 1
took "build deps"

# The longest set-up steps on a new machine run in the background while the other services
# are set up, the lints run and the test binaries compile, and the tests wait for them below: Jaeger's build from the Go
# module proxy (7 to 10 minutes; nothing to build when it is cached or pointed elsewhere) and
# Docker's (Debian's engine, Compose v2 built from the Go module proxy, a locally made base
# image: 5 to 6 minutes). Their output goes to target/jaeger-build.log and
# target/docker-setup.log.
mkdir -p target
jaeger_build=""
if [ -z "${FNMILL_TEST_JAEGER_QUERY_URL:-}" ]; then
  ./scripts/jaeger.sh build > target/jaeger-build.log 2>&1 &
  jaeger_build=$!
fi
./scripts/docker.sh start > target/docker-setup.log 2>&1 &
docker_setup=$!
# deploy/validate (Go, 2 to 5 minutes the first time), which tests/deploy.rs runs: built now so
# that the test finds it built (it waits for this build if it is still going).
./scripts/deploy-validate.sh > target/deploy-validate-build.log 2>&1 &

# PostgreSQL, Redis and RabbitMQ (Debian packages), started unless already up or pointed
# elsewhere by FNMILL_TEST_*_URL.
./scripts/services.sh || exit 1
took "PostgreSQL/Redis/RabbitMQ"

# The JavaScript/TypeScript and Python function tools (npm, pip; pinned, cached in
# ~/.cache/fnmill-tools). The tests find them there by themselves; installing them up front
# keeps their progress visible.
./scripts/polyglot-tools.sh || exit 1
took "JavaScript and Python tools"

# Services this run starts are stopped when it ends; one already running (or pointed at by
# FNMILL_TEST_*) is used and left alone, so a second run or a developer's own broker keeps its.
started=()
stop_started() {
  local s
  for s in "${started[@]}"; do ./scripts/"$s".sh stop; done
}
trap stop_started EXIT
# Starts scripts/$1.sh's service unless it answers already, and loads its environment.
service() {
  local before
  before=$(./scripts/"$1".sh env)
  ./scripts/"$1".sh start || exit 1
  [ -n "$before" ] || started+=("$1")
  eval "$(./scripts/"$1".sh env)"
}

# Apache Kafka (jars from Maven Central, KRaft, no Docker), unless FNMILL_TEST_KAFKA_BOOTSTRAP
# points elsewhere.
service kafka
took "Kafka"

# NATS for the IO tier's tests (nats-server built once from the Go module proxy, cached in
# ~/.cache/fnmill-nats), unless FNMILL_TEST_NATS_URL points elsewhere. The tests that stop
# NATS on purpose run servers of their own from the same binary.
service nats
took "NATS"


# A one-off build: incremental state would only add gigabytes to a clean clone's target/.
export CARGO_INCREMENTAL=0
mkdir -p target
avail_kb=$(df -Pk target | awk 'NR == 2 {print $4}')
if [ "${avail_kb:-0}" -lt 4000000 ]; then
    echo "warning: only $((avail_kb / 1024)) MiB free for target/; a clean build needs about 3 GiB" >&2
fi
log=target/test-output.log
: > "$log"
status=0

echo "==> cargo fmt --check"
if ! cargo fmt --all -- --check >> "$log" 2>&1; then
  echo "cargo fmt --check: 1 failed (run cargo fmt)" | tee -a "$log"
  status=1
fi
took "cargo fmt"
echo "==> cargo clippy (workspace, all targets, warnings denied)"
if ! cargo clippy --workspace --all-targets --quiet -- -D warnings 2>&1 | tee -a "$log"; then
  echo "cargo clippy: 1 failed" | tee -a "$log"
  status=1
fi
took "cargo clippy"

# The test binaries are compiled now, while what runs in the background may still be busy; a
# compile error shows again in the run below, which counts it.
echo "==> cargo test --no-run (workspace)"
cargo test --workspace --no-run --quiet >> "$log" 2>&1 || true
took "cargo test --no-run"

# Docker (Debian's engine, Compose v2, a locally made base image) for tests/stack.rs, set up in
# the background since the start. If the engine cannot start here, the stack test prints why
# (one line) and the rest still runs.
if wait "$docker_setup"; then
  cat target/docker-setup.log >&2
  eval "$(./scripts/docker.sh env)"
else
  cat target/docker-setup.log >&2
  why=$(grep '^docker: ' target/docker-setup.log | tail -1)
  export FNMILL_TEST_DOCKER_UNAVAILABLE="${why:-scripts/docker.sh start failed (target/docker-setup.log)}"
  echo "warning: $FNMILL_TEST_DOCKER_UNAVAILABLE" >&2
fi
took "Docker (what was left of its set-up)"

# Jaeger (v1.76.0, built once from the Go module proxy and cached in ~/.cache/fnmill-jaeger)
# for the tracing tests, unless FNMILL_TEST_JAEGER_* point elsewhere.
if [ -n "$jaeger_build" ] && ! wait "$jaeger_build"; then
  tail -20 target/jaeger-build.log >&2
  echo "jaeger: the build failed (target/jaeger-build.log)" >&2
  exit 1
fi
service jaeger
took "Jaeger (what was left of its build, and its start)"

# The test binaries in two lanes (polyglot and deploy, which keep the cores busy, beside all the
# others, which mostly wait), then the doc tests: see scripts/run-tests.sh.
echo "==> cargo test (workspace: test binaries in two lanes, then doc tests)"
./scripts/run-tests.sh "$log" || status=1
took "cargo test (workspace)"
# `cargo test` in a workspace of its own; a run that fails without a test summary (it did not
# build) counts as one failed test.
own_workspace_tests() {
  local out
  out=$(cd "$1" && cargo test --quiet 2>&1)
  local code=$?
  tee -a "$log" <<<"$out"
  if [ "$code" != 0 ] && ! grep -Eq '^test result: FAILED' <<<"$out"; then
    echo "test binary $1: 1 failed (exit status $code, no test summary)" | tee -a "$log"
  fi
  return "$code"
}
echo "==> cargo test (example functions, host target)"
own_workspace_tests examples || status=1
took "examples"
echo "==> cargo test (Rust function SDK, host target)"
own_workspace_tests sdk || status=1
took "SDK"

# Counted from the runners' summary lines and this script's own "…: 1 failed" lines only: a
# test's output may well say "3 failed" about something else.
counted=$(grep -E '^(test result: |cargo fmt --check: |cargo clippy: |cargo test --no-run: |test binary [^:]+: )' "$log")
passed=$(grep -Eo '[0-9]+ passed' <<<"$counted" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' <<<"$counted" | awk '{s+=$1} END {print s+0}')
echo
took_line=$(printf '%s, ' "${timings[@]}")
echo "Took ${SECONDS} s: ${took_line%, }"
echo "Summary: ${passed} passed, ${failed} failed"
if [ "$failed" != 0 ]; then status=1; fi
exit $status
