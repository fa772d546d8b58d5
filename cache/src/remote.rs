//! Build cache shared between machines: the exported form of cache records
//! (a kiln cache config, carried by an OCI image manifest whose layers are
//! the blobs the records name) and the trait the solver asks on a local miss.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use oci_spec::image::{Descriptor, Digest, ImageManifest, ImageManifestBuilder, MediaType};

use crate::error::{Error, Result};
use crate::store::{CacheRecord, ContentStore, Store};

/// The media type of a kiln cache config: the config blob of a cache
/// manifest (as BuildKit's `application/vnd.buildkit.cacheconfig.v0` is of
/// its cache manifests).
pub const CACHE_CONFIG_MEDIA_TYPE: &str = "application/vnd.kiln.cache.config.v1+json";

/// Cache records as exported: keyed by the hex of their cache key. Every
/// blob a record names is a layer of the manifest that carries the config.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CacheConfig {
    /// The records, by the hex of their cache key.
    pub records: BTreeMap<String, CacheRecord>,
}

impl CacheConfig {
    /// A config holding these records (a later record under the same key wins).
    pub fn from_records(records: impl IntoIterator<Item = ([u8; 32], CacheRecord)>) -> Self {
        CacheConfig {
            records: records
                .into_iter()
                .map(|(key, record)| (hex::encode(key), record))
                .collect(),
        }
    }

    /// Parses a config blob; `what` names where it came from in errors.
    pub fn parse(bytes: &[u8], what: &str) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::invalid(what, e))
    }

    /// The config as JSON (stable: records sorted by key).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::invalid("cache config", e))
    }

    /// The record under `key`.
    pub fn get(&self, key: &[u8; 32]) -> Option<&CacheRecord> {
        self.records.get(&hex::encode(key))
    }

    /// The distinct blobs the records name, sorted by digest.
    pub fn blobs(&self) -> Vec<Descriptor> {
        let mut seen = BTreeSet::new();
        let mut blobs: Vec<Descriptor> = self
            .records
            .values()
            .flat_map(|r| r.blobs.iter())
            .filter(|d| seen.insert(d.digest().to_string()))
            .cloned()
            .collect();
        blobs.sort_by_key(|d| d.digest().to_string());
        blobs
    }

    /// Whether a record names this blob (so a source may hand it out).
    pub fn names_blob(&self, digest: &Digest) -> bool {
        self.records
            .values()
            .any(|r| r.blobs.iter().any(|d| d.digest() == digest))
    }

    /// The manifest that carries this config (a blob of `config_size` bytes
    /// hashing to `config_digest`) and, as its layers, the records' blobs.
    pub fn manifest(&self, config_digest: Digest, config_size: u64) -> Result<ImageManifest> {
        ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(Descriptor::new(
                MediaType::Other(CACHE_CONFIG_MEDIA_TYPE.to_owned()),
                config_size,
                config_digest,
            ))
            .layers(self.blobs())
            .build()
            .map_err(|e| Error::invalid("cache manifest", e))
    }

    /// Checks that a manifest carries a kiln cache config.
    pub fn check_manifest(manifest: &ImageManifest, what: &str) -> Result<()> {
        let media_type = manifest.config().media_type().to_string();
        if media_type != CACHE_CONFIG_MEDIA_TYPE {
            return Err(Error::invalid(
                what,
                format!(
                    "its config is {media_type}, not a kiln build cache ({CACHE_CONFIG_MEDIA_TYPE}); point --cache-from at what --cache-to wrote"
                ),
            ));
        }
        Ok(())
    }
}

/// Cache records exported by another build (a registry, a directory), asked
/// by the solver when the local store has no record for a key.
///
/// The contract:
/// - `lookup` answers from what was fetched when the source was opened (no
///   I/O): the record as exported, whose blobs need not be in `store` yet.
/// - Blobs are fetched lazily with `fetch_blob`, only when a layer is needed
///   (a step must run on it, a COPY --from reads it, the image contains it).
///   The store verifies the content against the digest before publishing it,
///   so a corrupt or tampered source fails the fetch and publishes nothing.
/// - `fetch_blob` returns `Ok(false)` when this source's records do not name
///   the blob, so the caller may ask the next source.
/// - Implementations are shared by the solver's threads and must be `Sync`.
pub trait CacheSource: Send + Sync + std::fmt::Debug {
    /// Where the records come from, for messages (a reference or a path).
    fn describe(&self) -> String;
    /// The record exported under `key`.
    fn lookup(&self, key: &[u8; 32]) -> Option<CacheRecord>;
    /// Fetches a blob into `store`, verified. `Ok(false)`: not this source's.
    fn fetch_blob(&self, store: &Store, descriptor: &Descriptor) -> Result<bool>;
}

/// Makes sure `store` has a blob, fetching it from the first source that has
/// it. Fails when no source has it (a record named a blob its export lacks).
pub fn ensure_blob(
    store: &Store,
    sources: &[Arc<dyn CacheSource>],
    descriptor: &Descriptor,
) -> Result<()> {
    if store.has_blob(descriptor.digest()) {
        return Ok(());
    }
    for source in sources {
        if source.fetch_blob(store, descriptor)? {
            return Ok(());
        }
    }
    Err(Error::MissingBlob(descriptor.digest().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::sha256_digest;

    fn record(blob: &[u8]) -> CacheRecord {
        CacheRecord {
            blobs: vec![Descriptor::new(
                MediaType::ImageLayerGzip,
                blob.len() as u64,
                sha256_digest(blob),
            )],
            payload: serde_json::json!({"layer": null}),
        }
    }

    #[test]
    fn config_round_trips_and_names_each_blob_once() {
        let config = CacheConfig::from_records([
            ([1; 32], record(b"a")),
            ([2; 32], record(b"b")),
            ([3; 32], record(b"a")),
        ]);
        let parsed = CacheConfig::parse(&config.to_bytes().unwrap(), "test").unwrap();
        assert_eq!(parsed, config);
        assert_eq!(parsed.get(&[2; 32]), Some(&record(b"b")));
        assert_eq!(parsed.get(&[4; 32]), None);
        assert_eq!(parsed.blobs().len(), 2);
        assert!(parsed.names_blob(&sha256_digest(b"a")));
        assert!(!parsed.names_blob(&sha256_digest(b"c")));
    }

    #[test]
    fn a_manifest_that_is_not_a_kiln_cache_is_refused() {
        let config = CacheConfig::from_records([([1; 32], record(b"a"))]);
        let bytes = config.to_bytes().unwrap();
        let manifest = config
            .manifest(sha256_digest(&bytes), bytes.len() as u64)
            .unwrap();
        assert_eq!(manifest.layers().len(), 1);
        CacheConfig::check_manifest(&manifest, "m").unwrap();
        let mut image = manifest.clone();
        image.set_config(Descriptor::new(
            MediaType::ImageConfig,
            2,
            sha256_digest(b"{}"),
        ));
        let err = CacheConfig::check_manifest(&image, "m").unwrap_err();
        assert!(err.to_string().contains("not a kiln build cache"), "{err}");
    }
}
