//! Directory trees to OCI layer tars: the overlay upper dir of a step (with
//! whiteouts) or a plain directory (for COPY).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{io_err, Error, Result};
use crate::resolve::open_resolved;
use crate::snapshot::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::userns::is_opaque;
use crate::userns::is_overlay_xattr;
use crate::view::{is_whiteout, RootfsView};

/// How layer tars are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffOptions {
    /// When set, every mtime later than this (seconds since the epoch) is
    /// clamped to it, so rebuilding the same step gives the same digest.
    pub source_date_epoch: Option<i64>,
    /// BLAKE3 each [`ExtraFile`]'s data as it goes into the tar, into
    /// [`LayerSummary::extra_digests`] (for a cache key that could not be
    /// known before the files were read: they are read once, not twice).
    pub digest_extra_files: bool,
}

/// What was written into a layer tar.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerSummary {
    /// Number of tar entries (files, directories, links, whiteouts).
    pub entries: u64,
    /// Whether the layer changes nothing (no entries).
    pub empty: bool,
    /// With [`DiffOptions::digest_extra_files`]: the BLAKE3 of the data of
    /// each extra file the tar has the data of, by its source, as copied
    /// (its listed size). A file written as a hard link to one before it has
    /// none.
    pub extra_digests: Vec<(PathBuf, [u8; 32])>,
}

/// The changes a step made: its overlay upper directory over its lower snapshots.
/// It lives in the step's scratch directory; the caller removes that directory
/// (with [`remove_tree`](crate::remove_tree)) once the layer is written.
#[derive(Debug, Clone)]
pub struct Upper {
    pub(crate) dir: PathBuf,
    pub(crate) lowers: Vec<PathBuf>,
}

impl Upper {
    /// An upper dir made by overlayfs over `lowers` (bottom first): whiteouts are
    /// char devices 0:0, opaque directories carry `trusted.overlay.opaque=y`.
    pub fn new(dir: impl Into<PathBuf>, lowers: Vec<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            lowers,
        }
    }

    /// The upper directory on the host.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes the changes as an OCI layer tar (uncompressed) into `sink`:
    /// deletions as `.wh.NAME`, replaced directories as `.wh..wh..opq`, entries
    /// sorted by path, hard links as tar hard links, modes with
    /// setuid/setgid/sticky, uid/gid, xattrs (except overlayfs' own). Directories
    /// that overlayfs merely copied up (same owner, mode and xattrs as below and
    /// nothing changed inside) are left out.
    pub fn write_layer<W: Write>(&self, sink: W, options: &DiffOptions) -> Result<LayerSummary> {
        let view = RootfsView::new(&self.lowers);
        let walker = Walker {
            overlay: Some(&view),
        };
        let mut entries = Vec::new();
        walker.collect(&self.dir, "", &mut entries)?;
        entries.sort_by(|a, b| tar_order(&a.path, &b.path));
        write_entries(&self.dir, &entries, sink, options)
    }
}

/// Writes a plain directory tree (without the directory itself) as a layer tar,
/// with the same ordering, hard link, ownership, xattr and mtime rules as
/// [`Upper::write_layer`]. Nothing is interpreted as a whiteout.
pub fn write_dir_layer<W: Write>(
    dir: &Path,
    sink: W,
    options: &DiffOptions,
) -> Result<LayerSummary> {
    write_dir_layer_with(dir, Vec::new(), sink, options)
}

/// A regular file that belongs in a directory layer without being in the
/// directory: its bytes are read from `source` and its mode, owner and mtime
/// are `metadata`'s (`lstat` of `source`). A large COPY of files that keep
/// their owner and mode saves creating and removing one link per file.
#[derive(Debug, Clone)]
pub struct ExtraFile {
    /// The host file whose bytes the entry gets.
    pub source: PathBuf,
    /// The entry's mode, owner and mtime (`lstat` of `source`).
    pub metadata: Metadata,
}

/// [`write_dir_layer`] of `dir` plus `extra` regular files, by tar path
/// (relative, no trailing slash, in any order); their parent directories
/// must be in `dir`, and nothing in `dir` may have the same path.
pub fn write_dir_layer_with<W: Write>(
    dir: &Path,
    extra: impl IntoIterator<Item = (String, ExtraFile)>,
    sink: W,
    options: &DiffOptions,
) -> Result<LayerSummary> {
    let walker = Walker { overlay: None };
    let mut entries = Vec::new();
    walker.collect(dir, "", &mut entries)?;
    let extra = extra.into_iter();
    entries.reserve(extra.size_hint().0);
    for (path, file) in extra {
        if !file.metadata.is_file() {
            return Err(Error::Io {
                action: "write layer entry",
                path: file.source,
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        entries.push(Entry {
            path,
            kind: Kind::Object(file.metadata),
            source: Some(file.source),
        });
    }
    entries.sort_by(|a, b| tar_order(&a.path, &b.path));
    write_entries(dir, &entries, sink, options)
}

enum Kind {
    /// A real filesystem object at the relative path.
    Object(Metadata),
    /// `.wh.NAME` for a deleted path.
    Whiteout,
    /// `.wh..wh..opq` inside an opaque directory.
    OpaqueMarker,
}

struct Entry {
    /// Tar path, relative, without trailing slash.
    path: String,
    kind: Kind,
    /// Where the object is read when not at `path` under the root.
    source: Option<PathBuf>,
}

struct Walker<'a> {
    /// The lower view when walking an overlay upper dir.
    overlay: Option<&'a RootfsView>,
}

impl Walker<'_> {
    /// Appends the entries under `dir` (tar path prefix `rel`) in sorted order;
    /// returns whether anything was appended.
    fn collect(&self, dir: &Path, rel: &str, out: &mut Vec<Entry>) -> Result<bool> {
        let mut names: Vec<OsString> = fs::read_dir(dir)
            .map_err(io_err("list", dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(io_err("list", dir))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let start = out.len();
        for name in names {
            let host = dir.join(&name);
            let name = name.to_str().ok_or_else(|| Error::Io {
                action: "write layer entry",
                path: host.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, "file name is not UTF-8"),
            })?;
            let path = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            let meta = fs::symlink_metadata(&host).map_err(io_err("inspect", &host))?;
            if self.overlay.is_some() && is_whiteout(&meta) {
                let whiteout = match path.rsplit_once('/') {
                    Some((parent, name)) => format!("{parent}/{WHITEOUT_PREFIX}{name}"),
                    None => format!("{WHITEOUT_PREFIX}{name}"),
                };
                out.push(Entry {
                    path: whiteout,
                    kind: Kind::Whiteout,
                    source: None,
                });
                continue;
            }
            if !meta.is_dir() {
                out.push(Entry {
                    path,
                    kind: Kind::Object(meta),
                    source: None,
                });
                continue;
            }
            let opaque = self.overlay.is_some() && is_opaque(&host);
            let index = out.len();
            out.push(Entry {
                path: path.clone(),
                kind: Kind::Object(meta),
                source: None,
            });
            if opaque {
                out.push(Entry {
                    path: format!("{path}/{OPAQUE_MARKER}"),
                    kind: Kind::OpaqueMarker,
                    source: None,
                });
            }
            let changed_inside = self.collect(&host, &path, out)?;
            if !opaque && !changed_inside {
                if let Some(view) = self.overlay {
                    if let Kind::Object(meta) = &out[index].kind {
                        if is_copied_up_only(view, &path, &host, meta)? {
                            out.truncate(index);
                        }
                    }
                }
            }
        }
        Ok(out.len() > start)
    }
}

/// Orders paths so that a directory comes before its contents and siblings sort
/// bytewise: component by component, which for clean paths is bytewise with
/// `/` below every other byte (a component that ends first sorts first). A
/// layer of 20,000 files sorts its entries with this on its critical path.
fn tar_order(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let rank = |c: Option<&u8>| c.map(|&c| if c == b'/' { 0 } else { u16::from(c) + 1 });
    rank(a.get(common)).cmp(&rank(b.get(common)))
}

/// Whether an upper directory only exists because overlayfs copied it up (its
/// owner, mode and xattrs equal the lower one's).
fn is_copied_up_only(view: &RootfsView, path: &str, host: &Path, meta: &Metadata) -> Result<bool> {
    let Some(lower) = view.lookup(path, false)? else {
        return Ok(false);
    };
    let lm = &lower.metadata;
    if !lm.is_dir() || lm.mode() != meta.mode() || lm.uid() != meta.uid() || lm.gid() != meta.gid()
    {
        return Ok(false);
    }
    Ok(read_xattrs(host, None)? == read_xattrs(&lower.host_path, None)?)
}

/// The xattrs of `path` worth keeping in a layer, read through `file` (the
/// open `path`) when there is one: no path lookup per call.
fn read_xattrs(path: &Path, file: Option<&fs::File>) -> Result<Vec<(String, Vec<u8>)>> {
    use xattr::FileExt;
    let mut out = Vec::new();
    let listed = match file {
        Some(file) => file.list_xattr(),
        None => xattr::list(path),
    };
    let names = match listed {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(io_err("list xattrs of", path)(e)),
    };
    for name in names {
        let Some(name) = name.to_str() else { continue };
        if is_overlay_xattr(name) {
            continue;
        }
        let value = match file {
            Some(file) => file.get_xattr(name),
            None => xattr::get(path, name),
        };
        if let Some(value) = value.map_err(io_err("read xattr of", path))? {
            out.push((name.to_owned(), value));
        }
    }
    out.sort();
    Ok(out)
}

fn write_entries<W: Write>(
    root: &Path,
    entries: &[Entry],
    sink: W,
    options: &DiffOptions,
) -> Result<LayerSummary> {
    let mut builder = tar::Builder::new(sink);
    builder.mode(tar::HeaderMode::Complete);
    builder.follow_symlinks(false);
    let mut layer = LayerWriter {
        builder,
        options,
        first_paths: HashMap::new(),
        extra_digests: Vec::new(),
        buffer: Vec::new(),
    };
    for entry in entries {
        match &entry.kind {
            Kind::Whiteout | Kind::OpaqueMarker => layer.marker(entry)?,
            Kind::Object(meta) => {
                let host = entry
                    .source
                    .clone()
                    .unwrap_or_else(|| root.join(&entry.path));
                layer.object(entry, &host, meta)?;
            }
        }
    }
    let count = entries
        .iter()
        .filter(|e| !matches!(&e.kind, Kind::Object(m) if m.file_type().is_socket()))
        .count() as u64;
    layer.builder.into_inner().map_err(|e| Error::Io {
        action: "finish layer of",
        path: root.to_path_buf(),
        source: e,
    })?;
    Ok(LayerSummary {
        entries: count,
        empty: count == 0,
        extra_digests: layer.extra_digests,
    })
}

/// The buffer the tar writer copies an entry's data through (std's
/// `io::copy` on a `dyn Read`).
const TAR_COPY_BUFFER: u64 = 8 * 1024;

/// A regular file's entry: another link to an inode already in the layer
/// (by its first path), or the file itself, open.
enum FileData {
    LinkTo(String),
    Open(fs::File),
}

/// The tar of a layer being written, entry by entry.
struct LayerWriter<'o, W: Write> {
    builder: tar::Builder<W>,
    options: &'o DiffOptions,
    /// The first path of each file with several links seen so far: later
    /// ones are written as hard links to it.
    first_paths: HashMap<(u64, u64), String>,
    /// See [`LayerSummary::extra_digests`].
    extra_digests: Vec<(PathBuf, [u8; 32])>,
    /// What a small file's data is read into when it is digested.
    buffer: Vec<u8>,
}

/// `len` bytes of a file larger than [`TAR_COPY_BUFFER`]. The tar writer
/// copies through its 8 KiB buffer: reading the file in up to 1 MiB pieces
/// saves a large file's tens of thousands of read calls.
fn large_file_reader(file: fs::File, len: u64) -> io::Take<io::BufReader<fs::File>> {
    let capacity = usize::try_from(len).unwrap_or(usize::MAX).min(1 << 20);
    io::Read::take(io::BufReader::with_capacity(capacity, file), len)
}

/// A reader that BLAKE3s what is read through it.
struct Digesting<'h, R> {
    inner: R,
    hasher: &'h mut blake3::Hasher,
}

impl<R: io::Read> io::Read for Digesting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}

/// The error of writing `path`'s entry.
fn tar_err(path: &str) -> impl FnOnce(io::Error) -> Error {
    let path = PathBuf::from(path);
    move |e: io::Error| Error::Io {
        action: "write layer entry",
        path,
        source: e,
    }
}

impl<W: Write> LayerWriter<'_, W> {
    /// A header owned by root, with the layer's default time.
    fn header(&self) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(
            self.options
                .source_date_epoch
                .map_or(0, |e| e.max(0) as u64),
        );
        header
    }

    /// `mtime` no later than `SOURCE_DATE_EPOCH`, when it is set.
    fn clamp(&self, mtime: i64) -> u64 {
        let mtime = match self.options.source_date_epoch {
            Some(epoch) if mtime > epoch => epoch,
            _ => mtime,
        };
        mtime.max(0) as u64
    }

    /// A whiteout or opaque marker: an empty regular file.
    fn marker(&mut self, entry: &Entry) -> Result<()> {
        let mut header = self.header();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(0);
        self.builder
            .append_data(&mut header, &entry.path, io::empty())
            .map_err(tar_err(&entry.path))
    }

    /// A file, directory, link or special file found at `host`, with its
    /// xattrs (sockets are skipped).
    fn object(&mut self, entry: &Entry, host: &Path, meta: &fs::Metadata) -> Result<()> {
        if meta.file_type().is_socket() {
            // Sockets cannot be stored in a tar; Docker skips them as well.
            // Before any record: a socket's xattrs must not go to the next entry.
            return Ok(());
        }
        // A regular file's data is settled first: a file is opened, and its
        // xattrs are read through the descriptor its data then comes from.
        let data = if meta.is_file() {
            Some(self.file_data(host, meta)?)
        } else {
            None
        };
        let opened = match &data {
            Some(FileData::Open(file)) => Some(file),
            _ => None,
        };
        let xattrs = read_xattrs(host, opened)?;
        if !xattrs.is_empty() {
            let records: Vec<(String, &[u8])> = xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                .collect();
            self.builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                .map_err(tar_err(&entry.path))?;
        }
        let mut header = self.header();
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(u64::from(meta.uid()));
        header.set_gid(u64::from(meta.gid()));
        header.set_mtime(self.clamp(meta.mtime()));
        header.set_size(0);
        let file_type = meta.file_type();
        if file_type.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            self.builder
                .append_data(&mut header, format!("{}/", entry.path), io::empty())
                .map_err(tar_err(&entry.path))
        } else if file_type.is_symlink() {
            header.set_entry_type(tar::EntryType::Symlink);
            let target = fs::read_link(host).map_err(io_err("read link", host))?;
            self.builder
                .append_link(&mut header, &entry.path, &target)
                .map_err(tar_err(&entry.path))
        } else if let Some(data) = data {
            let digest = self.options.digest_extra_files && entry.source.is_some();
            self.file(entry, data, meta, header, digest)
        } else {
            // A device node or FIFO (sockets were skipped above).
            self.special(entry, meta, header)
        }
    }

    /// Where the regular file at `host` comes from: a hard link to the
    /// first path of its inode already written, or the file opened.
    fn file_data(&self, host: &Path, meta: &fs::Metadata) -> Result<FileData> {
        if meta.nlink() > 1 {
            if let Some(first) = self.first_paths.get(&(meta.dev(), meta.ino())) {
                return Ok(FileData::LinkTo(first.clone()));
            }
        }
        Ok(FileData::Open(
            open_resolved(host, meta).map_err(io_err("read", host))?,
        ))
    }

    /// A regular file: its data (BLAKE3'd into `extra_digests` with
    /// `digest`), or a hard link to its first path.
    fn file(
        &mut self,
        entry: &Entry,
        data: FileData,
        meta: &fs::Metadata,
        mut header: tar::Header,
        digest: bool,
    ) -> Result<()> {
        let file = match data {
            FileData::LinkTo(first) => {
                header.set_entry_type(tar::EntryType::Link);
                return self
                    .builder
                    .append_link(&mut header, &entry.path, &first)
                    .map_err(tar_err(&entry.path));
            }
            FileData::Open(file) => file,
        };
        if meta.nlink() > 1 {
            self.first_paths
                .insert((meta.dev(), meta.ino()), entry.path.clone());
        }
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(meta.len());
        match entry.source.as_ref().filter(|_| digest) {
            Some(source) => {
                let digest = self.digested_data(entry, file, meta.len(), header)?;
                self.extra_digests.push((source.clone(), digest));
                Ok(())
            }
            None => self.data(entry, file, meta.len(), header),
        }
    }

    /// Appends a regular file's entry with exactly `len` bytes of `file`
    /// (the listed size: a file that changes size while being archived
    /// would otherwise corrupt the tar).
    fn data(
        &mut self,
        entry: &Entry,
        file: fs::File,
        len: u64,
        mut header: tar::Header,
    ) -> Result<()> {
        let appended = if len <= TAR_COPY_BUFFER {
            // One read into the tar writer's own buffer.
            let reader = io::Read::take(file, len);
            self.builder.append_data(&mut header, &entry.path, reader)
        } else {
            let reader = large_file_reader(file, len);
            self.builder.append_data(&mut header, &entry.path, reader)
        };
        appended.map_err(tar_err(&entry.path))
    }

    /// [`Self::data`], returning the BLAKE3 of the bytes appended. A small
    /// file is read whole into one buffer, hashed there and appended from
    /// it; a larger one is hashed as the tar writer reads it.
    fn digested_data(
        &mut self,
        entry: &Entry,
        file: fs::File,
        len: u64,
        mut header: tar::Header,
    ) -> Result<[u8; 32]> {
        if len <= TAR_COPY_BUFFER {
            let mut data = std::mem::take(&mut self.buffer);
            data.clear();
            let read = io::Read::take(file, len).read_to_end(&mut data);
            let appended = read.and_then(|got| {
                if got as u64 != len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while the layer was written",
                    ));
                }
                self.builder
                    .append_data(&mut header, &entry.path, data.as_slice())
            });
            let digest = *blake3::hash(&data).as_bytes();
            self.buffer = data;
            appended.map_err(tar_err(&entry.path))?;
            return Ok(digest);
        }
        let mut hasher = blake3::Hasher::new();
        let reader = Digesting {
            inner: large_file_reader(file, len),
            hasher: &mut hasher,
        };
        self.builder
            .append_data(&mut header, &entry.path, reader)
            .map_err(tar_err(&entry.path))?;
        Ok(*hasher.finalize().as_bytes())
    }

    /// A device node or FIFO.
    fn special(
        &mut self,
        entry: &Entry,
        meta: &fs::Metadata,
        mut header: tar::Header,
    ) -> Result<()> {
        let file_type = meta.file_type();
        header.set_entry_type(if file_type.is_char_device() {
            tar::EntryType::Char
        } else if file_type.is_block_device() {
            tar::EntryType::Block
        } else {
            tar::EntryType::Fifo
        });
        let rdev = meta.rdev();
        header
            .set_device_major(nix::sys::stat::major(rdev) as u32)
            .map_err(tar_err(&entry.path))?;
        header
            .set_device_minor(nix::sys::stat::minor(rdev) as u32)
            .map_err(tar_err(&entry.path))?;
        self.builder
            .append_data(&mut header, &entry.path, io::empty())
            .map_err(tar_err(&entry.path))
    }
}

#[cfg(test)]
mod tests {
    use super::tar_order;

    #[test]
    fn tar_order_is_component_by_component() {
        let paths = [
            "a", "a/b", "a/b/c", "a-b", "a-b/c", "a.b", "a0", "a/b-c", "a/b/c-d", "a/bc", "ab",
            "b", "#a", "-a", "a/\u{e9}", "a/z", "\u{e9}", "d1/f1", "d1/f10", "d1-x/f", "d10/f",
        ];
        for x in paths {
            for y in paths {
                assert_eq!(
                    tar_order(x, y),
                    x.split('/').cmp(y.split('/')),
                    "{x:?} against {y:?}"
                );
            }
        }
    }
}
