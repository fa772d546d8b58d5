//! A read-only view of the merged filesystem of a stack of snapshots, without
//! mounting anything: what the solver needs to resolve users and paths.

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{io_err, Result};
use crate::snapshot::OPAQUE_XATTR;

/// Symlink hops allowed in one lookup, as Linux' MAXSYMLINKS.
const MAX_SYMLINKS: usize = 40;

/// The merged view of snapshot directories, overlayfs-style: upper layers hide
/// lower ones, whiteouts (char devices 0:0) delete, opaque directories hide
/// everything beneath them.
#[derive(Debug, Clone)]
pub struct RootfsView {
    /// Top layer first.
    layers: Vec<PathBuf>,
}

/// A path found in a [`RootfsView`].
#[derive(Debug, Clone)]
pub struct ViewEntry {
    /// The absolute path inside the image, symlinks resolved.
    pub path: String,
    /// Where the entry's top-most copy lives on the host.
    pub host_path: PathBuf,
    /// `lstat` of `host_path`.
    pub metadata: Metadata,
}

impl RootfsView {
    /// A view over snapshot directories given bottom (base layer) first, as in
    /// [`RunSpec::lowers`](crate::RunSpec::lowers).
    pub fn new(lowers: &[PathBuf]) -> Self {
        Self {
            layers: lowers.iter().rev().cloned().collect(),
        }
    }

    /// Finds `path` (absolute, or relative to `/`), following symlinks inside
    /// the image's root (an absolute link target means the image's root, and
    /// `..` stops at it). The last component is followed too when `follow_last`.
    pub fn lookup(&self, path: &str, follow_last: bool) -> Result<Option<ViewEntry>> {
        match self.resolve(path, follow_last)? {
            Resolved::Found { path, dirs, leaf } => {
                let (host_path, metadata) = match leaf {
                    Some(found) => *found,
                    None => match dirs.first() {
                        Some(dir) => {
                            let meta = fs::symlink_metadata(dir).map_err(io_err("inspect", dir))?;
                            (dir.clone(), meta)
                        }
                        None => return Ok(None),
                    },
                };
                Ok(Some(ViewEntry {
                    path: join_components(&path),
                    host_path,
                    metadata,
                }))
            }
            Resolved::Missing { .. } => Ok(None),
        }
    }

    /// Resolves `path` following every symlink and returns its absolute path in
    /// the image and the components (from the root) that do not exist yet: what
    /// a `mkdir -p` of the path would have to create. Errors when an existing
    /// component on the way is not a directory.
    pub fn resolve_for_create(&self, path: &str) -> Result<(String, usize)> {
        match self.resolve(path, true)? {
            Resolved::Found { path, .. } => Ok((join_components(&path), 0)),
            Resolved::Missing { path, missing } => Ok((join_components(&path), missing)),
        }
    }

    /// Reads a whole file (following symlinks); `None` when it does not exist
    /// or is not a regular file.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.lookup(path, true)? {
            Some(entry) if entry.metadata.is_file() => fs::read(&entry.host_path)
                .map(Some)
                .map_err(io_err("read", &entry.host_path)),
            _ => Ok(None),
        }
    }

    /// The names in directory `path` of the merged view, sorted; `None` when it
    /// is not a directory.
    pub fn read_dir(&self, path: &str) -> Result<Option<Vec<String>>> {
        let Resolved::Found {
            dirs, leaf: None, ..
        } = self.resolve(path, true)?
        else {
            return Ok(None);
        };
        let mut names = std::collections::BTreeMap::<String, bool>::new();
        for dir in &dirs {
            for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
                let entry = entry.map_err(io_err("list", dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let meta = entry.metadata().map_err(io_err("inspect", entry.path()))?;
                names.entry(name).or_insert(!is_whiteout(&meta));
            }
        }
        Ok(Some(
            names
                .into_iter()
                .filter(|(_, visible)| *visible)
                .map(|(n, _)| n)
                .collect(),
        ))
    }

    fn resolve(&self, path: &str, follow_last: bool) -> Result<Resolved> {
        let mut pending: Vec<String> = split(path).into_iter().rev().collect();
        let mut resolved: Vec<String> = Vec::new();
        let mut dirs: Vec<PathBuf> = self.layers.clone();
        let mut hops = 0;
        while let Some(name) = pending.pop() {
            if name == ".." {
                resolved.pop();
                dirs = self.dirs_of(&resolved)?;
                continue;
            }
            let is_last = pending.is_empty();
            match self.step(&dirs, &name)? {
                Step::Missing => {
                    resolved.push(name);
                    let rest: Vec<String> =
                        pending.into_iter().rev().filter(|n| n != "..").collect();
                    let missing = 1 + rest.len();
                    resolved.extend(rest);
                    return Ok(Resolved::Missing {
                        path: resolved,
                        missing,
                    });
                }
                Step::Dir(next) => {
                    resolved.push(name);
                    dirs = next;
                }
                Step::Leaf(host, meta) => {
                    if meta.file_type().is_symlink() && (!is_last || follow_last) {
                        hops += 1;
                        if hops > MAX_SYMLINKS {
                            return Err(crate::Error::Io {
                                action: "resolve",
                                path: PathBuf::from(path),
                                source: io::Error::from_raw_os_error(libc::ELOOP),
                            });
                        }
                        let target = fs::read_link(&host).map_err(io_err("read link", &host))?;
                        let target = target.to_string_lossy();
                        if target.starts_with('/') {
                            resolved.clear();
                        }
                        pending.extend(split(&target).into_iter().rev());
                        dirs = self.dirs_of(&resolved)?;
                        continue;
                    }
                    resolved.push(name);
                    if !is_last {
                        return Err(crate::Error::Io {
                            action: "resolve",
                            path: PathBuf::from(join_components(&resolved)),
                            source: io::Error::from_raw_os_error(libc::ENOTDIR),
                        });
                    }
                    return Ok(Resolved::Found {
                        path: resolved,
                        dirs: Vec::new(),
                        leaf: Some(Box::new((host, meta))),
                    });
                }
            }
        }
        Ok(Resolved::Found {
            path: resolved,
            dirs,
            leaf: None,
        })
    }

    fn dirs_of(&self, components: &[String]) -> Result<Vec<PathBuf>> {
        let mut dirs = self.layers.clone();
        for name in components {
            match self.step(&dirs, name)? {
                Step::Dir(next) => dirs = next,
                _ => return Ok(Vec::new()),
            }
        }
        Ok(dirs)
    }

    /// Looks `name` up in the directories that make up one merged directory (top first).
    fn step(&self, dirs: &[PathBuf], name: &str) -> Result<Step> {
        let mut found_dirs = Vec::new();
        for dir in dirs {
            let candidate = dir.join(name);
            let meta = match fs::symlink_metadata(&candidate) {
                Ok(meta) => meta,
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ENOTDIR) =>
                {
                    continue
                }
                Err(e) => return Err(io_err("inspect", &candidate)(e)),
            };
            if is_whiteout(&meta) {
                break;
            }
            if meta.is_dir() {
                let opaque = is_opaque(&candidate);
                found_dirs.push(candidate);
                if opaque {
                    break;
                }
                continue;
            }
            if found_dirs.is_empty() {
                return Ok(Step::Leaf(candidate, meta));
            }
            // A non-directory below a directory is hidden by it.
            break;
        }
        if found_dirs.is_empty() {
            Ok(Step::Missing)
        } else {
            Ok(Step::Dir(found_dirs))
        }
    }
}

enum Step {
    Missing,
    Dir(Vec<PathBuf>),
    Leaf(PathBuf, Metadata),
}

enum Resolved {
    Found {
        path: Vec<String>,
        /// The merged directory's layers (top first) when the path is a directory.
        dirs: Vec<PathBuf>,
        leaf: Option<Box<(PathBuf, Metadata)>>,
    },
    Missing {
        path: Vec<String>,
        missing: usize,
    },
}

/// An overlayfs whiteout: a character device 0:0.
pub(crate) fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

pub(crate) fn is_opaque(dir: &Path) -> bool {
    matches!(xattr::get(dir, OPAQUE_XATTR), Ok(Some(value)) if value == b"y")
}

fn split(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_owned)
        .collect()
}

fn join_components(parts: &[String]) -> String {
    let mut out = String::new();
    for part in parts {
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn layers() -> (tempfile::TempDir, Vec<PathBuf>) {
        let tmp = tempfile::tempdir().unwrap();
        let bottom = tmp.path().join("bottom");
        let top = tmp.path().join("top");
        fs::create_dir_all(bottom.join("etc/sub")).unwrap();
        fs::write(bottom.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        fs::write(bottom.join("etc/gone"), "x").unwrap();
        fs::write(bottom.join("etc/sub/old"), "x").unwrap();
        fs::create_dir_all(bottom.join("usr/bin")).unwrap();
        fs::write(bottom.join("usr/bin/tool"), "t").unwrap();
        symlink("usr/bin", bottom.join("bin")).unwrap();
        symlink("/etc/../../../etc/passwd", bottom.join("escape")).unwrap();
        fs::create_dir_all(top.join("etc/sub")).unwrap();
        nix::sys::stat::mknod(
            &top.join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        xattr::set(top.join("etc/sub"), OPAQUE_XATTR, b"y").unwrap();
        fs::write(top.join("etc/sub/new"), "n").unwrap();
        (tmp, vec![bottom, top])
    }

    #[test]
    fn merges_layers_with_whiteouts_and_opaque_dirs() {
        let (_tmp, lowers) = layers();
        let view = RootfsView::new(&lowers);
        assert!(view.lookup("/etc/passwd", true).unwrap().is_some());
        assert!(view.lookup("/etc/gone", true).unwrap().is_none());
        assert!(view.lookup("/etc/sub/old", true).unwrap().is_none());
        assert!(view.lookup("/etc/sub/new", true).unwrap().is_some());
        assert_eq!(
            view.read_dir("/etc").unwrap().unwrap(),
            vec!["passwd", "sub"]
        );
    }

    #[test]
    fn follows_symlinks_inside_the_root() {
        let (_tmp, lowers) = layers();
        let view = RootfsView::new(&lowers);
        let tool = view.lookup("/bin/tool", true).unwrap().unwrap();
        assert_eq!(tool.path, "/usr/bin/tool");
        let escaped = view.lookup("/escape", true).unwrap().unwrap();
        assert_eq!(escaped.path, "/etc/passwd");
        assert!(escaped.host_path.starts_with(&lowers[0]));
        assert_eq!(
            view.read_file("/escape").unwrap().unwrap(),
            b"root:x:0:0::/root:/bin/sh\n"
        );
        let link = view.lookup("/bin", false).unwrap().unwrap();
        assert!(link.metadata.file_type().is_symlink());
    }

    #[test]
    fn reports_components_to_create() {
        let (_tmp, lowers) = layers();
        let view = RootfsView::new(&lowers);
        assert_eq!(
            view.resolve_for_create("/bin/new/dir").unwrap(),
            ("/usr/bin/new/dir".to_owned(), 2)
        );
        assert_eq!(
            view.resolve_for_create("/etc").unwrap(),
            ("/etc".to_owned(), 0)
        );
        assert_eq!(
            view.resolve_for_create("/etc/gone/x").unwrap(),
            ("/etc/gone/x".to_owned(), 2)
        );
        assert!(view.resolve_for_create("/etc/passwd/x").is_err());
    }
}
