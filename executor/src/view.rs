//! A read-only view of the merged filesystem of a stack of snapshots, without
//! mounting anything: what the solver needs to resolve users and paths.

use std::fs::{self, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use crate::error::{io_err, Result};
use crate::resolve::{open_resolved, resolve, Node, Resolved, ScopedTree};
use crate::userns::is_opaque;

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
        let (path, node) = match self.resolve(path, follow_last)? {
            Resolved::Found { path, node } => (path, node),
            Resolved::Missing { .. } => return Ok(None),
            Resolved::NotDir { path } => return Err(not_a_dir(&path)),
        };
        let (host_path, metadata) = match node {
            Node::Leaf(host, meta) => (host, meta),
            Node::Dir(dirs) => match dirs.first() {
                Some(dir) => {
                    let meta = fs::symlink_metadata(dir).map_err(io_err("inspect", dir))?;
                    (dir.clone(), meta)
                }
                None => return Ok(None),
            },
            Node::Missing => return Ok(None),
        };
        Ok(Some(ViewEntry {
            path: join_components(&path),
            host_path,
            metadata,
        }))
    }

    /// Resolves `path` following every symlink and returns its absolute path in
    /// the image and the components (from the root) that do not exist yet: what
    /// a `mkdir -p` of the path would have to create. Errors when an existing
    /// component on the way is not a directory.
    pub fn resolve_for_create(&self, path: &str) -> Result<(String, usize)> {
        match self.resolve(path, true)? {
            Resolved::Found { path, .. } => Ok((join_components(&path), 0)),
            Resolved::Missing { path, missing } => Ok((join_components(&path), missing)),
            Resolved::NotDir { path } => Err(not_a_dir(&path)),
        }
    }

    /// Reads a whole file (following symlinks); `None` when it does not exist
    /// or is not a regular file.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.lookup(path, true)? {
            Some(entry) if entry.metadata.is_file() => {
                let read = |entry: &ViewEntry| -> io::Result<Vec<u8>> {
                    let mut bytes = Vec::new();
                    open_resolved(&entry.host_path, &entry.metadata)?.read_to_end(&mut bytes)?;
                    Ok(bytes)
                };
                read(&entry)
                    .map(Some)
                    .map_err(io_err("read", &entry.host_path))
            }
            _ => Ok(None),
        }
    }

    /// The names in directory `path` of the merged view, sorted; `None` when it
    /// is not a directory.
    pub fn read_dir(&self, path: &str) -> Result<Option<Vec<String>>> {
        let Resolved::Found {
            node: Node::Dir(dirs),
            ..
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

    /// [`resolve`] in this view.
    fn resolve(&self, path: &str, follow_last: bool) -> Result<Resolved<Vec<PathBuf>>> {
        resolve(self, path, follow_last).map_err(|source| crate::Error::Io {
            action: "resolve",
            path: PathBuf::from(path),
            source,
        })
    }

    /// Looks `name` up in the directories that make up one merged directory (top first).
    fn step(&self, dirs: &[PathBuf], name: &str) -> io::Result<Node<Vec<PathBuf>>> {
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
                Err(e) => return Err(e),
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
                return Ok(Node::Leaf(candidate, meta));
            }
            // A non-directory below a directory is hidden by it.
            break;
        }
        if found_dirs.is_empty() {
            Ok(Node::Missing)
        } else {
            Ok(Node::Dir(found_dirs))
        }
    }
}

impl ScopedTree for RootfsView {
    type Dir = Vec<PathBuf>;

    fn root(&self) -> io::Result<Vec<PathBuf>> {
        Ok(self.layers.clone())
    }

    fn child(
        &self,
        dirs: &Vec<PathBuf>,
        name: &str,
        _path: &[String],
    ) -> io::Result<Node<Vec<PathBuf>>> {
        self.step(dirs, name)
    }
}

fn not_a_dir(path: &[String]) -> crate::Error {
    crate::Error::Io {
        action: "resolve",
        path: PathBuf::from(join_components(path)),
        source: io::Error::from_raw_os_error(libc::ENOTDIR),
    }
}

/// An overlayfs whiteout: a character device 0:0.
pub(crate) fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
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
        xattr::set(top.join("etc/sub"), "trusted.overlay.opaque", b"y").unwrap();
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
