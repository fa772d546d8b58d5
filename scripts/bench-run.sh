#!/usr/bin/env bash
# Per-RUN-step cost: kiln's executor (sandbox start, `echo N > /fN`, teardown,
# layer diff) beside BuildKit (docker) and buildah when they are installed, on
# the same busybox rootfs. Peers that are missing are skipped. Needs root.
# Then `kiln run --rm base true` from a warm store beside `docker run --rm`
# and `podman run --rm --runtime runc` on the same rootfs (target: kiln at
# most 0.2 of docker's time).
# Usage: scripts/bench-run.sh [STEPS] [RUNS]   (defaults 20 and 20)
#        scripts/bench-run.sh --containers-only [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
containers_only=false
if [[ ${1:-} == --containers-only ]]; then
    containers_only=true
    shift
    runs=${1:-20}
else
    steps=${1:-20}
    runs=${2:-20}
fi
fixtures=${KILN_FIXTURES:-$PWD/target/fixtures}
busybox=$fixtures/busybox-amd64.tar
[[ -f $busybox ]] || { echo "missing $busybox: run scripts/make-fixtures.sh" >&2; exit 1; }

# Containers: mean wall time of `RUNTIME run --rm IMAGE true`, after one warm-up.
bench_containers() {
    cargo build -q --release --bin kiln
    local kiln=$PWD/target/release/kiln store
    store=$(mktemp -d)
    "$kiln" --root "$store" import "$busybox" base >/dev/null 2>&1
    per_run() { # command...: mean ms per run
        "$@" >/dev/null 2>&1 || { echo "$* failed" >&2; return 1; }
        local start end
        start=$(date +%s%N)
        for _ in $(seq 1 "$runs"); do "$@" >/dev/null 2>&1; done
        end=$(date +%s%N)
        awk -v a="$start" -v b="$end" -v n="$runs" 'BEGIN {printf "%.1f", (b - a) / 1e6 / n}'
    }
    local kiln_ms docker_ms podman_ms
    kiln_ms=$(per_run "$kiln" --root "$store" run --rm base true)
    printf '%-30s %8.1f ms/run\n' "kiln run --rm" "$kiln_ms"
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        docker import "$busybox" kiln-bench-base >/dev/null
        if docker_ms=$(per_run docker run --rm kiln-bench-base true); then
            printf '%-30s %8.1f ms/run  (kiln/docker %.3f, target <= 0.2)\n' "docker run --rm" "$docker_ms" \
                "$(awk -v a="$kiln_ms" -v b="$docker_ms" 'BEGIN {print a / b}')"
        fi
        docker rmi -f kiln-bench-base >/dev/null 2>&1 || true
    else
        echo "docker run                     not available, skipped"
    fi
    if command -v podman >/dev/null; then
        podman import "$busybox" kiln-bench-base >/dev/null 2>&1
        if podman_ms=$(per_run podman run --rm --runtime runc kiln-bench-base true); then
            printf '%-30s %8.1f ms/run  (kiln/podman %.3f)\n' "podman run --rm --runtime runc" "$podman_ms" \
                "$(awk -v a="$kiln_ms" -v b="$podman_ms" 'BEGIN {print a / b}')"
        fi
        podman rmi -f kiln-bench-base >/dev/null 2>&1 || true
    else
        echo "podman run                     not available, skipped"
    fi
    rm -rf "$store"
}

if $containers_only; then
    bench_containers
    exit 0
fi

figures=$(cargo bench -q -p kiln-executor --bench step -- "$steps")
figure() { awk -v k="$1" '$1 == k {print $2}' <<<"$figures"; }
kiln_ms=$(figure per_step_ms)
printf '%-22s %8.1f ms/step  (sandbox+run+teardown+diff %.1f ms, scratch removal %.1f ms)\n' \
    "kiln" "$kiln_ms" "$(figure step_ms)" "$(figure cleanup_ms)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{
    echo "FROM kiln-bench-busybox"
    for i in $(seq 1 "$steps"); do echo "RUN echo $i > /f$i"; done
} >"$work/Dockerfile"

peer() { # name, seconds for $steps steps
    local ms
    ms=$(awk -v s="$2" -v n="$steps" 'BEGIN {printf "%.1f", s * 1000 / n}')
    printf '%-22s %8.1f ms/step  (%.1fx kiln)\n' "$1" "$ms" "$(awk -v a="$ms" -v b="$kiln_ms" 'BEGIN {print a / b}')"
}

seconds() { # command...: wall seconds
    local start end
    start=$(date +%s.%N)
    if ! "$@" >"$work/log" 2>&1; then
        echo "$* failed:" >&2
        tail -5 "$work/log" >&2
        return 1
    fi
    end=$(date +%s.%N)
    awk -v a="$start" -v b="$end" 'BEGIN {print b - a}'
}

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    docker import "$busybox" kiln-bench-busybox >/dev/null
    if took=$(seconds env DOCKER_BUILDKIT=1 docker build --no-cache -q -t kiln-bench-out "$work"); then
        peer "docker (BuildKit)" "$took"
    fi
    docker rmi -f kiln-bench-out kiln-bench-busybox >/dev/null 2>&1 || true
else
    echo "docker (BuildKit)      not available, skipped"
fi

if command -v buildah >/dev/null; then
    ctr=$(buildah from scratch)
    mnt=$(buildah mount "$ctr")
    tar -xf "$busybox" -C "$mnt"
    buildah umount "$ctr" >/dev/null
    buildah commit -q "$ctr" kiln-bench-busybox >/dev/null
    buildah rm "$ctr" >/dev/null
    if took=$(seconds buildah bud --layers=false -q -t kiln-bench-out -f "$work/Dockerfile" "$work"); then
        peer "buildah" "$took"
    fi
    buildah rmi -f kiln-bench-out kiln-bench-busybox >/dev/null 2>&1 || true
else
    echo "buildah                not available, skipped"
fi

bench_containers
