#!/usr/bin/env bash
# The README's quick start, on a fresh Debian 12 machine as root: builds kiln, makes a
# busybox base image from Debian's busybox-static package into the default store, and
# builds the example in examples/hello, printing the image id on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/install-deps.sh
scripts/make-fixtures.sh busybox
cargo build --release --quiet
kiln=target/release/kiln
$kiln import target/fixtures/busybox-amd64.tar busybox:latest >/dev/null
$kiln build -t hello examples/hello
