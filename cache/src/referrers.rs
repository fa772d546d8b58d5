//! OCI 1.1 referrers in the store: artifacts (an SBOM, a provenance
//! statement, a signature) whose manifest names another manifest as its
//! `subject`.
//!
//! The contract:
//! - An artifact is an OCI image manifest with an `artifactType`, the empty
//!   config (`application/vnd.oci.empty.v1+json`, the blob `{}`), one layer
//!   per document and the image manifest as `subject`. Its blobs live in
//!   `blobs/sha256/` like every other blob.
//! - What refers to what is kept beside index.json, not in it (names stay
//!   names): `kiln/referrers/<subject hex>/<referrer hex>.json` holds the
//!   referrer's descriptor (media type, digest, size, `artifactType`,
//!   annotations), written atomically; adding one never rewrites another,
//!   so processes attaching at once do not race.
//! - A referrer lives exactly as long as its subject: `prune` keeps the
//!   referrers (and their referrers) of every manifest it keeps, and drops
//!   the records and blobs of the rest. `fsck` checks that each record's
//!   manifest is stored, names the record's subject and has its blobs.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, DescriptorBuilder, Digest, ImageManifest, MediaType};
use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::store::{ContentStore, FsckProblem, Marks, Store};

/// The media type of the empty config of an artifact manifest.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The empty config's content.
pub const EMPTY_JSON: &[u8] = b"{}";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A document to attach to an image manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewArtifact {
    /// The manifest's `artifactType`, which is also the layer's media type
    /// (`application/spdx+json`, `application/vnd.in-toto+json`).
    pub artifact_type: String,
    /// The document, stored as the manifest's one layer.
    pub content: Vec<u8>,
    /// Annotations of the layer descriptor (e.g. `in-toto.io/predicate-type`).
    pub layer_annotations: BTreeMap<String, String>,
}

/// A stored artifact read back: its manifest and its documents.
#[derive(Debug, Clone)]
pub struct StoredArtifact {
    /// Media type, digest and size of the artifact's manifest blob.
    pub descriptor: Descriptor,
    /// The manifest.
    pub manifest: ImageManifest,
    /// Each layer's descriptor and bytes.
    pub layers: Vec<(Descriptor, Vec<u8>)>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestOut<'a> {
    schema_version: u32,
    media_type: &'a str,
    artifact_type: &'a str,
    config: DescriptorOut<'a>,
    layers: Vec<DescriptorOut<'a>>,
    subject: DescriptorOut<'a>,
}

/// A descriptor written with sorted annotations, so an artifact's manifest
/// is the same bytes every time (reproducible digests).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DescriptorOut<'a> {
    media_type: &'a str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

static NO_ANNOTATIONS: BTreeMap<String, String> = BTreeMap::new();

impl Store {
    fn referrers_dir(&self) -> PathBuf {
        self.root().join("kiln/referrers")
    }

    fn referrer_records(&self, subject: &Digest) -> PathBuf {
        self.referrers_dir().join(subject.digest())
    }

    /// Stores `artifact` as an OCI artifact manifest whose subject is
    /// `subject` (an image manifest in the store) and records it as a
    /// referrer of it. The same artifact for the same subject gives the same
    /// manifest digest. Returns the referrer's descriptor.
    pub fn attach(&self, subject: &Descriptor, artifact: &NewArtifact) -> Result<Descriptor> {
        if !self.has_blob(subject.digest()) {
            return Err(Error::MissingBlob(subject.digest().to_string()));
        }
        let empty = self.put_blob(EMPTY_JSON)?;
        let layer = self.put_blob(&artifact.content)?;
        let manifest = ManifestOut {
            schema_version: 2,
            media_type: OCI_MANIFEST,
            artifact_type: &artifact.artifact_type,
            config: DescriptorOut {
                media_type: EMPTY_MEDIA_TYPE,
                digest: empty.to_string(),
                size: EMPTY_JSON.len() as u64,
                annotations: &NO_ANNOTATIONS,
            },
            layers: vec![DescriptorOut {
                media_type: &artifact.artifact_type,
                digest: layer.to_string(),
                size: artifact.content.len() as u64,
                annotations: &artifact.layer_annotations,
            }],
            subject: DescriptorOut {
                media_type: OCI_MANIFEST,
                digest: subject.digest().to_string(),
                size: subject.size(),
                annotations: &NO_ANNOTATIONS,
            },
        };
        let bytes =
            serde_json::to_vec(&manifest).map_err(|e| Error::invalid("artifact manifest", e))?;
        let digest = self.put_blob(&bytes)?;
        let descriptor = DescriptorBuilder::default()
            .media_type(MediaType::ImageManifest)
            .digest(digest)
            .size(bytes.len() as u64)
            .artifact_type(MediaType::from(artifact.artifact_type.as_str()))
            .build()
            .map_err(|e| Error::invalid("artifact descriptor", e))?;
        self.add_referrer(subject.digest(), &descriptor)?;
        Ok(descriptor)
    }

    /// Records a stored manifest (pulled or loaded, with its blobs) as a
    /// referrer of `subject`; the manifest must name `subject`.
    pub fn add_referrer(&self, subject: &Digest, referrer: &Descriptor) -> Result<()> {
        let manifest = self.read_referrer_manifest(referrer.digest())?;
        check_referrer(self, subject, &manifest)?;
        let mut record = referrer.clone();
        if record.artifact_type().is_none() {
            // As the referrers API does: the config's media type stands in.
            let artifact_type = manifest
                .artifact_type()
                .clone()
                .unwrap_or_else(|| manifest.config().media_type().clone());
            record.set_artifact_type(Some(artifact_type));
        }
        let bytes = serde_json::to_vec(&record).map_err(|e| Error::invalid("referrer", e))?;
        let dir = fsutil::ensure_dir(&self.referrer_records(subject))?;
        fsutil::write_atomic(
            &self.tmp_dir(),
            &dir.join(format!("{}.json", referrer.digest().digest())),
            &bytes,
        )
    }

    /// The referrers of `subject`, sorted by digest (empty when it has none).
    pub fn referrers(&self, subject: &Digest) -> Result<Vec<Descriptor>> {
        let dir = self.referrer_records(subject);
        let mut found = Vec::new();
        for path in record_files(&dir)? {
            let bytes = fs::read(&path).at(&path)?;
            let descriptor: Descriptor = serde_json::from_slice(&bytes)
                .map_err(|e| Error::invalid(path.display().to_string(), e))?;
            found.push(descriptor);
        }
        found.sort_by_key(|d| d.digest().to_string());
        Ok(found)
    }

    /// Reads a referrer's manifest and its layers (verified).
    pub fn read_artifact(&self, referrer: &Descriptor) -> Result<StoredArtifact> {
        let manifest = self.read_referrer_manifest(referrer.digest())?;
        let layers = manifest
            .layers()
            .iter()
            .map(|layer| Ok((layer.clone(), self.read_blob(layer.digest())?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(StoredArtifact {
            descriptor: referrer.clone(),
            manifest,
            layers,
        })
    }

    fn read_referrer_manifest(&self, digest: &Digest) -> Result<ImageManifest> {
        let bytes = self.read_blob(digest)?;
        ImageManifest::from_reader(&bytes[..])
            .map_err(|e| Error::invalid(format!("referrer manifest {digest}"), e))
    }

    /// Prune's part: the referrers of live manifests become live (and theirs,
    /// until nothing changes); the records of dead subjects are removed.
    pub(crate) fn mark_referrers(&self, live: &mut Marks) -> Result<()> {
        let subjects = subject_dirs(&self.referrers_dir())?;
        let mut marked = std::collections::HashSet::new();
        loop {
            let mut changed = false;
            for (hex, dir) in &subjects {
                if !live.blobs.contains(hex) {
                    continue;
                }
                for path in record_files(dir)? {
                    if !marked.insert(path.clone()) {
                        continue;
                    }
                    let record = fs::read(&path)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Descriptor>(&b).ok());
                    match record {
                        Some(descriptor) if self.has_blob(descriptor.digest()) => {
                            self.mark(descriptor.media_type(), descriptor.digest(), live)?;
                            changed = true;
                        }
                        // A record whose manifest is gone names nothing.
                        _ => fs::remove_file(&path).at(&path)?,
                    }
                }
            }
            if !changed {
                break;
            }
        }
        for (hex, dir) in &subjects {
            if !live.blobs.contains(hex) {
                fs::remove_dir_all(dir).at(dir)?;
            }
        }
        Ok(())
    }

    /// Fsck's part: every record parses, and its manifest is stored, names
    /// the record's subject and has its blobs.
    pub(crate) fn check_referrers(&self, problems: &mut Vec<FsckProblem>) -> Result<()> {
        for (hex, dir) in subject_dirs(&self.referrers_dir())? {
            let subject = fsutil::parse_sha256(&format!("sha256:{hex}")).ok();
            for path in record_files(&dir)? {
                let checked = (|| {
                    let subject = subject.clone().ok_or_else(|| {
                        Error::invalid("the record", "its directory is not a sha256 digest")
                    })?;
                    let bytes = fs::read(&path).at(&path)?;
                    let descriptor: Descriptor = serde_json::from_slice(&bytes)
                        .map_err(|e| Error::invalid("the record", e))?;
                    let manifest = self.read_referrer_manifest(descriptor.digest())?;
                    check_referrer(self, &subject, &manifest)
                })();
                if let Err(e) = checked {
                    problems.push(FsckProblem {
                        path,
                        message: format!("referrer: {e}"),
                    });
                }
            }
        }
        Ok(())
    }
}

/// A referrer's manifest names `subject` and its blobs are stored.
fn check_referrer(store: &Store, subject: &Digest, manifest: &ImageManifest) -> Result<()> {
    match manifest.subject() {
        Some(named) if named.digest() == subject => {}
        Some(named) => {
            return Err(Error::invalid(
                "referrer manifest",
                format!("its subject is {}, not {subject}", named.digest()),
            ))
        }
        None => return Err(Error::invalid("referrer manifest", "it has no subject")),
    }
    for blob in std::iter::once(manifest.config()).chain(manifest.layers()) {
        if !store.has_blob(blob.digest()) {
            return Err(Error::MissingBlob(blob.digest().to_string()));
        }
    }
    Ok(())
}

/// The subject directories under `dir`: (subject hex, path).
fn subject_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.at(dir)?;
        if entry.file_type().at(entry.path())?.is_dir() {
            found.push((
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            ));
        }
    }
    found.sort();
    Ok(found)
}

/// The `*.json` records in a subject's directory (none when it is absent).
fn record_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.at(dir)?.path();
        if path.extension().is_some_and(|e| e == "json") {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::NewImage;
    use crate::platform::Platform;

    fn image(store: &Store, cmd: &str) -> crate::StoredImage {
        store
            .write_image(NewImage {
                platform: "linux/amd64".parse::<Platform>().unwrap(),
                created: None,
                author: None,
                config: serde_json::json!({ "Cmd": [cmd] }),
                layers: vec![],
                history: vec![],
            })
            .unwrap()
    }

    fn sbom() -> NewArtifact {
        NewArtifact {
            artifact_type: "application/spdx+json".into(),
            content: br#"{"spdxVersion":"SPDX-2.3"}"#.to_vec(),
            layer_annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn attached_artifacts_are_oci_1_1_referrers_of_their_subject() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let subject = image(&store, "a");
        let mut provenance = sbom();
        provenance.artifact_type = "application/vnd.in-toto+json".into();
        provenance.layer_annotations.insert(
            "in-toto.io/predicate-type".into(),
            "https://slsa.dev/provenance/v1".into(),
        );
        let first = store.attach(&subject.manifest_descriptor, &sbom()).unwrap();
        let second = store
            .attach(&subject.manifest_descriptor, &provenance)
            .unwrap();
        // The same document again is the same manifest.
        assert_eq!(
            store.attach(&subject.manifest_descriptor, &sbom()).unwrap(),
            first
        );
        let listed = store.referrers(subject.id()).unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.contains(&first) && listed.contains(&second));
        let raw: serde_json::Value =
            serde_json::from_slice(&store.read_blob(second.digest()).unwrap()).unwrap();
        assert_eq!(raw["artifactType"], "application/vnd.in-toto+json");
        assert_eq!(raw["config"]["mediaType"], EMPTY_MEDIA_TYPE);
        assert_eq!(raw["config"]["size"], 2);
        assert_eq!(raw["subject"]["digest"], subject.id().to_string());
        assert_eq!(raw["subject"]["size"], subject.manifest_descriptor.size());
        assert_eq!(
            raw["layers"][0]["annotations"]["in-toto.io/predicate-type"],
            "https://slsa.dev/provenance/v1"
        );
        let artifact = store.read_artifact(&first).unwrap();
        assert_eq!(artifact.layers[0].1, sbom().content);
        assert!(store.referrers(image(&store, "b").id()).unwrap().is_empty());
    }

    #[test]
    fn prune_keeps_referrers_while_their_subject_lives_and_fsck_checks_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let subject = image(&store, "a");
        store.tag("app", &subject).unwrap();
        let referrer = store.attach(&subject.manifest_descriptor, &sbom()).unwrap();
        // A referrer of the referrer (a signature of the SBOM, say).
        let nested = store
            .attach(
                &referrer,
                &NewArtifact {
                    artifact_type: "application/example.signature".into(),
                    content: b"signed".to_vec(),
                    layer_annotations: BTreeMap::new(),
                },
            )
            .unwrap();
        assert_eq!(store.prune().unwrap().blobs_removed, 0);
        assert_eq!(
            store.referrers(subject.id()).unwrap(),
            vec![referrer.clone()]
        );
        assert!(store.has_blob(nested.digest()));
        assert!(store.fsck(false).unwrap().is_clean());

        // A record naming the wrong subject is damage.
        let other = image(&store, "b");
        store.tag("other", &other).unwrap();
        let wrong = store.referrer_records(other.id());
        fs::create_dir_all(&wrong).unwrap();
        fs::copy(
            store
                .referrer_records(subject.id())
                .join(format!("{}.json", referrer.digest().digest())),
            wrong.join("x.json"),
        )
        .unwrap();
        let report = store.fsck(false).unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(report.problems[0].message.contains("subject"));
        fs::remove_dir_all(&wrong).unwrap();

        store.untag("app").unwrap();
        let report = store.prune().unwrap();
        // The image's manifest and config, the SBOM's manifest and layer,
        // the signature's manifest and layer, and the `{}` config.
        assert!(!store.has_blob(subject.id()));
        assert!(!store.has_blob(referrer.digest()));
        assert!(!store.has_blob(nested.digest()));
        assert_eq!(report.blobs_removed, 7, "{report:?}");
        assert!(store.referrers(subject.id()).unwrap().is_empty());
        assert!(!store.referrer_records(subject.id()).exists());
        assert!(store.fsck(false).unwrap().is_clean());
    }

    #[test]
    fn a_referrer_must_name_its_subject() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = image(&store, "a");
        let b = image(&store, "b");
        let referrer = store.attach(&a.manifest_descriptor, &sbom()).unwrap();
        let err = store.add_referrer(b.id(), &referrer).unwrap_err();
        assert!(err.to_string().contains("subject"), "{err}");
    }
}
