//! `kiln build --security-opt`: RUN steps under Docker's default seccomp
//! profile, `seccomp=unconfined`, and profiles in Docker's JSON format.

mod build_common;

use build_common::*;

const PROBE: &str = "FROM busybox\nRUN grep '^Seccomp:' /proc/self/status > /seccomp; \
    (unshare -U true 2>/dev/null && echo allowed || echo refused) > /userns\n";

fn read(fs: &std::path::Path, name: &str) -> String {
    std::fs::read_to_string(fs.join(name))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn run_steps_get_dockers_default_profile() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", PROBE)]);
    let fs = env.export(&ctx, &[]);
    assert_eq!(read(&fs, "seccomp"), "Seccomp:\t2");
    assert_eq!(read(&fs, "userns"), "refused");
}

#[test]
fn unconfined_runs_without_a_filter_and_shares_the_cache() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", PROBE)]);
    let fs = env.export(&ctx, &["--security-opt", "seccomp=unconfined"]);
    assert_eq!(read(&fs, "seccomp"), "Seccomp:\t0");
    assert_eq!(read(&fs, "userns"), "allowed");
    // As in Docker and BuildKit, the filter is not part of the cache key: a
    // profile decides whether a step may succeed, not what it makes.
    let (_, stderr) = env.build(&ctx, &[]);
    assert_eq!(cached_steps(&stderr), 1, "{stderr}");
}

#[test]
fn a_profile_file_in_dockers_format_applies() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", "FROM busybox\nRUN mkdir /made\n"),
            (
                "profile.json",
                r#"{
                  "defaultAction": "SCMP_ACT_ALLOW",
                  "syscalls": [
                    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 28}
                  ]
                }"#,
            ),
        ],
    );
    let opt = format!("seccomp={}", ctx.join("profile.json").display());
    let out = env.try_build(&ctx, &["--security-opt", &opt]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mkdir was not refused:\n{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    // The default profile allows it.
    env.build(&ctx, &[]);
}

#[test]
fn bad_options_and_profiles_are_errors_that_say_what_is_wrong() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", "FROM busybox\nRUN true\n"),
            (
                "bad.json",
                r#"{"defaultAction": "SCMP_ACT_ERRNO",
                    "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOWED"}]}"#,
            ),
        ],
    );
    let stderr_of = |opt: &str| {
        let out = env.try_build(&ctx, &["--security-opt", opt]);
        assert!(!out.status.success(), "{opt} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let bad = ctx.join("bad.json").display().to_string();
    let stderr = stderr_of(&format!("seccomp={bad}"));
    assert!(
        stderr.contains(&format!("the seccomp profile {bad} is not valid"))
            && stderr.contains("at syscalls[0].action: unknown variant `SCMP_ACT_ALLOWED`"),
        "{stderr}"
    );
    let missing = ctx.join("missing.json").display().to_string();
    let stderr = stderr_of(&format!("seccomp={missing}"));
    assert!(
        stderr.contains(&format!("cannot read the seccomp profile {missing}")),
        "{stderr}"
    );
    let stderr = stderr_of("apparmor=unconfined");
    assert!(
        stderr.contains("--security-opt apparmor=unconfined: unknown security option"),
        "{stderr}"
    );
    let stderr = stderr_of("seccomp=");
    assert!(stderr.contains("expected seccomp=unconfined"), "{stderr}");
}
