#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECS seconds (default 600) on a scratch copy of its committed
# corpus (fuzz/corpus/<target>, read-only here), and stops at the first finding (its input is
# left in fuzz/artifacts/<target>/). Uses a nightly toolchain with AddressSanitizer when one is
# installed, else stable with RUSTC_BOOTSTRAP=1 and no sanitizer (the code forbids `unsafe`).
#   scripts/fuzz.sh [SECS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-600}"
shift || true
command -v cargo-fuzz >/dev/null || cargo install --locked --quiet cargo-fuzz
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly) sanitizer=()
else
  export RUSTC_BOOTSTRAP=1
  toolchain=() sanitizer=(-s none)
fi
# Short runs (the test script's smoke run) build without optimizations: the build is the larger
# part of their time (2.9 instead of 6.5 minutes on 2 cores); long runs want the speed.
if [ "$secs" -lt 120 ]; then
  sanitizer+=(--dev)
fi
targets=("$@")
((${#targets[@]})) || mapfile -t targets < <(cargo fuzz list)
cargo "${toolchain[@]}" fuzz build "${sanitizer[@]}" >/dev/null
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "corpus/$t"
  out="$(cargo "${toolchain[@]}" fuzz run "${sanitizer[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1)" || {
    echo "$out" | tail -40
    echo "fuzz target $t FAILED" >&2
    exit 1
  }
  runs="$(echo "$out" | sed -n 's/^stat::number_of_executed_units: *//p')"
  echo "fuzz $t: ${runs:-?} runs in ${secs}s, no finding"
done
