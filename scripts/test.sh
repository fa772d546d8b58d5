#!/usr/bin/env bash
# kiln's whole test suite, as CI runs it: installs what it needs, makes the fixtures,
# checks formatting and lints, then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/make-fixtures.sh
scripts/make-test-users.sh
export KILN_FIXTURES=${KILN_FIXTURES:-$PWD/target/fixtures}
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets --no-fail-fast
# Rootless: representative end-to-end tests again with kiln run by an
# unprivileged user (tests/build_rootless.rs, in the run above, covers the rest).
export KILN_TEST_USER=kiln-test
cargo test --no-fail-fast --test build_basic -- run_and_copy_then_everything_cached \
  deleting_a_base_file_is_a_whiteout cache_mounts_persist_between_builds_and_stay_out_of_layers \
  foreign_architecture_runs_under_qemu
cargo test --no-fail-fast --test build_store --test store_archive --test registry_push_pull \
  --test run_basic -- umoci_and_skopeo_read_built_images oci_archives_open_in_skopeo_and_umoci_and_load_back \
  push_then_pull_into_an_empty_store_keeps_the_digest_and_skopeo_reads_it \
  environment_workdir_and_user_come_from_image_and_flags rm_leaves_nothing_behind
# cgroup v2 limits, root and rootless in a delegated subtree, in a guest whose
# only hierarchy is v2 (this machine may mount v1).
scripts/test-cgroup2-vm.sh
