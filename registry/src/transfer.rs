//! Push and pull between the store and a registry: blobs in parallel,
//! streamed from and into the store's files, manifests last on push so a
//! registry never names an image whose blobs it lacks.

use std::io::Write;
use std::sync::Mutex;

use kiln_cache::{
    ContentStore, Descriptor, Digest, ImageManifest, LayerBlob, MediaType, Platform, Store,
    StoredImage, StoredIndex, StoredRef,
};
use oci_spec::image::ImageIndex;

use crate::client::{sources_dir, Client, Mount};
use crate::error::{Error, Result};
use crate::reference::Reference;

/// What a transfer reports as it goes, for progress output.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Progress {
    /// The registry (or the store, on pull) already had the blob.
    Exists {
        /// The blob's digest.
        digest: String,
        /// Its size in bytes.
        size: u64,
    },
    /// The registry mounted the blob from another repository.
    Mounted {
        /// The blob's digest.
        digest: String,
        /// The repository it was mounted from.
        from: String,
    },
    /// The blob was uploaded.
    Uploaded {
        /// The blob's digest.
        digest: String,
        /// Its size in bytes.
        size: u64,
    },
    /// The blob was downloaded and verified.
    Downloaded {
        /// The blob's digest.
        digest: String,
        /// Its size in bytes.
        size: u64,
    },
    /// The manifest was pushed or pulled.
    Manifest {
        /// The manifest's digest.
        digest: String,
    },
    /// The registry has no referrers API: the referrers tag was updated.
    ReferrersTag {
        /// The tag (`sha256-HEX` of the subject).
        tag: String,
    },
}

/// How to push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Blobs up to this size go in one PUT; bigger ones in PATCH chunks of it.
    pub chunk_size: u64,
    /// How many blobs move at once.
    pub parallel: usize,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            chunk_size: 64 << 20,
            parallel: 4,
        }
    }
}

/// How many blobs a pull fetches at once.
const PULL_PARALLEL: usize = 4;

/// Runs `work` over `items` on up to `threads` threads; returns the first
/// error (the others finish what they started).
fn parallel<T: Sync>(
    items: &[T],
    threads: usize,
    work: impl Fn(&T) -> Result<()> + Sync,
) -> Result<()> {
    let next = Mutex::new(0usize);
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            scope.spawn(|| loop {
                if failure.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                    return;
                }
                let index = {
                    let mut next = next.lock().unwrap_or_else(|e| e.into_inner());
                    let index = *next;
                    *next += 1;
                    index
                };
                let Some(item) = items.get(index) else {
                    return;
                };
                if let Err(e) = work(item) {
                    failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e);
                    return;
                }
            });
        }
    });
    match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Remembers that `registry` has `digest` in `repository`. Only a hint for
/// cross-repository mounts: losing one costs an upload, never correctness.
pub(crate) fn remember_source(store: &Store, registry: &str, repository: &str, digest: &Digest) {
    let Ok(state) = store.state_dir("registry") else {
        return;
    };
    let dir = sources_dir(&state);
    let line = format!("{registry} {repository}");
    let path = dir.join(digest.digest());
    let mut lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    if lines.contains(&line) {
        return;
    }
    lines.push(line);
    let _ = std::fs::create_dir_all(&dir).and_then(|_| {
        let mut temp = tempfile::NamedTempFile::new_in(&dir)?;
        temp.write_all((lines.join("\n") + "\n").as_bytes())?;
        temp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    });
}

/// Another repository of `registry` known to have `digest`.
fn known_source(
    store: &Store,
    registry: &str,
    repository: &str,
    digest: &Digest,
) -> Option<String> {
    let state = store.state_dir("registry").ok()?;
    let text = std::fs::read_to_string(sources_dir(&state).join(digest.digest())).ok()?;
    text.lines().find_map(|line| {
        let (reg, repo) = line.split_once(' ')?;
        (reg == registry && repo != repository).then(|| repo.to_owned())
    })
}

/// Pushes a stored image to `target` (its tag, or its digest when the
/// reference has only a digest). Blobs the registry has are skipped, blobs
/// another repository of the registry has are mounted, the rest uploaded in
/// parallel; the manifest goes last, then the image's referrers (its SBOM
/// and provenance; see `referrers`). Returns the manifest digest.
pub fn push(
    store: &Store,
    client: &Client,
    image: &StoredImage,
    target: &Reference,
    options: &PushOptions,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<Digest> {
    let repository = target.repository.as_str();
    let mut blobs: Vec<Descriptor> = vec![image.manifest.config().clone()];
    for layer in image.manifest.layers() {
        if !blobs.iter().any(|b| b.digest() == layer.digest()) {
            blobs.push(layer.clone());
        }
    }
    push_blobs(
        store,
        client,
        repository,
        &blobs,
        options,
        progress,
        &|blob: &Descriptor| {
            if store.blob_path(blob.digest())?.is_file() {
                Ok(())
            } else {
                Err(kiln_cache::Error::MissingBlob(blob.digest().to_string()).into())
            }
        },
    )?;
    let manifest_bytes = store.read_blob(image.id())?;
    let media_type = image
        .manifest
        .media_type()
        .clone()
        .unwrap_or(MediaType::ImageManifest)
        .to_string();
    put_manifest_checked(
        client,
        target,
        &media_type,
        &manifest_bytes,
        image.id(),
        "the manifest",
    )?;
    progress(&Progress::Manifest {
        digest: image.id().to_string(),
    });
    // Attestations go with the image they describe.
    crate::referrers::push_referrers(store, client, image, target, options, progress)?;
    Ok(image.id().clone())
}

/// Pushes a stored multi-platform index to `target`: every manifest it
/// names first (each image with its blobs and referrers, by digest, no
/// tag), then the index under `target`'s tag (or digest). Returns the
/// index digest.
pub fn push_index(
    store: &Store,
    client: &Client,
    index: &StoredIndex,
    target: &Reference,
    options: &PushOptions,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<Digest> {
    for entry in index.index.manifests() {
        let by_digest = Reference {
            tag: None,
            digest: Some(entry.digest().to_string()),
            ..target.clone()
        };
        match store.read_ref(entry.digest())? {
            StoredRef::Image(image) if kiln_cache::descriptor_platform(entry).is_some() => {
                push(store, client, &image, &by_digest, options, progress)?;
            }
            _ => push_raw_manifest(store, client, entry, &by_digest, options, progress)?,
        }
    }
    let bytes = store.read_blob(index.id())?;
    put_manifest_checked(
        client,
        target,
        kiln_cache::INDEX_MEDIA_TYPE,
        &bytes,
        index.id(),
        "the index",
    )?;
    progress(&Progress::Manifest {
        digest: index.id().to_string(),
    });
    Ok(index.id().clone())
}

/// Pushes a manifest that is not an image of the index (an attestation
/// manifest a pulled index carried) with its blobs, byte for byte.
fn push_raw_manifest(
    store: &Store,
    client: &Client,
    entry: &Descriptor,
    target: &Reference,
    options: &PushOptions,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<()> {
    let bytes = push_blobs_of_manifest(
        store,
        client,
        &target.repository,
        entry.digest(),
        options,
        progress,
    )?;
    put_manifest_checked(
        client,
        target,
        entry.media_type().as_ref(),
        &bytes,
        entry.digest(),
        "a manifest of the index",
    )
}

/// Reads the stored manifest `digest` and pushes the blobs it names (its
/// config and layers) to `repository`; returns the manifest's bytes, for
/// the caller to put once its blobs are there.
pub(crate) fn push_blobs_of_manifest(
    store: &Store,
    client: &Client,
    repository: &str,
    digest: &Digest,
    options: &PushOptions,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<Vec<u8>> {
    let bytes = store.read_blob(digest)?;
    let manifest = ImageManifest::from_reader(&bytes[..])
        .map_err(|e| Error::invalid(client.registry(), format!("manifest {digest}"), e))?;
    let mut blobs = vec![manifest.config().clone()];
    blobs.extend(manifest.layers().iter().cloned());
    push_blobs(
        store,
        client,
        repository,
        &blobs,
        options,
        progress,
        &|_| Ok(()),
    )?;
    Ok(bytes)
}

/// Uploads the blobs the repository lacks, in parallel: skipped when there,
/// mounted from another repository of the registry when one is known to
/// have them, else uploaded from the store. `before_upload` runs just before
/// a blob is read from the store (to check it is there, or to fetch it), so
/// nothing is read for a blob the registry already has.
pub(crate) fn push_blobs(
    store: &Store,
    client: &Client,
    repository: &str,
    blobs: &[Descriptor],
    options: &PushOptions,
    progress: &(dyn Fn(&Progress) + Sync),
    before_upload: &(dyn Fn(&Descriptor) -> Result<()> + Sync),
) -> Result<()> {
    let registry = client.registry();
    parallel(blobs, options.parallel, |blob| {
        let digest = blob.digest();
        let text = digest.to_string();
        if client.blob_exists(repository, &text)? {
            remember_source(store, registry, repository, digest);
            progress(&Progress::Exists {
                digest: text,
                size: blob.size(),
            });
            return Ok(());
        }
        let location = match known_source(store, registry, repository, digest) {
            Some(from) => match client.mount_blob(repository, &text, &from)? {
                Mount::Mounted => {
                    remember_source(store, registry, repository, digest);
                    progress(&Progress::Mounted { digest: text, from });
                    return Ok(());
                }
                Mount::Started(location) => location,
            },
            None => client.start_upload(repository)?,
        };
        before_upload(blob)?;
        let path = store.blob_path(digest)?;
        client.upload_blob(
            repository,
            location,
            &text,
            &path,
            blob.size(),
            options.chunk_size,
        )?;
        remember_source(store, registry, repository, digest);
        progress(&Progress::Uploaded {
            digest: text,
            size: blob.size(),
        });
        Ok(())
    })
}

/// Puts a manifest under `target`'s tag or digest and checks that the
/// registry names it by the digest kiln computed.
pub(crate) fn put_manifest_checked(
    client: &Client,
    target: &Reference,
    media_type: &str,
    bytes: &[u8],
    expected: &Digest,
    what: &str,
) -> Result<()> {
    let announced = client.put_manifest(
        target.repository.as_str(),
        target.manifest_reference(),
        media_type,
        bytes,
    )?;
    match announced {
        Some(announced) if announced != expected.to_string() => Err(Error::DigestMismatch {
            what: format!("{what} pushed to {target}"),
            expected: expected.to_string(),
            actual: announced,
        }),
        _ => Ok(()),
    }
}

/// A pulled image and the name it was given in the store (none for a pull
/// by digest alone).
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The image as stored.
    pub image: StoredImage,
    /// The name it was given in the store.
    pub name: Option<String>,
}

pub(crate) const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

pub(crate) fn verify(what: &str, bytes: &[u8], expected: &str) -> Result<()> {
    let actual = kiln_cache::sha256_digest(bytes).to_string();
    if actual != expected {
        return Err(Error::DigestMismatch {
            what: what.to_owned(),
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// The media type a manifest says it is, from the answer's Content-Type or
/// else the document's own `mediaType`.
pub(crate) fn media_type_of(bytes: &[u8], header: Option<String>) -> String {
    let declared = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        });
    match (declared, header) {
        (Some(declared), _) => declared,
        (None, Some(header)) if header != "application/json" => header,
        // An OCI manifest may leave mediaType out; an index has "manifests".
        _ => {
            let is_index = serde_json::from_slice::<serde_json::Value>(bytes)
                .is_ok_and(|v| v.get("manifests").is_some());
            if is_index {
                INDEX_TYPES[0]
            } else {
                OCI_MANIFEST
            }
            .to_owned()
        }
    }
}

/// Pulls `reference` into the store: from an index, the manifest for
/// `platform`; its blobs fetched in parallel and verified as the store writes
/// them (blobs already stored are skipped, so a retry resumes); then the
/// image is written and, for a tag, named after the reference.
pub fn pull(
    store: &Store,
    client: &Client,
    reference: &Reference,
    platform: &Platform,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<Pulled> {
    let repository = reference.repository.as_str();
    let (mut bytes, header, announced) =
        client.get_manifest(repository, reference.manifest_reference())?;
    let expected = reference.digest.clone().or(announced);
    if let Some(expected) = &expected {
        verify(&format!("the manifest of {reference}"), &bytes, expected)?;
    }
    let mut manifest_digest = kiln_cache::sha256_digest(&bytes);
    let mut media_type = media_type_of(&bytes, header);
    if INDEX_TYPES.contains(&media_type.as_str()) {
        let index = ImageIndex::from_reader(&bytes[..]).map_err(|e| {
            Error::invalid(client.registry(), format!("the index of {reference}"), e)
        })?;
        let entry = choose_platform(&index, platform, reference)?;
        let digest = entry.digest().to_string();
        let (entry_bytes, entry_header, _) = client.get_manifest(repository, &digest)?;
        verify(
            &format!("manifest {digest} of {reference}"),
            &entry_bytes,
            &digest,
        )?;
        bytes = entry_bytes;
        manifest_digest = kiln_cache::sha256_digest(&bytes);
        media_type = media_type_of(&bytes, entry_header);
    }
    let image = fetch_image(
        store,
        client,
        reference,
        &bytes,
        &media_type,
        &manifest_digest,
        progress,
    )?;
    progress(&Progress::Manifest {
        digest: image.id().to_string(),
    });
    let name = match reference.familiar_name() {
        Some(name) => Some(store.tag(&name, &image)?),
        None => None,
    };
    Ok(Pulled { image, name })
}

/// The manifest of `index` for `platform` (the first that matches; entries
/// of platform `unknown`, attestations and signatures, are no images).
fn choose_platform(
    index: &ImageIndex,
    platform: &Platform,
    reference: &Reference,
) -> Result<Descriptor> {
    let mut available = Vec::new();
    let mut chosen = None;
    for entry in index.manifests() {
        let Some(p) = entry.platform() else { continue };
        let entry_platform = Platform {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone(),
        };
        if entry_platform.os == "unknown" {
            // Attestations and signatures, not images.
            continue;
        }
        if chosen.is_none() && platform.matches(&entry_platform) {
            chosen = Some(entry.clone());
        }
        available.push(entry_platform.to_string());
    }
    chosen.ok_or_else(|| Error::NoMatchingPlatform {
        reference: reference.to_string(),
        wanted: platform.to_string(),
        available: if available.is_empty() {
            "nothing".into()
        } else {
            available.join(", ")
        },
    })
}

/// Stores one image manifest of `reference` (its bytes as fetched and
/// verified): its config and layers fetched in parallel (blobs already
/// stored are skipped), an OCI manifest kept byte for byte, a Docker one
/// turned into an OCI one.
fn fetch_image(
    store: &Store,
    client: &Client,
    reference: &Reference,
    bytes: &[u8],
    media_type: &str,
    manifest_digest: &Digest,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<StoredImage> {
    let repository = reference.repository.as_str();
    if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
        return Err(Error::UnsupportedMediaType {
            reference: reference.to_string(),
            media_type: media_type.to_owned(),
        });
    }
    let manifest = ImageManifest::from_reader(bytes).map_err(|e| {
        Error::invalid(client.registry(), format!("the manifest of {reference}"), e)
    })?;
    let mut layers = Vec::new();
    for layer in manifest.layers() {
        kiln_cache::Compression::of_layer_media_type(layer.media_type()).map_err(|_| {
            Error::UnsupportedMediaType {
                reference: reference.to_string(),
                media_type: layer.media_type().to_string(),
            }
        })?;
        layers.push(layer.clone());
    }
    let mut blobs = vec![manifest.config().clone()];
    blobs.extend(layers.iter().cloned());
    parallel(&blobs, PULL_PARALLEL, |blob| {
        fetch_blob(store, client, repository, blob, progress)
    })?;
    if media_type == OCI_MANIFEST {
        // Kept byte for byte, so the image id is the registry's digest.
        store.put_blob(bytes)?;
        Ok(store.read_image(manifest_digest)?)
    } else {
        store_docker_image(store, client, reference, manifest.config(), &layers)
    }
}

/// Stores one blob of `repository` unless the store has it, and remembers
/// where it came from.
fn fetch_blob(
    store: &Store,
    client: &Client,
    repository: &str,
    blob: &Descriptor,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<()> {
    let registry = client.registry();
    let digest = blob.digest();
    if store.has_blob(digest) {
        progress(&Progress::Exists {
            digest: digest.to_string(),
            size: blob.size(),
        });
    } else {
        let mut reader = NetworkReader {
            inner: client.get_blob(repository, digest.as_ref())?,
            failure: None,
        };
        let size = store.put_blob_verified(&mut reader, digest).map_err(|e| {
            match (e, reader.failure.take()) {
                (_, Some(failure)) => Error::Interrupted {
                    registry: registry.to_owned(),
                    what: format!("the download of blob {digest} of {repository}"),
                    message: failure,
                },
                (e, None) => match e {
                    kiln_cache::Error::DigestMismatch { expected, actual } => {
                        Error::DigestMismatch {
                            what: format!("blob {expected} from {registry}/{repository}"),
                            expected,
                            actual,
                        }
                    }
                    other => other.into(),
                },
            }
        })?;
        progress(&Progress::Downloaded {
            digest: digest.to_string(),
            size,
        });
    }
    remember_source(store, registry, repository, digest);
    Ok(())
}

/// Stores an image whose manifest is Docker's (its blobs stored already) as
/// an OCI one: the id differs from the registry's digest, the config and
/// layers do not.
fn store_docker_image(
    store: &Store,
    client: &Client,
    reference: &Reference,
    config: &Descriptor,
    layers: &[Descriptor],
) -> Result<StoredImage> {
    let config_bytes = store.read_blob(config.digest())?;
    let config = kiln_cache::ImageConfiguration::from_reader(&config_bytes[..])
        .map_err(|e| Error::invalid(client.registry(), format!("the config of {reference}"), e))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != layers.len() {
        return Err(Error::invalid(
            client.registry(),
            format!("the image {reference}"),
            format!(
                "its manifest has {} layers but its config {} diff_ids",
                layers.len(),
                diff_ids.len()
            ),
        ));
    }
    let layers = layers
        .iter()
        .zip(diff_ids)
        .map(|(descriptor, diff_id)| {
            let mut descriptor = descriptor.clone();
            descriptor.set_media_type(oci_layer_type(descriptor.media_type()));
            Ok(LayerBlob {
                descriptor,
                diff_id: kiln_cache::parse_sha256(diff_id)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(store.write_image_with_config(&config_bytes, layers)?)
}

/// An index pulled with every platform: the stored index and its name.
#[derive(Debug, Clone)]
pub struct PulledIndex {
    /// The index as stored.
    pub index: StoredIndex,
    /// The name it was given in the store.
    pub name: Option<String>,
}

/// Pulls `reference` with every platform (`kiln pull --all-platforms`):
/// each image of an index, then the index. When every entry is an OCI image
/// manifest the index is kept byte for byte (the registry's digest);
/// otherwise (Docker manifests, attestation entries) the store writes an
/// OCI index of the images. A reference to a single manifest is an error.
pub fn pull_index(
    store: &Store,
    client: &Client,
    reference: &Reference,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<PulledIndex> {
    let repository = reference.repository.as_str();
    let (bytes, header, announced) =
        client.get_manifest(repository, reference.manifest_reference())?;
    if let Some(expected) = reference.digest.clone().or(announced) {
        verify(&format!("the manifest of {reference}"), &bytes, &expected)?;
    }
    let media_type = media_type_of(&bytes, header);
    if !INDEX_TYPES.contains(&media_type.as_str()) {
        return Err(Error::invalid(
            client.registry(),
            reference.to_string(),
            "it is a single-platform image, not an index: pull it without --all-platforms",
        ));
    }
    let index = ImageIndex::from_reader(&bytes[..])
        .map_err(|e| Error::invalid(client.registry(), format!("the index of {reference}"), e))?;
    let mut kept_whole = true;
    let mut manifests = Vec::new();
    for entry in index.manifests() {
        let is_image = kiln_cache::descriptor_platform(entry).is_some_and(|p| p.os != "unknown");
        if !is_image {
            kept_whole = false;
            continue;
        }
        let digest = entry.digest().to_string();
        let (entry_bytes, entry_header, _) = client.get_manifest(repository, &digest)?;
        verify(
            &format!("manifest {digest} of {reference}"),
            &entry_bytes,
            &digest,
        )?;
        let entry_type = media_type_of(&entry_bytes, entry_header);
        let image = fetch_image(
            store,
            client,
            reference,
            &entry_bytes,
            &entry_type,
            entry.digest(),
            progress,
        )?;
        progress(&Progress::Manifest {
            digest: image.id().to_string(),
        });
        kept_whole &= image.id() == entry.digest();
        let mut descriptor = entry.clone();
        descriptor.set_digest(image.id().clone());
        descriptor.set_size(image.manifest_descriptor.size());
        descriptor.set_media_type(MediaType::ImageManifest);
        manifests.push(descriptor);
    }
    let stored = if kept_whole {
        store.put_blob(&bytes)?;
        store.read_image_index(&kiln_cache::sha256_digest(&bytes))?
    } else {
        store.write_image_index(&kiln_cache::NewIndex {
            manifests,
            annotations: index
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        })?
    };
    progress(&Progress::Manifest {
        digest: stored.id().to_string(),
    });
    let name = match reference.familiar_name() {
        Some(name) => Some(store.tag_descriptor(&name, &stored.descriptor)?),
        None => None,
    };
    Ok(PulledIndex {
        index: stored,
        name,
    })
}

/// A blob download that remembers why it failed, so a broken connection is
/// told apart from a store that cannot write.
struct NetworkReader<R> {
    inner: R,
    failure: Option<String>,
}

impl<R: std::io::Read> std::io::Read for NetworkReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            self.failure.get_or_insert_with(|| e.to_string());
        })
    }
}

fn oci_layer_type(media_type: &MediaType) -> MediaType {
    match media_type.to_string().as_str() {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => MediaType::ImageLayerGzip,
        "application/vnd.docker.image.rootfs.diff.tar.zstd" => MediaType::ImageLayerZstd,
        "application/vnd.docker.image.rootfs.diff.tar" => MediaType::ImageLayer,
        _ => media_type.clone(),
    }
}
