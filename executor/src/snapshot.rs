//! Snapshots: each layer unpacked once into a directory named after its chain id.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, mkfifo, Gid, Uid};
use rustc_hash::FxHashSet;

use crate::error::{io_err, Error, Result};
use crate::files::{CreateAs, FileJob, FileMeta, FilePool, FILES_BEFORE_POOL, POOLED_MAX};
use crate::stream::read_ahead;

/// OCI whiteout file name prefix.
pub(crate) const WHITEOUT_PREFIX: &str = ".wh.";
/// OCI opaque-directory marker.
pub(crate) const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Unpacks layers into snapshot directories under one root and hands out their paths.
///
/// A snapshot holds one layer's own content in overlayfs form: OCI whiteouts
/// (`.wh.NAME`) become character devices 0:0 and `.wh..wh..opq` becomes the
/// `trusted.overlay.opaque=y` xattr (`user.overlay.opaque` in a user
/// namespace: see `userns`), so a stack of snapshots mounts directly as
/// overlayfs lower dirs. Snapshots are immutable once made.
///
/// A snapshot is derived data (its layer blob stays in the store), so it is
/// not synced to disk when made: `syncfs` there flushed every dirty page of
/// the filesystem, 0.4 s after a step that wrote 100 MB. Instead, a marker
/// in `.boot/` records the boot it was made in, written before the snapshot
/// is renamed into place. Within that boot the page cache is the truth; in a
/// later boot, after a crash that may have lost its files, the snapshot is
/// unpacked again. A snapshot is used only with a marker (of this boot, or
/// saying it was synced, where the boot is unknown), so the marker needs no
/// fsync of its own: one lost in a crash costs an unpack, never a snapshot
/// that lost its files. (That saves a disk flush on every step.)
#[derive(Debug, Clone)]
pub struct Snapshotter {
    root: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Where the snapshots' markers live, beside `.locks`.
const BOOT_MARKERS: &str = ".boot";
/// Where large snapshots are filled before their rename into place: a
/// directory whose new subdirectories the filesystem places as top-level
/// ones (see [`mark_top_of_trees`]), each in a block group of its own.
/// Small ones are filled beside the snapshots, where placing them costs
/// less (a fresh group's bitmaps are read cold: about 1 ms a snapshot).
const SPREAD: &str = ".spread";
/// Layers whose blob is at least this large are unpacked under [`SPREAD`].
const LARGE_LAYER: u64 = 8 << 20;

/// The marker of a snapshot synced to disk when made (the boot was unknown).
const SYNCED: &str = "synced";

/// This boot's id, which the kernel makes anew at every boot; `None` where
/// it cannot be read (snapshots are then synced when made).
fn boot_id() -> Option<&'static str> {
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|id| id.trim().to_owned())
                .filter(|id| !id.is_empty())
        })
        .as_deref()
}

impl Snapshotter {
    /// Uses (and creates) `dir` as the snapshot root. It must be on a filesystem
    /// that supports xattrs in the `trusted.` namespace, device nodes and
    /// overlayfs (ext4, xfs, btrfs).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let root = dir.into();
        for private in [".locks", BOOT_MARKERS] {
            fs::create_dir_all(root.join(private)).map_err(io_err("create", root.join(private)))?;
        }
        let spread = root.join(SPREAD);
        match fs::create_dir(&spread) {
            Ok(()) => mark_top_of_trees(&spread),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", &spread)(e)),
        }
        Ok(Self { root })
    }

    /// Whether the snapshot directory `name` is there and can be used: its
    /// marker says it was made in this boot, or synced. The marker is read
    /// first: a stale snapshot being replaced keeps its old marker until the
    /// new one is complete, so a concurrent reader never takes a directory
    /// that is about to go.
    fn is_ready(&self, name: &str) -> bool {
        let trusted = match fs::read_to_string(self.marker(name)) {
            Ok(made_in) => made_in == SYNCED || boot_id() == Some(made_in.trim()),
            Err(_) => false,
        };
        trusted && self.root.join(name).is_dir()
    }

    /// The snapshot root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the snapshot for `chain_id` lives (whether or not it exists yet).
    pub fn path(&self, chain_id: &str) -> Result<PathBuf> {
        Ok(self.root.join(snapshot_name(chain_id)?))
    }

    /// Whether the snapshot for `chain_id` is ready.
    pub fn exists(&self, chain_id: &str) -> Result<bool> {
        Ok(self.is_ready(&snapshot_name(chain_id)?))
    }

    /// Returns the snapshot directory of the layer whose chain id (over it and its
    /// parents) is `chain_id`, unpacking the stream from `open_layer` (the layer's
    /// uncompressed tar) first if it is not there yet.
    ///
    /// Concurrency-safe across threads and processes: a per-snapshot file lock makes
    /// one caller unpack while the others wait; the layer is unpacked into a
    /// temporary directory beside the snapshot and renamed into place, so a
    /// snapshot directory is always complete (see the type's docs for crashes).
    /// `open_layer` is not called when the snapshot exists.
    ///
    /// The layer is read (and so decompressed) on a thread of its own, ahead
    /// of the files being created, so the two overlap.
    pub fn prepare<R, E, F>(&self, chain_id: &str, open_layer: F) -> Result<PathBuf>
    where
        F: FnOnce() -> std::result::Result<R, E>,
        R: Read + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.prepare_sized(chain_id, 0, open_layer)
    }

    /// [`Snapshotter::prepare`] for a layer whose blob is `blob_size` bytes:
    /// a large one is unpacked where the filesystem gives it block groups of
    /// its own. (After a store was deleted, an ext4 without a journal checks
    /// each recently freed inode of a group before it reuses one: unpacking
    /// Debian's 6,675 files beside the snapshots took 1.2-1.9 s there.)
    pub fn prepare_sized<R, E, F>(
        &self,
        chain_id: &str,
        blob_size: u64,
        open_layer: F,
    ) -> Result<PathBuf>
    where
        F: FnOnce() -> std::result::Result<R, E>,
        R: Read + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let spread = blob_size >= LARGE_LAYER;
        self.prepare_with(chain_id, spread, |temp| {
            let reader = open_layer().map_err(|e| Error::OpenLayer {
                chain_id: chain_id.to_owned(),
                source: e.into(),
            })?;
            read_ahead(reader, |layer| unpack_layer(layer, temp, chain_id))
        })
    }

    /// Returns the snapshot directory named `id` (`kind:hex`, e.g. a content
    /// digest), filling it with `fill` first if it is not there yet: a tree
    /// that is not a layer but is as costly to make and as immutable (the
    /// build context as RUN bind mounts show it). Same guarantees as
    /// [`Snapshotter::prepare`].
    pub fn prepare_tree<E, F>(&self, id: &str, fill: F) -> Result<PathBuf>
    where
        F: FnOnce(&Path) -> std::result::Result<(), E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.prepare_with(id, false, |temp| {
            fill(temp).map_err(|e| Error::FillTree {
                id: id.to_owned(),
                source: e.into(),
            })
        })
    }

    fn prepare_with(
        &self,
        id: &str,
        spread: bool,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        let name = snapshot_name(id)?;
        let target = self.root.join(&name);
        if self.is_ready(&name) {
            return Ok(target);
        }
        let _lock = self.lock(&name)?;
        if self.is_ready(&name) {
            return Ok(target);
        }
        let temp = self.temp_dir(&name, spread);
        let result = (|| {
            fs::create_dir(&temp).map_err(io_err("create", &temp))?;
            fill(&temp)?;
            self.put_in_place(&name, &temp)
        })();
        if result.is_err() {
            let _ = remove_tree(&temp);
        }
        result.map(|()| target)
    }

    /// Takes the per-snapshot lock of `name`: one process fills or replaces
    /// a snapshot at a time.
    fn lock(&self, name: &str) -> Result<Flock<File>> {
        let lock_path = self.root.join(".locks").join(name);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open lock", &lock_path))?;
        Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, errno)| Error::Io {
            action: "lock",
            path: lock_path.clone(),
            source: errno.into(),
        })
    }

    /// A fresh temporary directory name for snapshot `name` (`.tmp-*`, which
    /// prune removes when a killed kiln left one): beside the snapshots, or
    /// under [`SPREAD`] for a `large` one.
    pub(crate) fn temp_dir(&self, name: &str, large: bool) -> PathBuf {
        let parent = if large {
            self.root.join(SPREAD)
        } else {
            self.root.clone()
        };
        parent.join(format!(
            ".tmp-{name}-{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Moves the filled directory `temp` into place as snapshot `name`, with
    /// the lock held: a stale snapshot of an earlier boot is replaced (moved
    /// aside first so no reader finds it half removed), and the snapshot is
    /// made durable (see the type's docs) before the rename.
    fn put_in_place(&self, name: &str, temp: &Path) -> Result<()> {
        let target = self.root.join(name);
        if target.is_dir() {
            let stale = PathBuf::from(format!("{}-stale", temp.display()));
            fs::rename(&target, &stale).map_err(io_err("move aside", &target))?;
            remove_tree(&stale).map_err(io_err("remove", &stale))?;
        }
        self.make_durable(name, temp)?;
        fs::rename(temp, &target).map_err(io_err("rename into place", &target))
    }

    /// Makes the directory `temp`, filled outside the lock, the snapshot of
    /// `chain_id` (see [`crate::SnapshotStream`]); when another caller made
    /// that snapshot meanwhile, `temp` is removed and theirs is kept.
    pub(crate) fn adopt(&self, chain_id: &str, temp: &Path) -> Result<PathBuf> {
        let name = snapshot_name(chain_id)?;
        let target = self.root.join(&name);
        let _lock = self.lock(&name)?;
        if self.is_ready(&name) {
            remove_tree(temp).map_err(io_err("remove", temp))?;
            return Ok(target);
        }
        self.put_in_place(&name, temp)?;
        Ok(target)
    }

    /// Deletes the snapshot for `chain_id` if it exists (for prune). The caller
    /// makes sure no build uses it.
    pub fn remove(&self, chain_id: &str) -> Result<()> {
        let name = snapshot_name(chain_id)?;
        let path = self.root.join(&name);
        // The marker first: a crash halfway leaves a snapshot no one uses.
        self.remove_marker(&name)?;
        match fs::symlink_metadata(&path) {
            Ok(_) => remove_tree(&path).map_err(io_err("remove", &path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("inspect", &path)(e)),
        }
    }

    fn marker(&self, name: &str) -> PathBuf {
        self.root.join(BOOT_MARKERS).join(name)
    }

    fn remove_marker(&self, name: &str) -> Result<()> {
        let marker = self.marker(name);
        match fs::remove_file(&marker) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &marker)(e)),
            _ => Ok(()),
        }
    }

    /// Readies the filled directory `temp` of snapshot `name` for its rename
    /// into place: a marker of this boot or, where the boot is unknown, a
    /// sync of the whole filesystem and a synced marker saying so. (A marker
    /// of this boot that a crash loses, or turns back into an earlier boot's,
    /// only makes the snapshot be unpacked again. A synced marker is never
    /// overwritten: its snapshot is always ready, and prune and
    /// [`Snapshotter::remove`] remove the marker before the snapshot.)
    fn make_durable(&self, name: &str, temp: &Path) -> Result<()> {
        let marker = self.marker(name);
        match boot_id() {
            Some(boot) => fs::write(&marker, boot).map_err(io_err("write", &marker)),
            None => {
                let dir = File::open(temp).map_err(io_err("open", temp))?;
                nix::unistd::syncfs(&dir).map_err(|e| Error::Io {
                    action: "sync",
                    path: temp.to_path_buf(),
                    source: e.into(),
                })?;
                let mut file = File::create(&marker).map_err(io_err("create", &marker))?;
                std::io::Write::write_all(&mut file, SYNCED.as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(io_err("write", &marker))
            }
        }
    }
}

/// Marks `dir` as the top of separate directory trees, best effort: on
/// ext2/3/4 (`FS_TOPDIR_FL`, `chattr +T`) each new directory made in it is
/// then placed in a block group of its own, as top-level ones are, rather
/// than beside its siblings. After a store (or a prune) freed many inodes,
/// an ext4 without a journal checks every recently freed inode of a group
/// one by one before it reuses one: creating 20,000 files there took 1.1-2.1
/// s, and 0.55 s in a group of their own. Other filesystems do not have the
/// flag; nothing changes there.
fn mark_top_of_trees(dir: &Path) {
    if let Ok(dir) = File::open(dir) {
        let _ = crate::sys::set_topdir_flag(&dir);
    }
}

/// Removes a directory tree, first making directories writable (snapshots and
/// overlay work dirs contain read-only and mode-000 directories).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            for entry in walk_dirs(path) {
                let _ = fs::set_permissions(&entry, fs::Permissions::from_mode(0o700));
            }
            fs::remove_dir_all(path)
        }
    }
}

fn walk_dirs(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let _ = fs::set_permissions(&out[i], fs::Permissions::from_mode(0o700));
        if let Ok(entries) = fs::read_dir(&out[i]) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(entry.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// `sha256:abc` -> `sha256_abc`: a directory name that is safe in overlayfs
/// options (no `:` or `,`) and cannot climb out of the snapshot root.
fn snapshot_name(chain_id: &str) -> Result<String> {
    let valid = !chain_id.is_empty()
        && chain_id.len() <= 200
        && chain_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'-' || b == b'.')
        && !chain_id.starts_with('.');
    if !valid {
        return Err(Error::InvalidChainId(chain_id.to_owned()));
    }
    Ok(chain_id.replace(':', "_"))
}

/// Cleans a tar entry path lexically the way containerd does: `..` cannot climb
/// above the root, `.` and empty components vanish. Returns the components.
fn clean_components(path: &Path) -> Vec<&OsStr> {
    let mut parts: Vec<&OsStr> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    parts
}

struct Unpacker<'a> {
    root: &'a Path,
    chain_id: &'a str,
    /// Directory mtimes to set once everything inside them is written.
    dir_times: HashMap<PathBuf, i64>,
    /// Directories known to be real directories in the snapshot (made or
    /// checked), so a path's parents are looked at once, not per entry.
    /// Keyed by the path's bytes: hashing a `Path` walks its components,
    /// which cost more than the lookups of a layer of small files.
    dirs: FxHashSet<OsString>,
    /// The last entry's parent components and their directory, all in
    /// `dirs`: consecutive entries mostly share a parent. Forgotten when
    /// anything leaves `dirs`.
    last_parent: Option<(Vec<OsString>, PathBuf)>,
    /// The buffer file contents are copied through.
    buffer: Vec<u8>,
    /// Workers that create small regular files, started once the layer has
    /// [`FILES_BEFORE_POOL`] files; `None` before that and on one CPU.
    pool: Option<FilePool>,
    /// Every path made so far that is not a directory (files possibly still
    /// being written by the pool): a later entry at one of them, or under
    /// one, waits for the pool first. A path that is neither here nor in
    /// `dirs` does not exist yet, the snapshot having started empty.
    created: FxHashSet<OsString>,
    /// What creating a regular file gives it here (owner, mode).
    create: CreateAs,
}

impl Unpacker<'_> {
    fn bad(&self, entry: &Path, reason: impl Into<String>) -> Error {
        Error::BadLayer {
            chain_id: self.chain_id.to_owned(),
            entry: entry.display().to_string(),
            reason: reason.into(),
        }
    }

    /// Makes sure every parent of `parts` is a real directory inside the root,
    /// creating missing ones; refuses to go through symlinks or files so nothing
    /// can be written outside the snapshot.
    fn parent_dir(&mut self, entry: &Path, parts: &[&OsStr]) -> Result<PathBuf> {
        if let Some((last, dir)) = &self.last_parent {
            if last
                .iter()
                .map(OsString::as_os_str)
                .eq(parts.iter().copied())
            {
                return Ok(dir.clone());
            }
        }
        let mut dir = self.root.to_path_buf();
        for part in parts {
            dir.push(part);
            if self.dirs.contains(dir.as_os_str()) {
                continue;
            }
            if self.created.contains(dir.as_os_str()) {
                self.settle()?;
            }
            match fs::symlink_metadata(&dir) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(self.bad(
                        entry,
                        format!(
                            "its parent {} is not a directory in the layer",
                            Path::new(part).display()
                        ),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&dir).map_err(io_err("create", &dir))?;
                }
                Err(e) => return Err(io_err("inspect", &dir)(e)),
            }
            self.dirs.insert(dir.clone().into_os_string());
        }
        let parts = parts.iter().map(|p| p.to_os_string()).collect();
        self.last_parent = Some((parts, dir.clone()));
        Ok(dir)
    }

    fn unpack_entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let raw_path = entry
            .path()
            .map_err(io_err("read entry path in layer", self.chain_id))?
            .into_owned();
        let parts = clean_components(&raw_path);
        let Some((name, parents)) = parts.split_last() else {
            // The root directory itself: nothing to create.
            return Ok(());
        };
        let parent = self.parent_dir(&raw_path, parents)?;
        let name_bytes = name.as_bytes();

        if name_bytes == OPAQUE_MARKER.as_bytes() {
            crate::userns::mark_opaque(&parent).map_err(io_err("set opaque xattr on", &parent))?;
            return Ok(());
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(&raw_path, &parent, hidden);
        }

        let path = parent.join(name);
        let meta = self.entry_meta(&mut entry, &raw_path, &path)?;
        let kind = entry.header().entry_type();
        if kind.is_file() || kind == tar::EntryType::Continuous || kind == tar::EntryType::GNUSparse
        {
            return self.unpack_file(entry, path, meta);
        }
        // Something there may still be being written (a file, or files
        // inside a directory that is about to be replaced).
        let key = path.as_os_str();
        if self.created.contains(key) || (!kind.is_dir() && self.dirs.contains(key)) {
            self.settle()?;
        }
        if kind.is_dir() {
            self.make_dir(&path)?;
        } else {
            if self.dirs.contains(path.as_os_str()) || fs::symlink_metadata(&path).is_ok() {
                self.remove_existing(&path)?;
            }
            if !self.make_other(&entry, &raw_path, &path, meta.mode)? {
                return Ok(());
            }
            self.created.insert(path.clone().into_os_string());
        }
        self.apply_meta(&raw_path, &path, kind, meta)
    }

    /// Hides `hidden` in `parent` with a whiteout (a 0:0 character device).
    fn whiteout(&mut self, raw_path: &Path, parent: &Path, hidden: &[u8]) -> Result<()> {
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(self.bad(raw_path, "whiteout names no file"));
        }
        let path = parent.join(OsStr::from_bytes(hidden));
        self.settle()?;
        self.remove_existing(&path)?;
        mknod(&path, SFlag::S_IFCHR, Mode::empty(), 0).map_err(|e| Error::Io {
            action: "create whiteout",
            path: path.clone(),
            source: e.into(),
        })?;
        self.created.insert(path.into_os_string());
        Ok(())
    }

    /// An entry's mode, owner, mtime and xattrs (`path`: where it goes, for
    /// errors).
    fn entry_meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        raw_path: &Path,
        path: &Path,
    ) -> Result<FileMeta> {
        let header = entry.header();
        let mode = header
            .mode()
            .map_err(|e| self.bad(raw_path, format!("bad mode: {e}")))?
            & 0o7777;
        let uid = header
            .uid()
            .map_err(|e| self.bad(raw_path, format!("bad uid: {e}")))?;
        let gid = header
            .gid()
            .map_err(|e| self.bad(raw_path, format!("bad gid: {e}")))?;
        let mtime = header.mtime().unwrap_or(0) as i64;
        let xattrs = read_xattrs(entry).map_err(io_err("read xattrs of", path))?;
        Ok(FileMeta {
            mode,
            uid: uid as u32,
            gid: gid as u32,
            mtime,
            xattrs,
        })
    }

    /// A regular file: small fresh ones go to the file pool (once there are
    /// enough files for it to pay), the others are written here.
    fn unpack_file<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        path: PathBuf,
        meta: FileMeta,
    ) -> Result<()> {
        let key = path.as_os_str();
        let fresh = !self.created.contains(key) && !self.dirs.contains(key);
        self.created.insert(path.clone().into_os_string());
        if self.pool.is_none() && self.created.len() == FILES_BEFORE_POOL {
            self.pool = FilePool::start();
        }
        if fresh && entry.size() <= POOLED_MAX {
            if let Some(pool) = &mut self.pool {
                let mut data = Vec::with_capacity(entry.size() as usize);
                entry
                    .read_to_end(&mut data)
                    .map_err(io_err("read", &path))?;
                return pool.submit(FileJob {
                    path,
                    data,
                    meta,
                    create: self.create,
                });
            }
        }
        if !fresh {
            self.settle()?;
        }
        self.write_file(&path, &mut entry, &meta)
    }

    /// A directory, kept if one is there already (replacing anything else).
    fn make_dir(&mut self, path: &Path) -> Result<()> {
        if !self.dirs.contains(path.as_os_str()) {
            match fs::symlink_metadata(path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    self.remove_existing(path)?;
                    fs::create_dir(path).map_err(io_err("create", path))?;
                }
                Err(_) => fs::create_dir(path).map_err(io_err("create", path))?,
            }
        }
        self.dirs.insert(path.as_os_str().to_os_string());
        Ok(())
    }

    /// A symlink, hard link, device or FIFO at `path` (where nothing is).
    /// `false` when the entry needs no metadata of its own: a hard link (it
    /// shares its target's inode), a device a user namespace cannot make,
    /// or a pax/GNU extension header.
    fn make_other<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        raw_path: &Path,
        path: &Path,
        mode: u32,
    ) -> Result<bool> {
        let header = entry.header();
        let kind = header.entry_type();
        let link_target = |what: &str| {
            entry
                .link_name()
                .map_err(|e| self.bad(raw_path, format!("bad link target: {e}")))?
                .ok_or_else(|| self.bad(raw_path, format!("{what} without a target")))
        };
        if kind.is_symlink() {
            let target = link_target("symlink")?;
            symlink(&target, path).map_err(io_err("create symlink", path))?;
        } else if kind.is_hard_link() {
            let target = link_target("hard link")?.into_owned();
            self.hard_link(raw_path, &target, path)?;
            return Ok(false);
        } else if kind.is_character_special() || kind.is_block_special() {
            if crate::userns::in_user_namespace() {
                // A user namespace cannot make device nodes (as with
                // rootless podman, the snapshot lacks them; the layer
                // blob, which images use, keeps them).
                return Ok(false);
            }
            let major = header.device_major().ok().flatten().unwrap_or(0) as u64;
            let minor = header.device_minor().ok().flatten().unwrap_or(0) as u64;
            let flag = if kind.is_character_special() {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            mknod(
                path,
                flag,
                Mode::from_bits_truncate(mode),
                nix::sys::stat::makedev(major, minor),
            )
            .map_err(|e| Error::Io {
                action: "create device",
                path: path.to_path_buf(),
                source: e.into(),
            })?;
        } else if kind.is_fifo() {
            mkfifo(path, Mode::from_bits_truncate(mode)).map_err(|e| Error::Io {
                action: "create fifo",
                path: path.to_path_buf(),
                source: e.into(),
            })?;
        } else if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            return Ok(false);
        } else {
            return Err(self.bad(raw_path, format!("unsupported entry type {:?}", kind)));
        }
        Ok(true)
    }

    /// A hard link at `path` to `target`, which must be a file this layer
    /// already unpacked.
    fn hard_link(&mut self, raw_path: &Path, target: &Path, path: &Path) -> Result<()> {
        // Its target may still be being written.
        self.settle()?;
        let target_parts = clean_components(target);
        let Some((target_name, target_parents)) = target_parts.split_last() else {
            return Err(self.bad(raw_path, "hard link to the root directory"));
        };
        let mut source = self.root.to_path_buf();
        for part in target_parents {
            source.push(part);
            if !fs::symlink_metadata(&source).is_ok_and(|m| m.is_dir()) {
                return Err(self.bad(
                    raw_path,
                    format!("hard link target {} is not in this layer", target.display()),
                ));
            }
        }
        source.push(target_name);
        match fs::symlink_metadata(&source) {
            Ok(meta) if !meta.is_dir() => {}
            _ => {
                return Err(self.bad(
                    raw_path,
                    format!(
                        "hard link target {} is not a file in this layer",
                        target.display()
                    ),
                ))
            }
        }
        fs::hard_link(&source, path).map_err(io_err("create hard link", path))?;
        self.created.insert(path.as_os_str().to_os_string());
        Ok(())
    }

    /// Owner, mode, xattrs and mtime of a non-regular entry (a directory's
    /// mtime is set once everything inside it is).
    fn apply_meta(
        &mut self,
        raw_path: &Path,
        path: &Path,
        kind: tar::EntryType,
        meta: FileMeta,
    ) -> Result<()> {
        let FileMeta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        } = meta;
        // Ownership before mode: chown clears setuid/setgid bits.
        fchownat(
            nix::fcntl::AT_FDCWD,
            path,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| {
            crate::userns::unmapped_owner(uid, gid, || {
                format!("{} in layer {}", raw_path.display(), self.chain_id)
            })
            .unwrap_or_else(|| Error::Io {
                action: "chown",
                path: path.to_path_buf(),
                source: e.into(),
            })
        })?;
        let is_symlink = kind.is_symlink();
        if !is_symlink {
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(io_err("chmod", path))?;
        }
        if kind.is_dir() && mode & 0o2000 != 0 {
            self.create.setgid_directory_made();
        }
        for (key, value) in &xattrs {
            if is_symlink && !key.starts_with("trusted.") && !key.starts_with("security.") {
                // user.* xattrs are not allowed on symlinks.
                continue;
            }
            xattr::set(path, key, value).map_err(io_err("set xattr on", path))?;
        }
        if kind.is_dir() {
            self.dir_times.insert(path.to_path_buf(), mtime);
        } else {
            set_mtime(path, mtime)?;
        }
        Ok(())
    }

    /// Waits for the files handed to the pool (and reports their failure).
    fn settle(&mut self) -> Result<()> {
        match &mut self.pool {
            Some(pool) => pool.wait(),
            None => Ok(()),
        }
    }

    /// Creates the regular file `path` with `data` and `meta`, replacing
    /// what is there. Everything after the create goes through the open
    /// descriptor: no path is looked up again.
    fn write_file(&mut self, path: &Path, data: &mut dyn Read, meta: &FileMeta) -> Result<()> {
        let (mut file, created) = match meta.create(path, self.create) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_existing(path)?;
                meta.create(path, self.create)
            }
            other => other,
        }
        .map_err(io_err("create", path))?;
        if self.buffer.is_empty() {
            self.buffer = vec![0; COPY_BUFFER];
        }
        loop {
            let n = match data.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("write", path)(e)),
            };
            io::Write::write_all(&mut file, &self.buffer[..n]).map_err(io_err("write", path))?;
        }
        meta.apply(&file, path, created)
    }

    fn remove_existing(&mut self, path: &Path) -> Result<()> {
        self.dirs.retain(|p| !Path::new(p).starts_with(path));
        self.last_parent = None;
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => {
                self.dir_times.retain(|p, _| !p.starts_with(path));
                remove_tree(path).map_err(io_err("replace", path))
            }
            Ok(_) => fs::remove_file(path).map_err(io_err("replace", path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("inspect", path)(e)),
        }
    }
}

/// How many bytes of a file's data are copied at once.
const COPY_BUFFER: usize = 256 * 1024;

/// A file that is neither a regular file, a directory nor a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialFile {
    /// A character device.
    Char {
        /// The device's major number.
        major: u64,
        /// The device's minor number.
        minor: u64,
    },
    /// A block device.
    Block {
        /// The device's major number.
        major: u64,
        /// The device's minor number.
        minor: u64,
    },
    /// A named pipe.
    Fifo,
}

impl SpecialFile {
    /// What `meta` (an `lstat`) is, when it is a device or a FIFO.
    pub fn of(meta: &fs::Metadata) -> Option<SpecialFile> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let kind = meta.file_type();
        let (major, minor) = (
            nix::sys::stat::major(meta.rdev()),
            nix::sys::stat::minor(meta.rdev()),
        );
        if kind.is_char_device() {
            Some(SpecialFile::Char { major, minor })
        } else if kind.is_block_device() {
            Some(SpecialFile::Block { major, minor })
        } else if kind.is_fifo() {
            Some(SpecialFile::Fifo)
        } else {
            None
        }
    }

    /// Creates it at `path` with permission bits `mode` and modification
    /// time `mtime` (seconds since the epoch; devices need root). Owners are
    /// the caller's to set.
    pub fn create(self, path: &Path, mode: u32, mtime: i64) -> Result<()> {
        let perm = Mode::from_bits_truncate(mode & 0o7777);
        let (flag, dev) = match self {
            SpecialFile::Char { major, minor } => {
                (SFlag::S_IFCHR, nix::sys::stat::makedev(major, minor))
            }
            SpecialFile::Block { major, minor } => {
                (SFlag::S_IFBLK, nix::sys::stat::makedev(major, minor))
            }
            SpecialFile::Fifo => (SFlag::S_IFIFO, 0),
        };
        mknod(path, flag, perm, dev).map_err(|e| Error::Io {
            action: "create special file",
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        // mknod is subject to the umask.
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(io_err("chmod", path))?;
        set_mtime(path, mtime)
    }
}

pub(crate) fn set_mtime(path: &Path, mtime: i64) -> Result<()> {
    let time = TimeSpec::new(mtime, 0);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &time,
        &time,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| Error::Io {
        action: "set mtime of",
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// The entry's `SCHILY.xattr.*` records, without overlayfs' private ones (a layer
/// must not steer overlayfs through redirect or origin xattrs).
fn read_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(extensions) = entry.pax_extensions()? {
        for extension in extensions {
            let extension = extension?;
            let Ok(key) = extension.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                if !crate::userns::is_overlay_xattr(name) && !name.is_empty() {
                    out.push((name.to_owned(), extension.value_bytes().to_vec()));
                }
            }
        }
    }
    Ok(out)
}

/// Unpacks an OCI layer tar into `dir` in overlayfs form (see [`Snapshotter`]).
pub(crate) fn unpack_layer<R: Read>(reader: R, dir: &Path, chain_id: &str) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    let mut unpacker = Unpacker {
        root: dir,
        chain_id,
        dir_times: HashMap::new(),
        dirs: FxHashSet::default(),
        last_parent: None,
        buffer: Vec::new(),
        pool: None,
        created: FxHashSet::default(),
        create: CreateAs::under(dir),
    };
    let entries = archive
        .entries()
        .map_err(io_err("read layer for", chain_id))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::BadLayer {
            chain_id: chain_id.to_owned(),
            entry: String::new(),
            reason: format!("unreadable tar: {e}"),
        })?;
        unpacker.unpack_entry(entry)?;
    }
    // Every file is written before the directories get their times.
    unpacker.settle()?;
    for (path, mtime) in &unpacker.dir_times {
        set_mtime(path, *mtime)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_map_to_safe_names() {
        assert_eq!(snapshot_name("sha256:ab12").unwrap(), "sha256_ab12");
        assert!(snapshot_name("../x").is_err());
        assert!(snapshot_name("a/b").is_err());
        assert!(snapshot_name("a,b").is_err());
        assert!(snapshot_name("").is_err());
    }

    #[test]
    fn parent_components_cannot_climb_out() {
        let parts = clean_components(Path::new("../../etc/./passwd"));
        assert_eq!(parts, vec![OsStr::new("etc"), OsStr::new("passwd")]);
        let parts = clean_components(Path::new("/a/b/../../../c"));
        assert_eq!(parts, vec![OsStr::new("c")]);
    }
}
