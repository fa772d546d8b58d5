//! OCI 1.1 referrers between the store and a registry: an image's
//! attestations go with it on push and come with it on `pull --referrers`.
//!
//! Push puts each referrer's blobs and manifest (by digest). A registry
//! with the referrers API says so with `OCI-Subject` in its answer and
//! indexes them itself; for any other (docker-registry, say) the
//! distribution spec's referrers tag schema is kept: the tag
//! `sha256-<subject hex>` names an image index of the referrers'
//! descriptors, updated by read-modify-write (what is there stays, ours are
//! added). Pull asks the referrers API first and the tag when the API
//! answers 404.

use kiln_cache::{ContentStore, Descriptor, Digest, ImageManifest, Store, StoredImage};
use oci_spec::image::ImageIndex;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::reference::Reference;
use crate::transfer::{push_blobs_of_manifest, Progress, PushOptions};

const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// The referrers tag of a manifest digest: `sha256-<hex>`.
pub fn referrers_tag(digest: &Digest) -> String {
    format!("{}-{}", digest.algorithm().as_ref(), digest.digest())
}

/// Pushes the store's referrers of `image` (and theirs) to `target`'s
/// repository; `image` must be there already. Returns how many.
pub(crate) fn push_referrers(
    store: &Store,
    client: &Client,
    image: &StoredImage,
    target: &Reference,
    options: &PushOptions,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<usize> {
    let repository = target.repository.as_str();
    let mut pending = vec![image.id().clone()];
    let mut pushed = 0;
    while let Some(subject) = pending.pop() {
        let referrers = store.referrers(&subject)?;
        if referrers.is_empty() {
            continue;
        }
        let mut need_tag = false;
        for referrer in &referrers {
            let bytes = push_blobs_of_manifest(
                store,
                client,
                repository,
                referrer.digest(),
                options,
                progress,
            )?;
            let answer = client.put_manifest_answer(
                repository,
                referrer.digest().as_ref(),
                MANIFEST_MEDIA_TYPE,
                &bytes,
            )?;
            need_tag |= answer.subject.is_none();
            progress(&Progress::Manifest {
                digest: referrer.digest().to_string(),
            });
            pending.push(referrer.digest().clone());
            pushed += 1;
        }
        if need_tag {
            update_referrers_tag(client, repository, &subject, &referrers)?;
            progress(&Progress::ReferrersTag {
                tag: referrers_tag(&subject),
            });
        }
    }
    Ok(pushed)
}

/// Adds `referrers` to the index under the subject's referrers tag, keeping
/// what it listed.
fn update_referrers_tag(
    client: &Client,
    repository: &str,
    subject: &Digest,
    referrers: &[Descriptor],
) -> Result<()> {
    let tag = referrers_tag(subject);
    let mut manifests: Vec<serde_json::Value> = match client.get_manifest(repository, &tag) {
        Ok((bytes, _, _)) => serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|index| index.get("manifests")?.as_array().cloned())
            .unwrap_or_default(),
        Err(Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    let before = manifests.clone();
    for referrer in referrers {
        let digest = referrer.digest().to_string();
        if !manifests
            .iter()
            .any(|m| m.get("digest").and_then(|d| d.as_str()) == Some(digest.as_str()))
        {
            manifests.push(
                serde_json::to_value(referrer).map_err(|e| {
                    Error::invalid(client.registry(), format!("referrer {digest}"), e)
                })?,
            );
        }
    }
    if manifests == before && !before.is_empty() {
        return Ok(());
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": manifests,
    });
    let bytes = serde_json::to_vec(&index)
        .map_err(|e| Error::invalid(client.registry(), format!("the index of tag {tag}"), e))?;
    client.put_manifest(repository, &tag, INDEX_MEDIA_TYPE, &bytes)?;
    Ok(())
}

/// The descriptors of `subject`'s referrers in the repository: from the
/// referrers API, else from the referrers tag (none when neither has any).
pub(crate) fn list_referrers(
    client: &Client,
    repository: &str,
    subject: &Digest,
) -> Result<Vec<Descriptor>> {
    let bytes = match client.get_referrers(repository, subject.as_ref())? {
        Some(bytes) => bytes,
        None => match client.get_manifest(repository, &referrers_tag(subject)) {
            Ok((bytes, _, _)) => bytes,
            Err(Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        },
    };
    let index = ImageIndex::from_reader(&bytes[..]).map_err(|e| {
        Error::invalid(
            client.registry(),
            format!("the referrers of {repository}@{subject}"),
            e,
        )
    })?;
    Ok(index.manifests().clone())
}

/// Pulls `subject`'s referrers (and theirs) from `reference`'s repository
/// into the store, verified, and records them as its referrers. Returns
/// their descriptors.
pub fn pull_referrers(
    store: &Store,
    client: &Client,
    reference: &Reference,
    subject: &Digest,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<Vec<Descriptor>> {
    let repository = reference.repository.as_str();
    let mut pulled = Vec::new();
    let mut pending = vec![subject.clone()];
    while let Some(subject) = pending.pop() {
        for referrer in list_referrers(client, repository, &subject)? {
            if pulled
                .iter()
                .any(|d: &Descriptor| d.digest() == referrer.digest())
            {
                continue;
            }
            let digest = referrer.digest().to_string();
            let (bytes, _, _) = client.get_manifest(repository, &digest)?;
            let actual = kiln_cache::sha256_digest(&bytes);
            if actual != *referrer.digest() {
                return Err(Error::DigestMismatch {
                    what: format!("referrer {digest} of {repository}"),
                    expected: digest,
                    actual: actual.to_string(),
                });
            }
            let manifest = ImageManifest::from_reader(&bytes[..])
                .map_err(|e| Error::invalid(client.registry(), format!("referrer {digest}"), e))?;
            for blob in std::iter::once(manifest.config()).chain(manifest.layers()) {
                if store.has_blob(blob.digest()) {
                    continue;
                }
                let mut reader = client.get_blob(repository, blob.digest().as_ref())?;
                let size = store.put_blob_verified(&mut reader, blob.digest())?;
                progress(&Progress::Downloaded {
                    digest: blob.digest().to_string(),
                    size,
                });
            }
            store.put_blob(&bytes)?;
            store.add_referrer(&subject, &referrer)?;
            progress(&Progress::Manifest {
                digest: digest.clone(),
            });
            pending.push(referrer.digest().clone());
            pulled.push(referrer);
        }
    }
    Ok(pulled)
}
