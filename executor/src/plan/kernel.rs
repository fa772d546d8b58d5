//! The sandbox's /proc and /sys, and the kernel paths guarded in them.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::{path_c, Ops, PlanBuilder};
use crate::child::Op;
use crate::error::{Error, Result};
use crate::spec::Network;

/// Flags of every kernel filesystem the sandbox mounts.
const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

impl PlanBuilder<'_> {
    /// A fresh /proc; returns where it is mounted.
    pub(super) fn proc(&mut self) -> Result<PathBuf> {
        let (_, proc_dir) = self.mountpoint("/proc", false)?;
        self.ops.mount(
            Some("proc"),
            &proc_dir,
            Some("proc"),
            NOSUID_NODEV_NOEXEC,
            None,
            "mount /proc".into(),
        )?;
        Ok(proc_dir)
    }

    /// /sys, read-only unless the step is privileged; returns where it is
    /// mounted.
    pub(super) fn sys(&mut self) -> Result<PathBuf> {
        let (_, sys_dir) = self.mountpoint("/sys", false)?;
        // A privileged (`--security=insecure`) step gets /sys writable and every
        // kernel path, as BuildKit's insecure mode gives them.
        let (sys_flags, sys_what) = match self.spec.privileged {
            true => (NOSUID_NODEV_NOEXEC, "mount /sys"),
            false => (
                NOSUID_NODEV_NOEXEC | MsFlags::MS_RDONLY,
                "mount /sys read-only",
            ),
        };
        if self.userns.is_some() && self.spec.network == Network::Host {
            // sysfs can only be mounted in a user namespace that owns the
            // network namespace: on the host's network, the host's /sys is bound.
            self.ops
                .bind(Path::new("/sys"), &sys_dir, !self.spec.privileged, "/sys")?;
        } else {
            self.ops.mount(
                Some("sysfs"),
                &sys_dir,
                Some("sysfs"),
                sys_flags,
                None,
                sys_what.into(),
            )?;
        }
        Ok(sys_dir)
    }
}

/// How one of [`KERNEL_PATHS`] is guarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Guard {
    /// Hidden: a file reads as /dev/null, a directory as an empty read-only tmpfs.
    Mask,
    ReadOnly,
}

/// Docker's read-only and masked paths (runc applies them in this order),
/// each guarded where the sandbox's /proc or /sys has it.
pub(super) const KERNEL_PATHS: &[(&str, Guard)] = &[
    ("/proc/bus", Guard::ReadOnly),
    ("/proc/fs", Guard::ReadOnly),
    ("/proc/irq", Guard::ReadOnly),
    ("/proc/sys", Guard::ReadOnly),
    ("/proc/sysrq-trigger", Guard::ReadOnly),
    ("/proc/acpi", Guard::Mask),
    ("/proc/asound", Guard::Mask),
    ("/proc/interrupts", Guard::Mask),
    ("/proc/kcore", Guard::Mask),
    ("/proc/keys", Guard::Mask),
    ("/proc/latency_stats", Guard::Mask),
    ("/proc/timer_list", Guard::Mask),
    ("/proc/timer_stats", Guard::Mask),
    ("/proc/sched_debug", Guard::Mask),
    ("/proc/scsi", Guard::Mask),
    ("/sys/firmware", Guard::Mask),
    ("/sys/devices/virtual/powercap", Guard::Mask),
];

/// Guards [`KERNEL_PATHS`] in the sandbox's own /proc and /sys mounts (at
/// `proc_dir` and `sys_dir`); masked files become binds of `null`, the
/// sandbox's /dev/null. Whether a path exists is decided in the sandbox.
pub(super) fn guard_kernel_paths(
    b: &mut Ops,
    proc_dir: &Path,
    sys_dir: &Path,
    null: &Path,
) -> Result<()> {
    for (path, guard) in KERNEL_PATHS {
        let host = [("/proc/", proc_dir), ("/sys/", sys_dir)]
            .into_iter()
            .find_map(|(prefix, dir)| path.strip_prefix(prefix).map(|rest| dir.join(rest)))
            .ok_or_else(|| Error::InvalidSpec(format!("{path} is not in /proc or /sys")))?;
        match guard {
            Guard::Mask => b.push(
                Op::Mask {
                    path: path_c(&host)?,
                    null: path_c(null)?,
                },
                format!("mask {path}"),
            ),
            Guard::ReadOnly => b.push(
                Op::ReadOnly {
                    path: path_c(&host)?,
                    // Both filesystems are mounted nosuid, nodev, noexec.
                    flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                },
                format!("make {path} read-only"),
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_paths_are_guarded_in_the_sandbox_mounts() {
        let mut b = Ops::new(false);
        guard_kernel_paths(
            &mut b,
            Path::new("/m/proc"),
            Path::new("/m/sys"),
            Path::new("/m/dev/null"),
        )
        .unwrap();
        assert_eq!(b.ops.len(), KERNEL_PATHS.len());
        for ((path, guard), op) in KERNEL_PATHS.iter().zip(&b.ops) {
            let expected = format!("/m{path}");
            match (guard, op) {
                (Guard::Mask, Op::Mask { path, null }) => {
                    assert_eq!(path.to_str(), Ok(expected.as_str()));
                    assert_eq!(null.to_str(), Ok("/m/dev/null"));
                }
                (Guard::ReadOnly, Op::ReadOnly { path, flags }) => {
                    assert_eq!(path.to_str(), Ok(expected.as_str()));
                    assert_eq!(
                        *flags,
                        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
                    );
                }
                _ => panic!("{path}: wrong kind of op"),
            }
        }
    }
}
