#!/usr/bin/env bash
# kiln import benchmark: imports a rootfs tarball (default: the Debian 12
# minbase amd64 rootfs, ~120 MB uncompressed, zstd-compressed) with kiln's
# release build and, when installed and working, `docker import` and
# `podman import` (given the same rootfs as a plain tar); prints the median
# seconds of each and the ratio to kiln's default (gzip layer from the input).
# Usage: scripts/bench-import.sh [ROOTFS_TAR] [RUNS]   (RUNS default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
rootfs=${1:-/work/shared/rootfs/debian12-minbase-amd64.tar.zst}
runs=${2:-5}
[ -f "$rootfs" ] || { echo "missing $rootfs (pass a rootfs tarball)" >&2; exit 1; }
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet --bin kiln
kiln=${CARGO_TARGET_DIR:-$PWD/target}/release/kiln

work=$(mktemp -d /var/tmp/kiln-bench-import.XXXXXX)
trap 'rm -rf "$work"' EXIT

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# time_runs NAME PREPARE COMMAND...: median wall time of RUNS runs, PREPARE untimed before each.
# kiln import leaves the snapshot to a background kiln (__unpack): the timed
# command is the import itself, and the next run starts once that is done.
wait_unpack() { while pgrep -f -- "$work/store __unpack" >/dev/null; do sleep 0.05; done; }
time_runs() {
  local prepare=$1; shift
  for _ in $(seq "$runs"); do
    eval "$prepare"
    local start end
    start=$(now)
    "$@" >/dev/null 2>&1
    end=$(now)
    echo "$end - $start" | bc -l
  done | median
}

# Peers get the plain tar (docker 20.10 cannot read zstd); kiln is timed on both.
plain=$work/rootfs.tar
case "$(head -c 4 "$rootfs" | od -An -tx1 | tr -d ' \n')" in
  28b52ffd) zstd -dcq "$rootfs" >"$plain" ;;
  1f8b*) gzip -dc "$rootfs" >"$plain" ;;
  fd377a58) xz -dc "$rootfs" >"$plain" ;;
  425a68*) bzip2 -dc "$rootfs" >"$plain" ;;
  *) plain=$rootfs ;;
esac
# Read the inputs once so every tool starts from the page cache.
cat "$rootfs" "$plain" >/dev/null
echo "input: $rootfs ($(du -h "$rootfs" | cut -f1)), plain tar $(du -h "$plain" | cut -f1)"
# Wall times grow with other work on the machine: say how busy it was.
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"

declare -A seconds
for compression in gzip zstd; do
  seconds[kiln-$compression]=$(time_runs "wait_unpack; rm -rf '$work/store'" \
    "$kiln" --root "$work/store" import --compression "$compression" "$rootfs" bench:latest)
done
seconds[kiln-gzip-plain]=$(time_runs "wait_unpack; rm -rf '$work/store'" \
  "$kiln" --root "$work/store" import "$plain" bench:latest)
wait_unpack

peers=()
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  seconds[docker]=$(time_runs "docker rmi -f kiln-bench-import >/dev/null 2>&1 || true" \
    docker import "$plain" kiln-bench-import)
  docker rmi -f kiln-bench-import >/dev/null 2>&1 || true
  peers+=(docker)
else
  echo "docker: not available (no daemon), skipped"
fi
if command -v podman >/dev/null && podman info >/dev/null 2>&1; then
  seconds[podman]=$(time_runs "podman rmi -f kiln-bench-import >/dev/null 2>&1 || true" \
    podman import "$plain" kiln-bench-import)
  podman rmi -f kiln-bench-import >/dev/null 2>&1 || true
  peers+=(podman)
else
  echo "podman: not available, skipped"
fi

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
base=${seconds[kiln-gzip]}
printf '%-16s %8s %12s\n' tool seconds "vs kiln-gzip"
for tool in kiln-gzip kiln-zstd kiln-gzip-plain "${peers[@]}"; do
  printf '%-16s %8.3f %11.2fx\n' "$tool" "${seconds[$tool]}" "$(echo "${seconds[$tool]} / $base" | bc -l)"
done
