//! The one path resolver every source path goes through: the build context,
//! the merged rootfs of a stage or image, a RUN mount's target. Symlinks are
//! followed scoped to the tree's root, as BuildKit's fsutil and Go's
//! securejoin do: an absolute link target starts again at the root and `..`
//! never climbs above it, so no path leaves the tree for the host.
//!
//! The tree decides what a name in one of its directories is (a plain
//! directory, overlayfs-style layers, a context with ignored files); the
//! resolver alone walks components and links. Host trees are walked with
//! [`OpenDir`]: each directory is opened without following links and names
//! are looked up relative to it (openat-style), so what was found is inside
//! the tree when it was found; [`open_resolved`] then opens it without
//! following a link and checks it is still that file (same inode), so a
//! component swapped for a link in between cannot lead a read out.

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Symlink hops allowed in one lookup, as Linux' MAXSYMLINKS.
const MAX_SYMLINKS: usize = 40;

/// What one name in a directory of a [`ScopedTree`] is.
pub enum Node<D> {
    /// Nothing by that name (or hidden: ignored, whited out).
    Missing,
    /// A directory, as the tree describes directories.
    Dir(D),
    /// Anything else (a symlink too), by its host path and `lstat`.
    Leaf(PathBuf, Metadata),
}

/// A tree whose paths [`resolve`] resolves.
pub trait ScopedTree {
    /// How the tree describes one directory (a host path, a stack of layers).
    type Dir: Clone;

    /// The root directory.
    fn root(&self) -> io::Result<Self::Dir>;

    /// What `name` is in `dir`; `path` is the resolved path of the result,
    /// from the root (its last component is `name`), for trees that hide
    /// paths by pattern.
    fn child(&self, dir: &Self::Dir, name: &str, path: &[String]) -> io::Result<Node<Self::Dir>>;
}

/// Where a path led.
pub enum Resolved<D> {
    /// It exists: `path` is its resolved path (no symlinks but the last one
    /// when not followed), `node` is a [`Node::Dir`] or a [`Node::Leaf`].
    Found {
        /// The resolved path, by component.
        path: Vec<String>,
        /// What is there.
        node: Node<D>,
    },
    /// It does not exist: `path` is where it would be, the last `missing`
    /// components of which do not exist (what `mkdir -p` would create).
    Missing {
        /// Where it would be, by component.
        path: Vec<String>,
        /// How many of the last components do not exist.
        missing: usize,
    },
    /// A component before the last is neither a directory nor a link to one;
    /// `path` leads to it.
    NotDir {
        /// The path to that component, by component.
        path: Vec<String>,
    },
}

/// Resolves `path` (relative to the root, or absolute meaning the same) in
/// `tree`, following symlinks inside it; the last component is followed too
/// when `follow_last`. Fails only when the tree fails to answer or after too
/// many links (ELOOP).
pub fn resolve<T: ScopedTree + ?Sized>(
    tree: &T,
    path: &str,
    follow_last: bool,
) -> io::Result<Resolved<T::Dir>> {
    let mut pending: Vec<String> = split(path).rev().map(str::to_owned).collect();
    let mut resolved: Vec<String> = Vec::new();
    // dirs[i] is the directory reached by resolved[..i].
    let mut dirs: Vec<T::Dir> = vec![tree.root()?];
    let mut hops = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            if resolved.pop().is_some() {
                dirs.pop();
            }
            continue;
        }
        let dir = dirs.last().cloned().ok_or_else(broken_stack)?;
        resolved.push(name);
        match tree.child(&dir, resolved.last().map_or("", String::as_str), &resolved)? {
            Node::Missing => {
                let rest = pending.into_iter().rev().filter(|n| n != "..");
                let before = resolved.len();
                resolved.extend(rest);
                let missing = resolved.len() - before + 1;
                return Ok(Resolved::Missing {
                    path: resolved,
                    missing,
                });
            }
            Node::Dir(next) => dirs.push(next),
            Node::Leaf(host, meta) => {
                let is_last = pending.is_empty();
                if meta.file_type().is_symlink() && (!is_last || follow_last) {
                    hops += 1;
                    if hops > MAX_SYMLINKS {
                        return Err(io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    resolved.pop();
                    let target = std::fs::read_link(&host)?;
                    let target = target.to_string_lossy();
                    if target.starts_with('/') {
                        resolved.clear();
                        dirs.truncate(1);
                    }
                    pending.extend(split(&target).rev().map(str::to_owned));
                    continue;
                }
                if !is_last {
                    return Ok(Resolved::NotDir { path: resolved });
                }
                return Ok(Resolved::Found {
                    path: resolved,
                    node: Node::Leaf(host, meta),
                });
            }
        }
    }
    let dir = dirs.pop().ok_or_else(broken_stack)?;
    Ok(Resolved::Found {
        path: resolved,
        node: Node::Dir(dir),
    })
}

fn broken_stack() -> io::Error {
    io::Error::other("path resolution lost its directory stack")
}

fn split(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

/// A host directory held open: names are looked up in the directory itself
/// (through `/proc/self/fd`, relative to the open descriptor), never by
/// walking its path again, so a component of that path replaced by a link
/// after it was resolved cannot send a lookup out of the tree.
#[derive(Debug, Clone)]
pub struct OpenDir {
    path: PathBuf,
    handle: Arc<File>,
}

impl OpenDir {
    /// Opens the root of a tree (following links: the root is trusted).
    pub fn open(path: &Path) -> io::Result<OpenDir> {
        let handle = File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)?;
        Ok(OpenDir {
            path: path.to_path_buf(),
            handle: Arc::new(handle),
        })
    }

    /// The directory's host path (for messages and for callers that open
    /// what they found with [`open_resolved`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `fstat` of the directory.
    pub fn metadata(&self) -> io::Result<Metadata> {
        self.handle.metadata()
    }

    /// A path that reaches `name` in this directory through its descriptor,
    /// for system calls that take paths (valid while `self` lives).
    pub fn at(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.handle.as_raw_fd()))
    }

    /// Lists the directory through its descriptor; each entry's `metadata()`
    /// is an `lstat` relative to it.
    pub fn read_dir(&self) -> io::Result<std::fs::ReadDir> {
        std::fs::read_dir(format!("/proc/self/fd/{}", self.handle.as_raw_fd()))
    }

    /// What `name` is in this directory: a directory is opened (not
    /// following a link) and checked to be what `lstat` saw.
    pub fn child(&self, name: &str) -> io::Result<Node<OpenDir>> {
        let at = self.at(name);
        let meta = match std::fs::symlink_metadata(&at) {
            Ok(meta) => meta,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                return Ok(Node::Missing)
            }
            Err(e) => return Err(e),
        };
        let path = self.path.join(name);
        if !meta.is_dir() {
            return Ok(Node::Leaf(path, meta));
        }
        let handle = File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&at)?;
        let opened = handle.metadata()?;
        if opened.dev() != meta.dev() || opened.ino() != meta.ino() {
            return Err(changed());
        }
        Ok(Node::Dir(OpenDir {
            path,
            handle: Arc::new(handle),
        }))
    }
}

/// A plain host directory as a [`ScopedTree`]: every entry shown.
#[derive(Debug, Clone)]
pub struct HostDir(pub PathBuf);

impl ScopedTree for HostDir {
    type Dir = OpenDir;

    fn root(&self) -> io::Result<OpenDir> {
        OpenDir::open(&self.0)
    }

    fn child(&self, dir: &OpenDir, name: &str, _path: &[String]) -> io::Result<Node<OpenDir>> {
        dir.child(name)
    }
}

/// Opens the regular file at `host` that a [`resolve`] found with `lstat`
/// `meta`, for reading, without following a symlink at its last component,
/// and checks it is the same file (device and inode): a path whose
/// components were swapped for links after it was resolved cannot make this
/// read a file outside the tree.
pub fn open_resolved(host: &Path, meta: &Metadata) -> io::Result<File> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(host)?;
    let opened = file.metadata()?;
    if opened.dev() != meta.dev() || opened.ino() != meta.ino() {
        return Err(changed());
    }
    Ok(file)
}

/// Copies the regular file a [`resolve`] found (see [`open_resolved`]) to a
/// new file `dest` with the same permission bits, as `fs::copy` would.
pub fn copy_resolved(host: &Path, meta: &Metadata, dest: &Path) -> io::Result<()> {
    let mut source = open_resolved(host, meta)?;
    let mut target = File::create(dest)?;
    io::copy(&mut source, &mut target)?;
    target.set_permissions(meta.permissions())
}

/// Hard-links the file a [`resolve`] found to `dest`, then checks the link is
/// that file (see [`open_resolved`]); a mismatch removes the link and fails.
pub fn link_resolved(host: &Path, meta: &Metadata, dest: &Path) -> io::Result<()> {
    std::fs::hard_link(host, dest)?;
    let linked = std::fs::symlink_metadata(dest)?;
    if linked.dev() != meta.dev() || linked.ino() != meta.ino() {
        std::fs::remove_file(dest)?;
        return Err(changed());
    }
    Ok(())
}

fn changed() -> io::Error {
    io::Error::other("the file changed after it was looked up (a path component was replaced)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn found(tree: &HostDir, path: &str, follow: bool) -> Option<String> {
        match resolve(tree, path, follow).unwrap() {
            Resolved::Found { path, .. } => Some(path.join("/")),
            _ => None,
        }
    }

    fn tree() -> (tempfile::TempDir, HostDir) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("etc/ssh")).unwrap();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("etc/shadow"), "inside").unwrap();
        fs::write(root.join("a/b/f"), "f").unwrap();
        // Beside the root, where a link that climbs out would land.
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/shadow"), "outside").unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../../../../../etc", root.join("rel")).unwrap();
        symlink("b", root.join("a/link")).unwrap();
        symlink("/nowhere/at/all", root.join("dangling")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        (dir, HostDir(root))
    }

    #[test]
    fn absolute_and_climbing_links_stay_in_the_root() {
        let (_dir, root) = tree();
        assert_eq!(found(&root, "abs/shadow", true).unwrap(), "etc/shadow");
        assert_eq!(found(&root, "rel/shadow", true).unwrap(), "etc/shadow");
        assert_eq!(found(&root, "/rel/ssh", true).unwrap(), "etc/ssh");
        assert_eq!(
            found(&root, "../../etc/shadow", true).unwrap(),
            "etc/shadow"
        );
        // `..` after a link goes up from where the link led.
        assert_eq!(found(&root, "a/link/../b/f", true).unwrap(), "a/b/f");
        assert_eq!(found(&root, "abs/../a/b/f", true).unwrap(), "a/b/f");
        assert!(found(&root, "dangling", true).is_none());
        assert!(found(&root, "dangling", false).is_some());
    }

    #[test]
    fn links_in_the_middle_are_followed_and_the_last_on_request() {
        let (_dir, root) = tree();
        assert_eq!(found(&root, "a/link/f", false).unwrap(), "a/b/f");
        assert_eq!(found(&root, "a/link", false).unwrap(), "a/link");
        assert_eq!(found(&root, "a/link", true).unwrap(), "a/b");
        match resolve(&root, "a/b/f/x", true).unwrap() {
            Resolved::NotDir { path } => assert_eq!(path.join("/"), "a/b/f"),
            _ => panic!("a file in the middle of a path is not a directory"),
        }
        match resolve(&root, "abs/new/dir", true).unwrap() {
            Resolved::Missing { path, missing } => {
                assert_eq!((path.join("/").as_str(), missing), ("etc/new/dir", 2))
            }
            _ => panic!("missing components are reported"),
        }
        let err = resolve(&root, "loop/x", true).err().unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn an_open_directory_is_not_reached_again_through_its_path() {
        let (dir, root) = tree();
        let Resolved::Found {
            node: Node::Dir(etc),
            ..
        } = resolve(&root, "abs", true).unwrap()
        else {
            panic!("a directory");
        };
        // The resolved directory's path now leads out of the tree.
        fs::rename(root.0.join("etc"), root.0.join("moved")).unwrap();
        symlink(dir.path().join("etc"), root.0.join("etc")).unwrap();
        let Node::Leaf(host, meta) = etc.child("shadow").unwrap() else {
            panic!("a file");
        };
        let mut text = String::new();
        let mut file = open_resolved(&root.0.join("moved/shadow"), &meta).unwrap();
        io::Read::read_to_string(&mut file, &mut text).unwrap();
        assert_eq!(text, "inside");
        // Its host path is where it was found; reading it there is refused.
        assert_eq!(host, root.0.join("etc/shadow"));
        assert!(open_resolved(&host, &meta).is_err());
        let names: Vec<String> = etc
            .read_dir()
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"ssh".to_owned()), "{names:?}");
        // A directory swapped for a link is not opened as a directory.
        assert!(matches!(
            root.child(&root.root().unwrap(), "etc", &[]).unwrap(),
            Node::Leaf(..)
        ));
    }

    #[test]
    fn open_resolved_refuses_a_swapped_file() {
        let (dir, root) = tree();
        let Resolved::Found {
            node: Node::Leaf(host, meta),
            ..
        } = resolve(&root, "abs/shadow", true).unwrap()
        else {
            panic!("found");
        };
        let mut text = String::new();
        io::Read::read_to_string(&mut open_resolved(&host, &meta).unwrap(), &mut text).unwrap();
        assert_eq!(text, "inside");
        // The file becomes a link out of the tree, then another file.
        fs::remove_file(&host).unwrap();
        symlink(dir.path().join("etc/shadow"), &host).unwrap();
        assert!(open_resolved(&host, &meta).is_err());
        // A parent directory replaced by a link: another inode is opened.
        let etc = root.0.join("etc");
        fs::rename(&etc, root.0.join("old-etc")).unwrap();
        symlink(dir.path().join("etc"), &etc).unwrap();
        fs::remove_file(root.0.join("old-etc/shadow")).unwrap();
        assert!(open_resolved(&host, &meta).is_err());
    }
}
