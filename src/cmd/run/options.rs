//! What a container runs with, resolved from the flags and the image and
//! kept in its config (`ContainerRecord::spec`), so that the foreground
//! `kiln run` and the supervisor of `kiln run -d` run it the same way; and
//! the parsers of `-v`, `--mount` and `-p`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// A container's resolved run options.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerSpec {
    pub argv: Vec<String>,
    /// The image's environment.
    pub env: Vec<String>,
    /// `--env-file` and `-e` entries, in that order (see `command::environment`).
    pub user_env: Vec<String>,
    /// Absolute; created when missing.
    pub cwd: String,
    /// `user[:group]`, names resolved in the image when it runs.
    pub user: String,
    /// The image's architecture when it is foreign (run under qemu-user).
    pub arch: Option<String>,
    /// `--network`.
    pub network: kiln_frontend::Network,
    pub ports: Vec<Port>,
    pub mounts: Vec<MountSpec>,
    pub read_only: bool,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    pub interactive: bool,
    pub tty: bool,
    pub auto_remove: bool,
    pub detached: bool,
    /// The image's STOPSIGNAL (`kiln stop` sends it), e.g. `SIGQUIT` or `3`.
    pub stop_signal: Option<String>,
    /// The image's history line for `kiln commit` and `kiln ps`: the command.
    pub command_line: String,
}

/// A mount of the container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MountSpec {
    Bind {
        source: PathBuf,
        target: String,
        readonly: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
    /// A named volume (in the store, kept) or, without a name, an anonymous
    /// one (in the container's directory, removed with it).
    Volume {
        name: Option<String>,
        target: String,
        readonly: bool,
    },
}

impl MountSpec {
    pub fn target(&self) -> &str {
        match self {
            MountSpec::Bind { target, .. }
            | MountSpec::Tmpfs { target, .. }
            | MountSpec::Volume { target, .. } => target,
        }
    }
}

/// A published port (`-p`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Port {
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
    pub udp: bool,
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = if self.udp { "udp" } else { "tcp" };
        write!(
            f,
            "{}:{}->{}/{proto}",
            self.host_ip, self.host_port, self.container_port
        )
    }
}

fn absolute_target(flag: &str, value: &str, target: &str) -> anyhow::Result<String> {
    if !target.starts_with('/') {
        bail!("{flag} {value}: the container path {target:?} must be absolute");
    }
    Ok(target.to_string())
}

/// `-v SRC:DST[:OPTIONS]`, `-v NAME:DST[:OPTIONS]` or `-v DST` (an
/// anonymous volume). A missing host directory is created, as Docker does;
/// OPTIONS are `ro` or `rw`.
pub fn parse_volume(value: &str) -> anyhow::Result<MountSpec> {
    let parts: Vec<&str> = value.split(':').collect();
    let (source, target, options) = match parts.as_slice() {
        [target] => (None, *target, ""),
        [source, target] => (Some(*source), *target, ""),
        [source, target, options] => (Some(*source), *target, *options),
        _ => bail!("-v {value}: expected SRC:DST[:ro], NAME:DST[:ro] or DST"),
    };
    let target = absolute_target("-v", value, target)?;
    let mut readonly = false;
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" => readonly = true,
            "rw" => readonly = false,
            other => bail!("-v {value}: unknown option {other:?} (kiln takes ro and rw)"),
        }
    }
    match source {
        None => Ok(MountSpec::Volume {
            name: None,
            target,
            readonly,
        }),
        Some(source) if source.starts_with('/') => {
            let source = PathBuf::from(source);
            if !source.exists() {
                std::fs::create_dir_all(&source)
                    .with_context(|| format!("-v {value}: cannot create {}", source.display()))?;
            }
            Ok(MountSpec::Bind {
                source,
                target,
                readonly,
            })
        }
        Some(name) => {
            validate_volume_name(name).with_context(|| format!("-v {value}"))?;
            Ok(MountSpec::Volume {
                name: Some(name.to_string()),
                target,
                readonly,
            })
        }
    }
}

fn validate_volume_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        bail!("{name:?} is neither an absolute host path nor a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)");
    }
    Ok(())
}

/// `--mount type=bind|tmpfs|volume,...`: `source`/`src`,
/// `target`/`destination`/`dst`, `readonly`/`ro` (optionally `=true|false`)
/// and, for tmpfs, `tmpfs-size`.
pub fn parse_mount(value: &str) -> anyhow::Result<MountSpec> {
    let mut kind = None;
    let mut source = None;
    let mut target = None;
    let mut readonly = false;
    let mut size = None;
    for field in value.split(',') {
        let (key, val) = match field.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (field.trim(), None),
        };
        let need = || val.with_context(|| format!("--mount {value}: {key} needs a value"));
        match key {
            "type" => kind = Some(need()?.to_string()),
            "source" | "src" => source = Some(need()?.to_string()),
            "target" | "destination" | "dst" => target = Some(need()?.to_string()),
            "readonly" | "ro" => {
                readonly = match val {
                    None | Some("true") | Some("1") => true,
                    Some("false") | Some("0") => false,
                    Some(other) => bail!("--mount {value}: {key}={other} is not true or false"),
                }
            }
            "tmpfs-size" => {
                size = Some(
                    crate::cmd::build::parse_size(need()?, "64m")
                        .map_err(|e| anyhow::anyhow!("--mount {value}: tmpfs-size: {e}"))?,
                )
            }
            other => bail!(
                "--mount {value}: unknown option {other:?} (kiln takes type, source, target, readonly and tmpfs-size)"
            ),
        }
    }
    let target = target.with_context(|| format!("--mount {value}: target is missing"))?;
    let target = absolute_target("--mount", value, &target)?;
    match kind.as_deref() {
        Some("bind") => {
            let source = source.with_context(|| format!("--mount {value}: source is missing"))?;
            let source = PathBuf::from(source);
            if !source.is_absolute() || !source.exists() {
                bail!(
                    "--mount {value}: bind source path does not exist: {}",
                    source.display()
                );
            }
            Ok(MountSpec::Bind {
                source,
                target,
                readonly,
            })
        }
        Some("tmpfs") => {
            if source.is_some() {
                bail!("--mount {value}: a tmpfs has no source");
            }
            Ok(MountSpec::Tmpfs { target, size })
        }
        Some("volume") => {
            if let Some(name) = &source {
                validate_volume_name(name).with_context(|| format!("--mount {value}"))?;
            }
            Ok(MountSpec::Volume {
                name: source,
                target,
                readonly,
            })
        }
        Some(other) => bail!("--mount {value}: unknown type {other:?} (bind, tmpfs or volume)"),
        None => bail!("--mount {value}: type is missing (type=bind, tmpfs or volume)"),
    }
}

/// `-p [IP:]HOST:CONTAINER[/tcp|/udp]`.
pub fn parse_port(value: &str) -> anyhow::Result<Port> {
    let (spec, proto) = match value.rsplit_once('/') {
        Some((spec, proto)) => (spec, proto),
        None => (value, "tcp"),
    };
    let udp = match proto {
        "tcp" => false,
        "udp" => true,
        other => bail!("-p {value}: unknown protocol {other:?} (tcp or udp)"),
    };
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    let (host_ip, host, container) = match parts.as_slice() {
        [container, host] => ("0.0.0.0", *host, *container),
        [container, host, ip] => (ip.trim_matches(['[', ']']), *host, *container),
        _ => bail!("-p {value}: expected [IP:]HOST_PORT:CONTAINER_PORT[/udp] (kiln does not pick host ports)"),
    };
    let host_ip: std::net::IpAddr = host_ip
        .parse()
        .with_context(|| format!("-p {value}: {host_ip:?} is not an IP address"))?;
    if !host_ip.is_ipv4() {
        bail!("-p {value}: the default network is IPv4 only: give an IPv4 address");
    }
    let port = |text: &str| -> anyhow::Result<u16> {
        match text.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => bail!("-p {value}: {text:?} is not a port number (1-65535)"),
        }
    };
    Ok(Port {
        host_ip: host_ip.to_string(),
        host_port: port(host)?,
        container_port: port(container)?,
        udp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_as_docker_takes_them() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("made");
        let value = format!("{}:/data:ro", src.display());
        assert_eq!(
            parse_volume(&value).unwrap(),
            MountSpec::Bind {
                source: src.clone(),
                target: "/data".into(),
                readonly: true
            }
        );
        assert!(src.is_dir(), "-v creates a missing host directory");
        assert_eq!(
            parse_volume("cache:/c").unwrap(),
            MountSpec::Volume {
                name: Some("cache".into()),
                target: "/c".into(),
                readonly: false
            }
        );
        assert_eq!(
            parse_volume("/anon").unwrap(),
            MountSpec::Volume {
                name: None,
                target: "/anon".into(),
                readonly: false
            }
        );
        assert!(parse_volume("/x:rel").is_err());
        assert!(parse_volume("/x:/y:z").is_err());
    }

    #[test]
    fn mounts_as_docker_takes_them() {
        assert_eq!(
            parse_mount("type=tmpfs,dst=/t,tmpfs-size=1m").unwrap(),
            MountSpec::Tmpfs {
                target: "/t".into(),
                size: Some(1 << 20)
            }
        );
        assert_eq!(
            parse_mount("type=bind,src=/,target=/host,readonly").unwrap(),
            MountSpec::Bind {
                source: "/".into(),
                target: "/host".into(),
                readonly: true
            }
        );
        assert!(parse_mount("type=bind,src=/no/such/dir,target=/x").is_err());
        assert!(parse_mount("type=bind,src=/,target=/x,bind-propagation=shared").is_err());
        assert!(parse_mount("src=/,target=/x").is_err());
    }

    #[test]
    fn ports_as_docker_takes_them() {
        assert_eq!(
            parse_port("127.0.0.1:8080:80").unwrap(),
            Port {
                host_ip: "127.0.0.1".into(),
                host_port: 8080,
                container_port: 80,
                udp: false
            }
        );
        assert_eq!(
            parse_port("5353:53/udp").unwrap(),
            Port {
                host_ip: "0.0.0.0".into(),
                host_port: 5353,
                container_port: 53,
                udp: true
            }
        );
        assert!(parse_port("80").is_err());
        assert!(parse_port("1:2/sctp").is_err());
        assert!(parse_port("0:80").is_err());
    }
}
