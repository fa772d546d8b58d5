//! `kiln attest show` and `kiln inspect --referrers`: the attestations
//! (OCI referrers) a build attached to an image.

use std::process::ExitCode;

use anyhow::bail;
use kiln_cache::{Descriptor, Store, StoredImage};

use super::images::{emit, find};
use super::{CmdResult, Global};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print an attestation of an image: its SBOM (SPDX JSON) or its
    /// provenance (an in-toto statement).
    Show(ShowArgs),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Kind {
    Sbom,
    Provenance,
}

impl Kind {
    fn artifact_type(self) -> &'static str {
        match self {
            Kind::Sbom => kiln_solver::SBOM_ARTIFACT_TYPE,
            Kind::Provenance => kiln_solver::PROVENANCE_ARTIFACT_TYPE,
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Kind::Sbom => "--sbom",
            Kind::Provenance => "--provenance",
        }
    }
}

#[derive(Debug, clap::Args)]
struct ShowArgs {
    /// The image: a name or an id.
    #[arg(value_name = "NAME")]
    image: String,
    /// Which attestation.
    #[arg(long = "type", value_enum)]
    kind: Kind,
    /// The attestation's manifest digest, when the image has several of
    /// that type (`kiln inspect --referrers NAME` lists them).
    #[arg(long, value_name = "sha256:...")]
    digest: Option<String>,
}

pub fn run(global: &Global, args: Args) -> CmdResult {
    match args.command {
        Command::Show(args) => show(global, args),
    }
}

fn show(global: &Global, args: ShowArgs) -> CmdResult {
    let store = global.open_store()?;
    let image = find(&store, &args.image)?;
    let wanted = args.kind.artifact_type();
    let matching: Vec<Descriptor> = store
        .referrers(image.id())?
        .into_iter()
        .filter(|r| {
            r.artifact_type()
                .as_ref()
                .is_some_and(|t| t.to_string() == wanted)
        })
        .filter(|r| {
            args.digest
                .as_deref()
                .is_none_or(|d| r.digest().to_string() == d)
        })
        .collect();
    let referrer = match matching.as_slice() {
        [one] => one,
        [] if args.digest.is_some() => bail!(
            "image {} has no {wanted} attestation {}; `kiln inspect --referrers {}` lists them",
            args.image,
            args.digest.as_deref().unwrap_or_default(),
            args.image
        ),
        [] => bail!(
            "image {} has no {wanted} attestation; build it with {} (or pull it with --referrers)",
            args.image,
            args.kind.flag()
        ),
        several => bail!(
            "image {} has {} {wanted} attestations ({}); pick one with --digest",
            args.image,
            several.len(),
            several
                .iter()
                .map(|r| r.digest().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let artifact = store.read_artifact(referrer)?;
    for (_, bytes) in &artifact.layers {
        emit(String::from_utf8_lossy(bytes).trim_end())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// An image's referrers as the OCI referrers API answers: an image index
/// whose manifests are the referrers' descriptors.
pub(crate) fn referrers_index(
    store: &Store,
    image: &StoredImage,
) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": store.referrers(image.id())?,
    }))
}
