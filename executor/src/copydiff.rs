//! The copying fallback for machines where overlayfs cannot be mounted: the
//! merged view is copied into a plain directory, the step runs there, and the
//! changes are turned back into an overlay-style upper dir (whiteouts, opaque
//! directories) so the one diff writer serves both paths.

use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::sys::stat::{mknod, Mode, SFlag};
use nix::unistd::{fchownat, Gid, Uid};

use crate::error::{io_err, Error, Result};
use crate::snapshot::set_mtime;
use crate::userns::{is_overlay_xattr, mark_opaque};
use crate::view::RootfsView;

/// Identity of each copied path right after copying: (inode, birth time, ctime s,
/// ctime ns). The birth time tells a new file from an old one whose freed inode
/// number the filesystem reused.
pub(crate) type CopyIndex = HashMap<String, (u64, u128, i64, i64)>;

fn identity(meta: &Metadata) -> (u64, u128) {
    let born = meta
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    (meta.ino(), born)
}

/// Copies the merged view into `dest`, preserving types, owners, modes, xattrs and mtimes.
pub(crate) fn copy_view(view: &RootfsView, dest: &Path) -> Result<CopyIndex> {
    let mut index = CopyIndex::new();
    copy_dir(view, "", dest, &mut index)?;
    Ok(index)
}

fn copy_dir(view: &RootfsView, rel: &str, dest: &Path, index: &mut CopyIndex) -> Result<()> {
    let names = view
        .read_dir(if rel.is_empty() { "/" } else { rel })?
        .unwrap_or_default();
    for name in names {
        let path = format!("{rel}/{name}");
        let Some(entry) = view.lookup(&path, false)? else {
            continue;
        };
        let target = dest.join(&path[1..]);
        copy_object(&entry.host_path, &entry.metadata, &target)?;
        if entry.metadata.is_dir() {
            copy_dir(view, &path, dest, index)?;
            // Writing children changed the directory's mtime.
            set_mtime(&target, entry.metadata.mtime())?;
        }
        let meta = fs::symlink_metadata(&target).map_err(io_err("inspect", &target))?;
        let (ino, born) = identity(&meta);
        index.insert(path, (ino, born, meta.ctime(), meta.ctime_nsec()));
    }
    Ok(())
}

/// Copies one filesystem object (not a directory's contents) with its metadata.
fn copy_object(source: &Path, meta: &Metadata, target: &Path) -> Result<()> {
    let kind = meta.file_type();
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        fs::create_dir(target).map_err(io_err("create", target))?;
    } else if kind.is_symlink() {
        let link = fs::read_link(source).map_err(io_err("read link", source))?;
        symlink(link, target).map_err(io_err("create symlink", target))?;
    } else if kind.is_file() {
        fs::copy(source, target).map_err(io_err("copy to", target))?;
    } else {
        let flag = if kind.is_char_device() {
            SFlag::S_IFCHR
        } else if kind.is_block_device() {
            SFlag::S_IFBLK
        } else if kind.is_fifo() {
            SFlag::S_IFIFO
        } else {
            return Ok(());
        };
        mknod(
            target,
            flag,
            Mode::from_bits_truncate(meta.mode()),
            meta.rdev(),
        )
        .map_err(|e| Error::Io {
            action: "create node",
            path: target.to_path_buf(),
            source: e.into(),
        })?;
    }
    fchownat(
        nix::fcntl::AT_FDCWD,
        target,
        Some(Uid::from_raw(meta.uid())),
        Some(Gid::from_raw(meta.gid())),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| Error::Io {
        action: "chown",
        path: target.to_path_buf(),
        source: e.into(),
    })?;
    if !kind.is_symlink() {
        fs::set_permissions(target, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io_err("chmod", target))?;
        if let Ok(names) = xattr::list(source) {
            for name in names {
                let Some(name) = name.to_str() else { continue };
                if is_overlay_xattr(name) {
                    continue;
                }
                if let Ok(Some(value)) = xattr::get(source, name) {
                    xattr::set(target, name, &value).map_err(io_err("set xattr on", target))?;
                }
            }
        }
    }
    set_mtime(target, meta.mtime())
}

/// Writes what changed in `root` since [`copy_view`] into `upper` in overlayfs
/// form; `stubs` (mountpoints the sandbox created) are left out.
pub(crate) fn diff_into_upper(
    index: &CopyIndex,
    root: &Path,
    upper: &Path,
    stubs: &[String],
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    diff_dir(index, root, "", upper, stubs, &mut seen)?;
    // Deleted paths: whiteouts for the top-most deleted ones only.
    let mut deleted: Vec<&String> = index
        .keys()
        .filter(|p| !seen.contains(p.as_str()))
        .collect();
    deleted.sort();
    let mut last_whiteout: Option<&str> = None;
    for path in deleted {
        if last_whiteout
            .is_some_and(|w| path.starts_with(w) && path.as_bytes().get(w.len()) == Some(&b'/'))
        {
            continue;
        }
        let target = upper.join(&path[1..]);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        if fs::symlink_metadata(&target).is_err() {
            mknod(&target, SFlag::S_IFCHR, Mode::empty(), 0).map_err(|e| Error::Io {
                action: "create whiteout",
                path: target.clone(),
                source: e.into(),
            })?;
        }
        last_whiteout = Some(path);
    }
    Ok(())
}

fn diff_dir(
    index: &CopyIndex,
    root: &Path,
    rel: &str,
    upper: &Path,
    stubs: &[String],
    seen: &mut std::collections::HashSet<String>,
) -> Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(&rel[1..])
    };
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(io_err("list", &dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(io_err("list", &dir))?;
    names.sort();
    for name in names {
        let path = format!("{rel}/{}", name.to_string_lossy());
        if stubs.contains(&path) {
            seen.insert(path);
            continue;
        }
        let host = dir.join(&name);
        let meta = fs::symlink_metadata(&host).map_err(io_err("inspect", &host))?;
        let before = index.get(&path);
        let (ino, born) = identity(&meta);
        let same_object = before.is_some_and(|b| (b.0, b.1) == (ino, born));
        let unchanged = before.is_some_and(|b| *b == (ino, born, meta.ctime(), meta.ctime_nsec()));
        if before.is_some() {
            // Replaced objects are not deleted: their new version hides the old.
            seen.insert(path.clone());
            if !same_object {
                let prefix = format!("{path}/");
                seen.extend(index.keys().filter(|k| k.starts_with(&prefix)).cloned());
            }
        }
        let target = upper.join(&path[1..]);
        if !unchanged {
            if let Some(parent) = target.parent() {
                ensure_parents(root, upper, parent)?;
            }
            copy_object(&host, &meta, &target)?;
            if meta.is_dir() && before.is_some() && !same_object {
                // A new directory where one was: hide the old contents.
                mark_opaque(&target).map_err(io_err("set opaque xattr on", &target))?;
            }
        }
        if meta.is_dir() {
            if same_object || before.is_none() {
                diff_dir(index, root, &path, upper, stubs, seen)?;
            } else {
                // Opaque: copy the whole new tree.
                diff_dir(
                    &CopyIndex::new(),
                    root,
                    &path,
                    upper,
                    stubs,
                    &mut std::collections::HashSet::new(),
                )?;
            }
        }
    }
    Ok(())
}

/// Creates the parents of an upper entry with the metadata of the same
/// directories in the copied root.
fn ensure_parents(root: &Path, upper: &Path, dir: &Path) -> Result<()> {
    if dir == upper || fs::symlink_metadata(dir).is_ok() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        ensure_parents(root, upper, parent)?;
    }
    let rel = dir.strip_prefix(upper).unwrap_or(dir);
    let source = root.join(rel);
    let meta = fs::symlink_metadata(&source).map_err(io_err("inspect", &source))?;
    copy_object(&source, &meta, dir)
}
