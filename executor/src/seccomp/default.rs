//! Docker's default seccomp profile, as kiln's own data.
//!
//! The facts (which calls, which argument rules, which capability or
//! architecture brings which group) are those of Docker's default profile;
//! the default action is EPERM. Keep it in step with Docker's when Docker's
//! changes.

use std::sync::OnceLock;

use super::{Action, Arch, Arches, ArgCondition, CompareOp, Excludes, Includes, Profile, Rule};

/// Always allowed (names unknown to the host's libseccomp are skipped).
const ALLOWED: &[&str] = &[
    // files and descriptors
    "access",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "close",
    "close_range",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "flock",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futimesat",
    "getcwd",
    "getdents",
    "getdents64",
    "lchown",
    "lchown32",
    "link",
    "linkat",
    "_llseek",
    "lseek",
    "lstat",
    "lstat64",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "name_to_handle_at",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pread64",
    "preadv",
    "preadv2",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "rename",
    "renameat",
    "renameat2",
    "rmdir",
    "sendfile",
    "sendfile64",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "tee",
    "truncate",
    "truncate64",
    "umask",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vmsplice",
    "write",
    "writev",
    "statmount",
    "listmount",
    "cachestat",
    // extended attributes
    "fgetxattr",
    "flistxattr",
    "fremovexattr",
    "fsetxattr",
    "getxattr",
    "getxattrat",
    "lgetxattr",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "lremovexattr",
    "lsetxattr",
    "removexattr",
    "removexattrat",
    "setxattr",
    "setxattrat",
    // events, polling, timers
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "fanotify_mark",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "pause",
    "poll",
    "ppoll",
    "ppoll_time64",
    "pselect6",
    "pselect6_time64",
    "select",
    "_newselect",
    "signalfd",
    "signalfd4",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "alarm",
    "getitimer",
    "setitimer",
    // asynchronous I/O
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    // time
    "adjtimex",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "gettimeofday",
    "nanosleep",
    "time",
    "times",
    // processes, threads, signals
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "fork",
    "vfork",
    "wait4",
    "waitid",
    "waitpid",
    "kill",
    "tgkill",
    "tkill",
    "pidfd_open",
    "pidfd_send_signal",
    "restart_syscall",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sigaltstack",
    "sigprocmask",
    "sigreturn",
    "get_robust_list",
    "set_robust_list",
    "set_tid_address",
    "get_thread_area",
    "set_thread_area",
    "rseq",
    "prctl",
    "seccomp",
    "capget",
    "capset",
    "getcpu",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrlimit",
    "ugetrlimit",
    "getrusage",
    "getsid",
    "gettid",
    "prlimit64",
    "setpgid",
    "setpriority",
    "setrlimit",
    "setsid",
    "sysinfo",
    "uname",
    "process_mrelease",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "uretprobe",
    "riscv_hwprobe",
    // futexes
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    // scheduling
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    // identity
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getuid",
    "getuid32",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setuid",
    "setuid32",
    // memory
    "brk",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mremap",
    "mseal",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "remap_file_pages",
    "getrandom",
    // System V and POSIX IPC
    "ipc",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    // sockets (socket itself is limited by address family below)
    "accept",
    "accept4",
    "bind",
    "connect",
    "getpeername",
    "getsockname",
    "getsockopt",
    "listen",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "send",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setsockopt",
    "shutdown",
    "socketcall",
    "socketpair",
    "pipe",
    "pipe2",
];

/// Address families `socket` refuses: AF_ALG (38) and AF_VSOCK (40).
const AF_ALG: u64 = 38;
const AF_VSOCK: u64 = 40;

/// `personality` values allowed: PER_LINUX, PER_LINUX32, UNAME26,
/// UNAME26|PER_LINUX32 and the query 0xffffffff.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The clone flags that make namespaces (CLONE_NEWNS, NEWCGROUP, NEWUTS,
/// NEWIPC, NEWUSER, NEWPID, NEWNET): without CAP_SYS_ADMIN, `clone` is allowed
/// only with none of them.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7e02_0000;

/// Groups allowed only to a step holding the capability.
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// Groups allowed on some host architectures (Go's names).
const BY_ARCH: &[(&[&str], &[&str])] = &[
    (&["ppc64le"], &["sync_file_range2", "swapcontext"]),
    (
        &["arm", "arm64"],
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
    ),
    (&["amd64", "x32"], &["arch_prctl"]),
    (&["amd64", "x32", "x86"], &["modify_ldt"]),
    (
        &["s390", "s390x"],
        &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ],
    ),
    (&["riscv64"], &["riscv_flush_icache"]),
];

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn rule(names: &[&str], action: Action) -> Rule {
    Rule {
        names: strings(names),
        action,
        args: Vec::new(),
        includes: Includes::default(),
        excludes: Excludes::default(),
    }
}

fn arg(index: u32, op: CompareOp, value: u64) -> ArgCondition {
    ArgCondition {
        index,
        value,
        value_two: 0,
        op,
    }
}

fn architectures() -> Arches {
    use Arch::*;
    Arches::Map(vec![
        (X8664, vec![X86, X32]),
        (Aarch64, vec![Arm]),
        (Mips64, vec![Mips, Mips64N32]),
        (Mips64N32, vec![Mips, Mips64]),
        (Mipsel64, vec![Mipsel, Mipsel64N32]),
        (Mipsel64N32, vec![Mipsel, Mipsel64]),
        (S390X, vec![S390]),
        (Riscv64, vec![]),
        (Loongarch64, vec![]),
    ])
}

fn build() -> Profile {
    let mut rules = vec![rule(ALLOWED, Action::Allow)];
    // ptrace cannot bypass seccomp from Linux 4.8 on, so it is allowed there.
    let mut ptrace = rule(
        &["process_vm_readv", "process_vm_writev", "ptrace"],
        Action::Allow,
    );
    ptrace.includes.min_kernel = Some((4, 8));
    rules.push(ptrace);
    // socket: every address family but AF_ALG and AF_VSOCK.
    for condition in [
        arg(0, CompareOp::Less, AF_ALG),
        arg(0, CompareOp::Equal, AF_ALG + 1),
        arg(0, CompareOp::Greater, AF_VSOCK),
    ] {
        let mut socket = rule(&["socket"], Action::Allow);
        socket.args = vec![condition];
        rules.push(socket);
    }
    for persona in PERSONALITIES {
        let mut personality = rule(&["personality"], Action::Allow);
        personality.args = vec![arg(0, CompareOp::Equal, *persona)];
        rules.push(personality);
    }
    for (arches, names) in BY_ARCH {
        let mut group = rule(names, Action::Allow);
        group.includes.arches = strings(arches);
        rules.push(group);
    }
    for (cap, names) in BY_CAPABILITY {
        let mut group = rule(names, Action::Allow);
        group.includes.caps = vec![cap.to_string()];
        rules.push(group);
    }
    // Without CAP_SYS_ADMIN: clone without namespace flags (the flags are the
    // second argument on s390), and clone3 (whose flags seccomp cannot see)
    // fails with ENOSYS so that libc falls back to clone.
    let s390 = strings(&["s390", "s390x"]);
    let mut clone = rule(&["clone"], Action::Allow);
    clone.args = vec![arg(0, CompareOp::MaskedEqual, CLONE_NAMESPACE_FLAGS)];
    clone.excludes.caps = vec!["CAP_SYS_ADMIN".into()];
    clone.excludes.arches = s390.clone();
    rules.push(clone);
    let mut clone_s390 = rule(&["clone"], Action::Allow);
    clone_s390.args = vec![arg(1, CompareOp::MaskedEqual, CLONE_NAMESPACE_FLAGS)];
    clone_s390.includes.arches = s390;
    clone_s390.excludes.caps = vec!["CAP_SYS_ADMIN".into()];
    rules.push(clone_s390);
    let mut clone3 = rule(&["clone3"], Action::Errno(libc::ENOSYS as u16));
    clone3.excludes.caps = vec!["CAP_SYS_ADMIN".into()];
    rules.push(clone3);
    Profile {
        default_action: Action::Errno(libc::EPERM as u16),
        arches: architectures(),
        flags: 0,
        rules,
    }
}

impl Profile {
    /// Docker's default profile: EPERM for every call not allowed; namespaces,
    /// mounts, keyrings, BPF, perf events, module loading, clock setting and
    /// the like only with the capability Docker ties them to.
    pub fn docker_default() -> &'static Profile {
        static DEFAULT: OnceLock<Profile> = OnceLock::new();
        DEFAULT.get_or_init(build)
    }
}
