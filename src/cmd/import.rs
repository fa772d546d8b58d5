//! `kiln import`: a rootfs tarball or directory becomes a one-layer base image.
//! The image id (the manifest digest) goes to stdout; what was detected, to stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use kiln_cache::{Compression, HistoryBuilder, NewImage, Platform};

use super::{CmdResult, Global};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image's platform (linux/mips64le, mips64el, arm64, armhf, ...);
    /// default: read from the ELF headers inside the rootfs.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
    /// Import even when --platform disagrees with the ELF headers.
    #[arg(long)]
    force: bool,
    /// A Dockerfile instruction to apply to the config: CMD, ENTRYPOINT, ENV,
    /// EXPOSE, LABEL, USER, VOLUME, WORKDIR, STOPSIGNAL, SHELL, HEALTHCHECK, ONBUILD.
    #[arg(short = 'c', long = "change", value_name = "INSTRUCTION")]
    changes: Vec<String>,
    /// A comment for the image's history.
    #[arg(short = 'm', long = "message")]
    message: Option<String>,
    /// How the layer is compressed in the store.
    #[arg(long, default_value = "gzip", value_name = "gzip|zstd|none")]
    compression: String,
    /// A tar file (compressed with gzip, zstd, xz or bzip2, or not), `-` for
    /// stdin, or a directory.
    source: PathBuf,
    /// The image name, NAME[:TAG].
    name: String,
}

pub fn run(global: &Global, args: Args) -> CmdResult {
    let compression: Compression = args.compression.parse()?;
    let requested: Option<Platform> = args
        .platform
        .as_deref()
        .map(str::parse)
        .transpose()
        .context("--platform")?;
    let name = kiln_cache::normalize_name(&args.name)?;
    let config =
        kiln_frontend::apply_changes(kiln_frontend::ImageConfig::default(), &args.changes)?;
    let config = serde_json::to_value(&config).context("serializing the image config")?;
    let store = global.open_store()?;

    let from_stdin = args.source.as_os_str() == "-";
    let imported = if from_stdin {
        eprintln!("importing from stdin");
        kiln_cache::import_tar(&store, std::io::stdin(), compression)?
    } else if args.source.is_dir() {
        eprintln!("importing directory {}", args.source.display());
        kiln_cache::import_directory(&store, &args.source, compression)?
    } else {
        let file = std::fs::File::open(&args.source)
            .with_context(|| format!("cannot open {}", args.source.display()))?;
        kiln_cache::import_tar(&store, file, compression)
            .with_context(|| format!("cannot import {}", args.source.display()))?
    };
    for line in &imported.cleaned {
        eprintln!("cleaned {line}");
    }
    eprintln!(
        "read {} entries ({} input), layer {} ({} bytes, {compression})",
        imported.entries,
        imported.input_compression,
        imported.layer.descriptor.digest(),
        imported.layer.descriptor.size()
    );

    let platform = match (&requested, &imported.detected) {
        (None, Some(detected)) => {
            eprintln!(
                "detected {} from {} ({})",
                detected.platform, detected.evidence, detected.elf
            );
            detected.platform.clone()
        }
        (None, None) => bail!(
            "no ELF executable in the rootfs tells its architecture; pass --platform (e.g. --platform linux/mips64le)"
        ),
        (Some(requested), Some(detected)) if !requested.matches(&detected.platform) => {
            if !args.force {
                bail!(
                    "--platform {requested} disagrees with the rootfs: {} is {} ({}); fix --platform or pass --force to record {requested} anyway",
                    detected.evidence,
                    detected.platform,
                    detected.elf
                );
            }
            eprintln!(
                "warning: recording {requested} although {} is {} (--force)",
                detected.evidence, detected.platform
            );
            requested.clone()
        }
        (Some(requested), detected) => {
            match detected {
                Some(d) => eprintln!("detected {} from {} ({})", d.platform, d.evidence, d.elf),
                None => eprintln!("no ELF executable found; using --platform {requested}"),
            }
            // The detected variant is more precise when --platform named none.
            match detected {
                Some(d) if requested.variant.is_none() => d.platform.clone(),
                _ => requested.clone(),
            }
        }
    };

    // Reproducible by default: the newest file in the rootfs dates the image.
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) if !value.is_empty() => value
            .trim()
            .parse::<u64>()
            .context("SOURCE_DATE_EPOCH must be whole seconds since 1970-01-01")?,
        _ => imported.newest_mtime,
    };
    let created = kiln_cache::rfc3339_utc(epoch);
    let source_name = if from_stdin {
        "-".to_owned()
    } else {
        args.source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| args.source.display().to_string())
    };
    let mut history = HistoryBuilder::default()
        .created(created.clone())
        .created_by(format!("kiln import {source_name}"));
    if let Some(message) = &args.message {
        history = history.comment(message.clone());
    }
    let history = history.build().context("building the history entry")?;
    let image = store.write_image(NewImage {
        platform,
        created: Some(created),
        author: None,
        config,
        layers: vec![imported.layer],
        history: vec![history],
    })?;
    store.tag(&name, &image)?;
    eprintln!("tagged {name} ({})", image.platform());
    // The first RUN on the image finds its snapshot made (or being made).
    super::unpack::spawn(global, image.id().as_ref());
    super::images::emit(image.id())?;
    Ok(ExitCode::SUCCESS)
}
