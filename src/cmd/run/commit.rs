//! `kiln commit`: a container's changes (its overlay upper dir) as a new
//! layer on top of its image, with a history entry, and config changes as
//! `kiln import -c` takes them.

use std::process::ExitCode;

use anyhow::Context;
use kiln_cache::{Compression, Containers, HistoryBuilder, NewImage};
use kiln_executor::{DiffOptions, Upper};

use super::runner;
use crate::cmd::{CmdResult, Global};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A Dockerfile instruction to apply to the config: CMD, ENTRYPOINT, ENV,
    /// EXPOSE, LABEL, USER, VOLUME, WORKDIR, STOPSIGNAL, SHELL, HEALTHCHECK, ONBUILD.
    #[arg(short = 'c', long = "change", value_name = "INSTRUCTION")]
    changes: Vec<String>,
    /// A comment for the image's history.
    #[arg(short = 'm', long = "message")]
    message: Option<String>,
    /// The image's author.
    #[arg(short = 'a', long = "author")]
    author: Option<String>,
    /// How the new layer is compressed in the store.
    #[arg(long, default_value = "gzip", value_name = "gzip|zstd|none")]
    compression: String,
    /// The container: its name or id.
    container: String,
    /// The new image's name, NAME[:TAG] [default: untagged].
    image: Option<String>,
}

pub fn run(global: &Global, args: Args) -> CmdResult {
    let compression: Compression = args.compression.parse()?;
    let name = args
        .image
        .as_deref()
        .map(kiln_cache::normalize_name)
        .transpose()?;
    let store = global.open_store()?;
    let containers = Containers::new(&store)?;
    let record = containers.find(&args.container)?;
    let spec: super::options::ContainerSpec = serde_json::from_value(record.spec.clone())
        .with_context(|| format!("container {}: its config does not parse", record.name))?;
    let image = store.resolve(&record.image_id)?.with_context(|| {
        format!(
            "the image of container {} ({}) is no longer in the store",
            record.name, record.image_id
        )
    })?;
    let base_config = image.raw_config.get("config").cloned().unwrap_or_default();
    let config = if args.changes.is_empty() {
        base_config
    } else {
        let parsed: kiln_frontend::ImageConfig = if base_config.is_null() {
            kiln_frontend::ImageConfig::default()
        } else {
            serde_json::from_value(base_config).context("the image's config does not parse")?
        };
        let changed = kiln_frontend::apply_changes(parsed, &args.changes)?;
        serde_json::to_value(&changed).context("serializing the image config")?
    };

    let lowers = runner::image_lowers(&store, &record)?;
    let upper_dir = runner::fs_dir(&containers, &record.id).join("upper");
    let mut layers = image.layers()?;
    let mut writer = store.layer_writer(compression)?;
    let empty = if upper_dir.is_dir() {
        let summary = Upper::new(&upper_dir, lowers)
            .write_layer(&mut writer, &DiffOptions::default())
            .with_context(|| format!("cannot read the changes of container {}", record.name))?;
        summary.empty
    } else {
        true
    };
    if !empty {
        layers.push(writer.finish()?);
    }
    let created = kiln_cache::rfc3339_utc(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    let mut entry = HistoryBuilder::default()
        .created(created.clone())
        .created_by(spec.command_line.clone());
    if let Some(message) = &args.message {
        entry = entry.comment(message.clone());
    }
    if let Some(author) = &args.author {
        entry = entry.author(author.clone());
    }
    if empty {
        entry = entry.empty_layer(true);
    }
    let mut history = image.history().to_vec();
    history.push(entry.build().context("building the history entry")?);
    let committed = store.write_image(NewImage {
        platform: image.platform(),
        created: Some(created),
        author: args.author.clone(),
        config,
        layers,
        history,
    })?;
    if let Some(name) = &name {
        store.tag(name, &committed)?;
    }
    crate::cmd::images::emit(committed.id())?;
    Ok(ExitCode::SUCCESS)
}
