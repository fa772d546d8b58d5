use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

use oci_spec::image::{Descriptor, Digest};
use sha2::{Digest as _, Sha256};

use crate::compression::Compression;
use crate::error::{IoContext, Result};
use crate::fsutil::{self, HashingWriter};

/// A layer blob in the store: its descriptor (digest and size of the
/// compressed blob) and its diff_id (sha256 of the uncompressed tar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    pub descriptor: Descriptor,
    pub diff_id: Digest,
}

/// How many uncompressed bytes the writer hands to the compression thread at once.
const CHUNK: usize = 1 << 20;

/// Writes one layer into the store: takes the uncompressed tar stream through
/// `Write`, hashes it (the diff_id) on the caller's thread, and compresses,
/// hashes and writes the blob on a second thread, so the two run in parallel.
///
/// Nothing is visible in the store until [`LayerWriter::finish`]; dropping the
/// writer unfinished (or a crash) leaves at most a temporary file, which
/// `prune` removes.
pub struct LayerWriter {
    compression: Compression,
    diff_hasher: Sha256,
    uncompressed_size: u64,
    chunk: Vec<u8>,
    sender: Option<SyncSender<Vec<u8>>>,
    worker: Option<JoinHandle<io::Result<CompressedBlob>>>,
    blobs_dir: PathBuf,
}

impl std::fmt::Debug for LayerWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerWriter")
            .field("compression", &self.compression)
            .field("uncompressed_size", &self.uncompressed_size)
            .finish_non_exhaustive()
    }
}

struct CompressedBlob {
    temp: tempfile::NamedTempFile,
    digest: Digest,
    size: u64,
}

impl LayerWriter {
    pub(crate) fn new(
        tmp_dir: PathBuf,
        blobs_dir: PathBuf,
        compression: Compression,
    ) -> Result<LayerWriter> {
        let temp = tempfile::NamedTempFile::new_in(&tmp_dir).at(&tmp_dir)?;
        let (sender, receiver) = sync_channel::<Vec<u8>>(4);
        let worker = std::thread::Builder::new()
            .name("kiln-layer-compress".to_owned())
            .spawn(move || -> io::Result<CompressedBlob> {
                let file = temp.reopen()?;
                let sink = HashingWriter::new(BufWriter::with_capacity(CHUNK, file));
                let mut encoder = Encoder::new(compression, sink)?;
                for chunk in receiver {
                    encoder.write_all(&chunk)?;
                }
                let (buffered, digest, size) = encoder.finish()?.finish();
                let file = buffered.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                Ok(CompressedBlob { temp, digest, size })
            })
            .during("starting the layer compression thread")?;
        Ok(LayerWriter {
            compression,
            diff_hasher: Sha256::new(),
            uncompressed_size: 0,
            chunk: Vec::with_capacity(CHUNK),
            sender: Some(sender),
            worker: Some(worker),
            blobs_dir,
        })
    }

    /// How many uncompressed bytes were written so far.
    pub fn uncompressed_size(&self) -> u64 {
        self.uncompressed_size
    }

    fn send_chunk(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
        let sent = self.sender.as_ref().map(|sender| sender.send(chunk));
        match sent {
            Some(Ok(())) => Ok(()),
            // The worker stopped early: its error says why.
            _ => Err(self
                .join_worker()
                .err()
                .unwrap_or_else(|| io::Error::other("the layer compression thread stopped"))),
        }
    }

    fn join_worker(&mut self) -> io::Result<CompressedBlob> {
        self.sender = None;
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the layer compression thread panicked")),
            None => Err(io::Error::other("the layer writer was already finished")),
        }
    }

    /// Completes the blob, moves it into the store (idempotently: an existing
    /// blob with the same digest is kept) and returns its descriptor and diff_id.
    pub fn finish(mut self) -> Result<LayerBlob> {
        self.send_chunk().during("compressing the layer")?;
        let blob = self.join_worker().during("compressing the layer")?;
        let target = self.blobs_dir.join(blob.digest.digest());
        if !target.exists() {
            fsutil::persist(blob.temp, &target)?;
        }
        let diff_id = fsutil::digest_of(std::mem::take(&mut self.diff_hasher));
        Ok(LayerBlob {
            descriptor: Descriptor::new(
                self.compression.layer_media_type(),
                blob.size,
                blob.digest,
            ),
            diff_id,
        })
    }
}

impl Write for LayerWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.diff_hasher.update(buf);
        self.uncompressed_size += buf.len() as u64;
        let mut rest = buf;
        while !rest.is_empty() {
            let room = CHUNK - self.chunk.len();
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.chunk.extend_from_slice(now);
            rest = later;
            if self.chunk.len() == CHUNK {
                self.send_chunk()?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

type Sink = HashingWriter<BufWriter<File>>;

/// The compressor of one blob. Settings are fixed so the same tar always gives
/// the same blob digest.
enum Encoder {
    Gzip(flate2::write::GzEncoder<Sink>),
    Zstd(zstd::stream::write::Encoder<'static, Sink>),
    None(Sink),
}

/// Gzip level: level 1 of zlib-rs keeps compression off the critical path
/// (see scripts/bench-import.sh) at a size within a few percent of level 6.
const GZIP_LEVEL: u32 = 1;
const ZSTD_LEVEL: i32 = 3;

impl Encoder {
    fn new(compression: Compression, sink: Sink) -> io::Result<Encoder> {
        Ok(match compression {
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                sink,
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Compression::Zstd => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(sink, ZSTD_LEVEL)?)
            }
            Compression::None => Encoder::None(sink),
        })
    }

    fn finish(self) -> io::Result<Sink> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::None(s) => Ok(s),
        }
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::None(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::None(s) => s.flush(),
        }
    }
}
