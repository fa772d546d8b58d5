#!/usr/bin/env bash
# Frontend memory benchmark: parses and compiles generated Dockerfiles of
# N instructions (default 1,000,000) with the release build and prints, for
# the benchmark's chained stages and for one flat stage, the peak RSS beyond
# the text (from /proc, as the kiln binary runs the frontend, with mimalloc)
# and the heap bytes per instruction by phase (counted by dhat, free of the
# allocator's caching). Target: well under 1 KB per instruction beyond the
# text, and linear in N (compare N and N/2).
# Usage: scripts/bench-frontend.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet -p kiln-frontend --example parse_compile_once --example memory_profile
bin=${CARGO_TARGET_DIR:-$PWD/target}/release/examples

# rss_per_instruction SIZE SHAPE: bytes of peak RSS beyond the text, per instruction.
rss_per_instruction() {
  "$bin/parse_compile_once" "$1" "$2" 2>&1 |
    sed -n 's/.*RSS \([0-9]*\) MiB with the text.*peak \([0-9]*\) MiB.*/\1 \2/p' |
    awk -v n="$1" '{printf "%d", ($2 - $1) * 1048576 / n}'
}

printf '%-8s %10s %22s %22s %s\n' shape instructions "peak RSS B/instr" "same at N/2" "heap by phase (dhat)"
for shape in chained flat; do
  full=$(rss_per_instruction "$n" "$shape")
  half=$(rss_per_instruction "$((n / 2))" "$shape")
  heap=$("$bin/memory_profile" "$n" "$shape" 2>&1 | tail -1 | sed 's/^[0-9]* instructions, text [0-9]* MiB; //')
  printf '%-8s %10s %22s %22s %s\n' "$shape" "$n" "$full" "$half" "$heap"
done
