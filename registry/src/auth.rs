//! Credentials: Docker's `config.json` (`auths.<registry>.auth` holds
//! base64 of `user:password`, unless `credHelpers`/`credsStore` name a
//! credential helper that keeps them) and the `WWW-Authenticate` challenges
//! registries answer with.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;

use crate::credhelper::helper_for;
use crate::error::{Error, Result};
use crate::reference::DOCKER_HUB;

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token; `Debug` prints it redacted.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// The value of an `Authorization: Basic` header.
    pub(crate) fn basic_header(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

/// The keys Docker has used for Docker Hub in `auths`.
const DOCKER_HUB_KEYS: &[&str] = &[
    "https://index.docker.io/v1/",
    "index.docker.io",
    "docker.io",
    "registry-1.docker.io",
];

fn auths_keys(registry: &str) -> Vec<String> {
    if registry == DOCKER_HUB {
        DOCKER_HUB_KEYS.iter().map(|k| k.to_string()).collect()
    } else {
        vec![
            registry.to_owned(),
            format!("https://{registry}"),
            format!("http://{registry}"),
            format!("https://{registry}/v1/"),
            format!("https://{registry}/v2/"),
        ]
    }
}

fn read_config(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => {
            return Err(Error::Credentials {
                path: path.to_owned(),
                message: e.to_string(),
            })
        }
    };
    if text.trim().is_empty() {
        return Ok(Default::default());
    }
    match serde_json::from_str(&text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::Credentials {
            path: path.to_owned(),
            message: "is not a JSON object; fix or remove it".into(),
        }),
        Err(e) => Err(Error::Credentials {
            path: path.to_owned(),
            message: format!(
                "is not valid JSON (line {}, column {}): {e}; fix or remove it",
                e.line(),
                e.column()
            ),
        }),
    }
}

/// The credentials stored for `registry` (`host[:port]`, or `docker.io`) in a
/// Docker `config.json`, if any. A missing file means no credentials. As with
/// Docker, a credential helper the file names for the registry (`credHelpers`,
/// else `credsStore`) is asked instead of `auths`.
pub fn load_credentials(config_path: &Path, registry: &str) -> Result<Option<Credentials>> {
    let config = read_config(config_path)?;
    let keys = auths_keys(registry);
    if let Some(helper) = helper_for(&config, &keys, config_path) {
        return helper.get(&keys[0]);
    }
    let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    for key in keys {
        let Some(entry) = auths.get(&key) else {
            continue;
        };
        let bad = |message: &str| Error::Credentials {
            path: config_path.to_owned(),
            message: format!("auths.{key:?}: {message}; run `kiln login {registry}` again"),
        };
        if let (Some(user), Some(password)) = (
            entry.get("username").and_then(|u| u.as_str()),
            entry.get("password").and_then(|p| p.as_str()),
        ) {
            return Ok(Some(Credentials {
                username: user.to_owned(),
                password: password.to_owned(),
            }));
        }
        let Some(encoded) = entry.get("auth").and_then(|a| a.as_str()) else {
            continue;
        };
        if encoded.is_empty() {
            continue;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| bad("\"auth\" is not base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad("\"auth\" is not UTF-8"))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| bad("\"auth\" is not user:password"))?;
        return Ok(Some(Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        }));
    }
    Ok(None)
}

/// Where [`store_credentials`] put the credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// In the file's `auths`.
    File,
    /// With this credential helper (`docker-credential-NAME`).
    Helper(String),
}

/// Records credentials for `registry` as Docker does: with the credential
/// helper the file names for the registry, if any (the file then only lists
/// the registry in `auths`, with no secret), else in the file's `auths`.
/// Every other field is kept; the file is written atomically with mode 0600.
pub fn store_credentials(
    config_path: &Path,
    registry: &str,
    credentials: &Credentials,
) -> Result<Stored> {
    let mut config = read_config(config_path)?;
    let keys = auths_keys(registry);
    let (entry, stored) = match helper_for(&config, &keys, config_path) {
        Some(helper) => {
            helper.store(&keys[0], credentials)?;
            (serde_json::json!({}), Stored::Helper(helper.name))
        }
        None => {
            let pair = format!("{}:{}", credentials.username, credentials.password);
            let auth = base64::engine::general_purpose::STANDARD.encode(pair);
            (serde_json::json!({ "auth": auth }), Stored::File)
        }
    };
    auths_mut(&mut config).insert(keys[0].clone(), entry);
    write_config(config_path, config)?;
    Ok(stored)
}

/// Forgets the credentials for `registry` (`kiln logout`): erased from the
/// credential helper the file names for it, if any, and removed from `auths`.
/// Returns whether the file had an entry for the registry.
pub fn erase_credentials(config_path: &Path, registry: &str) -> Result<bool> {
    let mut config = read_config(config_path)?;
    let keys = auths_keys(registry);
    if let Some(helper) = helper_for(&config, &keys, config_path) {
        helper.erase(&keys[0])?;
    }
    let auths = auths_mut(&mut config);
    let mut had = false;
    for key in &keys {
        had |= auths.remove(key).is_some();
    }
    if had {
        write_config(config_path, config)?;
    }
    Ok(had)
}

/// The `auths` object of a config, made one if it is missing or not an object.
fn auths_mut(
    config: &mut serde_json::Map<String, serde_json::Value>,
) -> &mut serde_json::Map<String, serde_json::Value> {
    let auths = config
        .entry("auths")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    if !auths.is_object() {
        *auths = serde_json::Value::Object(Default::default());
    }
    auths
        .as_object_mut()
        .expect("auths was made an object above")
}

/// Writes `config` to `config_path` atomically, mode 0600.
fn write_config(
    config_path: &Path,
    config: serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let io_err = |e: std::io::Error| Error::Credentials {
        path: config_path.to_owned(),
        message: e.to_string(),
    };
    let dir = config_path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err)?;
    let mut bytes = serde_json::to_vec_pretty(&serde_json::Value::Object(config))
        .map_err(|e| io_err(e.into()))?;
    bytes.push(b'\n');
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(io_err)?;
    {
        use std::os::unix::fs::PermissionsExt;
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io_err)?;
        std::io::Write::write_all(&mut temp, &bytes).map_err(io_err)?;
        temp.as_file().sync_all().map_err(io_err)?;
    }
    temp.persist(config_path).map_err(|e| io_err(e.error))?;
    Ok(())
}

/// One `WWW-Authenticate` challenge: its scheme and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

/// Parses `Bearer realm="https://auth",service="registry",scope="a:b:pull"`
/// or `Basic realm="x"`. Unknown shapes give `None`.
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, mut rest) = match header.split_once(char::is_whitespace) {
        Some((scheme, rest)) => (scheme, rest.trim_start()),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    other => value.push(other),
                }
            }
            (value, &quoted[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.insert(key, value);
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example.com/token");
        assert_eq!(c.params["service"], "registry.example.com");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");
        let c = parse_challenge(r#"Basic realm="basic-realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "basic-realm");
        let c = parse_challenge("Bearer realm=x, error=\"in\\\"valid\"").unwrap();
        assert_eq!(c.params["realm"], "x");
        assert_eq!(c.params["error"], "in\"valid");
        assert!(parse_challenge("Bearer realm=\"unterminated").is_none());
    }

    #[test]
    fn credentials_round_trip_and_keep_other_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker/config.json");
        assert_eq!(load_credentials(&path, "127.0.0.1:5000").unwrap(), None);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, r#"{"psFormat":"table","auths":{"https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="}}}"#).unwrap();
        let hub = load_credentials(&path, "docker.io").unwrap().unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("hub", "secret")
        );
        let creds = Credentials {
            username: "kiln".into(),
            password: "p:ss".into(),
        };
        store_credentials(&path, "127.0.0.1:5000", &creds).unwrap();
        assert_eq!(
            load_credentials(&path, "127.0.0.1:5000").unwrap(),
            Some(creds)
        );
        assert!(load_credentials(&path, "docker.io").unwrap().is_some());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("psFormat"), "{text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn broken_config_files_name_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{\n  \"auths\": {\n    \"x\": \n").unwrap();
        let err = load_credentials(&path, "x").unwrap_err().to_string();
        assert!(err.contains("line") && err.contains("config.json"), "{err}");
        std::fs::write(&path, r#"{"auths":{"x":{"auth":"!!!"}}}"#).unwrap();
        let err = load_credentials(&path, "x").unwrap_err().to_string();
        assert!(
            err.contains("not base64") && err.contains("kiln login x"),
            "{err}"
        );
    }
}
