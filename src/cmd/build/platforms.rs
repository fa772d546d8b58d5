//! `kiln build` for several platforms: the `--platform` list, the
//! `--annotation` forms, the result (one image, or an OCI image index of
//! one image per platform), per-platform local output and the
//! `--metadata-file` BuildKit writes.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use kiln_cache::{Descriptor, NewIndex, Platform, Store, StoredRef};
use kiln_solver::{Built, ManifestAnnotation};

/// `--platform` values: each a comma-separated list, as buildx takes them.
/// Empty when none was given.
pub fn parse_platforms(values: &[String]) -> anyhow::Result<Vec<Platform>> {
    let mut platforms: Vec<Platform> = Vec::new();
    for text in values.iter().flat_map(|v| v.split(',')) {
        let platform = text
            .trim()
            .parse::<Platform>()
            .with_context(|| format!("--platform {text}"))?;
        if platforms.contains(&platform) {
            bail!("--platform names {platform} twice");
        }
        platforms.push(platform);
    }
    Ok(platforms)
}

/// `--annotation` values by where they go, as BuildKit's forms say:
/// `KEY=VALUE` and `manifest[PLATFORM]:KEY=VALUE` on image manifests,
/// `index:`, `manifest-descriptor:` and `index-descriptor:`.
#[derive(Debug, Default)]
pub struct Annotations {
    pub manifest: Vec<ManifestAnnotation>,
    pub manifest_descriptor: BTreeMap<String, String>,
    pub index: BTreeMap<String, String>,
    pub index_descriptor: BTreeMap<String, String>,
}

impl Annotations {
    pub fn parse(values: &[String]) -> anyhow::Result<Annotations> {
        let mut annotations = Annotations::default();
        for value in values {
            let bad = || {
                anyhow::anyhow!(
                    "--annotation {value}: expected KEY=VALUE or TYPE:KEY=VALUE with TYPE manifest, manifest[OS/ARCH], index, manifest-descriptor or index-descriptor"
                )
            };
            let (kind, pair) = match value.split_once('=') {
                Some((head, _)) if head.contains(':') && !head.starts_with("org.") => {
                    let (kind, pair) = value.split_once(':').ok_or_else(bad)?;
                    (Some(kind), pair)
                }
                _ => (None, value.as_str()),
            };
            let (key, text) = pair.split_once('=').ok_or_else(bad)?;
            if key.is_empty() {
                return Err(bad());
            }
            let (key, text) = (key.to_owned(), text.to_owned());
            match kind {
                None | Some("manifest") => annotations.manifest.push(ManifestAnnotation {
                    platform: None,
                    key,
                    value: text,
                }),
                Some("index") => {
                    annotations.index.insert(key, text);
                }
                Some("manifest-descriptor") => {
                    annotations.manifest_descriptor.insert(key, text);
                }
                Some("index-descriptor") => {
                    annotations.index_descriptor.insert(key, text);
                }
                Some(other) => {
                    let platform = other
                        .strip_prefix("manifest[")
                        .and_then(|rest| rest.strip_suffix(']'))
                        .ok_or_else(bad)?;
                    let platform = platform
                        .parse::<Platform>()
                        .with_context(|| format!("--annotation {value}"))?;
                    annotations.manifest.push(ManifestAnnotation {
                        platform: Some(platform),
                        key,
                        value: text,
                    });
                }
            }
        }
        Ok(annotations)
    }

    /// Index annotations need an index: several platforms.
    pub fn check(&self, platforms: usize) -> anyhow::Result<()> {
        if platforms < 2 && !(self.index.is_empty() && self.index_descriptor.is_empty()) {
            bail!(
                "--annotation index:... and index-descriptor:... annotate the image index a build for several platforms makes: list them with --platform A,B, or use manifest:..."
            );
        }
        Ok(())
    }
}

/// What a build made: its one image, or an index of one image per
/// platform (in `--platform` order), with the descriptor annotations the
/// store's name entries carry.
pub fn assemble(
    store: &Store,
    built: &[Built],
    annotations: &Annotations,
) -> anyhow::Result<StoredRef> {
    let with = |descriptor: &Descriptor, extra: &BTreeMap<String, String>| {
        let mut descriptor = descriptor.clone();
        if !extra.is_empty() {
            let mut all = descriptor.annotations().clone().unwrap_or_default();
            all.extend(extra.clone());
            descriptor.set_annotations(Some(all));
        }
        descriptor
    };
    if let [one] = built {
        let mut image = one.image.clone();
        image.manifest_descriptor =
            with(&image.manifest_descriptor, &annotations.manifest_descriptor);
        return Ok(StoredRef::Image(image));
    }
    let manifests = built
        .iter()
        .map(|b| {
            with(
                &b.image.manifest_descriptor,
                &annotations.manifest_descriptor,
            )
        })
        .collect();
    let mut index = store
        .write_image_index(&NewIndex {
            manifests,
            annotations: annotations.index.clone(),
        })
        .context("cannot write the image index")?;
    index.descriptor = with(&index.descriptor, &annotations.index_descriptor);
    Ok(StoredRef::Index(index))
}

/// The directory of one platform under a local output: `linux_amd64`,
/// `linux_arm_v7`, as BuildKit names them.
pub fn dir_name(platform: &Platform) -> String {
    platform.to_string().replace('/', "_")
}

/// `--output type=local` of several platforms: one directory each.
pub fn export_local(store: &Store, built: &[Built], dest: &Path) -> anyhow::Result<()> {
    if let [one] = built {
        return Ok(kiln_solver::export_filesystem(store, &one.layers, dest)?);
    }
    for one in built {
        let dir = dest.join(dir_name(&one.image.platform()));
        kiln_solver::export_filesystem(store, &one.layers, &dir)
            .with_context(|| format!("cannot write {}", dir.display()))?;
    }
    Ok(())
}

/// The JSON `--metadata-file` gets, with BuildKit's keys:
/// `containerimage.digest`, `containerimage.descriptor`, `image.name` (the
/// names, comma-separated) and, for one image, `containerimage.config.digest`.
pub fn metadata(stored: &StoredRef, names: &[String]) -> serde_json::Value {
    let mut descriptor = serde_json::json!(stored.descriptor());
    if let Some(object) = descriptor.as_object_mut() {
        // The store's name is kiln's, not the image's.
        if let Some(annotations) = object
            .get_mut("annotations")
            .and_then(|a| a.as_object_mut())
        {
            annotations.remove(kiln_cache::REF_NAME);
            if annotations.is_empty() {
                object.remove("annotations");
            }
        }
    }
    let mut out = serde_json::json!({
        "containerimage.digest": stored.id().to_string(),
        "containerimage.descriptor": descriptor,
    });
    if let StoredRef::Image(image) = stored {
        out["containerimage.config.digest"] =
            serde_json::json!(image.manifest.config().digest().to_string());
    }
    if !names.is_empty() {
        out["image.name"] = serde_json::json!(names.join(","));
    }
    out
}

/// Writes the metadata file (beside and renamed, as every output).
pub fn write_metadata(path: &Path, metadata: &serde_json::Value) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(metadata)?;
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".kiln-{}.tmp", std::process::id()));
    std::fs::write(&temp, bytes)
        .and_then(|_| std::fs::rename(&temp, path))
        .with_context(|| format!("--metadata-file: cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_lists_as_buildx_takes_them() {
        let list = parse_platforms(&["linux/amd64,linux/mips64el".into(), "armhf".into()]).unwrap();
        let names: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["linux/amd64", "linux/mips64le", "linux/arm/v7"]);
        assert_eq!(dir_name(&list[2]), "linux_arm_v7");
        assert!(parse_platforms(&["linux/amd64,amd64".into()]).is_err());
        assert!(parse_platforms(&["linux/vax".into()]).is_err());
        assert!(parse_platforms(&[]).unwrap().is_empty());
    }

    #[test]
    fn annotations_in_buildkits_forms() {
        let parsed = Annotations::parse(&[
            "org.opencontainers.image.title=app".into(),
            "manifest:a=1".into(),
            "manifest[linux/arm64]:b=2".into(),
            "index:c=3".into(),
            "manifest-descriptor:d=4".into(),
            "index-descriptor:e=x=y".into(),
        ])
        .unwrap();
        let keys: Vec<(&str, Option<String>)> = parsed
            .manifest
            .iter()
            .map(|a| (a.key.as_str(), a.platform.as_ref().map(ToString::to_string)))
            .collect();
        assert_eq!(
            keys,
            [
                ("org.opencontainers.image.title", None),
                ("a", None),
                ("b", Some("linux/arm64".into()))
            ]
        );
        assert_eq!(parsed.index["c"], "3");
        assert_eq!(parsed.manifest_descriptor["d"], "4");
        assert_eq!(parsed.index_descriptor["e"], "x=y");
        assert!(parsed.check(1).is_err() && parsed.check(2).is_ok());
        for bad in ["novalue", "=v", "blob:k=v", "manifest[vax]:k=v"] {
            assert!(Annotations::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
