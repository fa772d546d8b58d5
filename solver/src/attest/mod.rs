//! Supply-chain attestations of a build (`--sbom`, `--provenance`): made
//! here, where every input of every step is known, and stored as OCI 1.1
//! referrers of the image manifest (`Store::attach`). A build that asks for
//! none adds nothing: not a blob, not a byte of the image.

mod packages;
mod provenance;
mod sbom;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use kiln_cache::{Descriptor, LayerBlob, NewArtifact, Store, StoredImage};
use kiln_executor::RootfsView;
use kiln_frontend::{Base, CopyFrom, Stage, StepKind};
use sha1::Sha1;
use sha2::{Digest as _, Sha256};

use crate::error::{io_err, Error, Result};
use crate::source::{content_digest, BuildContext};
use provenance::{Dependency, ProvenanceInput, StepRecord};
use sbom::{CopiedFile, SbomInput};

/// The artifact type (and layer media type) of an SPDX JSON SBOM.
pub const SBOM_ARTIFACT_TYPE: &str = "application/spdx+json";
/// The artifact type (and layer media type) of an in-toto statement.
pub const PROVENANCE_ARTIFACT_TYPE: &str = "application/vnd.in-toto+json";
/// The layer annotation naming an in-toto statement's predicate type.
pub const PREDICATE_TYPE_ANNOTATION: &str = "in-toto.io/predicate-type";

/// Which attestations to attach. The default attaches none.
#[derive(Debug, Clone, Default)]
pub struct AttestOptions {
    /// `--provenance[=mode=min|max]`.
    pub provenance: Option<ProvenanceMode>,
    /// `--sbom[=scan-stages=true]`.
    pub sbom: Option<SbomOptions>,
    /// What only the caller knows about the build.
    pub invocation: Invocation,
}

impl AttestOptions {
    /// Whether any attestation is asked for.
    pub fn any(&self) -> bool {
        self.provenance.is_some() || self.sbom.is_some()
    }
}

/// How much the provenance says: `min` the inputs, `max` each step too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProvenanceMode {
    /// The build's inputs: base images, context, invocation.
    #[default]
    Min,
    /// The inputs and every step of the build.
    Max,
}

/// What the SBOM lists beyond the image's own packages and copied files.
#[derive(Debug, Clone, Copy, Default)]
pub struct SbomOptions {
    /// Also list the packages of the build's other stages.
    pub scan_stages: bool,
}

/// The build's parameters as the provenance records them. There is no field
/// for secrets or ssh agents on purpose: they never enter a statement.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// kiln's version.
    pub builder_version: String,
    /// The image's first `-t` name, if any (the statements' subject name).
    pub image_name: Option<String>,
    /// The Dockerfile's name.
    pub dockerfile_path: String,
    /// The sha256 (hex) of the Dockerfile's text.
    pub dockerfile_sha256: String,
    /// `--build-arg`s.
    pub build_args: BTreeMap<String, String>,
    /// `--target`, if given.
    pub target: Option<String>,
    /// The platform the image is built for (set per platform by the
    /// solver).
    pub platform: String,
    /// Where the build context came from.
    pub context: ContextOrigin,
}

/// Where the context came from, when it is not just a local directory.
#[derive(Debug, Clone, Default)]
pub struct ContextOrigin {
    /// The URL or git remote (`git+URL#REF`).
    pub uri: Option<String>,
    /// The commit a git context (or a local git checkout) is at.
    pub git_commit: Option<String>,
}

/// What the solver hands over once the image is written.
pub(crate) struct Finished<'a> {
    pub stages: &'a [&'a Stage],
    pub image: &'a StoredImage,
    pub layers: &'a [LayerBlob],
    /// The layers of the image's COPY/ADD steps from a context.
    pub copied: Vec<LayerBlob>,
    /// Every other stage's name and layers (for `scan-stages=true`).
    pub other_stages: Vec<(String, Vec<LayerBlob>)>,
    pub context: &'a BuildContext,
    /// When the build started (seconds since 1970).
    pub started: i64,
    pub source_date_epoch: Option<i64>,
}

/// Makes the attestations `options` asks for and attaches them to the
/// image. Returns their descriptors (SBOM first).
pub(crate) fn attach(
    store: &Store,
    finished: &Finished<'_>,
    options: &AttestOptions,
) -> Result<Vec<Descriptor>> {
    let mut attached = Vec::new();
    let image_digest = finished.image.id().to_string();
    let image_name = options
        .invocation
        .image_name
        .clone()
        .unwrap_or_else(|| image_digest.clone());
    let now = clamp(now_epoch(), finished.source_date_epoch);
    if let Some(sbom) = &options.sbom {
        let content = sbom_document(store, finished, sbom, &image_name, now, options)?;
        attached.push(store.attach(
            &finished.image.manifest_descriptor,
            &NewArtifact {
                artifact_type: SBOM_ARTIFACT_TYPE.into(),
                content,
                layer_annotations: BTreeMap::new(),
            },
        )?);
    }
    if let Some(mode) = options.provenance {
        let dependencies = dependencies(finished.stages, &options.invocation);
        let steps = step_records(finished.stages);
        let context_key = content_digest(finished.context, &[".".to_owned()])
            .map(|key| hex::encode(key.0))
            .ok();
        let started = clamp(finished.started, finished.source_date_epoch);
        let content = provenance::statement(&ProvenanceInput {
            mode,
            image_digest: &image_digest,
            image_name: &image_name,
            invocation: &options.invocation,
            dependencies: &dependencies,
            steps: &steps,
            context_key,
            started_on: crate::solve::rfc3339(started),
            finished_on: crate::solve::rfc3339(now),
            invocation_id: invocation_id(&image_digest, finished),
            source_date_epoch: finished.source_date_epoch,
        })
        .map_err(|e| Error::Attest {
            what: "provenance",
            source: Box::new(e),
        })?;
        attached.push(store.attach(
            &finished.image.manifest_descriptor,
            &NewArtifact {
                artifact_type: PROVENANCE_ARTIFACT_TYPE.into(),
                content,
                layer_annotations: BTreeMap::from([(
                    PREDICATE_TYPE_ANNOTATION.to_owned(),
                    provenance::PREDICATE_TYPE.to_owned(),
                )]),
            },
        )?);
    }
    Ok(attached)
}

fn sbom_document(
    store: &Store,
    finished: &Finished<'_>,
    options: &SbomOptions,
    image_name: &str,
    now: i64,
    attest: &AttestOptions,
) -> Result<Vec<u8>> {
    let view = image_view(store, finished.layers)?;
    let packages = match &view {
        Some(view) => packages::installed(view)?,
        None => Vec::new(),
    };
    let mut stages = Vec::new();
    if options.scan_stages {
        for (name, layers) in &finished.other_stages {
            let found = match image_view(store, layers)? {
                Some(view) => packages::installed(&view)?,
                None => Vec::new(),
            };
            stages.push((name.clone(), found));
        }
    }
    let files = match &view {
        Some(view) => copied_files(store, view, &finished.copied)?,
        None => Vec::new(),
    };
    sbom::document(&SbomInput {
        image_digest: finished.image.id().as_ref(),
        image_name,
        architecture: &finished.image.platform().architecture,
        packages: &packages,
        stages: &stages,
        files: &files,
        created: &crate::solve::rfc3339(now),
        tool_version: &attest.invocation.builder_version,
    })
    .map_err(|e| Error::Attest {
        what: "sbom",
        source: Box::new(e),
    })
}

/// The merged filesystem of `layers`, their snapshots prepared.
fn image_view(store: &Store, layers: &[LayerBlob]) -> Result<Option<RootfsView>> {
    Ok(crate::solve::filesystem_view(store, layers)?.map(|view| view.0))
}

/// The regular files the COPY layers hold, hashed as the final image has
/// them (a file a later step removed is left out).
fn copied_files(store: &Store, view: &RootfsView, layers: &[LayerBlob]) -> Result<Vec<CopiedFile>> {
    let mut paths = BTreeSet::new();
    for layer in layers {
        let reader = store.open_layer(&layer.descriptor)?;
        let mut archive = tar::Archive::new(reader);
        let what = || format!("layer {}", layer.descriptor.digest());
        for entry in archive.entries().map_err(io_err(what()))? {
            let entry = entry.map_err(io_err(what()))?;
            if entry.header().entry_type().is_file() {
                let path = entry.path().map_err(io_err(what()))?;
                paths.insert(format!(
                    "/{}",
                    path.to_string_lossy().trim_start_matches("./")
                ));
            }
        }
    }
    let mut files = Vec::new();
    for path in paths {
        let Some(entry) = view.lookup(&path, false)? else {
            continue;
        };
        if !entry.metadata.is_file() {
            continue;
        }
        let mut file = std::fs::File::open(&entry.host_path).map_err(io_err(&entry.host_path))?;
        let (mut sha1, mut sha256) = (Sha1::new(), Sha256::new());
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buffer).map_err(io_err(&entry.host_path))?;
            if n == 0 {
                break;
            }
            sha1.update(&buffer[..n]);
            sha256.update(&buffer[..n]);
        }
        files.push(CopiedFile {
            path,
            sha1: hex::encode(sha1.finalize()),
            sha256: hex::encode(sha256.finalize()),
        });
    }
    Ok(files)
}

/// The images, repositories and downloads the build named by content.
fn dependencies(stages: &[&Stage], invocation: &Invocation) -> Vec<Dependency> {
    let mut found: Vec<Dependency> = Vec::new();
    let mut add = |dependency: Dependency| {
        if !found.contains(&dependency) {
            found.push(dependency);
        }
    };
    if let (Some(uri), Some(commit)) = (&invocation.context.uri, &invocation.context.git_commit) {
        add(Dependency {
            uri: uri.clone(),
            digest: Some(("gitCommit".into(), commit.clone())),
        });
    }
    let image = |reference: &str, digest: &str, platform: &str| Dependency {
        uri: format!(
            "pkg:docker/{reference}?platform={}",
            platform.replace('/', "%2F")
        ),
        digest: Some((
            "sha256".into(),
            digest.strip_prefix("sha256:").unwrap_or(digest).to_owned(),
        )),
    };
    for stage in stages {
        if let Base::Image {
            reference,
            image: base,
        } = &stage.base
        {
            add(image(reference, &base.digest, &stage.platform));
        }
        for step in &stage.steps {
            let mut froms = Vec::new();
            match &step.kind {
                StepKind::Copy(copy) => {
                    froms.push(&copy.from);
                    if copy.add {
                        for source in &copy.sources {
                            if crate::fetch::is_url(source)
                                || crate::remote_context::is_git_url(source)
                            {
                                let digest = copy.checksum.as_ref().and_then(|sum| {
                                    let (algorithm, hex) = sum.split_once(':')?;
                                    Some((algorithm.to_owned(), hex.to_owned()))
                                });
                                add(Dependency {
                                    uri: source.clone(),
                                    digest,
                                });
                            }
                        }
                    }
                }
                StepKind::Run(run) => froms.extend(run.mounts.iter().filter_map(|m| m.from())),
                _ => {}
            }
            for from in froms {
                if let CopyFrom::Image {
                    reference,
                    image: from,
                } = from
                {
                    add(image(reference, &from.digest, &stage.platform));
                }
            }
        }
    }
    found
}

/// Each step of the stages the target needs, for `mode=max`.
fn step_records(stages: &[&Stage]) -> Vec<StepRecord> {
    stages
        .iter()
        .flat_map(|stage| {
            stage.steps.iter().map(|step| StepRecord {
                stage: stage.display_name(),
                line: step.span.line as usize,
                command: step.text.to_string(),
            })
        })
        .collect()
}

/// A build's id: derived from the image and SOURCE_DATE_EPOCH when it is
/// set (a reproducible build reproduces its statement), else unique.
fn invocation_id(image_digest: &str, finished: &Finished<'_>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(image_digest.as_bytes());
    match finished.source_date_epoch {
        Some(epoch) => hasher.update(epoch.to_le_bytes()),
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            hasher.update(nanos.to_le_bytes());
            hasher.update(std::process::id().to_le_bytes());
        }
    }
    hex::encode(&hasher.finalize()[..16])
}

fn clamp(time: i64, source_date_epoch: Option<i64>) -> i64 {
    source_date_epoch.map_or(time, |epoch| time.min(epoch))
}

fn now_epoch() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
