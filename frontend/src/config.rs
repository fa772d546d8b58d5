//! The Docker-shaped image config ("config" object of an image config blob).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An empty JSON object, the value type of `ExposedPorts` and `Volumes`
/// (`{"80/tcp": {}}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// The runtime configuration of an image, with Docker's field names, so that
/// Docker's extensions to the OCI config (`Healthcheck`, `Shell`, `OnBuild`)
/// survive. Absent and empty fields (`[]`, `{}`, `""`, `false`) are skipped
/// when serialized, as BuildKit's Go structs (`omitempty`) skip them, so that
/// `ENTRYPOINT []` or `CMD []` give the config BuildKit writes; fields this
/// type does not know (`Hostname`, `Image`, ...) are kept in `other` and
/// written back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `USER`: user\[:group\] the container runs as.
    #[serde(rename = "User", default, skip_serializing_if = "no_text")]
    pub user: Option<String>,
    /// `EXPOSE`: `"port/proto"` keys.
    #[serde(rename = "ExposedPorts", default, skip_serializing_if = "no_entries")]
    pub exposed_ports: Option<BTreeMap<String, Empty>>,
    /// `ENV`: `KEY=value` entries, in order.
    #[serde(rename = "Env", default, skip_serializing_if = "no_items")]
    pub env: Option<Vec<String>>,
    /// `ENTRYPOINT`.
    #[serde(rename = "Entrypoint", default, skip_serializing_if = "no_items")]
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`.
    #[serde(rename = "Cmd", default, skip_serializing_if = "no_items")]
    pub cmd: Option<Vec<String>>,
    /// `VOLUME`: path keys.
    #[serde(rename = "Volumes", default, skip_serializing_if = "no_entries")]
    pub volumes: Option<BTreeMap<String, Empty>>,
    /// `WORKDIR`.
    #[serde(rename = "WorkingDir", default, skip_serializing_if = "no_text")]
    pub working_dir: Option<String>,
    /// `LABEL`.
    #[serde(rename = "Labels", default, skip_serializing_if = "no_entries")]
    pub labels: Option<BTreeMap<String, String>>,
    /// `STOPSIGNAL`.
    #[serde(rename = "StopSignal", default, skip_serializing_if = "no_text")]
    pub stop_signal: Option<String>,
    /// `HEALTHCHECK`.
    #[serde(
        rename = "Healthcheck",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub healthcheck: Option<Healthcheck>,
    /// `SHELL`: the shell that wraps shell-form commands.
    #[serde(rename = "Shell", default, skip_serializing_if = "no_items")]
    pub shell: Option<Vec<String>>,
    /// `ONBUILD`: trigger instructions, as written after `ONBUILD`.
    #[serde(rename = "OnBuild", default, skip_serializing_if = "no_items")]
    pub on_build: Option<Vec<String>>,
    /// Docker's `ArgsEscaped` (Windows-only meaning; kept for round trips).
    #[serde(rename = "ArgsEscaped", default, skip_serializing_if = "not_true")]
    pub args_escaped: Option<bool>,
    /// Fields this type does not model, kept verbatim.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `HEALTHCHECK`, durations in nanoseconds as Docker stores them; zero/absent
/// means "inherit the default".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`.
    #[serde(rename = "Test", default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    /// `--interval`.
    #[serde(rename = "Interval", default, skip_serializing_if = "is_zero")]
    pub interval: u64,
    /// `--timeout`.
    #[serde(rename = "Timeout", default, skip_serializing_if = "is_zero")]
    pub timeout: u64,
    /// `--start-period`.
    #[serde(rename = "StartPeriod", default, skip_serializing_if = "is_zero")]
    pub start_period: u64,
    /// `--start-interval`.
    #[serde(rename = "StartInterval", default, skip_serializing_if = "is_zero")]
    pub start_interval: u64,
    /// `--retries`.
    #[serde(rename = "Retries", default, skip_serializing_if = "is_zero")]
    pub retries: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

fn no_text(value: &Option<String>) -> bool {
    value.as_deref().is_none_or(str::is_empty)
}

fn no_items(value: &Option<Vec<String>>) -> bool {
    value.as_deref().is_none_or(<[String]>::is_empty)
}

fn no_entries<V>(value: &Option<BTreeMap<String, V>>) -> bool {
    value.as_ref().is_none_or(BTreeMap::is_empty)
}

fn not_true(value: &Option<bool>) -> bool {
    *value != Some(true)
}

impl ImageConfig {
    /// The value of `key` in `Env`, if set.
    pub fn env_get(&self, key: &str) -> Option<&str> {
        self.env.as_ref()?.iter().find_map(|entry| {
            let (k, v) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
            (k == key).then_some(v)
        })
    }

    /// Sets `key=value` in `Env`, replacing an existing entry in place (Docker
    /// keeps the original position).
    pub fn env_set(&mut self, key: &str, value: &str) {
        let env = self.env.get_or_insert_with(Vec::new);
        let entry = format!("{key}={value}");
        match env
            .iter_mut()
            .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
        {
            Some(existing) => *existing = entry,
            None => env.push(entry),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "config" object of a real `docker image inspect` / config blob.
    const DOCKER_CONFIG: &str = r#"{
        "Hostname": "",
        "Domainname": "",
        "User": "nginx",
        "AttachStdin": false,
        "ExposedPorts": {"80/tcp": {}},
        "Tty": false,
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "NGINX_VERSION=1.25.3"],
        "Cmd": ["nginx", "-g", "daemon off;"],
        "Healthcheck": {"Test": ["CMD-SHELL", "curl -f http://localhost/"], "Interval": 30000000000, "Retries": 3},
        "ArgsEscaped": true,
        "Image": "sha256:3c8f2a7e5b1d",
        "Volumes": {"/var/cache/nginx": {}},
        "WorkingDir": "/",
        "Entrypoint": ["/docker-entrypoint.sh"],
        "OnBuild": null,
        "Labels": {"maintainer": "NGINX Docker Maintainers"},
        "StopSignal": "SIGQUIT",
        "Shell": ["/bin/bash", "-c"]
    }"#;

    #[test]
    fn round_trips_a_docker_config() {
        let parsed: ImageConfig = serde_json::from_str(DOCKER_CONFIG).unwrap();
        assert_eq!(parsed.user.as_deref(), Some("nginx"));
        assert_eq!(
            parsed.healthcheck.as_ref().unwrap().interval,
            30_000_000_000
        );
        assert_eq!(parsed.other["Image"], "sha256:3c8f2a7e5b1d");
        let written = serde_json::to_value(&parsed).unwrap();
        let original: serde_json::Value = serde_json::from_str(DOCKER_CONFIG).unwrap();
        // Every non-null field comes back unchanged; nulls are dropped.
        for (key, value) in original.as_object().unwrap() {
            if value.is_null() {
                assert!(written.get(key).is_none(), "{key}");
            } else {
                assert_eq!(written.get(key), Some(value), "{key}");
            }
        }
        let again: ImageConfig = serde_json::from_value(written).unwrap();
        assert_eq!(again, parsed);
    }

    #[test]
    fn empty_fields_are_left_out_as_buildkit_leaves_them_out() {
        let config = ImageConfig {
            user: Some(String::new()),
            exposed_ports: Some(BTreeMap::new()),
            entrypoint: Some(Vec::new()),
            cmd: Some(Vec::new()),
            volumes: Some(BTreeMap::new()),
            labels: Some(BTreeMap::new()),
            shell: Some(Vec::new()),
            args_escaped: Some(false),
            ..ImageConfig::default()
        };
        assert_eq!(serde_json::to_string(&config).unwrap(), "{}");
    }

    #[test]
    fn env_set_replaces_in_place() {
        let mut config = ImageConfig::default();
        config.env_set("A", "1");
        config.env_set("B", "2");
        config.env_set("A", "3");
        assert_eq!(config.env.as_deref().unwrap(), ["A=3", "B=2"]);
        assert_eq!(config.env_get("A"), Some("3"));
        assert_eq!(config.env_get("C"), None);
    }
}
