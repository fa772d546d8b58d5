//! `kiln save` and `kiln load`: images to and from OCI archives and
//! docker-archives.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kiln_cache::ArchiveFormat;

use super::images::{emit, find_ref};
use super::{CmdResult, Global};

/// The archive format `save` writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// An OCI image layout in a tar (skopeo `oci-archive:`, umoci after untar).
    Oci,
    /// The `docker save` format (`docker load`, podman, skopeo `docker-archive:`).
    Docker,
}

#[derive(Debug, clap::Args)]
pub struct SaveArgs {
    /// The archive format.
    #[arg(long, value_enum, default_value = "oci")]
    format: Format,
    /// The file to write (`-` for stdout).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
    /// Images to save (names or ids).
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
}

pub fn save(global: &Global, args: SaveArgs) -> CmdResult {
    let store = global.open_store()?;
    let mut images = Vec::new();
    for name in &args.names {
        let image = find_ref(&store, name)?;
        // An id saves under each of its names; a name saves under itself.
        let label = match kiln_cache::normalize_name(name) {
            Ok(normal) if store.names()?.iter().any(|(n, _)| *n == normal) => normal,
            _ => store
                .names()?
                .into_iter()
                .find(|(_, digest)| digest == image.id())
                .map(|(n, _)| n)
                .with_context(|| {
                    format!("{name} has no name to save it under; `kiln tag` it first")
                })?,
        };
        images.push((label, image));
    }
    let format = match args.format {
        Format::Oci => ArchiveFormat::Oci,
        Format::Docker => ArchiveFormat::Docker,
    };
    if args.output.as_os_str() == "-" {
        let stdout = std::io::stdout().lock();
        kiln_cache::save_archive_refs(&store, &images, format, BufWriter::new(stdout))?;
    } else {
        // Written beside the target and renamed, so a failed save leaves no half archive.
        let mut temp_name = args.output.as_os_str().to_owned();
        temp_name.push(format!(".kiln-{}.tmp", std::process::id()));
        let temp = PathBuf::from(temp_name);
        let written = (|| -> anyhow::Result<()> {
            let file =
                File::create(&temp).with_context(|| format!("cannot create {}", temp.display()))?;
            let mut writer = BufWriter::new(&file);
            kiln_cache::save_archive_refs(&store, &images, format, &mut writer)?;
            writer.flush()?;
            drop(writer);
            file.sync_all()?;
            std::fs::rename(&temp, &args.output)
                .with_context(|| format!("cannot write {}", args.output.display()))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written?;
    }
    for (name, image) in &images {
        let platforms: Vec<String> = image.platforms().iter().map(ToString::to_string).collect();
        eprintln!("saved {name} ({}, {})", platforms.join(", "), image.id());
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The archive to read (docker-archive or OCI archive, compressed or not);
    /// stdin when absent or `-`.
    #[arg(short = 'i', long = "input", value_name = "FILE")]
    input: Option<PathBuf>,
}

pub fn load(global: &Global, args: LoadArgs) -> CmdResult {
    let store = global.open_store()?;
    let loaded = match args.input.as_deref() {
        None => kiln_cache::load_archive(&store, std::io::stdin())?,
        Some(path) if path.as_os_str() == "-" => {
            kiln_cache::load_archive(&store, std::io::stdin())?
        }
        Some(path) => {
            let file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            kiln_cache::load_archive(&store, file)
                .with_context(|| format!("cannot load {}", path.display()))?
        }
    };
    for image in &loaded {
        if let (Some(index), Some(name)) = (&image.index, &image.name) {
            let platforms: Vec<String> =
                index.platforms().iter().map(ToString::to_string).collect();
            eprintln!("loaded {name} ({})", platforms.join(", "));
            emit(index.id())?;
            continue;
        }
        match &image.name {
            Some(name) => eprintln!("loaded {name} ({})", image.image.platform()),
            None => eprintln!(
                "loaded an unnamed image ({}); `kiln tag {}` names it before `kiln prune` removes it",
                image.image.platform(),
                image.image.id()
            ),
        }
        emit(image.image.id())?;
    }
    Ok(ExitCode::SUCCESS)
}
