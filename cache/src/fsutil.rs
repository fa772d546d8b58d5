//! Atomic files and locks: every file the store publishes is written to a
//! temporary file in the store's `tmp` directory, fsynced, renamed into place,
//! and its directory fsynced, so a crash leaves either the old or the new file.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, IoContext, Result};
use oci_spec::image::Digest;

/// Fsyncs a directory so that a rename inside it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Writes `bytes` to `target` atomically, with a temporary file in `tmp_dir`
/// (which must be on the same filesystem).
pub(crate) fn write_atomic(tmp_dir: &Path, target: &Path, bytes: &[u8]) -> Result<()> {
    let mut temp = tempfile::NamedTempFile::new_in(tmp_dir).at(tmp_dir)?;
    temp.write_all(bytes).at(temp.path())?;
    temp.as_file().sync_all().at(temp.path())?;
    persist(temp, target)
}

/// Renames a finished temporary file into place and fsyncs the directory.
pub(crate) fn persist(temp: tempfile::NamedTempFile, target: &Path) -> Result<()> {
    temp.persist(target)
        .map_err(|e| Error::io(target, e.error))?;
    sync_dir(target.parent().unwrap_or(Path::new(".")))
}

/// Creates a directory and its parents.
pub(crate) fn ensure_dir(dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).at(dir)?;
    Ok(dir.to_path_buf())
}

/// An advisory lock on a file, held until dropped (std's `File::lock`, i.e. flock).
#[derive(Debug)]
pub(crate) struct FileLock {
    _file: File,
}

impl FileLock {
    pub(crate) fn exclusive(path: &Path) -> Result<FileLock> {
        let file = open_lock_file(path)?;
        file.lock().at(path)?;
        Ok(FileLock { _file: file })
    }

    /// Locks a directory itself, for a layout that must hold no files of
    /// kiln's own (flock works on a directory's descriptor).
    pub(crate) fn exclusive_dir(dir: &Path) -> Result<FileLock> {
        let file = File::open(dir).at(dir)?;
        file.lock().at(dir)?;
        Ok(FileLock { _file: file })
    }
}

pub(crate) fn open_lock_file(path: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .at(path)
}

/// `sha256:<hex>` of a finished hasher.
pub(crate) fn digest_of(hasher: Sha256) -> Digest {
    sha256_digest_from_hex(&hex::encode(hasher.finalize()))
}

/// The sha256 digest of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> Digest {
    digest_of(Sha256::new_with_prefix(bytes))
}

fn sha256_digest_from_hex(hex: &str) -> Digest {
    // 64 lowercase hex digits always make a valid sha256 digest.
    format!("sha256:{hex}")
        .parse()
        .unwrap_or_else(|_| unreachable!("sha256 hex is always a valid digest"))
}

/// Parses `sha256:<64 hex>` (the only algorithm the store keeps).
pub fn parse_sha256(text: &str) -> Result<Digest> {
    let digest: Digest = text
        .parse()
        .map_err(|_| Error::BadDigest(text.to_owned()))?;
    if digest.algorithm().as_ref() != "sha256" {
        return Err(Error::BadDigest(text.to_owned()));
    }
    Ok(digest)
}

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }
    pub(crate) fn finish(self) -> (W, Digest, u64) {
        (self.inner, digest_of(self.hasher), self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
