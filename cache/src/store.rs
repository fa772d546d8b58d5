//! The content-addressed store: blobs, the OCI image layout and its names,
//! cache records, and prune and fsck, with their concurrency contract (see
//! [`Store`]).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Descriptor, DescriptorBuilder, Digest, ImageConfiguration, ImageIndex, ImageIndexBuilder,
    ImageManifest, ImageManifestBuilder, MediaType, PlatformBuilder,
};
use sha2::{Digest as _, Sha256};

use crate::compression::{self, Compression};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, FileLock, HashingWriter};
use crate::image::{normalize_name, NamedImage, NewImage, StoredImage};
use crate::index::StoredRef;
use crate::layer::{LayerBlob, LayerWriter};

/// The annotation that names an image in an OCI layout's index.json; skopeo
/// (`oci:DIR:NAME`) and umoci (`--image DIR:NAME`) look tags up by it.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Where blobs live and the guarantees every implementation gives.
///
/// - **Verified.** A blob is only ever published under the sha256 of its
///   content: puts compute the digest while writing, and a put with an
///   expected digest fails (publishing nothing) when the content differs.
/// - **Atomic.** A blob appears whole or not at all: it is written to a
///   temporary file, fsynced and renamed into place. A crash leaves at most a
///   temporary file, never a partial blob.
/// - **Idempotent.** Putting content that is already stored succeeds and
///   changes nothing; two processes putting the same blob at once both succeed.
/// - **Concurrent.** Any number of threads and processes may put and read at
///   once. Blobs are only ever deleted by `prune`, which waits until no other
///   process has the store open.
pub trait ContentStore {
    /// Stores `bytes` and returns their digest.
    fn put_blob(&self, bytes: &[u8]) -> Result<Digest>;
    /// Streams a blob in and checks it against `expected` before publishing
    /// it. Returns its size.
    fn put_blob_verified(&self, reader: &mut dyn Read, expected: &Digest) -> Result<u64>;
    /// Whether a blob is stored.
    fn has_blob(&self, digest: &Digest) -> bool;
    /// Opens a blob for streaming (not re-verified; `fsck` does that).
    fn open_blob(&self, digest: &Digest) -> Result<File>;
    /// Reads a whole blob and verifies it against its digest (for manifests
    /// and configs, which are small).
    fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>>;
}

/// What a cache record keeps: the blobs it needs (kept alive by `prune`; a
/// manifest descriptor keeps its config and layers too) and an opaque payload
/// for the solver.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CacheRecord {
    /// The blobs the record needs.
    pub blobs: Vec<Descriptor>,
    /// The solver's data, kept as given.
    pub payload: serde_json::Value,
}

/// What `prune` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Blobs nothing in the store needed any more.
    pub blobs_removed: usize,
    /// Unpacked layers no kept image uses (they are unpacked again on demand).
    pub snapshots_removed: usize,
    /// Bytes the removed blobs, snapshots and temporary files took.
    pub bytes_freed: u64,
    /// Temporary files interrupted writes left.
    pub temp_files_removed: usize,
}

/// A problem `fsck` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsckProblem {
    /// The path the problem is at.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

/// What `fsck` checked and found.
#[derive(Debug, Clone, Default)]
pub struct FsckReport {
    /// Blobs whose content was hashed.
    pub blobs_checked: usize,
    /// Their bytes.
    pub bytes_checked: u64,
    /// Everything found wrong.
    pub problems: Vec<FsckProblem>,
    /// Corrupt blobs removed because `repair` was asked for.
    pub removed: Vec<Digest>,
    /// Temporary files left by interrupted writes (harmless; `prune` removes them).
    pub temp_files: usize,
}

impl FsckReport {
    /// Whether the store is undamaged.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// kiln's store: an OCI image layout (`oci-layout`, `index.json`,
/// `blobs/sha256/`) with kiln's own data beside it in `kiln/` (cache records,
/// snapshots, cache mounts, temporary files, locks).
///
/// Open one `Store` per process and share it by reference (it is `Sync`): the
/// handle holds a shared lock that `prune` turns into an exclusive one.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    gc_lock: File,
}

impl Store {
    /// Opens the store at `root`, creating it on first use. A relative root
    /// is made absolute first: the paths the store hands out (snapshots,
    /// mount sources) must stay valid in a sandbox that changed directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        let root = std::path::absolute(&root).at(&root)?;
        let kiln = root.join("kiln");
        for dir in [
            root.join("blobs/sha256"),
            kiln.join("tmp"),
            kiln.join("cache"),
            kiln.join("snapshots"),
            kiln.join("cache-mounts"),
            kiln.join("state"),
            kiln.join("referrers"),
        ] {
            fsutil::ensure_dir(&dir)?;
        }
        let gc_lock = fsutil::open_lock_file(&kiln.join("gc.lock"))?;
        lock_store(&gc_lock, &kiln)?;
        let store = Store { root, gc_lock };
        let _index_lock = store.lock_index()?;
        let layout = store.root.join("oci-layout");
        if !layout.exists() {
            fsutil::write_atomic(
                &store.tmp_dir(),
                &layout,
                br#"{"imageLayoutVersion":"1.0.0"}"#,
            )?;
        }
        if !store.index_path().exists() {
            store.write_index(&empty_index()?)?;
        }
        Ok(store)
    }

    /// The store's root directory (an OCI image layout).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Unpacked layers, one directory per chain id (managed by the executor).
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("kiln/snapshots")
    }

    /// Persistent `RUN --mount=type=cache` directories.
    pub fn cache_mounts_dir(&self) -> PathBuf {
        self.root.join("kiln/cache-mounts")
    }

    /// Temporary files and directories on the store's filesystem, so renames
    /// into the store are atomic. `prune` empties it.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("kiln/tmp")
    }

    /// A directory for one component's own state (created on demand).
    pub fn state_dir(&self, name: &str) -> Result<PathBuf> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        {
            return Err(Error::invalid(
                "state directory name",
                format!("{name:?} must be letters, digits, - and _"),
            ));
        }
        fsutil::ensure_dir(&self.root.join("kiln/state").join(name))
    }

    /// The path of a blob (which may not exist).
    pub fn blob_path(&self, digest: &Digest) -> Result<PathBuf> {
        if digest.algorithm().as_ref() != "sha256" {
            return Err(Error::BadDigest(digest.to_string()));
        }
        Ok(self.blobs_dir().join(digest.digest()))
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    fn lock_index(&self) -> Result<FileLock> {
        FileLock::exclusive(&self.root.join("kiln/index.lock"))
    }

    /// Starts writing a layer blob; see [`LayerWriter`].
    pub fn layer_writer(&self, compression: Compression) -> Result<LayerWriter> {
        LayerWriter::new(self.tmp_dir(), self.blobs_dir(), compression)
    }

    /// The uncompressed tar stream of a stored layer.
    pub fn open_layer(&self, descriptor: &Descriptor) -> Result<Box<dyn Read + Send>> {
        let compression = Compression::of_layer_media_type(descriptor.media_type())?;
        let file = self.open_blob(descriptor.digest())?;
        compression::decompress_layer(compression, file)
    }

    /// Writes an image's config and manifest (its layers must be stored
    /// already) and returns it. Writing the same image twice gives the same id.
    pub fn write_image(&self, image: NewImage) -> Result<StoredImage> {
        for layer in &image.layers {
            if !self.has_blob(layer.descriptor.digest()) {
                return Err(Error::MissingBlob(layer.descriptor.digest().to_string()));
            }
        }
        let mut config = serde_json::Map::new();
        config.insert(
            "architecture".into(),
            image.platform.architecture.clone().into(),
        );
        config.insert("os".into(), image.platform.os.clone().into());
        if let Some(variant) = &image.platform.variant {
            config.insert("variant".into(), variant.clone().into());
        }
        if let Some(created) = &image.created {
            config.insert("created".into(), created.clone().into());
        }
        if let Some(author) = &image.author {
            config.insert("author".into(), author.clone().into());
        }
        let inner = match image.config {
            serde_json::Value::Null => serde_json::Value::Object(Default::default()),
            value @ serde_json::Value::Object(_) => value,
            other => {
                return Err(Error::invalid(
                    "image config",
                    format!("expected a JSON object, got {other}"),
                ))
            }
        };
        config.insert("config".into(), inner);
        config.insert(
            "rootfs".into(),
            serde_json::json!({
                "type": "layers",
                "diff_ids": image.layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
            }),
        );
        config.insert(
            "history".into(),
            serde_json::to_value(&image.history).map_err(|e| Error::invalid("image history", e))?,
        );
        let raw_config = serde_json::Value::Object(config);
        let config_bytes =
            serde_json::to_vec(&raw_config).map_err(|e| Error::invalid("image config", e))?;
        self.write_image_with_config(&config_bytes, image.layers)
    }

    /// Writes an image whose config blob is given byte for byte (a config
    /// loaded from an archive keeps its digest). The config's
    /// `rootfs.diff_ids` must be the layers' diff_ids.
    pub fn write_image_with_config(
        &self,
        config_bytes: &[u8],
        layers: Vec<LayerBlob>,
    ) -> Result<StoredImage> {
        for layer in &layers {
            if !self.has_blob(layer.descriptor.digest()) {
                return Err(Error::MissingBlob(layer.descriptor.digest().to_string()));
            }
        }
        let raw_config: serde_json::Value =
            serde_json::from_slice(config_bytes).map_err(|e| Error::invalid("image config", e))?;
        let parsed = ImageConfiguration::from_reader(config_bytes)
            .map_err(|e| Error::invalid("image config", e))?;
        let expected: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
        if *parsed.rootfs().diff_ids() != expected {
            return Err(Error::invalid(
                "image config",
                format!(
                    "its rootfs.diff_ids {:?} are not the layers' diff_ids {:?}",
                    parsed.rootfs().diff_ids(),
                    expected
                ),
            ));
        }
        let config_digest = self.put_blob(config_bytes)?;
        let config_descriptor = Descriptor::new(
            MediaType::ImageConfig,
            config_bytes.len() as u64,
            config_digest,
        );
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config_descriptor)
            .layers(
                layers
                    .iter()
                    .map(|l| l.descriptor.clone())
                    .collect::<Vec<_>>(),
            )
            .build()
            .map_err(|e| Error::invalid("image manifest", e))?;
        let manifest_bytes =
            serde_json::to_vec(&manifest).map_err(|e| Error::invalid("image manifest", e))?;
        let manifest_digest = self.put_blob(&manifest_bytes)?;
        let manifest_descriptor = manifest_descriptor(
            &parsed,
            manifest_bytes.len(),
            manifest_digest,
            "manifest descriptor",
        )?;
        Ok(StoredImage {
            manifest_descriptor,
            manifest,
            config: parsed,
            raw_config,
        })
    }

    /// Reads the image whose manifest has this digest.
    pub fn read_image(&self, manifest_digest: &Digest) -> Result<StoredImage> {
        let bytes = self.read_blob(manifest_digest)?;
        let what = || format!("manifest {manifest_digest}");
        let manifest =
            ImageManifest::from_reader(&bytes[..]).map_err(|e| Error::invalid(what(), e))?;
        let config_bytes = self.read_blob(manifest.config().digest())?;
        let raw_config: serde_json::Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| Error::invalid(format!("config {}", manifest.config().digest()), e))?;
        let config = ImageConfiguration::from_reader(&config_bytes[..])
            .map_err(|e| Error::invalid(format!("config {}", manifest.config().digest()), e))?;
        let manifest_descriptor =
            manifest_descriptor(&config, bytes.len(), manifest_digest.clone(), &what())?;
        Ok(StoredImage {
            manifest_descriptor,
            manifest,
            config,
            raw_config,
        })
    }

    /// Points `name` (normalised to `NAME:TAG`) at `image`, replacing what it
    /// named before. Returns the normalised name.
    pub fn tag(&self, name: &str, image: &StoredImage) -> Result<String> {
        self.tag_descriptor(name, &image.manifest_descriptor)
    }

    /// Points `name` at a stored manifest or index given by its descriptor
    /// (whose annotations the index.json entry keeps, beside the name).
    /// Returns the normalised name.
    pub fn tag_descriptor(&self, name: &str, descriptor: &Descriptor) -> Result<String> {
        let name = normalize_name(name)?;
        if !self.has_blob(descriptor.digest()) {
            return Err(Error::MissingBlob(descriptor.digest().to_string()));
        }
        let _lock = self.lock_index()?;
        let mut index = self.read_index()?;
        let mut entries: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| ref_name(d) != Some(name.as_str()))
            .cloned()
            .collect();
        let mut descriptor = descriptor.clone();
        let mut annotations = descriptor.annotations().clone().unwrap_or_default();
        annotations.insert(REF_NAME.to_owned(), name.clone());
        descriptor.set_annotations(Some(annotations));
        entries.push(descriptor);
        entries.sort_by(|a, b| ref_name(a).cmp(&ref_name(b)));
        index.set_manifests(entries);
        self.write_index(&index)?;
        Ok(name)
    }

    /// Removes a name. Returns whether it existed. The image's blobs stay
    /// until `prune` finds nothing referencing them.
    pub fn untag(&self, name: &str) -> Result<bool> {
        let name = normalize_name(name)?;
        let _lock = self.lock_index()?;
        let mut index = self.read_index()?;
        let before = index.manifests().len();
        let entries: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| ref_name(d) != Some(name.as_str()))
            .cloned()
            .collect();
        let removed = entries.len() != before;
        if removed {
            index.set_manifests(entries);
            self.write_index(&index)?;
        }
        Ok(removed)
    }

    /// The names in the store and the manifest each points at, sorted by name.
    pub fn names(&self) -> Result<Vec<(String, Digest)>> {
        let index = self.read_index()?;
        Ok(index
            .manifests()
            .iter()
            .filter_map(|d| ref_name(d).map(|n| (n.to_owned(), d.digest().clone())))
            .collect())
    }

    /// The names in the store with the descriptor of what each points at
    /// (an image manifest or an index), sorted by name.
    pub fn entries(&self) -> Result<Vec<(String, Descriptor)>> {
        let index = self.read_index()?;
        Ok(index
            .manifests()
            .iter()
            .filter_map(|d| ref_name(d).map(|n| (n.to_owned(), d.clone())))
            .collect())
    }

    /// Every named image, sorted by name: a name of an index gives one
    /// entry per platform.
    pub fn list(&self) -> Result<Vec<NamedImage>> {
        let mut list = Vec::new();
        for (name, digest) in self.names()? {
            match self.read_ref(&digest)? {
                StoredRef::Image(image) => list.push(NamedImage {
                    name,
                    image,
                    index: None,
                }),
                StoredRef::Index(index) => {
                    for (entry, _) in index.images() {
                        list.push(NamedImage {
                            name: name.clone(),
                            image: self.read_image(entry.digest())?,
                            index: Some(index.id().clone()),
                        });
                    }
                }
            }
        }
        Ok(list)
    }

    /// Finds an image by name (`NAME[:TAG]`), by id (`sha256:<hex>`), or by a
    /// unique prefix of at least 4 hex digits of a named image's id. A name
    /// of a multi-platform index gives its image for this machine's
    /// platform, or its only image; [`Store::resolve_ref`] gives the index.
    pub fn resolve(&self, name_or_id: &str) -> Result<Option<StoredImage>> {
        self.resolve_for(name_or_id, None)
    }

    /// [`Store::resolve`] for `platform`: a name of a multi-platform index
    /// gives its image for that platform (an error names the platforms it
    /// has when there is none). `None` is this machine's platform, as
    /// `resolve` takes it. A single image is returned whatever its platform:
    /// the caller compares.
    pub fn resolve_for(
        &self,
        name_or_id: &str,
        platform: Option<&crate::Platform>,
    ) -> Result<Option<StoredImage>> {
        match self.resolve_ref(name_or_id)? {
            None => Ok(None),
            Some(StoredRef::Image(image)) => Ok(Some(image)),
            Some(StoredRef::Index(index)) => {
                let host = crate::Platform::host();
                let entry = match (index.manifest_for(platform.unwrap_or(&host)), platform) {
                    (Some(entry), _) => entry,
                    (None, Some(wanted)) => {
                        return Err(Error::NoImageForPlatform {
                            name: name_or_id.to_owned(),
                            wanted: wanted.to_string(),
                            platforms: platform_list(&index.platforms()),
                        })
                    }
                    (None, None) => match index.images().collect::<Vec<_>>().as_slice() {
                        [(entry, _)] => entry,
                        _ => {
                            return Err(Error::MultiPlatform {
                                name: name_or_id.to_owned(),
                                platforms: platform_list(&index.platforms()),
                            })
                        }
                    },
                };
                self.read_image(entry.digest()).map(Some)
            }
        }
    }

    /// Finds what a name or id points at: an image or an index (names and
    /// ids as [`Store::resolve`] takes them).
    pub fn resolve_ref(&self, name_or_id: &str) -> Result<Option<StoredRef>> {
        let names = self.names()?;
        if let Ok(name) = normalize_name(name_or_id) {
            if let Some((_, digest)) = names.iter().find(|(n, _)| *n == name) {
                return self.read_ref(digest).map(Some);
            }
        }
        let hex = name_or_id.strip_prefix("sha256:").unwrap_or(name_or_id);
        if hex.len() < 4
            || !hex
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        {
            return Ok(None);
        }
        if hex.len() == 64 {
            let digest = fsutil::parse_sha256(&format!("sha256:{hex}"))?;
            if self.has_blob(&digest) {
                return self.read_ref(&digest).map(Some);
            }
            return Ok(None);
        }
        let mut matches: Vec<&Digest> = names
            .iter()
            .map(|(_, d)| d)
            .filter(|d| d.digest().starts_with(hex))
            .collect();
        matches.sort_by(|a, b| a.digest().cmp(b.digest()));
        matches.dedup();
        match matches.as_slice() {
            [] => Ok(None),
            [digest] => self.read_ref(digest).map(Some),
            _ => Err(Error::AmbiguousId(name_or_id.to_owned())),
        }
    }

    fn cache_record_path(&self, key: &[u8; 32]) -> PathBuf {
        self.root
            .join("kiln/cache")
            .join(format!("{}.json", hex::encode(key)))
    }

    /// Whether the store holds any cache record at all. Without one every
    /// lookup misses, so a build may find its keys after running the steps
    /// (see the solver's provisional keys).
    pub fn has_cache_records(&self) -> Result<bool> {
        let cache_dir = self.root.join("kiln/cache");
        let entries = match fs::read_dir(&cache_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io(cache_dir, e)),
        };
        for entry in entries {
            let name = entry.at(&cache_dir)?.file_name();
            if name.as_encoded_bytes().ends_with(b".json") {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The cache record under `key`, or `None` when there is none or when a
    /// blob it needs has gone (a miss, not an error).
    pub fn cache_get(&self, key: &[u8; 32]) -> Result<Option<CacheRecord>> {
        let path = self.cache_record_path(key);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        let record: CacheRecord = serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid(path.display().to_string(), e))?;
        if record.blobs.iter().all(|d| self.has_blob(d.digest())) {
            Ok(Some(record))
        } else {
            Ok(None)
        }
    }

    /// Stores a cache record atomically (replacing any record under `key`).
    pub fn cache_put(&self, key: &[u8; 32], record: &CacheRecord) -> Result<()> {
        let bytes = serde_json::to_vec(record).map_err(|e| Error::invalid("cache record", e))?;
        fsutil::write_atomic(&self.tmp_dir(), &self.cache_record_path(key), &bytes)
    }

    fn read_index(&self) -> Result<ImageIndex> {
        let path = self.index_path();
        let bytes = fs::read(&path).at(&path)?;
        ImageIndex::from_reader(&bytes[..])
            .map_err(|e| Error::invalid(path.display().to_string(), e))
    }

    fn write_index(&self, index: &ImageIndex) -> Result<()> {
        let bytes = serde_json::to_vec(index).map_err(|e| Error::invalid("index.json", e))?;
        fsutil::write_atomic(&self.tmp_dir(), &self.index_path(), &bytes)
    }

    /// Removes every blob no name and no cache record references (directly or
    /// through a manifest), every cache record whose blobs are gone, and every
    /// temporary file. Waits until no other kiln process has the store open.
    pub fn prune(&self) -> Result<PruneReport> {
        self.gc_lock.lock().at(self.gc_lock_path())?;
        self.prune_then_share()
    }

    /// Like [`Store::prune`] but returns `None` at once when another process
    /// has the store open.
    pub fn try_prune(&self) -> Result<Option<PruneReport>> {
        match self.gc_lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => return Err(Error::io(self.gc_lock_path(), e)),
        }
        self.prune_then_share().map(Some)
    }

    /// `kiln/gc.lock`: held shared by every open store, exclusive by prune.
    fn gc_lock_path(&self) -> PathBuf {
        self.root.join("kiln/gc.lock")
    }

    /// Prunes under the exclusive gc lock the caller took, then holds the
    /// lock shared again, as an open store does (also when pruning failed).
    fn prune_then_share(&self) -> Result<PruneReport> {
        let result = self.prune_locked();
        let relocked = self.gc_lock.lock_shared().at(self.gc_lock_path());
        let report = result?;
        relocked?;
        Ok(report)
    }

    fn prune_locked(&self) -> Result<PruneReport> {
        let _index_lock = self.lock_index()?;
        let mut report = PruneReport::default();
        let mut live = Marks::default();
        for descriptor in self.read_index()?.manifests() {
            self.mark(descriptor.media_type(), descriptor.digest(), &mut live)?;
        }
        let cache_dir = self.root.join("kiln/cache");
        for entry in fs::read_dir(&cache_dir).at(&cache_dir)? {
            let path = entry.at(&cache_dir)?.path();
            let record: Option<CacheRecord> = fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            match record {
                Some(record) if record.blobs.iter().all(|d| self.has_blob(d.digest())) => {
                    for descriptor in &record.blobs {
                        self.mark(descriptor.media_type(), descriptor.digest(), &mut live)?;
                    }
                }
                // Unreadable or dangling records are misses anyway.
                _ => fs::remove_file(&path).at(&path)?,
            }
        }
        // Attestations and other referrers live as long as their subject.
        self.mark_referrers(&mut live)?;
        // A container's image lives as long as the container (`kiln run`
        // without --rm, then `kiln commit`), named or not.
        for image_id in crate::containers::image_ids(&self.root.join("kiln/containers")) {
            if let Ok(digest) = image_id.parse::<Digest>() {
                if self.has_blob(&digest) {
                    self.mark(&MediaType::ImageManifest, &digest, &mut live)?;
                }
            }
        }
        let blobs = self.blobs_dir();
        for entry in fs::read_dir(&blobs).at(&blobs)? {
            let entry = entry.at(&blobs)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if live.blobs.contains(&name) {
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(entry.path()).at(entry.path())?;
            report.blobs_removed += 1;
            report.bytes_freed += size;
        }
        fsutil::sync_dir(&blobs)?;
        // Snapshots are unpacked layers, named by chain id with `:` as `_`
        // (the executor's naming); those of no kept image, unfinished ones
        // (`.tmp-*`) and exported context trees (`context_*`, which RUN bind
        // mounts share) go. A removed snapshot is made again on demand.
        let snapshots = self.snapshots_dir();
        for entry in fs::read_dir(&snapshots).at(&snapshots)? {
            let entry = entry.at(&snapshots)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let unfinished = name.starts_with(".tmp-");
            let stale = (name.starts_with("sha256_") && !live.snapshots.contains(&name))
                || name.starts_with("context_");
            if !(unfinished || stale) || !entry.file_type().at(entry.path())?.is_dir() {
                continue;
            }
            report.bytes_freed += tree_size(&entry.path());
            // The executor's file of the snapshot in `.boot/` or `.locks/`.
            let remove_private = |dir: &str| -> Result<()> {
                let file = snapshots.join(dir).join(&name);
                if file.exists() {
                    fs::remove_file(&file).at(&file)?;
                }
                Ok(())
            };
            // The boot marker first (a snapshot without one is never used,
            // so a crash halfway leaves nothing trusted), then the snapshot
            // and its lock.
            remove_private(".boot")?;
            remove_dir_all_writable(&entry.path())?;
            report.snapshots_removed += 1;
            remove_private(".locks")?;
        }
        // Large snapshots are filled under `.spread/` (the executor's): what
        // is there is unfinished.
        let spread = snapshots.join(".spread");
        if let Ok(entries) = fs::read_dir(&spread) {
            for entry in entries {
                let path = entry.at(&spread)?.path();
                report.bytes_freed += tree_size(&path);
                remove_dir_all_writable(&path)?;
                report.snapshots_removed += 1;
            }
        }
        let tmp = self.tmp_dir();
        for entry in fs::read_dir(&tmp).at(&tmp)? {
            let path = entry.at(&tmp)?.path();
            let size = fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
            if path.is_dir() {
                remove_dir_all_writable(&path)?;
            } else {
                fs::remove_file(&path).at(&path)?;
            }
            report.temp_files_removed += 1;
            report.bytes_freed += size;
        }
        Ok(report)
    }

    /// Marks a blob live, and what it references when it is a manifest or index.
    pub(crate) fn mark(
        &self,
        media_type: &MediaType,
        digest: &Digest,
        live: &mut Marks,
    ) -> Result<()> {
        if !live.blobs.insert(digest.digest().to_owned()) {
            return Ok(());
        }
        let media = media_type.to_string();
        if matches!(media_type, MediaType::ImageManifest) || media == DOCKER_MANIFEST {
            if let Ok(bytes) = self.read_blob(digest) {
                if let Ok(manifest) = ImageManifest::from_reader(&bytes[..]) {
                    live.blobs
                        .insert(manifest.config().digest().digest().to_owned());
                    for layer in manifest.layers() {
                        live.blobs.insert(layer.digest().digest().to_owned());
                    }
                    if let Ok(image) = self.read_image(digest) {
                        let diff_ids = image.diff_ids().unwrap_or_default();
                        for depth in 1..=diff_ids.len() {
                            if let Some(chain) = chain_id(&diff_ids[..depth]) {
                                live.snapshots.insert(chain.to_string().replace(':', "_"));
                            }
                        }
                    }
                }
            }
        } else if matches!(media_type, MediaType::ImageIndex) || media == DOCKER_MANIFEST_LIST {
            if let Ok(bytes) = self.read_blob(digest) {
                if let Ok(index) = ImageIndex::from_reader(&bytes[..]) {
                    for child in index.manifests() {
                        self.mark(child.media_type(), child.digest(), live)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Re-hashes every blob, checks that index.json parses and that every
    /// named image has its manifest, config and layers, and that cache records
    /// parse. With `repair`, corrupt blobs are removed so that the next import
    /// or build writes them again.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport> {
        let mut report = FsckReport::default();
        let blobs = self.blobs_dir();
        let mut entries: Vec<_> = fs::read_dir(&blobs)
            .at(&blobs)?
            .map(|e| e.map(|e| e.path()))
            .collect::<io::Result<_>>()
            .at(&blobs)?;
        entries.sort();
        for path in entries {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let Ok(expected) = fsutil::parse_sha256(&format!("sha256:{name}")) else {
                report.problems.push(FsckProblem {
                    path,
                    message: "a file that is not named by a sha256 digest".to_owned(),
                });
                continue;
            };
            let mut file = File::open(&path).at(&path)?;
            let mut hasher = HashingWriter::new(io::sink());
            io::copy(&mut file, &mut hasher).at(&path)?;
            let (_, actual, size) = hasher.finish();
            report.blobs_checked += 1;
            report.bytes_checked += size;
            if actual != expected {
                report.problems.push(FsckProblem {
                    path: path.clone(),
                    message: format!("content hashes to {actual}"),
                });
                if repair {
                    fs::remove_file(&path).at(&path)?;
                    report.removed.push(expected);
                }
            }
        }
        match self.read_index() {
            Err(e) => report.problems.push(FsckProblem {
                path: self.index_path(),
                message: e.to_string(),
            }),
            Ok(index) => {
                for descriptor in index.manifests() {
                    let name = ref_name(descriptor).unwrap_or("(unnamed)").to_owned();
                    for (what, result) in self.check_ref(descriptor.digest()) {
                        if let Err(e) = result {
                            report.problems.push(FsckProblem {
                                path: self.index_path(),
                                message: format!("image {name}{what}: {e}"),
                            });
                        }
                    }
                }
            }
        }
        let cache_dir = self.root.join("kiln/cache");
        for entry in fs::read_dir(&cache_dir).at(&cache_dir)? {
            let path = entry.at(&cache_dir)?.path();
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<CacheRecord>(&b).map_err(|e| e.to_string()));
            if let Err(message) = parsed {
                report.problems.push(FsckProblem { path, message });
            }
        }
        self.check_referrers(&mut report.problems)?;
        report.temp_files = fs::read_dir(self.tmp_dir()).at(self.tmp_dir())?.count();
        Ok(report)
    }

    /// Checks a named manifest, or each entry of a named index (labelled
    /// ` (PLATFORM)`).
    fn check_ref(&self, digest: &Digest) -> Vec<(String, Result<()>)> {
        match self.read_ref(digest) {
            Err(e) => vec![(String::new(), Err(e))],
            Ok(StoredRef::Image(_)) => vec![(String::new(), self.check_image(digest))],
            Ok(StoredRef::Index(index)) => index
                .images()
                .map(|(entry, platform)| {
                    (format!(" ({platform})"), self.check_image(entry.digest()))
                })
                .collect(),
        }
    }

    fn check_image(&self, digest: &Digest) -> Result<()> {
        let image = self.read_image(digest)?;
        for layer in image.manifest.layers() {
            let path = self.blob_path(layer.digest())?;
            let size = fs::metadata(&path)
                .map_err(|_| Error::MissingBlob(layer.digest().to_string()))?
                .len();
            if size != layer.size() {
                return Err(Error::invalid(
                    format!("layer {}", layer.digest()),
                    format!(
                        "its manifest says {} bytes, the blob has {size}",
                        layer.size()
                    ),
                ));
            }
        }
        image.layers().map(|_| ())
    }
}

impl ContentStore for Store {
    fn put_blob(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = fsutil::sha256_digest(bytes);
        let target = self.blob_path(&digest)?;
        if !target.exists() {
            fsutil::write_atomic(&self.tmp_dir(), &target, bytes)?;
        }
        Ok(digest)
    }

    fn put_blob_verified(&self, reader: &mut dyn Read, expected: &Digest) -> Result<u64> {
        let target = self.blob_path(expected)?;
        let tmp = self.tmp_dir();
        let temp = tempfile::NamedTempFile::new_in(&tmp).at(&tmp)?;
        let mut writer = HashingWriter::new(BufWriter::with_capacity(
            STREAM_BUFFER,
            temp.reopen().at(temp.path())?,
        ));
        copy_in_large_chunks(reader, &mut writer).during(format!("reading blob {expected}"))?;
        let (buffered, actual, size) = writer.finish();
        let file = buffered
            .into_inner()
            .map_err(|e| Error::io(temp.path(), e.into_error()))?;
        if actual != *expected {
            return Err(Error::DigestMismatch {
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
        if !target.exists() {
            file.sync_all().at(temp.path())?;
            fsutil::persist(temp, &target)?;
        }
        Ok(size)
    }

    fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.blob_path(digest)?;
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::MissingBlob(digest.to_string()),
            _ => Error::io(path, e),
        })
    }

    fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        let path = self.blob_path(digest)?;
        self.open_blob(digest)?.read_to_end(&mut bytes).at(&path)?;
        let actual = fsutil::digest_of(Sha256::new_with_prefix(&bytes));
        if actual != *digest {
            return Err(Error::DigestMismatch {
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }
}

/// What prune keeps: blob hex digests and snapshot directory names.
#[derive(Default)]
pub(crate) struct Marks {
    pub(crate) blobs: HashSet<String>,
    pub(crate) snapshots: HashSet<String>,
}

/// Bytes of the regular files under a directory (for prune's report).
/// Takes the store's shared `gc.lock`, as every live `Store` holds it. When
/// it can be taken exclusively first, no other kiln process has the store
/// open, so what is in `tmp/` was left by one that was killed, and goes
/// before the lock is turned shared (flock converts it). Otherwise the
/// temporary files may be a live process' and stay: the next kiln to find
/// the store unused, or `kiln prune`, removes them.
fn lock_store(gc_lock: &File, kiln: &Path) -> Result<()> {
    match gc_lock.try_lock() {
        Ok(()) => remove_temp_files(&kiln.join("tmp")),
        Err(fs::TryLockError::WouldBlock) => {}
        Err(fs::TryLockError::Error(e)) => return Err(Error::io(kiln.join("gc.lock"), e)),
    }
    gc_lock.lock_shared().at(kiln.join("gc.lock"))
}

/// Removes everything in `tmp`, best effort: a leftover that cannot go now
/// must not keep the store from opening (`kiln fsck` reports it).
fn remove_temp_files(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let _ = match entry.file_type() {
            Ok(kind) if kind.is_dir() => remove_dir_all_writable(&path),
            _ => fs::remove_file(&path).at(&path),
        };
    }
}

fn tree_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Platforms as a list for messages: `linux/amd64, linux/mips64le`.
pub(crate) fn platform_list(platforms: &[crate::Platform]) -> String {
    platforms
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The name an index entry carries, if any.
pub(crate) fn ref_name(descriptor: &Descriptor) -> Option<&str> {
    descriptor
        .annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .map(String::as_str)
}

fn empty_index() -> Result<ImageIndex> {
    ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(Vec::<Descriptor>::new())
        .build()
        .map_err(|e| Error::invalid("index.json", e))
}

/// Removes a directory tree, first making read-only directories writable
/// (unpacked layers contain them).
fn remove_dir_all_writable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    for entry in walkdir::WalkDir::new(path).into_iter().flatten() {
        if entry.file_type().is_dir() {
            let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o700));
        }
    }
    fs::remove_dir_all(path).at(path)
}

/// The descriptor of an image manifest, carrying the platform its config
/// names: written images and read ones describe themselves the same way.
/// `what` names the manifest in errors.
fn manifest_descriptor(
    config: &ImageConfiguration,
    manifest_size: usize,
    manifest_digest: Digest,
    what: &str,
) -> Result<Descriptor> {
    let platform = PlatformBuilder::default()
        .os(config.os().clone())
        .architecture(config.architecture().clone());
    let platform = match config.variant() {
        Some(variant) => platform.variant(variant.clone()),
        None => platform,
    }
    .build()
    .map_err(|e| Error::invalid(what, e))?;
    DescriptorBuilder::default()
        .media_type(MediaType::ImageManifest)
        .size(manifest_size as u64)
        .digest(manifest_digest)
        .platform(platform)
        .build()
        .map_err(|e| Error::invalid(what, e))
}

/// The OCI chain id of a stack of layers given by their diff_ids, bottom first.
pub fn chain_id(diff_ids: &[Digest]) -> Option<Digest> {
    let mut chain: Option<Digest> = None;
    for diff_id in diff_ids {
        chain = Some(match chain {
            None => diff_id.clone(),
            Some(parent) => fsutil::sha256_digest(format!("{parent} {diff_id}").as_bytes()),
        });
    }
    chain
}

/// Buffer size for streaming a blob into the store. `io::copy` moves 8 KiB
/// at a time, which for a blob pulled from a registry means two syscalls per
/// 8 KiB; a megabyte per read and write cuts that a hundredfold and bounds
/// memory all the same.
const STREAM_BUFFER: usize = 1 << 20;

fn copy_in_large_chunks(reader: &mut dyn Read, writer: &mut impl io::Write) -> io::Result<u64> {
    let mut buffer = vec![0u8; STREAM_BUFFER];
    let mut copied = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        writer.write_all(buffer.get(..n).unwrap_or_default())?;
        copied += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::Platform;
    use std::io::Write;

    fn layer(store: &Store, compression: Compression, content: &[u8]) -> crate::LayerBlob {
        let mut writer = store.layer_writer(compression).unwrap();
        let mut builder = tar::Builder::new(&mut writer);
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "etc/hello", content)
            .unwrap();
        builder.finish().unwrap();
        drop(builder);
        writer.finish().unwrap()
    }

    fn image(store: &Store, layers: Vec<crate::LayerBlob>) -> StoredImage {
        store
            .write_image(NewImage {
                platform: "linux/mips64le".parse::<Platform>().unwrap(),
                created: None,
                author: None,
                config: serde_json::json!({"Cmd": ["/bin/sh"], "Healthcheck": {"Test": ["NONE"]}}),
                layers,
                history: vec![],
            })
            .unwrap()
    }

    #[test]
    fn layers_round_trip_with_diff_ids_in_every_compression() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
            let blob = layer(&store, compression, b"hi\n");
            let mut tar_bytes = Vec::new();
            store
                .open_layer(&blob.descriptor)
                .unwrap()
                .read_to_end(&mut tar_bytes)
                .unwrap();
            assert_eq!(sha256_of(&tar_bytes), blob.diff_id);
            assert_eq!(
                sha256_of(&fs::read(store.blob_path(blob.descriptor.digest()).unwrap()).unwrap()),
                *blob.descriptor.digest()
            );
            // The same content twice gives the same blob.
            assert_eq!(layer(&store, compression, b"hi\n"), blob);
        }
    }

    fn sha256_of(bytes: &[u8]) -> Digest {
        crate::sha256_digest(bytes)
    }

    #[test]
    fn images_are_tagged_resolved_and_keep_docker_fields() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let blob = layer(&store, Compression::Gzip, b"x");
        let written = image(&store, vec![blob.clone()]);
        assert_eq!(image(&store, vec![blob.clone()]).id(), written.id());
        assert_eq!(
            store.tag("mips/base", &written).unwrap(),
            "mips/base:latest"
        );
        let found = store.resolve("mips/base").unwrap().unwrap();
        assert_eq!(found.id(), written.id());
        assert_eq!(found.platform().to_string(), "linux/mips64le");
        assert_eq!(found.raw_config["config"]["Healthcheck"]["Test"][0], "NONE");
        assert_eq!(found.layers().unwrap(), vec![blob]);
        let short = &written.id().digest()[..12];
        assert_eq!(store.resolve(short).unwrap().unwrap().id(), written.id());
        assert_eq!(
            store.resolve(written.id().as_ref()).unwrap().unwrap().id(),
            written.id()
        );
        assert!(store.resolve("other").unwrap().is_none());
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(
            index["manifests"][0]["annotations"][REF_NAME],
            "mips/base:latest"
        );
        assert!(store.untag("mips/base:latest").unwrap());
        assert!(!store.untag("mips/base:latest").unwrap());
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn opening_an_idle_store_removes_what_a_killed_kiln_left_in_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tmp = store.tmp_dir();
        // A live process' temporary tree survives another opening the store.
        let live = tmp.join("step-live");
        fs::create_dir_all(live.join("upper/work")).unwrap();
        fs::write(live.join("upper/file"), b"in use").unwrap();
        let other = Store::open(dir.path()).unwrap();
        assert!(live.join("upper/file").exists());
        drop(other);
        // Once no store handle is open, what is left is a dead process'.
        drop(store);
        let unwritable = tmp.join("step-live/upper/work");
        fs::set_permissions(
            &unwritable,
            std::os::unix::fs::PermissionsExt::from_mode(0o000),
        )
        .unwrap();
        fs::write(tmp.join(".tmpAbC"), b"partial blob").unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
        // And the store works on, its shared lock held again: prune by
        // another process would have to wait.
        let other = File::open(dir.path().join("kiln/gc.lock")).unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(fs::TryLockError::WouldBlock)
        ));
        assert!(other.try_lock_shared().is_ok());
        drop(other);
        assert!(store.try_prune().unwrap().is_some());
    }

    #[test]
    fn a_store_has_cache_records_once_one_is_put() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(!store.has_cache_records().unwrap());
        let record = CacheRecord {
            blobs: vec![],
            payload: serde_json::json!({"step": 1}),
        };
        store.cache_put(&[9; 32], &record).unwrap();
        assert!(store.has_cache_records().unwrap());
    }

    #[test]
    fn prune_keeps_tagged_and_cached_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tagged = image(&store, vec![layer(&store, Compression::Gzip, b"tagged")]);
        store.tag("kept", &tagged).unwrap();
        let cached_layer = layer(&store, Compression::Zstd, b"cached");
        store
            .cache_put(
                &[7; 32],
                &CacheRecord {
                    blobs: vec![cached_layer.descriptor.clone()],
                    payload: serde_json::json!({"step": 1}),
                },
            )
            .unwrap();
        let orphan = image(&store, vec![layer(&store, Compression::None, b"orphan")]);
        let mut stray = File::create(store.tmp_dir().join("left-over")).unwrap();
        stray.write_all(b"partial").unwrap();
        let snapshot_of = |image: &StoredImage| {
            let chain = chain_id(&image.diff_ids().unwrap()).unwrap();
            store
                .snapshots_dir()
                .join(chain.to_string().replace(':', "_"))
        };
        let kept_snapshot = snapshot_of(&tagged);
        let orphan_snapshot = snapshot_of(&orphan);
        let unfinished = store.snapshots_dir().join(".tmp-sha256_00-1-2");
        let context_tree = store.snapshots_dir().join("context_0123abcd");
        let unfinished_large = store.snapshots_dir().join(".spread/.tmp-sha256_01-1-3");
        for dir in [
            &kept_snapshot,
            &orphan_snapshot,
            &unfinished,
            &context_tree,
            &unfinished_large,
        ] {
            fs::create_dir_all(dir.join("etc")).unwrap();
            fs::write(dir.join("etc/hello"), b"unpacked").unwrap();
        }
        // The executor's boot markers go with their snapshots.
        let marker_of = |snapshot: &std::path::Path| {
            let markers = store.snapshots_dir().join(".boot");
            fs::create_dir_all(&markers).unwrap();
            let marker = markers.join(snapshot.file_name().unwrap());
            fs::write(&marker, "boot").unwrap();
            marker
        };
        let (kept_marker, orphan_marker) = (marker_of(&kept_snapshot), marker_of(&orphan_snapshot));
        let report = store.prune().unwrap();
        assert!(kept_marker.exists() && !orphan_marker.exists());
        assert_eq!(report.blobs_removed, 3, "orphan manifest, config and layer");
        assert_eq!(report.temp_files_removed, 1);
        assert_eq!(report.snapshots_removed, 4);
        assert!(kept_snapshot.exists() && !orphan_snapshot.exists() && !unfinished.exists());
        assert!(!context_tree.exists() && !unfinished_large.exists());
        assert!(report.bytes_freed > 0);
        assert!(!store.has_blob(orphan.id()));
        assert!(store.resolve("kept").unwrap().is_some());
        assert_eq!(
            store.cache_get(&[7; 32]).unwrap().unwrap().payload["step"],
            1
        );
        assert!(store.fsck(false).unwrap().is_clean());
        assert_eq!(store.prune().unwrap().blobs_removed, 0);
    }

    #[test]
    fn fsck_finds_and_repairs_a_corrupt_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let blob = layer(&store, Compression::Gzip, b"content");
        let img = image(&store, vec![blob.clone()]);
        store.tag("damaged", &img).unwrap();
        let path = store.blob_path(blob.descriptor.digest()).unwrap();
        fs::write(&path, b"not the layer").unwrap();
        let report = store.fsck(false).unwrap();
        assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
        let report = store.fsck(true).unwrap();
        assert_eq!(report.removed, vec![blob.descriptor.digest().clone()]);
        assert!(!path.exists());
        // Writing the layer again heals the store.
        layer(&store, Compression::Gzip, b"content");
        assert!(store.fsck(false).unwrap().is_clean());
    }

    #[test]
    fn verified_puts_reject_wrong_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = sha256_of(b"right");
        let err = store
            .put_blob_verified(&mut &b"wrong"[..], &digest)
            .unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }));
        assert!(!store.has_blob(&digest));
        assert_eq!(
            store
                .put_blob_verified(&mut &b"right"[..], &digest)
                .unwrap(),
            5
        );
        assert_eq!(store.read_blob(&digest).unwrap(), b"right");
    }

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = sha256_of(b"a");
        let b = sha256_of(b"b");
        assert_eq!(chain_id(std::slice::from_ref(&a)), Some(a.clone()));
        assert_eq!(
            chain_id(&[a.clone(), b.clone()]),
            Some(sha256_of(format!("{a} {b}").as_bytes()))
        );
        assert_eq!(chain_id(&[]), None);
    }
}
