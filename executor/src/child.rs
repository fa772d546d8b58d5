//! The code that runs in the sandbox's processes between `clone` and `execve`.
//!
//! It only interprets a [`Plan`] the parent prepared: every path is a `CString`
//! made before cloning, and nothing here allocates, locks or panics (see the
//! crate docs for why).

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::sys::{self, ExecArray};

/// Descriptor numbers inside the sandbox's init (0, 1, 2 are the step's stdio).
pub(crate) const REPORT_FD: RawFd = 3;
pub(crate) const GO_FD: RawFd = 4;

/// What the step sees as its pid 1's command line and name.
const INIT_NAME: &CStr = c"kiln-init";

/// Record kinds on the report pipe: `[kind: u32][value: i32]`, native endian.
/// Kinds below `REPORT_EXEC` are the index of the failed [`Op`].
pub(crate) const REPORT_EXEC: u32 = 0xffff_0000;
pub(crate) const REPORT_IDENTITY: u32 = 0xffff_0001;
pub(crate) const REPORT_CAPS: u32 = 0xffff_0002;
pub(crate) const REPORT_FORK: u32 = 0xffff_0003;
pub(crate) const REPORT_SECCOMP: u32 = 0xffff_0004;
pub(crate) const REPORT_NETNS: u32 = 0xffff_0006;
pub(crate) const REPORT_RLIMIT: u32 = 0xffff_0007;
pub(crate) const REPORT_SESSION: u32 = 0xffff_0008;
pub(crate) const REPORT_SIGNALS: u32 = 0xffff_0009;
/// The value is the main process' raw wait status.
pub(crate) const REPORT_STATUS: u32 = 0xffff_0005;

/// One setup action of the sandbox's init.
pub(crate) enum Op {
    Chdir(CString),
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: MsFlags,
        data: Option<CString>,
    },
    /// `mkdir`, tolerating an existing directory.
    Mkdir(CString, u32),
    /// Creates an empty file as a mountpoint, tolerating an existing one.
    Touch(CString),
    /// A character device node; init's umask is 0, so the mode is exact.
    Mknod(CString, u32, u64),
    Symlink {
        target: CString,
        path: CString,
    },
    /// Hides a kernel path as runc does: a file under a bind of `null`, a
    /// directory under an empty read-only tmpfs; a missing path is skipped.
    Mask {
        path: CString,
        null: CString,
    },
    /// Makes a kernel path a read-only bind of itself (keeping `flags`, the
    /// nosuid/nodev/noexec of its filesystem); a missing path is skipped.
    ReadOnly {
        path: CString,
        flags: MsFlags,
    },
    PivotRootHere,
    Hostname(CString),
    LoopbackUp,
}

/// Everything the sandbox's processes need, prepared by the parent.
pub(crate) struct Plan {
    pub ops: Vec<Op>,
    pub exec_candidates: Vec<CString>,
    pub argv: ExecArray,
    pub envp: ExecArray,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
    /// `setgroups` is allowed (not in a user namespace that maps only root).
    pub set_groups: bool,
    pub keep_caps: u64,
    pub last_cap: u32,
    /// kiln's argument and environment strings, which init blanks in its copy.
    pub process_strings: sys::ProcessStrings,
    /// The capabilities init keeps once the main process runs (to kill what
    /// the step leaves behind); its bounding set is emptied.
    pub init_caps: u64,
    /// setrlimit of the step's processes (`--ulimit`), before capabilities drop.
    pub rlimits: Vec<crate::spec::Ulimit>,
    /// Descriptors as numbered in the parent: stdin, stdout, stderr, report, go.
    pub fds: [RawFd; 5],
    pub wait_for_go: bool,
    /// The step's seccomp filter, compiled by the parent; `None`: unconfined.
    pub seccomp: Option<std::sync::Arc<crate::seccomp::Filter>>,
    /// A network namespace to join (the build's private network), as numbered
    /// in the parent.
    pub netns: Option<RawFd>,
    /// The main process starts a session of its own (`kiln run`): signals
    /// of kiln's terminal reach it only through kiln.
    pub new_session: bool,
    /// Its stdin is a terminal that becomes its controlling terminal.
    pub controlling_terminal: bool,
    /// Init passes the signals kiln forwards on to the main process.
    pub forward_signals: bool,
}

fn report(kind: u32, value: i32) {
    let mut record = [0u8; 8];
    record[..4].copy_from_slice(&kind.to_ne_bytes());
    record[4..].copy_from_slice(&value.to_ne_bytes());
    sys::write_all(REPORT_FD, &record);
}

fn fail(kind: u32, errno: Errno) -> ! {
    report(kind, errno as i32);
    sys::exit_now(125)
}

/// Moves the plan's descriptors to 0..=4 and closes every other descriptor the
/// clone inherited (other threads' pipes must not be kept open by us).
fn arrange_fds(fds: &[RawFd; 5]) -> Result<(), Errno> {
    let mut high = [0; 5];
    for (slot, fd) in high.iter_mut().zip(fds) {
        *slot = sys::dup_above(*fd, 16)?;
    }
    for (target, fd) in high.iter().enumerate() {
        sys::dup_to(*fd, target as RawFd)?;
    }
    sys::close_from(5)?;
    sys::set_cloexec(REPORT_FD)?;
    sys::set_cloexec(GO_FD)
}

fn run_op(op: &Op) -> Result<(), Errno> {
    match op {
        Op::Chdir(path) => nix::unistd::chdir(path.as_c_str()),
        Op::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => nix::mount::mount(
            source.as_deref(),
            target.as_c_str(),
            fstype.as_deref(),
            with_locked_flags(target, *flags),
            data.as_deref(),
        ),
        Op::Mkdir(path, mode) => {
            match nix::unistd::mkdir(path.as_c_str(), Mode::from_bits_truncate(*mode)) {
                Err(Errno::EEXIST) => Ok(()),
                other => other,
            }
        }
        Op::Touch(path) => {
            match nix::fcntl::open(
                path.as_c_str(),
                nix::fcntl::OFlag::O_CREAT
                    | nix::fcntl::OFlag::O_WRONLY
                    | nix::fcntl::OFlag::O_CLOEXEC
                    | nix::fcntl::OFlag::O_NOFOLLOW,
                Mode::from_bits_truncate(0o644),
            ) {
                Ok(fd) => {
                    drop(fd);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Op::Mknod(path, mode, dev) => nix::sys::stat::mknod(
            path.as_c_str(),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(*mode),
            *dev,
        ),
        Op::Symlink { target, path } => {
            nix::unistd::symlinkat(target.as_c_str(), nix::fcntl::AT_FDCWD, path.as_c_str())
        }
        Op::Mask { path, null } => mask(path, null),
        Op::ReadOnly { path, flags } => read_only(path, *flags),
        Op::PivotRootHere => {
            nix::unistd::pivot_root(c".", c".")?;
            nix::mount::umount2(c".", MntFlags::MNT_DETACH)?;
            nix::unistd::chdir(c"/")
        }
        Op::Hostname(name) => nix::unistd::sethostname(std::ffi::OsStr::new(
            // A CString's bytes without the NUL.
            std::str::from_utf8(name.as_bytes()).unwrap_or("kiln"),
        )),
        Op::LoopbackUp => sys::loopback_up(),
    }
}

/// A bind remount keeps the nosuid, nodev and noexec the mount has: in a user
/// namespace those of mounts it inherited are locked, and a remount that
/// would drop one fails with EPERM.
fn with_locked_flags(target: &CString, flags: MsFlags) -> MsFlags {
    let remount = MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
    if !flags.contains(remount) {
        return flags;
    }
    let Ok(current) = nix::sys::statvfs::statvfs(target.as_c_str()) else {
        return flags;
    };
    let current = current.flags();
    let mut flags = flags;
    for (have, keep) in [
        (nix::sys::statvfs::FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (nix::sys::statvfs::FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (nix::sys::statvfs::FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if current.contains(have) {
            flags |= keep;
        }
    }
    flags
}

/// [`Op::Mask`].
fn mask(path: &CString, null: &CString) -> Result<(), Errno> {
    let none: Option<&CStr> = None;
    match nix::mount::mount(
        Some(null.as_c_str()),
        path.as_c_str(),
        none,
        MsFlags::MS_BIND,
        none,
    ) {
        Err(Errno::ENOENT) => Ok(()),
        // A directory: cover it with an empty read-only tmpfs.
        Err(Errno::ENOTDIR) => nix::mount::mount(
            Some(c"tmpfs"),
            path.as_c_str(),
            Some(c"tmpfs"),
            MsFlags::MS_RDONLY,
            none,
        ),
        other => other,
    }
}

/// [`Op::ReadOnly`].
fn read_only(path: &CString, flags: MsFlags) -> Result<(), Errno> {
    let none: Option<&CStr> = None;
    let path = path.as_c_str();
    match nix::mount::mount(
        Some(path),
        path,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    ) {
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
        Ok(()) => nix::mount::mount(
            none,
            path,
            none,
            flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            none,
        ),
    }
}

/// What init gives up once the main process runs: it only waits, kills the
/// step's leftovers and writes the report pipe. Not dumpable, so the step
/// cannot ptrace it or read its /proc/1/environ, mem or fds.
fn drop_init_privileges(plan: &Plan) -> Result<(), Errno> {
    sys::restrict_capabilities(0, plan.init_caps, plan.last_cap)?;
    nix::sys::prctl::set_no_new_privs()?;
    // Last: a change of credentials may reset dumpability.
    nix::sys::prctl::set_dumpable(false)
}

/// The sandbox's init (pid 1 of the new pid namespace): sets the sandbox up,
/// starts the step's main process, reaps everything, and when the main process
/// exits kills whatever it left behind. Never returns.
pub(crate) fn init_main(plan: &Plan) -> ! {
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() {
        sys::exit_now(125);
    }
    // Before arrange_fds closes the namespace's descriptor.
    let joined = plan.netns.map_or(Ok(()), sys::join_netns);
    if let Err(e) = arrange_fds(&plan.fds) {
        // The report pipe may not be at REPORT_FD yet: nothing to tell.
        sys::exit_now(120 + (e as i32 % 5));
    }
    if let Err(errno) = joined {
        fail(REPORT_NETNS, errno);
    }
    if plan.wait_for_go && !sys::read_byte(GO_FD) {
        // The parent gave up (cgroup setup failed); it reports why.
        sys::exit_now(125);
    }
    sys::close_fd(GO_FD);
    // kiln's command line (build arguments) and environment must not show in
    // the step's /proc/1/cmdline or environ.
    sys::replace_process_strings(&plan.process_strings, INIT_NAME.to_bytes());
    let _ = nix::sys::prctl::set_name(INIT_NAME);
    // The setup ops create exactly the modes the plan names (Docker's 0666
    // devices), whatever umask kiln was started with.
    nix::sys::stat::umask(Mode::empty());
    for (index, op) in plan.ops.iter().enumerate() {
        if let Err(errno) = run_op(op) {
            fail(index as u32, errno);
        }
    }
    if plan.forward_signals {
        if let Err(errno) = sys::install_forwarding() {
            fail(REPORT_SIGNALS, errno);
        }
    }
    // The init has one thread, and the main process runs nothing but
    // prepared syscalls up to its exec: it may borrow the init's memory.
    let main = match sys::spawn_sharing_memory(|| -> std::convert::Infallible { exec_main(plan) }) {
        Ok(pid) => pid,
        Err(errno) => fail(REPORT_FORK, errno),
    };
    if plan.forward_signals {
        sys::forward_to(main);
    }
    if let Err(errno) = drop_init_privileges(plan) {
        // Exiting takes the main process down with the pid namespace.
        fail(REPORT_CAPS, errno);
    }
    // Only the main process and what it starts may hold the output pipes.
    sys::close_fd(0);
    sys::close_fd(1);
    sys::close_fd(2);
    let mut main_status: Option<i32> = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::__WALL)) {
            Ok(status) => {
                if main_status.is_none() && status.pid() == Some(main) {
                    main_status = Some(raw_status(status));
                    // Everything the step left behind dies with it.
                    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
                }
            }
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    report(REPORT_STATUS, main_status.unwrap_or(255 << 8));
    sys::exit_now(0)
}

/// Re-encodes a wait status the way the kernel reports it (`exit << 8` or the signal).
fn raw_status(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => (code & 0xff) << 8,
        WaitStatus::Signaled(_, signal, _) => signal as i32,
        _ => 255 << 8,
    }
}

/// The step's main process: drops privileges and executes the program.
fn exec_main(plan: &Plan) -> ! {
    sys::reset_signals();
    // kiln turned huge pages off for itself (`disable_huge_pages`); the
    // step's program gets the system's policy, as under Docker. (This
    // process borrows the init's memory until its exec, which keeps the
    // setting for the program's new memory.)
    let _ = nix::sys::prctl::set_thp_disable(false);
    if plan.new_session {
        if let Err(errno) = nix::unistd::setsid() {
            fail(REPORT_SESSION, errno);
        }
    }
    if plan.controlling_terminal {
        if let Err(errno) = sys::set_controlling_terminal(0) {
            fail(REPORT_SESSION, errno);
        }
    }
    // Docker's umask, whatever kiln was started with: file modes in layers must
    // not depend on the user's shell.
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    for limit in &plan.rlimits {
        // Raising a hard limit needs CAP_SYS_RESOURCE, which goes next.
        if let Err(errno) = nix::sys::resource::setrlimit(limit.resource, limit.soft, limit.hard) {
            fail(REPORT_RLIMIT, errno);
        }
    }
    if let Err(errno) = sys::limit_capabilities(plan.keep_caps, plan.last_cap) {
        fail(REPORT_CAPS, errno);
    }
    if let Err(errno) = sys::set_identity(
        plan.uid,
        plan.gid,
        plan.set_groups.then_some(&plan.groups[..]),
    ) {
        fail(REPORT_IDENTITY, errno);
    }
    if plan.uid != 0 {
        // setresuid to a non-root uid already cleared the permitted set.
    } else if let Err(errno) = sys::set_capabilities(plan.keep_caps) {
        fail(REPORT_CAPS, errno);
    }
    if let Err(errno) = nix::sys::prctl::set_no_new_privs() {
        fail(REPORT_CAPS, errno);
    }
    // Last: from here on only what the profile allows (execve among it).
    if let Some(filter) = &plan.seccomp {
        if let Err(errno) = sys::set_seccomp_filter(&filter.program, filter.flags) {
            fail(REPORT_SECCOMP, errno);
        }
    }
    let mut last = Errno::ENOENT;
    for candidate in &plan.exec_candidates {
        let errno = sys::execve(candidate, &plan.argv, &plan.envp);
        // As execvp: keep looking past missing files, remember permission errors.
        match errno {
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES => last = Errno::EACCES,
            other => {
                last = other;
                break;
            }
        }
    }
    report(REPORT_EXEC, last as i32);
    sys::exit_now(127)
}
