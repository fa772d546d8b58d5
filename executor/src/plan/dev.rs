//! The sandbox's /dev.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::{cstring, path_c, Ops, PlanBuilder};
use crate::child::Op;
use crate::error::Result;
use crate::userns::IdMaps;

impl PlanBuilder<'_> {
    /// Docker's /dev (see [`docker_dev`]); returns where it is mounted.
    pub(super) fn dev(&mut self) -> Result<PathBuf> {
        let (_, dev) = self.mountpoint("/dev", false)?;
        docker_dev(&mut self.ops, &dev, self.spec.shm_size, self.userns)?;
        Ok(dev)
    }
}

/// The device nodes runc creates for a container without a terminal:
/// (name, major, minor), each a 0666 character device owned by root.
pub(super) const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Docker's /dev at `dev`: a tmpfs with [`DEVICES`], devpts, shm, mqueue
/// and the standard links. In a user namespace, which cannot make device
/// nodes, the host's devices are bound instead (as rootless runc does).
pub(super) fn docker_dev(
    b: &mut Ops,
    dev: &Path,
    shm_size: Option<u64>,
    userns: Option<&IdMaps>,
) -> Result<()> {
    b.mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
        "mount /dev".into(),
    )?;
    device_nodes(b, dev, userns)?;
    dev_filesystems(b, dev, shm_size, userns)?;
    dev_links(b, dev)
}

/// [`DEVICES`] in `dev`: made, or bound from the host's in a user namespace.
fn device_nodes(b: &mut Ops, dev: &Path, userns: Option<&IdMaps>) -> Result<()> {
    for (name, major, minor) in DEVICES {
        if userns.is_some() {
            b.push(
                Op::Touch(path_c(&dev.join(name))?),
                format!("create /dev/{name}"),
            );
            b.bind(
                &Path::new("/dev").join(name),
                &dev.join(name),
                false,
                &format!("/dev/{name}"),
            )?;
            continue;
        }
        b.push(
            Op::Mknod(
                path_c(&dev.join(name))?,
                0o666,
                nix::sys::stat::makedev(*major, *minor),
            ),
            format!("create /dev/{name}"),
        );
    }
    Ok(())
}

/// devpts, shm and mqueue in `dev`.
fn dev_filesystems(
    b: &mut Ops,
    dev: &Path,
    shm_size: Option<u64>,
    userns: Option<&IdMaps>,
) -> Result<()> {
    let shm_options = format!("mode=1777,size={}", shm_size.unwrap_or(64 << 20));
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // The tty group owns ptys where the namespace maps it.
    let devpts_options = match userns {
        Some(maps) if !maps.maps_gid(5) => "newinstance,ptmxmode=0666,mode=0620",
        _ => "newinstance,ptmxmode=0666,mode=0620,gid=5",
    };
    // (name, source, type, flags, options)
    let filesystems = [
        (
            "pts",
            "devpts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some(devpts_options),
        ),
        (
            "shm",
            "shm",
            "tmpfs",
            nosuid_nodev_noexec,
            Some(shm_options.as_str()),
        ),
        // The message queues of the sandbox's own ipc namespace.
        ("mqueue", "mqueue", "mqueue", nosuid_nodev_noexec, None),
    ];
    for (name, source, fstype, flags, data) in filesystems {
        let dir = dev.join(name);
        b.push(
            Op::Mkdir(path_c(&dir)?, 0o755),
            format!("create /dev/{name}"),
        );
        b.mount(
            Some(source),
            &dir,
            Some(fstype),
            flags,
            data,
            format!("mount /dev/{name}"),
        )?;
    }
    Ok(())
}

/// The standard links of /dev (ptmx, fd, stdin, stdout, stderr, core).
fn dev_links(b: &mut Ops, dev: &Path) -> Result<()> {
    let mut links = vec![
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    // As runc: only where the kernel has /proc/kcore (it is masked anyway).
    if Path::new("/proc/kcore").exists() {
        links.push(("core", "/proc/kcore"));
    }
    for (name, target) in links {
        b.push(
            Op::Symlink {
                target: cstring(target)?,
                path: path_c(&dev.join(name))?,
            },
            format!("create /dev/{name}"),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::root_only_maps;

    #[test]
    fn in_a_user_namespace_dev_binds_the_host_devices() {
        let maps = root_only_maps();
        let mut b = Ops::new(false);
        docker_dev(&mut b, Path::new("/m/dev"), None, Some(&maps)).unwrap();
        assert!(!b.ops.iter().any(|op| matches!(op, Op::Mknod(..))));
        for (name, _, _) in DEVICES {
            let bind = b
                .descriptions
                .iter()
                .position(|d| d == &format!("bind /dev/{name} to /dev/{name}"))
                .unwrap_or_else(|| panic!("no bind of /dev/{name}: {:#?}", b.descriptions));
            assert!(
                matches!(&b.ops[bind - 1], Op::Touch(path) if path.to_str() == Ok(&format!("/m/dev/{name}")))
            );
        }
        // gid 5 (tty) is not mapped: devpts must not name it.
        let devpts = b
            .descriptions
            .iter()
            .position(|d| d == "mount /dev/pts")
            .unwrap();
        match &b.ops[devpts] {
            Op::Mount {
                data: Some(data), ..
            } => {
                assert!(!data.to_str().unwrap().contains("gid=5"), "{data:?}")
            }
            _ => panic!("devpts is not a mount"),
        }
        let mut root = Ops::new(false);
        docker_dev(&mut root, Path::new("/m/dev"), None, None).unwrap();
        assert_eq!(
            root.ops
                .iter()
                .filter(|op| matches!(op, Op::Mknod(..)))
                .count(),
            DEVICES.len()
        );
    }
}
