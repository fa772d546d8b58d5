//! End-to-end tests of detached containers (`kiln run -d` and `ps`, `logs`,
//! `stop`, `rm`, `wait`) and of publishing ports with `-p`.

mod build_common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use build_common::Env;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(env: &Env, args: &[&str]) -> String {
    let out = env.kiln(args);
    assert!(
        out.status.success(),
        "kiln {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn detached_containers_are_listed_logged_stopped_waited_for_and_removed() {
    let env = Env::new();
    let id = ok(
        &env,
        &[
            "run", "-d", "--name", "bg", "busybox", "sh", "-c",
            // The trap is set before the output the test waits for: `run -d`
            // returns before the shell runs, and a TERM before the trap kills it.
            "trap 'echo stopping; exit 9' TERM; echo to-out; echo to-err >&2; while true; do sleep 0.05; done",
        ],
    );
    let id = id.trim();
    assert_eq!(id.len(), 64, "{id}");
    let ps = ok(&env, &["ps"]);
    assert!(
        ps.contains(&id[..12]) && ps.contains("Up ") && ps.contains("bg"),
        "{ps}"
    );
    wait_for("the log", || {
        let out = env.kiln(&["logs", "bg"]);
        stdout(&out) == "to-out\n" && String::from_utf8_lossy(&out.stderr) == "to-err\n"
    });
    // `logs -f` follows until the container exits; `wait` prints its code.
    let follower = env
        .command(&["logs", "-f", "bg"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let waiter = env
        .command(&["wait", "bg"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(ok(&env, &["stop", "bg"]), "bg\n");
    assert_eq!(stdout(&waiter.wait_with_output().unwrap()), "9\n");
    assert_eq!(
        stdout(&follower.wait_with_output().unwrap()),
        "to-out\nstopping\n"
    );
    let ps = ok(&env, &["ps", "-a"]);
    assert!(ps.contains("Exited (9)"), "{ps}");
    assert_eq!(ok(&env, &["ps"]).lines().count(), 1, "only the header");
    assert_eq!(ok(&env, &["rm", "bg"]), "bg\n");
    assert!(!env.root().join("kiln/containers").join(id).exists());
}

#[test]
fn stop_kills_what_ignores_the_stop_signal_and_rm_f_removes_a_running_one() {
    let env = Env::new();
    ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "stubborn",
            "busybox",
            "sh",
            "-c",
            "trap '' TERM; echo ignoring; while true; do sleep 0.05; done",
        ],
    );
    // Stopped once the shell ignores TERM (a TERM before that kills it).
    wait_for("the trap", || {
        stdout(&env.kiln(&["logs", "stubborn"])) == "ignoring\n"
    });
    let started = Instant::now();
    ok(&env, &["stop", "-t", "1", "stubborn"]);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(ok(&env, &["wait", "stubborn"]), "137\n");
    let out = env.kiln(&["run", "-d", "--name", "stubborn", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125), "the name is taken");
    ok(&env, &["rm", "stubborn"]);

    ok(
        &env,
        &[
            "run", "-d", "--rm", "--name", "busy", "busybox", "sleep", "1000",
        ],
    );
    let out = env.kiln(&["rm", "busy"]);
    assert!(
        !out.status.success(),
        "a running container is not removed without -f"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("is running"));
    ok(&env, &["rm", "-f", "busy"]);
    assert_eq!(ok(&env, &["ps", "-a", "-q"]), "");
}

#[test]
fn a_published_port_reaches_httpd_in_the_container() {
    let env = Env::new();
    let www = env.dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("index.html"), "hello from httpd\n").unwrap();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let publish = format!("127.0.0.1:{port}:80");
    // Removes the container whether the test passes or not.
    struct Remove<'a>(&'a Env);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = self.0.kiln(&["rm", "-f", "web"]);
        }
    }
    let _remove = Remove(&env);
    let bind = format!("{}:/www:ro", www.display());
    ok(
        &env,
        &[
            "run", "-d", "--name", "web", "-p", &publish, "-v", &bind, "busybox", "busybox",
            "httpd", "-f", "-p", "80", "-h", "/www",
        ],
    );
    let mut body = String::new();
    wait_for("httpd", || {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        if stream
            .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
            .is_err()
        {
            return false;
        }
        body.clear();
        stream.read_to_string(&mut body).is_ok() && body.contains("hello from httpd")
    });
    assert!(
        body.starts_with("HTTP/1.") && body.contains(" 200 OK"),
        "{body}"
    );
    assert!(ok(&env, &["ps"]).contains(&format!("127.0.0.1:{port}->80/tcp")));
    // The port is taken now: a clear error before anything runs.
    let out = env.kiln(&["run", "--rm", "-p", &publish, "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already in use"), "{err}");
    ok(&env, &["rm", "-f", "web"]);
    wait_for("the port to be free", || {
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
    });
}
