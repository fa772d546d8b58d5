//! Servers the build tests start on 127.0.0.1 (busybox httpd, git-daemon)
//! and the `git` they feed; each server is killed when its guard drops.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::run_ok;

/// A port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process killed when dropped.
pub struct Server(Child);

impl Server {
    /// Starts `command` and waits until it listens on 127.0.0.1:`port`.
    pub fn start(command: &mut Command, port: u16) -> Server {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let server = Server(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("{command:?} did not listen on 127.0.0.1:{port}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// busybox httpd serving `dir` on 127.0.0.1:`port`.
pub fn httpd(dir: &Path, port: u16) -> Server {
    Server::start(
        Command::new("busybox").args([
            "httpd",
            "-f",
            "-p",
            &format!("127.0.0.1:{port}"),
            "-h",
            &dir.to_string_lossy(),
        ]),
        port,
    )
}

/// `git-daemon` serving the repositories under `base` on 127.0.0.1:`port`:
/// the daemon's own binary, not `git daemon`, which would run it as a child
/// that outlives the kill (and keeps the test's descriptors open).
pub fn git_daemon(base: &Path, port: u16) -> Server {
    let exec_path = run_ok(Command::new("git").arg("--exec-path")).stdout;
    let daemon = Path::new(String::from_utf8_lossy(&exec_path).trim()).join("git-daemon");
    Server::start(
        Command::new(daemon).args([
            "--reuseaddr",
            "--export-all",
            &format!("--base-path={}", base.display()),
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            &base.to_string_lossy(),
        ]),
        port,
    )
}

/// `git ARGS` in `dir`, with a fixed identity and no system configuration.
pub fn git(dir: &Path, args: &[&str]) {
    run_ok(
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "kiln")
            .env("GIT_AUTHOR_EMAIL", "kiln@example.invalid")
            .env("GIT_COMMITTER_NAME", "kiln")
            .env("GIT_COMMITTER_EMAIL", "kiln@example.invalid")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir),
    );
}
