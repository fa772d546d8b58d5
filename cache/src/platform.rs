//! Image platforms (`linux/amd64`, `linux/arm/v7`): parsing OCI and Debian
//! names, the host's platform, and matching a requested one.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// An image platform with OCI (Go) names: `linux/mips64le`, `linux/arm/v7`.
///
/// Parsing accepts OCI names and Debian architecture names (`mips64el`,
/// `armhf`, `ppc64el`, ...), with or without the `linux/` prefix; the value
/// always holds the OCI name, which is what image configs record.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// The OCI (GOARCH) name: `amd64`, `arm64`, `arm`, `386`, `mips64le`, ...
    pub architecture: String,
    /// The CPU variant where one is meaningful: `v7` for armhf, `v5` for armel.
    pub variant: Option<String>,
}

/// Debian architecture name -> (OCI architecture, variant).
const DEBIAN_NAMES: &[(&str, &str, Option<&str>)] = &[
    ("amd64", "amd64", None),
    ("arm64", "arm64", None),
    ("armhf", "arm", Some("v7")),
    ("armel", "arm", Some("v5")),
    ("i386", "386", None),
    ("mips64el", "mips64le", None),
    ("mipsel", "mipsle", None),
    ("ppc64el", "ppc64le", None),
    ("riscv64", "riscv64", None),
    ("s390x", "s390x", None),
    ("loong64", "loong64", None),
];

/// OCI architectures kiln knows.
const OCI_ARCHITECTURES: &[&str] = &[
    "amd64", "arm64", "arm", "386", "mips64le", "mips64", "mipsle", "mips", "ppc64le", "ppc64",
    "riscv64", "s390x", "loong64",
];

impl Platform {
    /// A linux platform with the given OCI architecture and no variant.
    pub fn linux(architecture: &str) -> Platform {
        Platform {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }

    /// The platform kiln itself runs on.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "arm" => "arm",
            "mips64" if cfg!(target_endian = "little") => "mips64le",
            "mips" if cfg!(target_endian = "little") => "mipsle",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "powerpc64" => "ppc64",
            "riscv64" => "riscv64",
            "s390x" => "s390x",
            "loongarch64" => "loong64",
            other => other,
        };
        let mut platform = Platform::linux(architecture);
        if architecture == "arm" {
            platform.variant = Some("v7".to_owned());
        }
        platform
    }

    /// Whether an image of `self` runs where `other` is wanted: same OS and
    /// architecture, and the same variant when both name one.
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && match (&self.variant, &other.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = Error;

    fn from_str(text: &str) -> Result<Platform> {
        let bad = || Error::BadPlatform(text.to_owned());
        let parts: Vec<&str> = text.trim().split('/').collect();
        let (os, arch, variant) = match parts.as_slice() {
            [arch] => ("linux", *arch, None),
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] => (*os, *arch, Some(*variant)),
            _ => return Err(bad()),
        };
        if os != "linux" || arch.is_empty() || variant.is_some_and(str::is_empty) {
            return Err(bad());
        }
        let (architecture, default_variant) =
            if let Some((_, oci, variant)) = DEBIAN_NAMES.iter().find(|(deb, _, _)| *deb == arch) {
                (*oci, *variant)
            } else {
                match arch {
                    "x86_64" | "x86-64" => ("amd64", None),
                    "aarch64" => ("arm64", None),
                    "armv7" | "armv7l" => ("arm", Some("v7")),
                    "armv6" | "armv6l" => ("arm", Some("v6")),
                    "armv5" => ("arm", Some("v5")),
                    "x86" | "i686" => ("386", None),
                    "mips64le" => ("mips64le", None),
                    other if OCI_ARCHITECTURES.contains(&other) => (other, None),
                    _ => return Err(bad()),
                }
            };
        let variant = variant.or(default_variant);
        if let Some(variant) = variant {
            let known = match architecture {
                "arm" => ["v5", "v6", "v7", "v8"].contains(&variant),
                "arm64" => variant.starts_with('v'),
                "amd64" => ["v1", "v2", "v3", "v4"].contains(&variant),
                _ => false,
            };
            if !known {
                return Err(bad());
            }
        }
        Ok(Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> String {
        text.parse::<Platform>().unwrap().to_string()
    }

    #[test]
    fn debian_names_become_oci_names() {
        assert_eq!(parse("mips64el"), "linux/mips64le");
        assert_eq!(parse("linux/mips64el"), "linux/mips64le");
        assert_eq!(parse("armhf"), "linux/arm/v7");
        assert_eq!(parse("armel"), "linux/arm/v5");
        assert_eq!(parse("i386"), "linux/386");
        assert_eq!(parse("ppc64el"), "linux/ppc64le");
        assert_eq!(parse("loong64"), "linux/loong64");
        assert_eq!(parse("amd64"), "linux/amd64");
    }

    #[test]
    fn oci_names_parse_and_round_trip() {
        for name in [
            "linux/amd64",
            "linux/arm/v7",
            "linux/mips64le",
            "linux/s390x",
            "linux/riscv64",
        ] {
            assert_eq!(parse(name), name);
        }
    }

    #[test]
    fn nonsense_is_an_error() {
        for bad in [
            "",
            "linux/",
            "windows/amd64",
            "linux/vax",
            "linux/amd64/v9",
            "a/b/c/d",
            "linux/mips64le/v2",
        ] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }

    #[test]
    fn variants_match_loosely() {
        let arm: Platform = "linux/arm".parse().unwrap();
        assert!(arm.matches(&"armhf".parse().unwrap()));
        assert!(!"armel"
            .parse::<Platform>()
            .unwrap()
            .matches(&"armhf".parse().unwrap()));
    }
}
