#!/usr/bin/env bash
# Fuzzes the parsers of outside input with libFuzzer (cargo-fuzz): the relay's config file, its -X
# producer properties and environment, the text of each setting, outbox rows, consumed Kafka
# records and WAL envelopes (the targets are in fuzz/src; fuzz/libfuzzer is the cargo-fuzz
# project). Each target runs in turn on its corpus, fuzz/corpus/TARGET, which it grows; then every
# corpus that ran is minimized with `cargo fuzz cmin`. `cargo test -p outbox-fuzz` replays the
# corpora, so an input committed there keeps failing the tests until its bug is fixed.
#
#   scripts/fuzz.sh [TARGET...] [--seconds N]
#
# Default: every target, 600 s each. A crash (a panic, a failed invariant, a sanitizer report, a
# hang past 20 s) stops the script with a non-zero exit naming the input, saved under
# fuzz/libfuzzer/artifacts/TARGET/. Replay it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz/libfuzzer TARGET ARTIFACT
# and once the bug is fixed, copy it into fuzz/corpus/TARGET/.
#
# cargo-fuzz needs `cargo install cargo-fuzz` (it lands in ~/.cargo/bin). It passes rustc
# nightly-only flags (-Z sanitizer, the coverage passes); a stable toolchain accepts them with
# RUSTC_BOOTSTRAP=1, which this script sets. The first build compiles every dependency, librdkafka
# included, with the fuzzer's instrumentation under fuzz/libfuzzer/target: many minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=()
seconds=600
while [[ $# -gt 0 ]]; do
  case $1 in
    --seconds) seconds=${2:-}; shift 2 || shift ;;
    --seconds=*) seconds=${1#--seconds=}; shift ;;
    -h | --help) sed -n '2,/^set /{/^set /d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    -*) echo "unknown option $1 (usage: scripts/fuzz.sh [TARGET...] [--seconds N])" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if [[ ! $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "--seconds takes a whole number of seconds, not '$seconds'" >&2
  exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is not installed: install it with 'cargo install cargo-fuzz'" >&2
  exit 1
fi

export RUSTC_BOOTSTRAP=1
# The Rust code is built with AddressSanitizer; the C code is not. The cc crate would instrument it
# too, but librdkafka's configure then fails: it links its zstd check against the instrumented
# libzstd without the sanitizer's runtime.
export CFLAGS="${CFLAGS:+$CFLAGS }-fno-sanitize=address"
export CXXFLAGS="${CXXFLAGS:+$CXXFLAGS }-fno-sanitize=address"
fuzz=(--fuzz-dir fuzz/libfuzzer)
known=$(cargo fuzz list "${fuzz[@]}")
if [[ ${#targets[@]} -eq 0 ]]; then
  mapfile -t targets <<<"$known"
fi
for target in "${targets[@]}"; do
  if ! grep -qx -- "$target" <<<"$known"; then
    echo "no fuzz target '$target'; the targets are:" $known >&2
    exit 2
  fi
done

for target in "${targets[@]}"; do
  corpus=fuzz/corpus/$target
  artifacts=fuzz/libfuzzer/artifacts/$target
  mkdir -p "$corpus" "$artifacts"
  before=$(ls -A "$artifacts")
  echo "== $target: ${seconds} s on $corpus" >&2
  if ! cargo fuzz run "${fuzz[@]}" "$target" "$corpus" -- \
    -max_total_time="$seconds" -timeout=20 -print_final_stats=1; then
    found=$(comm -13 <(echo "$before") <(ls -A "$artifacts") | sed "s|^|$artifacts/|")
    if [[ -n $found ]]; then
      echo "fuzz target $target crashed on: $found" >&2
    else
      echo "fuzz target $target failed without saving an input (see the output above)" >&2
    fi
    exit 1
  fi
done

# Minimized by edge coverage alone (not by hit counts, which keep several times as many files):
# the corpora are committed. Files are renamed to the SHA-1 of their content.
for target in "${targets[@]}"; do
  echo "== $target: minimizing fuzz/corpus/$target" >&2
  cargo fuzz cmin "${fuzz[@]}" "$target" "fuzz/corpus/$target" -- -use_counters=0
done
