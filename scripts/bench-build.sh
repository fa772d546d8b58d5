#!/usr/bin/env bash
# kiln build benchmarks: the six scenarios of issue 5, apt-get on Debian 12, a fresh store (import Debian 12
# + a five-step build), a RUN after a 20,000-file COPY (issue 18) and a two-platform build (issue 13),
# timed with kiln (release build) and,
# when installed and working, BuildKit (docker build) and buildah.
# Prints one row per scenario with each tool's seconds and the ratio peer/kiln.
# Usage: scripts/bench-build.sh [RUNS]   (median of RUNS timings, default 3)
# ROWS=REGEX runs only the rows whose name matches (grep -E), e.g. ROWS='fresh|then RUN'.
# KILN_BIN=PATH times that kiln binary instead of building this checkout (say, an older build to compare).
# DOCKER=/usr/bin/docker picks the docker client: Debian's docker.io 20.10 client
# builds with its daemon's BuildKit; a newer client without buildx fails.
# KILN_ONLY=1 times kiln alone (peers' figures change only with the machine).
# The rootless column is kiln run by KILN_BENCH_USER (default kiln-test, made by
# scripts/make-test-users.sh), its ratio rootless/root; "-" without that user.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
export PATH="$HOME/.cargo/bin:$PATH"
if [ -n "${KILN_BIN:-}" ]; then
  kiln=$KILN_BIN
else
  cargo build --release --quiet --bin kiln
  kiln=${CARGO_TARGET_DIR:-$PWD/target}/release/kiln
fi
rows=${ROWS:-.}
wanted() { printf '%s\n' "$1" | grep -Eq -- "$rows"; }
fixtures=${KILN_FIXTURES:-$PWD/target/fixtures}
base_tar=$fixtures/busybox-amd64.tar
[ -f "$base_tar" ] || { echo "missing $base_tar: run scripts/make-fixtures.sh" >&2; exit 1; }

work=$(mktemp -d /var/tmp/kiln-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
bench_user=${KILN_BENCH_USER:-kiln-test}
have_rootless=0
if id "$bench_user" >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  have_rootless=1
  chmod 755 "$work"   # the user reads the contexts and owns its store in here
fi
as_user() {
  setpriv --reuid="$bench_user" --regid="$bench_user" --init-groups \
    env HOME="$(getent passwd "$bench_user" | cut -d: -f6)" "$@"
}
# Debian 12 minbase for the apt-get row (scripts/make-fixtures.sh makes it), as a plain tar for docker import.
debian_tar=""
if [ -s "$fixtures/debian12-minbase-amd64.tar.zst" ]; then
  debian_tar=$work/debian12-minbase-amd64.tar
  zstd -d -q "$fixtures/debian12-minbase-amd64.tar.zst" -o "$debian_tar"
fi

have_docker=0
docker() { command "${DOCKER:-docker}" "$@"; }
if [ "${KILN_ONLY:-0}" != 1 ] && command -v "${DOCKER:-docker}" >/dev/null && docker info >/dev/null 2>&1; then
  have_docker=1
  docker image inspect kiln-bench-busybox >/dev/null 2>&1 || docker import "$base_tar" kiln-bench-busybox >/dev/null
  if [ -n "$debian_tar" ]; then
    docker image inspect kiln-bench-debian >/dev/null 2>&1 || docker import "$debian_tar" kiln-bench-debian >/dev/null
  fi
fi
have_buildah=0
if [ "${KILN_ONLY:-0}" != 1 ] && command -v buildah >/dev/null; then
  if ! buildah inspect --type image kiln-bench-busybox >/dev/null 2>&1; then
    ctr=$(buildah from scratch 2>/dev/null) && buildah add "$ctr" "$base_tar" / >/dev/null 2>&1 \
      && buildah commit "$ctr" kiln-bench-busybox >/dev/null 2>&1; buildah rm "${ctr:-none}" >/dev/null 2>&1 || true
  fi
  buildah inspect --type image kiln-bench-busybox >/dev/null 2>&1 && have_buildah=1
fi

# --- contexts -----------------------------------------------------------------
mk() { mkdir -p "$work/ctx/$1"; printf '%s\n' "$2" > "$work/ctx/$1/Dockerfile"; }
runs20="FROM kiln-bench-busybox"
for n in $(seq 1 20); do runs20+=$'\n'"RUN echo $n > /f$n"; done
mk runs "$runs20"
mk copy $'FROM kiln-bench-busybox\nCOPY files /files'
mkdir -p "$work/ctx/copy/files"
python3 - "$work/ctx/copy/files" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(100):
    os.makedirs(f"{root}/d{d}", exist_ok=True)
    for f in range(200):
        with open(f"{root}/d{d}/f{f}", "wb") as out:
            out.write(os.urandom(4096))
PY
stages=""
for s in 1 2 3 4; do stages+="FROM kiln-bench-busybox AS s$s"$'\n'"RUN sleep 2 && echo $s > /out$s"$'\n'; done
stages+="FROM kiln-bench-busybox"$'\n'
for s in 1 2 3 4; do stages+="COPY --from=s$s /out$s /out$s"$'\n'; done
mk stages "$stages"
mk random $'FROM kiln-bench-busybox\nRUN head -c 268435456 /dev/urandom > /random'
# RUN after a large COPY: the RUN mounts the COPY's 20,000 files.
mk copyrun $'FROM kiln-bench-busybox\nCOPY files /data\nRUN ls /data > /listing'
cp -al "$work/ctx/copy/files" "$work/ctx/copyrun/files"
# A fresh store (an ephemeral CI runner): the base image is imported, then five steps build on it.
mk fresh $'FROM kiln-bench-debfresh\nRUN useradd -m app\nCOPY files /home/app/files\nRUN chown -R app:app /home/app/files\nRUN su app -c \'ls -l /home/app/files/d1 | wc -l\' > /count'
mkdir -p "$work/ctx/fresh/files"
for d in $(seq 1 3); do
  mkdir -p "$work/ctx/fresh/files/d$d"
  for f in $(seq 1 100); do echo "file $d/$f" > "$work/ctx/fresh/files/d$d/f$f"; done
done
# The most common line of real Dockerfiles; apt drops to its _apt user. Debian's archive over the network.
mk apt $'FROM kiln-bench-debian\nRUN apt-get update && apt-get install -y --no-install-recommends file python3-minimal'

# --- timing -------------------------------------------------------------------
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# kiln as root (store $work/store), or as the user (RUNNER=as_user, store $work/rstore).
kiln_root() { if [ -n "${RUNNER:-}" ]; then echo "$work/rstore"; else echo "$work/store"; fi; }
kiln_store() {
  local store; store=$(kiln_root)
  rm -rf "$store"
  if [ -n "${RUNNER:-}" ]; then mkdir "$store" && chown "$bench_user:" "$store"; fi
  $RUNNER "$kiln" --root "$store" import "$base_tar" kiln-bench-busybox >/dev/null 2>&1
  if [ "${1##*/}" = apt ]; then   # ctx/apt, or the user's copy rctx/apt
    $RUNNER "$kiln" --root "$store" import "$debian_tar" kiln-bench-debian >/dev/null 2>"$work/import.err" || cat "$work/import.err" >&2; fi
  wait_unpack "$store"
}
# kiln import leaves the base image's snapshot to a detached kiln
# (`__unpack`): a cold build is timed once that setup is done, as a peer's
# build is timed after its import or prune, not while it still runs.
wait_unpack() { while pgrep -f -- "$1 __unpack" >/dev/null; do sleep 0.02; done; }
# (Rootless kiln's note that its default network is the host's is left out.)
kiln_build() {
  $RUNNER "$kiln" --root "$(kiln_root)" build --progress quiet "$@" 2>&1 >/dev/null | { grep -v '^note: rootless' >&2 || true; }
}
kiln_import_debian() { "$kiln" --root "$work/store" import "$debian_tar" kiln-bench-debfresh >/dev/null 2>&1; }
# A failing peer build makes its column read "fail" rather than a bogus time.
docker_build() { DOCKER_BUILDKIT=1 docker build -q "$@" >/dev/null 2>&1 || echo fail >"$work/failed"; }
buildah_build() { buildah bud --layers -q "$@" >/dev/null 2>&1 || echo fail >"$work/failed"; }

# What starting a command through setpriv costs (subtracted from the rootless
# column, whose kiln the bench starts that way and a user would not).
setpriv_cost=0
if [ $have_rootless = 1 ]; then
  setpriv_cost=$(for i in $(seq 1 20); do t0=$(now); as_user true; t1=$(now); echo "$t1 - $t0" | bc -l; done | median)
fi

# time_tool TOOL CTX WARM: median seconds of RUNS builds.
time_tool() {
  local tool=$1 ctx=$2 warm=$3 i t0 t1
  for i in $(seq 1 "$runs"); do
    case $tool in
      kiln|rootless)
        if [ "$tool" = rootless ]; then RUNNER=as_user; else RUNNER=; fi
        if [ "$warm" = fresh ]; then
          # An empty store: the import of the base image is timed with the build.
          rm -rf "$work/store"
          t0=$(now); kiln_import_debian; kiln_build "$ctx"; t1=$(now)
          echo "$t1 - $t0" | bc -l; continue
        fi
        if [ "$warm" = warm ]; then [ -d "$(kiln_root)" ] || kiln_store "$ctx"; kiln_build "$ctx"; else kiln_store "$ctx"; fi
        t0=$(now); kiln_build "$ctx"; t1=$(now)
        # setpriv's own start is the bench's way in, not kiln's cost.
        if [ "$tool" = rootless ]; then t1=$(echo "$t1 - $setpriv_cost" | bc -l); fi ;;
      docker)
        if [ "$warm" = fresh ]; then
          docker rmi -f kiln-bench-debfresh >/dev/null 2>&1 || true
          docker builder prune -af >/dev/null 2>&1 || true
          t0=$(now)
          docker import "$debian_tar" kiln-bench-debfresh >/dev/null 2>&1 || echo fail >"$work/failed"
          docker_build "$ctx"; t1=$(now)
          echo "$t1 - $t0" | bc -l; continue
        fi
        if [ "$warm" = warm ]; then docker_build "$ctx"; else docker builder prune -af >/dev/null 2>&1 || true; fi
        t0=$(now); docker_build "$ctx"; t1=$(now) ;;
      buildah)
        if [ "$warm" = warm ]; then buildah_build "$ctx"; else buildah rmi --prune >/dev/null 2>&1 || true; fi
        t0=$(now); buildah_build "$ctx"; t1=$(now) ;;
    esac
    echo "$t1 - $t0" | bc -l
  done | median
}

printf '%-44s %9s %9s %7s %9s %7s %9s %7s\n' scenario kiln rootless ratio BuildKit ratio buildah ratio
row() {
  local name=$1 ctx=$2 warm=$3 k r="-" rr="-" d="-" dr="-" b="-" br="-"
  wanted "$name" || return 0
  k=$(time_tool kiln "$ctx" "$warm")
  # (a fresh store's import is timed as root only)
  if [ $have_rootless = 1 ] && [ "$warm" != fresh ]; then
    # The user's own copy of the context, as a developer's files are theirs.
    local rctx=$work/rctx/${ctx#"$work/ctx/"}
    if [ ! -d "$rctx" ]; then
      mkdir -p "$(dirname "$rctx")" && cp -a "$ctx" "$rctx" && chown -R "$bench_user:" "$work/rctx"
    fi
    r=$(time_tool rootless "$rctx" "$warm")
    rr=$(printf '%.2fx' "$(echo "$r / $k" | bc -l)"); r=$(printf '%.3fs' "$r")
  fi
  if [ $have_docker = 1 ]; then
    rm -f "$work/failed"; d=$(time_tool docker "$ctx" "$warm")
    if [ -e "$work/failed" ]; then d=fail; else dr=$(printf '%.1fx' "$(echo "$d / $k" | bc -l)"); d=$(printf '%.2f' "$d"); fi
  fi
  # buildah has no import step to time for a fresh store.
  if [ $have_buildah = 1 ] && [ "$warm" != fresh ]; then
    rm -f "$work/failed"; b=$(time_tool buildah "$ctx" "$warm")
    if [ -e "$work/failed" ]; then b=fail; else br=$(printf '%.1fx' "$(echo "$b / $k" | bc -l)"); b=$(printf '%.2f' "$b"); fi
  fi
  printf '%-44s %8.3fs %9s %7s %9s %7s %9s %7s\n' "$name" "$k" "$r" "$rr" "$d" "$dr" "$b" "$br"
}
row "20 x RUN echo N > /fN, cold" "$work/ctx/runs" cold
row "20 x RUN echo N > /fN, warm" "$work/ctx/runs" warm
row "COPY 20,000 files / 80 MB, cold" "$work/ctx/copy" cold
row "COPY 20,000 files / 80 MB, warm" "$work/ctx/copy" warm
row "4 stages of sleep 2 + COPY --from each" "$work/ctx/stages" cold
row "RUN writing 256 MB of random data" "$work/ctx/random" cold
# The floor under the last row: the same command on the host, with the base
# image's own busybox and no builder at all.
if wanted "RUN writing 256 MB of random data"; then
  tar -xf "$base_tar" -C "$work" bin/busybox 2>/dev/null || tar -xf "$base_tar" -C "$work" ./bin/busybox
  floor=$(for i in $(seq 1 "$runs"); do
    t0=$(now); "$work/bin/busybox" head -c 268435456 /dev/urandom > "$work/random"; t1=$(now)
    rm -f "$work/random"; echo "$t1 - $t0" | bc -l
  done | median)
  printf '%-44s %8.3fs   (the command alone on the host, no builder)\n' "  floor: busybox head -c 256M on the host" "$floor"
fi
row "COPY 20,000 files then RUN, cold" "$work/ctx/copyrun" cold
# The floor under the last row: one copy of the same tree, no builder. Its
# parent is marked as kiln marks the directory it fills large snapshots in
# (chattr +T: on ext4 each new tree gets block groups of its own, away from
# the inodes the last run freed; the group follows from the name's hash, so
# each copy has a name of its own, as kiln's temporary trees do), so the
# floor is the best a copy does here.
# How many inodes recent runs freed, and where, moves both figures by tens of
# percent on a disk that builds run on all day (an ext4 without a journal
# checks each recently freed inode before reusing one). So kiln is timed
# again beside the copy, alternating with it, on a fresh ext4 in RAM when
# root can make one (on $work otherwise; its inode tables are made at
# once, not by a kernel thread that would run beside the timings), and the
# ratio is theirs.
if wanted "COPY 20,000 files then RUN, cold"; then
  fresh=$work
  fs_img=/dev/shm/kiln-bench-fs-$$.img
  if [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null && mkdir -p "$work/fresh-fs" \
     && truncate -s 4G "$fs_img" && mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$fs_img" && mount -o loop "$fs_img" "$work/fresh-fs"; then
    fresh=$work/fresh-fs
    trap 'umount "$work/fresh-fs" 2>/dev/null || true; rm -f "$fs_img"; rm -rf "$work"' EXIT
  else
    rm -f "$fs_img"
  fi
  cp -a "$work/ctx/copyrun" "$fresh/ctx-copyrun"
  mkdir -p "$fresh/floor"; chattr +T "$fresh/floor" 2>/dev/null || true
  paired=$(for i in $(seq 1 "$runs"); do
    rm -rf "$fresh/store"
    "$kiln" --root "$fresh/store" import "$base_tar" kiln-bench-busybox >/dev/null 2>&1
    wait_unpack "$fresh/store"
    # Each starts with the last one's writes on disk, not being written
    # back beside it (on a loop device that is CPU work).
    sync
    t0=$(now); "$kiln" --root "$fresh/store" build --progress quiet "$fresh/ctx-copyrun" >/dev/null 2>&1; t1=$(now)
    rm -rf "$fresh/floor"/cp-*
    copy=$fresh/floor/cp-$$-$i-$RANDOM
    sync
    t2=$(now); cp -a "$fresh/ctx-copyrun/files" "$copy"; t3=$(now)
    echo "$(echo "$t1 - $t0" | bc -l) $(echo "$t3 - $t2" | bc -l)"
  done)
  rm -rf "$fresh/floor" "$fresh/store" "$fresh/ctx-copyrun"
  if [ "$fresh" != "$work" ]; then umount "$fresh" && rm -f "$fs_img"; fi
  where=$([ "$fresh" != "$work" ] && echo "a fresh ext4 in RAM" || echo "$work")
  floor=$(printf '%s\n' "$paired" | awk '{print $2}' | median)
  beside=$(printf '%s\n' "$paired" | awk '{print $1}' | median)
  printf '%-44s %8.3fs   (one copy of the tree, no builder; on %s)\n' "  floor: cp -a of the 20,000 files" "$floor" "$where"
  printf '%-44s %8.3fs   %.2fx the floor (runs alternating with the copy, same place)\n' "  kiln beside the floor" "$beside" "$(echo "$beside / $floor" | bc -l)"
fi
if [ -n "$debian_tar" ]; then
  row "Debian 12: apt-get update + install, cold" "$work/ctx/apt" cold
  # BuildKit's column is docker import + build.
  row "fresh store: import Debian 12 + 5 steps" "$work/ctx/fresh" fresh
else
  echo "(apt-get and fresh store rows skipped: $fixtures/debian12-minbase-amd64.tar.zst is missing; run scripts/make-fixtures.sh)"
fi
# --- multi-platform: 20 RUN steps for linux/amd64 + linux/mips64le ------------
# kiln builds both platforms in one run (one DAG, platforms overlapped) and is
# timed beside each platform alone and beside buildah's --manifest build
# (chroot isolation, its faster mode here). Cold builds: fresh store / pruned.
multi_row() {
  RUNNER=  # kiln as root
  local mips_tar=$fixtures/busybox-mips64el.tar k_amd k_mips k_both b="-" br="-"
  [ -f "$mips_tar" ] || { echo "(multi-platform row skipped: $mips_tar is missing)"; return; }
  local multi="ARG TARGETARCH"$'\n'"FROM kiln-bench-busybox-\$TARGETARCH"
  for n in $(seq 1 20); do multi+=$'\n'"RUN echo $n > /f$n"; done
  mk multi "$multi"
  multi_store() {
    rm -rf "$work/store"
    "$kiln" --root "$work/store" import "$base_tar" kiln-bench-busybox-amd64 >/dev/null 2>&1
    "$kiln" --root "$work/store" import "$mips_tar" kiln-bench-busybox-mips64le >/dev/null 2>&1
  }
  kiln_multi() {
    local i t0 t1
    for i in $(seq 1 "$runs"); do
      multi_store; t0=$(now); kiln_build --platform "$1" "$work/ctx/multi"; t1=$(now)
      echo "$t1 - $t0" | bc -l
    done | median
  }
  k_amd=$(kiln_multi linux/amd64)
  k_mips=$(kiln_multi linux/mips64le)
  k_both=$(kiln_multi linux/amd64,linux/mips64le)
  if [ "${KILN_ONLY:-0}" != 1 ] && command -v buildah >/dev/null; then
    local arch tar ctr
    for arch in amd64 mips64le; do
      tar=$base_tar; [ $arch = amd64 ] || tar=$mips_tar
      if ! buildah inspect --type image "kiln-bench-busybox-$arch" >/dev/null 2>&1; then
        ctr=$(buildah from scratch 2>/dev/null) && buildah add "$ctr" "$tar" / >/dev/null 2>&1 \
          && buildah config --arch "$arch" --os linux "$ctr" >/dev/null 2>&1 \
          && buildah commit "$ctr" "kiln-bench-busybox-$arch" >/dev/null 2>&1
        buildah rm "${ctr:-none}" >/dev/null 2>&1 || true
      fi
    done
    rm -f "$work/failed"
    b=$(for i in $(seq 1 "$runs"); do
      buildah manifest rm kiln-bench-multi >/dev/null 2>&1 || true
      buildah rmi --prune >/dev/null 2>&1 || true
      t0=$(now)
      buildah bud --isolation chroot --platform linux/amd64,linux/mips64le --manifest kiln-bench-multi \
        -q "$work/ctx/multi" >/dev/null 2>&1 || echo fail >"$work/failed"
      t1=$(now); echo "$t1 - $t0" | bc -l
    done | median)
    buildah manifest rm kiln-bench-multi >/dev/null 2>&1 || true
    buildah rmi --prune >/dev/null 2>&1 || true
    if [ -e "$work/failed" ]; then b=fail; else br=$(printf '%.3f' "$(echo "$k_both / $b" | bc -l)"); b=$(printf '%.2f' "$b"); fi
  fi
  local slower=$k_amd; [ "$(echo "$k_mips > $k_amd" | bc -l)" = 1 ] && slower=$k_mips
  printf '%-44s %8.3fs\n' "multi: 20 x RUN, linux/amd64 alone" "$k_amd"
  printf '%-44s %8.3fs\n' "multi: 20 x RUN, linux/mips64le alone" "$k_mips"
  printf '%-44s %8.3fs   %.2fx the slower alone (target <= 1.15)\n' \
    "multi: 20 x RUN, amd64+mips64le in one build" "$k_both" "$(echo "$k_both / $slower" | bc -l)"
  printf '%-44s %9s   kiln/buildah %s (target <= 0.1)\n' \
    "multi: buildah bud --isolation chroot" "$b" "$br"
}
wanted "multi-platform: 20 x RUN, amd64+mips64le" && multi_row
if [ "${KILN_ONLY:-0}" = 1 ]; then
  echo "(peers skipped: KILN_ONLY=1)"
else
  [ $have_docker = 1 ] || echo "(BuildKit: docker is not installed or dockerd is not running)"
  [ $have_buildah = 1 ] || echo "(buildah: not installed)"
fi
[ $have_rootless = 1 ] || echo "(rootless: no user $bench_user; scripts/make-test-users.sh makes it)"
