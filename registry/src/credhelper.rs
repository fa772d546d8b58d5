//! Docker credential helpers: the `docker-credential-NAME` programs that
//! `credsStore` and `credHelpers` in `config.json` name.
//!
//! The protocol, as Docker speaks it: the action is the only argument (`get`,
//! `store` or `erase`); `get` and `erase` read the server address on stdin,
//! `store` reads `{"ServerURL","Username","Secret"}`; `get` answers with the
//! same object on stdout. A helper that has nothing for the server exits
//! non-zero and says "credentials not found" on stdout.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::auth::Credentials;
use crate::error::{Error, Result};

/// What a helper answers to `get` when it has nothing for the server.
const NOT_FOUND: &str = "credentials not found";
/// The user name helpers return for an identity (OAuth refresh) token.
const IDENTITY_TOKEN_USER: &str = "<token>";

/// One credential helper, and where the configuration named it (for errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Helper {
    /// The suffix after `docker-credential-`.
    pub name: String,
    /// `credsStore` or `credHelpers."HOST"`, and the file, for messages.
    pub named_by: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Payload {
    #[serde(rename = "ServerURL", default)]
    server_url: String,
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

impl Helper {
    fn program(&self) -> String {
        format!("docker-credential-{}", self.name)
    }

    fn error(&self, action: &str, message: impl Into<String>) -> Error {
        Error::CredentialHelper {
            program: self.program(),
            action: action.to_owned(),
            named_by: self.named_by.clone(),
            message: message.into(),
        }
    }

    /// Runs `docker-credential-NAME ACTION` with `input` on stdin; returns
    /// stdout, or `Ok(None)` when the helper says it has no credentials.
    fn run(&self, action: &str, input: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut child = Command::new(self.program())
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    self.error(
                        action,
                        "the program is not on PATH; install it, or remove it from the configuration",
                    )
                } else {
                    self.error(action, e.to_string())
                }
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that exits without reading closes the pipe: its exit
            // status tells what happened.
            let _ = stdin.write_all(input);
        }
        let output = child
            .wait_with_output()
            .map_err(|e| self.error(action, e.to_string()))?;
        if output.status.success() {
            return Ok(Some(output.stdout));
        }
        let said = String::from_utf8_lossy(&output.stdout);
        if said.contains(NOT_FOUND) {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let detail = [said.trim(), stderr.trim()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        Err(self.error(
            action,
            format!(
                "it failed ({}){}",
                output.status,
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                }
            ),
        ))
    }

    /// The credentials the helper keeps for `server`, if any.
    pub fn get(&self, server: &str) -> Result<Option<Credentials>> {
        let Some(stdout) = self.run("get", server.as_bytes())? else {
            return Ok(None);
        };
        let payload: Payload = serde_json::from_slice(&stdout).map_err(|e| {
            self.error(
                "get",
                format!("its answer is not {{\"Username\",\"Secret\"}} JSON: {e}"),
            )
        })?;
        if payload.username == IDENTITY_TOKEN_USER {
            return Err(self.error(
                "get",
                format!("it holds an identity token for {server}, which kiln cannot use yet; log in with a user name and password (`kiln login {server}`)"),
            ));
        }
        if payload.username.is_empty() && payload.secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(Credentials {
            username: payload.username,
            password: payload.secret,
        }))
    }

    /// Has the helper keep `credentials` for `server`.
    pub fn store(&self, server: &str, credentials: &Credentials) -> Result<()> {
        let payload = Payload {
            server_url: server.to_owned(),
            username: credentials.username.clone(),
            secret: credentials.password.clone(),
        };
        let input = serde_json::to_vec(&payload).map_err(|e| self.error("store", e.to_string()))?;
        self.run("store", &input)?
            .map(|_| ())
            .ok_or_else(|| self.error("store", "it answered that it has no credentials"))
    }

    /// Has the helper forget `server`; forgetting what it does not have is fine.
    pub fn erase(&self, server: &str) -> Result<()> {
        self.run("erase", server.as_bytes()).map(|_| ())
    }
}

/// The helper `config` names for a registry whose `config.json` keys are
/// `keys` (the first is the server address helpers are given): a
/// `credHelpers` entry for one of them, else `credsStore`, else none.
pub(crate) fn helper_for(
    config: &serde_json::Map<String, serde_json::Value>,
    keys: &[String],
    file: &std::path::Path,
) -> Option<Helper> {
    let non_empty = |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    if let Some(helpers) = config.get("credHelpers").and_then(|h| h.as_object()) {
        for key in keys {
            if let Some(name) = helpers.get(key).and_then(non_empty) {
                return Some(Helper {
                    name,
                    named_by: format!("credHelpers.{key:?} in {}", file.display()),
                });
            }
        }
    }
    config
        .get("credsStore")
        .and_then(non_empty)
        .map(|name| Helper {
            name,
            named_by: format!("credsStore in {}", file.display()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn cred_helpers_win_over_creds_store_per_registry() {
        let file = std::path::Path::new("/c.json");
        let c = config(r#"{"credsStore":"pass","credHelpers":{"reg.example:5000":"ecr"}}"#);
        let keys = |k: &str| vec![k.to_owned()];
        assert_eq!(
            helper_for(&c, &keys("reg.example:5000"), file)
                .unwrap()
                .name,
            "ecr"
        );
        assert_eq!(helper_for(&c, &keys("other"), file).unwrap().name, "pass");
        assert_eq!(
            helper_for(&config(r#"{"credsStore":""}"#), &keys("x"), file),
            None
        );
        assert_eq!(helper_for(&config("{}"), &keys("x"), file), None);
    }

    #[test]
    fn a_missing_helper_program_says_so() {
        let helper = Helper {
            name: "kiln-test-no-such-helper".into(),
            named_by: "credsStore in /c.json".into(),
        };
        let err = helper.get("reg.example").unwrap_err().to_string();
        assert!(
            err.contains("docker-credential-kiln-test-no-such-helper")
                && err.contains("not on PATH")
                && err.contains("credsStore in /c.json"),
            "{err}"
        );
    }
}
