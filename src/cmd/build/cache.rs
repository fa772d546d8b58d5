//! `--cache-to` and `--cache-from`: build cache shared through a registry
//! (`type=registry,ref=REG/REPO:TAG`) or a directory (`type=local`), as
//! BuildKit takes them. Imports that fail are warnings (the build runs
//! without them); a failed export is an error unless `ignore-error=true`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use kiln_cache::{CacheConfig, CacheDir, CacheSource, Store, DEFAULT_CACHE_TAG};
use kiln_registry::{PushOptions, Reference, RegistryCache};

use super::Connection;
use kiln_solver::Built;

/// Where a build cache lives.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Location {
    Registry {
        reference: Reference,
        insecure: bool,
    },
    Local {
        dir: PathBuf,
        tag: String,
    },
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Registry { reference, .. } => write!(f, "{reference}"),
            Location::Local { dir, tag } => write!(f, "{}:{tag}", dir.display()),
        }
    }
}

/// A `--cache-to`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Export {
    location: Location,
    /// Every step of every stage (`mode=max`), or only the image's (`min`).
    all_steps: bool,
    ignore_error: bool,
}

/// The `k=v` attributes of a cache flag; a bare value is a registry ref.
fn attributes(flag: &str, text: &str) -> anyhow::Result<Vec<(String, String)>> {
    if !text.contains('=') {
        return Ok(vec![
            ("type".into(), "registry".into()),
            ("ref".into(), text.into()),
        ]);
    }
    text.split(',')
        .map(|part| match part.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => bail!("{flag} {text}: {part:?} is not KEY=VALUE"),
        })
        .collect()
}

fn parse_bool(flag: &str, key: &str, value: &str) -> anyhow::Result<bool> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => bail!("{flag} {key}={other}: expected true or false"),
    }
}

/// Parses one `--cache-from` or `--cache-to` (`flag` says which).
fn parse(flag: &str, text: &str) -> anyhow::Result<Export> {
    let path_key = if flag == "--cache-to" { "dest" } else { "src" };
    let usage = format!(
        "expected type=registry,ref=REGISTRY/REPO:TAG or type=local,{path_key}=DIR[,tag=TAG]"
    );
    let mut kind = None;
    let mut reference = None;
    let mut dir = None;
    let mut tag = None;
    let mut insecure = false;
    let mut all_steps = false;
    let mut ignore_error = false;
    for (key, value) in attributes(flag, text)? {
        match key.as_str() {
            "type" => kind = Some(value),
            "ref" => reference = Some(value),
            "tag" => tag = Some(value),
            "insecure" | "registry.insecure" => insecure = parse_bool(flag, &key, &value)?,
            k if k == path_key => dir = Some(PathBuf::from(value)),
            "mode" if flag == "--cache-to" => {
                all_steps = match value.as_str() {
                    "min" => false,
                    "max" => true,
                    other => bail!("{flag} mode={other}: expected min or max"),
                }
            }
            "ignore-error" if flag == "--cache-to" => {
                ignore_error = parse_bool(flag, &key, &value)?
            }
            other => bail!("{flag} {text}: unknown option {other:?}; {usage}"),
        }
    }
    let location = match kind.as_deref() {
        Some("registry") => {
            let Some(reference) = reference else {
                bail!("{flag} {text}: type=registry needs ref=REGISTRY/REPO:TAG");
            };
            let reference: Reference = reference
                .parse()
                .with_context(|| format!("{flag} {text}: the ref"))?;
            Location::Registry {
                reference,
                insecure,
            }
        }
        Some("local") => {
            let Some(dir) = dir else {
                bail!("{flag} {text}: type=local needs {path_key}=DIR");
            };
            Location::Local {
                dir,
                tag: tag.unwrap_or_else(|| DEFAULT_CACHE_TAG.to_owned()),
            }
        }
        Some(other) => bail!("{flag} type={other}: kiln knows registry and local; {usage}"),
        None => bail!("{flag} {text}: say type=registry or type=local; {usage}"),
    };
    Ok(Export {
        location,
        all_steps,
        ignore_error,
    })
}

/// Parses a `--cache-from`.
pub(super) fn parse_from(text: &str) -> anyhow::Result<Location> {
    parse("--cache-from", text).map(|e| e.location)
}

/// Parses a `--cache-to`.
pub(super) fn parse_to(text: &str) -> anyhow::Result<Export> {
    parse("--cache-to", text)
}

fn open(
    location: &Location,
    connection: &Connection,
) -> anyhow::Result<Option<Arc<dyn CacheSource>>> {
    Ok(match location {
        Location::Registry {
            reference,
            insecure,
        } => {
            let client = connection.client_for(reference, *insecure)?;
            match RegistryCache::open(client, reference.clone()) {
                Ok(cache) => {
                    eprintln!("importing build cache {location}: {} records", cache.len());
                    Some(Arc::new(cache))
                }
                Err(kiln_registry::Error::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            }
        }
        Location::Local { dir, tag } => match CacheDir::open(dir, tag)? {
            Some(cache) => {
                eprintln!("importing build cache {location}: {} records", cache.len());
                Some(Arc::new(cache))
            }
            None => None,
        },
    })
}

/// Opens every `--cache-from`. One that is missing or cannot be read is a
/// warning, as with BuildKit: the build runs without it.
pub(super) fn import(locations: &[Location], connection: &Connection) -> Vec<Arc<dyn CacheSource>> {
    let mut sources = Vec::new();
    for location in locations {
        match open(location, connection) {
            Ok(Some(source)) => sources.push(source),
            Ok(None) => {
                eprintln!("warning: --cache-from {location}: not found; building without it")
            }
            Err(e) => eprintln!("warning: --cache-from {location}: {e:#}; building without it"),
        }
    }
    sources
}

/// Writes the records of `built` (all, or the image's) and their blobs to
/// the `--cache-to` location. Blobs of imported records that were never
/// read are fetched only if the destination lacks them.
pub(super) fn export(
    store: &Store,
    built: &[Built],
    sources: &[Arc<dyn CacheSource>],
    export: &Export,
    connection: &Connection,
) -> anyhow::Result<()> {
    let result = (|| -> anyhow::Result<()> {
        // Every platform's records in one cache: keys name their platform.
        let config = CacheConfig::from_records(
            built
                .iter()
                .flat_map(|b| &b.records)
                .filter(|r| export.all_steps || r.in_image)
                .map(|r| (r.key, r.record.clone())),
        );
        let digest = match &export.location {
            Location::Local { dir, tag } => {
                kiln_cache::export_cache_dir(store, sources, &config, dir, tag)?
            }
            Location::Registry {
                reference,
                insecure,
            } => {
                let client = connection.client_for(reference, *insecure)?;
                kiln_registry::push_cache(
                    store,
                    sources,
                    &client,
                    &config,
                    reference,
                    &PushOptions::default(),
                    &|_| {},
                )?
            }
        };
        eprintln!(
            "exported build cache {}: {} records, manifest {digest}",
            export.location,
            config.records.len()
        );
        Ok(())
    })();
    match result {
        Err(e) if export.ignore_error => {
            eprintln!(
                "warning: --cache-to {}: {e:#}; the image is built, the cache not exported",
                export.location
            );
            Ok(())
        }
        Err(e) => Err(e.context(format!(
            "--cache-to {}: the image is built but the cache could not be exported (add ignore-error=true to make this a warning)",
            export.location
        ))),
        Ok(()) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_as_buildkit_takes_them() {
        let to = parse_to("type=registry,ref=127.0.0.1:5000/app:cache,mode=max").unwrap();
        assert!(to.all_steps && !to.ignore_error);
        assert!(matches!(
            &to.location,
            Location::Registry { reference, insecure: false }
                if reference.repository == "app" && reference.tag.as_deref() == Some("cache")
        ));
        let to = parse_to("type=local,dest=/tmp/c,ignore-error=true").unwrap();
        assert!(!to.all_steps && to.ignore_error);
        assert_eq!(
            to.location,
            Location::Local {
                dir: "/tmp/c".into(),
                tag: DEFAULT_CACHE_TAG.into()
            }
        );
        assert_eq!(
            parse_from("type=local,src=/c,tag=main").unwrap(),
            Location::Local {
                dir: "/c".into(),
                tag: "main".into()
            }
        );
        assert!(matches!(
            parse_from("example.com/app:cache").unwrap(),
            Location::Registry { .. }
        ));
    }

    #[test]
    fn bad_flags_say_what_is_expected() {
        for (text, expected) in [
            ("type=local,dest=/c", "unknown option \"dest\""),
            ("type=local", "needs src=DIR"),
            ("type=registry", "needs ref="),
            ("type=s3,ref=x", "kiln knows registry and local"),
            ("ref=x", "say type=registry"),
            ("type=registry,ref=x,mode=max", "unknown option \"mode\""),
        ] {
            let err = format!("{:#}", parse_from(text).unwrap_err());
            assert!(err.contains(expected), "{text}: {err}");
        }
        let err = format!("{:#}", parse_to("type=local,dest=/c,mode=all").unwrap_err());
        assert!(err.contains("expected min or max"), "{err}");
    }
}
