//! Image references as users write them: `[REGISTRY/]REPO[:TAG][@DIGEST]`,
//! with Docker Hub's defaults (`busybox` is `docker.io/library/busybox:latest`).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The registry a reference without a host part names.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that serves Docker Hub's registry API.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` as written (`docker.io` for Docker Hub).
    pub registry: String,
    /// The repository path inside the registry (`library/busybox`).
    pub repository: String,
    /// The tag; `latest` when neither a tag nor a digest is given.
    pub tag: Option<String>,
    /// A `sha256:...` digest pinning the manifest.
    pub digest: Option<String>,
}

impl Reference {
    /// The host and port to connect to (Docker Hub's API host for docker.io).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What the manifest is fetched or pushed by: the digest when there is
    /// one, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The short name Docker shows and kiln's store uses: without
    /// `docker.io/` and `library/`, with its tag (`busybox:latest`), or `None`
    /// for a reference by digest alone.
    pub fn familiar_name(&self) -> Option<String> {
        let tag = match (&self.tag, &self.digest) {
            (Some(tag), _) => tag.as_str(),
            (None, Some(_)) => return None,
            (None, None) => "latest",
        };
        let repository = if self.registry == DOCKER_HUB {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_owned()
        } else {
            format!("{}/{}", self.registry, self.repository)
        };
        Some(format!("{repository}:{tag}"))
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_owned()),
            digest: None,
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Whether the first path component names a registry host rather than a
/// Docker Hub namespace: it has a dot or a port, or is `localhost`.
fn is_host(component: &str) -> bool {
    component.contains(['.', ':']) || component == "localhost"
}

/// Whether a name as the user wrote it starts with a registry host
/// (`registry.example.com/app`, `127.0.0.1:5000/app`, `docker.io/me/app`)
/// rather than being a short name that only defaults to Docker Hub (`app`,
/// `me/app`).
pub fn names_registry(text: &str) -> bool {
    text.split_once('/')
        .is_some_and(|(first, _)| is_host(first))
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(text: &str) -> Result<Reference> {
        let bad = |reason: &str| Error::BadReference {
            reference: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => {
                let hex = digest
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("a digest is sha256: followed by 64 hex digits"))?;
                if hex.len() != 64
                    || !hex
                        .chars()
                        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
                {
                    return Err(bad(
                        "a digest is sha256: followed by 64 lowercase hex digits",
                    ));
                }
                (name, Some(digest.to_owned()))
            }
            None => (text, None),
        };
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match name.get(last_slash..).and_then(|last| last.rfind(':')) {
            Some(colon) => (
                &name[..last_slash + colon],
                Some(name[last_slash + colon + 1..].to_owned()),
            ),
            None => (name, None),
        };
        if let Some(tag) = &tag {
            if !kiln_cache::is_valid_tag(tag) {
                return Err(bad(
                    "a tag is 1 to 128 of A-Z a-z 0-9 _ . - and does not start with . or -",
                ));
            }
        }
        let (registry, repository) = match path.split_once('/') {
            Some((first, rest)) if is_host(first) => (first.to_owned(), rest.to_owned()),
            _ => (DOCKER_HUB.to_owned(), path.to_owned()),
        };
        if registry.is_empty()
            || !registry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        {
            return Err(bad(
                "the registry host has characters a host name cannot have",
            ));
        }
        let registry = if registry == "index.docker.io" || registry == DOCKER_HUB_API {
            DOCKER_HUB.to_owned()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.len() > 255
            || !repository
                .split('/')
                .all(kiln_cache::is_valid_path_component)
        {
            return Err(bad(
                "each part of the repository between slashes is lowercase letters, digits and . _ -, starting and ending with a letter or digit",
            ));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

/// Whether a `host[:port]` is on the loopback interface, where plain HTTP is
/// allowed without `--insecure`.
pub fn is_loopback(host_port: &str) -> bool {
    if let Ok(ip) = host_port.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
    };
    if host == "localhost" {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Reference {
        text.parse().unwrap()
    }

    #[test]
    fn docker_hub_defaults() {
        let r = parse("busybox");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.familiar_name().as_deref(), Some("busybox:latest"));
        let r = parse("someone/tool:1.2");
        assert_eq!(r.repository, "someone/tool");
        assert_eq!(r.familiar_name().as_deref(), Some("someone/tool:1.2"));
        assert_eq!(
            parse("index.docker.io/library/debian:12").to_string(),
            "docker.io/library/debian:12"
        );
    }

    #[test]
    fn registries_ports_and_digests() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let r = parse(&format!("127.0.0.1:5000/team/app@{digest}"));
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_reference(), digest);
        assert_eq!(r.familiar_name(), None);
        let r = parse("localhost/app:v1");
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.familiar_name().as_deref(), Some("localhost/app:v1"));
        let r = parse("localhost:5000/app");
        assert_eq!(
            (r.registry.as_str(), r.tag.as_deref()),
            ("localhost:5000", Some("latest"))
        );
    }

    #[test]
    fn bad_references_say_why() {
        for text in [
            "",
            "UPPER/case",
            "app:",
            "app@sha256:123",
            "app:-x",
            "a//b",
            "app/",
        ] {
            let err = text.parse::<Reference>().unwrap_err().to_string();
            assert!(err.contains("invalid image reference"), "{text}: {err}");
        }
    }

    #[test]
    fn explicit_registries() {
        for text in [
            "127.0.0.1:5000/app",
            "docker.io/me/app:1",
            "localhost/a",
            "r.io/a/b",
        ] {
            assert!(names_registry(text), "{text}");
        }
        for text in ["app", "me/app:1", "app:1.2", "localhost"] {
            assert!(!names_registry(text), "{text}");
        }
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "127.0.0.1:5000",
            "127.3.4.5",
            "localhost:80",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["10.0.0.1:5000", "example.com", "localhost.example.com"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
