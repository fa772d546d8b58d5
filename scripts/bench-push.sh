#!/usr/bin/env bash
# kiln push/pull benchmark against a loopback registry (Debian's docker-registry):
# imports a rootfs (default: the Debian 12 minbase amd64 image, ~120 MB
# uncompressed) into a store, then times, each against a registry with empty
# storage, `kiln push` beside `skopeo copy oci:STORE:NAME docker://...` of the
# same image, and `kiln pull` into an empty store beside `skopeo copy
# docker://... oci:DIR:NAME`. Prints median seconds and skopeo/kiln ratios
# (above 1 means kiln is faster). Works without skopeo (kiln's numbers only).
# Usage: scripts/bench-push.sh [ROOTFS_TAR] [RUNS]   (RUNS default 5)
# KILN=path/to/kiln uses that binary instead of building the release one.
set -euo pipefail
cd "$(dirname "$0")/.."
rootfs=${1:-/work/shared/rootfs/debian12-minbase-amd64.tar.zst}
runs=${2:-5}
[ -f "$rootfs" ] || { echo "missing $rootfs (pass a rootfs tarball)" >&2; exit 1; }
command -v docker-registry >/dev/null || { echo "docker-registry is not installed (scripts/install-deps.sh)" >&2; exit 1; }
if [ -z "${KILN:-}" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
  cargo build --release --quiet --bin kiln
  KILN=${CARGO_TARGET_DIR:-$PWD/target}/release/kiln
fi

work=$(mktemp -d /var/tmp/kiln-bench-push.XXXXXX)
registry_pid=
stop_registry() {
  if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; fi
  registry_pid=
}
trap 'stop_registry; rm -rf "$work"' EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
EOF
# A registry with empty storage, up and listening.
fresh_registry() {
  stop_registry
  rm -rf "$work/registry"
  docker-registry serve "$work/config.yml" >/dev/null 2>&1 &
  registry_pid=$!
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "the registry did not start" >&2; exit 1
}

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# time_runs PREPARE COMMAND...: median wall time of RUNS runs, PREPARE untimed before each.
time_runs() {
  local prepare=$1; shift
  for _ in $(seq "$runs"); do
    eval "$prepare"
    local start end
    start=$(now)
    "$@" >/dev/null 2>"$work/last.err" || { cat "$work/last.err" >&2; exit 1; }
    end=$(now)
    echo "$end - $start" | bc -l
  done | median
}

store=$work/store
"$KILN" --root "$store" import "$rootfs" bench:latest >/dev/null 2>&1
size=$(du -sh "$store/blobs" | cut -f1)
echo "image: $rootfs imported ($size of blobs in the store), registry on 127.0.0.1:$port, $runs runs"
# Numbers from a loaded machine mislead: say how loaded it was.
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
ref=127.0.0.1:$port/bench/debian:12

declare -A seconds
seconds[kiln-push]=$(time_runs "fresh_registry; rm -rf '$store/kiln/state/registry'" \
  "$KILN" --root "$store" push bench:latest "$ref")
# Pulls read from a registry holding the image.
fresh_registry
"$KILN" --root "$store" push bench:latest "$ref" >/dev/null 2>&1
seconds[kiln-pull]=$(time_runs "rm -rf '$work/pulled'" \
  "$KILN" --root "$work/pulled" pull "$ref")

have_skopeo=false
if command -v skopeo >/dev/null; then
  have_skopeo=true
  seconds[skopeo-push]=$(time_runs "fresh_registry" \
    skopeo copy --quiet --dest-tls-verify=false "oci:$store:bench:latest" "docker://$ref")
  seconds[skopeo-pull]=$(time_runs "rm -rf '$work/skopeo-pulled'" \
    skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci:$work/skopeo-pulled:bench")
fi

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-12s %10s %10s %8s\n' operation kiln skopeo ratio
for op in push pull; do
  k=${seconds[kiln-$op]}
  if $have_skopeo; then
    s=${seconds[skopeo-$op]}
    printf '%-12s %9.3fs %9.3fs %7.2fx\n' "$op" "$k" "$s" "$(echo "$s / $k" | bc -l)"
  else
    printf '%-12s %9.3fs %10s %8s\n' "$op" "$k" - -
  fi
done
