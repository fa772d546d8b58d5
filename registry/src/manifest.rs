//! Multi-platform indexes assembled in the registry (`kiln manifest create
//! REG/REPO:TAG REG/REPO@sha256:...`): the images of several machines'
//! `--push-by-digest` builds joined under one tag. Only manifests and
//! configs are read (a config tells an image's platform); layers never
//! leave the registry: a source in another repository of the same registry
//! is mounted blob by blob.

use std::io::Read;

use kiln_cache::{Digest, ImageConfiguration, ImageManifest, Platform};
use oci_spec::image::ImageIndex;

use crate::client::{Client, Mount};
use crate::error::{Error, Result};
use crate::reference::Reference;
use crate::transfer::{media_type_of, put_manifest_checked, verify, Progress, INDEX_TYPES};

/// The manifest (or index) `reference` names, verified against the digest
/// the reference pins or the registry announces.
pub fn fetch_manifest(client: &Client, reference: &Reference) -> Result<Vec<u8>> {
    let (bytes, _, announced) =
        client.get_manifest(&reference.repository, reference.manifest_reference())?;
    if let Some(expected) = reference.digest.clone().or(announced) {
        verify(&format!("the manifest of {reference}"), &bytes, &expected)?;
    }
    Ok(bytes)
}

/// What an index of the registry was assembled from.
#[derive(Debug, Clone)]
pub struct CreatedIndex {
    /// The digest of the index as pushed.
    pub digest: Digest,
    /// The index document, as pushed.
    pub bytes: Vec<u8>,
    /// The platforms of its entries, in order.
    pub platforms: Vec<Platform>,
}

/// Assembles an OCI image index of `sources` (images, or indexes whose
/// images are all taken, each pinned by digest, on `target`'s registry)
/// and puts it under `target`. Entries come in the sources' order; two
/// images of one platform are an error.
pub fn create_index(
    client: &Client,
    target: &Reference,
    sources: &[Reference],
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<CreatedIndex> {
    let mut entries: Vec<serde_json::Value> = Vec::new();
    let mut platforms: Vec<Platform> = Vec::new();
    for source in sources {
        let invalid =
            |message: String| Error::invalid(client.registry(), source.to_string(), message);
        let Some(digest) = &source.digest else {
            return Err(invalid(
                "name each image by digest (REG/REPO@sha256:...), as `kiln build --push-by-digest` prints it".into(),
            ));
        };
        if source.registry != target.registry {
            return Err(invalid(format!(
                "it is on another registry than {target}: an index can only name manifests of its own registry; push the image to {} first",
                target.registry
            )));
        }
        for (descriptor, platform) in source_images(client, source, digest, target)? {
            if platforms.iter().any(|p| p.matches(&platform)) {
                return Err(invalid(format!(
                    "a second image for {platform}: give one image per platform"
                )));
            }
            platforms.push(platform);
            entries.push(descriptor);
        }
    }
    let document = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_TYPES[0],
        "manifests": entries,
    });
    // serde_json's maps are sorted: the same sources give the same digest.
    let bytes = serde_json::to_vec(&document)
        .map_err(|e| Error::invalid(client.registry(), format!("the index for {target}"), e))?;
    let digest = kiln_cache::sha256_digest(&bytes);
    put_manifest_checked(client, target, INDEX_TYPES[0], &bytes, &digest, "the index")?;
    progress(&Progress::Manifest {
        digest: digest.to_string(),
    });
    Ok(CreatedIndex {
        digest,
        bytes,
        platforms,
    })
}

/// The index entries a source gives (descriptor JSON with its platform),
/// each manifest made present in `target`'s repository.
fn source_images(
    client: &Client,
    source: &Reference,
    digest: &str,
    target: &Reference,
) -> Result<Vec<(serde_json::Value, Platform)>> {
    let elsewhere = source.repository != target.repository;
    let (bytes, header, _) = client.get_manifest(&source.repository, digest)?;
    verify(&format!("the manifest of {source}"), &bytes, digest)?;
    let media_type = media_type_of(&bytes, header);
    if !INDEX_TYPES.contains(&media_type.as_str()) {
        let platform = image_platform(client, source, &bytes)?;
        if elsewhere {
            mount_image(client, source, target, &bytes, &media_type)?;
        }
        let descriptor = serde_json::json!({
            "mediaType": media_type,
            "digest": digest,
            "size": bytes.len(),
            "platform": platform_json(&platform),
        });
        return Ok(vec![(descriptor, platform)]);
    }
    let index = ImageIndex::from_reader(&bytes[..])
        .map_err(|e| Error::invalid(client.registry(), format!("the index {source}"), e))?;
    let mut images = Vec::new();
    for entry in index.manifests() {
        let Some(platform) = kiln_cache::descriptor_platform(entry) else {
            continue;
        };
        if platform.os == "unknown" {
            continue;
        }
        let nested = Reference {
            tag: None,
            digest: Some(entry.digest().to_string()),
            ..source.clone()
        };
        let (entry_bytes, _, _) =
            client.get_manifest(&source.repository, entry.digest().as_ref())?;
        verify(
            &format!("the manifest of {nested}"),
            &entry_bytes,
            entry.digest().as_ref(),
        )?;
        if elsewhere {
            let entry_type = entry.media_type().to_string();
            mount_image(client, &nested, target, &entry_bytes, &entry_type)?;
        }
        let descriptor = serde_json::json!({
            "mediaType": entry.media_type().to_string(),
            "digest": entry.digest().to_string(),
            "size": entry.size(),
            "platform": platform_json(&platform),
        });
        images.push((descriptor, platform));
    }
    Ok(images)
}

/// The platform an image's config records (the config is read, verified;
/// nothing else).
fn image_platform(client: &Client, source: &Reference, manifest: &[u8]) -> Result<Platform> {
    let invalid = |message: String| Error::invalid(client.registry(), source.to_string(), message);
    let manifest = ImageManifest::from_reader(manifest).map_err(|e| invalid(e.to_string()))?;
    let config_digest = manifest.config().digest().to_string();
    let mut config = Vec::new();
    client
        .get_blob(&source.repository, &config_digest)?
        .take(16 << 20)
        .read_to_end(&mut config)
        .map_err(|e| invalid(format!("reading its config: {e}")))?;
    verify(&format!("the config of {source}"), &config, &config_digest)?;
    let config = ImageConfiguration::from_reader(&config[..])
        .map_err(|e| invalid(format!("its config: {e}")))?;
    Ok(Platform {
        os: config.os().to_string(),
        architecture: config.architecture().to_string(),
        variant: config.variant().clone(),
    })
}

fn platform_json(platform: &Platform) -> serde_json::Value {
    let mut json = serde_json::json!({
        "os": platform.os,
        "architecture": platform.architecture,
    });
    if let Some(variant) = &platform.variant {
        json["variant"] = serde_json::json!(variant);
    }
    json
}

/// Makes `source`'s image present in `target`'s repository when it lives in
/// another one: its blobs mounted (never downloaded), then its manifest.
pub(crate) fn mount_image(
    client: &Client,
    source: &Reference,
    target: &Reference,
    manifest_bytes: &[u8],
    media_type: &str,
) -> Result<()> {
    let manifest = ImageManifest::from_reader(manifest_bytes)
        .map_err(|e| Error::invalid(client.registry(), source.to_string(), e))?;
    let mut blobs = vec![manifest.config().digest().to_string()];
    blobs.extend(manifest.layers().iter().map(|l| l.digest().to_string()));
    for blob in blobs {
        if client.blob_exists(&target.repository, &blob)? {
            continue;
        }
        match client.mount_blob(&target.repository, &blob, &source.repository)? {
            Mount::Mounted => {}
            Mount::Started(_) => {
                return Err(Error::invalid(
                    client.registry(),
                    format!("blob {blob} of {source}"),
                    format!(
                        "the registry would not mount it into {}: push the image to that repository (kiln build --push-by-digest -t {}/{})",
                        target.repository, target.registry, target.repository
                    ),
                ))
            }
        }
    }
    let digest = kiln_cache::sha256_digest(manifest_bytes);
    let by_digest = Reference {
        tag: None,
        digest: Some(digest.to_string()),
        ..target.clone()
    };
    put_manifest_checked(
        client,
        &by_digest,
        media_type,
        manifest_bytes,
        &digest,
        "a manifest of the index",
    )
}
