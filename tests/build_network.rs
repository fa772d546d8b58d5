//! The default RUN network of `kiln build`: a private namespace reaching out
//! through slirp4netns, the host's loopback out of reach, `--network host` and
//! `none` explicit, and nothing left running when the build ends (also on
//! Ctrl-C and when kiln is killed). Traffic only goes to loopback and to a
//! network namespace a test makes itself. Needs root, slirp4netns, iproute2 and
//! busybox (scripts/install-deps.sh).

mod build_common;

use std::io::{BufRead, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use build_common::Env;

/// Whether this host can run the private network; says why not otherwise
/// (only without root or the tools, which CI has).
fn can_run() -> bool {
    let uid = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = uid
        .lines()
        .any(|l| l.split_whitespace().take(3).eq(["Uid:", "0", "0"]));
    if !root {
        return skip("the default RUN network needs root");
    }
    for tool in ["slirp4netns", "ip", "busybox"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return skip(&format!(
                "{tool} is not installed (scripts/install-deps.sh)"
            ));
        }
    }
    true
}

/// Skips a test that cannot run here, except in CI (`CI` set), whose
/// machine must run it: there a missing prerequisite fails the test.
fn skip(why: &str) -> bool {
    assert!(std::env::var_os("CI").is_none(), "cannot run in CI: {why}");
    eprintln!("skipped: {why}");
    false
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A "test host": a network namespace of the test's own, joined to the host's
/// by a veth pair (10.213.7.1 here, 10.213.7.2 there), serving `files` over
/// HTTP on 10.213.7.2:8080. Removed when dropped.
struct TestHost {
    netns: String,
    veth: String,
    server: Option<Child>,
    _dir: tempfile::TempDir,
}

const TEST_HOST: &str = "10.213.7.2:8080";

impl TestHost {
    fn start(files: &[(&str, &str)]) -> TestHost {
        let id = std::process::id();
        let mut host = TestHost {
            netns: format!("kiln-test-{id}"),
            veth: format!("kt{id}h"),
            server: None,
            _dir: tempfile::tempdir().unwrap(),
        };
        let peer = format!("kt{id}n");
        ip(&["netns", "add", &host.netns]);
        ip(&[
            "link", "add", &host.veth, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &host.netns]);
        ip(&["addr", "add", "10.213.7.1/30", "dev", &host.veth]);
        ip(&["link", "set", &host.veth, "up"]);
        ip(&[
            "-n",
            &host.netns,
            "addr",
            "add",
            "10.213.7.2/30",
            "dev",
            &peer,
        ]);
        ip(&["-n", &host.netns, "link", "set", &peer, "up"]);
        ip(&["-n", &host.netns, "link", "set", "lo", "up"]);
        for (name, content) in files {
            std::fs::write(host._dir.path().join(name), content).unwrap();
        }
        let server = Command::new("ip")
            .args(["netns", "exec", &host.netns, "busybox", "httpd", "-f"])
            .args(["-p", TEST_HOST, "-h"])
            .arg(host._dir.path())
            .spawn()
            .unwrap();
        host.server = Some(server);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(TEST_HOST).is_err() {
            assert!(
                Instant::now() < deadline,
                "the test host's server never came up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        host
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

#[test]
fn default_network_reaches_out_through_a_private_namespace() {
    if !can_run() {
        return;
    }
    let _host = TestHost::start(&[("hello.txt", "hello from the test host\n")]);
    let env = Env::new();
    let dockerfile = format!(
        "FROM busybox\nRUN wget -q -O /got http://{TEST_HOST}/hello.txt && ls /sys/class/net > /ifaces && grep nameserver /etc/resolv.conf > /dns\n"
    );
    let ctx = env.context("ctx", &[("Dockerfile", &dockerfile)]);
    let fs = env.export(&ctx, &[]);
    let read = |name: &str| std::fs::read_to_string(fs.join(name)).unwrap();
    assert_eq!(read("got"), "hello from the test host\n");
    // Its own interfaces, not the host's, and slirp4netns' DNS forwarder.
    assert_eq!(read("ifaces"), "lo\ntap0\n");
    assert_eq!(read("dns"), "nameserver 10.0.2.3\n");
}

/// A server on the host's 127.0.0.1 that answers "host".
fn host_loopback_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(b"host\n");
        }
    });
    port
}

#[test]
fn host_loopback_is_out_of_reach_unless_the_network_is_host() {
    if !can_run() {
        return;
    }
    let port = host_loopback_server();
    let env = Env::new();
    // The step's own loopback, and slirp4netns' gateway, which would lead to
    // the host's loopback without --disable-host-loopback.
    let probe = format!(
        "for a in 127.0.0.1 10.0.2.2; do nc -w 2 $a {port} </dev/null || echo unreachable; done"
    );
    let dockerfile = format!(
        "FROM busybox\nRUN ({probe}) > /default\nRUN --network=host ({probe}) > /host\nRUN --network=none ls /sys/class/net > /none\nRUN --network=default ({probe}) > /explicit\n"
    );
    let ctx = env.context("ctx", &[("Dockerfile", &dockerfile)]);
    let fs = env.export(&ctx, &[]);
    let read = |dir: &std::path::Path, name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    assert_eq!(read(&fs, "default"), "unreachable\nunreachable\n");
    assert_eq!(read(&fs, "host"), "host\nunreachable\n");
    assert_eq!(read(&fs, "none"), "lo\n");
    assert_eq!(read(&fs, "explicit"), "unreachable\nunreachable\n");

    // `--network host` for the whole build reaches it from the step that
    // does not say, not from the one that asks for the default network.
    let fs = env.export(&ctx, &["--network", "host"]);
    assert_eq!(read(&fs, "default"), "host\nunreachable\n");
    assert_eq!(read(&fs, "explicit"), "unreachable\nunreachable\n");
}

/// `--network` of `kiln build` and `kiln run` takes the modes RUN
/// --network takes, by the same names, and lists them for any other.
#[test]
fn network_flags_take_the_three_modes_and_list_them_otherwise() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", "FROM busybox\n")]);
    for args in [
        vec!["build", "--network", "bridge", &*ctx.to_string_lossy()],
        vec!["run", "--rm", "--network", "bridge", "busybox", "true"],
    ] {
        let out = env.kiln(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("invalid value 'bridge' for '--network")
                && stderr.contains("[possible values: default, none, host]"),
            "{args:?}: {stderr}"
        );
    }
    let help = env.kiln(&["build", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("[possible values: default, none, host]"),
        "{help}"
    );
    // A mode that is not the default network names itself in -p's error.
    let out = env.kiln(&[
        "run",
        "--rm",
        "-p",
        "8080:80",
        "--network",
        "none",
        "busybox",
        "true",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("drop --network none or -p")
            || stderr.contains("-p needs the default network"),
        "{stderr}"
    );
}

#[test]
fn a_missing_slirp4netns_says_what_to_install_and_never_falls_back() {
    if !can_run() {
        return;
    }
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN echo ran > /ran\n")],
    );
    let no_tools = env.dir.path().join("empty-path");
    std::fs::create_dir_all(&no_tools).unwrap();
    let build = |extra: &[&str]| {
        let mut args = vec!["build", "--progress", "plain"];
        args.extend_from_slice(extra);
        let ctx = ctx.to_string_lossy().into_owned();
        args.push(&ctx);
        env.command(&args).env("PATH", &no_tools).output().unwrap()
    };
    let out = build(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("needs slirp4netns")
            && stderr.contains("apt-get install slirp4netns")
            && stderr.contains("--network host"),
        "{stderr}"
    );
    // Explicit networks need no slirp4netns: it starts only when used.
    let out = build(&["--network", "none"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_slirp4netns_that_fails_to_start_is_an_error_with_its_message() {
    if !can_run() {
        return;
    }
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN echo ran > /ran\n")],
    );
    let bin = env.dir.path().join("broken-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("slirp4netns");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'cannot open tap: boom' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = env
        .command(&["build", "--progress", "plain"])
        .arg(&ctx)
        .env("PATH", &bin)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot start the default RUN network: slirp4netns failed")
            && stderr.contains("exit status: 3")
            && stderr.contains("cannot open tap: boom"),
        "{stderr}"
    );
}

/// What a running build's network is made of: slirp4netns' pid and the
/// namespace (`net:[inode]`) kiln holds.
fn network_of(kiln: u32) -> (u32, String) {
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stack = children(kiln)
            .into_iter()
            .find(|pid| comm(*pid).as_deref() == Some("slirp4netns"));
        let netns = std::fs::read_dir(format!("/proc/{kiln}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .find(|t| t.to_string_lossy().starts_with("net:[") && *t != host_ns);
        if let (Some(stack), Some(netns)) = (stack, netns) {
            return (stack, netns.to_string_lossy().into_owned());
        }
        assert!(
            Instant::now() < deadline,
            "kiln {kiln} never started slirp4netns"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The children of every thread of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten();
    tasks
        .flat_map(|task| {
            std::fs::read_to_string(task.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_string())
}

fn state(pid: u32) -> Option<char> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("State:"))?;
    line.split_whitespace().nth(1)?.chars().next()
}

/// Every process link (its namespace, its descriptors) to `netns`.
fn holders(netns: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let dir = entry.path();
        let fds = std::fs::read_dir(dir.join("fd"))
            .into_iter()
            .flatten()
            .flatten();
        for link in std::iter::once(dir.join("ns/net")).chain(fds.map(|e| e.path())) {
            if std::fs::read_link(&link).is_ok_and(|t| t.to_string_lossy() == netns) {
                found.push(link.display().to_string());
            }
        }
    }
    found
}

/// Asserts that slirp4netns `stack` is gone (a zombie only when kiln was
/// killed and someone else must reap it) and nothing holds `netns`.
fn assert_gone(stack: u32, netns: &str, zombie_ok: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let running = comm(stack).as_deref() == Some("slirp4netns")
            && !(zombie_ok && state(stack) == Some('Z'));
        let held = holders(netns);
        if !running && held.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: slirp4netns {stack} running: {running}, {netns} held by {held:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `kiln build` of a step that sleeps on the default network; returns
/// the process once the step runs.
fn start_sleeping_build(env: &Env, ctx: &std::path::Path) -> Child {
    let mut child = env
        .command(&["build", "--progress", "plain"])
        .arg(ctx)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    // The step's output, not its header (which shows the quotes).
    for line in lines.by_ref() {
        if line.unwrap().contains("sleeping") {
            break;
        }
    }
    // Keep draining so kiln never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

#[test]
fn nothing_is_left_running_after_a_build_its_cancellation_or_its_death() {
    if !can_run() {
        return;
    }
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo \"sleep\"\"ing\"; sleep 3\n",
        )],
    );
    // A build that ends by itself.
    let mut kiln = start_sleeping_build(&env, &ctx);
    let (stack, netns) = network_of(kiln.id());
    assert!(kiln.wait().unwrap().success());
    assert_gone(stack, &netns, false);

    // Ctrl-C.
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN echo \"sleep\"\"ing\"; sleep 60\n",
    )
    .unwrap();
    let mut kiln = start_sleeping_build(&env, &ctx);
    let (stack, netns) = network_of(kiln.id());
    let sent = Command::new("kill")
        .args(["-INT", &kiln.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    assert!(!kiln.wait().unwrap().success());
    assert_gone(stack, &netns, false);

    // kiln killed outright: slirp4netns sees its exit pipe close and exits.
    let mut kiln = start_sleeping_build(&env, &ctx);
    let (stack, netns) = network_of(kiln.id());
    kiln.kill().unwrap();
    kiln.wait().unwrap();
    assert_gone(stack, &netns, true);
}
