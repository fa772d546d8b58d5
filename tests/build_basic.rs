//! End-to-end `kiln build` on the busybox fixture: RUN, COPY, cache hits and
//! misses, whiteouts, multi-stage, heredocs, cache mounts.

mod build_common;

use build_common::{cached_steps, run_ok, run_steps, Env};

#[test]
fn run_and_copy_then_everything_cached() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", "FROM busybox\nCOPY hello.txt /hello.txt\nRUN cat /hello.txt > /copied && echo ran\nENV A=1\nRUN echo $A > /a\n"),
            ("hello.txt", "hello\n"),
        ],
    );
    let (id, stderr) = env.build(&ctx, &["-t", "t1"]);
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(run_steps(&stderr), 3, "{stderr}");
    let (again, stderr) = env.build(&ctx, &["-t", "t1"]);
    assert_eq!(id, again);
    assert_eq!(cached_steps(&stderr), 3, "{stderr}");
    let fs = env.export(&ctx, &[]);
    assert_eq!(
        std::fs::read_to_string(fs.join("copied")).unwrap(),
        "hello\n"
    );
    assert_eq!(std::fs::read_to_string(fs.join("a")).unwrap(), "1\n");
}

/// The keys of the cache records in `env`'s store.
fn record_keys(env: &Env) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(env.root().join("kiln/cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Files of a context that COPY reads in every way there is.
fn copy_context(env: &Env) -> std::path::PathBuf {
    let big = "0123456789abcdef".repeat(4096);
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM busybox AS base\n\
                 COPY src /src\n\
                 COPY --chown=1:1 one.txt /one.txt\n\
                 COPY --exclude=sub src /nosub\n\
                 FROM busybox\n\
                 COPY --from=base /src /from-base\n\
                 COPY *.txt big /txt/\n\
                 RUN cat /txt/one.txt /from-base/a > /out\n",
            ),
            ("src/a", "a\n"),
            ("src/sub/b", "b\n"),
            ("one.txt", "1\n"),
            ("two.txt", "2\n"),
            ("big", &big),
        ],
    );
    std::fs::hard_link(ctx.join("src/a"), ctx.join("src/a-link")).unwrap();
    std::os::unix::fs::symlink("a", ctx.join("src/link")).unwrap();
    ctx
}

#[test]
fn keys_found_after_the_copies_ran_are_the_keys_planning_finds() {
    // A store without cache records keys COPY sources once the COPY has
    // read them; one with records reads them while planning. Both record
    // every step under the same keys.
    let fresh = Env::new();
    let ctx = copy_context(&fresh);
    assert!(record_keys(&fresh).is_empty(), "an import records nothing");
    let (_, stderr) = fresh.build(&ctx, &[]);
    assert_eq!(run_steps(&stderr), 6, "{stderr}");
    let seeded = Env::new();
    let seed = seeded.context(
        "seed",
        &[("Dockerfile", "FROM busybox\nRUN echo seed > /s\n")],
    );
    seeded.build(&seed, &[]);
    let seed_keys = record_keys(&seeded);
    seeded.build(&copy_context(&seeded), &[]);
    let found_after = record_keys(&fresh);
    assert_eq!(found_after.len(), 6);
    assert_eq!(
        found_after,
        &record_keys(&seeded) - &seed_keys,
        "the same steps under the same keys"
    );
    // The fresh store hits them all; --no-cache (which also keys after the
    // copies) records them under the same keys again.
    let (_, stderr) = fresh.build(&ctx, &[]);
    assert_eq!(cached_steps(&stderr), 6, "{stderr}");
    let (_, stderr) = fresh.build(&ctx, &["--no-cache"]);
    assert_eq!(run_steps(&stderr), 6, "{stderr}");
    assert_eq!(record_keys(&fresh), found_after);
}

#[test]
fn steps_that_ran_before_a_failure_are_recorded_when_keyed_after_their_copy() {
    let env = Env::new();
    let failing = "FROM busybox\nCOPY files /files\nRUN cat /files/f > /g\nRUN exit 3\n";
    let ctx = env.context("ctx", &[("Dockerfile", failing), ("files/f", "f\n")]);
    let failed = env.try_build(&ctx, &[]);
    assert!(!failed.status.success());
    std::fs::write(ctx.join("Dockerfile"), failing.replace("exit 3", "true")).unwrap();
    let (_, stderr) = env.build(&ctx, &[]);
    assert_eq!(
        (cached_steps(&stderr), run_steps(&stderr)),
        (2, 1),
        "{stderr}"
    );
}

#[test]
fn config_only_edits_rebuild_no_filesystem_step() {
    let env = Env::new();
    let dockerfile = "FROM busybox\nRUN echo a > /a\nLABEL version=1\nEXPOSE 80\nCMD [\"true\"]\nRUN echo b > /b\n";
    let ctx = env.context("ctx", &[("Dockerfile", dockerfile)]);
    let (first, stderr) = env.build(&ctx, &[]);
    assert_eq!(run_steps(&stderr), 2, "{stderr}");

    // LABEL, EXPOSE and CMD edits change the image, but no RUN re-runs.
    let edited = dockerfile
        .replace("version=1", "version=2")
        .replace("EXPOSE 80", "EXPOSE 8080")
        .replace("\"true\"", "\"false\"");
    std::fs::write(ctx.join("Dockerfile"), edited).unwrap();
    let (second, stderr) = env.build(&ctx, &[]);
    assert_eq!(run_steps(&stderr), 0, "{stderr}");
    assert_ne!(first, second, "the config changed, so must the image id");

    // An ENV edit does reach the RUN after it.
    let with_env = dockerfile.replace("LABEL version=1", "ENV X=1");
    std::fs::write(ctx.join("Dockerfile"), &with_env).unwrap();
    let (_, stderr) = env.build(&ctx, &[]);
    std::fs::write(ctx.join("Dockerfile"), with_env.replace("X=1", "X=2")).unwrap();
    let (_, stderr2) = env.build(&ctx, &[]);
    assert_eq!(
        (run_steps(&stderr2), cached_steps(&stderr2)),
        (1, 1),
        "{stderr}\n{stderr2}"
    );
}

#[test]
fn changes_invalidate_exactly_the_steps_after_them() {
    let env = Env::new();
    let dockerfile = "FROM busybox\nRUN echo first > /1\nCOPY a.txt /a.txt\nARG V=1\nRUN echo $V > /v\nRUN echo last > /l\n";
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", dockerfile), ("a.txt", "a"), ("b.txt", "b")],
    );
    let (first, stderr) = env.build(&ctx, &[]);
    assert_eq!(run_steps(&stderr), 4, "{stderr}");

    // A file no COPY reads changes nothing.
    std::fs::write(ctx.join("b.txt"), "B").unwrap();
    let (same, stderr) = env.build(&ctx, &[]);
    assert_eq!(
        (same.as_str(), run_steps(&stderr)),
        (first.as_str(), 0),
        "{stderr}"
    );

    // The copied file: the COPY and everything after it.
    std::fs::write(ctx.join("a.txt"), "A").unwrap();
    let (_, stderr) = env.build(&ctx, &[]);
    assert_eq!(
        (cached_steps(&stderr), run_steps(&stderr)),
        (1, 3),
        "{stderr}"
    );

    // A build arg: the RUNs after its ARG (ARG values reach RUN's env).
    let (_, stderr) = env.build(&ctx, &["--build-arg", "V=2"]);
    assert_eq!(
        (cached_steps(&stderr), run_steps(&stderr)),
        (2, 2),
        "{stderr}"
    );

    // An instruction changed: it and after.
    let changed = dockerfile.replace("echo last", "echo LAST");
    std::fs::write(ctx.join("Dockerfile"), changed).unwrap();
    let (_, stderr) = env.build(&ctx, &[]);
    assert_eq!(
        (cached_steps(&stderr), run_steps(&stderr)),
        (3, 1),
        "{stderr}"
    );

    // --no-cache runs everything.
    let (_, stderr) = env.build(&ctx, &["--no-cache"]);
    assert_eq!(
        (cached_steps(&stderr), run_steps(&stderr)),
        (0, 4),
        "{stderr}"
    );
}

#[test]
fn deleting_a_base_file_is_a_whiteout() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN rm /etc/passwd && mkdir -p /x && echo y > /x/y\n",
        )],
    );
    let fs = env.export(&ctx, &[]);
    assert!(!fs.join("etc/passwd").exists());
    assert!(fs.join("etc").is_dir());
    assert_eq!(std::fs::read_to_string(fs.join("x/y")).unwrap(), "y\n");
}

#[test]
fn multi_stage_with_a_failing_unused_stage() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox AS broken\nRUN exit 3\n\nFROM busybox AS builder\nRUN echo built > /artifact\n\nFROM busybox\nCOPY --from=builder /artifact /from-builder\nRUN cat /from-builder\n",
        )],
    );
    let fs = env.export(&ctx, &[]);
    assert_eq!(
        std::fs::read_to_string(fs.join("from-builder")).unwrap(),
        "built\n"
    );
    // Building the broken stage fails with the instruction, line and exit code.
    let out = env.try_build(&ctx, &["--target", "broken"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("Dockerfile:2"), "{stderr}");
    assert!(stderr.contains("RUN exit 3"), "{stderr}");
    assert!(stderr.contains("code 3"), "{stderr}");
    // The error is the located instruction, then its cause, once.
    assert!(
        stderr.contains(
            "error: Dockerfile:2:1: RUN exit 3\n  caused by: the step exited with code 3"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.matches("caused by:").count(), 1, "{stderr}");
    // And the next build works.
    env.build(&ctx, &[]);
}

#[test]
fn heredocs_in_run_and_copy() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN <<EOF\necho one > /one\necho two > /two\nEOF\nCOPY <<EOT /etc/greeting\nhello there\nEOT\n",
        )],
    );
    let fs = env.export(&ctx, &[]);
    assert_eq!(std::fs::read_to_string(fs.join("one")).unwrap(), "one\n");
    assert_eq!(std::fs::read_to_string(fs.join("two")).unwrap(), "two\n");
    assert_eq!(
        std::fs::read_to_string(fs.join("etc/greeting")).unwrap(),
        "hello there\n"
    );
}

#[test]
fn cache_mounts_persist_between_builds_and_stay_out_of_layers() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nARG N=1\nRUN --mount=type=cache,target=/cache echo $N >> /cache/log && cat /cache/log > /seen\n",
        )],
    );
    env.build(&ctx, &["--build-arg", "N=1"]);
    let fs = env.export(&ctx, &["--build-arg", "N=2"]);
    assert_eq!(std::fs::read_to_string(fs.join("seen")).unwrap(), "1\n2\n");
    assert!(
        !fs.join("cache/log").exists(),
        "cache mount content leaked into the layer"
    );
}

#[test]
fn secrets_reach_run_but_not_the_image() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM busybox\nRUN --mount=type=secret,id=tok wc -c < /run/secrets/tok > /len\n",
            ),
            ("tok.txt", "s3cret"),
        ],
    );
    let secret = format!("id=tok,src={}", ctx.join("tok.txt").display());
    let fs = env.export(&ctx, &["--secret", &secret]);
    assert_eq!(std::fs::read_to_string(fs.join("len")).unwrap().trim(), "6");
    assert!(!fs.join("run/secrets/tok").exists());
}

#[test]
fn foreign_architecture_runs_under_qemu() {
    let env = Env::new();
    env.import("busybox-mips64el.tar", "busybox-mips:latest");
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM busybox-mips\nRUN uname -m > /arch\n")],
    );
    let fs = env.export(&ctx, &["--platform", "linux/mips64le"]);
    assert_eq!(
        std::fs::read_to_string(fs.join("arch")).unwrap().trim(),
        "mips64"
    );
}

#[test]
fn two_clean_builds_give_one_digest() {
    let files = [
        (
            "Dockerfile",
            "FROM busybox\nCOPY . /src\nRUN ls /src > /listing && date +%Y > /year\nLABEL a=b\n",
        ),
        ("x", "1"),
        ("dir/y", "2"),
    ];
    let build = || {
        let env = Env::new();
        let ctx = env.context("ctx", &files);
        let out = run_ok(
            std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
                .arg("--root")
                .arg(env.root())
                .args(["build", "--progress", "quiet"])
                .arg(&ctx)
                .env("SOURCE_DATE_EPOCH", "1700000000"),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let first = build();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(first, build());
}

#[test]
fn resource_limits_bound_run_steps() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN for i in $(seq 40); do sleep 5 & done; wait\n",
        )],
    );
    // 40 background processes do not fit in a pids limit of 16.
    let out = env.try_build(&ctx, &["--pids-limit", "16"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the pids limit was not applied:\n{stderr}"
    );
    // The same step with a limit it fits in builds.
    let (_, stderr) = env.build(
        &ctx,
        &["--pids-limit", "100", "--memory", "256m", "--cpus", "1"],
    );
    assert_eq!(run_steps(&stderr), 1, "{stderr}");
    // A malformed limit is refused before anything runs.
    let out = env.try_build(&ctx, &["--memory", "lots"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("512m"));
}

#[test]
fn context_binds_share_one_exported_tree_per_content() {
    let env = Env::new();
    let dockerfile = "FROM busybox\n\
        RUN --mount=type=bind,target=/c cat /c/data > /one\n\
        RUN --mount=type=bind,target=/c,source=data cat /c > /file\n\
        RUN --mount=type=bind,target=/c cat /c/data > /two\n";
    let ctx = env.context("ctx", &[("Dockerfile", dockerfile), ("data", "v1\n")]);
    let trees = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(env.root().join("kiln/snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("context_"))
            .collect();
        names.sort();
        names
    };
    let rootfs = env.dir.path().join("rootfs");
    let output = format!("type=local,dest={}", rootfs.display());
    env.build(&ctx, &["--output", &output]);
    // One tree for the whole context (both steps), one for the single file.
    assert_eq!(trees().len(), 2, "{:?}", trees());
    for file in ["one", "file", "two"] {
        assert_eq!(std::fs::read_to_string(rootfs.join(file)).unwrap(), "v1\n");
    }

    // Changed content: new trees, and the steps see it.
    std::fs::write(ctx.join("data"), "v2\n").unwrap();
    std::fs::remove_dir_all(&rootfs).unwrap();
    env.build(&ctx, &["--output", &output]);
    assert_eq!(trees().len(), 4, "{:?}", trees());
    for file in ["one", "file", "two"] {
        assert_eq!(std::fs::read_to_string(rootfs.join(file)).unwrap(), "v2\n");
    }
    // prune drops them all; they are made again on demand.
    run_ok(&mut env.command(&["prune"]));
    assert!(trees().is_empty());
}
