//! A profile resolved for one step and compiled to a BPF program, in the parent.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};

use super::{
    docker_arch_name, Action, Arch, Arches, CompareOp, Profile, ProfileError, Rule, Seccomp, Target,
};

/// A compiled seccomp filter: what the step's main process hands the kernel.
#[derive(Clone)]
pub struct Filter {
    pub(crate) program: Vec<libc::sock_filter>,
    /// `SECCOMP_FILTER_FLAG_*` bits.
    pub(crate) flags: u32,
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Filter({} instructions, flags {:#x})",
            self.program.len(),
            self.flags
        )
    }
}

/// Filters already compiled in this process, by profile and capabilities: a
/// build compiles Docker's default once, not once per step. Holding the
/// profile keeps its address from being reused.
type Compiled = Vec<(Option<Arc<Profile>>, u64, Arc<Filter>)>;
static COMPILED: Mutex<Compiled> = Mutex::new(Vec::new());
const COMPILED_KEPT: usize = 16;

/// The filter a step with capability set `caps` runs under, `None` when unconfined.
pub(crate) fn filter_for(
    seccomp: &Seccomp,
    caps: u64,
) -> Result<Option<Arc<Filter>>, ProfileError> {
    let (key, profile) = match seccomp {
        Seccomp::Unconfined => return Ok(None),
        Seccomp::Default => (None, Profile::docker_default()),
        Seccomp::Profile(profile) => (Some(profile.clone()), &**profile),
    };
    let same = |entry: &(Option<Arc<Profile>>, u64, Arc<Filter>)| {
        entry.1 == caps
            && match (&entry.0, &key) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    };
    // Held while compiling (about 10 ms): steps that start together wait for
    // one compilation instead of each making its own.
    let mut compiled = lock();
    if let Some(found) = compiled.iter().find(|e| same(e)) {
        return Ok(Some(found.2.clone()));
    }
    let (major, minor) = kernel_version();
    let target = Target {
        caps,
        arch: docker_arch_name(crate::binfmt::host_arch()).map_or("", |(name, _)| name),
        kernel: (major, minor),
    };
    let filter = Arc::new(compile(profile, &target)?);
    if compiled.len() >= COMPILED_KEPT {
        compiled.remove(0);
    }
    compiled.push((key, caps, filter.clone()));
    Ok(Some(filter))
}

fn lock() -> std::sync::MutexGuard<'static, Compiled> {
    COMPILED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The running kernel's `<kernel>.<major>`, as Docker compares `minKernel`.
fn kernel_version() -> (u32, u32) {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn compile_err(
    what: impl Into<String>,
) -> impl FnOnce(libseccomp::error::SeccompError) -> ProfileError {
    let what = what.into();
    move |source| ProfileError::Compile { what, source }
}

/// Compiles `profile` for `target` with libseccomp and reads the BPF back.
pub(crate) fn compile(profile: &Profile, target: &Target<'_>) -> Result<Filter, ProfileError> {
    let default = scmp_action(profile.default_action);
    let mut ctx = ScmpFilterContext::new(default).map_err(compile_err("create the filter"))?;
    // A binary tree of syscall numbers instead of a list: a step's every
    // system call walks the filter, so its depth is a per-call cost.
    ctx.set_ctl_optimize(2)
        .map_err(compile_err("ask for the binary-tree layout"))?;
    let native = ScmpArch::native();
    let mut arches = vec![native];
    for arch in extra_arches(profile, native) {
        if !arches.contains(&arch) {
            arches.push(arch);
        }
        let present = ctx
            .is_arch_present(arch)
            .map_err(compile_err(format!("look up architecture {arch:?}")))?;
        if !present {
            ctx.add_arch(arch)
                .map_err(compile_err(format!("add architecture {arch:?}")))?;
        }
    }
    let rules = profile.rules_for(target);
    for rule in &rules {
        add_rule(&mut ctx, rule, profile.default_action)?;
    }
    let mut program = match profile.default_action {
        Action::Allow | Action::Log => Vec::new(),
        _ => enosys_prefix(&rules, &arches),
    };
    program.extend(export(&ctx)?);
    Ok(Filter {
        program,
        flags: profile.flags,
    })
}

/// The architectures the filter covers besides the native one: Docker's
/// `archMap` entry for the native architecture, or the `architectures` list.
/// Architectures this libseccomp does not know are left out.
fn extra_arches(profile: &Profile, native: ScmpArch) -> Vec<ScmpArch> {
    let arches: Vec<Arch> = match &profile.arches {
        Arches::Map(map) => map
            .iter()
            .find(|(main, _)| scmp_arch(*main) == Some(native))
            .map(|(main, subs)| std::iter::once(*main).chain(subs.iter().copied()).collect())
            .unwrap_or_default(),
        Arches::List(list) => list.clone(),
    };
    arches.into_iter().filter_map(scmp_arch).collect()
}

/// Adds one rule for each of its names, as runc does: names libseccomp does
/// not know are skipped, a rule whose action is the default one is
/// redundant, and several conditions on the same argument are alternatives
/// (one rule each) where conditions on different arguments all must hold.
fn add_rule(ctx: &mut ScmpFilterContext, rule: &Rule, default: Action) -> Result<(), ProfileError> {
    if rule.action == default {
        return Ok(());
    }
    let action = scmp_action(rule.action);
    let conditions: Vec<ScmpArgCompare> = rule
        .args
        .iter()
        .map(|a| {
            let op = match a.op {
                CompareOp::NotEqual => ScmpCompareOp::NotEqual,
                CompareOp::Less => ScmpCompareOp::Less,
                CompareOp::LessOrEqual => ScmpCompareOp::LessOrEqual,
                CompareOp::Equal => ScmpCompareOp::Equal,
                CompareOp::GreaterOrEqual => ScmpCompareOp::GreaterEqual,
                CompareOp::Greater => ScmpCompareOp::Greater,
                CompareOp::MaskedEqual => ScmpCompareOp::MaskedEqual(a.value),
            };
            let datum = if a.op == CompareOp::MaskedEqual {
                a.value_two
            } else {
                a.value
            };
            ScmpArgCompare::new(a.index, op, datum)
        })
        .collect();
    let alternatives = rule
        .args
        .iter()
        .enumerate()
        .any(|(i, a)| rule.args[..i].iter().any(|b| b.index == a.index));
    for name in &rule.names {
        let Ok(syscall) = ScmpSyscall::from_name(name) else {
            continue;
        };
        let what = || format!("rule for {name} ({})", rule.action);
        if conditions.is_empty() {
            ctx.add_rule(action, syscall).map_err(compile_err(what()))?;
        } else if alternatives {
            for condition in &conditions {
                ctx.add_rule_conditional(action, syscall, std::slice::from_ref(condition))
                    .map_err(compile_err(what()))?;
            }
        } else {
            ctx.add_rule_conditional(action, syscall, &conditions)
                .map_err(compile_err(what()))?;
        }
    }
    Ok(())
}

/// `AUDIT_ARCH_*` of the architectures the ENOSYS prefix knows; x32 calls
/// arrive as x86_64 ones with bit 30 set in their number.
const AUDIT_ARCHES: &[(ScmpArch, u32)] = &[
    (ScmpArch::X8664, 0xc000_003e),
    (ScmpArch::X86, 0x4000_0003),
    (ScmpArch::Aarch64, 0xc000_00b7),
    (ScmpArch::Arm, 0x4000_0028),
];
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// A program that answers ENOSYS, before the profile is consulted, to every
/// system call newer than all those the profile names (per architecture),
/// as runc does: a call the profile cannot know of is one the kernel might
/// not have, and libc falls back from ENOSYS where EPERM is an error
/// (glibc's fchmodat2, util-linux's statmount, ...). Everything else jumps to
/// the start of libseccomp's program.
fn enosys_prefix(rules: &[&Rule], arches: &[ScmpArch]) -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGT: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
    const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const NR: u32 = 0; // offsetof(struct seccomp_data, nr)
    const ARCH: u32 = 4; // offsetof(struct seccomp_data, arch)
    let newest = |arch: ScmpArch| -> Option<u32> {
        rules
            .iter()
            .flat_map(|rule| rule.names.iter())
            .filter_map(|name| ScmpSyscall::from_name_by_arch(name, arch).ok())
            .map(i32::from)
            .filter(|nr| *nr >= 0)
            .map(|nr| nr as u32)
            .max()
    };
    // One block per architecture: (audit arch, newest native call, newest x32 call).
    let blocks: Vec<(u32, u32, Option<u32>)> = AUDIT_ARCHES
        .iter()
        .filter(|(arch, _)| arches.contains(arch))
        .filter_map(|(arch, audit)| {
            let x32 = (*arch == ScmpArch::X8664 && arches.contains(&ScmpArch::X32))
                .then(|| newest(ScmpArch::X32))
                .flatten();
            Some((*audit, newest(*arch)?, x32))
        })
        .collect();
    if blocks.is_empty() {
        return Vec::new();
    }
    // Lay the program out first (the jumps are relative), with the ENOSYS
    // return and the start of libseccomp's program at the end.
    let block_len = |b: &(u32, u32, Option<u32>)| if b.0 == 0xc000_003e { 5 } else { 3 };
    let total: usize = 1 + blocks.iter().map(block_len).sum::<usize>() + 1;
    let enosys = total; // index of the ENOSYS return
    let end = total + 1; // first instruction of libseccomp's program
    let op = |code: u16, jt: usize, jf: usize, k: u32| libc::sock_filter {
        code,
        jt: jt as u8,
        jf: jf as u8,
        k,
    };
    let mut program = vec![op(LD_W_ABS, 0, 0, ARCH)];
    for block in &blocks {
        let (audit, newest_native, newest_x32) = *block;
        let start = program.len();
        let next = start + block_len(block);
        program.push(op(JEQ, 0, next - start - 1, audit));
        program.push(op(LD_W_ABS, 0, 0, NR));
        if audit == 0xc000_003e {
            let at = program.len();
            // nr >= X32_SYSCALL_BIT: an x32 call, judged by the next two.
            program.push(op(JGE, 1, 0, X32_SYSCALL_BIT));
            let at_native = at + 1;
            program.push(op(
                JGT,
                enosys - at_native - 1,
                end - at_native - 1,
                newest_native,
            ));
            let at_x32 = at + 2;
            match newest_x32 {
                Some(newest) => {
                    program.push(op(JGT, enosys - at_x32 - 1, end - at_x32 - 1, newest))
                }
                None => program.push(op(JA, 0, 0, (end - at_x32 - 1) as u32)),
            }
        } else {
            let at = program.len();
            program.push(op(JGT, enosys - at - 1, end - at - 1, newest_native));
        }
    }
    let at = program.len();
    program.push(op(JA, 0, 0, (end - at - 1) as u32));
    program.push(op(RET, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    program
}

/// libseccomp writes the program to a descriptor: a memfd, read back whole.
fn export(ctx: &ScmpFilterContext) -> Result<Vec<libc::sock_filter>, ProfileError> {
    let io = |what: &str, e: std::io::Error| {
        ProfileError::Invalid(format!("cannot {what} the compiled seccomp filter: {e}"))
    };
    let fd = nix::sys::memfd::memfd_create(c"kiln-seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(|e| io("hold", e.into()))?;
    let mut file = File::from(fd);
    ctx.export_bpf(&file)
        .map_err(compile_err("export the program"))?;
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).map_err(|e| io("read", e))?;
    file.read_to_end(&mut bytes).map_err(|e| io("read", e))?;
    if bytes.is_empty() || bytes.len() % 8 != 0 {
        return Err(ProfileError::Invalid(format!(
            "the compiled seccomp filter has {} bytes, not a whole number of instructions",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|i| libc::sock_filter {
            code: u16::from_ne_bytes([i[0], i[1]]),
            jt: i[2],
            jf: i[3],
            k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
        })
        .collect())
}

fn scmp_action(action: Action) -> ScmpAction {
    match action {
        Action::Allow => ScmpAction::Allow,
        Action::Errno(errno) => ScmpAction::Errno(errno.into()),
        Action::KillThread => ScmpAction::KillThread,
        Action::KillProcess => ScmpAction::KillProcess,
        Action::Trap => ScmpAction::Trap,
        Action::Trace(value) => ScmpAction::Trace(value),
        Action::Log => ScmpAction::Log,
    }
}

fn scmp_arch(arch: Arch) -> Option<ScmpArch> {
    Some(match arch {
        Arch::X86 => ScmpArch::X86,
        Arch::X8664 => ScmpArch::X8664,
        Arch::X32 => ScmpArch::X32,
        Arch::Arm => ScmpArch::Arm,
        Arch::Aarch64 => ScmpArch::Aarch64,
        Arch::Mips => ScmpArch::Mips,
        Arch::Mips64 => ScmpArch::Mips64,
        Arch::Mips64N32 => ScmpArch::Mips64N32,
        Arch::Mipsel => ScmpArch::Mipsel,
        Arch::Mipsel64 => ScmpArch::Mipsel64,
        Arch::Mipsel64N32 => ScmpArch::Mipsel64N32,
        Arch::Ppc => ScmpArch::Ppc,
        Arch::Ppc64 => ScmpArch::Ppc64,
        Arch::Ppc64Le => ScmpArch::Ppc64Le,
        Arch::S390 => ScmpArch::S390,
        Arch::S390X => ScmpArch::S390X,
        Arch::Parisc => ScmpArch::Parisc,
        Arch::Parisc64 => ScmpArch::Parisc64,
        Arch::Riscv64 => ScmpArch::Riscv64,
        Arch::Loongarch64 => ScmpArch::Loongarch64,
        Arch::M68k => ScmpArch::M68k,
        Arch::Sh => ScmpArch::Sh,
        Arch::Sheb => ScmpArch::Sheb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_CAPS: u64 = 0xa80425fb;

    #[test]
    fn default_profile_compiles_for_this_host() {
        let filter = filter_for(&Seccomp::Default, DEFAULT_CAPS)
            .unwrap()
            .unwrap();
        assert!(filter.program.len() > 100, "{filter:?}");
        // The second step of the build gets the same program without compiling.
        let again = filter_for(&Seccomp::Default, DEFAULT_CAPS)
            .unwrap()
            .unwrap();
        assert!(Arc::ptr_eq(&filter, &again));
        assert!(filter_for(&Seccomp::Unconfined, DEFAULT_CAPS)
            .unwrap()
            .is_none());
    }

    /// Runs a classic BPF program of the instructions the prefix uses over
    /// (nr, arch); returns the return value, or `None` when it runs past its
    /// end (into libseccomp's program).
    fn run_prefix(program: &[libc::sock_filter], nr: u32, arch: u32) -> Option<u32> {
        let mut acc = 0u32;
        let mut pc = 0usize;
        while let Some(i) = program.get(pc) {
            let code = u32::from(i.code);
            pc += 1;
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    acc = if i.k == 0 { nr } else { arch }
                }
                c if c == libc::BPF_RET | libc::BPF_K => return Some(i.k),
                c if c == libc::BPF_JMP | libc::BPF_JA => pc += i.k as usize,
                c => {
                    let taken = match c & 0xf0 {
                        0x10 => acc == i.k,
                        0x20 => acc > i.k,
                        0x30 => acc >= i.k,
                        other => panic!("unexpected jump {other:#x}"),
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
            }
        }
        assert_eq!(pc, program.len(), "jumped past the end");
        None
    }

    #[test]
    fn newer_calls_get_enosys_per_architecture() {
        let rules = rules_for_amd64();
        let rules: Vec<&Rule> = rules.iter().collect();
        let arches = [ScmpArch::X8664, ScmpArch::X86, ScmpArch::X32];
        let prefix = enosys_prefix(&rules, &arches);
        let enosys = Some(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        let (x86_64, i386, x32) = (0xc000_003e, 0x4000_0003, X32_SYSCALL_BIT);
        assert_eq!(run_prefix(&prefix, 0, x86_64), None);
        assert_eq!(run_prefix(&prefix, 250, x86_64), None);
        assert_eq!(run_prefix(&prefix, 1000, x86_64), enosys);
        assert_eq!(run_prefix(&prefix, x32, x86_64), None);
        assert_eq!(run_prefix(&prefix, x32 + 1000, x86_64), enosys);
        assert_eq!(run_prefix(&prefix, 3, i386), None);
        assert_eq!(run_prefix(&prefix, 1000, i386), enosys);
        // Other architectures are libseccomp's to judge.
        assert_eq!(run_prefix(&prefix, 1000, 0xc000_00b7), None);
        // Without x32 in the filter its calls are libseccomp's too.
        let prefix = enosys_prefix(&rules, &arches[..2]);
        assert_eq!(run_prefix(&prefix, x32 + 1000, x86_64), None);
        assert_eq!(run_prefix(&prefix, 1000, x86_64), enosys);
    }

    fn rules_for_amd64() -> Vec<Rule> {
        let target = Target {
            caps: DEFAULT_CAPS,
            arch: "amd64",
            kernel: (6, 1),
        };
        Profile::docker_default()
            .rules_for(&target)
            .into_iter()
            .cloned()
            .collect()
    }

    #[test]
    fn x86_64_covers_x86_and_x32() {
        let arches = extra_arches(Profile::docker_default(), ScmpArch::X8664);
        assert_eq!(arches, vec![ScmpArch::X8664, ScmpArch::X86, ScmpArch::X32]);
        let arches = extra_arches(Profile::docker_default(), ScmpArch::Aarch64);
        assert_eq!(arches, vec![ScmpArch::Aarch64, ScmpArch::Arm]);
    }
}
