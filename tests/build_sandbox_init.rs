//! End-to-end: what a RUN step can read of the kiln that runs it (build
//! arguments, environment, privileges of its pid 1), and Docker's /dev for an
//! unprivileged user whatever umask kiln runs with.

mod build_common;

use std::process::Command;

use build_common::{run_ok, Env};

/// `command` (a kiln command) run through `sh` with umask 077 first.
fn with_umask_077(command: &Command) -> Command {
    let mut wrapped = Command::new("/bin/sh");
    wrapped
        .arg("-c")
        .arg("umask 077 && exec \"$0\" \"$@\"")
        .arg(command.get_program())
        .args(command.get_args());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(name, value),
            None => wrapped.env_remove(name),
        };
    }
    wrapped
}

#[test]
fn undeclared_build_args_secrets_and_kilns_environment_stay_out_of_steps() {
    let env = Env::new();
    // The step assembles the value from pieces: no command line of its own
    // holds it, so any match is a leak from kiln. The same search finds the
    // declared argument in the step's environment.
    let dockerfile = "FROM busybox\n\
        ARG DECLARED\n\
        RUN printf %s s3cr3t > /tmp/p && printf %s -value >> /tmp/p && \
        { for f in /proc/[0-9]*/cmdline /proc/[0-9]*/environ; do \
        tr '\\0' '\\n' 2>/dev/null < $f | grep -q -F -f /tmp/p && echo $f; done; \
        printf %s visi > /tmp/v && printf %s ble >> /tmp/v && \
        for f in /proc/[0-9]*/environ; do \
        tr '\\0' '\\n' 2>/dev/null < $f | grep -q -F -f /tmp/v && echo a-declared-arg-is-found; done | uniq; \
        echo DECLARED=$DECLARED; env | grep -c TOKEN; tr '\\0' ' ' < /proc/1/cmdline; echo; \
        grep -E '^Cap(Eff|Bnd)' /proc/1/status; grep '^THP_enabled' /proc/self/status; } > /found\n";
    let ctx = env.context("ctx", &[("Dockerfile", dockerfile)]);
    let dest = env.dir.path().join("out");
    let output = format!("type=local,dest={}", dest.display());
    let mut command = env.command(&[
        "build",
        "--progress",
        "plain",
        "--build-arg",
        "TOKEN=s3cr3t-value",
        "--build-arg",
        "DECLARED=visible",
        // A secret the step does not mount, from kiln's environment.
        "--secret",
        "id=tok,env=KILN_TEST_TOKEN",
        "--output",
        &output,
        &ctx.to_string_lossy(),
    ]);
    command.env("KILN_TEST_TOKEN", "s3cr3t-value");
    run_ok(&mut command);
    assert_eq!(
        std::fs::read_to_string(dest.join("found")).unwrap(),
        // (kiln runs without transparent huge pages; its steps do not.)
        "a-declared-arg-is-found\nDECLARED=visible\n0\nkiln-init \nCapEff:\t0000000000000020\nCapBnd:\t0000000000000000\nTHP_enabled:\t1\n"
    );
}

#[test]
fn an_unprivileged_step_writes_dev_null_whatever_kilns_umask() {
    let env = Env::new();
    let dockerfile = "FROM busybox\n\
        USER nobody\n\
        RUN echo x > /dev/null && stat -c '%n %a' /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty /dev/shm > /tmp/modes\n";
    let ctx = env.context("ctx", &[("Dockerfile", dockerfile)]);
    let dest = env.dir.path().join("out");
    let output = format!("type=local,dest={}", dest.display());
    let command = env.command(&[
        "build",
        "--progress",
        "plain",
        "--output",
        &output,
        &ctx.to_string_lossy(),
    ]);
    run_ok(&mut with_umask_077(&command));
    assert_eq!(
        std::fs::read_to_string(dest.join("tmp/modes")).unwrap(),
        "/dev/null 666\n/dev/zero 666\n/dev/full 666\n/dev/random 666\n/dev/urandom 666\n/dev/tty 666\n/dev/shm 1777\n"
    );
}
