//! The private network RUN steps get by default: a network namespace of its
//! own whose only way out is slirp4netns, a user-mode TCP/IP stack running in
//! the host's namespace (what podman and buildah use). Steps reach the outside
//! world and DNS through it, never the host's loopback: slirp4netns runs with
//! `--disable-host-loopback`, so its gateway (10.0.2.2) does not lead to the
//! host's 127.0.0.1, and the step's own 127.0.0.1 is its namespace's loopback.
//!
//! One [`PrivateNetwork`] serves a whole build: it is started when the first
//! step needs it and stopped when the last handle is dropped. Each step's init
//! only joins the namespace with `setns`, so a step costs nothing more.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag, SealFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::unistd::pipe2;

use crate::error::{Error, Result};

/// The user-mode network stack kiln runs, and the Debian package it comes in.
pub const STACK_PROGRAM: &str = "slirp4netns";
/// slirp4netns' built-in DNS forwarder (it forwards to the host's resolvers).
const DNS_SERVER: &str = "10.0.2.3";
/// The largest MTU slirp4netns takes: fewer, larger packets through user space.
const MTU: &str = "65520";
/// How long slirp4netns may take to configure the namespace.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The tap device kiln makes in the namespace and slirp4netns attaches to.
const TAP_NAME: &std::ffi::CStr = c"tap0";

/// A private network namespace with outbound access through slirp4netns.
/// Cheap to clone (all clones share one namespace); the namespace is released
/// and slirp4netns killed and reaped when the last clone is dropped. If kiln
/// dies first, slirp4netns exits by itself (its `--exit-fd` closes).
#[derive(Clone)]
pub struct PrivateNetwork {
    inner: Arc<Inner>,
}

struct Inner {
    netns: OwnedFd,
    stack: Child,
    /// slirp4netns exits when this (the pipe's only write end) closes.
    _exit_pipe: OwnedFd,
    resolv_conf: Vec<u8>,
}

impl PrivateNetwork {
    /// Creates the namespace and starts slirp4netns on it; returns once the
    /// namespace has its interface, address, route and loopback up. Needs root.
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }

    fn start_with(api_socket: Option<&Path>) -> Result<Self> {
        let netns = new_netns()?;
        let (stack, exit_pipe) = start_stack(&netns, api_socket)?;
        let host_resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
        Ok(Self {
            inner: Arc::new(Inner {
                netns,
                stack,
                _exit_pipe: exit_pipe,
                resolv_conf: resolv_conf(&host_resolv),
            }),
        })
    }

    /// [`start`](Self::start), with `ports` of the host forwarded into the
    /// namespace (`kiln run -p`) through slirp4netns' API socket. A host
    /// port already in use is [`Error::PortInUse`].
    pub fn start_publishing(ports: &[PublishedPort]) -> Result<Self> {
        if ports.is_empty() {
            return Self::start();
        }
        for port in ports {
            check_free(port)?;
        }
        let api = std::env::temp_dir().join(format!(
            "kiln-slirp4netns-{}-{}.sock",
            std::process::id(),
            API_SOCKETS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let network = Self::start_with(Some(&api));
        let added = network
            .as_ref()
            .map_err(|_| ())
            .map(|_| ports.iter().try_for_each(|port| add_hostfwd(&api, port)));
        let _ = std::fs::remove_file(&api);
        match added {
            Ok(Err(e)) => Err(e),
            _ => network,
        }
    }

    /// The namespace's descriptor, for the sandbox's init to `setns` into.
    pub(crate) fn netns_fd(&self) -> RawFd {
        self.inner.netns.as_raw_fd()
    }

    /// The resolv.conf steps on this network see.
    pub(crate) fn resolv_conf(&self) -> &[u8] {
        &self.inner.resolv_conf
    }

    /// The pid of the slirp4netns process serving this network.
    pub fn stack_pid(&self) -> u32 {
        self.inner.stack.id()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.stack.kill();
        let _ = self.stack.wait();
    }
}

impl PartialEq for PrivateNetwork {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for PrivateNetwork {}

impl fmt::Debug for PrivateNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateNetwork")
            .field("netns_fd", &self.netns_fd())
            .field("stack_pid", &self.stack_pid())
            .finish()
    }
}

/// A host port forwarded to a port of the private network's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedPort {
    /// The host address to listen on (`0.0.0.0`: all).
    pub host_ip: String,
    /// The host port.
    pub host_port: u16,
    /// The port in the private network's namespace.
    pub container_port: u16,
    /// UDP instead of TCP.
    pub udp: bool,
}

impl fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = if self.udp { "udp" } else { "tcp" };
        write!(f, "{}:{}/{proto}", self.host_ip, self.host_port)
    }
}

/// Numbers the API sockets of one process.
static API_SOCKETS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Fails with [`Error::PortInUse`] when something already listens on the
/// port's host address (slirp4netns would only say that it failed).
fn check_free(port: &PublishedPort) -> Result<()> {
    let address = format!("{}:{}", port.host_ip, port.host_port);
    let bound = if port.udp {
        std::net::UdpSocket::bind(&address).map(drop)
    } else {
        std::net::TcpListener::bind(&address).map(drop)
    };
    bound.map_err(|source| Error::PortInUse {
        port: port.to_string(),
        source,
    })
}

/// Asks slirp4netns (through its API socket at `api`) to forward `port`.
fn add_hostfwd(api: &Path, port: &PublishedPort) -> Result<()> {
    use std::io::Write;
    let fail = |reason: String| Error::PortForward {
        port: port.to_string(),
        reason,
    };
    let request = serde_json::json!({
        "execute": "add_hostfwd",
        "arguments": {
            "proto": if port.udp { "udp" } else { "tcp" },
            "host_addr": port.host_ip,
            "host_port": port.host_port,
            "guest_port": port.container_port,
        }
    });
    let mut stream = std::os::unix::net::UnixStream::connect(api)
        .map_err(|e| fail(format!("cannot reach slirp4netns' API socket: {e}")))?;
    stream
        .write_all(request.to_string().as_bytes())
        .and_then(|()| stream.shutdown(std::net::Shutdown::Write))
        .map_err(|e| fail(format!("cannot talk to slirp4netns: {e}")))?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(|e| fail(format!("cannot read slirp4netns' answer: {e}")))?;
    let value: serde_json::Value =
        serde_json::from_str(&reply).map_err(|_| fail(format!("slirp4netns said {reply:?}")))?;
    match value.get("error") {
        None => Ok(()),
        Some(error) => Err(fail(format!("slirp4netns said {error}"))),
    }
}

/// A new network namespace, held only by the returned descriptor: a
/// short-lived thread unshares its own network namespace (which leaves the
/// rest of the process where it was), opens it, and ends.
///
/// The namespace already has slirp4netns' tap device, persistent: when
/// slirp4netns exits, the device is not unregistered in its exit (some 30 ms
/// of waiting for the kernel at the end of every build) but later, by the
/// kernel, with the namespace.
fn new_netns() -> Result<OwnedFd> {
    let made = std::thread::spawn(|| -> Result<OwnedFd> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|errno| Error::Network {
            step: "create a network namespace".into(),
            source: errno.into(),
        })?;
        let file = File::open("/proc/thread-self/ns/net").map_err(|source| Error::Network {
            step: "open the new network namespace".into(),
            source,
        })?;
        crate::sys::create_persistent_tap(TAP_NAME).map_err(|errno| Error::Network {
            step: "create its tap device (is /dev/net/tun there?)".into(),
            source: errno.into(),
        })?;
        Ok(file.into())
    })
    .join();
    made.unwrap_or_else(|_| {
        Err(Error::Network {
            step: "create a network namespace".into(),
            source: io::Error::other("the thread creating it panicked"),
        })
    })
}

/// Starts slirp4netns on `netns` and waits until it has configured it.
/// Returns the process and the write end of its exit pipe.
fn start_stack(netns: &OwnedFd, api_socket: Option<&Path>) -> Result<(Child, OwnedFd)> {
    let pipe_err = |errno: nix::errno::Errno| Error::Network {
        step: "create a pipe".into(),
        source: errno.into(),
    };
    let (ready_read, ready_write) = pipe2(OFlag::O_CLOEXEC).map_err(pipe_err)?;
    let (exit_read, exit_write) = pipe2(OFlag::O_CLOEXEC).map_err(pipe_err)?;
    let log = stack_log()?;
    let mut args = stack_args(
        netns.as_raw_fd(),
        ready_write.as_raw_fd(),
        exit_read.as_raw_fd(),
    );
    if let Some(api) = api_socket {
        args.insert(0, format!("--api-socket={}", api.display()));
    }
    let mut command = Command::new(STACK_PROGRAM);
    command
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.try_clone().map_err(|source| Error::Network {
            step: "duplicate the log file".into(),
            source,
        })?);
    let keep = [
        netns.as_raw_fd(),
        ready_write.as_raw_fd(),
        exit_read.as_raw_fd(),
    ];
    let mut child = match crate::sys::spawn_with_private_mounts(&mut command, keep) {
        Ok(child) => child,
        Err(source) if source.kind() == io::ErrorKind::NotFound => {
            return Err(Error::NetworkStackMissing)
        }
        Err(source) => {
            return Err(Error::Network {
                step: format!("start {STACK_PROGRAM}"),
                source,
            })
        }
    };
    // Only slirp4netns holds these now: its exit closes the ready pipe.
    drop(ready_write);
    drop(exit_read);
    match wait_ready(&ready_read, &mut child) {
        Ok(()) => {
            // Nothing reads what it says from now on: keep it from growing.
            let _ = fcntl(&log, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_GROW));
            Ok((child, exit_write))
        }
        Err(reason) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(Error::NetworkStackFailed {
                reason,
                log: read_log(log),
            })
        }
    }
}

/// slirp4netns' command line: the namespace by its descriptor, loopback and
/// (experimental, so opt-in) IPv6 off as in Docker's default bridge, its own
/// syscalls limited by seccomp, and sandboxed (its own mount namespace with
/// only /etc and /run, capabilities dropped).
fn stack_args(netns: RawFd, ready: RawFd, exit: RawFd) -> Vec<String> {
    vec![
        "--configure".into(),
        format!("--mtu={MTU}"),
        "--disable-host-loopback".into(),
        "--enable-sandbox".into(),
        "--enable-seccomp".into(),
        format!("--ready-fd={ready}"),
        format!("--exit-fd={exit}"),
        "--netns-type=path".into(),
        format!("/proc/self/fd/{netns}"),
        TAP_NAME.to_string_lossy().into_owned(),
    ]
}

/// An anonymous file for slirp4netns' messages, read when it fails to start
/// and sealed against growth once it is up.
fn stack_log() -> Result<File> {
    memfd_create(
        c"kiln-slirp4netns",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map(File::from)
    .map_err(|errno| Error::Network {
        step: "create a log file".into(),
        source: errno.into(),
    })
}

fn read_log(mut log: File) -> String {
    let mut text = String::new();
    let _ = log.rewind();
    let _ = log.take(8192).read_to_string(&mut text);
    text.trim().to_string()
}

/// Waits for slirp4netns' "1" on the ready pipe; the reason if it never comes.
fn wait_ready(ready: &OwnedFd, child: &mut Child) -> std::result::Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = exit_status(child, Duration::ZERO) {
            return Err(format!("it exited ({status}) before the network was up"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the network was not up after {} s",
                READY_TIMEOUT.as_secs()
            ));
        }
        let wait = PollTimeout::try_from(left.min(Duration::from_millis(100)))
            .unwrap_or(PollTimeout::ZERO);
        let mut fds = [PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, wait) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(errno) => return Err(format!("waiting for it: {errno}")),
        }
        let mut byte = [0u8; 1];
        return match nix::unistd::read(ready, &mut byte) {
            Ok(1) if byte[0] == b'1' => Ok(()),
            Ok(_) => Err(match exit_status(child, Duration::from_secs(1)) {
                Some(status) => format!("it exited ({status}) before the network was up"),
                None => "it closed its ready pipe without configuring the network".into(),
            }),
            Err(errno) => Err(format!("reading its ready pipe: {errno}")),
        };
    }
}

/// The exit status of `child` if it exits within `wait`.
fn exit_status(child: &mut Child, wait: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + wait;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

/// The resolv.conf of a step on the private network: slirp4netns' DNS
/// forwarder as the only nameserver (the host's may be loopback addresses,
/// out of reach by design), with the host's search domains and options.
fn resolv_conf(host: &[u8]) -> Vec<u8> {
    let mut out = format!("nameserver {DNS_SERVER}\n").into_bytes();
    for line in host.split(|b| *b == b'\n') {
        let text = String::from_utf8_lossy(line);
        let keyword = text.split_whitespace().next().unwrap_or("");
        if matches!(keyword, "search" | "domain" | "options") {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_names_the_forwarder_and_keeps_search_and_options() {
        let host = b"# generated\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nsearch example.org corp\noptions edns0 trust-ad\n";
        assert_eq!(
            String::from_utf8(resolv_conf(host)).unwrap(),
            "nameserver 10.0.2.3\nsearch example.org corp\noptions edns0 trust-ad\n"
        );
        assert_eq!(resolv_conf(b""), b"nameserver 10.0.2.3\n");
    }
}
