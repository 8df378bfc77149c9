#!/usr/bin/env bash
# Runs the workspace's test binaries in two lanes at once, then its doc tests.
#
#   scripts/run-tests.sh [LOG]
#
# `cargo test` runs one test binary at a time. Here most of them spend their time waiting on a
# broker, a database or a child process, while two (polyglot, which builds JavaScript and Python
# functions and compiles them, and deploy, which renders and validates the Kubernetes manifests)
# keep both cores busy. Those two run in one lane, every other binary in the other, so the
# waiting overlaps the compiling. The binaries are the ones `cargo test --workspace --no-run`
# built (it builds them now if they are not); each runs in its package's directory, as under
# `cargo test`.
#
# Each binary's output is printed whole when it ends, with how long it took, and appended to
# LOG (default target/test-output.log). A binary that exits non-zero without a test summary
# (it crashed, or did not start) counts as one failed test. Exit status: 0 when every binary
# and the doc tests passed, 1 otherwise.
#
# FNMILL_TEST_HEAVY (default "polyglot deploy") names the test targets of the first lane.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
log=${1:-target/test-output.log}
heavy=" ${FNMILL_TEST_HEAVY:-polyglot deploy} "
out=target/test-logs
rm -rf "$out"
mkdir -p "$out"

# name, package directory and executable of every test binary, in cargo's order.
if ! cargo test --workspace --no-run --message-format=json-render-diagnostics \
    > "$out/artifacts.json" 2> "$out/build.log"; then
  tee -a "$log" < "$out/build.log"
  echo "cargo test --no-run: 1 failed (the test binaries do not build)" | tee -a "$log"
  exit 1
fi
python3 - "$out/artifacts.json" > "$out/binaries.tsv" <<'EOF' || exit 1
import json, os, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        kind = m["target"]["kind"][0]
        name = m["target"]["name"] if kind == "test" else kind + ":" + m["target"]["name"]
        print(name, os.path.dirname(m["manifest_path"]), m["executable"], sep="\t")
EOF

# Prints the line that counts a run as one failed test when it exited non-zero (`$2`) without
# a failed test summary in its output (`$3`): it crashed, or did not build or start.
no_summary() {
  if [ "$2" != 0 ] && ! grep -Eq '^test result: FAILED' "$3"; then
    echo "test binary $1: 1 failed (exit status $2, no test summary)"
  fi
}

# Runs one binary; prints its output and timing whole (under a lock, so the lanes' reports do
# not interleave) and appends them to the log.
run_one() {
  local name=$1 dir=$2 exe=$3 file start code
  file=$out/${name//[:\/]/_}.log
  start=$SECONDS
  (cd "$dir" && CARGO_MANIFEST_DIR=$dir "$exe") < /dev/null > "$file" 2>&1
  code=$?
  {
    echo "     Running $name ($(basename "$exe"))"
    cat "$file"
    no_summary "$name" "$code" "$file"
    echo "     $name took $((SECONDS - start)) s"
  } > "$file.report"
  (
    flock 9
    cat "$file.report"
    cat "$file.report" >> "$log"
  ) 9> "$out/.print-lock"
  return "$code"
}

# The first lane: the FNMILL_TEST_HEAVY binaries, in that order (the longest first).
heavy_lane() {
  local want name dir exe failed=0
  for want in $heavy; do
    while IFS=$'\t' read -r name dir exe; do
      [ "$name" = "$want" ] && { run_one "$name" "$dir" "$exe" || failed=1; }
    done < "$out/binaries.tsv"
  done
  return $failed
}

# The second lane: every other binary, in cargo's order.
rest_lane() {
  local name dir exe failed=0
  while IFS=$'\t' read -r name dir exe; do
    case "$heavy" in *" $name "*) continue ;; esac
    run_one "$name" "$dir" "$exe" || failed=1
  done < "$out/binaries.tsv"
  return $failed
}

heavy_lane &
heavy_pid=$!
status=0
rest_lane || status=1
wait "$heavy_pid" || status=1

echo "     Running doc tests"
cargo test --workspace --doc --quiet > "$out/doc.log" 2>&1
code=$?
no_summary "doc tests" "$code" "$out/doc.log" >> "$out/doc.log"
[ "$code" = 0 ] || status=1
tee -a "$log" < "$out/doc.log"
exit $status
