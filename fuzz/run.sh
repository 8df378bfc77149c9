#!/usr/bin/env bash
# Fuzzes one target for a while, then folds what it found into the committed corpus.
#
#   fuzz/run.sh jsonl_event 600      # seconds
#   fuzz/run.sh config_load 600
#
# Needs nightly Rust and cargo-fuzz (`rustup toolchain install nightly --profile minimal`,
# `cargo install cargo-fuzz`). One fuzzing process (the machine may be shared). config_load runs
# in a network namespace of its own (`unshare -rn`): a fuzzed `admin.listen` makes validation
# bind that address, which must not touch the machine's real ports.
#
# Exit status: 0 when the run found nothing and the corpus was updated; libFuzzer's own status
# (the failing input is in fuzz/artifacts/<target>/) when it found a crash, a property broken or
# a leak; 2 on a usage error.
set -euo pipefail

usage="usage: fuzz/run.sh <jsonl_event|config_load> [seconds]"
target=${1:?$usage}
seconds=${2:-600}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "seconds must be a positive whole number, not '$seconds'; $usage" >&2
  exit 2
fi
cd "$(dirname "$0")/.."

case "$target" in
  jsonl_event) sandbox=(); dict=() ;;
  config_load) sandbox=(unshare -rn); dict=(-dict=fuzz/config_load.dict) ;;
  *) echo "unknown target: $target (jsonl_event or config_load)" >&2; exit 2 ;;
esac
seeds=fuzz/seeds/$target
corpus=fuzz/corpus/$target
mkdir -p "$corpus" "fuzz/artifacts/$target"

# No sanitizer: the code under test is safe Rust (ASan halves the rate for little); debug
# assertions on, so overflows and broken invariants fail as they would in a test build.
cargo +nightly fuzz build -s none -a "$target"
bin=fuzz/target/x86_64-unknown-linux-gnu/release/$target

# Everything temporary in one folder, removed however the script ends: the new finds, the merge
# result, and (through TMPDIR) the folders the targets make for the files configs name.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/found" "$work/merged" "$work/tmp"
export TMPDIR=$work/tmp

echo "fuzzing $target for $seconds s"
"${sandbox[@]}" "$bin" -max_total_time="$seconds" -print_final_stats=1 "${dict[@]}" \
  -artifact_prefix="fuzz/artifacts/$target/" \
  "$work/found" "$corpus" "$seeds"

# Minimize on edges alone (not hit counts), keeping only what the seeds do not already cover,
# with the greedy set cover (fewer files than the plain merge, which takes inputs smallest
# first): hundreds of small files instead of thousands. The merge writes into its first folder,
# which starts as a copy of the seeds so they count as covered; they are taken out afterwards.
find "$seeds" -maxdepth 1 -type f -exec cp -t "$work/merged" {} +
"${sandbox[@]}" "$bin" -set_cover_merge=1 -use_counters=0 "$work/merged" "$corpus" "$work/found"
find "$seeds" -maxdepth 1 -type f -printf '%f\0' |
  (cd "$work/merged" && xargs -0 -r rm -f --)

# Replace the corpus only now that the new one is complete (it may be empty: the seeds may
# cover everything).
rm -rf "$corpus"
mkdir -p "$corpus"
find "$work/merged" -maxdepth 1 -type f -exec cp -t "$corpus" {} +
echo "$corpus: $(find "$corpus" -type f | wc -l) inputs," \
  "$(du -sb "$corpus" | cut -f1) bytes"
