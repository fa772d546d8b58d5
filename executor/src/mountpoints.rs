//! Mountpoints without upper-dir stubs.
//!
//! A mount target missing from the image needs a directory or file to mount
//! on. Creating it in the step's upper dir would cost file creations and
//! removals on every step and risk leaking into the layer, so the sandbox
//! instead adds one more read-only lower dir on top of the image's snapshots
//! holding just those stubs (and their parent directories, with the image's own
//! owner, mode and mtime so the merged view is unchanged). Stub lowers are
//! shared by every step needing the same set, and kept beside the snapshots.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::unistd::{chown, Gid, Uid};
use sha2::{Digest, Sha256};

use crate::error::{io_err, Error, Result};
use crate::snapshot::{remove_tree, set_mtime};
use crate::view::RootfsView;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// One directory to create in a stub lower: its in-image path and metadata.
struct StubDir {
    path: String,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

/// Returns (creating it once) a lower dir under `root` holding `stubs`
/// (in-image paths whose components do not exist in `view`; `true` for a file
/// stub) and the existing parents of each with their metadata from `view`.
pub(crate) fn stub_lower(
    root: &Path,
    view: &RootfsView,
    stubs: &[(String, bool)],
) -> Result<PathBuf> {
    let mut dirs: Vec<StubDir> = Vec::new();
    let mut files: Vec<String> = Vec::new();
    for (stub, is_file) in stubs {
        let mut prefix = String::new();
        let parts: Vec<&str> = stub.split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            prefix.push('/');
            prefix.push_str(part);
            if i + 1 == parts.len() && *is_file {
                files.push(prefix.clone());
                continue;
            }
            if dirs.iter().any(|d| d.path == prefix) {
                continue;
            }
            let dir = match view.lookup(&prefix, false)? {
                Some(entry) if entry.metadata.is_dir() => StubDir {
                    path: prefix.clone(),
                    mode: entry.metadata.mode() & 0o7777,
                    uid: entry.metadata.uid(),
                    gid: entry.metadata.gid(),
                    mtime: entry.metadata.mtime(),
                },
                Some(_) => {
                    return Err(Error::InvalidSpec(format!(
                        "mount target {stub}: {prefix} is not a directory in the image"
                    )));
                }
                None => StubDir {
                    path: prefix.clone(),
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                },
            };
            dirs.push(dir);
        }
    }
    let mut hasher = Sha256::new();
    for dir in &dirs {
        hasher.update(format!(
            "d {} {:o} {} {} {}\n",
            dir.path, dir.mode, dir.uid, dir.gid, dir.mtime
        ));
    }
    for file in &files {
        hasher.update(format!("f {file}\n"));
    }
    let name = hex_prefix(&hasher.finalize());
    let target = root.join(&name);
    if target.is_dir() {
        return Ok(target);
    }
    fs::create_dir_all(root).map_err(io_err("create", root))?;
    let temp = root.join(format!(
        ".tmp-{name}-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        fs::create_dir(&temp).map_err(io_err("create", &temp))?;
        for dir in &dirs {
            let path = temp.join(&dir.path[1..]);
            fs::create_dir(&path).map_err(io_err("create", &path))?;
            chown(
                &path,
                Some(Uid::from_raw(dir.uid)),
                Some(Gid::from_raw(dir.gid)),
            )
            .map_err(|e| Error::Io {
                action: "chown",
                path: path.clone(),
                source: e.into(),
            })?;
            fs::set_permissions(&path, fs::Permissions::from_mode(dir.mode))
                .map_err(io_err("chmod", &path))?;
        }
        for file in &files {
            let path = temp.join(&file[1..]);
            fs::write(&path, b"").map_err(io_err("create", &path))?;
        }
        // Deepest first, so that creating children does not touch parents' times.
        for dir in dirs.iter().rev() {
            set_mtime(&temp.join(&dir.path[1..]), dir.mtime)?;
        }
        match fs::rename(&temp, &target) {
            Ok(()) => Ok(()),
            // Another step made the same one meanwhile.
            Err(_) if target.is_dir() => {
                let _ = remove_tree(&temp);
                Ok(())
            }
            Err(e) => Err(io_err("rename into place", &target)(e)),
        }
    })();
    if result.is_err() {
        let _ = remove_tree(&temp);
    }
    result.map(|()| target)
}

/// A read-only file with `content` under `dir`, written once and shared.
pub(crate) fn shared_file(dir: &Path, prefix: &str, content: &[u8]) -> Result<PathBuf> {
    let name = format!("{prefix}-{}", hex_prefix(&Sha256::digest(content)));
    let path = dir.join(name);
    if path.is_file() {
        return Ok(path);
    }
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let temp = dir.join(format!(
        ".tmp-{prefix}-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::write(&temp, content).map_err(io_err("write", &temp))?;
    fs::set_permissions(&temp, fs::Permissions::from_mode(0o644))
        .map_err(io_err("chmod", &temp))?;
    fs::rename(&temp, &path).map_err(io_err("rename into place", &path))?;
    Ok(path)
}

fn hex_prefix(digest: &[u8]) -> String {
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}
