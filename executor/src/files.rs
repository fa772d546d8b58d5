//! Regular files of a layer created by worker threads while the unpacker
//! reads on: a layer is mostly small files whose creation is kernel work
//! (inode and directory updates), which runs on every core this way.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use rustc_hash::FxHashMap;

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
    /// Creates the regular file `path`, which must not exist (not even as a
    /// symlink), readable by its owner only until its metadata is applied
    /// unless `how` says the create gives it its final mode and owner.
    /// The caller writes the data and then [`FileMeta::apply`]s the rest
    /// through the open descriptor: no path is looked up again.
    pub fn create(&self, path: &Path, how: CreateAs) -> io::Result<(File, Created)> {
        let exact_mode = how.exact_mode(self.mode);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(exact_mode.unwrap_or(0o600))
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        Ok((
            file,
            Created {
                owner: how.owner == Some((self.uid, self.gid)),
                mode: exact_mode.is_some(),
            },
        ))
    }

    /// Sets owner, mode (after the owner: chown clears setuid and setgid),
    /// xattrs and times through the open `file`, leaving out what `created`
    /// says the file already has.
    pub fn apply(&self, file: &File, path: &Path, created: Created) -> Result<()> {
        let errno = |action: &'static str| {
            move |e: nix::errno::Errno| Error::Io {
                action,
                path: path.to_path_buf(),
                source: e.into(),
            }
        };
        if !created.owner {
            nix::unistd::fchown(
                file,
                Some(Uid::from_raw(self.uid)),
                Some(Gid::from_raw(self.gid)),
            )
            .map_err(errno("chown"))?;
        }
        if !created.mode {
            nix::sys::stat::fchmod(file, Mode::from_bits_truncate(self.mode))
                .map_err(errno("chmod"))?;
        }
        for (key, value) in &self.xattrs {
            xattr::FileExt::set_xattr(file, key, value).map_err(io_err("set xattr on", path))?;
        }
        let time = TimeSpec::new(self.mtime, 0);
        nix::sys::stat::futimens(file, &time, &time).map_err(errno("set mtime of"))
    }
}

/// What a file gets from being created, in one tree: most files of a layer
/// are root's with mode 0644, which the create alone gives them, so they
/// need no `fchown` and no `fchmod` (two inode updates each, a good part of
/// the cost of unpacking small files).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CreateAs {
    /// The owner a new file gets: ours, while no setgid directory can give
    /// it another group; `None` when unsure.
    owner: Option<(u32, u32)>,
    /// The process umask, if known.
    umask: Option<u32>,
}

impl CreateAs {
    /// For files created under `root`, a directory this process just made
    /// (so a setgid bit on it came from above, and is seen here).
    pub(crate) fn under(root: &Path) -> CreateAs {
        let setgid = match std::fs::metadata(root) {
            Ok(meta) => std::os::unix::fs::MetadataExt::mode(&meta) & 0o2000 != 0,
            Err(_) => true,
        };
        CreateAs {
            owner: (!setgid).then(|| {
                (
                    nix::unistd::geteuid().as_raw(),
                    nix::unistd::getegid().as_raw(),
                )
            }),
            umask: process_umask(),
        }
    }

    /// A setgid directory was made in the tree: files created in it (and in
    /// the directories made inside it, which inherit the bit) get its group.
    pub(crate) fn setgid_directory_made(&mut self) {
        self.owner = None;
    }

    /// The mode to create a file with that ends up exactly `mode`, if any:
    /// none for special bits, or for bits the umask takes away.
    fn exact_mode(&self, mode: u32) -> Option<u32> {
        let umask = self.umask?;
        (mode & 0o7000 == 0 && mode & umask == 0).then_some(mode)
    }
}

/// What creating a file already gave it (see [`CreateAs`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Created {
    owner: bool,
    mode: bool,
}

/// The process umask, read without changing it (the `Umask:` line of
/// /proc/self/status, Linux 4.7 and later). kiln never changes its own
/// umask (the sandbox's init sets one in its own process), so it is read
/// once.
fn process_umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(line.trim(), 8).ok()
    })
}

/// One file for a worker: its path (new: nothing is there), data and
/// metadata, and what creating it gives.
pub(crate) struct FileJob {
    pub path: PathBuf,
    pub data: Vec<u8>,
    pub meta: FileMeta,
    pub create: CreateAs,
}

/// Files at most this large are handed to the workers (with their data in
/// memory); larger ones are written by the unpacker itself.
pub(crate) const POOLED_MAX: u64 = 1 << 20;
/// The unpacker writes this many files itself before it starts workers: a
/// small layer (a RUN that wrote a file or two) is done before threads
/// would be.
pub(crate) const FILES_BEFORE_POOL: usize = 32;
/// Bytes of file data queued at most: bounds the memory of data waiting to
/// be written, and is how far the unpacker reads ahead of the workers (far
/// enough to reach the next directory while one worker fills a large one).
const QUEUED_BYTES: usize = 32 << 20;
/// Files queued at most (empty files weigh nothing in bytes).
const QUEUED_FILES: usize = 4096;

#[derive(Default)]
struct Queued {
    /// Jobs submitted and not yet done.
    files: usize,
    /// Their bytes of data.
    bytes: usize,
}

struct State {
    queued: Mutex<Queued>,
    /// Jobs queued with each worker and not yet done, by worker.
    pending: Vec<AtomicUsize>,
    /// Signalled whenever a job is done.
    done: Condvar,
    /// The first failure; later jobs are skipped.
    error: Mutex<Option<Error>>,
    stop: AtomicBool,
}

/// Worker threads that create the files given to them. Each directory is
/// owned by one worker: creating a file holds its directory's lock for the
/// whole (slow) inode allocation, so two workers in one directory would
/// take turns instead of running side by side. A directory goes to the
/// worker with the fewest files queued when its first file comes (see
/// [`Owners`]), so the queues stay even and no worker is left with a
/// backlog while the others wait at the end. Files of one directory are
/// created in the order submitted; files of different directories in any
/// order. The caller submits only files whose path nothing else in flight
/// touches, and [`FilePool::wait`]s for all of them before it changes such
/// a path.
pub(crate) struct FilePool {
    /// Each worker's queue, by worker.
    queues: Vec<Sender<FileJob>>,
    workers: Vec<JoinHandle<()>>,
    state: Arc<State>,
    owners: Owners,
}

/// Which worker owns each directory a file was submitted in.
#[derive(Default)]
struct Owners {
    /// By directory path.
    by_dir: FxHashMap<OsString, usize>,
    /// The directory of the last file and its owner: a layer's files come
    /// directory by directory.
    last: Option<(OsString, usize)>,
}

impl Owners {
    /// The owner of `dir`: the one it has, or for a new directory the
    /// worker with the fewest files `pending` (the first of equals; the
    /// counts are read only then).
    fn owner(&mut self, dir: &OsStr, pending: &[AtomicUsize]) -> usize {
        if let Some((last, owner)) = &self.last {
            if last.as_os_str() == dir {
                return *owner;
            }
        }
        let owner = match self.by_dir.get(dir) {
            Some(&owner) => owner,
            None => {
                let least = pending
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, jobs)| jobs.load(Ordering::Relaxed))
                    .map_or(0, |(worker, _)| worker);
                self.by_dir.insert(dir.to_os_string(), least);
                least
            }
        };
        self.last = Some((dir.to_os_string(), owner));
        owner
    }
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
        let state = Arc::new(State {
            queued: Mutex::default(),
            pending: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
            done: Condvar::new(),
            error: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let (mut queues, mut workers) = (Vec::new(), Vec::new());
        for index in 0..threads {
            let (queue, receiver) = channel::<FileJob>();
            let state_of_worker = Arc::clone(&state);
            let spawned = std::thread::Builder::new()
                .name("kiln-unpack-files".to_owned())
                .spawn(move || work(&receiver, &state_of_worker, index));
            match spawned {
                Ok(worker) => {
                    queues.push(queue);
                    workers.push(worker);
                }
                Err(_) if !workers.is_empty() => break,
                Err(_) => return None,
            }
        }
        Some(FilePool {
            queues,
            workers,
            state,
            owners: Owners::default(),
        })
    }

    /// Queues `job` with the worker that owns its directory (waiting while
    /// the queues are full); fails with a worker's error once one failed.
    pub fn submit(&mut self, job: FileJob) -> Result<()> {
        self.failure()?;
        let bytes = job.data.len();
        self.reserve(bytes);
        // One count per worker that started.
        let pending = (self.state.pending.get(..self.queues.len())).unwrap_or_default();
        let dir = job.path.parent().unwrap_or(Path::new("")).as_os_str();
        let owner = self.owners.owner(dir, pending);
        if let Some(jobs) = self.state.pending.get(owner) {
            jobs.fetch_add(1, Ordering::Relaxed);
        }
        match self.queues[owner].send(job) {
            Ok(()) => Ok(()),
            Err(_) => {
                finished_one(&self.state, owner, bytes);
                self.failure()?;
                Err(Error::Io {
                    action: "hand a file to",
                    path: PathBuf::from("the unpacking threads"),
                    source: io::Error::other("they stopped"),
                })
            }
        }
    }

    /// Counts a job of `bytes` as queued, once the queues have room for it
    /// (a job larger than the whole budget waits for empty queues).
    fn reserve(&self, bytes: usize) {
        let Ok(mut queued) = self.state.queued.lock() else {
            return;
        };
        while queued.files > 0
            && (queued.files >= QUEUED_FILES || queued.bytes + bytes > QUEUED_BYTES)
        {
            match self.state.done.wait(queued) {
                Ok(guard) => queued = guard,
                Err(_) => return,
            }
        }
        queued.files += 1;
        queued.bytes += bytes;
    }

    /// Waits until every submitted file is written; the first failure, if any.
    pub fn wait(&mut self) -> Result<()> {
        if let Ok(mut queued) = self.state.queued.lock() {
            while queued.files > 0 {
                match self.state.done.wait(queued) {
                    Ok(guard) => queued = guard,
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
}

/// Counts one job of `worker` (of `bytes`) as done.
fn finished_one(state: &State, worker: usize, bytes: usize) {
    if let Some(jobs) = state.pending.get(worker) {
        jobs.fetch_sub(1, Ordering::Relaxed);
    }
    if let Ok(mut queued) = state.queued.lock() {
        queued.files = queued.files.saturating_sub(1);
        queued.bytes = queued.bytes.saturating_sub(bytes);
    }
    state.done.notify_all();
}

impl Drop for FilePool {
    fn drop(&mut self) {
        // Whatever is still queued is not wanted (the unpack failed or is
        // done): skip it, and let the workers see the end of their queues.
        self.state.stop.store(true, Ordering::SeqCst);
        self.queues.clear();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn work(receiver: &Receiver<FileJob>, state: &State, worker: usize) {
    for job in receiver {
        if !state.stop.load(Ordering::SeqCst) {
            if let Err(e) = write_job(&job) {
                state.stop.store(true, Ordering::SeqCst);
                if let Ok(mut error) = state.error.lock() {
                    error.get_or_insert(e);
                }
            }
        }
        finished_one(state, worker, job.data.len());
    }
}

fn write_job(job: &FileJob) -> Result<()> {
    let (mut file, created) = job
        .meta
        .create(&job.path, job.create)
        .map_err(io_err("create", &job.path))?;
    file.write_all(&job.data)
        .map_err(io_err("write", &job.path))?;
    job.meta.apply(&file, &job.path, created)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn a_new_directory_goes_to_the_least_busy_worker_and_stays_there() {
        let mut owners = Owners::default();
        let dir = |name: &str| OsString::from(format!("/s/{name}"));
        let counts = |jobs: &[usize]| -> Vec<AtomicUsize> {
            jobs.iter().map(|&n| AtomicUsize::new(n)).collect()
        };
        assert_eq!(
            owners.owner(&dir("a"), &counts(&[0, 0])),
            0,
            "the first of equals"
        );
        // Its files stay with it however busy it gets.
        assert_eq!(owners.owner(&dir("a"), &counts(&[300, 0])), 0);
        assert_eq!(owners.owner(&dir("b"), &counts(&[300, 0])), 1);
        assert_eq!(owners.owner(&dir("b"), &counts(&[0, 500])), 1);
        assert_eq!(owners.owner(&dir("c"), &counts(&[2, 500])), 0);
        assert_eq!(owners.owner(&dir("d"), &counts(&[3, 1, 2])), 1);
        // A directory met again later keeps its first owner.
        assert_eq!(owners.owner(&dir("a"), &counts(&[900, 0])), 0);
        assert_eq!(owners.owner(&dir("b"), &counts(&[0, 900])), 1);
    }

    #[test]
    fn every_file_submitted_is_written_with_its_metadata_before_wait_returns() {
        let dir = tempfile::tempdir().unwrap();
        let Some(mut pool) = FilePool::start() else {
            return; // one CPU: the unpacker writes files itself
        };
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        for d in 0..20 {
            std::fs::create_dir(dir.path().join(format!("d{d}"))).unwrap();
        }
        // More bytes than the queues hold, so submitting waits for room.
        let big = QUEUED_BYTES / 8;
        for n in 0..400 {
            let size = if n % 50 == 0 { big } else { n };
            pool.submit(FileJob {
                path: dir.path().join(format!("d{}/f{n}", n % 20)),
                data: vec![n as u8; size],
                meta: FileMeta {
                    mode: 0o640,
                    uid,
                    gid,
                    mtime: 1_000_000 + n as i64,
                    xattrs: Vec::new(),
                },
                create: CreateAs::under(dir.path()),
            })
            .unwrap();
        }
        pool.wait().unwrap();
        for n in 0..400 {
            let path = dir.path().join(format!("d{}/f{n}", n % 20));
            let meta = std::fs::metadata(&path).unwrap();
            let size = if n % 50 == 0 { big } else { n };
            assert_eq!(meta.len(), size as u64, "{}", path.display());
            assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
            assert_eq!(meta.mtime(), 1_000_000 + n as i64);
        }
    }

    #[test]
    fn a_failed_file_is_reported_and_later_ones_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let Some(mut pool) = FilePool::start() else {
            return;
        };
        let meta = || FileMeta {
            mode: 0o644,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mtime: 0,
            xattrs: Vec::new(),
        };
        // Its directory does not exist.
        let missing = dir.path().join("no-such-dir/f");
        pool.submit(FileJob {
            path: missing.clone(),
            data: Vec::new(),
            meta: meta(),
            create: CreateAs::default(),
        })
        .unwrap();
        let error = pool.wait().unwrap_err().to_string();
        assert!(error.contains("no-such-dir"), "{error}");
        let later = dir.path().join("later");
        let _ = pool.submit(FileJob {
            path: later.clone(),
            data: Vec::new(),
            meta: meta(),
            create: CreateAs::default(),
        });
        let _ = pool.wait();
        assert!(!later.exists());
    }
}
