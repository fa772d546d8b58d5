//! Built images as other tools see them, builds that die half-way, progress
//! formats, and identical work done once.

mod build_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use build_common::{run_ok, run_steps, Env};

#[test]
fn umoci_and_skopeo_read_built_images() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", "FROM busybox\nRUN echo made > /made\nRUN rm /etc/group\nENV GREETING=hi\nCMD [\"cat\", \"/made\"]\n\
                # Small random files between tar headers: gzip chunks mixing stored\n\
                # and compressed blocks, which Go's gzip (umoci) must read back.\n\
                RUN mkdir /noise && for i in $(seq 1 400); do head -c 4096 /dev/urandom > /noise/$i; done && cd / && sha256sum noise/* > /noise.sums\n"),
        ],
    );
    env.build(&ctx, &["-t", "made:v1", "--label", "k=v"]);
    let layout = env.root();
    let reference = format!("oci:{}:made:v1", layout.display());
    let out = run_ok(Command::new("skopeo").args(["inspect", "--config", &reference]));
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["cat", "/made"]));
    assert_eq!(config["config"]["Labels"]["k"], "v");
    assert!(config["config"]["Env"].to_string().contains("GREETING=hi"));
    let history = config["history"].as_array().unwrap();
    assert!(
        history.iter().any(|h| h["empty_layer"] == true),
        "{history:?}"
    );

    let bundle = env.dir.path().join("bundle");
    let image = format!("{}:made:v1", layout.display());
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle),
    );
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/made")).unwrap(),
        "made\n"
    );
    assert!(
        !bundle.join("rootfs/etc/group").exists(),
        "the whiteout was not applied"
    );
    assert!(bundle.join("rootfs/etc/passwd").exists());
    let out = Command::new("sha256sum")
        .args(["--check", "--quiet", "noise.sums"])
        .current_dir(bundle.join("rootfs"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci unpacked other bytes: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_killed_build_leaves_nothing_half_done() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo before > /before\nRUN sleep 30 && echo slow > /slow\n",
        )],
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--root")
        .arg(env.root())
        .args(["build", "--progress", "plain", "-t", "k"])
        .arg(&ctx)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill it while the slow step runs.
    let stderr = child.stderr.take().unwrap();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
        if line.unwrap().starts_with("#2 [") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    // The killed step left no cache record: the next build runs it (and
    // reuses the step that finished).
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN echo before > /before\nRUN sleep 30 && echo slow > /slow\n"
            .replace("sleep 30", "sleep 0"),
    )
    .unwrap();
    let (_, stderr) = env.build(&ctx, &["-t", "k"]);
    assert!(stderr.contains("CACHED"), "{stderr}");
    assert_eq!(run_steps(&stderr), 1, "{stderr}");
    run_ok(&mut env.command(&["fsck"]));
}

#[test]
fn identical_steps_of_two_stages_run_once_and_stages_run_in_parallel() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox AS a\nRUN echo shared > /shared\nRUN sleep 1 && echo a > /a\n\
             FROM busybox AS b\nRUN echo shared > /shared\nRUN sleep 1 && echo b > /b\n\
             FROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\nCOPY --from=b /shared /shared\n",
        )],
    );
    let (_, stderr) = env.build(&ctx, &["--jobs", "4"]);
    let shared = stderr
        .lines()
        .filter(|l| l.contains("echo shared") && l.starts_with('#'))
        .count();
    assert_eq!(shared, 1, "{stderr}");
    assert_eq!(run_steps(&stderr), 6, "{stderr}");
}

#[test]
fn json_progress_is_one_event_per_line() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", "FROM busybox\nRUN echo out\n")]);
    let out = env.kiln(&["build", "--progress", "json", &ctx.to_string_lossy()]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "output" && e["line"] == "out"),
        "{stderr}"
    );
    assert!(events.iter().any(|e| e["event"] == "done"), "{stderr}");
    // stdout is the image id alone.
    assert!(String::from_utf8_lossy(&out.stdout)
        .trim()
        .starts_with("sha256:"));
}

#[test]
fn onbuild_triggers_of_the_base_run() {
    let env = Env::new();
    let base = env.context(
        "base",
        &[(
            "Dockerfile",
            "FROM busybox\nONBUILD RUN echo triggered > /triggered\n",
        )],
    );
    env.build(&base, &["-t", "with-trigger"]);
    let child = env.context(
        "child",
        &[("Dockerfile", "FROM with-trigger\nRUN cat /triggered\n")],
    );
    let fs = env.export(&child, &[]);
    assert_eq!(
        std::fs::read_to_string(fs.join("triggered")).unwrap(),
        "triggered\n"
    );
}

#[test]
fn output_archives_are_read_by_skopeo() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", "FROM busybox\nRUN echo x > /x\n")]);
    for (kind, transport) in [("oci", "oci-archive"), ("docker", "docker-archive")] {
        let dest = env.dir.path().join(format!("out-{kind}.tar"));
        let output = format!("type={kind},dest={}", dest.display());
        env.build(&ctx, &["-t", "arch:v1", "--output", &output]);
        run_ok(
            Command::new("skopeo").args(["inspect", &format!("{transport}:{}", dest.display())]),
        );
    }
}

/// `--root store` relative to the working directory: RUN steps bind files
/// from the store into a sandbox that has changed directory, so the store
/// must hand out absolute paths.
#[test]
fn a_relative_store_root_builds_run_steps() {
    let env = Env::empty();
    let context = env.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN echo hi > /hi\n")],
    );
    let fixture = build_common::fixture("busybox-amd64.tar");
    let kiln = |args: &[&str]| {
        run_ok(
            Command::new(env!("CARGO_BIN_EXE_kiln"))
                .current_dir(env.dir.path())
                .args(["--root", "relative-store"])
                .args(args)
                .env("NO_COLOR", "1")
                .stdin(Stdio::null()),
        );
    };
    kiln(&["import", fixture.to_str().unwrap(), "busybox"]);
    kiln(&["build", "--progress", "plain", context.to_str().unwrap()]);
    assert!(env.dir.path().join("relative-store/index.json").is_file());
}
