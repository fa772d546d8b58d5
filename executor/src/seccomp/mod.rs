//! Seccomp for RUN steps: the profile (Docker's default or a user's JSON file in
//! Docker's format), its resolution against a step's capabilities, the host's
//! architecture and kernel, and its compilation to a BPF program.
//!
//! The program is compiled in the parent (with libseccomp, see `compile.rs`)
//! and handed to the sandbox as plain data in the plan; the step's main process
//! loads it with one raw syscall right before `execve`.

mod compile;
mod default;
mod json;

use std::fmt;
use std::sync::Arc;

pub(crate) use compile::filter_for;
pub use compile::Filter;

/// Which seccomp filter a step runs under (`--security-opt seccomp=...`).
#[derive(Debug, Clone, Default)]
pub enum Seccomp {
    /// Docker's default profile ([`Profile::docker_default`]).
    #[default]
    Default,
    /// No filter (`seccomp=unconfined`).
    Unconfined,
    /// A profile of the user's (`seccomp=PROFILE.json`).
    Profile(Arc<Profile>),
}

/// A seccomp profile: a default action and rules, some of which apply only
/// with (or without) a capability, on an architecture or from a kernel on.
/// Built by [`Profile::docker_default`] or [`Profile::from_json`]; valid by
/// construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub(crate) default_action: Action,
    pub(crate) arches: Arches,
    /// `SECCOMP_FILTER_FLAG_*` bits passed to the kernel with the filter.
    pub(crate) flags: u32,
    pub(crate) rules: Vec<Rule>,
}

/// What a filter does with a system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    /// Fail with this errno.
    Errno(u16),
    KillThread,
    KillProcess,
    /// Send SIGSYS.
    Trap,
    /// Notify a tracer with this value (fails with ENOSYS when there is none).
    Trace(u16),
    /// Allow and log.
    Log,
}

/// The architectures a filter covers besides the host's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Arches {
    /// Docker's `archMap`: the entry whose main architecture is the host's
    /// gives the extra ones (x86 and x32 on x86_64).
    Map(Vec<(Arch, Vec<Arch>)>),
    /// Docker's older `architectures`: all of these.
    List(Vec<Arch>),
}

/// A libseccomp architecture, by its `SCMP_ARCH_*` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arch {
    X86,
    X8664,
    X32,
    Arm,
    Aarch64,
    Mips,
    Mips64,
    Mips64N32,
    Mipsel,
    Mipsel64,
    Mipsel64N32,
    Ppc,
    Ppc64,
    Ppc64Le,
    S390,
    S390X,
    Parisc,
    Parisc64,
    Riscv64,
    Loongarch64,
    M68k,
    Sh,
    Sheb,
}

const ARCH_NAMES: &[(Arch, &str)] = &[
    (Arch::X86, "SCMP_ARCH_X86"),
    (Arch::X8664, "SCMP_ARCH_X86_64"),
    (Arch::X32, "SCMP_ARCH_X32"),
    (Arch::Arm, "SCMP_ARCH_ARM"),
    (Arch::Aarch64, "SCMP_ARCH_AARCH64"),
    (Arch::Mips, "SCMP_ARCH_MIPS"),
    (Arch::Mips64, "SCMP_ARCH_MIPS64"),
    (Arch::Mips64N32, "SCMP_ARCH_MIPS64N32"),
    (Arch::Mipsel, "SCMP_ARCH_MIPSEL"),
    (Arch::Mipsel64, "SCMP_ARCH_MIPSEL64"),
    (Arch::Mipsel64N32, "SCMP_ARCH_MIPSEL64N32"),
    (Arch::Ppc, "SCMP_ARCH_PPC"),
    (Arch::Ppc64, "SCMP_ARCH_PPC64"),
    (Arch::Ppc64Le, "SCMP_ARCH_PPC64LE"),
    (Arch::S390, "SCMP_ARCH_S390"),
    (Arch::S390X, "SCMP_ARCH_S390X"),
    (Arch::Parisc, "SCMP_ARCH_PARISC"),
    (Arch::Parisc64, "SCMP_ARCH_PARISC64"),
    (Arch::Riscv64, "SCMP_ARCH_RISCV64"),
    (Arch::Loongarch64, "SCMP_ARCH_LOONGARCH64"),
    (Arch::M68k, "SCMP_ARCH_M68K"),
    (Arch::Sh, "SCMP_ARCH_SH"),
    (Arch::Sheb, "SCMP_ARCH_SHEB"),
];

impl Arch {
    pub(crate) fn from_name(name: &str) -> Option<Arch> {
        ARCH_NAMES.iter().find(|(_, n)| *n == name).map(|(a, _)| *a)
    }
}

/// One rule: `action` for each syscall in `names` (names unknown to
/// libseccomp are skipped, as runc does), when all `args` conditions hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub names: Vec<String>,
    pub action: Action,
    pub args: Vec<ArgCondition>,
    /// The rule applies only if the step holds all these capabilities, the
    /// host is one of these architectures and its kernel is this recent.
    pub includes: Includes,
    /// The rule does not apply if the step holds any of these capabilities or
    /// the host is one of these architectures.
    pub excludes: Excludes,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Includes {
    pub caps: Vec<String>,
    /// Docker's names for host architectures (`amd64`, `arm64`, `x86`,
    /// `mipsel64`, ...; see [`docker_arch_name`]).
    pub arches: Vec<String>,
    pub min_kernel: Option<(u32, u32)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Excludes {
    pub caps: Vec<String>,
    pub arches: Vec<String>,
    pub min_kernel: Option<(u32, u32)>,
}

/// `args[index] op value` (for `MaskedEqual`: `args[index] & value == value_two`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArgCondition {
    pub index: u32,
    pub value: u64,
    pub value_two: u64,
    pub op: CompareOp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CompareOp {
    NotEqual,
    Less,
    LessOrEqual,
    Equal,
    GreaterOrEqual,
    Greater,
    MaskedEqual,
}

/// A profile that is not valid, or a filter that cannot be built from it.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The JSON is malformed or a field has the wrong shape; `at` says
    /// where (`at syscalls[2].action: `, empty for syntax errors, whose
    /// message has the line and column).
    #[error("{at}{message}")]
    Json {
        /// Where in the profile (`at syscalls[2].action: `), or empty.
        at: String,
        /// What is wrong.
        message: String,
    },
    /// The JSON is well formed but says something kiln cannot apply.
    #[error("{0}")]
    Invalid(String),
    /// libseccomp refused the filter.
    #[error("cannot compile the seccomp filter: {what}: {source}")]
    Compile {
        /// What was being done (`add architecture "arm64"`, ...).
        what: String,
        /// libseccomp's error.
        #[source]
        source: libseccomp::error::SeccompError,
    },
}

/// What decides which rules apply: the step's capabilities and the host.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    /// Capability bits (bit n = capability number n) the step is given.
    pub caps: u64,
    /// The host's architecture as Docker names it in `includes.arches`
    /// ([`docker_arch_name`]): under qemu-user a foreign step's system calls
    /// are made by qemu on the host, so the host's rules apply.
    pub arch: &'a str,
    pub kernel: (u32, u32),
}

impl Profile {
    /// The rules that apply to `target`, in order.
    pub(crate) fn rules_for<'p>(&'p self, target: &Target<'_>) -> Vec<&'p Rule> {
        self.rules
            .iter()
            .filter(|rule| rule.applies_to(target))
            .collect()
    }
}

impl Rule {
    fn applies_to(&self, target: &Target<'_>) -> bool {
        let holds =
            |name: &String| capability_number(name).is_some_and(|n| target.caps & (1u64 << n) != 0);
        let on_arch = |arches: &Vec<String>| arches.iter().any(|a| a == target.arch);
        if on_arch(&self.excludes.arches)
            || self.excludes.caps.iter().any(holds)
            || self
                .excludes
                .min_kernel
                .is_some_and(|min| target.kernel >= min)
        {
            return false;
        }
        if !self.includes.arches.is_empty() && !on_arch(&self.includes.arches) {
            return false;
        }
        if !self.includes.caps.iter().all(holds) {
            return false;
        }
        self.includes
            .min_kernel
            .is_none_or(|min| target.kernel >= min)
    }
}

/// Docker's name for an OCI (Go) architecture in `includes.arches`, and the
/// `SCMP_ARCH_*` its `archMap` entry is found by.
pub(crate) fn docker_arch_name(oci_arch: &str) -> Option<(&'static str, Arch)> {
    Some(match oci_arch {
        "386" => ("x86", Arch::X86),
        "amd64" => ("amd64", Arch::X8664),
        "arm" => ("arm", Arch::Arm),
        "arm64" => ("arm64", Arch::Aarch64),
        "loong64" => ("loongarch64", Arch::Loongarch64),
        "mips64" => ("mips64", Arch::Mips64),
        "mips64le" => ("mipsel64", Arch::Mipsel64),
        "mipsle" => ("mipsel", Arch::Mipsel),
        "ppc" => ("ppc", Arch::Ppc),
        "ppc64" => ("ppc64", Arch::Ppc64),
        "ppc64le" => ("ppc64le", Arch::Ppc64Le),
        "riscv64" => ("riscv64", Arch::Riscv64),
        "s390" => ("s390", Arch::S390),
        "s390x" => ("s390x", Arch::S390X),
        _ => return None,
    })
}

/// Linux capability names, numbered as the kernel numbers them.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A capability's number; names are matched as Docker matches them (exactly,
/// `CAP_` prefix included). An unknown name is a capability nobody holds.
fn capability_number(name: &str) -> Option<u32> {
    CAPABILITIES
        .iter()
        .position(|c| *c == name)
        .map(|n| n as u32)
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Allow => write!(f, "allow"),
            Action::Errno(errno) => write!(f, "errno {errno}"),
            Action::KillThread => write!(f, "kill thread"),
            Action::KillProcess => write!(f, "kill process"),
            Action::Trap => write!(f, "trap"),
            Action::Trace(value) => write!(f, "trace {value}"),
            Action::Log => write!(f, "log"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(caps: &[&str], arch: &'static str) -> Target<'static> {
        let caps = caps
            .iter()
            .map(|c| capability_number(c).unwrap())
            .fold(0u64, |acc, n| acc | 1 << n);
        Target {
            caps,
            arch,
            kernel: (6, 1),
        }
    }

    fn names_for<'p>(profile: &'p Profile, target: &Target<'_>, action: Action) -> Vec<&'p str> {
        profile
            .rules_for(target)
            .into_iter()
            .filter(|r| r.action == action)
            .flat_map(|r| r.names.iter().map(String::as_str))
            .collect()
    }

    #[test]
    fn capability_numbers_are_the_kernels() {
        assert_eq!(capability_number("CAP_CHOWN"), Some(0));
        assert_eq!(capability_number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(capability_number("CAP_BPF"), Some(39));
        assert_eq!(capability_number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(capability_number("sys_admin"), None);
    }

    #[test]
    fn default_profile_denies_namespaces_and_mounts_without_sys_admin() {
        let profile = Profile::docker_default();
        let t = target(&["CAP_CHOWN", "CAP_SYS_CHROOT"], "amd64");
        let allowed = names_for(profile, &t, Action::Allow);
        for denied in [
            "mount",
            "unshare",
            "setns",
            "bpf",
            "perf_event_open",
            "keyctl",
        ] {
            assert!(!allowed.contains(&denied), "{denied} allowed");
        }
        assert!(allowed.contains(&"chroot"));
        assert!(allowed.contains(&"arch_prctl"));
        assert!(!allowed.contains(&"s390_runtime_instr"));
        // clone only with no namespace flag, clone3 answered with ENOSYS.
        let clone: Vec<&Rule> = profile
            .rules_for(&t)
            .into_iter()
            .filter(|r| r.names.iter().any(|n| n == "clone"))
            .collect();
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0].args[0].op, CompareOp::MaskedEqual);
        assert_eq!(clone[0].args[0].index, 0);
        assert_eq!(
            names_for(profile, &t, Action::Errno(libc::ENOSYS as u16)),
            vec!["clone3"]
        );
    }

    #[test]
    fn capabilities_bring_their_groups() {
        let profile = Profile::docker_default();
        let t = target(&["CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_SYSLOG"], "amd64");
        let allowed = names_for(profile, &t, Action::Allow);
        for name in ["mount", "unshare", "clone", "clone3", "syslog", "kcmp"] {
            assert!(allowed.contains(&name), "{name} not allowed");
        }
        assert!(!allowed.contains(&"chroot"));
        assert!(names_for(profile, &t, Action::Errno(libc::ENOSYS as u16)).is_empty());
    }

    #[test]
    fn arch_groups_follow_the_host() {
        let profile = Profile::docker_default();
        let s390 = target(&[], "s390x");
        let allowed = names_for(profile, &s390, Action::Allow);
        assert!(allowed.contains(&"s390_runtime_instr"));
        assert!(!allowed.contains(&"arch_prctl"));
        let clone: Vec<&Rule> = profile
            .rules_for(&s390)
            .into_iter()
            .filter(|r| r.names.iter().any(|n| n == "clone"))
            .collect();
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0].args[0].index, 1);
    }

    #[test]
    fn min_kernel_gates_a_rule() {
        let profile = Profile::docker_default();
        let mut t = target(&[], "amd64");
        assert!(names_for(profile, &t, Action::Allow).contains(&"ptrace"));
        t.kernel = (4, 4);
        assert!(!names_for(profile, &t, Action::Allow).contains(&"ptrace"));
    }
}
