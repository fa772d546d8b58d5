//! Running a command in an end-to-end test (included with `#[path]`).

use std::process::{Command, Output};

/// Runs `command` to completion and returns its output; panics with the
/// command line and its stderr when it cannot start or fails.
pub fn run_ok(command: &mut Command) -> Output {
    let out = command.output().unwrap_or_else(|e| {
        panic!("cannot run {command:?} (scripts/install-deps.sh installs the clients): {e}")
    });
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
