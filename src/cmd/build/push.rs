//! `kiln build --push`: the built image goes to the registry every `-t` name
//! names. The names are checked before anything is built, so a typo costs
//! nothing.

use anyhow::{bail, Context};
use kiln_cache::{Store, StoredRef};
use kiln_registry::{PushOptions, Reference};

use super::render::Renderer;
use crate::cmd::registry::{describe, Connection};

/// The registry references `--push` pushes to, from the `-t` names; every
/// name must start with a registry host.
pub fn targets(tags: &[String]) -> anyhow::Result<Vec<Reference>> {
    if tags.is_empty() {
        bail!("--push needs somewhere to push: name the image with -t REGISTRY/REPO[:TAG]");
    }
    tags.iter()
        .map(|tag| {
            if !kiln_registry::names_registry(tag) {
                bail!(
                    "--push: -t {tag} names no registry; name it REGISTRY/REPO[:TAG] (e.g. registry.example.com/{tag}, or docker.io/USER/... for Docker Hub), or leave out --push to keep it in the store"
                );
            }
            tag.parse::<Reference>()
                .with_context(|| format!("--push: -t {tag}"))
        })
        .collect()
}

/// Pushes what the build made (an image, or an index after every image it
/// names) to every target, reporting through the build's progress. Returns
/// the digest pushed.
pub fn push_all(
    store: &Store,
    stored: &StoredRef,
    targets: &[Reference],
    connection: &Connection,
    renderer: &Renderer,
) -> anyhow::Result<()> {
    for target in targets {
        push_one(store, stored, target, connection, renderer).with_context(|| {
            format!(
                "the image {} is built and tagged, but pushing it to {target} failed; retry with `kiln push {target}`",
                stored.id()
            )
        })?;
    }
    Ok(())
}

/// Pushes to one target (a tag, or with no tag and no digest, by digest
/// alone: `--push-by-digest`).
pub fn push_one(
    store: &Store,
    stored: &StoredRef,
    target: &Reference,
    connection: &Connection,
    renderer: &Renderer,
) -> anyhow::Result<kiln_cache::Digest> {
    let client = connection.client(target)?;
    renderer.message(&format!("pushing {} to {target}", stored.id()));
    let report = |progress: &kiln_registry::Progress| {
        if let Some(line) = describe(progress) {
            renderer.message(&format!("{target}: {line}"));
        }
    };
    let options = PushOptions::default();
    Ok(match stored {
        StoredRef::Image(image) => {
            kiln_registry::push(store, &client, image, target, &options, &report)?
        }
        StoredRef::Index(index) => {
            kiln_registry::push_index(store, &client, index, target, &options, &report)?
        }
    })
}
