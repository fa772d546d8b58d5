//! Regular files of a layer created by worker threads while the unpacker
//! reads on: a layer is mostly small files whose creation is kernel work
//! (inode and directory updates), which runs on every core this way.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::error::{io_err, Error, Result};

/// The metadata a regular file of a layer gets.
pub(crate) struct FileMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl FileMeta {
    /// Sets owner, mode (after the owner: chown clears setuid and setgid),
    /// xattrs and times through the open `file`: no path is looked up again.
    pub fn apply(&self, file: &File, path: &Path) -> Result<()> {
        let errno = |action: &'static str| {
            move |e: nix::errno::Errno| Error::Io {
                action,
                path: path.to_path_buf(),
                source: e.into(),
            }
        };
        nix::unistd::fchown(
            file,
            Some(Uid::from_raw(self.uid)),
            Some(Gid::from_raw(self.gid)),
        )
        .map_err(errno("chown"))?;
        nix::sys::stat::fchmod(file, Mode::from_bits_truncate(self.mode))
            .map_err(errno("chmod"))?;
        for (key, value) in &self.xattrs {
            xattr::FileExt::set_xattr(file, key, value).map_err(io_err("set xattr on", path))?;
        }
        let time = TimeSpec::new(self.mtime, 0);
        nix::sys::stat::futimens(file, &time, &time).map_err(errno("set mtime of"))
    }
}

/// Creates the regular file `path`, which must not exist (not even as a
/// symlink), readable by its owner only until its metadata is applied.
pub(crate) fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// One file for a worker: its path (new: nothing is there), data and metadata.
pub(crate) struct FileJob {
    pub path: PathBuf,
    pub data: Vec<u8>,
    pub meta: FileMeta,
}

/// Files at most this large are handed to the workers (with their data in
/// memory); larger ones are written by the unpacker itself.
pub(crate) const POOLED_MAX: u64 = 1 << 20;
/// The unpacker writes this many files itself before it starts workers: a
/// small layer (a RUN that wrote a file or two) is done before threads
/// would be.
pub(crate) const FILES_BEFORE_POOL: usize = 32;
/// Jobs queued at most: bounds the memory of data waiting to be written.
const QUEUED: usize = 32;

#[derive(Default)]
struct State {
    /// Jobs submitted and not yet done.
    pending: Mutex<usize>,
    done: Condvar,
    /// The first failure; later jobs are skipped.
    error: Mutex<Option<Error>>,
    stop: AtomicBool,
}

/// Worker threads that create the files given to them, in any order: the
/// caller submits only files whose path nothing else in flight touches, and
/// [`FilePool::wait`]s for all of them before it changes such a path.
pub(crate) struct FilePool {
    jobs: Option<SyncSender<FileJob>>,
    workers: Vec<JoinHandle<()>>,
    state: Arc<State>,
}

impl FilePool {
    /// A pool of one worker per CPU (at most 4); `None` on one CPU, where
    /// the unpacker is better off writing the files itself.
    pub fn start() -> Option<FilePool> {
        // Asked once: the answer reads cgroup files.
        static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let threads = *THREADS
            .get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)));
        if threads < 2 {
            return None;
        }
        let (jobs, receiver) = sync_channel::<FileJob>(QUEUED);
        let receiver = Arc::new(Mutex::new(receiver));
        let state = Arc::new(State::default());
        let mut workers = Vec::new();
        for _ in 0..threads {
            let (receiver, state) = (Arc::clone(&receiver), Arc::clone(&state));
            let spawned = std::thread::Builder::new()
                .name("kiln-unpack-files".to_owned())
                .spawn(move || work(&receiver, &state));
            match spawned {
                Ok(worker) => workers.push(worker),
                Err(_) if !workers.is_empty() => break,
                Err(_) => return None,
            }
        }
        Some(FilePool {
            jobs: Some(jobs),
            workers,
            state,
        })
    }

    /// Queues `job` (waiting while the queue is full); fails with a
    /// worker's error once one failed.
    pub fn submit(&mut self, job: FileJob) -> Result<()> {
        self.failure()?;
        if let Ok(mut pending) = self.state.pending.lock() {
            *pending += 1;
        }
        let sent = self.jobs.as_ref().map(|jobs| jobs.send(job));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => {
                self.finished_one();
                self.failure()?;
                Err(Error::Io {
                    action: "hand a file to",
                    path: PathBuf::from("the unpacking threads"),
                    source: io::Error::other("they stopped"),
                })
            }
        }
    }

    /// Waits until every submitted file is written; the first failure, if any.
    pub fn wait(&mut self) -> Result<()> {
        if let Ok(mut pending) = self.state.pending.lock() {
            while *pending > 0 {
                match self.state.done.wait(pending) {
                    Ok(guard) => pending = guard,
                    Err(_) => break,
                }
            }
        }
        self.failure()
    }

    fn failure(&self) -> Result<()> {
        match self.state.error.lock().ok().and_then(|mut e| e.take()) {
            Some(error) => {
                // Later jobs stay skipped.
                self.state.stop.store(true, Ordering::SeqCst);
                Err(error)
            }
            None => Ok(()),
        }
    }

    fn finished_one(&self) {
        finished_one(&self.state);
    }
}

fn finished_one(state: &State) {
    if let Ok(mut pending) = state.pending.lock() {
        *pending = pending.saturating_sub(1);
        if *pending == 0 {
            state.done.notify_all();
        }
    }
}

impl Drop for FilePool {
    fn drop(&mut self) {
        // Whatever is still queued is not wanted (the unpack failed or is
        // done): skip it, and let the workers see the end of the queue.
        self.state.stop.store(true, Ordering::SeqCst);
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn work(receiver: &Mutex<Receiver<FileJob>>, state: &State) {
    loop {
        let job = match receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        if !state.stop.load(Ordering::SeqCst) {
            if let Err(e) = write_job(&job) {
                state.stop.store(true, Ordering::SeqCst);
                if let Ok(mut error) = state.error.lock() {
                    error.get_or_insert(e);
                }
            }
        }
        finished_one(state);
    }
}

fn write_job(job: &FileJob) -> Result<()> {
    let mut file = create_new(&job.path).map_err(io_err("create", &job.path))?;
    file.write_all(&job.data)
        .map_err(io_err("write", &job.path))?;
    job.meta.apply(&file, &job.path)
}
