//! Writing layers: a tar stream hashed for its diff_id, compressed in
//! parallel chunks on one process-wide pool, and stored as a verified blob.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Sender, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use oci_spec::image::{Descriptor, Digest};
use sha2::{Digest as _, Sha256};

use crate::compression::Compression;
use crate::deflate::{DeflateWriter, Matcher, SMALL_FRAGMENT};
use crate::error::{IoContext, Result};
use crate::fsutil::{self, HashingWriter};

/// A layer blob in the store: its descriptor (digest and size of the
/// compressed blob) and its diff_id (sha256 of the uncompressed tar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    /// Media type, digest and size of the compressed blob.
    pub descriptor: Descriptor,
    /// The sha256 of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
}

/// How many uncompressed bytes the writer hands to the compression thread at once.
const CHUNK: usize = 1 << 20;
/// Chunks a gzip layer may have in flight (at least two per gzip thread):
/// the tar writer runs ahead of compression that a busy machine (the
/// snapshot of the same layer being written beside it) delays now and then,
/// instead of waiting for it chunk by chunk. 16 against 4 made a COPY of
/// 20,000 files then RUN 4% faster on 2 cores.
const CHUNKS_IN_FLIGHT: usize = 16;

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
                        let file = EarlySync::new(temp.reopen()?);
                        let sink = HashingWriter::new(BufWriter::with_capacity(CHUNK, file));
                        let mut encoder = Encoder::new(compression, sink)?;
                        for chunk in receiver {
                            encoder.write_all(&chunk)?;
                        }
                        let (buffered, digest, size) = encoder.finish()?.finish();
                        let file = buffered.into_inner().map_err(|e| e.into_error())?;
                        file.finish()?.sync_all()?;
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
/// deflate stream) on the process-wide [`GzipPool`]. A writer thread per
/// layer puts the members in order. Concatenated members are one standard
/// gzip file (RFC 1952 section 2.2), read whole by Go's gzip.Reader
/// (multistream by default: docker, containerd, skopeo, umoci), Python's
/// gzip, GNU gunzip and flate2's MultiGzDecoder. Chunks are compressed
/// independently with fixed settings and libdeflate's header has no name or
/// time, so the blob does not depend on the number of threads or their timing.
struct ParallelGzip {
    results: Option<Sender<GzipMessage>>,
    /// One slot per chunk in flight, freed by the writer thread as it writes
    /// the chunk's member: bounds the memory of a layer whose file writes
    /// are slower than the compression (see [`CHUNKS_IN_FLIGHT`]).
    in_flight: Option<SyncSender<()>>,
    writer: Option<JoinHandle<io::Result<CompressedBlob>>>,
    next_index: u64,
}

enum GzipMessage {
    /// One chunk as a complete gzip member.
    Member(u64, Vec<u8>),
    /// A chunk could not be compressed.
    Failed(io::Error),
    /// No more chunks after this many.
    Done(u64),
}

struct GzipJob {
    index: u64,
    chunk: Vec<u8>,
    results: Sender<GzipMessage>,
}

/// The threads that compress gzip chunks for every layer the process
/// writes, one per CPU: however many steps write layers at once, kiln's
/// compression never runs more threads than there are CPUs.
struct GzipPool {
    jobs: Sender<GzipJob>,
    threads: usize,
}

static GZIP_POOL: OnceLock<io::Result<GzipPool>> = OnceLock::new();

impl GzipPool {
    fn get() -> io::Result<&'static GzipPool> {
        GZIP_POOL
            .get_or_init(GzipPool::start)
            .as_ref()
            .map_err(|e| io::Error::new(e.kind(), e.to_string()))
    }

    fn start() -> io::Result<GzipPool> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
        let (jobs, job_receiver) = std::sync::mpsc::channel::<GzipJob>();
        let job_receiver = Arc::new(Mutex::new(job_receiver));
        for _ in 0..threads {
            let job_receiver = Arc::clone(&job_receiver);
            std::thread::Builder::new()
                .name("kiln-gzip".to_owned())
                .spawn(move || {
                    let mut compressor = GzipCompressor::new();
                    loop {
                        let job = match job_receiver.lock() {
                            Ok(receiver) => receiver.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let message = match compressor.member(&job.chunk) {
                            Ok(member) => GzipMessage::Member(job.index, member),
                            Err(e) => GzipMessage::Failed(e),
                        };
                        // A layer writer that gave up no longer listens.
                        let _ = job.results.send(message);
                    }
                })?;
        }
        Ok(GzipPool { jobs, threads })
    }
}

impl ParallelGzip {
    fn start(temp: tempfile::NamedTempFile) -> Result<ParallelGzip> {
        let pool = GzipPool::get().during("starting the gzip threads")?;
        let (results, result_receiver) = std::sync::mpsc::channel::<GzipMessage>();
        let (in_flight, slots) = sync_channel::<()>((pool.threads * 2).max(CHUNKS_IN_FLIGHT));
        let writer = std::thread::Builder::new()
            .name("kiln-gzip-writer".to_owned())
            .spawn(move || -> io::Result<CompressedBlob> {
                let file = EarlySync::new(temp.reopen()?);
                let mut sink = HashingWriter::new(BufWriter::with_capacity(CHUNK, file));
                let mut pending = std::collections::BTreeMap::new();
                let mut next = 0u64;
                let mut total: Option<u64> = None;
                while total != Some(next) {
                    match result_receiver.recv() {
                        Ok(GzipMessage::Member(index, bytes)) => {
                            pending.insert(index, bytes);
                        }
                        Ok(GzipMessage::Failed(e)) => return Err(e),
                        Ok(GzipMessage::Done(count)) => total = Some(count),
                        Err(_) => return Err(io::Error::other("the gzip workers stopped early")),
                    }
                    while let Some(bytes) = pending.remove(&next) {
                        sink.write_all(&bytes)?;
                        next += 1;
                        let _ = slots.try_recv();
                    }
                }
                if next == 0 {
                    // An empty layer is still a gzip file: one empty member.
                    sink.write_all(&GzipCompressor::new().member(&[])?)?;
                }
                let (buffered, digest, size) = sink.finish();
                let file = buffered.into_inner().map_err(|e| e.into_error())?;
                file.finish()?.sync_all()?;
                Ok(CompressedBlob { temp, digest, size })
            })
            .during("starting the gzip writer thread")?;
        Ok(ParallelGzip {
            results: Some(results),
            in_flight: Some(in_flight),
            writer: Some(writer),
            next_index: 0,
        })
    }

    fn send(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        let index = self.next_index;
        self.next_index += 1;
        let queued = match (&self.in_flight, &self.results) {
            // Waits for a free slot; fails when the writer thread stopped.
            (Some(in_flight), Some(results)) if in_flight.send(()).is_ok() => GzipPool::get()
                .and_then(|pool| {
                    pool.jobs
                        .send(GzipJob {
                            index,
                            chunk,
                            results: results.clone(),
                        })
                        .map_err(|_| io::Error::other("the gzip threads stopped"))
                }),
            _ => Err(io::Error::other("the gzip writer stopped")),
        };
        match queued {
            Ok(()) => Ok(()),
            // The writer thread's error says why it stopped.
            Err(e) => Err(self.finish().err().unwrap_or(e)),
        }
    }

    fn finish(&mut self) -> io::Result<CompressedBlob> {
        self.in_flight = None;
        if let Some(results) = self.results.take() {
            // Members still being compressed arrive after this; the writer
            // waits for all of them.
            let _ = results.send(GzipMessage::Done(self.next_index));
        }
        join(self.writer.take())
    }
}

/// A gzip chunk compressor. Each 1 MiB chunk is cut into tar records
/// (512 bytes, so a tar header and the file data after it never share one)
/// and each record is judged by its byte statistics:
/// - a chunk that is mostly compressible is compressed by libdeflate at
///   [`GZIP_LEVEL`];
/// - a chunk that is all incompressible (random, encrypted or already
///   compressed data) is written as stored deflate blocks, a copy plus CRC;
/// - a chunk that is mostly incompressible with compressible parts (tar
///   headers between compressed or random files) becomes one member whose
///   deflate stream alternates compressed blocks for the headers and stored
///   blocks for the data, so the headers still shrink while the data costs a
///   copy instead of a futile match search (which made libdeflate the
///   largest cost of a COPY of incompressible files).
///
/// Still standard gzip, and every choice depends only on the chunk's bytes
/// (integer statistics, fixed settings), so the blob stays reproducible
/// across machines.
struct GzipCompressor {
    compressor: libdeflater::Compressor,
    store_only: libdeflater::Compressor,
    /// Raw deflate for the long compressible fragments of a mixed chunk,
    /// which libdeflate (whole-buffer, final block only) cannot make; the
    /// short ones and the stored ones are [`crate::deflate`]'s.
    compressed: flate2::Compress,
    matcher: Matcher,
    regions: Vec<Region>,
}

/// The unit the incompressibility test looks at: one tar record.
const RECORD: usize = 512;
/// The shortest run of incompressible records worth a stored block of its
/// own; shorter runs are compressed with their neighbours.
const MIN_STORED_RUN: usize = 8 * RECORD;
/// A record is judged by three 64-byte pieces of it (its start, middle and
/// end: 192 bytes, where counting all 512 was most of the cost of a COPY of
/// incompressible files).
const SAMPLE_PIECES: [usize; 3] = [0, 224, 448];
const SAMPLE_PIECE: usize = 64;
/// A record is incompressible when its sample has at most this many pairs
/// of equal bytes: Σc(c-1)/2 over the byte counts c, an unbiased estimate of
/// C(n,2)·2^-H₂. The bound is C(192,2)/150, a collision entropy H₂ of at
/// least 7.2 bits per byte, where Huffman coding can save at most a few
/// percent and matches are unlikely. Random samples average 71.6 pairs
/// (standard deviation ~8.5, so the bound is 6 deviations away); text has
/// hundreds, a tar header thousands.
const MAX_EQUAL_PAIRS: u32 = (192 * 191 / 2 / 150) as u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Region {
    end: usize,
    stored: bool,
}

impl GzipCompressor {
    fn new() -> GzipCompressor {
        let level = |n| libdeflater::CompressionLvl::new(n).unwrap_or_default();
        GzipCompressor {
            compressor: libdeflater::Compressor::new(level(GZIP_LEVEL)),
            store_only: libdeflater::Compressor::new(level(0)),
            compressed: flate2::Compress::new(flate2::Compression::new(GZIP_LEVEL as u32), false),
            matcher: Matcher::new(),
            regions: Vec::new(),
        }
    }

    /// Compresses `input` into one complete gzip member (header, deflate
    /// stream, CRC-32 and size trailer).
    fn member(&mut self, input: &[u8]) -> io::Result<Vec<u8>> {
        find_regions(input, &mut self.regions);
        let compressor = match self.regions.as_slice() {
            [] => &mut self.compressor,
            [only] if only.stored => &mut self.store_only,
            [_] => &mut self.compressor,
            // libdeflate compresses better than zlib's fast levels: a chunk
            // that is mostly compressible stays whole with it.
            _ if stored_bytes(&self.regions) * 2 < input.len() => &mut self.compressor,
            _ => return self.mixed_member(input),
        };
        let mut out = vec![0; compressor.gzip_compress_bound(input.len())];
        let size = compressor
            .gzip_compress(input, &mut out)
            .map_err(|e| io::Error::other(format!("gzip compression failed: {e}")))?;
        out.truncate(size);
        Ok(out)
    }

    /// One gzip member (RFC 1952) around a raw deflate stream made of
    /// fragments, one per region: stored blocks for incompressible runs,
    /// and for the rest a fixed-Huffman block of [`crate::deflate`]'s own
    /// (short runs: the tar headers between small files) or zlib at
    /// [`GZIP_LEVEL`] (long runs), each byte-aligned with a sync flush and
    /// reset before its next fragment, so that no match reaches back across
    /// a region. (zlib-rs through flate2 cannot change the level of one
    /// stream midway, and clears its 128 KiB hash table on every reset or
    /// full flush: for a chunk of small files, too often.)
    fn mixed_member(&mut self, input: &[u8]) -> io::Result<Vec<u8>> {
        // Header: deflate, no flags, no time, no extra flags, unknown OS.
        let mut out = Vec::with_capacity(input.len() + input.len() / 64 + 1024);
        out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
        let mut stream = DeflateWriter::new(out);
        let mut start = 0;
        for region in &self.regions {
            let fragment = input.get(start..region.end).unwrap_or_default();
            start = region.end;
            if region.stored {
                stream.stored(fragment);
            } else if fragment.len() <= SMALL_FRAGMENT {
                stream.fixed(fragment, &mut self.matcher);
            } else {
                self.compressed.reset();
                deflate_all(
                    &mut self.compressed,
                    fragment,
                    stream.aligned_output(),
                    flate2::FlushCompress::Sync,
                )?;
            }
        }
        let mut out = stream.finish();
        let mut crc = libdeflater::Crc::new();
        crc.update(input);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&(input.len() as u32).to_le_bytes());
        Ok(out)
    }
}

/// Feeds all of `input` to `compress` and completes `flush`, growing `out`
/// as needed.
fn deflate_all(
    compress: &mut flate2::Compress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    flush: flate2::FlushCompress,
) -> io::Result<()> {
    loop {
        // Stored blocks add 5 bytes per 64 KiB; a flush adds a few more.
        out.reserve(input.len() + input.len() / 64 + 64);
        let before = compress.total_in();
        let status = compress
            .compress_vec(input, out, flush)
            .map_err(|e| io::Error::other(format!("gzip compression failed: {e}")))?;
        let consumed = usize::try_from(compress.total_in() - before).unwrap_or(input.len());
        input = input.get(consumed..).unwrap_or_default();
        let flushed = match flush {
            flate2::FlushCompress::Finish => status == flate2::Status::StreamEnd,
            // The flush is complete once output space was left over.
            _ => out.len() < out.capacity(),
        };
        if input.is_empty() && flushed {
            return Ok(());
        }
    }
}

/// Splits `input` into maximal runs of compressible and incompressible
/// records (into `regions`, cleared first); runs of incompressible records
/// shorter than [`MIN_STORED_RUN`] count as compressible.
fn find_regions(input: &[u8], regions: &mut Vec<Region>) {
    regions.clear();
    // Extends the last region or starts one; empty regions are dropped.
    let mut push = |end: usize, stored: bool| match regions.last_mut() {
        Some(last) if last.end == end => {}
        Some(last) if last.stored == stored => last.end = end,
        None if end == 0 => {}
        _ => regions.push(Region { end, stored }),
    };
    let judged = input
        .chunks(RECORD)
        .map(|record| {
            let incompressible = record.len() == RECORD && is_incompressible_record(record);
            (record.len(), incompressible)
        })
        // A compressible end marker closes a run that reaches the end.
        .chain(std::iter::once((0, false)));
    let mut run_start = None;
    let mut offset = 0;
    for (len, incompressible) in judged {
        match (incompressible, run_start) {
            (true, None) => run_start = Some(offset),
            (false, Some(start)) => {
                if offset - start >= MIN_STORED_RUN {
                    push(start, false);
                    push(offset, true);
                }
                run_start = None;
            }
            _ => {}
        }
        offset += len;
    }
    push(offset, false);
}

fn stored_bytes(regions: &[Region]) -> usize {
    let mut start = 0;
    let mut stored = 0;
    for region in regions {
        if region.stored {
            stored += region.end - start;
        }
        start = region.end;
    }
    stored
}

fn is_incompressible_record(record: &[u8]) -> bool {
    let mut counts = [0u8; 256];
    let mut pairs = 0u32;
    for start in SAMPLE_PIECES {
        let piece = record.get(start..start + SAMPLE_PIECE).unwrap_or_default();
        for &byte in piece {
            let count = &mut counts[usize::from(byte)];
            pairs += u32::from(*count);
            *count += 1;
        }
        // Compressible data gives itself away in its first piece.
        if pairs > MAX_EQUAL_PAIRS {
            return false;
        }
    }
    true
}

/// How far the blob file may run ahead of the disk before a background
/// `fdatasync` is started.
const EARLY_SYNC_EVERY: u64 = 16 << 20;

/// The blob file, synced to disk in the background while it is written: a
/// large layer's final fsync then waits for its last few MiB instead of all
/// of it (256 MB took ~0.5 s to fsync here). Small layers never start the
/// thread.
struct EarlySync {
    file: File,
    written: u64,
    requested: u64,
    syncer: Option<(SyncSender<()>, JoinHandle<io::Result<()>>)>,
}

impl EarlySync {
    fn new(file: File) -> EarlySync {
        EarlySync {
            file,
            written: 0,
            requested: 0,
            syncer: None,
        }
    }

    fn request_sync(&mut self) -> io::Result<()> {
        if self.syncer.is_none() {
            let file = self.file.try_clone()?;
            // One pending request is enough: a sync started later covers
            // everything written before it.
            let (requests, pending) = sync_channel::<()>(1);
            let worker = std::thread::Builder::new()
                .name("kiln-layer-sync".to_owned())
                .spawn(move || -> io::Result<()> {
                    for () in pending {
                        file.sync_data()?;
                    }
                    Ok(())
                })?;
            self.syncer = Some((requests, worker));
        }
        if let Some((requests, _)) = &self.syncer {
            // Full: a sync is already queued and will cover this write.
            let _ = requests.try_send(());
        }
        Ok(())
    }

    /// Waits for the background syncs and returns the file for its final
    /// fsync.
    fn finish(mut self) -> io::Result<File> {
        if let Some((requests, worker)) = self.syncer.take() {
            drop(requests);
            join(Some(worker))?;
        }
        Ok(self.file)
    }
}

impl Write for EarlySync {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.requested >= EARLY_SYNC_EVERY {
            self.requested = self.written;
            self.request_sync()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

type Sink = HashingWriter<BufWriter<EarlySync>>;

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

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ seed;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.extend_from_slice(&state.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn gunzip(member: &[u8]) -> Vec<u8> {
        let mut decoded = Vec::new();
        flate2::read::MultiGzDecoder::new(member)
            .read_to_end(&mut decoded)
            .unwrap();
        decoded
    }

    /// Small random files as a tar lays them out: a header record, then data.
    fn small_random_files(len: usize) -> Vec<u8> {
        let mut files = Vec::new();
        while files.len() < len {
            let mut header = [0u8; 512];
            header[..20].copy_from_slice(b"files/d0/f0000000000");
            header[257..262].copy_from_slice(b"ustar");
            files.extend_from_slice(&header);
            files.extend_from_slice(&noise(4096, files.len() as u64));
        }
        files.truncate(len);
        files
    }

    #[test]
    fn records_are_judged_by_their_byte_statistics() {
        assert!(is_incompressible_record(&noise(RECORD, 1)));
        assert!(!is_incompressible_record(&[0; RECORD]));
        let text = b"usr/share/doc/kiln/copyright ".repeat(RECORD / 29 + 1);
        assert!(!is_incompressible_record(&text[..RECORD]));
        // Every random record of a chunk passes, not just most of them.
        assert!(noise(CHUNK, 2).chunks(RECORD).all(is_incompressible_record));
        // Structured binary (little-endian counters with random low bytes)
        // compresses, whichever bytes the sample takes.
        let counters: Vec<u8> = noise(RECORD / 4, 5)
            .iter()
            .enumerate()
            .flat_map(|(i, &low)| [low, (i / 64) as u8, 0, 0])
            .collect();
        assert!(!is_incompressible_record(&counters));
        // Random data that turns into text past the middle is not stored.
        let mut half = noise(RECORD / 2, 6);
        half.extend_from_slice(&text[..RECORD / 2]);
        assert!(!is_incompressible_record(&half));
    }

    #[test]
    fn regions_separate_long_incompressible_runs_only() {
        let mut regions = Vec::new();
        find_regions(&noise(CHUNK, 0), &mut regions);
        assert_eq!(
            regions,
            [Region {
                end: CHUNK,
                stored: true
            }]
        );
        let text = b"usr/share/doc/kiln/copyright ".repeat(CHUNK / 29);
        find_regions(&text, &mut regions);
        assert_eq!(
            regions,
            [Region {
                end: text.len(),
                stored: false
            }]
        );
        find_regions(&[], &mut regions);
        assert!(regions.is_empty());
        // header, 4 KiB of data, header, 4 KiB of data: long enough runs.
        let files = small_random_files(2 * 4608);
        find_regions(&files, &mut regions);
        assert_eq!(
            regions,
            [
                Region {
                    end: 512,
                    stored: false
                },
                Region {
                    end: 4608,
                    stored: true
                },
                Region {
                    end: 5120,
                    stored: false
                },
                Region {
                    end: 9216,
                    stored: true
                },
            ]
        );
        // Runs shorter than MIN_STORED_RUN stay with their neighbours.
        let mut short = vec![0u8; 512];
        short.extend_from_slice(&noise(MIN_STORED_RUN - RECORD, 3));
        short.extend_from_slice(&[0u8; 512]);
        find_regions(&short, &mut regions);
        assert_eq!(
            regions,
            [Region {
                end: short.len(),
                stored: false
            }]
        );
    }

    #[test]
    fn incompressible_data_is_stored_and_headers_still_shrink() {
        let mut compressor = GzipCompressor::new();
        let random = noise(CHUNK, 0);
        let member = compressor.member(&random).unwrap();
        assert!(member.len() < random.len() + random.len() / 1000 + 64);
        assert!(
            gunzip(&member) == random,
            "stored member round trip differs"
        );

        // Mixed: the data is stored, the headers compress, and it reads back
        // (also when a chunk ends inside a file).
        for len in [CHUNK, CHUNK - 1000, 3 * RECORD, 4608 + 700] {
            let files = small_random_files(len);
            let member = compressor.member(&files).unwrap();
            assert!(
                gunzip(&member) == files,
                "mixed member of {len} bytes differs"
            );
            assert_eq!(
                compressor.member(&files).unwrap(),
                member,
                "not reproducible"
            );
            let data_bytes = files.len() / 4608 * 4096;
            if len == CHUNK {
                assert!(
                    member.len() < data_bytes + data_bytes / 50,
                    "headers did not shrink: {} of {}",
                    member.len(),
                    files.len()
                );
            }
        }
        // Text is compressed as before.
        let text = b"usr/share/doc/kiln/copyright ".repeat(CHUNK / 29);
        let member = compressor.member(&text).unwrap();
        assert!(member.len() < text.len() / 10);
        assert!(gunzip(&member) == text);
        // A mostly compressible chunk stays whole with libdeflate, a small
        // random file inside it notwithstanding.
        let mut mostly_text = text.clone();
        mostly_text.splice(8192..8192, noise(64 * 1024, 4));
        let mut whole = vec![0; compressor.compressor.gzip_compress_bound(mostly_text.len())];
        let size = compressor
            .compressor
            .gzip_compress(&mostly_text, &mut whole)
            .unwrap();
        assert_eq!(compressor.member(&mostly_text).unwrap(), whole[..size]);
    }

    #[test]
    fn large_blobs_are_synced_in_the_background_and_stay_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let mut early = EarlySync::new(File::create(&path).unwrap());
        let piece = noise(CHUNK, 7);
        early.write_all(&piece).unwrap();
        assert!(early.syncer.is_none(), "small files need no sync thread");
        for _ in 0..(EARLY_SYNC_EVERY as usize / CHUNK + 3) {
            early.write_all(&piece).unwrap();
        }
        assert!(early.syncer.is_some());
        let file = early.finish().unwrap();
        file.sync_all().unwrap();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(
            written.len(),
            (EARLY_SYNC_EVERY as usize / CHUNK + 4) * CHUNK
        );
        assert!(written.chunks(CHUNK).all(|c| c == piece.as_slice()));
    }
}
