//! End-to-end tests of `kiln run` in the foreground and `kiln commit`: the
//! command, environment and exit codes as Docker's, binds, a foreign
//! architecture, and that nothing is left behind.

mod build_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use build_common::Env;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An image with ENTRYPOINT and CMD, as Docker's reference table uses.
fn with_entrypoint(env: &Env) {
    let tar = build_common::fixture("busybox-amd64.tar");
    build_common::run_ok(&mut env.command(&[
        "import",
        "-c",
        r#"ENTRYPOINT ["/bin/echo", "ep"]"#,
        "-c",
        r#"CMD ["c1", "c2"]"#,
        "-c",
        "ENV FROM_IMAGE=image OVERRIDE=image",
        "-c",
        "WORKDIR /made/by/workdir",
        &tar.to_string_lossy(),
        "ep:latest",
    ]));
}

#[test]
fn entrypoint_and_cmd_as_docker_documents_them() {
    let env = Env::new();
    with_entrypoint(&env);
    // (arguments after `run`, expected stdout)
    let cases: &[(&[&str], &str)] = &[
        (&["ep"], "ep c1 c2\n"),
        (&["ep", "x", "y"], "ep x y\n"),
        (&["--entrypoint", "/bin/echo", "ep"], "\n"),
        (&["--entrypoint", "/bin/echo", "ep", "a", "b"], "a b\n"),
        (&["--entrypoint", "", "ep", "echo", "z"], "z\n"),
        (&["busybox", "echo", "plain"], "plain\n"),
    ];
    for (args, expected) in cases {
        let mut full = vec!["run", "--rm", "--network", "none"];
        full.extend_from_slice(args);
        let out = env.kiln(&full);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), *expected, "{args:?}");
    }
    let out = env.kiln(&["run", "--rm", "--entrypoint", "", "ep"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("no command specified"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn exit_codes_are_docker_s() {
    let env = Env::new();
    let code = |args: &[&str]| {
        let mut full = vec!["run", "--rm", "--network", "none", "busybox"];
        full.extend_from_slice(args);
        env.kiln(&full).status.code()
    };
    assert_eq!(code(&["true"]), Some(0));
    assert_eq!(code(&["sh", "-c", "exit 3"]), Some(3));
    assert_eq!(code(&["no-such-command"]), Some(127));
    assert_eq!(code(&["/etc/passwd"]), Some(126));
    assert_eq!(code(&["sh", "-c", "kill -TERM $$"]), Some(143));
    assert_eq!(
        env.kiln(&["run", "--rm", "no-such-image", "true"])
            .status
            .code(),
        Some(125)
    );
}

#[test]
fn environment_workdir_and_user_come_from_image_and_flags() {
    let env = Env::new();
    with_entrypoint(&env);
    let file = env.dir.path().join("env.list");
    std::fs::write(
        &file,
        "# comment\nFROM_FILE=file\nOVERRIDE=file\nFROM_KILN\n",
    )
    .unwrap();
    let out = env
        .command(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--env-file",
            &file.to_string_lossy(),
            "-e",
            "OVERRIDE=flag",
            "-e",
            "FROM_KILN",
            "-u",
            "nobody",
            "--entrypoint",
            "sh",
            "ep",
            "-c",
            "echo $FROM_IMAGE $FROM_FILE $OVERRIDE $FROM_KILN; pwd; id -un; echo $HOME",
        ])
        .env("FROM_KILN", "kiln's")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "image file flag kiln's\n/made/by/workdir\nnobody\n/nonexistent\n"
    );
    let out = env.kiln(&["run", "--rm", "-w", "/else", "busybox", "pwd"]);
    assert_eq!(stdout(&out), "/else\n");
    assert_eq!(
        env.kiln(&["run", "--rm", "-w", "rel", "busybox", "pwd"])
            .status
            .code(),
        Some(125)
    );
}

#[test]
fn a_non_root_user_of_a_debian_image_gets_bash_and_its_home() {
    let env = Env::new();
    env.import("debian12-minbase-amd64.tar.zst", "debian:12");
    let out = env.kiln(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-u",
        "www-data",
        "debian:12",
        "bash",
        "-c",
        "id -un; echo $HOME; touch /root/x",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stdout(&out), "www-data\n/var/www\n");
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn binds_are_readable_and_read_only_binds_are_enforced() {
    let env = Env::new();
    let host = env.dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("file"), "from the host\n").unwrap();
    let rw = format!("{}:/data", host.display());
    let ro = format!("{}:/data:ro", host.display());
    let out = env.kiln(&[
        "run",
        "--rm",
        "-v",
        &rw,
        "busybox",
        "sh",
        "-c",
        "cat /data/file; echo new > /data/new",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "from the host\n");
    assert_eq!(std::fs::read_to_string(host.join("new")).unwrap(), "new\n");
    let out = env.kiln(&[
        "run",
        "--rm",
        "-v",
        &ro,
        "busybox",
        "sh",
        "-c",
        "cat /data/file; echo x > /data/other",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
    assert!(!host.join("other").exists());
    let mount = format!("type=bind,source={},target=/m,readonly", host.display());
    let out = env.kiln(&[
        "run",
        "--rm",
        "--mount",
        &mount,
        "--mount",
        "type=tmpfs,target=/t",
        "busybox",
        "sh",
        "-c",
        "cat /m/file && touch /t/ok && ! touch /m/no",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.kiln(&["run", "--rm", "--read-only", "busybox", "touch", "/x"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn stdin_reaches_the_container_only_with_i() {
    let env = Env::new();
    let run = |args: &[&str]| {
        let mut child = env
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"piped in\n")
            .unwrap();
        child.wait_with_output().unwrap()
    };
    assert_eq!(
        stdout(&run(&["run", "--rm", "-i", "busybox", "cat"])),
        "piped in\n"
    );
    assert_eq!(stdout(&run(&["run", "--rm", "busybox", "cat"])), "");
}

#[test]
fn a_foreign_image_runs_under_qemu() {
    let env = Env::new();
    env.import("busybox-mips64el.tar", "busybox:mips");
    let out = env.kiln(&[
        "run",
        "--rm",
        "--platform",
        "linux/mips64le",
        "busybox:mips",
        "uname",
        "-m",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "mips64\n");
    let out = env.kiln(&[
        "run",
        "--rm",
        "--platform",
        "linux/arm64",
        "busybox:mips",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("linux/mips64le"), "{}", stderr(&out));
}

#[test]
fn platform_picks_the_image_of_a_multi_platform_name() {
    let env = Env::new();
    env.import("busybox-mips64el.tar", "busybox:mips64le");
    env.import("busybox-amd64.tar", "busybox:amd64");
    let ctx = env.context(
        "multi",
        &[(
            "Dockerfile",
            "ARG TARGETARCH\nFROM busybox:$TARGETARCH\nCOPY f /f\n",
        )],
    );
    std::fs::write(ctx.join("f"), "copied\n").unwrap();
    env.build(
        &ctx,
        &["--platform", "linux/amd64,linux/mips64le", "-t", "multi"],
    );
    let run = |platform: &str| {
        env.kiln(&[
            "run",
            "--rm",
            "--platform",
            platform,
            "multi",
            "uname",
            "-m",
        ])
    };
    let out = run("linux/mips64le");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "mips64\n");
    let out = run("linux/amd64");
    assert_eq!(stdout(&out), "x86_64\n", "{}", stderr(&out));
    // One it does not have is named, with those it has.
    let out = run("linux/arm64");
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("no image for linux/arm64 (it has linux/amd64, linux/mips64le)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn commit_makes_an_image_of_the_changes() {
    let env = Env::new();
    let out = env.kiln(&[
        "run",
        "--name",
        "changer",
        "busybox",
        "sh",
        "-c",
        "echo made > /made; rm /bin/true",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.kiln(&[
        "commit",
        "-c",
        r#"CMD ["cat", "/made"]"#,
        "-m",
        "by hand",
        "changer",
        "committed:v1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("sha256:"));
    let out = env.kiln(&["run", "--rm", "committed:v1"]);
    assert_eq!(stdout(&out), "made\n", "{}", stderr(&out));
    let out = env.kiln(&["run", "--rm", "committed:v1", "ls", "/bin/true"]);
    assert_eq!(out.status.code(), Some(1), "the deletion is in the layer");
    let history = stdout(&env.kiln(&["history", "committed:v1"]));
    assert!(
        history.contains("by hand") && history.contains("rm /bin/true"),
        "{history}"
    );
    // Another container of the image, unchanged: the image is the same files.
    assert!(env.kiln(&["rm", "changer"]).status.success());
}

/// Every process whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(marker) {
                found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_string_lossy().into_owned();
    mounts
        .lines()
        .filter(|l| l.contains(&dir))
        .map(str::to_string)
        .collect()
}

#[test]
fn rm_leaves_nothing_behind() {
    let env = Env::new();
    let out = env.kiln(&[
        "run",
        "--rm",
        "-v",
        "/anonymous",
        "busybox",
        "sh",
        "-c",
        "echo x > /anonymous/f; (sleep 3210 &); echo done",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let containers = env.root().join("kiln/containers");
    let left: Vec<_> = std::fs::read_dir(&containers)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != ".lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(processes_with("sleep 3210").is_empty());
    assert!(mounts_under(&env.root()).is_empty());
    assert_eq!(stdout(&env.kiln(&["ps", "-a", "-q"])), "");
}

#[test]
fn a_killed_kiln_run_leaves_nothing_running() {
    let env = Env::new();
    let mut child = env
        .command(&[
            "run",
            "--name",
            "victim",
            "busybox",
            "sh",
            "-c",
            "sleep 4321; echo never",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with("sleep 4321").len() < 2 {
        assert!(Instant::now() < deadline, "the container never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_with("sleep 4321").is_empty() {
        assert!(
            Instant::now() < deadline,
            "left running: {:?}",
            processes_with("sleep 4321")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(mounts_under(&env.root()).is_empty());
    let ps = stdout(&env.kiln(&["ps", "-a"]));
    assert!(ps.contains("Exited (137)"), "{ps}");
    assert!(env.kiln(&["rm", "victim"]).status.success());
}

#[test]
fn sigterm_to_kiln_reaches_the_container() {
    let env = Env::new();
    let child = env
        .command(&[
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "trap 'echo got TERM; exit 42' TERM; sleep 5678 & wait",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with("sleep 5678").len() < 2 {
        assert!(Instant::now() < deadline, "the container never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(stdout(&out), "got TERM\n");
}

#[test]
fn a_container_keeps_its_image_as_docker_s_rmi_and_prune_do() {
    let env = Env::new();
    let tar = build_common::fixture("busybox-amd64.tar");
    // A label makes it an image of its own, not the fixture's `busybox`.
    build_common::run_ok(&mut env.command(&[
        "import",
        "-c",
        "LABEL solo=1",
        &tar.to_string_lossy(),
        "solo:1",
    ]));
    let out = env.kiln(&[
        "run",
        "--name",
        "keeper",
        "--network",
        "none",
        "solo:1",
        "touch",
        "/kept",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The image's last name: refused while the container exists.
    let out = env.kiln(&["rmi", "solo:1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("container keeper") && stderr(&out).contains("kiln rm"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&env.kiln(&["images"])).contains("solo"));
    // Forced, the name goes but the container's image stays through prune.
    let out = env.kiln(&["rmi", "-f", "solo:1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(env.kiln(&["prune"]).status.success());
    let out = env.kiln(&["commit", "keeper", "after:1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.kiln(&["run", "--rm", "--network", "none", "after:1", "ls", "/kept"]);
    assert_eq!(stdout(&out), "/kept\n", "{}", stderr(&out));
}
