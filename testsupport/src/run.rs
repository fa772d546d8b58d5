//! Running a command in a test: to success, or with input on its stdin.

use std::process::{Command, Output, Stdio};

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

/// Runs `command` with `input` on its stdin; returns its output, whatever its
/// exit status.
pub fn output_with_stdin(command: &mut Command, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("wait for the command")
}

/// Runs a real client (skopeo, umoci, tar), asserting success; returns stdout.
pub fn client(program: &str, args: &[&str]) -> String {
    let out = run_ok(Command::new(program).args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
