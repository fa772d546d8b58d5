//! `kiln save` and `kiln load`: OCI archives (a tarred OCI image layout, as
//! skopeo's `oci-archive:` reads) and docker-archives (`manifest.json`,
//! `repositories`, config and layer tars, as `docker load` reads).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{Descriptor, Digest, ImageIndex, ImageManifest, MediaType};
use serde::{Deserialize, Serialize};

use crate::compression::{decompress_detected, Compression};
use crate::error::{Error, IoContext, Result};
use crate::image::{normalize_name, StoredImage};
use crate::index::{is_index_media_type, StoredIndex, StoredRef};
use crate::store::{ref_name, ContentStore, Store, REF_NAME};

/// The kind of archive `save` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// A tarred OCI image layout.
    Oci,
    /// Docker's `docker save` format.
    Docker,
}

/// An image read by `load`.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    /// The name it was tagged with, if the archive named it.
    pub name: Option<String>,
    /// The image; of a multi-platform index, the one for this machine (or
    /// the first).
    pub image: StoredImage,
    /// The multi-platform index the name points at, when the archive had one
    /// with every entry.
    pub index: Option<StoredIndex>,
}

const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";

#[derive(Debug, Serialize, Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Writes `images` (name, image) to `out` as one archive. Several names may
/// share an image; its blobs are written once.
pub fn save_archive(
    store: &Store,
    images: &[(String, StoredImage)],
    format: ArchiveFormat,
    out: impl Write,
) -> Result<()> {
    let refs: Vec<(String, StoredRef)> = images
        .iter()
        .map(|(name, image)| (name.clone(), StoredRef::Image(image.clone())))
        .collect();
    save_archive_refs(store, &refs, format, out)
}

/// Writes images and multi-platform indexes (name, what it names) to `out`
/// as one archive. An OCI archive keeps an index whole; a docker archive
/// holds one platform per image, so an index is an error there.
pub fn save_archive_refs(
    store: &Store,
    refs: &[(String, StoredRef)],
    format: ArchiveFormat,
    out: impl Write,
) -> Result<()> {
    let mut tar = tar::Builder::new(out);
    match format {
        ArchiveFormat::Oci => save_oci(store, refs, &mut tar)?,
        ArchiveFormat::Docker => {
            let mut images = Vec::new();
            for (name, stored) in refs {
                match stored {
                    StoredRef::Image(image) => images.push((name.clone(), image.clone())),
                    StoredRef::Index(index) => {
                        return Err(Error::invalid(
                            format!("image {name}"),
                            format!(
                                "it is a multi-platform index ({}) and a docker archive holds one platform per image (as `docker load` takes it): write an OCI archive, or save one platform's image by its id",
                                crate::store::platform_list(&index.platforms())
                            ),
                        ))
                    }
                }
            }
            save_docker(store, &images, &mut tar)?
        }
    }
    tar.into_inner()
        .during("finishing the archive")?
        .flush()
        .during("writing the archive")?;
    Ok(())
}

fn file_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(size);
    header
}

fn dir_header() -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_mtime(0);
    header.set_size(0);
    header
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, path: &str, bytes: &[u8]) -> Result<()> {
    tar.append_data(&mut file_header(bytes.len() as u64), path, bytes)
        .during("writing the archive")
}

fn append_blob<W: Write>(
    store: &Store,
    tar: &mut tar::Builder<W>,
    digest: &Digest,
    written: &mut std::collections::HashSet<Digest>,
) -> Result<()> {
    if !written.insert(digest.clone()) {
        return Ok(());
    }
    let file = store.open_blob(digest)?;
    let size = file.metadata().at(store.blob_path(digest)?)?.len();
    tar.append_data(
        &mut file_header(size),
        format!("blobs/sha256/{}", digest.digest()),
        file,
    )
    .during("writing the archive")
}

/// The `blobs/sha256/` directories both archive formats keep their blobs in.
fn append_blob_dirs<W: Write>(tar: &mut tar::Builder<W>) -> Result<()> {
    for dir in ["blobs/", "blobs/sha256/"] {
        tar.append_data(&mut dir_header(), dir, io::empty())
            .during("writing the archive")?;
    }
    Ok(())
}

fn save_oci<W: Write>(
    store: &Store,
    refs: &[(String, StoredRef)],
    tar: &mut tar::Builder<W>,
) -> Result<()> {
    append_blob_dirs(tar)?;
    append_bytes(tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut written = std::collections::HashSet::new();
    let mut entries = Vec::new();
    let mut images = Vec::new();
    for (name, stored) in refs {
        let manifests = match stored {
            StoredRef::Image(image) => vec![image.clone()],
            StoredRef::Index(index) => index
                .images()
                .map(|(entry, _)| store.read_image(entry.digest()))
                .collect::<Result<_>>()?,
        };
        for image in &manifests {
            append_blob(store, tar, image.manifest.config().digest(), &mut written)?;
            for layer in image.manifest.layers() {
                append_blob(store, tar, layer.digest(), &mut written)?;
            }
            append_blob(store, tar, image.id(), &mut written)?;
        }
        images.extend(manifests);
        append_blob(store, tar, stored.id(), &mut written)?;
        let mut descriptor = stored.descriptor().clone();
        let mut annotations = descriptor.annotations().clone().unwrap_or_default();
        annotations.insert(REF_NAME.to_owned(), name.clone());
        annotations.insert(CONTAINERD_IMAGE_NAME.to_owned(), name.clone());
        descriptor.set_annotations(Some(annotations));
        entries.push(descriptor);
    }
    // Referrers (SBOMs, provenance) go along as unnamed index entries: their
    // manifests carry `subject`, so layout readers find them by scanning.
    let mut referrers = Vec::new();
    for image in &images {
        collect_referrers(store, image.id(), &mut referrers)?;
    }
    for referrer in referrers {
        if written.contains(referrer.digest()) {
            continue;
        }
        let manifest = ImageManifest::from_reader(&store.read_blob(referrer.digest())?[..])
            .map_err(|e| Error::invalid(format!("referrer {}", referrer.digest()), e))?;
        append_blob(store, tar, manifest.config().digest(), &mut written)?;
        for layer in manifest.layers() {
            append_blob(store, tar, layer.digest(), &mut written)?;
        }
        append_blob(store, tar, referrer.digest(), &mut written)?;
        entries.push(referrer);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    // Through a JSON value, whose objects keep their keys sorted: the
    // descriptors' annotations are hash maps, and the same images must give
    // the same archive, byte for byte.
    let bytes = serde_json::to_value(&index)
        .and_then(|value| serde_json::to_vec(&value))
        .map_err(|e| Error::invalid("index.json", e))?;
    append_bytes(tar, "index.json", &bytes)
}

/// The referrers of `subject` and, in turn, theirs.
fn collect_referrers(store: &Store, subject: &Digest, into: &mut Vec<Descriptor>) -> Result<()> {
    for referrer in store.referrers(subject)? {
        if into.iter().any(|d| d.digest() == referrer.digest()) {
            continue;
        }
        let digest = referrer.digest().clone();
        into.push(referrer);
        collect_referrers(store, &digest, into)?;
    }
    Ok(())
}

fn save_docker<W: Write>(
    store: &Store,
    images: &[(String, StoredImage)],
    tar: &mut tar::Builder<W>,
) -> Result<()> {
    append_blob_dirs(tar)?;
    let mut written = std::collections::HashSet::new();
    let mut manifest: Vec<DockerManifestEntry> = Vec::new();
    let mut by_id: HashMap<Digest, usize> = HashMap::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (name, image) in images {
        if let Some(&at) = by_id.get(image.id()) {
            if let Some(tags) = manifest.get_mut(at).and_then(|e| e.repo_tags.as_mut()) {
                tags.push(name.clone());
            }
        } else {
            append_blob(store, tar, image.manifest.config().digest(), &mut written)?;
            let mut layers = Vec::new();
            for layer in image.layers()? {
                // docker load wants each layer as the tar its diff_id names.
                if written.insert(layer.diff_id.clone()) {
                    let mut temp = tempfile::tempfile_in(store.tmp_dir()).at(store.tmp_dir())?;
                    let copied = io::copy(&mut store.open_layer(&layer.descriptor)?, &mut temp)
                        .during(format!("decompressing layer {}", layer.descriptor.digest()))?;
                    temp.rewind().during("rewinding a layer")?;
                    tar.append_data(
                        &mut file_header(copied),
                        format!("blobs/sha256/{}", layer.diff_id.digest()),
                        temp,
                    )
                    .during("writing the archive")?;
                }
                layers.push(format!("blobs/sha256/{}", layer.diff_id.digest()));
            }
            by_id.insert(image.id().clone(), manifest.len());
            manifest.push(DockerManifestEntry {
                config: format!("blobs/sha256/{}", image.manifest.config().digest().digest()),
                repo_tags: Some(vec![name.clone()]),
                layers,
            });
        }
        // `repositories` names each tag's top layer by a legacy id; the diff_id hex serves.
        if let (Some((repository, tag)), Some(top)) =
            (split_tag(name), image.config.rootfs().diff_ids().last())
        {
            repositories
                .entry(repository.to_owned())
                .or_default()
                .insert(tag.to_owned(), top.trim_start_matches("sha256:").to_owned());
        }
    }
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| Error::invalid("manifest.json", e))?;
    append_bytes(tar, "manifest.json", &manifest_bytes)?;
    let repositories_bytes =
        serde_json::to_vec(&repositories).map_err(|e| Error::invalid("repositories", e))?;
    append_bytes(tar, "repositories", &repositories_bytes)
}

fn split_tag(name: &str) -> Option<(&str, &str)> {
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let colon = name[last_slash..].rfind(':')? + last_slash;
    Some((&name[..colon], &name[colon + 1..]))
}

/// Reads a docker-archive or an OCI archive (optionally compressed) and
/// stores its images, tagging those the archive names. Every blob is verified
/// against its digest; nothing is written outside the store.
pub fn load_archive(store: &Store, input: impl Read + Send) -> Result<Vec<LoadedImage>> {
    let staging = tempfile::tempdir_in(store.tmp_dir()).at(store.tmp_dir())?;
    let (_, reader) = decompress_detected(input)?;
    unpack_archive(reader, staging.path())?;
    let (loaded, listing) = if staging.path().join("index.json").is_file() {
        (load_oci(store, staging.path())?, "index.json")
    } else if staging.path().join("manifest.json").is_file() {
        (load_docker(store, staging.path())?, "manifest.json")
    } else {
        return Err(Error::BadArchive(
            "the archive has neither index.json (OCI) nor manifest.json (docker); make it with `docker save`, `podman save` or `kiln save`"
                .to_owned(),
        ));
    };
    if loaded.is_empty() {
        return Err(Error::BadArchive(format!(
            "no images in the archive: its {listing} lists none; save at least one image into it"
        )));
    }
    Ok(loaded)
}

/// Checks that `bytes`, the archive's `what`, is JSON at all: a damaged or
/// truncated file is said to be malformed JSON, not a document of the wrong
/// shape.
fn check_json(what: &str, bytes: &[u8]) -> Result<()> {
    match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::BadArchive(format!(
            "{what} of the archive is malformed JSON ({e}); the archive is damaged or was not made by `docker save`, `podman save` or `kiln save`"
        ))),
    }
}

/// Extracts the regular files of an archive into `dir`; names must be plain
/// relative paths (no `..`, no absolute names, no links).
fn unpack_archive(reader: impl Read, dir: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive
        .entries()
        .map_err(|e| Error::BadArchive(format!("not a tar archive: {e}")))?
    {
        let mut entry = entry.map_err(|e| Error::BadArchive(format!("not a tar archive: {e}")))?;
        let name = entry
            .path()
            .map_err(|e| Error::BadArchive(e.to_string()))?
            .into_owned();
        let shown = name.display().to_string();
        let mut relative = PathBuf::new();
        for component in name.components() {
            match component {
                Component::Normal(part) => relative.push(part),
                Component::CurDir => {}
                _ => {
                    return Err(Error::HostileEntry {
                        entry: shown,
                        reason: "archive member names must be relative, without `..`".to_owned(),
                    })
                }
            }
        }
        match entry.header().entry_type() {
            tar::EntryType::Directory => {}
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let target = dir.join(&relative);
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).at(parent)?;
                }
                let mut file = File::create(&target).at(&target)?;
                io::copy(&mut entry, &mut file)
                    .during(format!("reading {shown} from the archive"))?;
            }
            // docker save links identical layers; such links are simply skipped
            // because every layer is looked up by the path manifest.json names.
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let resolved = relative.parent().unwrap_or(Path::new("")).join(&target);
                let resolved = if entry.header().entry_type() == tar::EntryType::Link {
                    target
                } else {
                    resolved
                };
                let source =
                    dir.join(
                        normalize_relative(&resolved).ok_or_else(|| Error::HostileEntry {
                            entry: shown.clone(),
                            reason: "a link that points outside the archive".to_owned(),
                        })?,
                    );
                let link = dir.join(&relative);
                if let Some(parent) = link.parent() {
                    fs::create_dir_all(parent).at(parent)?;
                }
                // Links refer to earlier members; copy so the staging tree has plain files.
                if source.is_file() {
                    fs::copy(&source, &link).at(&link)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn normalize_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            _ => return None,
        }
    }
    Some(out)
}

fn staged_blob(dir: &Path, digest: &Digest) -> Result<PathBuf> {
    if digest.algorithm().as_ref() != "sha256" {
        return Err(Error::BadDigest(digest.to_string()));
    }
    let path = dir.join("blobs/sha256").join(digest.digest());
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::BadArchive(format!(
            "the archive lacks blob {digest}"
        )))
    }
}

fn copy_staged(store: &Store, dir: &Path, digest: &Digest) -> Result<()> {
    if store.has_blob(digest) {
        return Ok(());
    }
    let path = staged_blob(dir, digest)?;
    let mut file = File::open(&path).at(&path)?;
    store.put_blob_verified(&mut file, digest)?;
    Ok(())
}

fn load_oci(store: &Store, dir: &Path) -> Result<Vec<LoadedImage>> {
    let index_path = dir.join("index.json");
    let bytes = fs::read(&index_path).at(&index_path)?;
    check_json("index.json", &bytes)?;
    let index = ImageIndex::from_reader(&bytes[..])
        .map_err(|e| Error::invalid("index.json of the archive", e))?;
    let mut loaded = Vec::new();
    let mut referrers = Vec::new();
    for descriptor in index.manifests() {
        if let Some(subject) = subject_of(dir, descriptor)? {
            referrers.push((subject, descriptor));
            continue;
        }
        let name = archive_name(descriptor);
        if let Some(index) = load_whole_index(store, dir, descriptor)? {
            let stored = StoredRef::Index(index.clone());
            let host = crate::platform::Platform::host();
            let entry = index
                .manifest_for(&host)
                .or_else(|| index.images().next().map(|(entry, _)| entry))
                .ok_or_else(|| Error::BadArchive(format!("index {} has no image", index.id())))?;
            let image = store.read_image(entry.digest())?;
            let name = match name {
                Some(name) => Some(store.tag_descriptor(&name, stored.descriptor())?),
                None => None,
            };
            loaded.push(LoadedImage {
                name,
                image,
                index: Some(index),
            });
            continue;
        }
        let manifest_digest = pick_manifest(dir, descriptor, &crate::platform::Platform::host())?;
        let manifest_path = staged_blob(dir, &manifest_digest)?;
        let manifest = ImageManifest::from_reader(File::open(&manifest_path).at(&manifest_path)?)
            .map_err(|e| Error::invalid(format!("manifest {manifest_digest}"), e))?;
        for layer in manifest.layers() {
            Compression::of_layer_media_type(layer.media_type())?;
            copy_staged(store, dir, layer.digest())?;
        }
        copy_staged(store, dir, manifest.config().digest())?;
        copy_staged(store, dir, &manifest_digest)?;
        let image = store.read_image(&manifest_digest)?;
        image.layers()?;
        let name = match name {
            Some(name) => Some(store.tag(&name, &image)?),
            None => None,
        };
        loaded.push(LoadedImage {
            name,
            image,
            index: None,
        });
    }
    // Referrers whose subject came along (an SBOM of a saved image) are
    // attached to it again; others have nothing to describe here.
    for (subject, descriptor) in referrers {
        let manifest_path = staged_blob(dir, descriptor.digest())?;
        let manifest =
            ImageManifest::from_reader(File::open(&manifest_path).at(&manifest_path)?)
                .map_err(|e| Error::invalid(format!("manifest {}", descriptor.digest()), e))?;
        if !store.has_blob(&subject) {
            continue;
        }
        copy_staged(store, dir, manifest.config().digest())?;
        for layer in manifest.layers() {
            copy_staged(store, dir, layer.digest())?;
        }
        copy_staged(store, dir, descriptor.digest())?;
        store.add_referrer(&subject, descriptor)?;
    }
    Ok(loaded)
}

/// A multi-platform index whose every image entry is in the archive: its
/// manifests, configs and layers and the index itself (byte for byte, so its
/// digest stays) go into the store. `None` for a manifest, or an index the
/// archive has only part of (then one platform's image is loaded).
fn load_whole_index(
    store: &Store,
    dir: &Path,
    descriptor: &Descriptor,
) -> Result<Option<StoredIndex>> {
    if !is_index_media_type(descriptor.media_type()) {
        return Ok(None);
    }
    let path = staged_blob(dir, descriptor.digest())?;
    let index = ImageIndex::from_reader(File::open(&path).at(&path)?)
        .map_err(|e| Error::invalid(format!("index {}", descriptor.digest()), e))?;
    let mut manifests = Vec::new();
    for entry in index.manifests() {
        if !matches!(entry.media_type(), MediaType::ImageManifest) {
            return Ok(None);
        }
        let Ok(manifest_path) = staged_blob(dir, entry.digest()) else {
            return Ok(None);
        };
        let manifest = ImageManifest::from_reader(File::open(&manifest_path).at(&manifest_path)?)
            .map_err(|e| Error::invalid(format!("manifest {}", entry.digest()), e))?;
        let mut blobs = vec![manifest.config().digest().clone()];
        blobs.extend(manifest.layers().iter().map(|l| l.digest().clone()));
        if blobs.iter().any(|digest| staged_blob(dir, digest).is_err()) {
            return Ok(None);
        }
        manifests.push((entry.digest().clone(), blobs));
    }
    for (manifest, blobs) in &manifests {
        for blob in blobs {
            copy_staged(store, dir, blob)?;
        }
        copy_staged(store, dir, manifest)?;
    }
    copy_staged(store, dir, descriptor.digest())?;
    let index = store.read_image_index(descriptor.digest())?;
    for (entry, _) in index.images() {
        store.read_image(entry.digest())?.layers()?;
    }
    Ok(Some(index))
}

/// The subject a layout's index entry names when it is a referrer (an
/// unnamed artifact manifest with `subject`), else `None`.
fn subject_of(dir: &Path, descriptor: &Descriptor) -> Result<Option<Digest>> {
    if ref_name(descriptor).is_some()
        || !matches!(descriptor.media_type(), MediaType::ImageManifest)
    {
        return Ok(None);
    }
    let path = staged_blob(dir, descriptor.digest())?;
    let manifest = ImageManifest::from_reader(File::open(&path).at(&path)?)
        .map_err(|e| Error::invalid(format!("manifest {}", descriptor.digest()), e))?;
    Ok(manifest.subject().as_ref().map(|s| s.digest().clone()))
}

/// Which image of an OCI image layout directory to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutImage<'a> {
    /// The only image of the layout, or the one tagged `latest`.
    Default,
    /// The entry whose `org.opencontainers.image.ref.name` is this tag (or
    /// a full name ending in `:TAG`).
    Tag(&'a str),
    /// The entry (or the manifest) with this digest.
    Digest(&'a str),
}

/// Copies one image of an OCI image layout directory (skopeo's `oci:DIR`,
/// an unpacked `kiln save --format oci`) into the store, verifying every
/// blob, and returns it untagged. From a multi-platform image, `platform`'s
/// manifest is taken (else the first). Nothing is stored unless the layout
/// names the image and holds all its blobs.
pub fn import_oci_layout(
    store: &Store,
    dir: &Path,
    wanted: LayoutImage<'_>,
    platform: &crate::platform::Platform,
) -> Result<StoredImage> {
    let index_path = dir.join("index.json");
    let bytes = fs::read(&index_path).at(&index_path)?;
    check_json("index.json", &bytes)?;
    let index = ImageIndex::from_reader(&bytes[..])
        .map_err(|e| Error::invalid(format!("{}", index_path.display()), e))?;
    let descriptor = layout_entry(&index, wanted, dir)?;
    let manifest_digest = pick_manifest(dir, &descriptor, platform)?;
    let manifest_path = staged_blob(dir, &manifest_digest)?;
    let manifest = ImageManifest::from_reader(File::open(&manifest_path).at(&manifest_path)?)
        .map_err(|e| Error::invalid(format!("manifest {manifest_digest}"), e))?;
    // Every blob is there before any is stored.
    staged_blob(dir, manifest.config().digest())?;
    for layer in manifest.layers() {
        Compression::of_layer_media_type(layer.media_type())?;
        staged_blob(dir, layer.digest())?;
    }
    for layer in manifest.layers() {
        copy_staged(store, dir, layer.digest())?;
    }
    copy_staged(store, dir, manifest.config().digest())?;
    copy_staged(store, dir, &manifest_digest)?;
    let image = store.read_image(&manifest_digest)?;
    image.layers()?;
    Ok(image)
}

/// The index entry of a layout that `wanted` names.
fn layout_entry(index: &ImageIndex, wanted: LayoutImage<'_>, dir: &Path) -> Result<Descriptor> {
    let entries = index.manifests();
    let tag_of = |d: &Descriptor| -> Option<String> {
        let name = ref_name(d)?;
        // A full name (kiln's and docker's archives) or a bare tag (skopeo's).
        Some(match name.rsplit_once(':') {
            Some((_, tag)) if !tag.contains('/') => tag.to_owned(),
            _ if name.contains('/') => "latest".to_owned(),
            _ => name.to_owned(),
        })
    };
    let found = match wanted {
        LayoutImage::Digest(digest) => {
            let found = entries.iter().find(|d| d.digest().to_string() == digest);
            match found {
                Some(d) => Some(d.clone()),
                None => {
                    let parsed: Digest = digest
                        .parse()
                        .map_err(|_| Error::BadDigest(digest.to_owned()))?;
                    // A manifest inside a nested index: take it directly.
                    staged_blob(dir, &parsed)
                        .ok()
                        .map(|_| Descriptor::new(MediaType::ImageManifest, 0, parsed.clone()))
                }
            }
        }
        LayoutImage::Tag(tag) => entries
            .iter()
            .find(|d| tag_of(d).as_deref() == Some(tag))
            .cloned(),
        LayoutImage::Default if entries.len() == 1 => entries.first().cloned(),
        LayoutImage::Default => entries
            .iter()
            .find(|d| tag_of(d).as_deref() == Some("latest"))
            .cloned(),
    };
    found.ok_or_else(|| {
        let tags: Vec<String> = entries.iter().filter_map(tag_of).collect();
        let what = match wanted {
            LayoutImage::Default => "several images and none tagged latest".to_owned(),
            LayoutImage::Tag(tag) => format!("no image tagged {tag:?}"),
            LayoutImage::Digest(digest) => format!("no image {digest}"),
        };
        Error::BadArchive(format!(
            "the OCI layout {} has {what} (its tags: {}); name one with :TAG or @sha256:DIGEST",
            dir.display(),
            if tags.is_empty() {
                "none".to_owned()
            } else {
                tags.join(", ")
            }
        ))
    })
}

/// The image name an OCI archive gives an index entry: containerd's full
/// name when present (docker's OCI archives put only the tag in ref.name),
/// else ref.name when it is a valid name.
fn archive_name(descriptor: &Descriptor) -> Option<String> {
    let annotations = descriptor.annotations().as_ref();
    let full = annotations
        .and_then(|a| a.get(CONTAINERD_IMAGE_NAME))
        .map(String::as_str);
    full.or(ref_name(descriptor))
        .map(familiar_name)
        .and_then(|n| normalize_name(&n).ok())
}

/// docker.io/library/busybox:1 -> busybox:1, as docker shows names.
fn familiar_name(name: &str) -> String {
    let name = name.strip_prefix("docker.io/").unwrap_or(name);
    name.strip_prefix("library/").unwrap_or(name).to_owned()
}

/// An index entry may be a manifest or a nested index (a multi-platform
/// image); from an index `platform`'s manifest is taken, else the first.
fn pick_manifest(
    dir: &Path,
    descriptor: &Descriptor,
    platform: &crate::platform::Platform,
) -> Result<Digest> {
    let media = descriptor.media_type();
    let is_index = matches!(media, MediaType::ImageIndex)
        || media.to_string() == "application/vnd.docker.distribution.manifest.list.v2+json";
    if !is_index {
        return Ok(descriptor.digest().clone());
    }
    let path = staged_blob(dir, descriptor.digest())?;
    let nested = ImageIndex::from_reader(File::open(&path).at(&path)?)
        .map_err(|e| Error::invalid(format!("index {}", descriptor.digest()), e))?;
    let available: Vec<&Descriptor> = nested
        .manifests()
        .iter()
        .filter(|d| staged_blob(dir, d.digest()).is_ok())
        .collect();
    let chosen = available
        .iter()
        .find(|d| {
            d.platform().as_ref().is_some_and(|p| {
                p.architecture().to_string() == platform.architecture
                    && p.os().to_string() == platform.os
            })
        })
        .or(available.first())
        .ok_or_else(|| {
            Error::BadArchive(format!(
                "index {} has no manifest in the archive",
                descriptor.digest()
            ))
        })?;
    pick_manifest(dir, chosen, platform)
}

fn load_docker(store: &Store, dir: &Path) -> Result<Vec<LoadedImage>> {
    let path = dir.join("manifest.json");
    let bytes = fs::read(&path).at(&path)?;
    check_json("manifest.json", &bytes)?;
    let entries: Vec<DockerManifestEntry> = serde_json::from_slice(&bytes)
        .map_err(|e| Error::invalid("manifest.json of the archive", e))?;
    let mut loaded = Vec::new();
    for entry in entries {
        let member = |name: &str| -> Result<PathBuf> {
            let relative =
                normalize_relative(Path::new(name)).ok_or_else(|| Error::HostileEntry {
                    entry: name.to_owned(),
                    reason: "manifest.json names a file outside the archive".to_owned(),
                })?;
            let path = dir.join(relative);
            if path.is_file() {
                Ok(path)
            } else {
                Err(Error::BadArchive(format!(
                    "manifest.json names {name}, which the archive lacks"
                )))
            }
        };
        let config_path = member(&entry.config)?;
        let config_bytes = fs::read(&config_path).at(&config_path)?;
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let layer_path = member(layer)?;
            let file = File::open(&layer_path).at(&layer_path)?;
            // Layers may be plain or compressed tars; store them gzipped like any layer.
            let (_, mut tar_stream) = decompress_detected(file)?;
            let mut writer = store.layer_writer(Compression::Gzip)?;
            io::copy(&mut tar_stream, &mut writer).during(format!("reading layer {layer}"))?;
            layers.push(writer.finish()?);
        }
        let image = store.write_image_with_config(&config_bytes, layers)?;
        let mut name = None;
        for tag in entry.repo_tags.iter().flatten() {
            let familiar = familiar_name(tag);
            name = Some(store.tag(&familiar, &image)?);
        }
        loaded.push(LoadedImage {
            name,
            image,
            index: None,
        });
    }
    Ok(loaded)
}
