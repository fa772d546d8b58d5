//! WORKDIR: the directories a stage's working directory needs that its
//! image lacks, made as a tree for a layer of their own.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use kiln_executor::RootfsView;

use crate::error::{io_err, Result};
use crate::pattern::clean_relative;

/// Whether `path` is already a directory in the image (WORKDIR makes no layer).
pub(crate) fn is_directory(view: &RootfsView, path: &str) -> Result<bool> {
    Ok(view
        .lookup(path, true)?
        .is_some_and(|e| e.metadata.is_dir()))
}

/// Makes in `tree` (which must not exist) the directories of `path` that
/// `view` lacks, and the existing ones on the way to them.
///
/// Like BuildKit's `mkdir -p` as the USER: every directory made belongs to
/// `user` (root when none); the existing ones on the way keep the mode and
/// owner they have in the image.
pub(crate) fn workdir_tree(
    view: &RootfsView,
    path: &str,
    user: Option<&str>,
    tree: &Path,
) -> Result<()> {
    let owner = match user {
        Some(user) if !user.is_empty() => {
            let u = kiln_executor::resolve_user(view, user)?;
            (u.uid, u.gid)
        }
        _ => (0, 0),
    };
    fs::create_dir(tree).map_err(io_err(tree))?;
    let (resolved, missing) = view.resolve_for_create(path)?;
    let resolved = clean_relative(&resolved);
    let components: Vec<&str> = resolved.split('/').collect();
    let first_missing = components.len().saturating_sub(missing);
    let mut made = Vec::new();
    let mut host = tree.to_path_buf();
    let mut image_path = String::new();
    for (index, component) in components.iter().enumerate() {
        host.push(component);
        image_path.push('/');
        image_path.push_str(component);
        fs::create_dir(&host).map_err(io_err(&host))?;
        let (mode, uid, gid) = match view.lookup(&image_path, false) {
            Ok(Some(existing)) if index < first_missing => (
                existing.metadata.mode() & 0o7777,
                existing.metadata.uid(),
                existing.metadata.gid(),
            ),
            _ => (0o755, owner.0, owner.1),
        };
        made.push((host.clone(), mode, uid, gid));
    }
    // Modes last: a read-only directory must not stop its child.
    for (dir, mode, uid, gid) in made.iter().rev() {
        std::os::unix::fs::chown(dir, Some(*uid), Some(*gid)).map_err(io_err(dir))?;
        set_mode(dir, *mode)?;
    }
    Ok(())
}

/// Sets the permission bits of `path` (also for the RUN step's scratch files).
pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))
}
