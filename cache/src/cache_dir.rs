//! A build cache in a directory (`--cache-to type=local,dest=DIR`,
//! `--cache-from type=local,src=DIR`): a plain OCI image layout whose
//! index.json tags a cache manifest, so CI systems can cache the directory
//! and OCI tools can copy it.
//!
//! Exports are crash-safe: every blob is written to a temporary file and
//! renamed into place, and index.json is replaced last, so an interrupted
//! export leaves the previous index naming blobs that are all there. Blobs
//! already in the directory are kept and reused; nothing is ever deleted.
//! Concurrent exports (parallel CI jobs sharing a directory) each keep their
//! tag: index.json is read, changed and replaced under a lock on the
//! directory.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::image::{
    Descriptor, Digest, ImageIndex, ImageIndexBuilder, ImageManifest, MediaType,
};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, sha256_digest};
use crate::remote::{ensure_blob, CacheConfig, CacheSource};
use crate::store::{CacheRecord, ContentStore, Store, REF_NAME};

/// The tag a cache directory uses when none is given.
pub const DEFAULT_CACHE_TAG: &str = "latest";

/// A build cache exported to a directory, opened for import.
#[derive(Debug)]
pub struct CacheDir {
    dir: PathBuf,
    config: CacheConfig,
}

fn blob_path(dir: &Path, digest: &Digest) -> Result<PathBuf> {
    if digest.algorithm().as_ref() != "sha256" {
        return Err(Error::BadDigest(digest.to_string()));
    }
    Ok(dir.join("blobs/sha256").join(digest.digest()))
}

/// Reads a small blob of the directory and checks it against its digest.
fn read_verified(dir: &Path, digest: &Digest) -> Result<Vec<u8>> {
    let path = blob_path(dir, digest)?;
    let bytes = fs::read(&path).at(&path)?;
    let actual = sha256_digest(&bytes);
    if actual != *digest {
        return Err(Error::CorruptCacheBlob {
            path: path.display().to_string(),
            expected: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(bytes)
}

fn ref_name(descriptor: &Descriptor) -> Option<&str> {
    descriptor
        .annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .map(String::as_str)
}

fn read_index(dir: &Path) -> Result<Option<ImageIndex>> {
    let path = dir.join("index.json");
    match fs::read(&path) {
        Ok(bytes) => ImageIndex::from_reader(&bytes[..])
            .map(Some)
            .map_err(|e| Error::invalid(path.display().to_string(), e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

impl CacheDir {
    /// Opens the cache tagged `tag` in `dir`: its manifest and config are
    /// read and verified now, its layers later, when needed. `None` when the
    /// directory or the tag does not exist (the first build of a pipeline).
    pub fn open(dir: &Path, tag: &str) -> Result<Option<CacheDir>> {
        let Some(index) = read_index(dir)? else {
            return Ok(None);
        };
        let Some(entry) = index.manifests().iter().find(|d| ref_name(d) == Some(tag)) else {
            return Ok(None);
        };
        let what = format!("the cache manifest {tag} in {}", dir.display());
        let manifest_bytes = read_verified(dir, entry.digest())?;
        let manifest = ImageManifest::from_reader(&manifest_bytes[..])
            .map_err(|e| Error::invalid(what.clone(), e))?;
        CacheConfig::check_manifest(&manifest, &what)?;
        let config_bytes = read_verified(dir, manifest.config().digest())?;
        let config = CacheConfig::parse(
            &config_bytes,
            &format!("the cache config {tag} in {}", dir.display()),
        )?;
        Ok(Some(CacheDir {
            dir: dir.to_owned(),
            config,
        }))
    }

    /// How many records the cache holds.
    pub fn len(&self) -> usize {
        self.config.records.len()
    }

    /// Whether the cache holds no record.
    pub fn is_empty(&self) -> bool {
        self.config.records.is_empty()
    }
}

impl CacheSource for CacheDir {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn lookup(&self, key: &[u8; 32]) -> Option<CacheRecord> {
        self.config.get(key).cloned()
    }

    fn fetch_blob(&self, store: &Store, descriptor: &Descriptor) -> Result<bool> {
        let digest = descriptor.digest();
        if !self.config.names_blob(digest) {
            return Ok(false);
        }
        let path = blob_path(&self.dir, digest)?;
        let mut file = File::open(&path).at(&path)?;
        match store.put_blob_verified(&mut file, digest) {
            Ok(_) => Ok(true),
            Err(Error::DigestMismatch { expected, actual }) => Err(Error::CorruptCacheBlob {
                path: path.display().to_string(),
                expected,
                actual,
            }),
            Err(e) => Err(e),
        }
    }
}

/// Copies a blob into the directory unless it is there, from the store
/// (fetched from `sources` first when an imported record named it).
fn write_blob(
    store: &Store,
    sources: &[Arc<dyn CacheSource>],
    blobs_dir: &Path,
    descriptor: &Descriptor,
) -> Result<()> {
    let target = blobs_dir.join(descriptor.digest().digest());
    if fs::metadata(&target).is_ok_and(|m| m.len() == descriptor.size()) {
        return Ok(());
    }
    ensure_blob(store, sources, descriptor)?;
    let mut source = store.open_blob(descriptor.digest())?;
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(blobs_dir)
        .at(blobs_dir)?;
    io::copy(&mut source, temp.as_file_mut()).at(temp.path())?;
    temp.as_file().sync_all().at(temp.path())?;
    fsutil::persist(temp, &target)
}

fn write_bytes(blobs_dir: &Path, bytes: &[u8]) -> Result<Digest> {
    let digest = sha256_digest(bytes);
    let target = blobs_dir.join(digest.digest());
    if !target.is_file() {
        let mut temp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(blobs_dir)
            .at(blobs_dir)?;
        temp.write_all(bytes).at(temp.path())?;
        temp.as_file().sync_all().at(temp.path())?;
        fsutil::persist(temp, &target)?;
    }
    Ok(digest)
}

/// Exports `config` and the blobs its records name to the OCI layout `dir`
/// under `tag`, replacing what the tag named. Blobs the directory has are
/// kept; the others come from `store`, or from `sources` when an imported
/// record named them and nothing read them yet. Returns the cache manifest's
/// digest. One writer per directory at a time: two concurrent exports may
/// each keep only their own tag.
pub fn export_cache_dir(
    store: &Store,
    sources: &[Arc<dyn CacheSource>],
    config: &CacheConfig,
    dir: &Path,
    tag: &str,
) -> Result<Digest> {
    let blobs_dir = fsutil::ensure_dir(&dir.join("blobs/sha256"))?;
    for blob in config.blobs() {
        // Only sha256 blobs are stored; refuse others before writing anything.
        blob_path(dir, blob.digest())?;
    }
    let layout = dir.join("oci-layout");
    if !layout.is_file() {
        fsutil::write_atomic(dir, &layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    }
    for blob in config.blobs() {
        write_blob(store, sources, &blobs_dir, &blob)?;
    }
    let config_bytes = config.to_bytes()?;
    let config_digest = write_bytes(&blobs_dir, &config_bytes)?;
    let manifest = config.manifest(config_digest, config_bytes.len() as u64)?;
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| Error::invalid("cache manifest", e))?;
    let manifest_digest = write_bytes(&blobs_dir, &manifest_bytes)?;
    let mut entry = Descriptor::new(
        MediaType::ImageManifest,
        manifest_bytes.len() as u64,
        manifest_digest.clone(),
    );
    entry.set_annotations(Some([(REF_NAME.to_owned(), tag.to_owned())].into()));
    let _lock = fsutil::FileLock::exclusive_dir(dir)?;
    let index = read_index(dir)?;
    let mut entries: Vec<Descriptor> = index
        .map(|i| i.manifests().clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|d| ref_name(d) != Some(tag))
        .collect();
    entries.push(entry);
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(entries)
        .build()
        .map_err(|e| Error::invalid("index.json", e))?;
    let index_bytes = serde_json::to_vec(&index).map_err(|e| Error::invalid("index.json", e))?;
    fsutil::write_atomic(dir, &dir.join("index.json"), &index_bytes)?;
    Ok(manifest_digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store with one blob and a config whose record names it.
    fn setup() -> (tempfile::TempDir, Store, CacheConfig, Descriptor) {
        let temp = tempfile::tempdir().unwrap();
        let store = Store::open(temp.path().join("store")).unwrap();
        let blob = b"layer bytes".to_vec();
        let digest = store.put_blob(&blob).unwrap();
        let descriptor = Descriptor::new(MediaType::ImageLayerGzip, blob.len() as u64, digest);
        let config = CacheConfig::from_records([(
            [7; 32],
            CacheRecord {
                blobs: vec![descriptor.clone()],
                payload: serde_json::json!({"layer": null}),
            },
        )]);
        (temp, store, config, descriptor)
    }

    #[test]
    fn export_then_import_fetches_verified_blobs() {
        let (temp, store, config, descriptor) = setup();
        let dir = temp.path().join("cache");
        export_cache_dir(&store, &[], &config, &dir, "main").unwrap();
        assert!(CacheDir::open(&dir, "other").unwrap().is_none());
        assert!(CacheDir::open(&temp.path().join("none"), "main")
            .unwrap()
            .is_none());
        let cache = CacheDir::open(&dir, "main").unwrap().unwrap();
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.lookup(&[7; 32]), config.get(&[7; 32]).cloned());
        assert_eq!(cache.lookup(&[8; 32]), None);

        let other = Store::open(temp.path().join("other")).unwrap();
        let unknown = Descriptor::new(MediaType::ImageLayerGzip, 1, sha256_digest(b"x"));
        assert!(!cache.fetch_blob(&other, &unknown).unwrap());
        assert!(cache.fetch_blob(&other, &descriptor).unwrap());
        assert!(other.has_blob(descriptor.digest()));
    }

    #[test]
    fn re_exporting_an_import_fetches_only_what_the_destination_lacks() {
        let (temp, store, config, descriptor) = setup();
        let first = temp.path().join("first");
        export_cache_dir(&store, &[], &config, &first, "t").unwrap();
        let source: Arc<dyn CacheSource> = Arc::new(CacheDir::open(&first, "t").unwrap().unwrap());
        let sources = [source];
        let other = Store::open(temp.path().join("other")).unwrap();
        // Into the directory it came from: nothing to fetch.
        export_cache_dir(&other, &sources, &config, &first, "t").unwrap();
        assert!(!other.has_blob(descriptor.digest()));
        // Elsewhere: fetched from the source, verified, then copied.
        let second = temp.path().join("second");
        export_cache_dir(&other, &sources, &config, &second, "t").unwrap();
        assert!(other.has_blob(descriptor.digest()));
        assert_eq!(CacheDir::open(&second, "t").unwrap().unwrap().len(), 1);
        // Without a source the blob is missing: a clear error, no index.
        let third = temp.path().join("third");
        let empty = Store::open(temp.path().join("empty")).unwrap();
        let err = export_cache_dir(&empty, &[], &config, &third, "t").unwrap_err();
        assert!(matches!(err, Error::MissingBlob(_)), "{err}");
        assert!(!third.join("index.json").exists());
        // A failed export over an existing one leaves the old index whole.
        let before = fs::read(second.join("index.json")).unwrap();
        let mut broken = config.clone();
        broken.records.insert(
            hex::encode([9; 32]),
            CacheRecord {
                blobs: vec![Descriptor::new(
                    MediaType::ImageLayerGzip,
                    4,
                    sha256_digest(b"gone"),
                )],
                payload: serde_json::json!({"layer": null}),
            },
        );
        export_cache_dir(&other, &[], &broken, &second, "t").unwrap_err();
        assert_eq!(fs::read(second.join("index.json")).unwrap(), before);
        assert_eq!(CacheDir::open(&second, "t").unwrap().unwrap().len(), 1);
    }

    #[test]
    fn concurrent_exports_to_one_directory_keep_every_tag() {
        let (temp, store, config, _) = setup();
        let dir = temp.path().join("cache");
        let tags: Vec<String> = (0..16).map(|n| format!("job-{n}")).collect();
        std::thread::scope(|scope| {
            for tag in &tags {
                let (store, config, dir) = (&store, &config, &dir);
                scope.spawn(move || export_cache_dir(store, &[], config, dir, tag).unwrap());
            }
        });
        for tag in &tags {
            assert!(CacheDir::open(&dir, tag).unwrap().is_some(), "{tag} lost");
        }
    }

    #[test]
    fn a_second_export_replaces_the_tag_and_keeps_other_tags() {
        let (temp, store, config, _) = setup();
        let dir = temp.path().join("cache");
        export_cache_dir(&store, &[], &config, &dir, "a").unwrap();
        export_cache_dir(&store, &[], &config, &dir, "b").unwrap();
        let empty = CacheConfig::default();
        let digest = export_cache_dir(&store, &[], &empty, &dir, "a").unwrap();
        let index = read_index(&dir).unwrap().unwrap();
        assert_eq!(index.manifests().len(), 2);
        let a = index
            .manifests()
            .iter()
            .find(|d| ref_name(d) == Some("a"))
            .unwrap();
        assert_eq!(a.digest(), &digest);
        assert!(CacheDir::open(&dir, "a").unwrap().unwrap().is_empty());
        assert_eq!(CacheDir::open(&dir, "b").unwrap().unwrap().len(), 1);
        let leftovers = fs::read_dir(dir.join("blobs/sha256"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn a_corrupt_blob_is_refused_and_not_stored() {
        let (temp, store, config, descriptor) = setup();
        let dir = temp.path().join("cache");
        export_cache_dir(&store, &[], &config, &dir, DEFAULT_CACHE_TAG).unwrap();
        fs::write(
            blob_path(&dir, descriptor.digest()).unwrap(),
            b"layer bytez",
        )
        .unwrap();
        let cache = CacheDir::open(&dir, DEFAULT_CACHE_TAG).unwrap().unwrap();
        let other = Store::open(temp.path().join("other")).unwrap();
        let err = cache.fetch_blob(&other, &descriptor).unwrap_err();
        assert!(matches!(err, Error::CorruptCacheBlob { .. }), "{err}");
        assert!(err.to_string().contains("delete it"), "{err}");
        assert!(!other.has_blob(descriptor.digest()));
    }
}
