//! The step's root filesystem: the scratch dir's layout and the overlay
//! mount's options.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::{cstring, path_c, Ops, PlanBuilder};
use crate::child::Op;
use crate::error::{io_err, Error, Result};

/// Root filesystem strategy for one attempt.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum RootMode {
    Overlay,
    /// Overlayfs is unavailable: the merged view is copied into the scratch dir.
    Copy,
}

/// The directories of one run inside the scratch dir.
pub(crate) struct Scratch {
    /// The scratch dir itself, which is also where the overlay is mounted (in
    /// the sandbox's mount namespace only): one directory less to create and
    /// remove per step.
    pub(crate) root: PathBuf,
    /// overlayfs' upper dir: the step's changes.
    pub(crate) upper: PathBuf,
    /// overlayfs' work dir.
    pub(crate) work: PathBuf,
    /// The copied root filesystem of the copying fallback.
    pub(crate) copy_root: PathBuf,
    /// Per-step resolv.conf and hosts where there is no snapshot root.
    pub(crate) etc: PathBuf,
}

impl Scratch {
    /// Where the step's root filesystem is assembled.
    pub(crate) fn rootfs(&self, mode: RootMode) -> &Path {
        match mode {
            RootMode::Overlay => &self.root,
            RootMode::Copy => &self.copy_root,
        }
    }
}

/// Creates the upper and work dirs of `scratch`; refuses paths overlayfs
/// options cannot hold.
pub(crate) fn prepare_scratch(scratch: &Path) -> Result<Scratch> {
    let scratch = &std::path::absolute(scratch).map_err(io_err("resolve", scratch))?;
    let text = scratch.to_string_lossy();
    if text.contains([':', ',', '\\']) {
        return Err(Error::InvalidSpec(format!(
            "scratch dir {text:?} must not contain ':', ',' or '\\' (overlayfs option syntax)"
        )));
    }
    let dirs = Scratch {
        root: scratch.to_path_buf(),
        upper: scratch.join("upper"),
        work: scratch.join("work"),
        copy_root: scratch.join("rootfs"),
        etc: scratch.join("etc"),
    };
    for dir in [&dirs.upper, &dirs.work] {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    fs::set_permissions(
        &dirs.upper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(io_err("chmod", &dirs.upper))?;
    Ok(dirs)
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    version >= (major, minor)
}

/// The directory all `lowers` are in (the snapshot root), if there is one.
pub(crate) fn common_parent(lowers: &[PathBuf]) -> Option<PathBuf> {
    lowers
        .first()
        .and_then(|l| l.parent())
        .filter(|p| lowers.iter().all(|l| l.parent() == Some(p)))
        .map(Path::to_path_buf)
}

/// The description of the overlay mount: its failure means overlayfs is
/// unavailable, and the step is retried on a copy.
pub(crate) const OVERLAY_STEP: &str = "mount the overlay root filesystem";

/// The overlay's options and the directory its lower dirs are relative to.
fn overlay_options(
    lowers: &[PathBuf],
    parent: Option<PathBuf>,
    scratch: &Scratch,
) -> Result<(PathBuf, String)> {
    // Lower dirs are given relative to the snapshot root (the sandbox's init
    // enters it first) so that deep stacks fit in the one page the kernel
    // accepts for mount options.
    let mut lowerdir = String::new();
    for lower in lowers.iter().rev() {
        let text = match &parent {
            Some(parent) => lower
                .strip_prefix(parent)
                .unwrap_or(lower)
                .to_string_lossy()
                .into_owned(),
            None => lower.to_string_lossy().into_owned(),
        };
        if text.contains([':', ',', '\\']) {
            return Err(Error::InvalidSpec(format!(
                "snapshot path {} contains ':', ',' or '\\'",
                lower.display()
            )));
        }
        if !lowerdir.is_empty() {
            lowerdir.push(':');
        }
        lowerdir.push_str(&text);
    }
    let mut options = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        scratch.upper.display(),
        scratch.work.display()
    );
    // In a user namespace overlayfs keeps its xattrs in `user.overlay.`
    // (snapshots mark opaque directories there too).
    if crate::userns::in_user_namespace() {
        options.push_str(",userxattr");
    }
    // The upper dir is thrown away after the layer is written: unmounting need
    // not sync the whole upper filesystem (overlayfs' `volatile`, Linux 5.10+).
    if kernel_at_least(5, 10) {
        options.push_str(",volatile");
    }
    // Redirects and metadata-only copy-ups would leave changes in the upper dir
    // that are not self-contained files: turn them off where the kernel enables them.
    for feature in ["redirect_dir", "metacopy"] {
        let enabled = fs::read_to_string(format!("/sys/module/overlay/parameters/{feature}"))
            .is_ok_and(|v| v.trim() == "Y" || v.trim() == "on");
        if enabled {
            options.push_str(&format!(",{feature}=off"));
        }
    }
    if options.len() >= 4000 {
        return Err(Error::InvalidSpec(format!(
            "too many layers ({}) for one overlay mount",
            lowers.len()
        )));
    }
    Ok((parent.unwrap_or_else(|| PathBuf::from("/")), options))
}

impl PlanBuilder<'_> {
    /// Enters the assembled root filesystem and makes it the root.
    pub(super) fn pivot_root(&mut self) -> Result<()> {
        self.ops.push(
            Op::Chdir(path_c(self.merged)?),
            "enter the root filesystem".into(),
        );
        self.ops.push(Op::PivotRootHere, "pivot_root".into());
        Ok(())
    }

    /// Creates what is missing of the working directory (after `pivot_root`,
    /// so as in-image paths) and enters it.
    pub(super) fn working_directory(&mut self) -> Result<()> {
        let cwd = if self.spec.cwd.is_empty() {
            "/"
        } else {
            self.spec.cwd.as_str()
        };
        let (resolved_cwd, missing) = self
            .view
            .resolve_for_create(cwd)
            .map_err(|e| Error::InvalidSpec(format!("working directory {cwd}: {e}")))?;
        if missing > 0 {
            let parts: Vec<&str> = resolved_cwd.split('/').filter(|p| !p.is_empty()).collect();
            let mut path = String::new();
            for (i, part) in parts.iter().enumerate() {
                path.push('/');
                path.push_str(part);
                if i >= parts.len() - missing {
                    self.ops.push(
                        Op::Mkdir(cstring(path.as_str())?, 0o755),
                        format!("create working directory {path}"),
                    );
                }
            }
        }
        self.ops.push(
            Op::Chdir(cstring(resolved_cwd.as_str())?),
            format!("enter working directory {resolved_cwd}"),
        );
        Ok(())
    }

    /// `--read-only` (`kiln run`): the root filesystem is remounted read-only.
    pub(super) fn read_only_root(&mut self) -> Result<()> {
        if self.spec.read_only_root {
            self.ops.mount(
                None,
                Path::new("/"),
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None,
                "make the root filesystem read-only".into(),
            )?;
        }
        Ok(())
    }

    /// Puts the root filesystem's mount first: every mount private, then the
    /// overlay (its lower dirs are known now that every mountpoint is: stubs
    /// may add one) or, on a copy, a bind of it.
    pub(super) fn root(&mut self) -> Result<()> {
        let mut root = Ops::new(false);
        root.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None,
            "make all mounts private".into(),
        )?;
        match self.mode {
            RootMode::Overlay => {
                let mut lowers = self.spec.lowers.clone();
                if let Some(shared) = &self.shared_root {
                    if !self.ops.stubs.is_empty() {
                        lowers.push(crate::mountpoints::stub_lower(
                            shared,
                            self.view,
                            &self.ops.stubs,
                        )?);
                    }
                }
                let (parent, options) =
                    overlay_options(&lowers, common_parent(&self.spec.lowers), self.scratch)?;
                root.push(
                    Op::Chdir(path_c(&parent)?),
                    format!("enter {}", parent.display()),
                );
                root.mount(
                    Some("overlay"),
                    self.merged,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(&options),
                    OVERLAY_STEP.into(),
                )?;
            }
            RootMode::Copy => {
                root.bind(self.merged, self.merged, false, "the root filesystem")?;
            }
        }
        root.ops.append(&mut self.ops.ops);
        root.descriptions.append(&mut self.ops.descriptions);
        self.ops.ops = root.ops;
        self.ops.descriptions = root.descriptions;
        Ok(())
    }
}
