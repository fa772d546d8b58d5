//! Containers' state in the store (`kiln run`): one directory per container,
//! `kiln/containers/<id>/`, holding
//!
//! - `config.json`: the [`ContainerRecord`] (id, name, image, and the run
//!   options as the binary resolved them, opaque here), written once;
//! - `state.json`: the [`ContainerState`] (created, running with the pid of
//!   the kiln process that runs it, exited with its code), replaced as it
//!   changes;
//! - `running.lock`: held (flock, exclusive) by the process running the
//!   container for as long as it runs, so "is it running" and "wait for it"
//!   never trust a pid that may have been reused: a holder that died has
//!   released it;
//! - whatever else the runner keeps there (the writable layer, logs,
//!   anonymous volumes), removed with the directory.
//!
//! Both JSON files are written atomically (temporary file in the store,
//! fsync, rename), so a reader sees the old or the new content. Names are
//! unique: [`Containers::create`] checks and creates under
//! `kiln/containers/.lock`.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, FileLock};
use crate::store::Store;

/// What a container is, as `kiln run` created it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerRecord {
    /// 64 lowercase hex digits; the first 12 are its short id.
    pub id: String,
    /// Its name (`--name`, else one kiln made up), unique in the store.
    pub name: String,
    /// The image as the user named it.
    pub image: String,
    /// The image's id (its manifest digest).
    pub image_id: String,
    /// Seconds since 1970.
    pub created: u64,
    /// The run options, as the binary resolved them (opaque to the store).
    pub spec: serde_json::Value,
}

impl ContainerRecord {
    /// The first 12 hex digits of the id, as `kiln ps` shows it.
    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }
}

/// A container's lifecycle state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Made, not started yet.
    Created,
    /// A kiln process runs it.
    Running,
    /// It ran and stopped (or could not start).
    Exited,
}

/// What `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerState {
    /// Where in its life it is.
    pub status: Status,
    /// The kiln process running the container (for signals); `None` unless running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Seconds since 1970.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
    /// When it stopped, seconds since 1970.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<u64>,
    /// Its exit code, once it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why the container could not run, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ContainerState {
    fn created() -> Self {
        ContainerState {
            status: Status::Created,
            pid: None,
            started: None,
            finished: None,
            exit_code: None,
            error: None,
        }
    }
}

/// The exit code a container gets when the process running it died
/// without recording one (killed): SIGKILL's, as Docker reports it.
pub const KILLED_EXIT_CODE: i32 = 137;

/// The store's containers.
#[derive(Debug, Clone)]
pub struct Containers {
    dir: PathBuf,
    tmp: PathBuf,
}

/// Held by the process that runs a container, for as long as it runs.
#[derive(Debug)]
pub struct RunningLock {
    _file: File,
}

impl Containers {
    /// The containers of `store` (the directory is created on first use).
    pub fn new(store: &Store) -> Result<Containers> {
        let dir = fsutil::ensure_dir(&store.root().join("kiln/containers"))?;
        Ok(Containers {
            dir,
            tmp: store.tmp_dir(),
        })
    }

    /// The directory of container `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Creates a container with a fresh id; `name` must not be taken
    /// (`None`: a generated one).
    pub fn create(
        &self,
        name: Option<&str>,
        image: &str,
        image_id: &str,
        spec: serde_json::Value,
    ) -> Result<ContainerRecord> {
        let _lock = FileLock::exclusive(&self.dir.join(".lock"))?;
        let existing = self.list()?;
        let id = random_id()?;
        let name = match name {
            Some(name) => {
                validate_name(name)?;
                if let Some(other) = existing.iter().find(|c| c.name == name) {
                    return Err(Error::ContainerNameInUse {
                        name: name.to_string(),
                        id: other.id.clone(),
                    });
                }
                name.to_string()
            }
            None => generated_name(&id, &existing),
        };
        let record = ContainerRecord {
            id: id.clone(),
            name,
            image: image.to_string(),
            image_id: image_id.to_string(),
            created: now(),
            spec,
        };
        let dir = self.dir(&id);
        fs::create_dir(&dir).at(&dir)?;
        self.write_state(&id, &ContainerState::created())?;
        let bytes = serde_json::to_vec_pretty(&record)
            .map_err(|e| Error::invalid("container config", e))?;
        fsutil::write_atomic(&self.tmp, &dir.join("config.json"), &bytes)?;
        Ok(record)
    }

    /// Every container with a readable config, oldest first.
    pub fn list(&self) -> Result<Vec<ContainerRecord>> {
        let mut records = Vec::new();
        for entry in fs::read_dir(&self.dir).at(&self.dir)? {
            let entry = entry.at(&self.dir)?;
            let name = entry.file_name();
            let Some(id) = name.to_str().filter(|n| is_id(n)) else {
                continue;
            };
            if let Ok(record) = self.record(id) {
                records.push(record);
            }
        }
        records.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(records)
    }

    /// The containers that were made from image `image_id`.
    pub fn using_image(&self, image_id: &str) -> Result<Vec<ContainerRecord>> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|c| c.image_id == image_id)
            .collect())
    }

    /// The container named `name_or_id`: its name, its id, or a prefix of
    /// its id that no other container shares.
    pub fn find(&self, name_or_id: &str) -> Result<ContainerRecord> {
        let all = self.list()?;
        if let Some(found) = all
            .iter()
            .find(|c| c.name == name_or_id || c.id == name_or_id)
        {
            return Ok(found.clone());
        }
        let mut matches = all.iter().filter(|c| {
            !name_or_id.is_empty()
                && name_or_id.bytes().all(|b| b.is_ascii_hexdigit())
                && c.id.starts_with(name_or_id)
        });
        match (matches.next(), matches.next()) {
            (Some(found), None) => Ok(found.clone()),
            (Some(_), Some(_)) => Err(Error::AmbiguousContainer(name_or_id.to_string())),
            _ => Err(Error::NoSuchContainer(name_or_id.to_string())),
        }
    }

    fn record(&self, id: &str) -> Result<ContainerRecord> {
        let path = self.dir(id).join("config.json");
        let bytes = fs::read(&path).at(&path)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::invalid(path.display().to_string(), e))
    }

    /// The container's state. A container recorded as running whose runner
    /// no longer holds its lock was killed: it is reported exited with
    /// [`KILLED_EXIT_CODE`].
    pub fn state(&self, id: &str) -> Result<ContainerState> {
        let path = self.dir(id).join("state.json");
        let mut text = String::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .at(&path)?;
        let mut state: ContainerState = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(path.display().to_string(), e))?;
        if state.status == Status::Running && !self.is_running(id)? {
            state.status = Status::Exited;
            state.pid = None;
            state.exit_code.get_or_insert(KILLED_EXIT_CODE);
        }
        Ok(state)
    }

    /// Replaces the container's state (atomically).
    pub fn write_state(&self, id: &str, state: &ContainerState) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(state).map_err(|e| Error::invalid("container state", e))?;
        fsutil::write_atomic(&self.tmp, &self.dir(id).join("state.json"), &bytes)
    }

    /// Takes the running lock of container `id`; an error if another
    /// process runs it.
    pub fn lock_running(&self, id: &str) -> Result<RunningLock> {
        let path = self.dir(id).join("running.lock");
        let file = fsutil::open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(RunningLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(Error::ContainerRunning(id.to_string())),
            Err(fs::TryLockError::Error(e)) => Err(Error::io(path, e)),
        }
    }

    /// Whether a process holds the running lock of container `id`.
    pub fn is_running(&self, id: &str) -> Result<bool> {
        let path = self.dir(id).join("running.lock");
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io(path, e)),
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(false),
            Err(fs::TryLockError::WouldBlock) => Ok(true),
            Err(fs::TryLockError::Error(e)) => Err(Error::io(path, e)),
        }
    }

    /// Blocks until no process runs container `id`.
    pub fn wait_stopped(&self, id: &str) -> Result<()> {
        let path = self.dir(id).join("running.lock");
        match File::open(&path) {
            Ok(file) => file.lock_shared().at(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Removes container `id` and everything in its directory; an error if
    /// it runs.
    pub fn remove(&self, id: &str) -> Result<()> {
        // Held while removing, so that nothing starts it meanwhile.
        let running = self.lock_running(id)?;
        self.remove_running(id, running)
    }

    /// Removes container `id`, whose running lock the caller holds (`kiln
    /// run --rm` once its process has ended).
    pub fn remove_running(&self, id: &str, running: RunningLock) -> Result<()> {
        let dir = self.dir(id);
        // The config goes first: a removal cut short leaves no half container
        // in `list`.
        let config = dir.join("config.json");
        match fs::remove_file(&config) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(config, e)),
            _ => {}
        }
        fs::remove_dir_all(&dir).at(&dir)?;
        drop(running);
        Ok(())
    }
}

fn is_id(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Docker's rule for names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
fn validate_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::BadName {
            name: name.to_string(),
            reason:
                "a container name is a letter or digit and then letters, digits, '_', '.' or '-'"
                    .into(),
        })
    }
}

fn random_id() -> Result<String> {
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .at(Path::new("/dev/urandom"))?;
    Ok(hex::encode(bytes))
}

const ADJECTIVES: &[&str] = &[
    "amber", "bold", "brisk", "calm", "clever", "eager", "fond", "gentle", "happy", "keen",
    "lucid", "merry", "nimble", "proud", "quiet", "rapid", "sharp", "steady", "vivid", "witty",
];
const NOUNS: &[&str] = &[
    "anvil", "bellows", "brick", "cinder", "clay", "crucible", "ember", "flame", "forge", "glaze",
    "hearth", "ingot", "kettle", "lantern", "mould", "oven", "slag", "smelter", "tongs", "wick",
];

/// `adjective_noun`, as Docker names containers, made unique with the id's
/// digits when taken.
fn generated_name(id: &str, existing: &[ContainerRecord]) -> String {
    let byte = |i: usize| usize::from_str_radix(&id[i * 2..i * 2 + 2], 16).unwrap_or(0);
    let base = format!(
        "{}_{}",
        ADJECTIVES[byte(0) % ADJECTIVES.len()],
        NOUNS[byte(1) % NOUNS.len()]
    );
    if existing.iter().all(|c| c.name != base) {
        return base;
    }
    format!("{base}_{}", &id[..8])
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The image ids of the containers under `dir` (the store's
/// `kiln/containers`), for prune: an unreadable record names nothing.
pub(crate) fn image_ids(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name();
            is_id(name.to_str()?).then_some(())?;
            let bytes = fs::read(entry.path().join("config.json")).ok()?;
            let record: ContainerRecord = serde_json::from_slice(&bytes).ok()?;
            Some(record.image_id)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn containers() -> (tempfile::TempDir, Store, Containers) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let containers = Containers::new(&store).unwrap();
        (dir, store, containers)
    }

    #[test]
    fn names_are_unique_and_ids_resolve_by_prefix() {
        let (_dir, _store, c) = containers();
        let a = c
            .create(Some("web"), "base", "sha256:1", serde_json::json!({"x": 1}))
            .unwrap();
        assert!(matches!(
            c.create(Some("web"), "base", "sha256:1", serde_json::Value::Null),
            Err(Error::ContainerNameInUse { .. })
        ));
        assert!(matches!(
            c.create(Some("-bad"), "base", "sha256:1", serde_json::Value::Null),
            Err(Error::BadName { .. })
        ));
        let b = c
            .create(None, "base", "sha256:1", serde_json::Value::Null)
            .unwrap();
        assert_ne!(a.name, b.name);
        assert_eq!(c.find("web").unwrap(), a);
        assert_eq!(c.find(a.short_id()).unwrap(), a);
        assert_eq!(c.find(&b.id).unwrap(), b);
        assert!(matches!(c.find("nope"), Err(Error::NoSuchContainer(_))));
        assert_eq!(c.list().unwrap().len(), 2);
        assert_eq!(c.state(&a.id).unwrap().status, Status::Created);
    }

    #[test]
    fn a_runner_that_died_leaves_an_exited_container() {
        let (_dir, _store, c) = containers();
        let a = c
            .create(None, "base", "sha256:1", serde_json::Value::Null)
            .unwrap();
        let running = ContainerState {
            status: Status::Running,
            pid: Some(1),
            ..ContainerState::created()
        };
        c.write_state(&a.id, &running).unwrap();
        let lock = c.lock_running(&a.id).unwrap();
        assert!(c.is_running(&a.id).unwrap());
        assert_eq!(c.state(&a.id).unwrap().status, Status::Running);
        assert!(matches!(c.remove(&a.id), Err(Error::ContainerRunning(_))));
        drop(lock);
        let state = c.state(&a.id).unwrap();
        assert_eq!(state.status, Status::Exited);
        assert_eq!(state.exit_code, Some(KILLED_EXIT_CODE));
        c.wait_stopped(&a.id).unwrap();
        c.remove(&a.id).unwrap();
        assert!(!c.dir(&a.id).exists());
        assert!(c.list().unwrap().is_empty());
    }
}
