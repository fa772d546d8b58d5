#!/usr/bin/env bash
# kiln's whole test suite, as CI runs it: installs what it needs, makes the fixtures,
# checks formatting and lints, then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/make-fixtures.sh
export KILN_FIXTURES=${KILN_FIXTURES:-$PWD/target/fixtures}
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets --no-fail-fast
