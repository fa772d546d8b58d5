//! Multi-platform images in the store: OCI image indexes, named in
//! index.json exactly like single images.
//!
//! The contract:
//! - A name points at an image manifest or at an image index. An index's
//!   entries are image manifests in the store, each descriptor carrying its
//!   `platform` (and `variant` where the architecture has one).
//! - An index is written with sorted keys, so the same manifests and
//!   annotations give the same digest (reproducible builds).
//! - `prune` keeps every manifest a kept index names; `fsck` checks every
//!   entry of a named index as it checks a named image.
//! - Attestations attach to the per-platform manifests, never to the index.

use std::collections::BTreeMap;

use oci_spec::image::{Descriptor, DescriptorBuilder, Digest, ImageIndex, MediaType};

use crate::error::{Error, Result};
use crate::image::StoredImage;
use crate::platform::Platform;
use crate::store::{ContentStore, Store};

/// The OCI image index media type.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// An index to write: one descriptor per platform's manifest (as
/// [`StoredImage::manifest_descriptor`] gives it, plus any annotations) and
/// the index's own annotations.
#[derive(Debug, Clone, Default)]
pub struct NewIndex {
    /// One descriptor per platform's manifest, in the index's order.
    pub manifests: Vec<Descriptor>,
    /// The index's own annotations.
    pub annotations: BTreeMap<String, String>,
}

/// An image index in the store.
#[derive(Debug, Clone)]
pub struct StoredIndex {
    /// Media type, digest and size of the index blob.
    pub descriptor: Descriptor,
    /// The index.
    pub index: ImageIndex,
}

impl StoredIndex {
    /// The index's id: the digest of its blob.
    pub fn id(&self) -> &Digest {
        self.descriptor.digest()
    }

    /// The entries that are images for a platform (attestation manifests
    /// with platform `unknown/unknown`, as BuildKit writes them, are not).
    pub fn images(&self) -> impl Iterator<Item = (&Descriptor, Platform)> {
        self.index.manifests().iter().filter_map(|entry| {
            let platform = descriptor_platform(entry)?;
            (platform.os != "unknown").then_some((entry, platform))
        })
    }

    /// The platforms the index has an image for, in its order.
    pub fn platforms(&self) -> Vec<Platform> {
        self.images().map(|(_, platform)| platform).collect()
    }

    /// The entry for `wanted`: the same OS and architecture, and variant
    /// when both name one.
    pub fn manifest_for(&self, wanted: &Platform) -> Option<&Descriptor> {
        self.images()
            .find(|(_, platform)| wanted.matches(platform))
            .map(|(entry, _)| entry)
    }
}

/// What a name (or id) in the store points at.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // short-lived, one per name resolved
pub enum StoredRef {
    /// A single image.
    Image(StoredImage),
    /// A multi-platform index.
    Index(StoredIndex),
}

impl StoredRef {
    /// The digest of the manifest or index.
    pub fn id(&self) -> &Digest {
        match self {
            StoredRef::Image(image) => image.id(),
            StoredRef::Index(index) => index.id(),
        }
    }

    /// The descriptor a name entry carries.
    pub fn descriptor(&self) -> &Descriptor {
        match self {
            StoredRef::Image(image) => &image.manifest_descriptor,
            StoredRef::Index(index) => &index.descriptor,
        }
    }

    /// The platforms it has an image for.
    pub fn platforms(&self) -> Vec<Platform> {
        match self {
            StoredRef::Image(image) => vec![image.platform()],
            StoredRef::Index(index) => index.platforms(),
        }
    }
}

/// The platform an index entry's descriptor names.
pub fn descriptor_platform(descriptor: &Descriptor) -> Option<Platform> {
    let platform = descriptor.platform().as_ref()?;
    Some(Platform {
        os: platform.os().to_string(),
        architecture: platform.architecture().to_string(),
        variant: platform.variant().clone(),
    })
}

/// Whether a media type is an image index (OCI's or Docker's manifest list).
pub fn is_index_media_type(media_type: &MediaType) -> bool {
    matches!(media_type, MediaType::ImageIndex) || media_type.to_string() == DOCKER_MANIFEST_LIST
}

/// Whether a JSON document is an index (it has `manifests`), whatever its
/// declared media type.
fn looks_like_index(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .is_ok_and(|value| value.get("manifests").is_some_and(|m| m.is_array()))
}

impl Store {
    /// Writes an index of `new.manifests` (each must be stored) and returns
    /// it. The bytes have sorted keys: the same input, the same digest.
    pub fn write_image_index(&self, new: &NewIndex) -> Result<StoredIndex> {
        if new.manifests.is_empty() {
            return Err(Error::invalid("image index", "it names no manifest"));
        }
        for entry in &new.manifests {
            if !self.has_blob(entry.digest()) {
                return Err(Error::MissingBlob(entry.digest().to_string()));
            }
        }
        let mut document = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": new.manifests,
        });
        if !new.annotations.is_empty() {
            document["annotations"] = serde_json::json!(new.annotations);
        }
        // serde_json's maps are sorted: the document is canonical.
        let bytes = serde_json::to_vec(&document).map_err(|e| Error::invalid("image index", e))?;
        let digest = self.put_blob(&bytes)?;
        self.read_image_index(&digest)
    }

    /// Reads the index whose blob has this digest.
    pub fn read_image_index(&self, digest: &Digest) -> Result<StoredIndex> {
        let bytes = self.read_blob(digest)?;
        index_from_bytes(&bytes, digest)
    }

    /// Reads a manifest or an index by digest, telling them apart by content.
    pub fn read_ref(&self, digest: &Digest) -> Result<StoredRef> {
        let bytes = self.read_blob(digest)?;
        if looks_like_index(&bytes) {
            index_from_bytes(&bytes, digest).map(StoredRef::Index)
        } else {
            self.read_image(digest).map(StoredRef::Image)
        }
    }

    /// The image of `stored` for `platform`: the image itself when its
    /// platform matches, the index's entry for it, or `None`.
    pub fn image_for(
        &self,
        stored: &StoredRef,
        platform: &Platform,
    ) -> Result<Option<StoredImage>> {
        match stored {
            StoredRef::Image(image) if platform.matches(&image.platform()) => {
                Ok(Some(image.clone()))
            }
            StoredRef::Image(_) => Ok(None),
            StoredRef::Index(index) => match index.manifest_for(platform) {
                Some(entry) => self.read_image(entry.digest()).map(Some),
                None => Ok(None),
            },
        }
    }
}

impl Store {
    /// The image with `annotations` added to its manifest (its config and
    /// layers unchanged; a new manifest, so a new id). Keys are written
    /// sorted, so the same annotations give the same id.
    pub fn annotate_manifest(
        &self,
        image: &StoredImage,
        annotations: &BTreeMap<String, String>,
    ) -> Result<StoredImage> {
        if annotations.is_empty() {
            return Ok(image.clone());
        }
        let what = || format!("manifest {}", image.id());
        let mut manifest: serde_json::Value = serde_json::from_slice(&self.read_blob(image.id())?)
            .map_err(|e| Error::invalid(what(), e))?;
        let object = manifest
            .as_object_mut()
            .ok_or_else(|| Error::invalid(what(), "it is not a JSON object"))?;
        let merged = object
            .entry("annotations")
            .or_insert_with(|| serde_json::json!({}));
        for (key, value) in annotations {
            merged[key] = serde_json::json!(value);
        }
        let bytes = serde_json::to_vec(&manifest).map_err(|e| Error::invalid(what(), e))?;
        let digest = self.put_blob(&bytes)?;
        self.read_image(&digest)
    }
}

fn index_from_bytes(bytes: &[u8], digest: &Digest) -> Result<StoredIndex> {
    let what = || format!("image index {digest}");
    let index = ImageIndex::from_reader(bytes).map_err(|e| Error::invalid(what(), e))?;
    let descriptor = DescriptorBuilder::default()
        .media_type(MediaType::ImageIndex)
        .size(bytes.len() as u64)
        .digest(digest.clone())
        .build()
        .map_err(|e| Error::invalid(what(), e))?;
    Ok(StoredIndex { descriptor, index })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Compression, NewImage};

    fn image(store: &Store, platform: &str, content: &[u8]) -> StoredImage {
        let mut writer = store.layer_writer(Compression::Gzip).unwrap();
        {
            let mut builder = tar::Builder::new(&mut writer);
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, "arch", content).unwrap();
            builder.finish().unwrap();
        }
        let layer = writer.finish().unwrap();
        store
            .write_image(NewImage {
                platform: platform.parse().unwrap(),
                created: None,
                author: None,
                config: serde_json::Value::Null,
                layers: vec![layer],
                history: vec![],
            })
            .unwrap()
    }

    fn two_platforms(store: &Store) -> (StoredImage, StoredImage, StoredIndex) {
        let amd64 = image(store, "linux/amd64", b"x86_64");
        let mips = image(store, "linux/mips64le", b"mips64");
        let index = store
            .write_image_index(&NewIndex {
                manifests: vec![
                    amd64.manifest_descriptor.clone(),
                    mips.manifest_descriptor.clone(),
                ],
                annotations: BTreeMap::from([
                    ("b".to_owned(), "2".to_owned()),
                    ("a".to_owned(), "1".to_owned()),
                ]),
            })
            .unwrap();
        (amd64, mips, index)
    }

    #[test]
    fn indexes_are_canonical_named_and_resolved_per_platform() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (amd64, mips, index) = two_platforms(&store);
        let again = two_platforms(&store).2;
        assert_eq!(again.id(), index.id(), "same input, same digest");
        let text = String::from_utf8(store.read_blob(index.id()).unwrap()).unwrap();
        assert!(text.find("\"a\"").unwrap() < text.find("\"b\"").unwrap());
        assert!(text.contains("\"mips64le\"") && text.contains(INDEX_MEDIA_TYPE));
        assert_eq!(
            index
                .platforms()
                .iter()
                .map(Platform::to_string)
                .collect::<Vec<_>>(),
            ["linux/amd64", "linux/mips64le"]
        );
        store.tag_descriptor("app", &index.descriptor).unwrap();
        let named = store.resolve_ref("app").unwrap().unwrap();
        assert!(matches!(named, StoredRef::Index(_)));
        let wanted: Platform = "linux/mips64le".parse().unwrap();
        assert_eq!(
            store.image_for(&named, &wanted).unwrap().unwrap().id(),
            mips.id()
        );
        assert!(store
            .image_for(&named, &"linux/arm64".parse().unwrap())
            .unwrap()
            .is_none());
        // A plain resolve of an index is the host's image.
        assert_eq!(store.resolve("app").unwrap().unwrap().id(), amd64.id());
        // `list` has one row per platform.
        let rows = store.list().unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows
            .iter()
            .all(|row| row.index.as_ref() == Some(index.id())));
        assert!(store.fsck(false).unwrap().is_clean());
    }

    #[test]
    fn prune_keeps_what_a_named_index_names_and_fsck_checks_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (amd64, mips, index) = two_platforms(&store);
        store.tag_descriptor("app", &index.descriptor).unwrap();
        assert_eq!(store.prune().unwrap().blobs_removed, 0);
        for image in [&amd64, &mips] {
            assert!(store.has_blob(image.id()));
            assert!(store.has_blob(image.manifest.config().digest()));
        }
        std::fs::remove_file(store.blob_path(mips.manifest.layers()[0].digest()).unwrap()).unwrap();
        let report = store.fsck(false).unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.message.contains("app:latest") && p.message.contains("linux/mips64le")),
            "{:?}",
            report.problems
        );
        store.untag("app").unwrap();
        assert!(store.prune().unwrap().blobs_removed >= 5);
        assert!(!store.has_blob(index.id()) && !store.has_blob(amd64.id()));
    }
}
