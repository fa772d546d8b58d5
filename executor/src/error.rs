//! The executor's error type.

use std::io;
use std::path::PathBuf;

/// What can go wrong while unpacking, running a step or writing a layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed; `path` names what was being touched.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`create`, `chown`, ...).
        action: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The callback that opens a layer stream failed.
    #[error("could not open the layer for snapshot {chain_id}: {source}")]
    OpenLayer {
        /// The snapshot the layer was for.
        chain_id: String,
        /// The callback's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The callback that fills a tree snapshot failed.
    #[error("could not fill snapshot {id}: {source}")]
    FillTree {
        /// The snapshot being filled.
        id: String,
        /// The callback's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A layer tar is malformed or tries to escape its snapshot directory.
    #[error("layer for snapshot {chain_id}: entry {entry:?}: {reason}; the layer is corrupt or hostile, rebuild or re-import the image it belongs to")]
    BadLayer {
        /// The snapshot the layer was for.
        chain_id: String,
        /// The entry's path as the tar names it.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A chain id that cannot name a snapshot directory.
    #[error("invalid chain id {0:?}: expected an OCI digest such as sha256:<64 hex digits>")]
    InvalidChainId(String),
    /// The `USER` of a step names nobody in the image.
    #[error("unable to find user {user:?}: no matching entry in the image's /etc/passwd; add the user in an earlier step or use a numeric uid")]
    UnknownUser {
        /// The user as the step names it.
        user: String,
    },
    /// The group of a `USER` names no group in the image.
    #[error("unable to find group {group:?}: no matching entry in the image's /etc/group; add the group in an earlier step or use a numeric gid")]
    UnknownGroup {
        /// The group as the step names it.
        group: String,
    },
    /// The run specification is inconsistent (relative paths, empty argv, ...).
    #[error("invalid run specification: {0}")]
    InvalidSpec(String),
    /// The step's program could not be found or executed inside the sandbox.
    #[error("cannot run {program:?} in the image: {reason}")]
    Exec {
        /// The program as the step names it (`argv[0]`).
        program: String,
        /// Why it cannot run, and what to do.
        reason: String,
        /// What `execve` said (`ENOENT`: not found; others: cannot be run).
        errno: nix::errno::Errno,
    },
    /// Setting up the sandbox failed; `step` says which part.
    #[error("sandbox setup failed: {step}: {errno}")]
    Sandbox {
        /// The part of the setup that failed.
        step: String,
        /// What the kernel said.
        errno: nix::errno::Errno,
    },
    /// The step's main process exited with a non-zero code.
    #[error("the step exited with code {code}{}", format_last_lines(last_lines))]
    ExitCode {
        /// The exit code.
        code: i32,
        /// The last lines of the step's output.
        last_lines: Vec<String>,
    },
    /// The step's main process was killed by a signal.
    #[error(
        "the step was killed by signal {signal}{}",
        format_last_lines(last_lines)
    )]
    Signaled {
        /// The signal's number.
        signal: i32,
        /// The last lines of the step's output.
        last_lines: Vec<String>,
    },
    /// The step failed after the kernel's OOM killer killed one of its processes
    /// for exceeding the memory limit.
    #[error(
        "the step ran out of memory (limit {limit} bytes): raise the memory limit{}",
        format_last_lines(last_lines)
    )]
    OutOfMemory {
        /// The memory limit in bytes.
        limit: u64,
        /// The last lines of the step's output.
        last_lines: Vec<String>,
    },
    /// The step was cancelled through its [`CancelToken`](crate::CancelToken).
    #[error("the step was cancelled")]
    Cancelled,
    /// Resource limits were asked for but no usable cgroup hierarchy exists.
    #[error("cannot apply resource limits: {0}")]
    Cgroup(String),
    /// A foreign architecture has no usable binfmt_misc handler.
    #[error("no binfmt_misc handler with the F flag for {arch} ({reason}); install qemu-user-static (apt-get install qemu-user-static) and run `kiln setup-binfmt {arch}` as root")]
    NoBinfmt {
        /// The OCI architecture.
        arch: String,
        /// What is missing.
        reason: String,
    },
    /// The step's seccomp profile cannot be turned into a filter.
    #[error("seccomp profile: {0}")]
    Seccomp(#[from] crate::seccomp::ProfileError),
    /// slirp4netns, which the default RUN network needs, is not installed.
    #[error("the default RUN network needs slirp4netns, which is not installed: install it (apt-get install slirp4netns) or build with --network host (the host's network, loopback included) or --network none")]
    NetworkStackMissing,
    /// slirp4netns did not bring the private network up.
    #[error(
        "cannot start the default RUN network: slirp4netns failed: {reason}{}",
        format_log(log)
    )]
    NetworkStackFailed {
        /// What went wrong.
        reason: String,
        /// What slirp4netns wrote.
        log: String,
    },
    /// Creating the private network failed; `step` says which part.
    #[error("cannot set up the default RUN network: {step}: {source}")]
    Network {
        /// The part of the setup that failed.
        step: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// A host port to publish is taken.
    #[error("cannot publish port {port}: the port is already in use (or the address is not this machine's): choose another host port")]
    PortInUse {
        /// The port as given (`HOST:CONTAINER`, ...).
        port: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// slirp4netns would not forward a port.
    #[error("cannot publish port {port}: {reason}")]
    PortForward {
        /// The port as given.
        port: String,
        /// slirp4netns' answer.
        reason: String,
    },
    /// kiln could not make its user namespace (run by an ordinary user).
    #[error("cannot run rootless: {step}: {errno}")]
    UserNamespace {
        /// The part of the setup that failed.
        step: String,
        /// What the kernel said.
        errno: nix::errno::Errno,
    },
    /// A step's user or a file's owner is an id kiln's user namespace does
    /// not map (rootless kiln with no subordinate range).
    #[error("{needed_by} needs {kind} {id}, which kiln's user namespace does not map (rootless kiln maps only root when the user has no subordinate ids); give the user a range, e.g. `sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $USER` (writes /etc/subuid and /etc/subgid), and install uidmap (newuidmap, newgidmap)")]
    UnmappedId {
        /// `uid` or `gid`.
        kind: &'static str,
        /// The unmapped id.
        id: u32,
        /// Who needs it (a step's user, a file in a layer).
        needed_by: String,
    },
    /// An architecture name kiln does not know how to emulate.
    #[error("unknown architecture {0:?}: expected an OCI architecture such as amd64, arm64, arm, 386, mips64le, ppc64le, riscv64, s390x, loong64")]
    UnknownArch(String),
}

fn format_last_lines(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut text = String::from("; last output:");
    for line in lines {
        text.push_str("\n  ");
        text.push_str(line);
    }
    text
}

fn format_log(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!("; it said: {log}")
    }
}

/// The executor's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Builds a closure that wraps an `io::Error` with the action and path it concerns.
pub(crate) fn io_err<P: Into<PathBuf>>(
    action: &'static str,
    path: P,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}
