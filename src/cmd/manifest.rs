//! `kiln manifest create|add|remove|inspect`: multi-platform image indexes,
//! in the store (from images it has) or in a registry (from images pushed
//! by digest, e.g. by `kiln build --push --push-by-digest` on several
//! machines; only manifests and configs are read).

use std::process::ExitCode;

use anyhow::{bail, Context};
use kiln_cache::{Descriptor, NewIndex, Store, StoredRef};
use kiln_registry::Reference;

use super::images::{emit, find_ref};
use super::registry::{report, Connection};
use super::{CmdResult, Global};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Make an index of images: NAME in the store from stored images (names
    /// or ids; an index gives all its images), or REG/REPO:TAG in the
    /// registry from REG/REPO@sha256:... images (pushed by digest).
    Create(CreateArgs),
    /// Add an image's platform(s) to a stored index (replacing the entry of
    /// the same platform).
    Add(EditArgs),
    /// Remove an image (by name or id) from a stored index.
    Remove(EditArgs),
    /// Print a stored index (or a registry's manifest) as JSON.
    Inspect(InspectArgs),
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// The index: a store name, or REG/REPO:TAG in a registry.
    name: String,
    /// The images, one per platform.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, clap::Args)]
struct EditArgs {
    /// The stored index.
    name: String,
    /// The image (name or id).
    image: String,
}

#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// A stored index or image, or a registry reference.
    name: String,
    #[command(flatten)]
    connection: Connection,
}

pub fn run(global: &Global, args: Args) -> CmdResult {
    match args.command {
        Command::Create(args) => create(global, args),
        Command::Add(args) => edit(global, args, true),
        Command::Remove(args) => edit(global, args, false),
        Command::Inspect(args) => inspect(global, args),
    }
}

/// Images named `REG/REPO@sha256:...` make the index in the registry.
fn registry_sources(images: &[String]) -> Option<Vec<Reference>> {
    images
        .iter()
        .map(|image| {
            let reference = image.parse::<Reference>().ok()?;
            (reference.digest.is_some() && kiln_registry::names_registry(image))
                .then_some(reference)
        })
        .collect()
}

fn create(global: &Global, args: CreateArgs) -> CmdResult {
    if let Some(sources) = registry_sources(&args.images) {
        let target: Reference = args
            .name
            .parse()
            .with_context(|| format!("the index {}", args.name))?;
        if !kiln_registry::names_registry(&args.name) || target.digest.is_some() {
            bail!(
                "{}: the index of REG/REPO@sha256:... images goes to a registry tag: name it REG/REPO:TAG",
                args.name
            );
        }
        let client = args.connection.client(&target)?;
        let created = kiln_registry::create_index(&client, &target, &sources, &report)?;
        let platforms: Vec<String> = created.platforms.iter().map(ToString::to_string).collect();
        eprintln!("pushed {target} ({})", platforms.join(", "));
        emit(created.digest)?;
        return Ok(ExitCode::SUCCESS);
    }
    let store = global.open_store()?;
    let mut manifests: Vec<Descriptor> = Vec::new();
    for image in &args.images {
        for entry in entries_of(&store, image)? {
            add_entry(&mut manifests, entry)?;
        }
    }
    write_and_tag(&store, &args.name, manifests)
}

/// The index entries an image gives: itself, or every image of an index.
fn entries_of(store: &Store, image: &str) -> anyhow::Result<Vec<Descriptor>> {
    Ok(match find_ref(store, image)? {
        StoredRef::Image(image) => vec![image.manifest_descriptor],
        StoredRef::Index(index) => index.images().map(|(entry, _)| entry.clone()).collect(),
    })
}

/// Adds an entry; one of the same platform is an error.
fn add_entry(manifests: &mut Vec<Descriptor>, entry: Descriptor) -> anyhow::Result<()> {
    let platform = kiln_cache::descriptor_platform(&entry);
    if let Some(other) = manifests
        .iter()
        .find(|m| kiln_cache::descriptor_platform(m) == platform)
    {
        bail!(
            "two images for {}: {} and {}; give one image per platform",
            platform.map_or("an unknown platform".into(), |p| p.to_string()),
            other.digest(),
            entry.digest()
        );
    }
    manifests.push(entry);
    Ok(())
}

fn write_and_tag(store: &Store, name: &str, manifests: Vec<Descriptor>) -> CmdResult {
    let index = store.write_image_index(&NewIndex {
        manifests,
        annotations: Default::default(),
    })?;
    let name = store.tag_descriptor(name, &index.descriptor)?;
    let platforms: Vec<String> = index.platforms().iter().map(ToString::to_string).collect();
    eprintln!("tagged {name} ({})", platforms.join(", "));
    emit(index.id())?;
    Ok(ExitCode::SUCCESS)
}

fn edit(global: &Global, args: EditArgs, add: bool) -> CmdResult {
    let store = global.open_store()?;
    let mut manifests: Vec<Descriptor> = match find_ref(&store, &args.name)? {
        StoredRef::Index(index) => index.index.manifests().clone(),
        StoredRef::Image(_) => bail!(
            "{} is one image, not an index: make one with `kiln manifest create {} IMAGE...`",
            args.name,
            args.name
        ),
    };
    let entries = entries_of(&store, &args.image)?;
    if add {
        for entry in entries {
            let platform = kiln_cache::descriptor_platform(&entry);
            manifests.retain(|m| kiln_cache::descriptor_platform(m) != platform);
            manifests.push(entry);
        }
    } else {
        let before = manifests.len();
        manifests.retain(|m| !entries.iter().any(|e| e.digest() == m.digest()));
        if manifests.len() == before {
            bail!("{} is not in {}", args.image, args.name);
        }
        if manifests.is_empty() {
            bail!(
                "{} is the last image of {}: remove the index with `kiln rmi {}`",
                args.image,
                args.name,
                args.name
            );
        }
    }
    write_and_tag(&store, &args.name, manifests)
}

fn inspect(global: &Global, args: InspectArgs) -> CmdResult {
    let store = global.open_store()?;
    if let Some(stored) = store.resolve_ref(&args.name)? {
        let bytes = kiln_cache::ContentStore::read_blob(&store, stored.id())?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)?;
        emit(serde_json::to_string_pretty(&value)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !kiln_registry::names_registry(&args.name) {
        bail!(
            "no image named {:?} in the store; `kiln images` lists them",
            args.name
        );
    }
    let reference: Reference = args.name.parse()?;
    let client = args.connection.client(&reference)?;
    let bytes = kiln_registry::fetch_manifest(&client, &reference)?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)?;
    emit(serde_json::to_string_pretty(&value)?)?;
    Ok(ExitCode::SUCCESS)
}
