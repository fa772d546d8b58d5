//! Where COPY, ADD and bind mounts read files: the build context (filtered by
//! `.dockerignore`) or another stage's or image's filesystem. Selecting sources
//! (literal paths and wildcards) and the content digests that go into cache
//! keys live here too.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use kiln_executor::{open_resolved, resolve, Node, OpenDir, Resolved, ScopedTree};
use kiln_frontend::{Key, KeyEncoder};
use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::dockerignore::IgnoreRules;
use crate::error::{io_err, poisoned, Error, Result};
use crate::pattern::{clean_relative, has_wildcards, Pattern};

/// One file, directory or symlink of a source tree.
#[derive(Debug, Clone)]
pub(crate) struct SourceEntry {
    /// Slash-separated path relative to the source root, `.` for the root.
    pub(crate) rel: String,
    /// Where to read it on the host.
    pub(crate) host: PathBuf,
    /// `lstat` of `host`.
    pub(crate) meta: Metadata,
}

/// A tree COPY can read from.
pub(crate) trait SourceFs: Sync {
    /// The entry at `rel` (cleaned, relative); `None` when it is missing or
    /// excluded. With `follow`, a symlink at `rel` is followed.
    fn entry(&self, rel: &str, follow: bool) -> Result<Option<SourceEntry>>;
    /// The names in directory `rel` that are not excluded, sorted.
    fn children(&self, rel: &str) -> Result<Vec<String>>;
    /// The entries in directory `rel` that are not excluded, sorted by name,
    /// symlinks not followed.
    fn list_dir(&self, rel: &str) -> Result<Vec<SourceEntry>> {
        let mut entries = Vec::new();
        for name in self.children(rel)? {
            if let Some(entry) = self.entry(&join_rel(rel, &name), false)? {
                entries.push(entry);
            }
        }
        Ok(entries)
    }
    /// A digest of one regular file's bytes.
    fn file_digest(&self, entry: &SourceEntry) -> Result<[u8; 32]> {
        hash_file(entry)
    }
    /// Tells the source each digest is the [`Self::file_digest`] of its
    /// entry, found by whoever read its bytes (the layer writer): a source
    /// that remembers digests remembers these too.
    fn learn_digests(&self, found: &[(&SourceEntry, [u8; 32])]) -> Result<()> {
        let _ = found;
        Ok(())
    }
    /// Keeps what [`walk`] found under `top` for one later [`Self::take_walk`]
    /// of the same top (the cache key's digest walks a source, then the COPY
    /// that missed the cache walks it again). Sources that cannot keep walks
    /// drop them.
    fn keep_walk(&self, top: &SourceEntry, entries: Vec<SourceEntry>) {
        let _ = (top, entries);
    }
    /// The walk kept for `top` (same path, same directory), if any; it is
    /// handed out once.
    fn take_walk(&self, top: &SourceEntry) -> Option<Vec<SourceEntry>> {
        let _ = top;
        None
    }
}

/// Walks from [`SourceFs::take_walk`] if one was kept for `top`, or a fresh
/// [`walk`].
pub(crate) fn walk_once_more(fs: &dyn SourceFs, top: &SourceEntry) -> Result<Vec<SourceEntry>> {
    match fs.take_walk(top) {
        Some(entries) => Ok(entries),
        None => walk(fs, top),
    }
}

/// Joins a relative directory and a name.
pub(crate) fn join_rel(dir: &str, name: &str) -> String {
    if dir == "." || dir.is_empty() {
        name.to_string()
    } else {
        let mut joined = String::with_capacity(dir.len() + 1 + name.len());
        joined.push_str(dir);
        joined.push('/');
        joined.push_str(name);
        joined
    }
}

thread_local! {
    /// One read buffer per hashing thread: zeroing a fresh 256 KiB buffer
    /// for each of 20,000 small files cost more than hashing them.
    static HASH_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn hash_file(entry: &SourceEntry) -> Result<[u8; 32]> {
    let path = &entry.host;
    let mut file = open_resolved(path, &entry.meta).map_err(io_err(path))?;
    let mut hasher = blake3::Hasher::new();
    HASH_BUFFER.with_borrow_mut(|buf| {
        buf.resize(256 * 1024, 0);
        // The listed size, as the layer writer copies it: no read is spent
        // finding the end.
        let mut left = entry.meta.len();
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = file
                .read(buf.get_mut(..want).unwrap_or_default())
                .map_err(io_err(path))?;
            if n == 0 {
                break;
            }
            hasher.update(buf.get(..n).unwrap_or_default());
            left -= n as u64;
        }
        Ok(*hasher.finalize().as_bytes())
    })
}

/// The build context: a directory, `.dockerignore` rules and a stat cache.
#[derive(Debug)]
pub struct BuildContext {
    root: PathBuf,
    /// The root held open: every path is resolved from it (see [`OpenDir`]).
    root_dir: OpenDir,
    ignore: IgnoreRules,
    /// What earlier builds learned, read once; never changed, so the many
    /// hashing threads read it without a lock.
    known: StatCache,
    /// What this build learned, saved with `known` when not empty.
    learned: Mutex<HashMap<String, StatRecord>>,
    /// How many of `learned` the stat cache file holds.
    saved_records: AtomicUsize,
    stat_cache_file: Option<PathBuf>,
    /// Walks kept between a COPY's key and its run (see
    /// [`SourceFs::keep_walk`]), by the top's path, device and inode.
    kept_walks: Mutex<KeptWalks>,
}

/// Walks kept for one more use, at most [`KeptWalks::MAX_ENTRIES`] entries
/// in all (~300 bytes each), so that the keys of a huge context's COPYs that
/// then hit the cache hold little memory until the build ends.
#[derive(Debug, Default)]
struct KeptWalks {
    walks: HashMap<(String, u64, u64), Vec<SourceEntry>>,
    entries: usize,
}

impl KeptWalks {
    const MAX_ENTRIES: usize = 200_000;

    fn key(top: &SourceEntry) -> (String, u64, u64) {
        (top.rel.clone(), top.meta.dev(), top.meta.ino())
    }
}

/// What a previous build learned about a context file: if size, mtime, ctime
/// and inode are unchanged, its digest is too.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StatRecord {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
    digest: [u8; 32],
}

/// The stat cache file: this magic line, the context root, then one record
/// per file (path, size, mtime, ctime, inode, digest), little-endian with
/// u32-length-prefixed strings, written in path order. Binary because a warm
/// build of a large context reads it whole before anything else: parsing
/// 20,000 JSON records and their hex digests cost more than stat-ing the
/// files.
const STAT_CACHE_MAGIC: &[u8] = b"kiln stat cache v2\n";

/// The records of a stat cache file, sorted by path for binary search:
/// decoding into a hash map (hashing and inserting 20,000 paths) was the
/// largest serial part of a warm build of a large context.
#[derive(Debug, Default)]
struct StatCache {
    records: Vec<(Box<str>, StatRecord)>,
}

impl StatCache {
    fn from_unsorted(mut records: Vec<(Box<str>, StatRecord)>) -> StatCache {
        if !records.is_sorted_by(|a, b| a.0 < b.0) {
            // Files written before records were sorted, or damaged ones.
            records.sort_by(|a, b| a.0.cmp(&b.0));
            records.dedup_by(|later, earlier| later.0 == earlier.0);
        }
        StatCache { records }
    }

    fn get(&self, path: &str) -> Option<&StatRecord> {
        let found = self
            .records
            .binary_search_by(|(known, _)| known.as_ref().cmp(path))
            .ok()?;
        self.records.get(found).map(|(_, record)| record)
    }
}

fn encode_stat_cache<'a>(
    root: &str,
    records: impl Iterator<Item = (&'a str, &'a StatRecord)>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let put_str = |out: &mut Vec<u8>, text: &str| {
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    };
    out.extend_from_slice(STAT_CACHE_MAGIC);
    put_str(&mut out, root);
    for (path, record) in records {
        put_str(&mut out, path);
        out.extend_from_slice(&record.size.to_le_bytes());
        out.extend_from_slice(&record.mtime_ns.to_le_bytes());
        out.extend_from_slice(&record.ctime_ns.to_le_bytes());
        out.extend_from_slice(&record.inode.to_le_bytes());
        out.extend_from_slice(&record.digest);
    }
    out
}

/// The records of a stat cache file made for `root`; `None` when the file
/// is damaged, of another format or of another root.
fn decode_stat_cache(bytes: &[u8], root: &str) -> Option<StatCache> {
    struct Cursor<'a>(&'a [u8]);
    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
            self.0 = rest;
            Some(head)
        }
        fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
            self.take(N)?.try_into().ok()
        }
        fn string(&mut self) -> Option<&'a str> {
            let len = u32::from_le_bytes(self.array()?) as usize;
            std::str::from_utf8(self.take(len)?).ok()
        }
    }
    let mut cursor = Cursor(bytes.strip_prefix(STAT_CACHE_MAGIC)?);
    if cursor.string()? != root {
        return None;
    }
    // Each record takes at least 84 bytes: a length, the numbers, the digest.
    let mut records = Vec::with_capacity(cursor.0.len() / 84);
    while !cursor.0.is_empty() {
        let path = Box::<str>::from(cursor.string()?);
        let record = StatRecord {
            size: u64::from_le_bytes(cursor.array()?),
            mtime_ns: i128::from_le_bytes(cursor.array()?),
            ctime_ns: i128::from_le_bytes(cursor.array()?),
            inode: u64::from_le_bytes(cursor.array()?),
            digest: cursor.array()?,
        };
        records.push((path, record));
    }
    Some(StatCache::from_unsorted(records))
}

fn stat_fields(meta: &Metadata) -> (u64, i128, i128, u64) {
    (
        meta.size(),
        i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        meta.ino(),
    )
}

impl BuildContext {
    /// A context rooted at `root`; `stat_cache_dir` (the store's state dir)
    /// keeps file digests between builds, `None` disables that.
    pub fn new(
        root: impl Into<PathBuf>,
        ignore: IgnoreRules,
        stat_cache_dir: Option<&Path>,
    ) -> Result<BuildContext> {
        let root = root.into();
        let root = root.canonicalize().map_err(io_err(&root))?;
        let stat_cache_file = stat_cache_dir.map(|dir| {
            let name = blake3::hash(root.as_os_str().as_encoded_bytes()).to_hex();
            dir.join(format!("context-{}.bin", &name[..32]))
        });
        // A damaged or foreign cache file only costs re-reading files.
        let known = stat_cache_file
            .as_ref()
            .and_then(|file| std::fs::read(file).ok())
            .and_then(|bytes| decode_stat_cache(&bytes, &root.to_string_lossy()))
            .unwrap_or_default();
        let root_dir = OpenDir::open(&root).map_err(io_err(&root))?;
        Ok(BuildContext {
            root,
            root_dir,
            ignore,
            known,
            learned: Mutex::new(HashMap::new()),
            saved_records: AtomicUsize::new(0),
            stat_cache_file,
            kept_walks: Mutex::default(),
        })
    }

    /// An empty context (the Dockerfile came on stdin): every COPY fails.
    pub fn empty() -> Result<BuildContext> {
        let dir = std::env::temp_dir();
        let mut context = BuildContext::new(dir, IgnoreRules::default(), None)?;
        context.ignore = IgnoreRules::parse("**", Path::new("<stdin>"))?;
        Ok(context)
    }

    /// The context directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes the stat cache back, atomically, when it learned anything
    /// since it was last written.
    pub fn save_stat_cache(&self) -> Result<()> {
        let Some(file) = &self.stat_cache_file else {
            return Ok(());
        };
        let learned = self.learned.lock().map_err(poisoned("stat cache"))?;
        // Records are only ever added.
        if learned.len() == self.saved_records.load(Ordering::Relaxed) {
            return Ok(());
        }
        let dir = file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut records: Vec<(&str, &StatRecord)> = self
            .known
            .records
            .iter()
            .map(|(path, record)| (path.as_ref(), record))
            .filter(|(path, _)| !learned.contains_key(*path))
            .chain(learned.iter().map(|(path, record)| (path.as_str(), record)))
            .collect();
        records.sort_unstable_by_key(|(path, _)| *path);
        let bytes = encode_stat_cache(&self.root.to_string_lossy(), records.into_iter());
        let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
        std::io::Write::write_all(&mut temp, &bytes).map_err(io_err(file))?;
        temp.persist(file).map_err(|e| Error::Io {
            path: file.clone(),
            error: e.error,
        })?;
        self.saved_records.store(learned.len(), Ordering::Relaxed);
        Ok(())
    }

    fn is_excluded(&self, rel: &str) -> bool {
        rel != "." && self.ignore.is_excluded(rel)
    }

    /// Whether an exception rule brings back any path below excluded `dir`.
    fn has_included_descendant(&self, dir: &str) -> Result<bool> {
        if !self.ignore.has_exceptions() {
            return Ok(false);
        }
        let host = self.root.join(dir);
        for entry in std::fs::read_dir(&host).map_err(io_err(&host))? {
            let entry = entry.map_err(io_err(&host))?;
            let child = join_rel(dir, &entry.file_name().to_string_lossy());
            if !self.ignore.is_excluded(&child) {
                return Ok(true);
            }
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false)
                && self.has_included_descendant(&child)?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The context as the one resolver sees it: links are followed inside the
/// context only, and what `.dockerignore` excludes is not there, matched on
/// the path the resolver reached (a link to an ignored file is dangling, as
/// in the context Docker's client sends).
impl ScopedTree for BuildContext {
    type Dir = OpenDir;

    fn root(&self) -> std::io::Result<OpenDir> {
        Ok(self.root_dir.clone())
    }

    fn child(&self, dir: &OpenDir, name: &str, path: &[String]) -> std::io::Result<Node<OpenDir>> {
        let node = dir.child(name)?;
        let rel = path.join("/");
        if !self.is_excluded(&rel) {
            return Ok(node);
        }
        // An excluded directory is still there when an exception brings back
        // something below it, as Docker sends the parents of included paths.
        let shown = matches!(node, Node::Dir(_))
            && self
                .has_included_descendant(&rel)
                .map_err(std::io::Error::other)?;
        Ok(if shown { node } else { Node::Missing })
    }
}

impl BuildContext {
    /// Where context path `rel` is on the host, resolved inside the context:
    /// the host path, its `lstat` and its resolved path relative to the root.
    /// `None` when it is missing, excluded, leads out of the context or
    /// through a file.
    fn resolve_in_context(
        &self,
        rel: &str,
        follow: bool,
    ) -> Result<Option<(Node<OpenDir>, String)>> {
        let resolved = resolve(self, rel, follow).map_err(io_err(self.root.join(rel)))?;
        let Resolved::Found { path, node } = resolved else {
            return Ok(None);
        };
        let real = if path.is_empty() {
            ".".to_string()
        } else {
            path.join("/")
        };
        Ok(Some((node, real)))
    }

    /// Directory `rel` resolved inside the context, held open, and its
    /// resolved path; `None` when it is not a directory.
    fn context_dir(&self, rel: &str) -> Result<Option<(OpenDir, String)>> {
        Ok(match self.resolve_in_context(rel, true)? {
            Some((Node::Dir(dir), real)) => Some((dir, real)),
            _ => None,
        })
    }
}

impl SourceFs for BuildContext {
    fn entry(&self, rel: &str, follow: bool) -> Result<Option<SourceEntry>> {
        let rel = clean_relative(rel);
        let (host, meta) = match self.resolve_in_context(&rel, follow)? {
            Some((Node::Leaf(host, meta), _)) => (host, meta),
            Some((Node::Dir(dir), _)) => {
                let meta = dir.metadata().map_err(io_err(dir.path()))?;
                (dir.path().to_path_buf(), meta)
            }
            Some((Node::Missing, _)) | None => return Ok(None),
        };
        Ok(Some(SourceEntry { rel, host, meta }))
    }

    fn children(&self, rel: &str) -> Result<Vec<String>> {
        let Some((dir, real)) = self.context_dir(rel)? else {
            return Ok(Vec::new());
        };
        let mut names = Vec::new();
        for entry in dir.read_dir().map_err(io_err(dir.path()))? {
            let entry = entry.map_err(io_err(dir.path()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = join_rel(&real, &name);
            if self.is_excluded(&child) {
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if !(is_dir && self.has_included_descendant(&child)?) {
                    continue;
                }
            }
            names.push(name);
        }
        names.sort();
        Ok(names)
    }

    fn list_dir(&self, rel: &str) -> Result<Vec<SourceEntry>> {
        let Some((dir, real)) = self.context_dir(rel)? else {
            return Ok(Vec::new());
        };
        // Sorted by name before the entries grow their (large) metadata.
        let mut named = Vec::with_capacity(64);
        for entry in dir.read_dir().map_err(io_err(dir.path()))? {
            let entry = entry.map_err(io_err(dir.path()))?;
            let raw_name = entry.file_name();
            let name = raw_name.to_string_lossy().into_owned();
            named.push((name, raw_name, entry));
        }
        named.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut entries = Vec::with_capacity(named.len());
        for (name, raw_name, entry) in named {
            let mut host =
                PathBuf::with_capacity(dir.path().as_os_str().len() + 1 + raw_name.len());
            host.push(dir.path());
            host.push(&raw_name);
            // lstat relative to the open directory: no walk from the root
            // for each of many thousand files, and none through a path a
            // link could have replaced since the directory was resolved.
            let meta = entry.metadata().map_err(io_err(&host))?;
            let real_child = join_rel(&real, &name);
            if self.is_excluded(&real_child)
                && !(meta.is_dir() && self.has_included_descendant(&real_child)?)
            {
                continue;
            }
            entries.push(SourceEntry {
                rel: join_rel(rel, &name),
                host,
                meta,
            });
        }
        Ok(entries)
    }

    fn keep_walk(&self, top: &SourceEntry, entries: Vec<SourceEntry>) {
        let Ok(mut kept) = self.kept_walks.lock() else {
            return;
        };
        if kept.entries + entries.len() > KeptWalks::MAX_ENTRIES {
            return;
        }
        kept.entries += entries.len();
        if let Some(replaced) = kept.walks.insert(KeptWalks::key(top), entries) {
            kept.entries -= replaced.len();
        }
    }

    fn take_walk(&self, top: &SourceEntry) -> Option<Vec<SourceEntry>> {
        let mut kept = self.kept_walks.lock().ok()?;
        let entries = kept.walks.remove(&KeptWalks::key(top))?;
        kept.entries -= entries.len();
        Some(entries)
    }

    fn file_digest(&self, entry: &SourceEntry) -> Result<[u8; 32]> {
        let (size, mtime_ns, ctime_ns, inode) = stat_fields(&entry.meta);
        let unchanged = |record: &StatRecord| {
            record.size == size
                && record.mtime_ns == mtime_ns
                && record.ctime_ns == ctime_ns
                && record.inode == inode
        };
        if let Some(record) = self.known.get(&entry.rel).filter(|r| unchanged(r)) {
            return Ok(record.digest);
        }
        let digest = hash_file(entry)?;
        self.learn_digests(&[(entry, digest)])?;
        Ok(digest)
    }

    fn learn_digests(&self, found: &[(&SourceEntry, [u8; 32])]) -> Result<()> {
        // A file changed within the timestamp granularity of now could change
        // again without its ctime moving: do not trust such a record later.
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        let mut learned = self.learned.lock().map_err(poisoned("stat cache"))?;
        learned.reserve(found.len());
        for (entry, digest) in found {
            let (size, mtime_ns, ctime_ns, inode) = stat_fields(&entry.meta);
            if now_ns - ctime_ns > 2_000_000_000 {
                learned.insert(
                    entry.rel.clone(),
                    StatRecord {
                        size,
                        mtime_ns,
                        ctime_ns,
                        inode,
                        digest: *digest,
                    },
                );
            }
        }
        Ok(())
    }
}

/// The entries a COPY source names: the literal path, or what a wildcard
/// matches (sorted). An empty result means nothing matched.
pub(crate) fn select(fs: &dyn SourceFs, source: &str) -> Result<Vec<SourceEntry>> {
    let cleaned = clean_relative(source);
    if !has_wildcards(&cleaned) {
        return Ok(fs.entry(&cleaned, true)?.into_iter().collect());
    }
    let pattern = Pattern::new(&cleaned).map_err(|bad| {
        Error::Copy(format!(
            "bad wildcard `{}` in source `{source}`: {}",
            bad.pattern, bad.reason
        ))
    })?;
    // Walk from the longest literal prefix, no deeper than the pattern reaches.
    let components: Vec<&str> = cleaned.split('/').collect();
    let literal = components
        .iter()
        .take_while(|c| !has_wildcards(c))
        .cloned()
        .collect::<Vec<_>>();
    let start = if literal.is_empty() {
        ".".to_string()
    } else {
        literal.join("/")
    };
    let max_depth = if cleaned.contains("**") {
        usize::MAX
    } else {
        components.len()
    };
    let mut found = Vec::new();
    let Some(start_entry) = fs.entry(&start, true)? else {
        return Ok(found);
    };
    if !start_entry.meta.is_dir() {
        return Ok(found);
    }
    let mut stack = vec![(start.clone(), literal.len())];
    while let Some((dir, depth)) = stack.pop() {
        for name in fs.children(&dir)? {
            let rel = join_rel(&dir, &name);
            let Some(entry) = fs.entry(&rel, false)? else {
                continue;
            };
            if pattern.matches(&rel) {
                let followed = fs.entry(&rel, true)?.unwrap_or(entry.clone());
                found.push(followed);
            }
            if entry.meta.is_dir() && depth + 1 < max_depth {
                stack.push((rel, depth + 1));
            }
        }
    }
    found.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(found)
}

/// Every entry under a selected source: itself first, then what is below
/// it in path order, excluded paths left out. The directories of each depth are listed in
/// parallel.
pub(crate) fn walk(fs: &dyn SourceFs, top: &SourceEntry) -> Result<Vec<SourceEntry>> {
    Ok(walk_with(fs, top, |_| Ok(()))?
        .into_iter()
        .map(|(entry, ())| entry)
        .collect())
}

/// [`walk`], with `visit`'s result for each entry, computed as soon as the
/// entry's directory is listed (in parallel, for the entries of one
/// directory too): work on the files overlaps the listing of the next
/// directories instead of waiting for the whole walk.
pub(crate) fn walk_with<T: Send>(
    fs: &dyn SourceFs,
    top: &SourceEntry,
    visit: impl Fn(&SourceEntry) -> Result<T> + Sync,
) -> Result<Vec<(SourceEntry, T)>> {
    let visited = visit(top)?;
    let mut out = vec![(top.clone(), visited)];
    if !top.meta.is_dir() {
        return Ok(out);
    }
    let mut dirs = vec![top.rel.clone()];
    while !dirs.is_empty() {
        let listed: Vec<Vec<(SourceEntry, T)>> = dirs
            .par_iter()
            .map(|dir| {
                fs.list_dir(dir)?
                    .into_par_iter()
                    .map(|entry| {
                        let visited = visit(&entry)?;
                        Ok((entry, visited))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        dirs = listed
            .iter()
            .flatten()
            .filter(|(e, _)| e.meta.is_dir())
            .map(|(e, _)| e.rel.clone())
            .collect();
        out.reserve(listed.iter().map(Vec::len).sum());
        out.extend(listed.into_iter().flatten());
    }
    // The top stays first even when a name sorts before it (`#a` or `-a`
    // before `.`): callers skip it to get what is below. Sorting positions,
    // not the entries themselves, moves each (large) entry once.
    // (Stable: each directory's entries are already a sorted run.)
    let mut order: Vec<usize> = (1..out.len()).collect();
    order.sort_by(|&a, &b| out[a].0.rel.cmp(&out[b].0.rel));
    let mut slots: Vec<Option<(SourceEntry, T)>> = out.into_iter().map(Some).collect();
    let mut sorted = Vec::with_capacity(slots.len());
    sorted.extend(
        std::iter::once(0)
            .chain(order)
            .filter_map(|index| slots.get_mut(index).and_then(Option::take)),
    );
    Ok(sorted)
}

/// File digests (as [`SourceFs::file_digest`]) found by whoever read the
/// files, by host path.
pub(crate) type ReadDigests = FxHashMap<OsString, [u8; 32]>;

/// A digest of what a COPY source selects, for cache keys: for every entry its
/// path relative to the source, type, mode, owner, size, symlink target and
/// file bytes; never timestamps. Files are hashed in parallel. Each walk is
/// kept for the COPY that reads the same files next.
pub(crate) fn content_digest(fs: &dyn SourceFs, sources: &[String]) -> Result<Key> {
    digest_sources(fs, sources, Digesting::Planning)
}

/// [`content_digest`] of sources a COPY has just read: the same key, from
/// the walks the COPY kept and the digests its layer writer took of the
/// files (`read`); only files it did not read are read here.
pub(crate) fn content_digest_after_copy(
    fs: &dyn SourceFs,
    sources: &[String],
    read: &ReadDigests,
) -> Result<Key> {
    digest_sources(fs, sources, Digesting::AfterCopy(read))
}

/// When [`digest_sources`] runs.
#[derive(Clone, Copy)]
enum Digesting<'r> {
    /// Before the COPY: files are hashed as their directory is listed, and
    /// each walk is kept for the COPY.
    Planning,
    /// After the COPY: its kept walk (or a fresh one), with the digests its
    /// layer writer took.
    AfterCopy(&'r ReadDigests),
}

/// [`content_digest`] or [`content_digest_after_copy`].
fn digest_sources(fs: &dyn SourceFs, sources: &[String], when: Digesting<'_>) -> Result<Key> {
    let mut key = KeyEncoder::new("kiln.copy-sources.v1");
    key.u64("count", sources.len() as u64);
    for source in sources {
        key.str("source", source);
        let selected = select(fs, source)?;
        key.u64("matches", selected.len() as u64);
        for top in selected {
            let (entries, digests) = match when {
                Digesting::Planning => walk_with(fs, &top, |e| {
                    e.meta.is_file().then(|| fs.file_digest(e)).transpose()
                })?
                .into_iter()
                .unzip(),
                Digesting::AfterCopy(read) => {
                    let entries = walk_once_more(fs, &top)?;
                    let digests = digests_after_copy(fs, &entries, read)?;
                    (entries, digests)
                }
            };
            key.str("top", &top.rel)
                .u64("entries", entries.len() as u64);
            for (entry, digest) in entries.iter().zip(digests) {
                let meta = &entry.meta;
                let kind = meta.file_type();
                let kind_name = if kind.is_dir() {
                    "dir"
                } else if kind.is_file() {
                    "file"
                } else if kind.is_symlink() {
                    "symlink"
                } else {
                    "other"
                };
                // No owner: COPY from the context makes files root's (or
                // --chown's), and a checkout's uid differs between CI runners,
                // which must share cache keys. BuildKit zeroes it likewise.
                key.str("path", &entry.rel)
                    .str("type", kind_name)
                    .u64("mode", u64::from(meta.mode() & 0o7777))
                    .u64("size", if kind.is_file() { meta.size() } else { 0 });
                if kind.is_symlink() {
                    let target = std::fs::read_link(&entry.host).map_err(io_err(&entry.host))?;
                    key.bytes("target", target.as_os_str().as_encoded_bytes());
                }
                if let Some(digest) = digest {
                    key.bytes("content", &digest);
                }
            }
            if let Digesting::Planning = when {
                fs.keep_walk(&top, entries);
            }
        }
    }
    Ok(key.finish())
}

/// The digests of `entries`' files (`None` for the rest): those the COPY
/// read from `read`, all learned at once; the others hashed now, in
/// parallel.
fn digests_after_copy(
    fs: &dyn SourceFs,
    entries: &[SourceEntry],
    read: &ReadDigests,
) -> Result<Vec<Option<[u8; 32]>>> {
    let known: Vec<Option<[u8; 32]>> = entries
        .iter()
        .map(|e| read.get(e.host.as_os_str()).copied())
        .collect();
    let found: Vec<(&SourceEntry, [u8; 32])> = (entries.iter().zip(&known))
        .filter(|(e, _)| e.meta.is_file())
        .filter_map(|(e, digest)| Some((e, (*digest)?)))
        .collect();
    fs.learn_digests(&found)?;
    (entries.par_iter().zip(known))
        .map(|(e, digest)| match digest {
            _ if !e.meta.is_file() => Ok(None),
            Some(digest) => Ok(Some(digest)),
            None => fs.file_digest(e).map(Some),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn context(files: &[(&str, &str)], ignore: &str) -> (tempfile::TempDir, BuildContext) {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = dir.path().join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
        let rules = IgnoreRules::parse(ignore, Path::new(".dockerignore")).unwrap();
        let ctx = BuildContext::new(dir.path(), rules, None).unwrap();
        (dir, ctx)
    }

    fn rels(entries: &[SourceEntry]) -> Vec<String> {
        entries.iter().map(|e| e.rel.clone()).collect()
    }

    #[test]
    fn a_digested_walk_is_kept_for_one_copy_of_the_same_directory() {
        let (dir, ctx) = context(&[("src/a", "1"), ("src/sub/b", "2"), ("src/c", "3")], "");
        let top = ctx.entry("src", false).unwrap().unwrap();
        assert!(
            ctx.take_walk(&top).is_none(),
            "nothing kept before a digest"
        );
        content_digest(&ctx, &["src".to_owned()]).unwrap();
        // The COPY gets the digest's walk once, equal to a fresh walk.
        let kept = walk_once_more(&ctx, &top).unwrap();
        assert_eq!(rels(&kept), rels(&walk(&ctx, &top).unwrap()));
        assert_eq!(
            rels(&kept),
            ["src", "src/a", "src/c", "src/sub", "src/sub/b"]
        );
        assert!(ctx.take_walk(&top).is_none(), "handed out once");
        // A directory replaced since the digest is walked afresh.
        content_digest(&ctx, &["src".to_owned()]).unwrap();
        fs::rename(dir.path().join("src"), dir.path().join("old")).unwrap();
        fs::create_dir(dir.path().join("src")).unwrap();
        fs::write(dir.path().join("src/new"), "4").unwrap();
        let top = ctx.entry("src", false).unwrap().unwrap();
        assert_eq!(
            rels(&walk_once_more(&ctx, &top).unwrap()),
            ["src", "src/new"]
        );
    }

    #[test]
    fn a_file_is_hashed_as_listed_as_its_layer_copies_it() {
        let (dir, ctx) = context(&[("grows", "listed")], "");
        let entry = ctx.entry("grows", false).unwrap().unwrap();
        fs::write(dir.path().join("grows"), "listed, then more").unwrap();
        assert_eq!(
            ctx.file_digest(&entry).unwrap(),
            *blake3::hash(b"listed").as_bytes()
        );
    }

    /// A source that counts what it is told it learned.
    struct Learning<'c>(&'c BuildContext, Mutex<Vec<String>>);

    impl SourceFs for Learning<'_> {
        fn entry(&self, rel: &str, follow: bool) -> Result<Option<SourceEntry>> {
            self.0.entry(rel, follow)
        }
        fn children(&self, rel: &str) -> Result<Vec<String>> {
            self.0.children(rel)
        }
        fn learn_digests(&self, found: &[(&SourceEntry, [u8; 32])]) -> Result<()> {
            let mut learned = self.1.lock().unwrap();
            learned.extend(found.iter().map(|(e, _)| e.rel.clone()));
            Ok(())
        }
    }

    #[test]
    fn the_digest_after_a_copy_is_the_digest_planning_finds() {
        let (dir, ctx) = context(
            &[
                ("src/a", "a"),
                ("src/sub/b", "bb"),
                ("one.txt", "1"),
                ("two.txt", "2"),
            ],
            "",
        );
        symlink("a", dir.path().join("src/link")).unwrap();
        let sources = vec!["src".to_string(), "*.txt".to_string()];
        let planned = content_digest(&ctx, &sources).unwrap();
        let host = |rel: &str| {
            ctx.entry(rel, false)
                .unwrap()
                .unwrap()
                .host
                .into_os_string()
        };
        let digest = |bytes: &[u8]| *blake3::hash(bytes).as_bytes();
        // What a COPY's layer writer read: some of the files.
        let read: ReadDigests = [
            (host("src/a"), digest(b"a")),
            (host("one.txt"), digest(b"1")),
        ]
        .into_iter()
        .collect();
        // With the walks planning kept, and with none (walked afresh).
        assert_eq!(
            content_digest_after_copy(&ctx, &sources, &read).unwrap(),
            planned
        );
        let fresh = Learning(&ctx, Mutex::new(Vec::new()));
        assert_eq!(
            content_digest_after_copy(&fresh, &sources, &read).unwrap(),
            planned
        );
        let mut learned = fresh.1.into_inner().unwrap();
        learned.sort();
        // What was read is learned as read; the rest was hashed here.
        assert_eq!(learned, ["one.txt", "src/a"]);
        // The digests read stand for the files: they are not read again.
        let wrong: ReadDigests = [(host("src/sub/b"), digest(b"not bb"))]
            .into_iter()
            .collect();
        assert_ne!(
            content_digest_after_copy(&ctx, &sources, &wrong).unwrap(),
            planned
        );
    }

    #[test]
    fn kept_walks_are_bounded() {
        let (_dir, ctx) = context(&[("src/a", "1"), ("other/b", "2")], "");
        let top = ctx.entry("src", false).unwrap().unwrap();
        let other = ctx.entry("other", false).unwrap().unwrap();
        let filler = vec![top.clone(); KeptWalks::MAX_ENTRIES - 1];
        ctx.keep_walk(&top, filler);
        ctx.keep_walk(&other, walk(&ctx, &other).unwrap());
        assert!(ctx.take_walk(&other).is_none(), "over the bound: not kept");
        assert_eq!(
            ctx.take_walk(&top).unwrap().len(),
            KeptWalks::MAX_ENTRIES - 1
        );
        ctx.keep_walk(&other, walk(&ctx, &other).unwrap());
        assert!(ctx.take_walk(&other).is_some(), "room again once taken");
    }

    #[test]
    fn wildcards_select_like_filepath_match() {
        let (_d, ctx) = context(
            &[
                ("a.txt", "1"),
                ("b.txt", "2"),
                ("c.md", "3"),
                ("d/e.txt", "4"),
            ],
            "",
        );
        assert_eq!(rels(&select(&ctx, "*.txt").unwrap()), ["a.txt", "b.txt"]);
        assert_eq!(rels(&select(&ctx, "./d/*.txt").unwrap()), ["d/e.txt"]);
        assert_eq!(
            rels(&select(&ctx, "/[ab].txt").unwrap()),
            ["a.txt", "b.txt"]
        );
        assert_eq!(rels(&select(&ctx, "*/e.txt").unwrap()), ["d/e.txt"]);
        assert!(select(&ctx, "*.rs").unwrap().is_empty());
        assert_eq!(rels(&select(&ctx, "d").unwrap()), ["d"]);
    }

    #[test]
    fn ignored_files_are_invisible() {
        let (_d, ctx) = context(
            &[
                ("keep", "1"),
                ("secret.key", "2"),
                ("build/x.o", "3"),
                ("build/keep.txt", "4"),
            ],
            "*.key\nbuild\n!build/keep.txt\n",
        );
        assert!(select(&ctx, "secret.key").unwrap().is_empty());
        assert!(select(&ctx, "build/x.o").unwrap().is_empty());
        let root = ctx.entry(".", false).unwrap().unwrap();
        assert_eq!(
            rels(&walk(&ctx, &root).unwrap()),
            [".", "build", "build/keep.txt", "keep"]
        );
    }

    #[test]
    fn digest_follows_content_not_mtime() {
        let (dir, ctx) = context(&[("a", "one"), ("sub/b", "two")], "");
        let before = content_digest(&ctx, &[".".to_string()]).unwrap();
        let file = fs::File::options()
            .write(true)
            .open(dir.path().join("a"))
            .unwrap();
        file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000))
            .unwrap();
        let ctx = BuildContext::new(dir.path(), IgnoreRules::default(), None).unwrap();
        assert_eq!(before, content_digest(&ctx, &[".".to_string()]).unwrap());
        fs::write(dir.path().join("sub/b"), "TWO").unwrap();
        assert_ne!(before, content_digest(&ctx, &[".".to_string()]).unwrap());
        symlink("a", dir.path().join("link")).unwrap();
        let with_link = content_digest(&ctx, &[".".to_string()]).unwrap();
        fs::remove_file(dir.path().join("link")).unwrap();
        symlink("sub", dir.path().join("link")).unwrap();
        assert_ne!(with_link, content_digest(&ctx, &[".".to_string()]).unwrap());
    }

    #[test]
    fn digest_separates_sources() {
        let (_d, ctx) = context(&[("a", "x"), ("b", "x")], "");
        let one = content_digest(&ctx, &["a".to_string()]).unwrap();
        let other = content_digest(&ctx, &["b".to_string()]).unwrap();
        assert_ne!(one, other);
    }

    #[test]
    fn digest_is_the_same_in_another_checkout() {
        let files = [("a", "x"), ("sub/b", "y")];
        let (_one, first) = context(&files, "");
        let (other, second) = context(&files, "");
        // Another directory, and another owner (as a CI runner's checkout).
        for path in ["a", "sub", "sub/b"] {
            std::os::unix::fs::lchown(other.path().join(path), Some(4321), Some(4321)).unwrap();
        }
        let all = [".".to_string()];
        assert_eq!(
            content_digest(&first, &all).unwrap(),
            content_digest(&second, &all).unwrap()
        );
    }

    #[test]
    fn stat_cache_persists_and_notices_changes() {
        let state = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), "old").unwrap();
        let ctx =
            BuildContext::new(dir.path(), IgnoreRules::default(), Some(state.path())).unwrap();
        let first = content_digest(&ctx, &["f".to_string()]).unwrap();
        ctx.save_stat_cache().unwrap();
        // A fresh file is not trusted: the cache must not hold it yet.
        assert!(fs::read_dir(state.path()).unwrap().next().is_none());
        fs::write(dir.path().join("f"), "new").unwrap();
        let ctx =
            BuildContext::new(dir.path(), IgnoreRules::default(), Some(state.path())).unwrap();
        assert_ne!(first, content_digest(&ctx, &["f".to_string()]).unwrap());
    }

    #[test]
    fn stat_cache_reuses_digest_of_unchanged_files() {
        let state = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), "content").unwrap();
        let ctx =
            BuildContext::new(dir.path(), IgnoreRules::default(), Some(state.path())).unwrap();
        let entry = ctx.entry("f", false).unwrap().unwrap();
        let (size, mtime_ns, ctime_ns, inode) = stat_fields(&entry.meta);
        // Plant a record with a digest no file has: a hit must return it.
        ctx.learned.lock().unwrap().insert(
            "f".into(),
            StatRecord {
                size,
                mtime_ns,
                ctime_ns,
                inode,
                digest: *blake3::hash(b"planted").as_bytes(),
            },
        );
        ctx.save_stat_cache().unwrap();
        let ctx =
            BuildContext::new(dir.path(), IgnoreRules::default(), Some(state.path())).unwrap();
        let entry = ctx.entry("f", false).unwrap().unwrap();
        assert_eq!(
            ctx.file_digest(&entry).unwrap(),
            *blake3::hash(b"planted").as_bytes()
        );
        // Any change of the stat fields means re-reading.
        fs::write(dir.path().join("f"), "changed").unwrap();
        let entry = ctx.entry("f", false).unwrap().unwrap();
        assert_eq!(
            ctx.file_digest(&entry).unwrap(),
            *blake3::hash(b"changed").as_bytes()
        );
    }

    #[test]
    fn stat_cache_is_written_again_only_when_it_learned_more() {
        let state = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ctx =
            BuildContext::new(dir.path(), IgnoreRules::default(), Some(state.path())).unwrap();
        let record = |digest: &[u8]| StatRecord {
            size: 1,
            mtime_ns: 1,
            ctime_ns: 1,
            inode: 1,
            digest: *blake3::hash(digest).as_bytes(),
        };
        let file = ctx.stat_cache_file.clone().unwrap();
        ctx.learned.lock().unwrap().insert("a".into(), record(b"a"));
        ctx.save_stat_cache().unwrap();
        let first = fs::read(&file).unwrap();
        // Nothing new: not written (a removed file stays removed).
        fs::remove_file(&file).unwrap();
        ctx.save_stat_cache().unwrap();
        assert!(!file.exists());
        // Learned more while steps ran: written again, with both.
        ctx.learned.lock().unwrap().insert("b".into(), record(b"b"));
        ctx.save_stat_cache().unwrap();
        let second = fs::read(&file).unwrap();
        assert!(second.len() > first.len());
        let reopened =
            BuildContext::new(dir.path(), IgnoreRules::default(), Some(state.path())).unwrap();
        assert_eq!(reopened.known.records.len(), 2);
    }

    #[test]
    fn stat_cache_file_round_trips_and_rejects_damage() {
        let record = StatRecord {
            size: 4096,
            mtime_ns: -5,
            ctime_ns: 1_700_000_000_000_000_001,
            inode: 77,
            digest: *blake3::hash(b"x").as_bytes(),
        };
        let mut other = record.clone();
        other.inode = 78;
        // Out of order, as files written before records were sorted are.
        let records = [("dir/a file", &record), ("b", &other)];
        let bytes = encode_stat_cache("/ctx", records.into_iter());
        let decoded = decode_stat_cache(&bytes, "/ctx").unwrap();
        assert_eq!(decoded.get("dir/a file"), Some(&record));
        assert_eq!(decoded.get("b"), Some(&other));
        assert_eq!(decoded.get("c"), None);
        assert_eq!(decoded.get("dir"), None);
        assert!(decode_stat_cache(&bytes, "/other").is_none());
        for cut in [1, 10, bytes.len() - 1] {
            assert!(decode_stat_cache(&bytes[..cut], "/ctx").is_none());
        }
        // The JSON files of earlier versions are not read as records.
        assert!(decode_stat_cache(br#"{"root":"/ctx","files":{}}"#, "/ctx").is_none());
    }

    #[test]
    fn a_record_of_another_inode_or_ctime_is_not_trusted() {
        let (_dir, ctx) = context(&[("f", "real")], "");
        let entry = ctx.entry("f", false).unwrap().unwrap();
        let (size, mtime_ns, ctime_ns, inode) = stat_fields(&entry.meta);
        let planted = *blake3::hash(b"planted").as_bytes();
        for (ctime_ns, inode) in [(ctime_ns, inode + 1), (ctime_ns + 1, inode)] {
            let known = vec![(
                Box::<str>::from("f"),
                StatRecord {
                    size,
                    mtime_ns,
                    ctime_ns,
                    inode,
                    digest: planted,
                },
            )];
            let ctx = BuildContext {
                known: StatCache::from_unsorted(known),
                ..BuildContext::new(ctx.root(), IgnoreRules::default(), None).unwrap()
            };
            assert_eq!(
                ctx.file_digest(&entry).unwrap(),
                *blake3::hash(b"real").as_bytes()
            );
        }
    }

    #[test]
    fn listing_a_directory_matches_children_and_entry() {
        let (_d, ctx) = context(
            &[("a", "1"), ("b/c", "2"), ("b/skip.o", "3"), ("x.o", "4")],
            "**/*.o\n",
        );
        symlink("a", ctx.root().join("link")).unwrap();
        for dir in [".", "b"] {
            let listed = ctx.list_dir(dir).unwrap();
            let expected: Vec<String> = ctx
                .children(dir)
                .unwrap()
                .iter()
                .map(|name| join_rel(dir, name))
                .collect();
            assert_eq!(rels(&listed), expected);
            for entry in listed {
                let looked_up = ctx.entry(&entry.rel, false).unwrap().unwrap();
                assert_eq!(entry.host, looked_up.host);
                assert_eq!(entry.meta.ino(), looked_up.meta.ino());
                assert_eq!(entry.meta.file_type(), looked_up.meta.file_type());
            }
        }
    }

    /// A context beside a directory it must never reach (`host/`), with
    /// links out of it and links that stay inside.
    fn linked_context() -> (tempfile::TempDir, BuildContext) {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host");
        fs::create_dir_all(host.join("ssh")).unwrap();
        fs::write(host.join("shadow"), "host secret").unwrap();
        fs::write(host.join("ssh/key"), "host key").unwrap();
        let root = dir.path().join("ctx");
        fs::create_dir_all(root.join("data/sub")).unwrap();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("data/f"), "inside").unwrap();
        fs::write(root.join("data/sub/g"), "g").unwrap();
        fs::write(root.join("a/b/f"), "b").unwrap();
        fs::write(root.join("secret"), "ignored").unwrap();
        symlink(&host, root.join("etclink")).unwrap();
        symlink("../host", root.join("rel")).unwrap();
        symlink("../../../../../../../host", root.join("deep")).unwrap();
        symlink("/data", root.join("abs")).unwrap();
        symlink("b", root.join("a/link")).unwrap();
        symlink("data/../../host", root.join("dotdot")).unwrap();
        symlink("secret", root.join("to-secret")).unwrap();
        let rules = IgnoreRules::parse("secret\n", Path::new(".dockerignore")).unwrap();
        let ctx = BuildContext::new(&root, rules, None).unwrap();
        (dir, ctx)
    }

    fn read(entry: &SourceEntry) -> String {
        fs::read_to_string(&entry.host).unwrap()
    }

    #[test]
    fn links_out_of_the_context_lead_nowhere() {
        let (_dir, ctx) = linked_context();
        for source in [
            "etclink/shadow",
            "etclink/ssh",
            "etclink/ssh/key",
            "etclink/*",
            "rel/shadow",
            "deep/ssh/",
            "dotdot/shadow",
            "to-secret",
        ] {
            assert!(select(&ctx, source).unwrap().is_empty(), "{source}");
        }
        // Not followed, a link is itself a source (copied as a link).
        let link = ctx.entry("etclink", false).unwrap().unwrap();
        assert!(link.meta.file_type().is_symlink());
        assert!(ctx.entry("etclink", true).unwrap().is_none());
        assert!(ctx.children("etclink").unwrap().is_empty());
        assert!(ctx.list_dir("rel").unwrap().is_empty());
    }

    #[test]
    fn links_inside_the_context_are_followed_within_it() {
        let (_dir, ctx) = linked_context();
        // An absolute target is taken from the context's root.
        let found = select(&ctx, "abs/f").unwrap();
        assert_eq!(
            (rels(&found), read(&found[0])),
            (vec!["abs/f".into()], "inside".into())
        );
        // A link in the middle of a path.
        let found = select(&ctx, "a/link/f").unwrap();
        assert_eq!(read(&found[0]), "b");
        // `..` in a link's target climbs from where the link is.
        symlink("../data/sub", ctx.root().join("a/up")).unwrap();
        assert_eq!(read(&select(&ctx, "a/up/g").unwrap()[0]), "g");
        // A directory through a link lists under the name it was asked by.
        let top = ctx.entry("abs", true).unwrap().unwrap();
        assert!(top.meta.is_dir());
        assert_eq!(
            rels(&walk(&ctx, &top).unwrap()),
            ["abs", "abs/f", "abs/sub", "abs/sub/g"]
        );
        assert_eq!(rels(&select(&ctx, "abs/*").unwrap()), ["abs/f", "abs/sub"]);
    }

    #[test]
    fn ignore_rules_match_the_path_a_link_leads_to() {
        let (_dir, ctx) = linked_context();
        symlink("..", ctx.root().join("data/parent")).unwrap();
        assert!(ctx.entry("data/parent/secret", true).unwrap().is_none());
        assert!(ctx.entry("data/parent/data/f", true).unwrap().is_some());
        let listed = ctx.list_dir("data/parent").unwrap();
        assert!(!rels(&listed).contains(&"data/parent/secret".to_string()));
        assert!(rels(&listed).contains(&"data/parent/data".to_string()));
    }

    #[test]
    fn digest_of_a_link_out_of_the_context_reads_nothing_of_the_host() {
        let (dir, ctx) = linked_context();
        let before = content_digest(&ctx, &["etclink/shadow".to_string()]).unwrap();
        fs::write(dir.path().join("host/shadow"), "changed").unwrap();
        assert_eq!(
            before,
            content_digest(&ctx, &["etclink/shadow".to_string()]).unwrap()
        );
    }

    #[test]
    fn walk_puts_the_top_first_even_before_names_that_sort_lower() {
        let (_d, ctx) = context(&[("#autosave#", "1"), ("-flag", "2"), ("a", "3")], "");
        let root = ctx.entry(".", false).unwrap().unwrap();
        assert_eq!(
            rels(&walk(&ctx, &root).unwrap()),
            [".", "#autosave#", "-flag", "a"]
        );
    }
}
