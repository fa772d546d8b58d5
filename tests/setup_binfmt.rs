//! `kiln setup-binfmt`: registers qemu-user handlers and reports what it did as
//! JSON on stdout; bad architectures fail with a message naming them. Needs root.

use std::process::Command;

use kiln_testsupport::run::run_ok;

fn kiln(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command.args(args).env("NO_COLOR", "1");
    command
}

#[test]
fn registers_and_reports_as_json() {
    let out = run_ok(&mut kiln(&["setup-binfmt", "mips64le", "amd64"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report[0]["arch"], "mips64le");
    assert!(
        report[0]["status"] == "registered" || report[0]["status"] == "already-registered",
        "{report}"
    );
    assert_eq!(report[1]["status"], "native");
    let flags = std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-mips64el").unwrap();
    assert!(flags
        .lines()
        .any(|l| l.starts_with("flags:") && l.contains('F')));
}

#[test]
fn unknown_architectures_are_named() {
    let out = kiln(&["setup-binfmt", "vax"]).output().unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown architecture \"vax\""), "{stderr}");
}
