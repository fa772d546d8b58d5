//! The executor's [`RootfsView`] (a stack of snapshots) as a COPY source and
//! as a COPY destination's parent, and exporting a view to a plain directory.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kiln_executor::{copy_resolved, resolve_user, RootfsView, SpecialFile};

use crate::copy::{DestFs, DirMeta};
use crate::error::{io_err, Error, Result};
use crate::pattern::clean_relative;
use crate::source::{walk, SourceEntry, SourceFs};

fn abs(rel: &str) -> String {
    let cleaned = clean_relative(rel);
    if cleaned == "." {
        "/".to_string()
    } else {
        format!("/{cleaned}")
    }
}

/// A stage's or image's filesystem read as a COPY source.
pub(crate) struct ViewSource(pub(crate) RootfsView);

impl SourceFs for ViewSource {
    fn entry(&self, rel: &str, follow: bool) -> Result<Option<SourceEntry>> {
        let rel = clean_relative(rel);
        Ok(self.0.lookup(&abs(&rel), follow)?.map(|e| SourceEntry {
            rel,
            host: e.host_path,
            meta: e.metadata,
        }))
    }

    fn children(&self, rel: &str) -> Result<Vec<String>> {
        Ok(self.0.read_dir(&abs(rel))?.unwrap_or_default())
    }
}

/// The parent image of a COPY, for resolving its destination.
pub(crate) struct ViewDest(pub(crate) RootfsView);

impl DestFs for ViewDest {
    fn resolve(&self, path: &str) -> Result<String> {
        let (resolved, _) = self.0.resolve_for_create(&abs(path))?;
        Ok(if path.ends_with('/') && !resolved.ends_with('/') {
            format!("{resolved}/")
        } else {
            resolved
        })
    }

    fn is_dir(&self, path: &str) -> Result<bool> {
        Ok(self
            .0
            .lookup(&abs(path), true)?
            .is_some_and(|e| e.metadata.is_dir()))
    }

    fn dir_meta(&self, path: &str) -> Result<Option<DirMeta>> {
        Ok(self
            .0
            .lookup(&abs(path), true)?
            .filter(|e| e.metadata.is_dir())
            .map(|e| DirMeta {
                mode: e.metadata.mode() & 0o7777,
                uid: e.metadata.uid(),
                gid: e.metadata.gid(),
            }))
    }

    fn ids(&self, user: &str, group: Option<&str>) -> Result<(u32, u32)> {
        let spec = match group {
            Some(g) => format!("{user}:{g}"),
            None => user.to_string(),
        };
        let resolved = resolve_user(&self.0, &spec).map_err(|source| Error::Chown {
            spec: spec.clone(),
            source,
        })?;
        // Docker: a user without a group gets its uid as gid too.
        let gid = match group {
            Some(_) => resolved.gid,
            None => resolved.uid,
        };
        Ok((resolved.uid, gid))
    }
}

/// Who owns what [`export_tree`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExportOwner {
    /// The source's owners (a stage's or image's files).
    Keep,
    /// root:root for everything, as a build context reaches Docker's
    /// builder: the client resets every context file's uid and gid to 0.
    Root,
}

/// Copies `rel` of a source (a directory's contents, or one file) to `dest`,
/// keeping modes, symlinks, device nodes, FIFOs and mtimes, and owners as `owner` says: for
/// `--output type=local` and for bind mounts of a stage or of the context.
/// Returns what stands for `rel` under `dest` (see [`exported_top`]).
pub(crate) fn export_tree(
    source: &dyn SourceFs,
    rel: &str,
    dest: &Path,
    owner: ExportOwner,
) -> Result<PathBuf> {
    let owner_of = |meta: &std::fs::Metadata| match owner {
        ExportOwner::Keep => (meta.uid(), meta.gid()),
        ExportOwner::Root => (0, 0),
    };
    let Some(top) = source.entry(rel, true)? else {
        return Err(Error::Invalid(format!("{rel}: not found")));
    };
    fs::create_dir_all(dest).map_err(io_err(dest))?;
    let entries = walk(source, &top)?;
    let mut dirs = Vec::new();
    for entry in &entries {
        let below = if entry.rel == top.rel {
            "."
        } else {
            entry
                .rel
                .strip_prefix(&format!("{}/", top.rel))
                .or_else(|| (top.rel == ".").then_some(entry.rel.as_str()))
                .unwrap_or(&entry.rel)
        };
        let target = if below == "." {
            exported_top(dest, &top)
        } else {
            dest.join(below)
        };
        let meta = &entry.meta;
        let kind = meta.file_type();
        if kind.is_dir() {
            fs::create_dir_all(&target).map_err(io_err(&target))?;
            dirs.push((target, meta.clone()));
            continue;
        }
        if let Ok(existing) = fs::symlink_metadata(&target) {
            if existing.is_dir() {
                fs::remove_dir_all(&target).map_err(io_err(&target))?;
            } else {
                fs::remove_file(&target).map_err(io_err(&target))?;
            }
        }
        if kind.is_symlink() {
            let link = fs::read_link(&entry.host).map_err(io_err(&entry.host))?;
            std::os::unix::fs::symlink(&link, &target).map_err(io_err(&target))?;
            let (uid, gid) = owner_of(meta);
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid)).map_err(io_err(&target))?;
            set_link_mtime(&target, meta)?;
        } else if kind.is_file() {
            copy_resolved(&entry.host, meta, &target).map_err(io_err(&target))?;
            let (uid, gid) = owner_of(meta);
            std::os::unix::fs::chown(&target, Some(uid), Some(gid)).map_err(io_err(&target))?;
            fs::set_permissions(&target, meta.permissions()).map_err(io_err(&target))?;
            if let Ok(mtime) = meta.modified() {
                let file = fs::File::options()
                    .write(true)
                    .open(&target)
                    .map_err(io_err(&target))?;
                file.set_modified(mtime).map_err(io_err(&target))?;
            }
        } else if let Some(special) = SpecialFile::of(meta) {
            // Device nodes (as root) and FIFOs, as the image holds them.
            special.create(&target, meta.mode(), meta.mtime())?;
            let (uid, gid) = owner_of(meta);
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid)).map_err(io_err(&target))?;
            fs::set_permissions(&target, meta.permissions()).map_err(io_err(&target))?;
        }
    }
    for (dir, meta) in dirs.iter().rev() {
        let (uid, gid) = owner_of(meta);
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(io_err(dir))?;
        fs::set_permissions(dir, meta.permissions()).map_err(io_err(dir))?;
        if let Ok(mtime) = meta.modified() {
            if let Ok(handle) = fs::File::open(dir) {
                let _ = handle.set_modified(mtime);
            }
        }
    }
    Ok(exported_top(dest, &top))
}

/// Gives a symbolic link (not its target) the modification time in `meta`.
fn set_link_mtime(link: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    utimensat(
        nix::fcntl::AT_FDCWD,
        link,
        &mtime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|errno| Error::Io {
        path: link.to_path_buf(),
        error: errno.into(),
    })
}

/// Where [`export_tree`] puts the entry it was asked for: `dest` itself for
/// a directory, `dest/NAME` for a file or symlink.
pub(crate) fn exported_top(dest: &Path, top: &SourceEntry) -> PathBuf {
    if top.meta.is_dir() {
        dest.to_path_buf()
    } else {
        dest.join(top.rel.rsplit('/').next().unwrap_or("file"))
    }
}
