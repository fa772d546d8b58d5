//! `kiln import`: a rootfs tarball (or directory) becomes one normalised layer,
//! in one streaming pass, and the architecture is read from its ELF files.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use crate::compression::{decompress_detected, Compression, InputCompression};
use crate::elf::{ElfHeader, ELF_HEADER_LEN};
use crate::error::{Error, IoContext, Result};
use crate::layer::{LayerBlob, LayerWriter};
use crate::platform::Platform;
use crate::store::Store;

/// What an import produced.
#[derive(Debug, Clone)]
pub struct ImportedLayer {
    /// The layer as stored.
    pub layer: LayerBlob,
    /// The compression the input had.
    pub input_compression: InputCompression,
    /// What the ELF headers say, if any ELF file was found.
    pub detected: Option<DetectedPlatform>,
    /// Entries that were cleaned (absolute names made relative, duplicate
    /// directories dropped), one line each.
    pub cleaned: Vec<String>,
    /// Entries in the layer.
    pub entries: u64,
    /// The newest modification time of any entry (seconds since 1970), a
    /// reproducible default for the image's `created`.
    pub newest_mtime: u64,
}

/// The platform read from one ELF file of the rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectedPlatform {
    /// The platform the file was built for.
    pub platform: Platform,
    /// The file whose header decided, as an absolute path in the image
    /// (after following symlinks, e.g. `/bin/busybox` for `/bin/sh`).
    pub evidence: String,
    /// The header in words, as `file(1)` would say it.
    pub elf: String,
}

/// Files whose architecture speaks for the whole rootfs, most telling first:
/// a foreign rootfs may carry host binaries (qemu, static tools) elsewhere.
const TELLING_FILES: &[&str] = &[
    "bin/sh",
    "bin/busybox",
    "usr/bin/env",
    "bin/ls",
    "usr/bin/ls",
    "bin/bash",
    "sbin/init",
    "usr/bin/dpkg",
];

/// Where ELF files are looked at: the directories of executables and libraries.
const ELF_DIRS: &[&str] = &[
    "bin/",
    "sbin/",
    "usr/bin/",
    "usr/sbin/",
    "lib/",
    "lib64/",
    "lib32/",
    "usr/lib/",
    "usr/lib64/",
    "usr/libexec/",
];

/// How many symlinks are followed before giving up (as Linux does).
const MAX_SYMLINKS: usize = 40;

/// Imports a tar stream (compressed or not) as a layer of the store.
pub fn import_tar(
    store: &Store,
    input: impl Read + Send,
    compression: Compression,
) -> Result<ImportedLayer> {
    let (input_compression, reader) = decompress_detected(input)?;
    let writer = store.layer_writer(compression)?;
    let mut normaliser = Normaliser::new(writer);
    normaliser.copy_archive(reader)?;
    let Normaliser {
        builder,
        cleaned,
        entries,
        elf_files,
        symlinks,
        newest_mtime,
        ..
    } = normaliser;
    let layer = builder
        .into_inner()
        .during("finishing the layer tar")?
        .finish()?;
    Ok(ImportedLayer {
        layer,
        input_compression,
        detected: detect_platform(&elf_files, &symlinks),
        cleaned,
        entries,
        newest_mtime,
    })
}

/// Imports a directory as a layer: entries sorted by name, owners, modes and
/// times as on disk, hard links kept, symlinks not followed.
pub fn import_directory(
    store: &Store,
    dir: &Path,
    compression: Compression,
) -> Result<ImportedLayer> {
    let (reader, writer) = io::pipe().during("creating a pipe")?;
    let dir = dir.to_path_buf();
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || write_directory_tar(&dir, writer));
        let imported = import_tar(store, reader, compression);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(Error::BadTar("the directory reader panicked".to_owned())));
        // The producer's error is the cause when both failed.
        produced?;
        imported
    })
}

fn write_directory_tar(dir: &Path, sink: impl Write) -> Result<()> {
    let mut builder = tar::Builder::new(sink);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    let mut first_path_of_inode: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let walk = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1);
    for entry in walk {
        let entry = entry.map_err(|e| {
            let path = e
                .path()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| dir.to_path_buf());
            Error::io(
                path,
                e.into_io_error()
                    .unwrap_or_else(|| io::Error::other("walk failed")),
            )
        })?;
        let path = entry.path();
        let name = path.strip_prefix(dir).unwrap_or(path);
        let meta = entry.metadata().map_err(|e| {
            Error::io(
                path,
                e.into_io_error()
                    .unwrap_or_else(|| io::Error::other("stat failed")),
            )
        })?;
        use std::os::unix::fs::MetadataExt;
        if meta.is_file() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = first_path_of_inode.get(&key) {
                let mut header = tar::Header::new_gnu();
                header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
                header.set_entry_type(EntryType::Link);
                header.set_size(0);
                builder.append_link(&mut header, name, first).at(path)?;
                continue;
            }
            first_path_of_inode.insert(key, name.to_path_buf());
        }
        builder.append_path_with_name(path, name).at(path)?;
    }
    builder.into_inner().at(dir)?.flush().at(dir)?;
    Ok(())
}

/// What an earlier entry at a path was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Directory,
    Symlink,
    Other,
}

impl Seen {
    fn of(kind: EntryType) -> Seen {
        match kind {
            EntryType::Directory => Seen::Directory,
            EntryType::Symlink => Seen::Symlink,
            _ => Seen::Other,
        }
    }
}

struct Normaliser {
    builder: tar::Builder<LayerWriter>,
    seen: HashMap<PathBuf, Seen>,
    /// Every parent directory of an entry so far.
    implied_dirs: std::collections::HashSet<PathBuf>,
    symlinks: HashMap<PathBuf, PathBuf>,
    elf_files: BTreeMap<PathBuf, ElfHeader>,
    cleaned: Vec<String>,
    entries: u64,
    newest_mtime: u64,
}

impl Normaliser {
    fn new(writer: LayerWriter) -> Normaliser {
        Normaliser {
            builder: tar::Builder::new(writer),
            seen: HashMap::new(),
            implied_dirs: std::collections::HashSet::new(),
            symlinks: HashMap::new(),
            elf_files: BTreeMap::new(),
            cleaned: Vec::new(),
            entries: 0,
            newest_mtime: 0,
        }
    }

    fn copy_archive(&mut self, reader: impl Read) -> Result<()> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive
            .entries()
            .map_err(|e| Error::BadTar(e.to_string()))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::BadTar(e.to_string()))?;
            self.copy_entry(entry)?;
        }
        Ok(())
    }

    /// Copies one entry of the input into the layer: admit its path, copy
    /// its metadata, append its body by type, remember what it was.
    fn copy_entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let raw_name = OsString::from_vec(entry.path_bytes().into_owned());
        let shown = raw_name.to_string_lossy().into_owned();
        let kind = entry.header().entry_type();
        let seen_as = Seen::of(kind);
        let Some(path) = self.admit_path(&raw_name, &shown, seen_as)? else {
            return Ok(());
        };
        let mut header = self.copy_metadata(&mut entry, &shown)?;
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                self.append_file(&mut entry, &mut header, &path, &shown)?
            }
            EntryType::Directory => {
                header.set_entry_type(EntryType::Directory);
                header.set_size(0);
                self.builder
                    .append_data(&mut header, &path, io::empty())
                    .during("writing the layer")?;
            }
            EntryType::Symlink => {
                let target = link_name(&entry)
                    .ok_or_else(|| hostile(&shown, "a symlink without a target"))?;
                header.set_entry_type(EntryType::Symlink);
                header.set_size(0);
                self.builder
                    .append_link(&mut header, &path, &target)
                    .during("writing the layer")?;
                self.symlinks.insert(path.clone(), PathBuf::from(target));
            }
            EntryType::Link => self.append_hard_link(&entry, &mut header, &path, &shown)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.append_device(&entry, kind, &mut header, &path, &shown)?
            }
            EntryType::GNUSparse => {
                return Err(hostile(
                    &shown,
                    "sparse files are not supported; re-create the archive without --sparse",
                ))
            }
            other => {
                return Err(hostile(
                    &shown,
                    format!(
                        "entries of tar type {:?} cannot be part of a layer",
                        other.as_byte() as char
                    ),
                ))
            }
        }
        self.record(path, seen_as);
        Ok(())
    }

    /// The entry's path made relative and clean, checked against what came
    /// before (no path twice, nothing under a symlink or a file, no file where
    /// a directory was implied); `None` for the root and for a directory named
    /// again, which are dropped.
    fn admit_path(
        &mut self,
        raw_name: &OsString,
        shown: &str,
        seen_as: Seen,
    ) -> Result<Option<PathBuf>> {
        let hostile = |reason: String| hostile(shown, reason);
        let (path, was_absolute) = clean_path(Path::new(raw_name)).map_err(hostile)?;
        let Some(path) = path else {
            // "./" or "/": the root itself is not an entry of a layer.
            return Ok(None);
        };
        if was_absolute {
            self.cleaned
                .push(format!("{shown}: absolute name made relative"));
        }
        self.check_parents(&path).map_err(hostile)?;
        if seen_as != Seen::Directory && self.implied_dirs.contains(&path) {
            return Err(hostile(
                "earlier entries use this path as a directory; it cannot become a file or link now"
                    .to_owned(),
            ));
        }
        if let Some(earlier) = self.seen.get(&path) {
            if *earlier == Seen::Directory && seen_as == Seen::Directory {
                self.cleaned
                    .push(format!("{shown}: duplicate directory entry dropped"));
                return Ok(None);
            }
            return Err(hostile(
                "the archive names this path twice; a layer names each path once (re-create the archive)"
                    .to_owned(),
            ));
        }
        Ok(Some(path))
    }

    /// The layer's header for the entry, with its mode, owner (PAX `uid` and
    /// `gid` win), names and mtime; its `SCHILY.xattr.*` PAX records are
    /// written to the layer ahead of it.
    fn copy_metadata<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<tar::Header> {
        let hostile = |e: io::Error| hostile(shown, e.to_string());
        let source = entry.header();
        let mut header = tar::Header::new_gnu();
        header.set_mode(source.mode().map_err(hostile)?);
        let mut uid = source.uid().map_err(hostile)?;
        let mut gid = source.gid().map_err(hostile)?;
        let mtime = source.mtime().map_err(hostile)?;
        if let Some(name) = source.username_bytes().filter(|n| !n.is_empty()) {
            if let Ok(name) = std::str::from_utf8(name) {
                header.set_username(name).map_err(hostile)?;
            }
        }
        if let Some(name) = source.groupname_bytes().filter(|n| !n.is_empty()) {
            if let Ok(name) = std::str::from_utf8(name) {
                header.set_groupname(name).map_err(hostile)?;
            }
        }
        header.set_mtime(mtime);
        self.newest_mtime = self.newest_mtime.max(mtime);
        let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(extensions) = entry.pax_extensions().map_err(hostile)? {
            for extension in extensions {
                let extension = extension.map_err(hostile)?;
                let Ok(key) = extension.key() else { continue };
                let value = extension.value_bytes();
                match key {
                    "uid" => uid = parse_pax_number(value).unwrap_or(uid),
                    "gid" => gid = parse_pax_number(value).unwrap_or(gid),
                    _ if key.starts_with("SCHILY.xattr.") => {
                        xattrs.push((key.to_owned(), value.to_vec()));
                    }
                    _ => {}
                }
            }
        }
        header.set_uid(uid);
        header.set_gid(gid);
        if !xattrs.is_empty() {
            self.builder
                .append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .during("writing the layer")?;
        }
        Ok(header)
    }

    /// Appends a regular file, reading the head of one in an ELF directory
    /// on the way for the image's platform.
    fn append_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        header: &mut tar::Header,
        path: &Path,
        shown: &str,
    ) -> Result<()> {
        let size = entry.size();
        header.set_entry_type(EntryType::Regular);
        header.set_size(size);
        let wants_elf = size as usize >= ELF_HEADER_LEN && in_elf_dirs(path);
        let mut head = Vec::new();
        if wants_elf {
            (&mut *entry)
                .take(ELF_HEADER_LEN as u64)
                .read_to_end(&mut head)
                .map_err(|e| Error::BadTar(format!("{shown}: {e}")))?;
            if let Some(elf) = ElfHeader::parse(&head) {
                self.elf_files.insert(path.to_path_buf(), elf);
            }
        }
        let remaining = size - head.len() as u64;
        let data = io::Cursor::new(head).chain(ExactReader {
            inner: entry,
            remaining,
            name: shown,
        });
        self.builder
            .append_data(header, path, data)
            .during(format!("copying {shown} into the layer"))
    }

    /// Appends a hard link, whose target must be a file or symlink earlier in
    /// the archive (a link to an ELF file counts as one for the platform).
    fn append_hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        header: &mut tar::Header,
        path: &Path,
        shown: &str,
    ) -> Result<()> {
        let target =
            link_name(entry).ok_or_else(|| hostile(shown, "a hard link without a target"))?;
        let (target, _) = clean_path(Path::new(&target))
            .map_err(|reason| hostile(shown, format!("its hard link target: {reason}")))?;
        let target = target.ok_or_else(|| hostile(shown, "a hard link to the root"))?;
        match self.seen.get(&target) {
            Some(Seen::Other | Seen::Symlink) => {}
            Some(Seen::Directory) => return Err(hostile(shown, "a hard link to a directory")),
            None => {
                return Err(hostile(
                    shown,
                    format!(
                        "a hard link to {} which is not earlier in the archive",
                        target.display()
                    ),
                ))
            }
        }
        header.set_entry_type(EntryType::Link);
        header.set_size(0);
        self.builder
            .append_link(header, path, &target)
            .during("writing the layer")?;
        if let Some(elf) = self.elf_files.get(&target).copied() {
            self.elf_files.insert(path.to_path_buf(), elf);
        }
        Ok(())
    }

    /// Appends a character or block device or a FIFO.
    fn append_device<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        kind: EntryType,
        header: &mut tar::Header,
        path: &Path,
        shown: &str,
    ) -> Result<()> {
        header.set_entry_type(kind);
        header.set_size(0);
        // A FIFO has no device number: GNU tar leaves the fields
        // empty (NULs), which do not parse as numbers.
        let (major, minor) = if kind == EntryType::Fifo {
            (0, 0)
        } else {
            let device = |value| source_device(value).map_err(|reason| hostile(shown, reason));
            (
                device(entry.header().device_major())?,
                device(entry.header().device_minor())?,
            )
        };
        header.set_device_major(major).during("writing the layer")?;
        header.set_device_minor(minor).during("writing the layer")?;
        self.builder
            .append_data(header, path, io::empty())
            .during("writing the layer")
    }

    /// Remembers an appended entry: its path and its parents, which are
    /// directories from now on.
    fn record(&mut self, path: PathBuf, seen_as: Seen) {
        let mut parent = path.parent();
        while let Some(dir) = parent.filter(|p| !p.as_os_str().is_empty()) {
            if !self.implied_dirs.insert(dir.to_path_buf()) {
                break;
            }
            parent = dir.parent();
        }
        self.seen.insert(path, seen_as);
        self.entries += 1;
    }

    /// Rejects a path whose parent is a symlink or a non-directory named
    /// earlier: extracting it would write through the symlink, possibly
    /// outside the rootfs.
    fn check_parents(&self, path: &Path) -> std::result::Result<(), String> {
        let mut prefix = PathBuf::new();
        let components: Vec<_> = path.components().collect();
        for component in components.iter().take(components.len().saturating_sub(1)) {
            prefix.push(component);
            match self.seen.get(&prefix) {
                Some(Seen::Symlink) => {
                    return Err(format!(
                        "its parent {} is a symlink earlier in the archive; writing through it could leave the rootfs",
                        prefix.display()
                    ))
                }
                Some(Seen::Other) => {
                    return Err(format!(
                        "its parent {} is not a directory",
                        prefix.display()
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Reads an entry's data and fails if it ends early (a truncated archive),
/// which would otherwise give a layer whose header promises more bytes than follow.
struct ExactReader<'a, R> {
    inner: R,
    remaining: u64,
    name: &'a str,
}

impl<R: Read> Read for ExactReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("reading {} from the archive: {e}", self.name),
            )
        })?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the archive ends in the middle of {}; it is truncated",
                    self.name
                ),
            ));
        }
        self.remaining = self.remaining.saturating_sub(n as u64);
        Ok(n)
    }
}

/// An entry that cannot be imported safely, and why.
fn hostile(entry: &str, reason: impl Into<String>) -> Error {
    Error::HostileEntry {
        entry: entry.to_owned(),
        reason: reason.into(),
    }
}

/// The target an entry links to, if it names one.
fn link_name<R: Read>(entry: &tar::Entry<'_, R>) -> Option<OsString> {
    entry
        .link_name_bytes()
        .map(|b| OsString::from_vec(b.into_owned()))
}

fn source_device(value: io::Result<Option<u32>>) -> std::result::Result<u32, String> {
    value
        .map(|v| v.unwrap_or(0))
        .map_err(|e| format!("bad device number: {e}"))
}

fn parse_pax_number(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

fn in_elf_dirs(path: &Path) -> bool {
    let bytes = path.as_os_str().as_bytes();
    ELF_DIRS.iter().any(|dir| bytes.starts_with(dir.as_bytes()))
}

/// Makes an entry name relative and clean. `Ok(None)` is the root itself;
/// the flag says whether the name was absolute. `..` is refused outright:
/// resolving it lexically could differ from what the filesystem would do.
fn clean_path(name: &Path) -> std::result::Result<(Option<PathBuf>, bool), String> {
    let mut clean = PathBuf::new();
    let mut absolute = false;
    for component in name.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => absolute = true,
            Component::CurDir => {}
            Component::ParentDir => {
                return Err("it contains `..`, which could point outside the rootfs".to_owned())
            }
            Component::Normal(part) => clean.push(part),
        }
    }
    if clean.as_os_str().is_empty() {
        Ok((None, absolute))
    } else {
        Ok((Some(clean), absolute))
    }
}

/// Follows symlinks recorded in the archive, component by component, the
/// way the kernel would inside the rootfs (`..` at the root stays at the root).
fn resolve_in_rootfs(path: &Path, symlinks: &HashMap<PathBuf, PathBuf>) -> Option<PathBuf> {
    let mut pending: Vec<OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            _ => None,
        })
        .collect();
    let mut resolved = PathBuf::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        if part == "." {
            continue;
        }
        resolved.push(&part);
        if let Some(target) = symlinks.get(&resolved) {
            hops += 1;
            if hops > MAX_SYMLINKS {
                return None;
            }
            resolved.pop();
            if target.is_absolute() {
                resolved = PathBuf::new();
            }
            for component in target.components().rev() {
                match component {
                    Component::Normal(p) => pending.push(p.to_os_string()),
                    Component::ParentDir => pending.push("..".into()),
                    _ => {}
                }
            }
        }
    }
    Some(resolved)
}

fn detect_platform(
    elf_files: &BTreeMap<PathBuf, ElfHeader>,
    symlinks: &HashMap<PathBuf, PathBuf>,
) -> Option<DetectedPlatform> {
    let found = |path: &Path, elf: &ElfHeader| {
        elf.platform().map(|platform| DetectedPlatform {
            platform,
            evidence: format!("/{}", path.display()),
            elf: elf.describe(),
        })
    };
    for telling in TELLING_FILES {
        if let Some(resolved) = resolve_in_rootfs(Path::new(telling), symlinks) {
            if let Some(detected) = elf_files
                .get(&resolved)
                .and_then(|elf| found(&resolved, elf))
            {
                return Some(detected);
            }
        }
    }
    // The dynamic loader: lib*/ld-linux*.so*, ld.so.1, ld64.so.*
    let loader = elf_files.iter().find(|(path, _)| {
        path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            n.starts_with("ld-linux")
                || n.starts_with("ld.so")
                || n.starts_with("ld64.so")
                || n.starts_with("ld-musl")
        })
    });
    if let Some(detected) = loader.and_then(|(path, elf)| found(path, elf)) {
        return Some(detected);
    }
    // Otherwise the architecture most ELF files share.
    let mut votes: HashMap<Platform, (usize, &PathBuf, &ElfHeader)> = HashMap::new();
    for (path, elf) in elf_files {
        if let Some(platform) = elf.platform() {
            votes.entry(platform).or_insert((0, path, elf)).0 += 1;
        }
    }
    let mut ranked: Vec<_> = votes.into_iter().collect();
    ranked.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
    ranked
        .first()
        .and_then(|(_, (_, path, elf))| found(path, elf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_or_refused() {
        assert_eq!(
            clean_path(Path::new("./etc//passwd")).unwrap(),
            (Some(PathBuf::from("etc/passwd")), false)
        );
        assert_eq!(
            clean_path(Path::new("/etc/passwd")).unwrap(),
            (Some(PathBuf::from("etc/passwd")), true)
        );
        assert_eq!(clean_path(Path::new("./")).unwrap(), (None, false));
        assert!(clean_path(Path::new("a/../../etc/passwd")).is_err());
    }

    #[test]
    fn xattrs_and_large_ids_from_pax_headers_survive() {
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_pax_extensions([
                ("SCHILY.xattr.security.capability", &b"\x01\x00\x00\x02"[..]),
                ("uid", &b"3000000"[..]),
                ("comment", &b"dropped"[..]),
            ])
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_size(4);
        header.set_mode(0o755);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_600_000_000);
        builder
            .append_data(&mut header, "usr/bin/ping", &b"ping"[..])
            .unwrap();
        let input = builder.into_inner().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let imported = import_tar(&store, &input[..], Compression::None).unwrap();
        assert_eq!(imported.newest_mtime, 1_600_000_000);
        let mut layer = store.open_layer(&imported.layer.descriptor).unwrap();
        let mut bytes = Vec::new();
        layer.read_to_end(&mut bytes).unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        let pax: Vec<(String, Vec<u8>)> = entry
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.key().unwrap().to_owned(), e.value_bytes().to_vec())
            })
            .collect();
        assert_eq!(
            pax,
            vec![(
                "SCHILY.xattr.security.capability".to_owned(),
                b"\x01\x00\x00\x02".to_vec()
            )]
        );
        assert_eq!(entry.header().uid().unwrap(), 3_000_000);
        assert_eq!(entry.path().unwrap().to_str(), Some("usr/bin/ping"));
        assert!(entries.next().is_none());
    }

    /// What `tar -cf` of Debian's GNU tar (its default format, gnu) makes of
    /// a tree with a FIFO and a character device: the FIFO's device fields
    /// are left empty.
    #[test]
    fn special_files_of_gnu_tar_archives_are_imported() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("dev")).unwrap();
        std::fs::write(tree.join("file"), "x").unwrap();
        let run = |program: &str, args: &[&str]| {
            let status = std::process::Command::new(program)
                .args(args)
                .current_dir(&tree)
                .status()
                .unwrap();
            assert!(status.success(), "{program} {args:?}");
        };
        run("mkfifo", &["dev/pipe"]);
        run("mknod", &["dev/null", "c", "1", "3"]);
        let archive = dir.path().join("tree.tar");
        run("tar", &["-cf", archive.to_str().unwrap(), "."]);
        let input = std::fs::read(&archive).unwrap();

        let store = Store::open(dir.path().join("store")).unwrap();
        let imported = import_tar(&store, &input[..], Compression::None).unwrap();
        let mut layer = store.open_layer(&imported.layer.descriptor).unwrap();
        let mut bytes = Vec::new();
        layer.read_to_end(&mut bytes).unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut specials = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            let kind = header.entry_type();
            if matches!(kind, EntryType::Fifo | EntryType::Char) {
                specials.push((
                    entry.path().unwrap().to_string_lossy().into_owned(),
                    kind,
                    header.device_major().unwrap(),
                    header.device_minor().unwrap(),
                ));
            }
        }
        specials.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            specials,
            vec![
                ("dev/null".to_owned(), EntryType::Char, Some(1), Some(3)),
                ("dev/pipe".to_owned(), EntryType::Fifo, Some(0), Some(0)),
            ]
        );
    }

    #[test]
    fn symlinks_resolve_inside_the_rootfs() {
        let links: HashMap<PathBuf, PathBuf> = [
            ("bin", "usr/bin"),
            ("usr/bin/sh", "dash"),
            ("usr/bin/up", "../../../../usr/bin/sh"),
            ("loop", "loop"),
        ]
        .into_iter()
        .map(|(a, b)| (PathBuf::from(a), PathBuf::from(b)))
        .collect();
        assert_eq!(
            resolve_in_rootfs(Path::new("bin/sh"), &links),
            Some(PathBuf::from("usr/bin/dash"))
        );
        assert_eq!(
            resolve_in_rootfs(Path::new("bin/up"), &links),
            Some(PathBuf::from("usr/bin/dash"))
        );
        assert_eq!(resolve_in_rootfs(Path::new("loop"), &links), None);
    }
}
