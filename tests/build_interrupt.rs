//! Ctrl-C during `kiln build`: the running step is killed, the build fails with
//! a clear message, no cache record is left for the step, and the next build
//! of the same Dockerfile works.

mod build_common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use build_common::{cached_steps, run_ok, run_steps, Env};

/// The slow step is slow only the first time: its cache mount remembers that
/// it ran, and cache mount contents are not part of the step's cache key, so
/// the rebuild runs the very same definition quickly.
const DOCKERFILE: &str = "FROM busybox\nRUN echo before > /before\n\
RUN --mount=type=cache,target=/c,id=interrupt sh -c '[ -e /c/ran ] || { touch /c/ran; sleep 60; }; echo done > /slow'\n";

#[test]
fn ctrl_c_cancels_the_build_and_the_next_build_works() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", DOCKERFILE)]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--root")
        .arg(env.root())
        .args(["build", "--progress", "plain", "-t", "interrupted"])
        .arg(&ctx)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("#2 [") {
            break;
        }
    }
    // Let the slow step get into its sleep, then press Ctrl-C.
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for line in lines {
        seen.push_str(&line.unwrap());
        seen.push('\n');
    }
    let exit = child.wait().unwrap();
    assert!(!exit.success(), "an interrupted build must fail:\n{seen}");
    assert!(
        sent.elapsed() < Duration::from_secs(30),
        "the 60 s step was not killed:\n{seen}"
    );
    assert!(seen.contains("cancel"), "{seen}");

    // Nothing was tagged, and the killed step left no cache record: the same
    // Dockerfile runs it again (quickly now), reusing the step that finished.
    let out = env.kiln(&["inspect", "interrupted"]);
    assert!(
        !out.status.success(),
        "an interrupted build tagged an image"
    );
    let (_, stderr) = env.build(&ctx, &["-t", "interrupted"]);
    assert_eq!(
        (cached_steps(&stderr), run_steps(&stderr)),
        (1, 1),
        "{stderr}"
    );
    run_ok(&mut env.command(&["fsck"]));
}

/// What a killed kiln (SIGKILL: no cleanup at all) leaves in the store's tmp
/// directory goes when the next kiln opens the store, but never while the
/// kiln that made it is alive.
#[test]
fn the_next_kiln_removes_what_a_killed_one_left_in_tmp() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN echo x > /x && sleep 60\n")],
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--root")
        .arg(env.root())
        .args(["build", "--progress", "plain"])
        .arg(&ctx)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("#1 [") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let tmp = env.root().join("kiln/tmp");
    let listing = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let live = listing();
    assert!(
        live.iter().any(|name| name.starts_with("step-")),
        "{live:?}"
    );
    // Another kiln on the same store leaves a live build's files alone.
    run_ok(&mut env.command(&["images"]));
    assert_eq!(listing(), live);

    child.kill().unwrap();
    child.wait().unwrap();
    drop(lines);
    assert_eq!(listing(), live, "SIGKILL cleans nothing up");
    run_ok(&mut env.command(&["images"]));
    assert_eq!(listing(), Vec::<String>::new());
    // The store is whole and builds again.
    run_ok(&mut env.command(&["fsck"]));
}
