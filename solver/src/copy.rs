//! COPY and ADD with Docker's semantics, built as a directory tree that the
//! executor's directory-to-layer writer turns into a layer.
//!
//! The rules (Docker's reference and BuildKit's behaviour): several sources go
//! into a destination directory, which must then end in `/`; a directory source
//! copies its contents, not itself; a single file goes to the destination path,
//! or into it when it is a directory (written with a trailing `/`, or existing
//! as a directory in the parent image); missing parent directories are created;
//! the destination is resolved through the parent image's symlinks (so `/bin/x`
//! lands in `/usr/bin/x` on a merged-/usr image); files from the context belong
//! to root unless `--chown` says otherwise, files from a stage keep their owner;
//! `--chmod` sets the mode of everything copied; ADD unpacks local tar archives
//! (plain, gzip, bzip2, xz or zstd, recognised by content, not name), and
//! downloads too with `--unpack=true` (`--unpack=false`: nothing).

use rustc_hash::FxHashMap;
use std::borrow::Cow;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_executor::{
    copy_resolved, link_resolved, resolve, ExtraFile, HostDir, Node, Resolved, SpecialFile,
};
use kiln_frontend::CopyStep;

use crate::dockerignore::matches_self_or_parent;
use crate::error::{io_err, Error, Result};
use crate::fetch::{is_url, url_file_name, Downloads};
use crate::pattern::{clean_relative, Pattern};
use crate::source::{select, walk, walk_once_more, SourceEntry, SourceFs};

/// Owner and mode of a directory in the parent image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirMeta {
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// The parent image's filesystem, as far as COPY needs it.
pub(crate) trait DestFs {
    /// `path` (absolute) with every symlink on the way resolved inside the
    /// image; components that do not exist are kept as written.
    fn resolve(&self, path: &str) -> Result<String>;
    /// Whether `path` (already resolved) is a directory in the parent.
    fn is_dir(&self, path: &str) -> Result<bool>;
    /// Owner and mode of directory `path` (resolved) in the parent, if it exists.
    fn dir_meta(&self, path: &str) -> Result<Option<DirMeta>>;
    /// Numeric ids for a `--chown` user and optional group, names looked up in
    /// the parent's /etc/passwd and /etc/group.
    fn ids(&self, user: &str, group: Option<&str>) -> Result<(u32, u32)>;
}

/// No parent at all: `FROM scratch`, or `COPY --link`, whose layer must not
/// depend on what lies below it. Only numeric `--chown` works here.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NoParent;

impl DestFs for NoParent {
    fn resolve(&self, path: &str) -> Result<String> {
        Ok(format!("/{}", clean_relative(path)).replace("/.", "/"))
    }
    fn is_dir(&self, path: &str) -> Result<bool> {
        Ok(path == "/")
    }
    fn dir_meta(&self, _path: &str) -> Result<Option<DirMeta>> {
        Ok(None)
    }
    fn ids(&self, user: &str, group: Option<&str>) -> Result<(u32, u32)> {
        let uid = numeric_id(user).ok_or_else(|| {
            Error::Copy(format!(
                "--chown={user}: there is no /etc/passwd to look the name up in; use a numeric id"
            ))
        })?;
        let gid = match group {
            Some(g) => numeric_id(g).ok_or_else(|| {
                Error::Copy(format!(
                    "--chown group {g}: there is no /etc/group to look the name up in; use a numeric id"
                ))
            })?,
            None => uid,
        };
        Ok((uid, gid))
    }
}

pub(crate) fn numeric_id(text: &str) -> Option<u32> {
    text.parse().ok()
}

/// How `--chmod` changes a mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Chmod {
    /// Octal: the exact permission bits.
    Octal(u32),
    /// Symbolic clauses like `u+x,go-w`.
    Symbolic(Vec<SymbolicClause>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SymbolicClause {
    who: u32,
    op: char,
    perms: String,
}

impl Chmod {
    pub(crate) fn parse(text: &str) -> Result<Chmod> {
        let bad = || {
            Error::Copy(format!(
                "--chmod={text}: expected octal bits like 755 or symbolic clauses like u+x,go-w"
            ))
        };
        if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
            let mode = u32::from_str_radix(text, 8).map_err(|_| bad())?;
            if mode > 0o7777 {
                return Err(bad());
            }
            return Ok(Chmod::Octal(mode));
        }
        let mut clauses = Vec::new();
        for clause in text.split(',') {
            let op_at = clause.find(['+', '-', '=']).ok_or_else(bad)?;
            let (who_text, rest) = clause.split_at(op_at);
            let mut who = 0;
            for c in who_text.chars() {
                who |= match c {
                    'u' => 0o4700,
                    'g' => 0o2070,
                    'o' => 0o1007,
                    'a' => 0o7777,
                    _ => return Err(bad()),
                };
            }
            if who == 0 {
                who = 0o7777;
            }
            let mut chars = rest.chars();
            let op = chars.next().ok_or_else(bad)?;
            let perms: String = chars.collect();
            if !perms.chars().all(|c| "rwxXst".contains(c)) {
                return Err(bad());
            }
            clauses.push(SymbolicClause { who, op, perms });
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The new permission bits for an entry with `mode` (`is_dir` for `X`).
    pub(crate) fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(bits) => *bits,
            Chmod::Symbolic(clauses) => {
                let mut mode = mode & 0o7777;
                for clause in clauses {
                    let mut bits = 0;
                    for p in clause.perms.chars() {
                        bits |= match p {
                            'r' => 0o444,
                            'w' => 0o222,
                            'x' => 0o111,
                            'X' if is_dir || mode & 0o111 != 0 => 0o111,
                            's' => 0o6000,
                            't' => 0o1000,
                            _ => 0,
                        };
                    }
                    let bits = bits & clause.who;
                    match clause.op {
                        '+' => mode |= bits,
                        '-' => mode &= !bits,
                        _ => mode = (mode & !(clause.who & 0o777)) | bits,
                    }
                }
                mode
            }
        }
    }
}

/// One thing to put into the destination.
enum Item {
    /// A selected source entry (file, directory or symlink), with the
    /// `--parents` pivot of its source (what precedes a `/./`).
    Entry(SourceEntry, Option<String>),
    /// A heredoc: file name and content.
    Inline(String, String),
    /// An ADD of a git repository: its checkout, copied like a directory.
    Git(crate::BuildContext),
    /// An ADD of a URL: file name and the downloaded file.
    Download(String, std::path::PathBuf),
}

/// Builds the result of `step` under `out` (the layer's root), reading sources
/// from `source` and resolving the destination against `dest`. `keep_owner`
/// keeps the sources' uid/gid (COPY --from a stage or image) instead of root.
/// Returns the files that belong in the layer without being under `out`
/// (see [`ExtraFile`]), by path relative to `out`. With `keep_walks`, the
/// walks of source directories are kept in `source` once used (for the
/// cache key computed after the layer: see [`SourceFs::keep_walk`]).
pub(crate) fn build_tree(
    step: &CopyStep,
    source: &dyn SourceFs,
    dest: &dyn DestFs,
    keep_owner: bool,
    downloads: Option<&Downloads>,
    out: &Path,
    keep_walks: bool,
) -> Result<Vec<(String, ExtraFile)>> {
    let owner = chown_ids(step, dest)?;
    let chmod = step.chmod.as_deref().map(Chmod::parse).transpose()?;
    let excludes = Excludes::parse(step)?;
    let items = gather_items(step, source, keep_owner, downloads, &excludes)?;
    let target = Target::resolve(step, dest, &items)?;
    let mut writer = TreeWriter {
        out,
        dest,
        owner,
        chmod: chmod.as_ref(),
        keep_owner,
        created_dirs: Vec::new(),
        made: Some(FxHashMap::default()),
        extras: Vec::new(),
        parents_ensured: String::new(),
        keep_walks,
    };
    for item in &items {
        writer.write_item(step, source, item, &target, &excludes)?;
    }
    writer.finish_dirs()?;
    Ok(writer.into_extra())
}

/// The owner `--chown` asks for, looked up in the destination's
/// passwd/group files.
fn chown_ids(step: &CopyStep, dest: &dyn DestFs) -> Result<Option<(u32, u32)>> {
    let Some(spec) = &step.chown else {
        return Ok(None);
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec.as_str(), None),
    };
    let (uid, gid) = dest.ids(user, group)?;
    // Rootless with only root mapped: say which id and what to do.
    kiln_executor::check_owner_mapped(uid, gid, &format!("--chown={spec}"))?;
    Ok(Some((uid, gid)))
}

/// The step's `--exclude` patterns.
struct Excludes(Vec<Pattern>);

impl Excludes {
    fn parse(step: &CopyStep) -> Result<Excludes> {
        step.exclude
            .iter()
            .map(|text| {
                Pattern::new(&clean_relative(text))
                    .map_err(|bad| Error::Copy(format!("--exclude={text}: {}", bad.reason)))
            })
            .collect::<Result<Vec<_>>>()
            .map(Excludes)
    }

    /// Whether `rel` (or a directory above it) is excluded.
    fn excludes(&self, rel: &str) -> bool {
        self.0.iter().any(|p| matches_self_or_parent(p, rel))
    }
}

/// Everything the step puts into the destination, in order: each source's
/// selected entries (or checkout, or download), then the heredocs.
fn gather_items(
    step: &CopyStep,
    source: &dyn SourceFs,
    keep_owner: bool,
    downloads: Option<&Downloads>,
    excludes: &Excludes,
) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for src in &step.sources {
        if step.add && crate::remote_context::is_git_url(src) {
            let Some(downloads) = downloads else {
                return Err(Error::Copy(format!(
                    "ADD {src}: a git repository can only be added from the build context's stage"
                )));
            };
            let checkout = downloads.git(src, step.keep_git_dir)?;
            let tree = crate::BuildContext::new(&checkout.root, Default::default(), None)?;
            items.push(Item::Git(tree));
            continue;
        }
        if is_url(src) {
            let Some(downloads) = downloads.filter(|_| step.add) else {
                return Err(Error::Copy(format!(
                    "COPY {src}: COPY takes no URLs; use ADD to download a file"
                )));
            };
            let download = downloads.get(src, step.checksum.as_deref())?;
            items.push(Item::Download(url_file_name(src)?, download.path));
            continue;
        }
        let selected = select(source, src)?;
        let selected: Vec<_> = selected
            .into_iter()
            .filter(|e| !excludes.excludes(&e.rel))
            .collect();
        if selected.is_empty() {
            return Err(not_found(step, src, keep_owner));
        }
        let pivot = src.find("/./").map(|at| clean_relative(&src[..at]));
        items.extend(selected.into_iter().map(|e| Item::Entry(e, pivot.clone())));
    }
    for (name, content) in &step.heredocs {
        items.push(Item::Inline(name.clone(), content.clone()));
    }
    Ok(items)
}

/// A source that selects nothing: where it was looked for, and what to
/// check.
fn not_found(step: &CopyStep, src: &str, keep_owner: bool) -> Error {
    let root = match &step.from {
        _ if keep_owner => "source stage's root".to_string(),
        kiln_frontend::CopyFrom::Named(name) => format!("build context {name}"),
        _ => "build context".to_string(),
    };
    Error::Copy(format!(
        "{src}: not found in the {root}{}; check the path (it is relative to the {root}, whose symlinks are followed inside it only) and .dockerignore",
        if src.contains(['*', '?', '[']) {
            " (the wildcard matched nothing)"
        } else {
            ""
        },
    ))
}

/// The step's destination, resolved in the destination filesystem.
struct Target {
    /// The absolute path.
    path: String,
    /// Whether the items go into it (rather than becoming it).
    is_dir: bool,
}

impl Target {
    /// A destination is a directory when it says so (`/` at the end), or
    /// when one plain file is copied to an existing directory. Several
    /// items need a directory that says so.
    fn resolve(step: &CopyStep, dest: &dyn DestFs, items: &[Item]) -> Result<Target> {
        let dest_path = &step.dest;
        let wants_dir = step.dest_is_dir || dest_path.ends_with('/');
        if items.len() > 1 && !wants_dir {
            return Err(Error::Copy(format!(
                "when copying several sources the destination must be a directory and end with a `/`: write `{dest_path}/`"
            )));
        }
        let path = dest.resolve(dest_path)?;
        let single_file_into_dir = items.len() == 1
            && !wants_dir
            && match &items[0] {
                Item::Entry(e, _) => !e.meta.is_dir() && !is_archive_add(step, e)?,
                Item::Download(_, path) => !is_archive_download(step, path)?,
                Item::Inline(..) => true,
                Item::Git(_) => false,
            }
            && dest.is_dir(&path)?;
        Ok(Target {
            path,
            is_dir: wants_dir || single_file_into_dir,
        })
    }

    /// Where a file named `name` goes: into the directory, or the
    /// destination itself.
    fn file(&self, name: &str) -> String {
        if self.is_dir {
            join_abs(&self.path, name)
        } else {
            self.path.clone()
        }
    }
}

impl TreeWriter<'_> {
    /// Writes one item of the step to the destination.
    fn write_item(
        &mut self,
        step: &CopyStep,
        source: &dyn SourceFs,
        item: &Item,
        target: &Target,
        excludes: &Excludes,
    ) -> Result<()> {
        match item {
            Item::Inline(name, content) => self.write_inline(&target.file(name), content),
            Item::Download(name, path) if is_archive_download(step, path)? => {
                self.ensure_dir(&target.path, None)?;
                self.extract_archive(path, None, name, &target.path)
            }
            Item::Download(name, path) => self.write_download(&target.file(name), path),
            Item::Git(tree) => {
                // The repository's files go into the destination directory.
                let top = tree
                    .entry(".", true)?
                    .ok_or_else(|| Error::Copy("the git checkout is empty".into()))?;
                self.ensure_dir(&target.path, Some(&top))?;
                for inner in walk(tree, &top)?.iter().skip(1) {
                    let image_path = join_abs(&target.path, &inner.rel);
                    self.write_entry(tree, Cow::Borrowed(inner), &image_path)?;
                }
                Ok(())
            }
            Item::Entry(entry, pivot) => {
                let rel_under_parents = step
                    .parents
                    .then(|| parents_path(&entry.rel, pivot.as_deref()));
                if entry.meta.is_dir() {
                    let base = match &rel_under_parents {
                        Some(p) => join_abs(&target.path, p),
                        None => target.path.clone(),
                    };
                    self.write_source_dir(source, entry, &base, excludes)
                } else if is_archive_add(step, entry)? {
                    self.ensure_dir(&target.path, None)?;
                    self.extract_archive(&entry.host, Some(&entry.meta), &entry.rel, &target.path)
                } else {
                    let name = entry.rel.rsplit('/').next().unwrap_or(&entry.rel);
                    let path = match &rel_under_parents {
                        Some(p) => join_abs(&target.path, p),
                        None => target.file(name),
                    };
                    self.write_entry(source, Cow::Borrowed(entry), &path)
                }
            }
        }
    }

    /// Copies a source directory's contents to `base` (not excluded ones).
    fn write_source_dir(
        &mut self,
        source: &dyn SourceFs,
        entry: &SourceEntry,
        base: &str,
        excludes: &Excludes,
    ) -> Result<()> {
        self.ensure_dir(base, Some(entry))?;
        let entries = walk_once_more(source, entry)?;
        if let Some(made) = &mut self.made {
            made.reserve(entries.len());
        }
        if self.keep_walks {
            for inner in entries.iter().skip(1) {
                self.write_below(source, entry, Cow::Borrowed(inner), base, excludes)?;
            }
            source.keep_walk(entry, entries);
        } else {
            // The entries go into the extra files as they are.
            for inner in entries.into_iter().skip(1) {
                self.write_below(source, entry, Cow::Owned(inner), base, excludes)?;
            }
        }
        Ok(())
    }

    /// Writes `inner`, found below the source directory `top`, below `base`
    /// (unless excluded).
    fn write_below(
        &mut self,
        source: &dyn SourceFs,
        top: &SourceEntry,
        inner: Cow<'_, SourceEntry>,
        base: &str,
        excludes: &Excludes,
    ) -> Result<()> {
        let below = inner
            .rel
            .strip_prefix(top.rel.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .or_else(|| (top.rel == ".").then_some(inner.rel.as_str()))
            .unwrap_or(&inner.rel);
        // --exclude patterns are relative to the source directory, as
        // in BuildKit (or to the root).
        if excludes.excludes(below) || excludes.excludes(&inner.rel) {
            return Ok(());
        }
        let image_path = join_abs(base, below);
        self.write_entry(source, inner, &image_path)
    }
}

/// With `--parents`, the part of a source path that is kept: all of it, or
/// what follows the `/./` pivot of the source as written.
fn parents_path(rel: &str, pivot: Option<&str>) -> String {
    match pivot {
        Some(pivot) if pivot != "." => rel
            .strip_prefix(pivot)
            .map(clean_relative)
            .unwrap_or_else(|| clean_relative(rel)),
        _ => clean_relative(rel),
    }
}

fn join_abs(base: &str, rel: &str) -> String {
    let rel = clean_relative(rel);
    if rel == "." {
        return base.to_string();
    }
    if base.ends_with('/') {
        format!("{base}{rel}")
    } else {
        format!("{base}/{rel}")
    }
}

/// Whether ADD should unpack this source: a regular file that is a tar
/// archive, compressed or not (unless `--unpack=false`).
fn is_archive_add(step: &CopyStep, entry: &SourceEntry) -> Result<bool> {
    if !step.unpacks(false) || !entry.meta.is_file() {
        return Ok(false);
    }
    Ok(open_archive(&entry.host, Some(&entry.meta))?.is_some())
}

/// Whether ADD should unpack this download: `--unpack=true` and a tar
/// archive, compressed or not.
fn is_archive_download(step: &CopyStep, downloaded: &Path) -> Result<bool> {
    if !step.unpacks(true) {
        return Ok(false);
    }
    Ok(open_archive(downloaded, None)?.is_some())
}

/// Opens `path` as a tar stream when its content is a (compressed) tar. A
/// source the resolver found (`resolved`, its metadata) is opened as every
/// source file is: no link followed, and only the very file resolved.
fn open_archive(path: &Path, resolved: Option<&fs::Metadata>) -> Result<Option<Box<dyn Read>>> {
    let file = match resolved {
        Some(meta) => kiln_executor::open_resolved(path, meta),
        None => fs::File::open(path),
    }
    .map_err(io_err(path))?;
    // The store's one detector: gzip, bzip2, xz, zstd or plain, by content.
    let (_, reader) = kiln_cache::decompress_detected(file)
        .map_err(|e| io_err(path)(std::io::Error::other(e)))?;
    let reader: Box<dyn Read> = reader;
    // A tar header has "ustar" at offset 257 (or is an old v7 header with a
    // valid checksum); anything else is copied as a plain file.
    let mut reader = reader;
    let mut header = [0u8; 512];
    let got = match read_up_to(&mut reader, &mut header) {
        Ok(got) => got,
        Err(_) => return Ok(None),
    };
    if got < 512 || !is_tar_header(&header) {
        return Ok(None);
    }
    Ok(Some(Box::new(
        std::io::Cursor::new(header.to_vec()).chain(reader),
    )))
}

fn is_tar_header(header: &[u8; 512]) -> bool {
    if &header[257..262] == b"ustar" {
        return true;
    }
    // v7: the checksum field holds the sum of the header with that field as spaces.
    let field = String::from_utf8_lossy(&header[148..156]);
    let Ok(expected) = u32::from_str_radix(field.trim_matches(|c: char| c == ' ' || c == '\0'), 8)
    else {
        return false;
    };
    let sum: u32 = header
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    sum == expected && header[0] != 0
}

fn read_up_to(reader: &mut dyn Read, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("<archive>")(e)),
        }
    }
    Ok(got)
}

struct TreeWriter<'a> {
    out: &'a Path,
    dest: &'a dyn DestFs,
    owner: Option<(u32, u32)>,
    chmod: Option<&'a Chmod>,
    keep_owner: bool,
    /// Directories made here, with the metadata they get once everything is
    /// written (a read-only mode set early would block writing inside).
    created_dirs: Vec<(PathBuf, u32, u32, u32, Option<std::time::SystemTime>)>,
    /// Every path put in the tree so far, and what it is. The tree starts
    /// empty, so this answers "what is there" without a path lookup per
    /// file of a large COPY (and never follows a copied symlink out of the
    /// tree). `None` once an archive was unpacked into the tree: then the
    /// filesystem is asked (and there are no extra files).
    /// Keyed by the host path's bytes (hashing a `Path` walks its
    /// components, a cost per file of a large COPY).
    made: Option<FxHashMap<OsString, InTree>>,
    /// The extra files (see [`InTree::Extra`]) by tar path, in the order
    /// they were added (the walk's, nearly the tar's, so the layer writer
    /// has little to sort); `None` once a later source replaced one.
    extras: Vec<Option<(String, ExtraFile)>>,
    /// Keep each source directory's walk in the source once used.
    keep_walks: bool,
    /// The image path (cleaned) of the last directory `ensure_parents` made
    /// sure of, while `made` answers for the tree: the next file in the
    /// same directory skips the walk up its parents. Cleared whenever
    /// something leaves the tree.
    parents_ensured: String,
}

/// What is at a path of the tree.
enum InTree {
    Dir,
    /// A file or symlink in the tree.
    File,
    /// A file that keeps its source's owner and mode: not put in the tree
    /// but written into the layer straight from the source; where it is in
    /// [`TreeWriter::extras`].
    Extra(usize),
}

impl TreeWriter<'_> {
    fn host(&self, image_path: &str) -> PathBuf {
        self.out.join(clean_relative(image_path))
    }

    /// [`Self::host`], and the path relative to the tree it joins.
    fn host_and_rel(&self, image_path: &str) -> (PathBuf, String) {
        let rel = clean_relative(image_path);
        (self.out.join(&rel), rel)
    }

    /// Whether `host` is in the tree: `Some(is_dir)` or `None`.
    fn in_tree(&self, host: &Path) -> Option<bool> {
        match &self.made {
            Some(made) => made
                .get(host.as_os_str())
                .map(|what| matches!(what, InTree::Dir)),
            None => fs::symlink_metadata(host).ok().map(|m| m.is_dir()),
        }
    }

    fn note(&mut self, host: &Path, is_dir: bool) {
        if let Some(made) = &mut self.made {
            let what = if is_dir { InTree::Dir } else { InTree::File };
            made.insert(host.as_os_str().to_owned(), what);
        }
    }

    /// Forgets what `made` has at `host`; whether it was an extra file
    /// (which is not in the filesystem).
    fn forget_extra(&mut self, host: &Path) -> bool {
        let Some(made) = &mut self.made else {
            return false;
        };
        let Some(&InTree::Extra(at)) = made.get(host.as_os_str()) else {
            return false;
        };
        made.remove(host.as_os_str());
        if let Some(slot) = self.extras.get_mut(at) {
            *slot = None;
        }
        true
    }

    /// Removes what an earlier source put at `host`, so a later one wins.
    fn remove_existing(&mut self, host: &Path) -> Result<()> {
        let existing = self.in_tree(host);
        if existing.is_some() {
            self.parents_ensured.clear();
        }
        match existing {
            Some(true) => fs::remove_dir_all(host).map_err(io_err(host))?,
            Some(false) => {
                if !self.forget_extra(host) {
                    fs::remove_file(host).map_err(io_err(host))?;
                }
            }
            None => return Ok(()),
        }
        // With a directory go the extra files below it.
        if let Some(made) = &mut self.made {
            let extras = &mut self.extras;
            made.retain(|path, what| {
                let keep = !Path::new(path).starts_with(host);
                if let (false, InTree::Extra(at)) = (keep, what) {
                    if let Some(slot) = extras.get_mut(*at) {
                        *slot = None;
                    }
                }
                keep
            });
        }
        Ok(())
    }

    /// Puts the extra files in the tree for real (as hard links, or copies
    /// across filesystems), before something that only the filesystem tracks.
    fn materialize_extra(&mut self) -> Result<()> {
        let Some(made) = &mut self.made else {
            return Ok(());
        };
        for (host, what) in made.iter_mut() {
            if let InTree::Extra(at) = *what {
                let host = Path::new(host);
                if let Some((_, file)) = self.extras.get_mut(at).and_then(Option::take) {
                    if link_resolved(&file.source, &file.metadata, host).is_err() {
                        copy_resolved(&file.source, &file.metadata, host).map_err(io_err(host))?;
                    }
                }
                *what = InTree::File;
            }
        }
        Ok(())
    }

    /// The extra files by tar path (relative to the tree), in the order
    /// they were added (in place: 20,000 large entries are not copied).
    fn into_extra(self) -> Vec<(String, ExtraFile)> {
        self.extras.into_iter().flatten().collect()
    }

    /// Makes the parents of `image_path` in the tree, each with the metadata it
    /// has in the parent image (so the layer does not change them), or root
    /// 0755 when it is new.
    fn ensure_parents(&mut self, image_path: &str) -> Result<()> {
        let cleaned = clean_relative(image_path);
        let parent = cleaned.rsplit_once('/').map_or("", |(parent, _)| parent);
        let tracked = self.made.is_some();
        if tracked && !parent.is_empty() && parent == self.parents_ensured {
            return Ok(());
        }
        let mut prefix = String::new();
        let components: Vec<&str> = cleaned.split('/').collect();
        for component in components.iter().take(components.len().saturating_sub(1)) {
            prefix = join_abs(if prefix.is_empty() { "/" } else { &prefix }, component);
            let host = self.host(&prefix);
            if self.in_tree(&host) == Some(true) {
                continue;
            }
            let meta = self.dest.dir_meta(&prefix)?.unwrap_or(DirMeta {
                mode: 0o755,
                uid: 0,
                gid: 0,
            });
            self.make_dir(&host, meta.mode, meta.uid, meta.gid, None)?;
        }
        if tracked {
            self.parents_ensured.clear();
            self.parents_ensured.push_str(parent);
        }
        Ok(())
    }

    fn make_dir(
        &mut self,
        host: &Path,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: Option<std::time::SystemTime>,
    ) -> Result<()> {
        match self.in_tree(host) {
            Some(true) => {}
            Some(false) => {
                self.parents_ensured.clear();
                if !self.forget_extra(host) {
                    fs::remove_file(host).map_err(io_err(host))?;
                }
                fs::create_dir(host).map_err(io_err(host))?;
            }
            None => fs::create_dir(host).map_err(io_err(host))?,
        }
        self.note(host, true);
        self.created_dirs
            .retain(|(path, ..)| path.as_path() != host);
        self.created_dirs
            .push((host.to_path_buf(), mode, uid, gid, mtime));
        Ok(())
    }

    /// The destination directory of a directory copy: exists in the parent
    /// (keep its metadata) or is created (owned by --chown).
    fn ensure_dir(&mut self, image_path: &str, source: Option<&SourceEntry>) -> Result<()> {
        self.ensure_parents(image_path)?;
        let host = self.host(image_path);
        if image_path.trim_end_matches('/').is_empty() || clean_relative(image_path) == "." {
            return Ok(());
        }
        let resolved = image_path.trim_end_matches('/');
        let (mode, uid, gid) = match self.dest.dir_meta(resolved)? {
            Some(meta) => (meta.mode, meta.uid, meta.gid),
            None => {
                let (uid, gid) = self.owner.unwrap_or((0, 0));
                let mode = source.map(|s| s.meta.mode() & 0o7777).unwrap_or(0o755);
                (
                    self.chmod.map(|c| c.apply(mode, true)).unwrap_or(mode),
                    uid,
                    gid,
                )
            }
        };
        let mtime = source.and_then(|s| s.meta.modified().ok());
        self.make_dir(&host, mode, uid, gid, mtime)
    }

    fn owner_of(&self, entry: &SourceEntry) -> (u32, u32) {
        match self.owner {
            Some(ids) => ids,
            None if self.keep_owner => (entry.meta.uid(), entry.meta.gid()),
            None => (0, 0),
        }
    }

    /// Puts `entry` at `image_path` (owned when the caller is done with it:
    /// an extra file keeps its path and metadata).
    fn write_entry(
        &mut self,
        source: &dyn SourceFs,
        entry: Cow<'_, SourceEntry>,
        image_path: &str,
    ) -> Result<()> {
        let _ = source;
        self.ensure_parents(image_path)?;
        let (host, rel) = self.host_and_rel(image_path);
        let (uid, gid) = self.owner_of(&entry);
        let kind = entry.meta.file_type();
        let mode = entry.meta.mode() & 0o7777;
        if kind.is_dir() {
            let mode = self.chmod.map(|c| c.apply(mode, true)).unwrap_or(mode);
            return self.make_dir(&host, mode, uid, gid, entry.meta.modified().ok());
        }
        self.remove_existing(&host)?;
        if kind.is_symlink() {
            let target = fs::read_link(&entry.host).map_err(io_err(&entry.host))?;
            std::os::unix::fs::symlink(&target, &host).map_err(io_err(&host))?;
            self.note(&host, false);
            std::os::unix::fs::lchown(&host, Some(uid), Some(gid)).map_err(io_err(&host))?;
            return Ok(());
        }
        if !kind.is_file() {
            // Devices, fifos and sockets are not copied, as in BuildKit's copy
            // from the context; a stage's device nodes would need mknod.
            return Ok(());
        }
        // A file whose owner and mode stay as they are is not put in the
        // tree at all: the layer writer reads it from the source. Creating
        // and removing tens of thousands of links or copies is what makes a
        // large COPY slow. Once the filesystem is the record (after an
        // archive), it is hard-linked; another filesystem (EXDEV) falls
        // back to copying.
        if self.chmod.is_none() && (uid, gid) == (entry.meta.uid(), entry.meta.gid()) {
            if let Some(made) = &mut self.made {
                let SourceEntry {
                    host: source, meta, ..
                } = entry.into_owned();
                let file = ExtraFile {
                    source,
                    metadata: meta,
                };
                made.insert(host.into_os_string(), InTree::Extra(self.extras.len()));
                self.extras.push(Some((rel, file)));
                return Ok(());
            }
            if link_resolved(&entry.host, &entry.meta, &host).is_ok() {
                return Ok(());
            }
        }
        copy_resolved(&entry.host, &entry.meta, &host).map_err(io_err(&host))?;
        self.note(&host, false);
        let mode = self.chmod.map(|c| c.apply(mode, false)).unwrap_or(mode);
        finish_file(&host, mode, uid, gid, entry.meta.modified().ok())
    }

    fn write_inline(&mut self, image_path: &str, content: &str) -> Result<()> {
        self.ensure_parents(image_path)?;
        let host = self.host(image_path);
        self.remove_existing(&host)?;
        fs::write(&host, content).map_err(io_err(&host))?;
        self.note(&host, false);
        let (uid, gid) = self.owner.unwrap_or((0, 0));
        let mode = self.chmod.map(|c| c.apply(0o644, false)).unwrap_or(0o644);
        finish_file(&host, mode, uid, gid, None)
    }

    /// A downloaded file: mode 0600 as Docker gives remote files, owned by
    /// root unless --chown says otherwise (unpacked only with --unpack).
    fn write_download(&mut self, image_path: &str, downloaded: &Path) -> Result<()> {
        self.ensure_parents(image_path)?;
        let host = self.host(image_path);
        self.remove_existing(&host)?;
        fs::copy(downloaded, &host).map_err(io_err(&host))?;
        self.note(&host, false);
        let (uid, gid) = self.owner.unwrap_or((0, 0));
        let mode = self.chmod.map(|c| c.apply(0o600, false)).unwrap_or(0o600);
        finish_file(&host, mode, uid, gid, None)
    }

    /// Unpacks the archive at `archive` (called `name` in messages) into
    /// `image_dir`.
    fn extract_archive(
        &mut self,
        archive: &Path,
        resolved: Option<&fs::Metadata>,
        name: &str,
        image_dir: &str,
    ) -> Result<()> {
        let Some(stream) = open_archive(archive, resolved)? else {
            return Err(Error::Copy(format!("{name}: not an archive")));
        };
        let host = self.host(image_dir);
        // What the archive holds is only known to the filesystem from here.
        self.materialize_extra()?;
        self.made = None;
        self.parents_ensured.clear();
        fs::create_dir_all(&host).map_err(io_err(&host))?;
        unpack_archive(stream, &host, name)?;
        if let Some((uid, gid)) = self.owner {
            for found in walkdir::WalkDir::new(&host).min_depth(1) {
                let found = found.map_err(|e| Error::Copy(e.to_string()))?;
                std::os::unix::fs::lchown(found.path(), Some(uid), Some(gid))
                    .map_err(io_err(found.path()))?;
            }
        }
        Ok(())
    }

    /// Gives created directories their final mode, owner and mtime, deepest
    /// first so setting a parent's mtime is not undone by its children.
    fn finish_dirs(&mut self) -> Result<()> {
        let mut dirs = std::mem::take(&mut self.created_dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.0.components().count()));
        for (path, mode, uid, gid, mtime) in dirs {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(io_err(&path))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err(&path))?;
            if let Some(mtime) = mtime {
                let dir = fs::File::open(&path).map_err(io_err(&path))?;
                dir.set_modified(mtime).map_err(io_err(&path))?;
            }
        }
        Ok(())
    }
}

/// Unpacks a tar stream into `dir` as Docker's ADD does: owners, modes and
/// mtimes kept, device nodes and FIFOs made as such, an entry whose name
/// climbs with `..` refused by name. Directories come last, so their modes
/// and mtimes are not disturbed by what is written into them.
fn unpack_archive(stream: Box<dyn Read>, dir: &Path, source: &str) -> Result<()> {
    let unpack_err = |e: std::io::Error| {
        Error::Copy(format!(
            "ADD {source}: the archive cannot be unpacked: {e}; check that it is a complete tar archive"
        ))
    };
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let mut directories = Vec::new();
    for file in archive.entries().map_err(unpack_err)? {
        let mut file = file.map_err(unpack_err)?;
        let name = String::from_utf8_lossy(&file.path_bytes()).into_owned();
        if Path::new(&name)
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(Error::Copy(format!(
                "ADD {source}: entry {name:?} of the archive contains `..`, which could point outside the destination; re-create the archive without it"
            )));
        }
        let header = file.header();
        let special = match header.entry_type() {
            tar::EntryType::Directory => {
                directories.push(file);
                continue;
            }
            tar::EntryType::Fifo => Some(SpecialFile::Fifo),
            kind @ (tar::EntryType::Char | tar::EntryType::Block) => {
                let number = |n: std::io::Result<Option<u32>>| {
                    n.map(|n| u64::from(n.unwrap_or(0))).map_err(unpack_err)
                };
                let (major, minor) = (
                    number(header.device_major())?,
                    number(header.device_minor())?,
                );
                Some(if kind == tar::EntryType::Char {
                    SpecialFile::Char { major, minor }
                } else {
                    SpecialFile::Block { major, minor }
                })
            }
            _ => None,
        };
        match special {
            Some(special) => unpack_special(&file, special, dir, &name, source)?,
            None => {
                file.unpack_in(dir).map_err(unpack_err)?;
            }
        }
    }
    directories.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for mut directory in directories {
        directory.unpack_in(dir).map_err(unpack_err)?;
    }
    Ok(())
}

/// A device node or FIFO entry of an archive, created under `dir` at its
/// name resolved inside `dir` (a link in the archive cannot lead it out).
fn unpack_special<R: Read>(
    file: &tar::Entry<'_, R>,
    special: SpecialFile,
    dir: &Path,
    name: &str,
    source: &str,
) -> Result<()> {
    let bad = |what: String| {
        Error::Copy(format!(
            "ADD {source}: entry {name:?} of the archive: {what}"
        ))
    };
    let header = file.header();
    let (Some(parent), Some(base)) = (Path::new(name).parent(), Path::new(name).file_name()) else {
        return Ok(());
    };
    let parent = match resolve(&HostDir(dir.to_path_buf()), &parent.to_string_lossy(), true)
        .map_err(|e| bad(e.to_string()))?
    {
        Resolved::Found {
            node: Node::Dir(found),
            ..
        } => found.path().to_path_buf(),
        Resolved::Missing { path, .. } => {
            let made = dir.join(path.join("/"));
            fs::create_dir_all(&made).map_err(io_err(&made))?;
            made
        }
        _ => return Err(bad("its parent is not a directory".to_owned())),
    };
    let target = parent.join(base);
    match fs::symlink_metadata(&target) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(&target).map_err(io_err(&target))?,
        Ok(_) => fs::remove_file(&target).map_err(io_err(&target))?,
        Err(_) => {}
    }
    let number = |n: std::io::Result<u64>| n.map_err(|e| bad(e.to_string()));
    let mode = number(header.mode().map(u64::from))? as u32;
    let mtime = number(header.mtime())? as i64;
    special
        .create(&target, mode, mtime)
        .map_err(|e| bad(e.to_string()))?;
    let (uid, gid) = (number(header.uid())?, number(header.gid())?);
    std::os::unix::fs::lchown(&target, Some(uid as u32), Some(gid as u32))
        .map_err(io_err(&target))?;
    fs::set_permissions(&target, fs::Permissions::from_mode(mode & 0o7777)).map_err(io_err(&target))
}

fn finish_file(
    host: &Path,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Option<std::time::SystemTime>,
) -> Result<()> {
    std::os::unix::fs::chown(host, Some(uid), Some(gid)).map_err(io_err(host))?;
    // chown clears setuid bits, so the mode comes after it.
    fs::set_permissions(host, fs::Permissions::from_mode(mode)).map_err(io_err(host))?;
    if let Some(mtime) = mtime {
        let file = fs::File::options()
            .write(true)
            .open(host)
            .map_err(io_err(host))?;
        file.set_modified(mtime).map_err(io_err(host))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerignore::IgnoreRules;
    use crate::source::BuildContext;
    use kiln_frontend::CopyFrom;
    use std::collections::BTreeMap;

    /// A parent image with `/bin -> usr/bin`, `/usr/bin` and `/etc` directories
    /// and one user.
    struct FakeParent;

    impl DestFs for FakeParent {
        fn resolve(&self, path: &str) -> Result<String> {
            let cleaned = format!("/{}", clean_relative(path));
            let resolved = if cleaned == "/bin" || cleaned.starts_with("/bin/") {
                format!("/usr{cleaned}")
            } else {
                cleaned
            };
            Ok(if path.ends_with('/') && !resolved.ends_with('/') {
                format!("{resolved}/")
            } else {
                resolved
            })
        }
        fn is_dir(&self, path: &str) -> Result<bool> {
            Ok(matches!(
                path.trim_end_matches('/'),
                "" | "/usr" | "/usr/bin" | "/etc"
            ))
        }
        fn dir_meta(&self, path: &str) -> Result<Option<DirMeta>> {
            Ok(self.is_dir(path)?.then_some(DirMeta {
                mode: 0o751,
                uid: 0,
                gid: 0,
            }))
        }
        fn ids(&self, user: &str, group: Option<&str>) -> Result<(u32, u32)> {
            let id = |name: &str| match name {
                "app" => Ok(1000),
                "root" => Ok(0),
                other => {
                    numeric_id(other).ok_or_else(|| Error::Copy(format!("unknown user {other}")))
                }
            };
            let uid = id(user)?;
            Ok((uid, group.map(id).transpose()?.unwrap_or(uid)))
        }
    }

    fn step(sources: &[&str], dest: &str) -> CopyStep {
        CopyStep {
            add: false,
            sources: sources.iter().map(|s| s.to_string()).collect(),
            heredocs: Vec::new(),
            dest: dest.to_string(),
            dest_is_dir: dest.ends_with('/') || sources.len() > 1,
            from: CopyFrom::Context,
            chown: None,
            chmod: None,
            link: false,
            exclude: Vec::new(),
            parents: false,
            checksum: None,
            keep_git_dir: false,
            unpack: None,
            workdir: "/".to_string(),
        }
    }

    struct Fixture {
        _ctx_dir: tempfile::TempDir,
        ctx: BuildContext,
        out: tempfile::TempDir,
    }

    fn fixture(files: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = dir.path().join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
        let ctx = BuildContext::new(dir.path(), IgnoreRules::default(), None).unwrap();
        Fixture {
            _ctx_dir: dir,
            ctx,
            out: tempfile::tempdir().unwrap(),
        }
    }

    /// The tree as `path -> (mode, uid, gid, content)`.
    fn tree(root: &Path) -> BTreeMap<String, (u32, u32, u32, String)> {
        walkdir::WalkDir::new(root)
            .min_depth(1)
            .into_iter()
            .map(|e| {
                let e = e.unwrap();
                let meta = e.path().symlink_metadata().unwrap();
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let content = if meta.is_file() {
                    String::from_utf8_lossy(&fs::read(e.path()).unwrap()).into_owned()
                } else if meta.is_dir() {
                    "<dir>".to_string()
                } else {
                    format!("-> {}", fs::read_link(e.path()).unwrap().display())
                };
                (rel, (meta.mode() & 0o7777, meta.uid(), meta.gid(), content))
            })
            .collect()
    }

    /// build_tree, with the extra files then linked into the tree, as the
    /// layer will have them.
    fn build(s: &CopyStep, source: &dyn SourceFs, keep_owner: bool, out: &Path) -> Result<()> {
        for (rel, file) in build_tree(s, source, &FakeParent, keep_owner, None, out, false)? {
            fs::hard_link(&file.source, out.join(rel)).unwrap();
        }
        Ok(())
    }

    fn run(f: &Fixture, s: &CopyStep) -> Result<BTreeMap<String, (u32, u32, u32, String)>> {
        build(s, &f.ctx, false, f.out.path())?;
        Ok(tree(f.out.path()))
    }

    fn paths(t: &BTreeMap<String, (u32, u32, u32, String)>) -> Vec<&str> {
        t.keys().map(String::as_str).collect()
    }

    #[test]
    fn file_to_path_to_dir_and_into_existing_dir() {
        let f = fixture(&[("a.txt", "A")]);
        let t = run(&f, &step(&["a.txt"], "/opt/b.txt")).unwrap();
        assert_eq!(paths(&t), ["opt", "opt/b.txt"]);
        assert_eq!(t["opt"].0, 0o755);
        assert_eq!(t["opt/b.txt"].3, "A");

        let f = fixture(&[("a.txt", "A")]);
        let t = run(&f, &step(&["a.txt"], "/opt/")).unwrap();
        assert_eq!(paths(&t), ["opt", "opt/a.txt"]);

        // /etc exists as a directory in the parent: the file goes into it and
        // /etc keeps the parent's mode.
        let f = fixture(&[("a.txt", "A")]);
        let t = run(&f, &step(&["a.txt"], "/etc")).unwrap();
        assert_eq!(paths(&t), ["etc", "etc/a.txt"]);
        assert_eq!(t["etc"].0, 0o751);
    }

    #[test]
    fn destination_follows_parent_symlinks() {
        let f = fixture(&[("tool", "#!/bin/sh\n")]);
        let t = run(&f, &step(&["tool"], "/bin/")).unwrap();
        assert_eq!(paths(&t), ["usr", "usr/bin", "usr/bin/tool"]);
    }

    #[test]
    fn directory_source_copies_its_contents() {
        let f = fixture(&[("src/a", "1"), ("src/sub/b", "2")]);
        let t = run(&f, &step(&["src"], "/app")).unwrap();
        assert_eq!(paths(&t), ["app", "app/a", "app/sub", "app/sub/b"]);
        assert_eq!(t["app/sub/b"].1, 0, "context files belong to root");
    }

    #[test]
    fn several_sources_need_a_directory_destination() {
        let f = fixture(&[("a", "1"), ("b", "2")]);
        let mut s = step(&["a", "b"], "/x");
        s.dest_is_dir = false;
        let err = run(&f, &s).unwrap_err().to_string();
        assert!(err.contains("must be a directory"), "{err}");
        let t = run(&f, &step(&["a", "b"], "/x/")).unwrap();
        assert_eq!(paths(&t), ["x", "x/a", "x/b"]);
    }

    #[test]
    fn wildcards_and_missing_sources() {
        let f = fixture(&[("a.txt", "1"), ("b.txt", "2"), ("c.md", "3")]);
        let t = run(&f, &step(&["*.txt"], "/d/")).unwrap();
        assert_eq!(paths(&t), ["d", "d/a.txt", "d/b.txt"]);
        let err = run(&f, &step(&["*.rs"], "/d/")).unwrap_err().to_string();
        assert!(err.contains("matched nothing"), "{err}");
        let err = run(&f, &step(&["nope"], "/d/")).unwrap_err().to_string();
        assert!(err.contains("nope: not found"), "{err}");
    }

    #[test]
    fn chown_and_chmod() {
        let f = fixture(&[("dir/a", "1")]);
        let mut s = step(&["dir"], "/home/app/");
        s.chown = Some("app".into());
        s.chmod = Some("640".into());
        let t = run(&f, &s).unwrap();
        assert_eq!(t["home/app/a"], (0o640, 1000, 1000, "1".into()));
        assert_eq!(t["home"].1, 0, "parents that did not exist belong to root");
        assert_eq!(
            t["home/app"].1, 1000,
            "the destination belongs to the --chown user"
        );

        let f = fixture(&[("a", "1")]);
        let mut s = step(&["a"], "/a");
        s.chown = Some("1:2".into());
        s.chmod = Some("u+x,go-r".into());
        let t = run(&f, &s).unwrap();
        assert_eq!(
            (t["a"].0 & 0o777, t["a"].1, t["a"].2),
            (0o700 & (0o644 | 0o100), 1, 2)
        );

        let mut s = step(&["a"], "/a");
        s.chown = Some("nobody-here".into());
        assert!(run(&f, &s)
            .unwrap_err()
            .to_string()
            .contains("unknown user"));
        let mut s = step(&["a"], "/a");
        s.chmod = Some("9z".into());
        assert!(run(&f, &s).unwrap_err().to_string().contains("--chmod"));
    }

    #[test]
    fn symbolic_chmod() {
        let c = Chmod::parse("a+X").unwrap();
        assert_eq!(c.apply(0o644, false), 0o644);
        assert_eq!(c.apply(0o644, true), 0o755);
        assert_eq!(c.apply(0o744, false), 0o755);
        assert_eq!(Chmod::parse("g=r").unwrap().apply(0o777, false), 0o747);
        assert_eq!(Chmod::parse("755").unwrap(), Chmod::Octal(0o755));
        assert!(Chmod::parse("17777").is_err());
    }

    #[test]
    fn parents_and_exclude() {
        let f = fixture(&[("x/y/a.txt", "1"), ("x/y/b.log", "2"), ("z/c.txt", "3")]);
        let mut s = step(&["x/y/a.txt", "z/c.txt"], "/out/");
        s.parents = true;
        let t = run(&f, &s).unwrap();
        assert!(
            t.contains_key("out/x/y/a.txt") && t.contains_key("out/z/c.txt"),
            "{t:?}"
        );

        let f = fixture(&[("x/y/a.txt", "1"), ("x/y/b.log", "2")]);
        let mut s = step(&["x"], "/out/");
        s.exclude = vec!["**/*.log".into()];
        let t = run(&f, &s).unwrap();
        assert_eq!(paths(&t), ["out", "out/y", "out/y/a.txt"]);
    }

    #[test]
    fn heredoc_sources() {
        let f = fixture(&[]);
        let mut s = step(&[], "/etc/");
        s.heredocs = vec![("motd".into(), "hello\n".into())];
        let t = run(&f, &s).unwrap();
        assert_eq!(t["etc/motd"], (0o644, 0, 0, "hello\n".into()));
    }

    fn tar_bytes() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o600);
        header.set_uid(7);
        header.set_gid(8);
        header.set_cksum();
        builder
            .append_data(&mut header, "inner/file", &b"hello"[..])
            .unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn an_archive_swapped_after_it_was_resolved_is_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let (resolved, swapped) = (dir.path().join("a.tar"), dir.path().join("b.tar"));
        std::fs::write(&resolved, tar_bytes()).unwrap();
        std::fs::write(&swapped, tar_bytes()).unwrap();
        let meta = std::fs::metadata(&resolved).unwrap();
        assert!(open_archive(&resolved, Some(&meta)).unwrap().is_some());
        // Another inode at the resolved path, as a swap would leave it.
        std::fs::rename(&swapped, &resolved).unwrap();
        assert!(open_archive(&resolved, Some(&meta)).is_err());
    }

    #[test]
    fn add_unpacks_archives_by_content() {
        let plain = tar_bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &plain).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&plain[..], 1).unwrap();
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
        std::io::Write::write_all(&mut xz, &plain).unwrap();
        let xz = xz.finish().unwrap();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        std::io::Write::write_all(&mut bz, &plain).unwrap();
        let bz = bz.finish().unwrap();
        for (name, bytes) in [
            ("p.tar", plain),
            ("g.bin", gz),
            ("z.data", zst),
            ("x", xz),
            ("b", bz),
        ] {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join(name), &bytes).unwrap();
            let ctx = BuildContext::new(dir.path(), IgnoreRules::default(), None).unwrap();
            let out = tempfile::tempdir().unwrap();
            let mut s = step(&[name], "/dst");
            s.add = true;
            build(&s, &ctx, false, out.path()).unwrap();
            let t = tree(out.path());
            assert_eq!(t["dst/inner/file"], (0o600, 7, 8, "hello".into()), "{name}");
            // COPY never unpacks.
            let out = tempfile::tempdir().unwrap();
            build(&step(&[name], "/dst"), &ctx, false, out.path()).unwrap();
            assert!(out.path().join("dst").is_file(), "{name}");
        }
        // A gzip file that is not a tar is copied as it is.
        let f = fixture(&[]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"just text").unwrap();
        fs::write(f.ctx.root().join("t.gz"), gz.finish().unwrap()).unwrap();
        let mut s = step(&["t.gz"], "/");
        s.add = true;
        s.dest_is_dir = true;
        let t = run(&f, &s).unwrap();
        assert!(t.contains_key("t.gz"));
    }

    /// Serves `body` once on loopback; the URL of `/name`.
    fn serve_once(body: Vec<u8>, name: &str) -> (String, std::thread::JoinHandle<()>) {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/{name}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).unwrap();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&body).unwrap();
        });
        (url, server)
    }

    #[test]
    fn unpack_flag_decides_for_local_archives_and_downloads() {
        let f = fixture(&[]);
        fs::write(f.ctx.root().join("a.tar"), tar_bytes()).unwrap();
        let mut s = step(&["a.tar"], "/dst/");
        s.add = true;
        s.unpack = Some(false);
        let t = run(&f, &s).unwrap();
        assert!(t.contains_key("dst/a.tar"), "{t:?}");
        assert!(!t.contains_key("dst/inner/file"), "{t:?}");

        // Downloads are unpacked only with --unpack=true.
        for (unpack, unpacked) in [(None, false), (Some(false), false), (Some(true), true)] {
            let (url, server) = serve_once(tar_bytes(), "t.tar");
            let tmp = tempfile::tempdir().unwrap();
            let downloads = Downloads::new(tmp.path()).unwrap();
            let out = tempfile::tempdir().unwrap();
            let mut s = step(&[url.as_str()], "/opt/");
            s.add = true;
            s.unpack = unpack;
            build_tree(
                &s,
                &f.ctx,
                &FakeParent,
                false,
                Some(&downloads),
                out.path(),
                false,
            )
            .unwrap();
            server.join().unwrap();
            let t = tree(out.path());
            assert_eq!(
                t.contains_key("opt/inner/file"),
                unpacked,
                "{unpack:?}: {t:?}"
            );
            assert_eq!(t.contains_key("opt/t.tar"), !unpacked, "{unpack:?}: {t:?}");
        }
    }

    #[test]
    fn copy_of_a_url_is_a_clear_error() {
        let f = fixture(&[]);
        let s = step(&["https://example.com/x.tar"], "/");
        let err = run(&f, &s).unwrap_err().to_string();
        assert!(err.contains("COPY takes no URLs"), "{err}");
    }
}
