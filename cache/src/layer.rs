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
    backend: Backend,
    blobs_dir: PathBuf,
}

/// Where full chunks go: one compression thread (zstd, none), or a pool of
/// gzip workers and an ordering writer thread.
enum Backend {
    Single {
        sender: Option<SyncSender<Vec<u8>>>,
        worker: Option<JoinHandle<io::Result<CompressedBlob>>>,
    },
    Gzip(ParallelGzip),
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
        let backend = match compression {
            Compression::Gzip => Backend::Gzip(ParallelGzip::start(temp)?),
            Compression::Zstd | Compression::None => {
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
                Backend::Single {
                    sender: Some(sender),
                    worker: Some(worker),
                }
            }
        };
        Ok(LayerWriter {
            compression,
            diff_hasher: Sha256::new(),
            uncompressed_size: 0,
            chunk: Vec::with_capacity(CHUNK),
            backend,
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
        match &mut self.backend {
            Backend::Gzip(gzip) => gzip.send(chunk),
            Backend::Single { sender, .. } => {
                let sent = sender.as_ref().map(|sender| sender.send(chunk));
                match sent {
                    Some(Ok(())) => Ok(()),
                    // The worker stopped early: its error says why.
                    _ => Err(self.join_worker().err().unwrap_or_else(|| {
                        io::Error::other("the layer compression thread stopped")
                    })),
                }
            }
        }
    }

    fn join_worker(&mut self) -> io::Result<CompressedBlob> {
        match &mut self.backend {
            Backend::Gzip(gzip) => gzip.finish(),
            Backend::Single { sender, worker } => {
                *sender = None;
                join(worker.take())
            }
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

fn join<T>(handle: Option<JoinHandle<io::Result<T>>>) -> io::Result<T> {
    match handle.map(JoinHandle::join) {
        Some(Ok(result)) => result,
        Some(Err(_)) => Err(io::Error::other("a layer compression thread panicked")),
        None => Err(io::Error::other("the layer writer was already finished")),
    }
}

/// Gzip on every core: each 1 MiB chunk becomes a complete gzip member of
/// its own, made by libdeflate (several times faster than zlib at a similar
/// ratio, but whole-buffer only, so it cannot sync-flush chunks into one
/// deflate stream). A writer thread puts the members in order. Concatenated
/// members are one standard gzip file (RFC 1952 section 2.2), read whole by
/// Go's gzip.Reader (multistream by default: docker, containerd, skopeo,
/// umoci), Python's gzip, GNU gunzip and flate2's MultiGzDecoder. Chunks are
/// compressed independently with fixed settings and libdeflate's header has
/// no name or time, so the blob does not depend on the number of threads or
/// their timing.
struct ParallelGzip {
    jobs: Option<SyncSender<(u64, Vec<u8>)>>,
    results: Option<std::sync::mpsc::Sender<GzipMessage>>,
    workers: Vec<JoinHandle<io::Result<()>>>,
    writer: Option<JoinHandle<io::Result<CompressedBlob>>>,
    next_index: u64,
}

enum GzipMessage {
    /// One chunk as a complete gzip member.
    Member(u64, Vec<u8>),
    /// No more chunks after this many.
    Done(u64),
}

impl ParallelGzip {
    fn start(temp: tempfile::NamedTempFile) -> Result<ParallelGzip> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
        let (jobs, job_receiver) = sync_channel::<(u64, Vec<u8>)>(threads * 2);
        let job_receiver = std::sync::Arc::new(std::sync::Mutex::new(job_receiver));
        let (results, result_receiver) = std::sync::mpsc::channel::<GzipMessage>();
        let mut workers = Vec::with_capacity(threads);
        for _ in 0..threads {
            let job_receiver = std::sync::Arc::clone(&job_receiver);
            let results = results.clone();
            let worker = std::thread::Builder::new()
                .name("kiln-gzip".to_owned())
                .spawn(move || -> io::Result<()> {
                    let mut compressor = gzip_compressor();
                    loop {
                        let job = job_receiver
                            .lock()
                            .map_err(|_| io::Error::other("a gzip worker panicked"))?
                            .recv();
                        let Ok((index, chunk)) = job else {
                            return Ok(());
                        };
                        let member = gzip_member(&mut compressor, &chunk)?;
                        if results.send(GzipMessage::Member(index, member)).is_err() {
                            return Ok(());
                        }
                    }
                })
                .during("starting the gzip threads")?;
            workers.push(worker);
        }
        let writer = std::thread::Builder::new()
            .name("kiln-gzip-writer".to_owned())
            .spawn(move || -> io::Result<CompressedBlob> {
                let file = temp.reopen()?;
                let mut sink = HashingWriter::new(BufWriter::with_capacity(CHUNK, file));
                let mut pending = std::collections::BTreeMap::new();
                let mut next = 0u64;
                let mut total: Option<u64> = None;
                while total != Some(next) {
                    match result_receiver.recv() {
                        Ok(GzipMessage::Member(index, bytes)) => {
                            pending.insert(index, bytes);
                        }
                        Ok(GzipMessage::Done(count)) => total = Some(count),
                        Err(_) => return Err(io::Error::other("the gzip workers stopped early")),
                    }
                    while let Some(bytes) = pending.remove(&next) {
                        sink.write_all(&bytes)?;
                        next += 1;
                    }
                }
                if next == 0 {
                    // An empty layer is still a gzip file: one empty member.
                    sink.write_all(&gzip_member(&mut gzip_compressor(), &[])?)?;
                }
                let (buffered, digest, size) = sink.finish();
                let file = buffered.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                Ok(CompressedBlob { temp, digest, size })
            })
            .during("starting the gzip writer thread")?;
        Ok(ParallelGzip {
            jobs: Some(jobs),
            results: Some(results),
            workers,
            writer: Some(writer),
            next_index: 0,
        })
    }

    fn send(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        let index = self.next_index;
        self.next_index += 1;
        let sent = self.jobs.as_ref().map(|jobs| jobs.send((index, chunk)));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(self
                .finish()
                .err()
                .unwrap_or_else(|| io::Error::other("the gzip workers stopped"))),
        }
    }

    fn finish(&mut self) -> io::Result<CompressedBlob> {
        self.jobs = None;
        let mut worker_error = None;
        for worker in self.workers.drain(..) {
            if let Err(e) = join(Some(worker)) {
                worker_error.get_or_insert(e);
            }
        }
        if let Some(results) = self.results.take() {
            // Workers are done: every chunk sent is in the channel already.
            let _ = results.send(GzipMessage::Done(self.next_index));
        }
        let written = join(self.writer.take());
        match worker_error {
            Some(e) => Err(e),
            None => written,
        }
    }
}

fn gzip_compressor() -> libdeflater::Compressor {
    libdeflater::Compressor::new(
        libdeflater::CompressionLvl::new(GZIP_LEVEL).unwrap_or_else(|_| Default::default()),
    )
}

/// Compresses `input` into one complete gzip member (header, deflate stream,
/// CRC-32 and size trailer).
pub(crate) fn gzip_member(
    compressor: &mut libdeflater::Compressor,
    input: &[u8],
) -> io::Result<Vec<u8>> {
    let mut out = vec![0; compressor.gzip_compress_bound(input.len())];
    let size = compressor
        .gzip_compress(input, &mut out)
        .map_err(|e| io::Error::other(format!("gzip compression failed: {e}")))?;
    out.truncate(size);
    Ok(out)
}

type Sink = HashingWriter<BufWriter<File>>;

/// The compressor of one blob. Settings are fixed so the same tar always gives
/// the same blob digest.
enum Encoder {
    Zstd(zstd::stream::write::Encoder<'static, Sink>),
    None(Sink),
}

/// libdeflate level for gzip layers: see the compression bench for the
/// speed and size of each level on a real rootfs.
const GZIP_LEVEL: i32 = 1;
const ZSTD_LEVEL: i32 = 3;

impl Encoder {
    fn new(compression: Compression, sink: Sink) -> io::Result<Encoder> {
        Ok(match compression {
            Compression::Gzip => {
                return Err(io::Error::other("gzip layers are written by ParallelGzip"))
            }
            Compression::Zstd => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(sink, ZSTD_LEVEL)?)
            }
            Compression::None => Encoder::None(sink),
        })
    }

    fn finish(self) -> io::Result<Sink> {
        match self {
            Encoder::Zstd(e) => e.finish(),
            Encoder::None(s) => Ok(s),
        }
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Zstd(e) => e.write(buf),
            Encoder::None(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Zstd(e) => e.flush(),
            Encoder::None(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn parallel_gzip_is_standard_multi_member_gzip_and_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        // 5.5 MiB: several chunks and a partial one, text and noise mixed.
        let mut data = Vec::new();
        let mut state = 0x1234_5678_u64;
        while data.len() < 11 * CHUNK / 2 {
            data.extend_from_slice(b"usr/share/doc/kiln/copyright ");
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            data.extend_from_slice(&state.to_le_bytes());
        }
        let write = || {
            let mut writer =
                LayerWriter::new(tmp.clone(), blobs.clone(), Compression::Gzip).unwrap();
            for piece in data.chunks(100_003) {
                writer.write_all(piece).unwrap();
            }
            writer.finish().unwrap()
        };
        let blob = write();
        assert_eq!(write(), blob);
        let bytes = std::fs::read(blobs.join(blob.descriptor.digest().digest())).unwrap();
        let mut decoded = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert!(decoded == data, "round trip differs");
        assert_eq!(blob.diff_id, crate::sha256_digest(&data));
        assert!(bytes.len() < data.len());
        // An empty layer is a valid gzip stream too.
        let empty = LayerWriter::new(tmp.clone(), blobs.clone(), Compression::Gzip)
            .unwrap()
            .finish()
            .unwrap();
        let bytes = std::fs::read(blobs.join(empty.descriptor.digest().digest())).unwrap();
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert!(decoded.is_empty());
    }
}
