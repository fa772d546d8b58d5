//! `kiln images`, `inspect`, `history`, `tag` and `rmi`: the image commands
//! that read and name what is in the store. Data goes to stdout, notes to stderr.

use std::process::ExitCode;

use anyhow::{bail, Context};
use kiln_cache::{NamedImage, Platform, Store, StoredImage, StoredRef};
use serde_json::json;

use super::{CmdResult, Global};

/// How a listing is printed.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// A JSON array for programs.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    /// How to print the list.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

pub fn images(global: &Global, args: ImagesArgs) -> CmdResult {
    let store = global.open_store()?;
    let list = store.list()?;
    match args.format {
        Format::Json => {
            let rows: Vec<_> = list
                .iter()
                .map(|NamedImage { name, image, index }| {
                    let (repository, tag) = split_name(name);
                    json!({
                        "Index": index.as_ref().map(ToString::to_string),
                        "Name": name,
                        "Repository": repository,
                        "Tag": tag,
                        "Id": image.id().to_string(),
                        "Platform": image.platform().to_string(),
                        "Created": image.config.created(),
                        "Size": image.size(),
                    })
                })
                .collect();
            emit(serde_json::to_string_pretty(&rows)?)?;
        }
        Format::Table => {
            let mut rows = vec![[
                "REPOSITORY".to_owned(),
                "TAG".to_owned(),
                "IMAGE ID".to_owned(),
                "PLATFORM".to_owned(),
                "CREATED".to_owned(),
                "SIZE".to_owned(),
            ]];
            for NamedImage { name, image, .. } in &list {
                let (repository, tag) = split_name(name);
                rows.push([
                    repository.to_owned(),
                    tag.to_owned(),
                    short_id(image),
                    image.platform().to_string(),
                    image.config.created().clone().unwrap_or_default(),
                    human_size(image.size()),
                ]);
            }
            print_table(&rows)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Image names or ids.
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
    /// Print the image's referrers (its SBOM, provenance and other OCI 1.1
    /// artifacts) as an OCI image index, one per name, instead.
    #[arg(long)]
    referrers: bool,
    /// Of a multi-platform image, inspect this platform's image instead of
    /// the index.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
}

pub fn inspect(global: &Global, args: InspectArgs) -> CmdResult {
    let store = global.open_store()?;
    let names = store.names()?;
    let platform = args
        .platform
        .as_deref()
        .map(|p| {
            p.parse::<Platform>()
                .with_context(|| format!("--platform {p}"))
        })
        .transpose()?;
    let mut out = Vec::new();
    for name in &args.names {
        let stored = find_ref(&store, name)?;
        let tags: Vec<&str> = names
            .iter()
            .filter(|(_, digest)| digest == stored.id())
            .map(|(name, _)| name.as_str())
            .collect();
        let image = match (&stored, &platform) {
            (_, Some(platform)) => store.image_for(&stored, platform)?.with_context(|| {
                format!(
                    "{name} has no image for {platform}; it has {}",
                    platform_names(&stored)
                )
            })?,
            (StoredRef::Image(image), None) => image.clone(),
            (StoredRef::Index(index), None) if !args.referrers => {
                out.push(json!({
                    "Id": index.id().to_string(),
                    "RepoTags": tags,
                    "MediaType": index.descriptor.media_type().to_string(),
                    "Platforms": index.platforms().iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "Index": index.index,
                }));
                continue;
            }
            (StoredRef::Index(_), None) => bail!(
                "{name} is a multi-platform image: its platforms' images have the referrers; name one with --platform ({})",
                platform_names(&stored)
            ),
        };
        if args.referrers {
            let index = super::attest::referrers_index(&store, &image)?;
            emit(serde_json::to_string_pretty(&index)?)?;
            continue;
        }
        out.push(json!({
            "Id": image.id().to_string(),
            "RepoTags": tags,
            "Platform": image.platform().to_string(),
            "Size": image.size(),
            "ConfigDigest": image.manifest.config().digest().to_string(),
            "Config": image.raw_config,
            "Manifest": image.manifest,
        }));
    }
    if !args.referrers {
        emit(serde_json::to_string_pretty(&out)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn platform_names(stored: &StoredRef) -> String {
    stored
        .platforms()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// Image name or id.
    name: String,
    /// How to print the history.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

pub fn history(global: &Global, args: HistoryArgs) -> CmdResult {
    let store = global.open_store()?;
    let image = find(&store, &args.name)?;
    let layers = image.manifest.layers();
    let mut next_layer = 0;
    // Newest first, as docker prints it; each non-empty entry owns the next layer.
    let mut rows = Vec::new();
    for entry in image.history() {
        let layer = if entry.empty_layer().unwrap_or(false) {
            None
        } else {
            next_layer += 1;
            layers.get(next_layer - 1)
        };
        rows.push((entry, layer));
    }
    rows.reverse();
    match args.format {
        Format::Json => {
            let out: Vec<_> = rows
                .iter()
                .map(|(entry, layer)| {
                    json!({
                        "Created": entry.created(),
                        "CreatedBy": entry.created_by(),
                        "Comment": entry.comment(),
                        "EmptyLayer": entry.empty_layer().unwrap_or(false),
                        "Layer": layer.map(|l| l.digest().to_string()),
                        "Size": layer.map_or(0, |l| l.size()),
                    })
                })
                .collect();
            emit(serde_json::to_string_pretty(&out)?)?;
        }
        Format::Table => {
            let mut table = vec![[
                "LAYER".to_owned(),
                "CREATED".to_owned(),
                "CREATED BY".to_owned(),
                "SIZE".to_owned(),
                "COMMENT".to_owned(),
            ]];
            for (entry, layer) in rows {
                table.push([
                    layer.map_or("<missing>".to_owned(), |l| {
                        l.digest().digest()[..12].to_owned()
                    }),
                    entry.created().clone().unwrap_or_default(),
                    entry.created_by().clone().unwrap_or_default(),
                    human_size(layer.map_or(0, |l| l.size())),
                    entry.comment().clone().unwrap_or_default(),
                ]);
            }
            print_table(&table)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct TagArgs {
    /// The image to name (name or id).
    source: String,
    /// The new name, NAME[:TAG].
    target: String,
}

pub fn tag(global: &Global, args: TagArgs) -> CmdResult {
    let store = global.open_store()?;
    let stored = find_ref(&store, &args.source)?;
    let name = store.tag_descriptor(&args.target, stored.descriptor())?;
    eprintln!("tagged {name}");
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct RmiArgs {
    /// Names (untagged) or ids (every name of the image is removed).
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
    /// Remove the names even when a container (`kiln run`) uses the image;
    /// the image's data stays while the container does.
    #[arg(short, long)]
    force: bool,
}

/// Docker's refusal to remove an image a container uses: the container's
/// name and id, when removing `names` would leave the image with no name.
fn container_conflict(
    store: &kiln_cache::Store,
    image_id: &str,
    names: &[String],
) -> anyhow::Result<Option<String>> {
    let others = store
        .names()?
        .into_iter()
        .filter(|(name, digest)| digest.to_string() == image_id && !names.contains(name))
        .count();
    if others > 0 {
        return Ok(None);
    }
    let containers = kiln_cache::Containers::new(store)?.using_image(image_id)?;
    Ok(containers
        .first()
        .map(|c| format!("{} ({})", c.name, c.short_id())))
}

pub fn rmi(global: &Global, args: RmiArgs) -> CmdResult {
    let store = global.open_store()?;
    let mut failed = false;
    for name in &args.names {
        let is_name = kiln_cache::normalize_name(name).ok().is_some_and(|n| {
            store
                .names()
                .is_ok_and(|names| names.iter().any(|(m, _)| *m == n))
        });
        let image = store.resolve(name);
        if let (false, Ok(Some(image))) = (args.force, &image) {
            let image_id = image.id().to_string();
            // A name removes itself; an id, every name of the image.
            let removed: Vec<String> = if is_name {
                vec![kiln_cache::normalize_name(name)?]
            } else {
                store
                    .names()?
                    .into_iter()
                    .filter(|(_, d)| d.to_string() == image_id)
                    .map(|(n, _)| n)
                    .collect()
            };
            if let Some(container) = container_conflict(&store, &image_id, &removed)? {
                eprintln!(
                    "error: {name}: container {container} uses this image; remove the container first (kiln rm), or force with kiln rmi -f"
                );
                failed = true;
                continue;
            }
        }
        if is_name {
            store.untag(name)?;
            eprintln!("untagged {}", kiln_cache::normalize_name(name)?);
            continue;
        }
        match store.resolve_ref(name) {
            Ok(Some(stored)) => {
                for (tag, digest) in store.names()? {
                    if digest == *stored.id() {
                        store.untag(&tag)?;
                        eprintln!("untagged {tag}");
                    }
                }
            }
            Ok(None) => {
                eprintln!("error: no image named {name:?}");
                failed = true;
            }
            Err(e) => {
                eprintln!("error: {name}: {e}");
                failed = true;
            }
        }
    }
    match super::unpack::prune_after_unpacks(global, &store)? {
        Some(report) if report.blobs_removed > 0 => eprintln!(
            "deleted {} blobs, {} freed",
            report.blobs_removed,
            human_size(report.bytes_freed)
        ),
        Some(_) => {}
        None => eprintln!(
            "another kiln process is using the store; run `kiln prune` later to free the space"
        ),
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Writes one line of data to stdout; a closed pipe (`| head`) ends output quietly.
pub(crate) fn emit(line: impl std::fmt::Display) -> anyhow::Result<()> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{line}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Resolves a name or id, with an error that says how to list what exists.
pub(crate) fn find(store: &Store, name: &str) -> anyhow::Result<StoredImage> {
    match store
        .resolve(name)
        .with_context(|| format!("cannot read image {name:?}"))?
    {
        Some(image) => Ok(image),
        None => bail!("no image named {name:?} in the store; `kiln images` lists them"),
    }
}

/// Resolves a name or id to an image or a multi-platform index.
pub(crate) fn find_ref(store: &Store, name: &str) -> anyhow::Result<StoredRef> {
    match store
        .resolve_ref(name)
        .with_context(|| format!("cannot read image {name:?}"))?
    {
        Some(stored) => Ok(stored),
        None => bail!("no image named {name:?} in the store; `kiln images` lists them"),
    }
}

fn split_name(name: &str) -> (&str, &str) {
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], &name[last_slash + i + 1..]),
        None => (name, ""),
    }
}

fn short_id(image: &StoredImage) -> String {
    image.id().digest()[..12].to_owned()
}

/// Sizes the way docker prints them (decimal units).
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    let decimals = if unit == 0 || value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.decimals$}{}", UNITS[unit])
}

fn print_table<const N: usize>(rows: &[[String; N]]) -> anyhow::Result<()> {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   "));
            }
        }
        emit(line.trim_end())?;
    }
    Ok(())
}
