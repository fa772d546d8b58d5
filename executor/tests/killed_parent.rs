//! When kiln itself is killed mid-step, the sandbox dies with it and nothing
//! stays mounted on the host. The test re-runs its own binary as the "kiln"
//! to kill.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const HELPER_ENV: &str = "KILN_EXECUTOR_TEST_HELPER";

fn sandbox_sleepers(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("cmdline"))
                .is_ok_and(|c| c == format!("sleep\0{marker}\0"))
        })
        .count()
}

/// Not a test on its own: the process `sandbox_dies_with_a_killed_parent` starts
/// and kills. It runs a step that sleeps and says when it is running.
#[test]
#[ignore = "helper process for sandbox_dies_with_a_killed_parent"]
fn helper_long_step() {
    let Ok(marker) = std::env::var(HELPER_ENV) else {
        return;
    };
    let scratch = scratch();
    let spec = shell(&format!("echo ready; exec sleep {marker}"));
    let _ = kiln_executor::run(
        &spec,
        scratch.path(),
        &kiln_executor::CancelToken::new(),
        &mut |line| {
            println!("{}", line.text());
        },
    );
}

#[test]
fn sandbox_dies_with_a_killed_parent() {
    busybox("amd64");
    let before = host_mounts();
    let marker = format!("{}", 100_000 + std::process::id());
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "helper_long_step",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, &marker)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = helper.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.trim_end().ends_with("ready"))),
        "the helper's step never started"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while sandbox_sleepers(&marker) == 0 {
        assert!(
            Instant::now() < deadline,
            "the step's process never showed up"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    helper.kill().unwrap();
    helper.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while sandbox_sleepers(&marker) > 0 {
        assert!(
            Instant::now() < deadline,
            "the step outlived the killed kiln"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(before, host_mounts());
}
