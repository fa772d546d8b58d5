//! The syscall boundary: the only code in kiln that uses `unsafe`.
//!
//! Everything here may run in a child created by a raw `clone` from a
//! multi-threaded parent, so no function allocates, takes a lock, or goes
//! through a glibc wrapper with process-wide bookkeeping (glibc's setuid family
//! signals every thread it believes exists, which a raw clone child does not
//! have: those are issued as raw syscalls).
#![allow(unsafe_code)]

use std::convert::Infallible;
use std::ffi::{CStr, CString};
use std::os::fd::RawFd;
use std::ptr;

use nix::errno::Errno;
use nix::unistd::Pid;

/// A NULL-terminated array of C strings for `execve`, built before forking.
pub(crate) struct ExecArray {
    _strings: Vec<CString>,
    pointers: Vec<*const libc::c_char>,
}

impl ExecArray {
    pub(crate) fn new(strings: Vec<CString>) -> Self {
        let mut pointers: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        pointers.push(ptr::null());
        Self {
            _strings: strings,
            pointers,
        }
    }
}

/// Creates a child process in new namespaces (`flags` are `CLONE_NEW*`),
/// fork-style: the child continues on a copy of the caller's stack. Returns
/// `None` in the child and the child's pid in the parent.
///
/// Safety contract for callers (not expressible in types): between this call
/// and `execve` or `exit_now`, the child only calls functions of this module
/// and allocation-free `nix` wrappers on prepared data.
pub(crate) fn clone_process(flags: libc::c_int) -> Result<Option<Pid>, Errno> {
    let flags = (flags | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: a raw clone without CLONE_VM and with a NULL stack duplicates the
    // calling thread like fork(); see the contract above for the child.
    let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(None),
        pid => Ok(Some(Pid::from_raw(pid as libc::pid_t))),
    }
}

/// The stack of a child started by [`spawn_sharing_memory`]: what the step's
/// main process runs on from the clone to its `execve`.
const SHARED_CHILD_STACK: usize = 256 << 10;

/// Starts a child that runs `child` in this process' memory, on a stack of
/// its own, with the calling thread suspended until the child calls
/// `execve` or exits (`CLONE_VM | CLONE_VFORK`, as `posix_spawn` does): no
/// page tables are copied and no page becomes copy-on-write, which a fork
/// of kiln's copy (the sandbox's init) would cost on every step.
///
/// Safety contract for callers (not expressible in types): the calling
/// process has no other thread that could run while the child borrows its
/// memory (the sandbox's init has one), and `child` only calls functions of
/// this module and allocation-free `nix` wrappers on prepared data, ending
/// in `execve` or [`exit_now`].
pub(crate) fn spawn_sharing_memory<F: FnOnce() -> Infallible>(child: F) -> Result<Pid, Errno> {
    // (The child's call never returns: what follows it cannot run.)
    #[allow(unreachable_code)]
    extern "C" fn trampoline<F: FnOnce() -> Infallible>(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `Option<F>` below, alive (the parent is
        // suspended in clone) and taken only here.
        let slot = unsafe { &mut *arg.cast::<Option<F>>() };
        match slot.take() {
            Some(child) => match child() {},
            None => exit_now(127),
        }
    }
    // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
    let stack = unsafe {
        libc::mmap(
            ptr::null_mut(),
            SHARED_CHILD_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    let mut slot = Some(child);
    // SAFETY: the stack is ours and grows down from its end (16-byte
    // aligned); CLONE_VFORK keeps this frame, `slot` and the stack alive
    // until the child has exec'd or exited (see the contract above).
    let pid = unsafe {
        let top = stack
            .cast::<u8>()
            .add(SHARED_CHILD_STACK)
            .cast::<libc::c_void>();
        libc::clone(
            trampoline::<F>,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut slot as *mut Option<F>).cast::<libc::c_void>(),
        )
    };
    let errno = Errno::last();
    // SAFETY: the child no longer runs on the stack (it exec'd or exited).
    unsafe { libc::munmap(stack, SHARED_CHILD_STACK) };
    if pid == -1 {
        return Err(errno);
    }
    Ok(Pid::from_raw(pid))
}

/// `fork()` for a process known to have one thread (checked by the
/// caller): no lock can be held by a thread that does not exist in the
/// child, so the child may allocate and run ordinary code.
pub(crate) fn fork_single_threaded() -> Result<Option<Pid>, Errno> {
    clone_process(0)
}

/// `FS_TOPDIR_FL` of ext2/3/4 (`chattr +T`): new directories made in the
/// directory are placed as top-level ones are.
const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;

/// Sets `FS_TOPDIR_FL` on the directory `dir` unless it is set.
pub(crate) fn set_topdir_flag(dir: &std::fs::File) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // The kernel reads and writes an int, whatever the ioctl's number says.
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int into `flags`.
    if unsafe { libc::ioctl(dir.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) } < 0 {
        return Err(Errno::last());
    }
    if flags & FS_TOPDIR_FL != 0 {
        return Ok(());
    }
    flags |= FS_TOPDIR_FL;
    // SAFETY: FS_IOC_SETFLAGS reads one int from `flags`.
    if unsafe { libc::ioctl(dir.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// `nice(increment)`: the calling thread (Linux keeps niceness per
/// thread) runs `increment` nicer; threads and processes it starts later
/// inherit that.
pub(crate) fn add_niceness(increment: u8) -> Result<(), Errno> {
    Errno::clear();
    // SAFETY: nice takes a plain integer and touches no memory of ours.
    let result = unsafe { libc::nice(libc::c_int::from(increment)) };
    // -1 is also a valid new niceness: errno tells a failure apart.
    if result == -1 && Errno::last_raw() != 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Ends the current process without running destructors or atexit handlers.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// Executes `path` with prepared argument and environment arrays; returns only on failure.
pub(crate) fn execve(path: &CStr, argv: &ExecArray, envp: &ExecArray) -> Errno {
    // SAFETY: all three are NUL-terminated strings / NULL-terminated arrays that
    // outlive the call.
    unsafe {
        libc::execve(
            path.as_ptr(),
            argv.pointers.as_ptr(),
            envp.pointers.as_ptr(),
        )
    };
    Errno::last()
}

/// `dup3(old, new, 0)`: `new` becomes a copy of `old` without close-on-exec.
pub(crate) fn dup_to(old: RawFd, new: RawFd) -> Result<(), Errno> {
    if old == new {
        // dup3 refuses equal descriptors; just clear close-on-exec.
        // SAFETY: fcntl on a descriptor number has no memory effects.
        let ret = unsafe { libc::fcntl(old, libc::F_SETFD, 0) };
        return Errno::result(ret).map(drop);
    }
    // SAFETY: plain descriptor syscall.
    let ret = unsafe { libc::dup3(old, new, 0) };
    Errno::result(ret).map(drop)
}

/// Duplicates `fd` to the lowest free number >= `min`, close-on-exec.
pub(crate) fn dup_above(fd: RawFd, min: RawFd) -> Result<RawFd, Errno> {
    // SAFETY: plain descriptor syscall.
    let ret = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    Errno::result(ret)
}

/// Sets close-on-exec on one descriptor.
pub(crate) fn set_cloexec(fd: RawFd) -> Result<(), Errno> {
    // SAFETY: plain descriptor syscall.
    let ret = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Errno::result(ret).map(drop)
}

/// Closes every descriptor from `first` up.
pub(crate) fn close_from(first: RawFd) -> Result<(), Errno> {
    // SAFETY: close_range only affects the descriptor table.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
    Errno::result(ret).map(drop)
}

/// Closes one descriptor by number (in the child, where descriptors are not owned).
pub(crate) fn close_fd(fd: RawFd) {
    // SAFETY: closing a number the child no longer uses.
    unsafe { libc::close(fd) };
}

/// Raw `setgroups` (unless `groups` is `None`: a user namespace that denies
/// it), `setresgid`, `setresuid` (see the module docs for why raw).
pub(crate) fn set_identity(
    uid: u32,
    gid: u32,
    groups: Option<&[libc::gid_t]>,
) -> Result<(), Errno> {
    if let Some(groups) = groups {
        // SAFETY: the pointer and length describe a live slice.
        let ret = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
        Errno::result(ret)?;
    }
    // SAFETY: integer-only syscalls.
    let ret = unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) };
    Errno::result(ret)?;
    // SAFETY: integer-only syscalls.
    let ret = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
    Errno::result(ret).map(drop)
}

/// Restricts the capability bounding set, ambient set and the current sets to
/// `keep` (a bit mask of capability numbers up to `last_cap`).
pub(crate) fn limit_capabilities(keep: u64, last_cap: u32) -> Result<(), Errno> {
    restrict_capabilities(keep, keep, last_cap)
}

/// Restricts the bounding set to `bounding`, clears the ambient set, and sets
/// the effective and permitted sets to `caps` (bit masks up to `last_cap`).
pub(crate) fn restrict_capabilities(bounding: u64, caps: u64, last_cap: u32) -> Result<(), Errno> {
    for cap in 0..=last_cap {
        if bounding & (1u64 << cap) == 0 {
            // SAFETY: integer-only prctl.
            let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            Errno::result(ret)?;
        }
    }
    // SAFETY: integer-only prctl.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    Errno::result(ret)?;
    set_capabilities(caps)
}

/// capset(2) with effective = permitted = `caps`, inheritable empty.
pub(crate) fn set_capabilities(caps: u64) -> Result<(), Errno> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let low = caps as u32;
    let high = (caps >> 32) as u32;
    let data = [
        Data {
            effective: low,
            permitted: low,
            inheritable: 0,
        },
        Data {
            effective: high,
            permitted: high,
            inheritable: 0,
        },
    ];
    // SAFETY: header and data match the kernel's v3 layout and live across the call.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    Errno::result(ret).map(drop)
}

/// Installs a seccomp filter on the calling thread (`seccomp(2)` with
/// `SECCOMP_SET_MODE_FILTER`); needs `no_new_privs` or CAP_SYS_ADMIN.
pub(crate) fn set_seccomp_filter(program: &[libc::sock_filter], flags: u32) -> Result<(), Errno> {
    let len = libc::c_ushort::try_from(program.len()).map_err(|_| Errno::EINVAL)?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at a live slice of `len` instructions; the kernel
    // copies the program and does not write through the pointer.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
            flags as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        )
    };
    Errno::result(ret).map(drop)
}

/// Brings the loopback interface of the current network namespace up.
pub(crate) fn loopback_up() -> Result<(), Errno> {
    // SAFETY: socket returns a new descriptor or -1.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let sock = Errno::result(sock)?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    let result = unsafe {
        if libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut request) < 0 {
            Err(Errno::last())
        } else {
            request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(sock, libc::SIOCSIFFLAGS, &request) < 0 {
                Err(Errno::last())
            } else {
                Ok(())
            }
        }
    };
    close_fd(sock);
    result
}

/// Raw `write` of a small record (no buffering, no locks).
pub(crate) fn write_all(fd: RawFd, bytes: &[u8]) {
    let mut done = 0;
    while done < bytes.len() {
        // SAFETY: the pointer and length describe a live slice.
        let ret = unsafe { libc::write(fd, bytes[done..].as_ptr().cast(), bytes.len() - done) };
        if ret < 0 {
            if Errno::last() == Errno::EINTR {
                continue;
            }
            return;
        }
        done += ret as usize;
    }
}

/// Raw `read` of one byte, retrying on EINTR; `false` at end of file or error.
pub(crate) fn read_byte(fd: RawFd) -> bool {
    let mut byte = 0u8;
    loop {
        // SAFETY: reading one byte into a live local.
        let ret = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
        if ret < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        return ret == 1;
    }
}

/// Restores default dispositions for every signal and unblocks them all: a
/// step must not inherit kiln's ignored SIGPIPE or a blocked mask.
pub(crate) fn reset_signals() {
    for signal in 1..=libc::SIGRTMAX() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL touches no memory of ours.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
    // SAFETY: an empty set, built on the stack.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, ptr::null_mut());
    }
}

/// Where a process' argument and environment strings are (the `arg_start`,
/// `arg_end`, `env_start`, `env_end` fields of `/proc/self/stat`): the memory
/// `/proc/PID/cmdline` and `environ` read. All zero when unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProcessStrings {
    pub arg_start: usize,
    pub arg_end: usize,
    pub env_start: usize,
    pub env_end: usize,
}

/// Blanks this process' copy of its argument and environment strings and
/// writes `title` as its only argument, so `/proc/PID/cmdline` reads
/// `title` and a NUL. Only ever called in a cloned child: the pages are
/// copy-on-write, the parent's are untouched.
pub(crate) fn replace_process_strings(area: &ProcessStrings, title: &[u8]) {
    let ProcessStrings {
        arg_start,
        arg_end,
        env_start,
        env_end,
    } = *area;
    if arg_start == 0 || arg_end <= arg_start || env_end < env_start {
        return;
    }
    // SAFETY: the kernel reported both ranges for this very process (the
    // parent read them before cloning, and a clone keeps the address space
    // layout); they lie in the writable initial stack mapping. Nothing in the
    // child reads argv or environ after this (it only runs this module's
    // functions on the prepared plan), so no live reference observes the writes.
    unsafe {
        ptr::write_bytes(arg_start as *mut u8, 0, arg_end - arg_start);
        if env_start != 0 {
            ptr::write_bytes(env_start as *mut u8, 0, env_end - env_start);
        }
    }
    // The title may run into the environment area when that follows the
    // arguments (as setproctitle does); it keeps one NUL after it.
    let room = if env_start == arg_end {
        env_end - arg_start
    } else {
        arg_end - arg_start
    };
    let len = title.len().min(room.saturating_sub(1));
    // SAFETY: `len` bytes from `arg_start` lie within the blanked ranges above.
    unsafe { ptr::copy_nonoverlapping(title.as_ptr(), arg_start as *mut u8, len) };
    if arg_end - 1 > arg_start + len {
        // A non-NUL last argument byte tells the kernel the strings were
        // rewritten: cmdline then ends at the title's NUL instead of showing
        // the whole (blank) argument area.
        // SAFETY: the last byte of the argument range, blanked above.
        unsafe { ptr::write((arg_end - 1) as *mut u8, b' ') };
    }
}

/// Joins the network namespace `netns` refers to (`setns`).
pub(crate) fn join_netns(netns: RawFd) -> Result<(), Errno> {
    // SAFETY: integer-only syscall.
    let ret = unsafe { libc::setns(netns, libc::CLONE_NEWNET) };
    Errno::result(ret).map(drop)
}

/// Spawns `command` in a mount namespace of its own whose mounts are all
/// private (so nothing it mounts or unmounts propagates to the host's), with
/// the descriptors in `keep` left open across exec.
pub(crate) fn spawn_with_private_mounts<const N: usize>(
    command: &mut std::process::Command,
    keep: [RawFd; N],
) -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let hook = move || -> std::io::Result<()> {
        // SAFETY: unshare, mount and fcntl are async-signal-safe syscalls on
        // integers and a static string; nothing here allocates or locks.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) < 0
                || libc::mount(
                    ptr::null(),
                    c"/".as_ptr(),
                    ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    ptr::null(),
                ) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for fd in keep {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and only issues the
    // async-signal-safe syscalls above.
    unsafe { command.pre_exec(hook) };
    command.spawn()
}

/// Creates the persistent tap device `name` in the calling thread's network
/// namespace (a program attaches to it later by name with `TUNSETIFF`).
pub(crate) fn create_persistent_tap(name: &CStr) -> Result<(), Errno> {
    let tun = nix::fcntl::open(
        c"/dev/net/tun",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.to_bytes_with_nul();
    if bytes.len() > request.ifr_name.len() {
        return Err(Errno::ENAMETOOLONG);
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tun);
    // SAFETY: TUNSETIFF reads the ifreq we own; TUNSETPERSIST takes an integer.
    let ret = unsafe { libc::ioctl(fd, libc::TUNSETIFF, &request) };
    Errno::result(ret)?;
    // SAFETY: as above.
    let ret = unsafe { libc::ioctl(fd, libc::TUNSETPERSIST, 1 as libc::c_ulong) };
    Errno::result(ret).map(drop)
}

/// The signals the sandbox's init passes on to the main process of a
/// `kiln run` container (what `docker run --init` forwards; not the ones
/// the kernel raises for a fault, nor SIGCHLD, SIGKILL or SIGSTOP).
pub(crate) const FORWARDED_SIGNALS: [libc::c_int; 11] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPIPE,
    libc::SIGALRM,
    libc::SIGTERM,
    libc::SIGCONT,
    libc::SIGWINCH,
    libc::SIGTSTP,
];

/// The main process signals go to (0: not started yet).
static FORWARD_TO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
/// A signal that came before the main process existed (0: none).
static FORWARD_PENDING: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward_signal(signal: libc::c_int) {
    use std::sync::atomic::Ordering;
    let target = FORWARD_TO.load(Ordering::SeqCst);
    if target > 0 {
        // SAFETY: kill is async-signal-safe and touches no memory.
        unsafe { libc::kill(target, signal) };
    } else {
        FORWARD_PENDING.store(signal, Ordering::SeqCst);
    }
}

/// Makes the calling process (the sandbox's init) pass [`FORWARDED_SIGNALS`]
/// on to the process [`forward_to`] names, and unblocks them (kiln's
/// threads may block them to wait for them synchronously).
pub(crate) fn install_forwarding() -> Result<(), Errno> {
    // SAFETY: sigaction with a handler that only calls kill and touches
    // atomics; the structures are plain data on the stack.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = forward_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in FORWARDED_SIGNALS {
            if libc::sigaction(signal, &action, ptr::null_mut()) < 0 {
                return Err(Errno::last());
            }
            libc::sigaddset(&mut set, signal);
        }
        if libc::sigprocmask(libc::SIG_UNBLOCK, &set, ptr::null_mut()) < 0 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// Names the process forwarded signals go to, and delivers one that came
/// before it existed.
pub(crate) fn forward_to(pid: Pid) {
    use std::sync::atomic::Ordering;
    FORWARD_TO.store(pid.as_raw(), Ordering::SeqCst);
    let pending = FORWARD_PENDING.swap(0, Ordering::SeqCst);
    if pending != 0 {
        // SAFETY: integer-only syscall.
        unsafe { libc::kill(pid.as_raw(), pending) };
    }
}

/// Makes the terminal `fd` the calling session leader's controlling terminal
/// (`TIOCSCTTY`).
pub(crate) fn set_controlling_terminal(fd: RawFd) -> Result<(), Errno> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    let ret = unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0 as libc::c_ulong) };
    Errno::result(ret).map(drop)
}

/// The window size of the terminal `fd` (`TIOCGWINSZ`).
pub(crate) fn window_size(fd: RawFd) -> Result<libc::winsize, Errno> {
    // SAFETY: winsize is plain old data; TIOCGWINSZ writes the one we own.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        let ret = libc::ioctl(fd, libc::TIOCGWINSZ, &mut size as *mut libc::winsize);
        Errno::result(ret).map(|_| size)
    }
}

/// Sets the window size of the terminal `fd` (`TIOCSWINSZ`); the kernel
/// sends SIGWINCH to its foreground process group.
pub(crate) fn set_window_size(fd: RawFd, size: &libc::winsize) -> Result<(), Errno> {
    // SAFETY: TIOCSWINSZ reads the winsize we own.
    let ret = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, size as *const libc::winsize) };
    Errno::result(ret).map(drop)
}
