//! What a step is: the inputs of [`run`](crate::run).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::seccomp::Seccomp;

/// Everything one RUN step needs, fully resolved by the caller.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    /// Snapshot directories of the parent image, bottom (base layer) first.
    /// Paths must not contain `:` or `,` (overlayfs option syntax).
    pub lowers: Vec<PathBuf>,
    /// The program and its arguments, run directly (shell form is already wrapped
    /// in the image's SHELL by the frontend). `argv[0]` without a `/` is searched
    /// in the `PATH` of `env`.
    pub argv: Vec<String>,
    /// The environment, `NAME=value` each. `PATH` and `HOME` are added when absent,
    /// as Docker does.
    pub env: Vec<String>,
    /// Absolute working directory inside the image; created when missing.
    pub cwd: String,
    /// `user[:group]` as in Dockerfile `USER`: names or numeric ids; empty means root.
    pub user: String,
    /// The sandbox's hostname.
    pub hostname: String,
    /// Which network the step sees.
    pub network: Network,
    /// Extra mounts, applied in order after `/proc`, `/dev` and `/sys`.
    pub mounts: Vec<Mount>,
    /// The image's OCI architecture (`amd64`, `mips64le`, ...); a foreign one runs
    /// under qemu-user through binfmt_misc. `None` means the host's.
    pub arch: Option<String>,
    /// Resource limits applied through cgroups.
    pub limits: Limits,
    /// Bytes fed to the step's standard input; `None` gives it `/dev/null`.
    pub stdin: Option<Vec<u8>>,
    /// Run on a copy of the merged snapshots instead of an overlay mount: what
    /// happens by itself where overlayfs cannot be mounted (e.g. the scratch dir
    /// is on overlayfs); slower, same result.
    pub copy_rootfs: bool,
    /// The seccomp filter of the step's processes: Docker's default profile
    /// unless the caller says otherwise.
    pub seccomp: Seccomp,
    /// Extra `/etc/hosts` entries, `(name, address)` (`--add-host`).
    pub extra_hosts: Vec<(String, String)>,
    /// Resource limits of the step's processes (`--ulimit`).
    pub ulimits: Vec<Ulimit>,
    /// Size of `/dev/shm` in bytes (`--shm-size`); `None`: Docker's 64 MiB.
    pub shm_size: Option<u64>,
    /// `RUN --security=insecure`: every capability, no seccomp filter, no
    /// masked or read-only kernel paths and a writable /sys, as BuildKit's
    /// `security.insecure` entitlement gives. The caller decides whether a
    /// build may ask for it.
    pub privileged: bool,
    /// The main process' own standard streams (`kiln run`): given as they
    /// are instead of the captured, line-split output of a step, with the
    /// process in a session of its own. `stdin` must be `None` with them.
    pub stdio: Option<Stdio>,
    /// Mount the root filesystem read-only (`kiln run --read-only`); the
    /// mounts, /dev, /proc and the working directory made for the step stay
    /// as they are.
    pub read_only_root: bool,
}

/// Standard streams handed to a step's main process as descriptors (a
/// terminal, kiln's own stdio, a log pipe): see [`RunSpec::stdio`].
#[derive(Debug, Clone)]
pub struct Stdio {
    /// The main process' standard input.
    pub stdin: Arc<OwnedFd>,
    /// Its standard output.
    pub stdout: Arc<OwnedFd>,
    /// Its standard error.
    pub stderr: Arc<OwnedFd>,
    /// `stdin` is a terminal (a pty's replica side) that becomes the main
    /// process' controlling terminal, as `docker run -t` gives.
    pub terminal: bool,
}

/// The network a step sees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Network {
    /// A build's private network namespace, shared by its steps, with outbound
    /// access through slirp4netns and slirp4netns' DNS forwarder in resolv.conf
    /// (what Docker's `default` means for RUN); the host's loopback is out of
    /// reach.
    Private(crate::PrivateNetwork),
    /// A network namespace of its own with only loopback up.
    None,
    /// The host's network with the host's resolv.conf and a generated hosts
    /// file. The default of a bare [`RunSpec`] (benchmarks, tests); `kiln
    /// build` always says which network a step gets.
    #[default]
    Host,
}

/// An extra mount inside the sandbox. Target paths are absolute paths in the image;
/// symlinks on the way are followed inside the image's root. Mountpoints the
/// image lacks never reach the step's layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// A host file or directory bound in: build-context binds (`readonly: true`),
    /// cache mounts (a persistent host directory, `readonly: false`) and secrets
    /// (a host file, `readonly: true`; its content never reaches the upper dir).
    Bind {
        /// The host file or directory.
        source: PathBuf,
        /// Where it appears in the image.
        target: String,
        /// The step cannot write through it.
        readonly: bool,
    },
    /// A fresh tmpfs; `size` in bytes, `None` for the kernel's default.
    Tmpfs {
        /// Where it appears in the image.
        target: String,
        /// Its size limit in bytes.
        size: Option<u64>,
    },
}

impl Mount {
    /// The mount's target path inside the image.
    pub fn target(&self) -> &str {
        match self {
            Mount::Bind { target, .. } | Mount::Tmpfs { target, .. } => target,
        }
    }
}

/// cgroup limits, as `docker run`/`buildah` take them; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Memory in bytes (`--memory`); swap is limited to the same figure.
    pub memory: Option<u64>,
    /// Relative CPU weight (`--cpu-shares`, 2..=262144, Docker's default 1024).
    pub cpu_shares: Option<u64>,
    /// CPU quota in CPUs (`--cpus 1.5`).
    pub cpus: Option<f64>,
    /// Maximum number of processes (`--pids-limit`).
    pub pids: Option<u64>,
}

impl Limits {
    /// Whether any limit is set (and so a cgroup is needed).
    pub fn is_empty(&self) -> bool {
        self.memory.is_none()
            && self.cpu_shares.is_none()
            && self.cpus.is_none()
            && self.pids.is_none()
    }
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of the step's output, without its line terminator. Bytes as written
/// (not necessarily UTF-8); a final line without newline is delivered at exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    /// The stream it came from.
    pub stream: Stream,
    /// The line's bytes.
    pub bytes: Vec<u8>,
}

impl OutputLine {
    /// The line as text, invalid UTF-8 replaced.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.bytes)
    }
}

/// Stops running steps: cloned into every step of a build, cancelled on Ctrl-C or
/// when a parallel step fails. A cancelled step is killed (with everything it
/// started) within about 20 ms and [`run`](crate::run) returns
/// [`Error::Cancelled`](crate::Error::Cancelled). It also carries signals to
/// the main processes of steps run with [`RunSpec::stdio`]
/// ([`forward_signal`](Self::forward_signal)).
#[derive(Debug, Clone, Default)]
pub struct CancelToken {
    cancelled: Arc<AtomicBool>,
    /// Signals to forward, one bit per signal number.
    signals: Arc<AtomicU64>,
}

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels every step holding a clone of this token.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Sends `signal` (1..=63) to the main process of every running step
    /// with [`RunSpec::stdio`] that holds a clone of this token, within about
    /// 20 ms (the sandbox's init passes it on, as `docker run --init` does).
    /// The same signal sent twice before it is delivered arrives once.
    pub fn forward_signal(&self, signal: i32) {
        if (1..64).contains(&signal) {
            self.signals.fetch_or(1 << signal, Ordering::SeqCst);
        }
    }

    /// The signals to deliver since the last call, as a bit set.
    pub(crate) fn take_signals(&self) -> u64 {
        self.signals.swap(0, Ordering::SeqCst)
    }
}

/// One `setrlimit` of a step's processes, as `docker run --ulimit` takes it:
/// `NAME=SOFT[:HARD]` (`-1` for unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ulimit {
    /// The `RLIMIT_*` resource.
    pub resource: nix::sys::resource::Resource,
    /// The soft limit (`u64::MAX`: unlimited).
    pub soft: u64,
    /// The hard limit (`u64::MAX`: unlimited).
    pub hard: u64,
}

/// The names Docker accepts for `--ulimit`, with their resources.
const ULIMIT_NAMES: &[(&str, nix::sys::resource::Resource)] = &[
    ("core", nix::sys::resource::Resource::RLIMIT_CORE),
    ("cpu", nix::sys::resource::Resource::RLIMIT_CPU),
    ("data", nix::sys::resource::Resource::RLIMIT_DATA),
    ("fsize", nix::sys::resource::Resource::RLIMIT_FSIZE),
    ("locks", nix::sys::resource::Resource::RLIMIT_LOCKS),
    ("memlock", nix::sys::resource::Resource::RLIMIT_MEMLOCK),
    ("msgqueue", nix::sys::resource::Resource::RLIMIT_MSGQUEUE),
    ("nice", nix::sys::resource::Resource::RLIMIT_NICE),
    ("nofile", nix::sys::resource::Resource::RLIMIT_NOFILE),
    ("nproc", nix::sys::resource::Resource::RLIMIT_NPROC),
    ("rss", nix::sys::resource::Resource::RLIMIT_RSS),
    ("rtprio", nix::sys::resource::Resource::RLIMIT_RTPRIO),
    ("rttime", nix::sys::resource::Resource::RLIMIT_RTTIME),
    (
        "sigpending",
        nix::sys::resource::Resource::RLIMIT_SIGPENDING,
    ),
    ("stack", nix::sys::resource::Resource::RLIMIT_STACK),
];

impl std::str::FromStr for Ulimit {
    type Err = String;

    /// `nofile=1024:2048`, `core=0`, `memlock=-1`.
    fn from_str(text: &str) -> std::result::Result<Ulimit, String> {
        let names = || {
            ULIMIT_NAMES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (name, values) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: expected NAME=SOFT[:HARD], e.g. nofile=1024:2048"))?;
        let resource = ULIMIT_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| *r)
            .ok_or_else(|| format!("{text:?}: unknown limit {name:?}; one of {}", names()))?;
        let number = |v: &str| -> std::result::Result<u64, String> {
            match v {
                "-1" | "unlimited" => Ok(libc::RLIM_INFINITY),
                v => v
                    .parse::<u64>()
                    .map_err(|_| format!("{text:?}: {v:?} is not a number (or -1 for unlimited)")),
            }
        };
        let (soft, hard) = match values.split_once(':') {
            Some((soft, hard)) => (number(soft)?, number(hard)?),
            None => {
                let both = number(values)?;
                (both, both)
            }
        };
        if soft > hard {
            return Err(format!("{text:?}: the soft limit is above the hard limit"));
        }
        Ok(Ulimit {
            resource,
            soft,
            hard,
        })
    }
}
