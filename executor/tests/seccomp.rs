//! Seccomp in RUN steps: Docker's default profile by default, `unconfined`,
//! and profiles in Docker's JSON format. A static probe built from
//! `seccomp/probe.c` makes the system calls and prints their errno. Needs
//! root and gcc with a static libc.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;
use kiln_executor::{check_binfmt, Mount, RunSpec, Seccomp};

const EPERM: &str = "1";

/// The probe, compiled once per test binary.
fn probe() -> &'static Path {
    static PROBE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &PROBE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let binary = dir.path().join("probe");
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/seccomp/probe.c");
            let status = Command::new("gcc")
                .args(["-static", "-O1", "-o"])
                .arg(&binary)
                .arg(&source)
                .status()
                .expect("gcc runs");
            assert!(status.success(), "gcc -static failed to build the probe");
            (dir, binary)
        })
        .1
}

/// Runs the probe in the busybox sandbox and returns `(call, errno)` pairs.
fn probe_calls(seccomp: Seccomp, calls: &[&str]) -> Vec<(String, String)> {
    let mut argv = vec!["/probe"];
    argv.extend_from_slice(calls);
    let mut s = spec(&argv);
    s.mounts = vec![Mount::Bind {
        source: probe().to_path_buf(),
        target: "/probe".into(),
        readonly: true,
    }];
    s.seccomp = seccomp;
    let out = run(&s);
    out.upper();
    out.stdout
        .iter()
        .map(|line| {
            let (call, errno) = line.split_once(' ').unwrap();
            (call.to_owned(), errno.to_owned())
        })
        .collect()
}

fn errno_of<'a>(results: &'a [(String, String)], call: &str) -> &'a str {
    &results.iter().find(|(c, _)| c == call).unwrap().1
}

fn status_line(s: &RunSpec) -> Vec<String> {
    let out = run(s);
    out.upper();
    out.stdout.clone()
}

#[test]
fn steps_run_under_a_filter() {
    assert_eq!(
        status_line(&shell("grep '^Seccomp:' /proc/self/status")),
        vec!["Seccomp:\t2"]
    );
}

#[test]
fn user_namespaces_are_refused() {
    let out = run(&shell("unshare -U -r id"));
    assert!(
        out.result.is_err(),
        "unshare -U succeeded: {:?}",
        out.stdout
    );
    assert!(
        out.stderr
            .iter()
            .any(|l| l.contains("Operation not permitted")),
        "{:?}",
        out.stderr
    );
}

#[test]
fn dangerous_calls_fail_with_eperm() {
    let results = probe_calls(
        Seccomp::Default,
        &[
            "clone_user",
            "unshare_user",
            "unshare_mount",
            "mount",
            "keyctl",
            "add_key",
            "bpf",
            "perf_event_open",
            "personality_bsd",
            "socket_vsock",
            "socket_alg",
        ],
    );
    for (call, errno) in &results {
        assert_eq!(errno, EPERM, "{call}: {results:?}");
    }
}

#[test]
fn ordinary_calls_still_work() {
    let results = probe_calls(
        Seccomp::Default,
        &[
            "getpid",
            "clone_plain",
            "socket_inet",
            "personality_query",
            "clone3",
            // Docker allows ptrace from Linux 4.8 on (it cannot bypass seccomp there).
            "ptrace_traceme",
        ],
    );
    for call in [
        "getpid",
        "clone_plain",
        "socket_inet",
        "personality_query",
        "ptrace_traceme",
    ] {
        assert_eq!(errno_of(&results, call), "0", "{call}: {results:?}");
    }
    // clone3's flags are out of seccomp's reach: ENOSYS makes libc use clone.
    assert_eq!(errno_of(&results, "clone3"), "38", "{results:?}");
}

#[test]
fn calls_newer_than_the_profile_fail_with_enosys() {
    // EPERM would stop libc from falling back to an older call.
    let results = probe_calls(Seccomp::Default, &["nr_1000", "keyctl"]);
    assert_eq!(errno_of(&results, "nr_1000"), "38", "{results:?}");
    assert_eq!(errno_of(&results, "keyctl"), EPERM, "{results:?}");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn i386_calls_are_filtered_too() {
    let results = probe_calls(Seccomp::Default, &["i386_getpid", "i386_unshare_user"]);
    assert_eq!(errno_of(&results, "i386_getpid"), "0", "{results:?}");
    assert_eq!(
        errno_of(&results, "i386_unshare_user"),
        EPERM,
        "{results:?}"
    );
    let results = probe_calls(Seccomp::Unconfined, &["i386_unshare_user"]);
    assert_eq!(errno_of(&results, "i386_unshare_user"), "0", "{results:?}");
}

#[test]
fn busybox_workloads_run() {
    let out = run(&shell(
        "set -e; mkdir -p /work/a; cd /work; seq 1 200 | sort -rn | head -3 | tr '\\n' ' ' > a/top; \
         ln -s a/top link; cat link; echo; tar -cf - a | tar -tf - | wc -l; \
         (sleep 0.1 & wait); id -u nobody; wget --help >/dev/null 2>&1 || true",
    ));
    out.upper();
    assert_eq!(out.stdout, vec!["200 199 198 ", "2", "65534"]);
}

#[test]
fn non_root_steps_are_filtered_too() {
    let mut s = shell("grep '^Seccomp:' /proc/self/status; unshare -U true || echo refused");
    s.user = "nobody".into();
    assert_eq!(status_line(&s), vec!["Seccomp:\t2", "refused"]);
}

#[test]
fn unconfined_turns_the_filter_off() {
    let mut s = shell("grep '^Seccomp:' /proc/self/status");
    s.seccomp = Seccomp::Unconfined;
    assert_eq!(status_line(&s), vec!["Seccomp:\t0"]);
    let results = probe_calls(Seccomp::Unconfined, &["clone_user", "keyctl"]);
    assert_eq!(errno_of(&results, "clone_user"), "0", "{results:?}");
    assert_eq!(errno_of(&results, "keyctl"), "0", "{results:?}");
}

#[test]
fn a_custom_profile_decides() {
    let profile = Seccomp::from_json(
        br#"{
          "defaultAction": "SCMP_ACT_ALLOW",
          "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 28},
            {"names": ["no_such_call_anywhere"], "action": "SCMP_ACT_ERRNO"}
          ]
        }"#,
    )
    .unwrap();
    assert!(matches!(profile, Seccomp::Profile(_)));
    let mut s = shell("mkdir /made || echo failed; grep '^Seccomp:' /proc/self/status");
    s.seccomp = profile.clone();
    let out = run(&s);
    out.upper();
    assert_eq!(out.stdout, vec!["failed", "Seccomp:\t2"]);
    assert!(
        out.stderr
            .iter()
            .any(|l| l.contains("No space left on device")),
        "{:?}",
        out.stderr
    );
    // What the profile allows is allowed: user namespaces here.
    let results = probe_calls(profile, &["unshare_user"]);
    assert_eq!(errno_of(&results, "unshare_user"), "0", "{results:?}");
}

#[test]
fn a_profile_that_refuses_execve_names_the_program() {
    let profile = Seccomp::from_json(
        br#"{"defaultAction": "SCMP_ACT_ALLOW",
             "syscalls": [{"names": ["execve", "execveat"], "action": "SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let mut s = spec(&["/bin/true"]);
    s.seccomp = profile;
    let out = run(&s);
    let Err(error) = &out.result else {
        panic!("execve was not refused");
    };
    let message = error.to_string();
    assert!(
        message.contains("/bin/true") && message.contains("Operation not permitted"),
        "{message}"
    );
}

#[test]
fn foreign_steps_run_under_the_hosts_filter() {
    check_binfmt("mips64le").expect(
        "qemu-mips64el must be registered with the F flag: run `kiln setup-binfmt mips64le`",
    );
    let mut s = shell(
        "uname -m; grep '^Seccomp:' /proc/self/status; seq 1 5 | sort -r | head -1; \
         unshare -U true 2>/dev/null || echo refused",
    );
    s.lowers = vec![busybox("mips64el")];
    s.arch = Some("mips64le".into());
    assert_eq!(
        status_line(&s),
        vec!["mips64", "Seccomp:\t2", "5", "refused"]
    );
}
