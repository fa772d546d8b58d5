//! `RUN --mount=type=ssh`: a socket in the step's scratch directory that
//! forwards every connection to an ssh agent of the host (`--ssh`). The step
//! sees the socket with the mount's owner and mode, and only while it runs;
//! the agent's own socket (and its owner) never reach the sandbox, a layer
//! or a cache key.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::{io_err, Error, Result};

/// A forwarding socket, stopped (and its threads ended) when dropped.
#[derive(Debug)]
pub(crate) struct SshProxy {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl SshProxy {
    /// Listens on `socket` (owned by `uid`:`gid`, mode `mode`) and forwards
    /// each connection to the agent at `agent`.
    pub(crate) fn start(
        agent: &Path,
        socket: &Path,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> Result<SshProxy> {
        // A missing or dead agent is an error now, not a hang in the step.
        UnixStream::connect(agent).map_err(|e| {
            Error::Invalid(format!(
                "cannot reach the ssh agent at {}: {e}; is ssh-agent running (SSH_AUTH_SOCK)?",
                agent.display()
            ))
        })?;
        let listener = UnixListener::bind(socket).map_err(io_err(socket))?;
        std::os::unix::fs::chown(socket, Some(uid), Some(gid)).map_err(io_err(socket))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(socket))?;
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let stop = Arc::clone(&stop);
            let agent = agent.to_path_buf();
            std::thread::spawn(move || accept_loop(&listener, &agent, &stop))
        };
        Ok(SshProxy {
            socket: socket.to_path_buf(),
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// The socket to mount into the step.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for SshProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor, which then sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn accept_loop(listener: &UnixListener, agent: &Path, stop: &AtomicBool) {
    for client in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(upstream) = UnixStream::connect(agent) else {
            continue;
        };
        // The pumps end when either side closes; a step's processes are all
        // gone when the proxy stops, so they never outlive the build.
        std::thread::spawn(move || pump_both(client, upstream));
    }
}

/// Copies bytes both ways until either side closes.
fn pump_both(client: UnixStream, upstream: UnixStream) {
    let (Ok(client_read), Ok(upstream_read)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let forward = std::thread::spawn(move || pump(client_read, upstream));
    pump(upstream_read, client);
    let _ = forward.join();
}

fn pump(mut from: UnixStream, mut to: UnixStream) {
    loop {
        match std::io::copy(&mut from, &mut to) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            _ => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
    let _ = from.shutdown(std::net::Shutdown::Read);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn connections_reach_the_agent_and_stop_with_the_proxy() {
        let dir = tempfile::tempdir().unwrap();
        let agent_path = dir.path().join("agent");
        let agent = UnixListener::bind(&agent_path).unwrap();
        let echo = std::thread::spawn(move || {
            // The proxy's own reachability check, then one real client.
            for stream in agent.incoming().take(2) {
                let mut stream = stream.unwrap();
                let mut buf = [0u8; 4];
                if stream.read_exact(&mut buf).is_ok() {
                    stream.write_all(&buf).unwrap();
                }
            }
        });
        let socket = dir.path().join("proxy");
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        let proxy = SshProxy::start(&agent_path, &socket, uid, gid, 0o600).unwrap();
        let meta = std::fs::metadata(proxy.socket()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let mut client = UnixStream::connect(proxy.socket()).unwrap();
        client.write_all(b"ping").unwrap();
        let mut answer = [0u8; 4];
        client.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"ping");
        drop(client);
        drop(proxy);
        assert!(!socket.exists());
        echo.join().unwrap();
    }

    #[test]
    fn a_missing_agent_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = SshProxy::start(&dir.path().join("none"), &dir.path().join("p"), 0, 0, 0o600)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot reach the ssh agent"), "{err}");
    }
}
