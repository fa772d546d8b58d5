//! The sandbox's [`Plan`], built in the parent as plain data: every mount,
//! device node, file and identity the sandbox's init sets up, in order, as
//! `CString`s and numbers (child.rs interprets it between `clone` and
//! `execve`, where nothing may allocate). [`PlanBuilder`] has one method per
//! concern; each lives in the submodule named after it.

mod dev;
mod kernel;
mod mounts;
mod netfiles;
mod process;
mod root;

use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;

use crate::child::{Op, Plan};
use crate::error::{Error, Result};
use crate::spec::RunSpec;
use crate::userns::IdMaps;
use crate::view::RootfsView;

pub(crate) use process::prepare_seccomp;
pub(crate) use root::{prepare_scratch, RootMode, Scratch, OVERLAY_STEP};

fn cstring(bytes: impl Into<Vec<u8>>) -> Result<CString> {
    CString::new(bytes)
        .map_err(|_| Error::InvalidSpec("a path, argument or variable contains a NUL byte".into()))
}

fn path_c(path: &Path) -> Result<CString> {
    cstring(path.as_os_str().as_bytes())
}

/// The plan's operations, with what each one is (for errors).
struct Ops {
    ops: Vec<Op>,
    descriptions: Vec<String>,
    /// In-image paths of the mountpoints created as stubs, deepest last, and
    /// whether each is a file.
    stubs: Vec<(String, bool)>,
    /// Stubs go into an extra lower dir instead of being created by the sandbox.
    stubs_in_lower: bool,
}

impl Ops {
    fn new(stubs_in_lower: bool) -> Self {
        Ops {
            ops: Vec::new(),
            descriptions: Vec::new(),
            stubs: Vec::new(),
            stubs_in_lower,
        }
    }

    fn push(&mut self, op: Op, description: String) {
        self.ops.push(op);
        self.descriptions.push(description);
    }

    /// Creates whatever is missing of `target` (an in-image path) as directories,
    /// or with a final empty file when `file`; returns the resolved host path
    /// under `merged`.
    fn mountpoint(
        &mut self,
        view: &RootfsView,
        merged: &Path,
        target: &str,
        file: bool,
    ) -> Result<(String, PathBuf)> {
        let (resolved, missing) = view
            .resolve_for_create(target)
            .map_err(|e| Error::InvalidSpec(format!("mount target {target}: {e}")))?;
        let parts: Vec<&str> = resolved.split('/').filter(|p| !p.is_empty()).collect();
        let first_missing = parts.len().saturating_sub(missing);
        let mut in_image = String::new();
        for (i, part) in parts.iter().enumerate() {
            in_image.push('/');
            in_image.push_str(part);
            if i < first_missing {
                continue;
            }
            let is_file = file && i + 1 == parts.len();
            self.stubs.push((in_image.clone(), is_file));
            if self.stubs_in_lower {
                continue;
            }
            let host = merged.join(&in_image[1..]);
            if is_file {
                self.push(
                    Op::Touch(path_c(&host)?),
                    format!("create mountpoint {in_image}"),
                );
            } else {
                self.push(
                    Op::Mkdir(path_c(&host)?, 0o755),
                    format!("create mountpoint {in_image}"),
                );
            }
        }
        let host = if resolved == "/" {
            merged.to_path_buf()
        } else {
            merged.join(&resolved[1..])
        };
        Ok((resolved, host))
    }

    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
        what: String,
    ) -> Result<()> {
        self.push(
            Op::Mount {
                source: source.map(cstring).transpose()?,
                target: path_c(target)?,
                fstype: fstype.map(cstring).transpose()?,
                flags,
                data: data.map(cstring).transpose()?,
            },
            what,
        );
        Ok(())
    }

    fn bind(&mut self, source: &Path, target: &Path, readonly: bool, what: &str) -> Result<()> {
        self.push(
            Op::Mount {
                source: Some(path_c(source)?),
                target: path_c(target)?,
                fstype: None,
                flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                data: None,
            },
            format!("bind {} to {what}", source.display()),
        );
        if readonly {
            self.mount(
                None,
                target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None,
                format!("make {what} read-only"),
            )?;
        }
        Ok(())
    }
}

/// A plan ready to run, with what the parent needs to interpret its reports.
pub(crate) struct Prepared {
    pub(crate) plan: Plan,
    /// What each of `plan.ops` does, for errors (same indices).
    pub(crate) descriptions: Vec<String>,
    /// Mountpoints the sandbox creates in the upper dir, to remove afterwards.
    pub(crate) stubs: Vec<String>,
    /// The namespaces `clone` creates.
    pub(crate) flags: CloneFlags,
}

/// Builds the [`Plan`] of one attempt at running `spec`.
pub(crate) struct PlanBuilder<'a> {
    spec: &'a RunSpec,
    scratch: &'a Scratch,
    mode: RootMode,
    view: &'a RootfsView,
    /// The user namespace kiln is in, if any (rootless kiln).
    userns: Option<&'a IdMaps>,
    /// Where the root filesystem is assembled.
    merged: &'a Path,
    /// Where mountpoint stubs and shared resolv.conf/hosts files live: beside
    /// the snapshots when the lowers come from one snapshot root.
    shared_root: Option<PathBuf>,
    /// The ops that follow the root filesystem's mount.
    ops: Ops,
}

impl<'a> PlanBuilder<'a> {
    pub(crate) fn new(
        spec: &'a RunSpec,
        scratch: &'a Scratch,
        mode: RootMode,
        view: &'a RootfsView,
        userns: Option<&'a IdMaps>,
    ) -> Self {
        let shared_root = match mode {
            RootMode::Overlay => root::common_parent(&spec.lowers).map(|p| p.join(".mountpoints")),
            RootMode::Copy => None,
        };
        PlanBuilder {
            spec,
            scratch,
            mode,
            view,
            userns,
            merged: scratch.rootfs(mode),
            ops: Ops::new(shared_root.is_some()),
            shared_root,
        }
    }

    /// The whole plan, concern by concern in the order the sandbox applies
    /// them (the root filesystem's mount goes first, once every mountpoint
    /// is known). `fds` are stdin, stdout, stderr, report and go as numbered
    /// in the parent.
    pub(crate) fn build(mut self, fds: [RawFd; 5], wait_for_go: bool) -> Result<Prepared> {
        let proc_dir = self.proc()?;
        let dev_dir = self.dev()?;
        let sys_dir = self.sys()?;
        if !self.spec.privileged {
            kernel::guard_kernel_paths(&mut self.ops, &proc_dir, &sys_dir, &dev_dir.join("null"))?;
        }
        self.network_files()?;
        self.mounts()?;
        self.uts_and_loopback()?;
        self.pivot_root()?;
        self.working_directory()?;
        self.read_only_root()?;
        self.root()?;
        self.process(fds, wait_for_go)
    }

    /// Creates what is missing of `target` (see [`Ops::mountpoint`]).
    fn mountpoint(&mut self, target: &str, file: bool) -> Result<(String, PathBuf)> {
        self.ops.mountpoint(self.view, self.merged, target, file)
    }
}

#[cfg(test)]
pub(crate) mod tests;
