//! Layer tars moved between threads in 1 MiB chunks: read ahead of the
//! unpacker (decompression on one core, file creation on the other), and
//! snapshots unpacked from a layer tar while it is being written.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::error::{io_err, Error, Result};
use crate::snapshot::{remove_tree, unpack_layer, Snapshotter};

/// How many bytes move between the threads at once.
const CHUNK: usize = 1 << 20;
/// How many chunks may wait for the consumer: enough to ride out a burst of
/// small files (a streamed snapshot's file creation falls behind the tar
/// writer in bursts; 24 against 8 made a COPY of 20,000 files then RUN 3%
/// faster), little enough to bound memory.
const CHUNKS_IN_FLIGHT: usize = 24;

/// The reading end: the chunks a producer thread sends, as one stream.
struct ChunkReader {
    chunks: Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    offset: usize,
}

impl ChunkReader {
    fn new(chunks: Receiver<io::Result<Vec<u8>>>) -> ChunkReader {
        ChunkReader {
            chunks,
            current: Vec::new(),
            offset: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.offset == self.current.len() {
            match self.chunks.recv() {
                Ok(chunk) => {
                    self.current = chunk?;
                    self.offset = 0;
                }
                // The producer is done: the end of the stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.offset);
        buf[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

/// Runs `consume` over `reader` read by a second thread up to
/// [`CHUNKS_IN_FLIGHT`] chunks ahead: a decompressing reader then uses one
/// core while `consume` (the unpacker, all system calls) uses the other.
pub(crate) fn read_ahead<R, T>(
    reader: R,
    consume: impl FnOnce(&mut dyn Read) -> Result<T>,
) -> Result<T>
where
    R: Read + Send,
{
    std::thread::scope(|scope| {
        let (sender, receiver) = sync_channel(CHUNKS_IN_FLIGHT);
        scope.spawn(move || produce(reader, &sender));
        let mut chunks = ChunkReader::new(receiver);
        // Dropping the reader (also when `consume` stopped early) makes the
        // producer's next send fail, so it stops too.
        consume(&mut chunks)
    })
}

/// Sends `reader`'s bytes in chunks until its end, an error (sent on) or a
/// consumer that went away.
fn produce(mut reader: impl Read, sender: &SyncSender<io::Result<Vec<u8>>>) {
    loop {
        let mut chunk = vec![0; CHUNK];
        let mut filled = 0;
        let outcome = loop {
            match reader.read(&mut chunk[filled..]) {
                Ok(0) => break Ok(true),
                Ok(n) => {
                    filled += n;
                    if filled == CHUNK {
                        break Ok(false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        chunk.truncate(filled);
        let at_end = match outcome {
            Ok(at_end) => at_end,
            Err(e) => {
                let _ = sender.send(Ok(chunk));
                let _ = sender.send(Err(e));
                return;
            }
        };
        if !chunk.is_empty() && sender.send(Ok(chunk)).is_err() {
            return;
        }
        if at_end {
            return;
        }
    }
}

/// A snapshot unpacked from a layer tar as the tar is written into it, for
/// the makers of a layer that know its snapshot will be wanted (an import, a
/// step whose result a later step mounts): the tar written once is both the
/// layer blob and the snapshot, with no reading back of the blob.
///
/// Writes are queued to an unpacking thread that fills a temporary
/// directory (see [`Snapshotter::stream`]); [`SnapshotStream::finish`] names it once
/// the layer's chain id is known (the diff_id is only known at the end) and
/// moves it into place as [`Snapshotter::prepare`] would, with the same lock,
/// boot marker and atomic rename. The same unpacker reads the same bytes, so
/// the snapshot is the one `prepare` makes from the blob. Dropping the stream
/// unfinished removes the temporary directory.
///
/// A write fails only when the unpacker stopped or its directory could not
/// be made; [`SnapshotStream::finish`]
/// then returns its error. A maker whose layer must not depend on the
/// snapshot stops writing to the stream and lets `prepare` unpack the blob
/// later.
pub struct SnapshotStream {
    snapshotter: Snapshotter,
    temp: PathBuf,
    chunk: Vec<u8>,
    sender: Option<SyncSender<io::Result<Vec<u8>>>>,
    worker: Option<JoinHandle<Result<()>>>,
}

impl std::fmt::Debug for SnapshotStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStream")
            .field("temp", &self.temp)
            .finish_non_exhaustive()
    }
}

/// How a streamed layer is named in errors before its chain id is known.
const STREAMED: &str = "the layer being written";

impl Snapshotter {
    /// Starts a snapshot that the layer tar written into the returned stream
    /// fills (see [`SnapshotStream`]). Its directory and unpacking thread
    /// are made with the first full chunk (a layer of more than a chunk is
    /// filled apart, as [`Snapshotter::prepare_sized`] fills a large one),
    /// or at the finish of a smaller layer.
    pub fn stream(&self) -> SnapshotStream {
        SnapshotStream {
            snapshotter: self.clone(),
            temp: PathBuf::new(),
            chunk: Vec::with_capacity(CHUNK),
            sender: None,
            worker: None,
        }
    }
}

/// Unpacks the layer and then reads the rest of the stream (the tar's end
/// blocks), so the writer never sees a closed stream after a good layer.
fn unpack_all(mut reader: ChunkReader, dir: &Path) -> Result<()> {
    unpack_layer(&mut reader, dir, STREAMED)?;
    io::copy(&mut reader, &mut io::sink()).map_err(io_err("read the rest of", dir))?;
    Ok(())
}

impl SnapshotStream {
    /// Makes the snapshot's directory (apart for a `large` layer) and
    /// starts the unpacker on it, unless that was done (the directory is
    /// named only once it is made).
    fn start(&mut self, large: bool) -> io::Result<()> {
        if !self.temp.as_os_str().is_empty() {
            return Ok(());
        }
        let temp = self.snapshotter.temp_dir("stream", large);
        std::fs::create_dir(&temp)?;
        let (sender, receiver) = sync_channel(CHUNKS_IN_FLIGHT);
        let dir = temp.clone();
        let worker = std::thread::Builder::new()
            .name("kiln-unpack".to_owned())
            .spawn(move || unpack_all(ChunkReader::new(receiver), &dir));
        match worker {
            Ok(worker) => {
                self.temp = temp;
                self.sender = Some(sender);
                self.worker = Some(worker);
                Ok(())
            }
            Err(e) => {
                let _ = remove_tree(&temp);
                Err(e)
            }
        }
    }

    fn send_chunk(&mut self) -> io::Result<()> {
        // A full chunk before the finish: a large layer.
        self.start(self.chunk.len() == CHUNK)?;
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
        match &self.sender {
            Some(sender) if sender.send(Ok(chunk)).is_ok() => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the snapshot's unpacker stopped",
            )),
        }
    }

    /// Waits for the unpacker to take the whole tar written so far (the
    /// complete layer) and makes its directory the snapshot of `chain_id`
    /// (the layer's and its parents'); returns the snapshot's directory.
    pub fn finish(mut self, chain_id: &str) -> Result<PathBuf> {
        let sent = self.send_chunk();
        self.sender = None;
        let unpacked = match self.worker.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            // Never started: the directory could not be made.
            None => Ok(()),
            Some(Err(_)) => Err(Error::BadLayer {
                chain_id: chain_id.to_owned(),
                entry: String::new(),
                reason: "the unpacking thread panicked".to_owned(),
            }),
        };
        unpacked?;
        sent.map_err(io_err("unpack", &self.temp))?;
        let snapshot = self.snapshotter.adopt(chain_id, &self.temp);
        if snapshot.is_err() {
            let _ = remove_tree(&self.temp);
        }
        // Adopted or removed: nothing is left for drop.
        self.temp = PathBuf::new();
        snapshot
    }
}

impl Write for SnapshotStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
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

impl Drop for SnapshotStream {
    fn drop(&mut self) {
        // Unfinished: stop the unpacker (its input ends) and remove its work.
        self.sender = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        if !self.temp.as_os_str().is_empty() {
            let _ = remove_tree(&self.temp);
        }
    }
}
