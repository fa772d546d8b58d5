//! Images as the store writes and reads them: `NewImage` (what a builder
//! hands over) and `StoredImage` (a manifest, its config and layers, read
//! back by digest).

use oci_spec::image::{Descriptor, Digest, History, ImageConfiguration, ImageManifest};

use crate::error::{Error, Result};
use crate::layer::LayerBlob;
use crate::platform::Platform;

/// An image to write: the store builds its config (platform, created, author,
/// the Docker-shaped `config` object, rootfs diff_ids, history) and manifest.
#[derive(Debug, Clone)]
pub struct NewImage {
    /// The platform the image runs on.
    pub platform: Platform,
    /// RFC 3339 time; `None` leaves `created` out (reproducible by default).
    pub created: Option<String>,
    /// The config's `author`; `None` leaves it out.
    pub author: Option<String>,
    /// The Docker-shaped "config" object (Env, Cmd, Entrypoint, ...), kept
    /// exactly, so Docker's extension fields (Healthcheck, Shell, OnBuild) survive.
    /// `null` means an empty config.
    pub config: serde_json::Value,
    /// The layers, bottom first.
    pub layers: Vec<LayerBlob>,
    /// One entry per instruction, with `empty_layer` set for those without a layer.
    pub history: Vec<History>,
}

/// An image in the store. Its id is the manifest digest.
#[derive(Debug, Clone)]
pub struct StoredImage {
    /// Media type, digest (the image id) and size of the manifest blob.
    pub manifest_descriptor: Descriptor,
    /// The manifest.
    pub manifest: ImageManifest,
    /// The config parsed by oci-spec (which drops fields it does not know).
    pub config: ImageConfiguration,
    /// The config exactly as stored, with every field.
    pub raw_config: serde_json::Value,
}

impl StoredImage {
    /// The image id: the digest of its manifest.
    pub fn id(&self) -> &Digest {
        self.manifest_descriptor.digest()
    }

    /// The platform its config records.
    pub fn platform(&self) -> Platform {
        Platform {
            os: self.config.os().to_string(),
            architecture: self.config.architecture().to_string(),
            variant: self.config.variant().clone(),
        }
    }

    /// The layers with their diff_ids, bottom first.
    pub fn layers(&self) -> Result<Vec<LayerBlob>> {
        let diff_ids = self.config.rootfs().diff_ids();
        if diff_ids.len() != self.manifest.layers().len() {
            return Err(Error::invalid(
                format!("image {}", self.id()),
                format!(
                    "its manifest has {} layers but its config {} diff_ids",
                    self.manifest.layers().len(),
                    diff_ids.len()
                ),
            ));
        }
        self.manifest
            .layers()
            .iter()
            .zip(diff_ids)
            .map(|(descriptor, diff_id)| {
                Ok(LayerBlob {
                    descriptor: descriptor.clone(),
                    diff_id: crate::fsutil::parse_sha256(diff_id)?,
                })
            })
            .collect()
    }

    /// The diff_ids, bottom first.
    pub fn diff_ids(&self) -> Result<Vec<Digest>> {
        Ok(self.layers()?.into_iter().map(|l| l.diff_id).collect())
    }

    /// Bytes of the manifest, config and layer blobs.
    pub fn size(&self) -> u64 {
        self.manifest_descriptor.size()
            + self.manifest.config().size()
            + self.manifest.layers().iter().map(|l| l.size()).sum::<u64>()
    }

    /// The `history` of the config (empty when absent).
    pub fn history(&self) -> &[History] {
        self.config.history().as_deref().unwrap_or(&[])
    }
}

/// An image name in the store with the image it points at.
#[derive(Debug, Clone)]
pub struct NamedImage {
    /// The name (`REPO:TAG`).
    pub name: String,
    /// The image it names (for an index, the platform's image).
    pub image: StoredImage,
    /// The index the name points at, when the image is one of its platforms.
    pub index: Option<Digest>,
}

/// Docker's rule for a tag: 1 to 128 of `[A-Za-z0-9_.-]`, not starting with
/// `.` or `-`. The store's names and registry references share it.
pub fn is_valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Docker's rule for a repository path component (between slashes):
/// lowercase letters, digits and `._-`, starting and ending with a letter or
/// digit.
pub fn is_valid_path_component(component: &str) -> bool {
    !component.is_empty()
        && component
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        && component.starts_with(|c: char| c.is_ascii_alphanumeric())
        && component.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Normalises an image reference `NAME[:TAG]`: adds `:latest` when there is
/// no tag and checks Docker's rules (lowercase path components of `[a-z0-9._-]`,
/// an optional `host[:port]/` first, a tag of `[A-Za-z0-9_.-]`, at most 128).
pub fn normalize_name(name: &str) -> Result<String> {
    let bad = |reason: &str| Error::BadName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.contains('@') {
        return Err(bad(
            "digests (@sha256:...) are not names; use the id instead",
        ));
    }
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repository, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], &name[last_slash + i + 1..]),
        None => (name, "latest"),
    };
    if !is_valid_tag(tag) {
        return Err(bad(
            "a tag is 1 to 128 of A-Z a-z 0-9 _ . - and does not start with . or -",
        ));
    }
    if repository.is_empty() || repository.len() > 255 {
        return Err(bad("the name is empty or longer than 255 characters"));
    }
    let components: Vec<&str> = repository.split('/').collect();
    for (index, component) in components.iter().enumerate() {
        let is_host = index == 0
            && components.len() > 1
            && (component.contains(['.', ':']) || *component == "localhost");
        let valid = if is_host {
            !component.is_empty()
                && component
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
        } else {
            is_valid_path_component(component)
        };
        if !valid {
            return Err(bad(
                "each part between slashes is lowercase letters, digits and . _ -, starting and ending with a letter or digit",
            ));
        }
    }
    Ok(format!("{repository}:{tag}"))
}

/// Formats seconds since 1970 as an RFC 3339 UTC time (`2023-06-10T00:00:00Z`),
/// the form image configs use for `created`.
pub fn rfc3339_utc(unix_seconds: u64) -> String {
    let days = unix_seconds / 86_400;
    let rest = unix_seconds % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian), in 400-year eras.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_686_355_199), "2023-06-09T23:59:59Z");
        assert_eq!(rfc3339_utc(4_102_444_800), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn names_get_latest_and_keep_hosts() {
        assert_eq!(normalize_name("busybox").unwrap(), "busybox:latest");
        assert_eq!(normalize_name("debian:12").unwrap(), "debian:12");
        assert_eq!(
            normalize_name("localhost:5000/my/app").unwrap(),
            "localhost:5000/my/app:latest"
        );
        assert_eq!(
            normalize_name("registry.example.com/a/b:v1.2").unwrap(),
            "registry.example.com/a/b:v1.2"
        );
    }

    #[test]
    fn bad_names_are_rejected() {
        for bad in [
            "",
            "UPPER",
            "a:",
            "a:-x",
            "/a",
            "a//b",
            "a@sha256:00",
            "a b",
            "-a",
            "a:b:c",
        ] {
            assert!(normalize_name(bad).is_err(), "{bad}");
        }
    }
}
