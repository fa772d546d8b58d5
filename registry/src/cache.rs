//! Build cache in a registry (`--cache-to`/`--cache-from type=registry`):
//! the cache manifest (an OCI image manifest whose config is a kiln cache
//! config and whose layers are the records' blobs) is pushed like an image,
//! blobs first; an import reads the manifest and config at once and each
//! layer only when the build needs it.

use std::sync::Arc;

use kiln_cache::{
    CacheConfig, CacheRecord, CacheSource, ContentStore, Descriptor, Digest, ImageManifest, Store,
};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::reference::Reference;
use crate::transfer::{push_blobs, put_manifest_checked, remember_source, Progress, PushOptions};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A build cache in a registry, opened for import.
#[derive(Debug)]
pub struct RegistryCache {
    client: Client,
    reference: Reference,
    config: CacheConfig,
}

impl RegistryCache {
    /// Fetches and verifies the cache manifest `reference` names and its
    /// config. A missing manifest is `Error::NotFound`.
    pub fn open(client: Client, reference: Reference) -> Result<RegistryCache> {
        let repository = reference.repository.as_str();
        let what = format!("the build cache {reference}");
        let (bytes, _, announced) =
            client.get_manifest(repository, reference.manifest_reference())?;
        let actual = kiln_cache::sha256_digest(&bytes).to_string();
        if let Some(expected) = reference.digest.clone().or(announced) {
            if expected != actual {
                return Err(Error::DigestMismatch {
                    what,
                    expected,
                    actual,
                });
            }
        }
        let manifest = ImageManifest::from_reader(&bytes[..])
            .map_err(|e| Error::invalid(client.registry(), what.clone(), e))?;
        CacheConfig::check_manifest(&manifest, &what)?;
        let config_digest = manifest.config().digest();
        let mut config_bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(
                client.get_blob(repository, config_digest.as_ref())?,
                64 << 20,
            ),
            &mut config_bytes,
        )
        .map_err(|e| {
            Error::unreachable(
                client.registry(),
                format!("{reference} config {config_digest}"),
                e,
            )
        })?;
        let actual = kiln_cache::sha256_digest(&config_bytes);
        if actual != *config_digest {
            return Err(Error::DigestMismatch {
                what: format!("the config of {what}"),
                expected: config_digest.to_string(),
                actual: actual.to_string(),
            });
        }
        let config = CacheConfig::parse(&config_bytes, &format!("the config of {what}"))?;
        Ok(RegistryCache {
            client,
            reference,
            config,
        })
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

impl CacheSource for RegistryCache {
    fn describe(&self) -> String {
        self.reference.to_string()
    }

    fn lookup(&self, key: &[u8; 32]) -> Option<CacheRecord> {
        self.config.get(key).cloned()
    }

    fn fetch_blob(&self, store: &Store, descriptor: &Descriptor) -> kiln_cache::Result<bool> {
        let digest = descriptor.digest();
        if !self.config.names_blob(digest) {
            return Ok(false);
        }
        let repository = self.reference.repository.as_str();
        let as_store_error = |e: Error| kiln_cache::Error::Stream {
            context: format!(
                "fetching blob {digest} of the build cache {}",
                self.reference
            ),
            source: std::io::Error::other(e.to_string()),
        };
        let mut reader = self
            .client
            .get_blob(repository, digest.as_ref())
            .map_err(as_store_error)?;
        match store.put_blob_verified(&mut reader, digest) {
            Ok(_) => {
                remember_source(store, self.client.registry(), repository, digest);
                Ok(true)
            }
            Err(kiln_cache::Error::DigestMismatch { expected, actual }) => {
                Err(kiln_cache::Error::CorruptCacheBlob {
                    path: format!("{}@{expected}", self.reference),
                    expected,
                    actual,
                })
            }
            Err(e) => Err(e),
        }
    }
}

/// Pushes `config` and the blobs its records name to `target` as a cache
/// manifest, replacing what the tag named. Blobs the repository has are not
/// read at all (so re-exporting an imported cache downloads nothing); the
/// others come from the store or, for imported records, from `sources`. The
/// manifest goes last, so the registry never names a cache whose blobs it
/// lacks. Returns the manifest digest.
pub fn push_cache(
    store: &Store,
    sources: &[Arc<dyn CacheSource>],
    client: &Client,
    config: &CacheConfig,
    target: &Reference,
    options: &PushOptions,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<Digest> {
    let config_bytes = config.to_bytes()?;
    // Uploads stream from store files; prune drops it once nothing needs it.
    let config_digest = store.put_blob(&config_bytes)?;
    let manifest = config.manifest(config_digest, config_bytes.len() as u64)?;
    let mut blobs = vec![manifest.config().clone()];
    blobs.extend(manifest.layers().iter().cloned());
    let repository = target.repository.as_str();
    // Blobs of imported records nothing read yet are fetched only when the
    // registry lacks them.
    push_blobs(
        store,
        client,
        repository,
        &blobs,
        options,
        progress,
        &|blob: &Descriptor| Ok(kiln_cache::ensure_blob(store, sources, blob)?),
    )?;
    let manifest_bytes = serde_json::to_vec(&manifest)
        .map_err(|e| Error::invalid(client.registry(), "the cache manifest", e))?;
    let digest = kiln_cache::sha256_digest(&manifest_bytes);
    put_manifest_checked(
        client,
        target,
        OCI_MANIFEST,
        &manifest_bytes,
        &digest,
        "the cache manifest",
    )?;
    progress(&Progress::Manifest {
        digest: digest.to_string(),
    });
    Ok(digest)
}
