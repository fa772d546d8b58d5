//! `--ssh default|ID[=SOCKET|KEY[,KEY...]]`: the ssh agents a build lends to
//! `RUN --mount=type=ssh`, as `docker build` takes them. An agent socket is
//! used as it is; key files are loaded into a short-lived `ssh-agent` of the
//! build's own, stopped when the build ends.

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

/// The agents of one build: sockets by id, and the agents kiln started.
pub(super) struct Agents {
    pub sockets: BTreeMap<String, PathBuf>,
    started: Vec<StartedAgent>,
}

/// An `ssh-agent` holding `--ssh ID=KEY` keys; killed when dropped.
struct StartedAgent {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for StartedAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agents {
    /// Reads every `--ssh` value; key files go into agents under `tmp_dir`.
    pub(super) fn from_flags(values: &[String], tmp_dir: &Path) -> anyhow::Result<Agents> {
        let mut agents = Agents {
            sockets: BTreeMap::new(),
            started: Vec::new(),
        };
        for value in values {
            let (id, paths) = match value.split_once('=') {
                Some((id, paths)) => (id, Some(paths)),
                None => (value.as_str(), None),
            };
            if id.is_empty() {
                bail!("--ssh {value}: expected default, ID, or ID=SOCKET|KEY[,KEY...]");
            }
            let socket = match paths {
                None => from_environment(value)?,
                Some(paths) => agents.socket_for(value, paths, tmp_dir)?,
            };
            agents.sockets.insert(id.to_string(), socket);
        }
        Ok(agents)
    }

    /// An agent socket given as it is, or an agent of our own for key files.
    fn socket_for(&mut self, value: &str, paths: &str, tmp_dir: &Path) -> anyhow::Result<PathBuf> {
        let paths: Vec<PathBuf> = paths.split(',').map(PathBuf::from).collect();
        if let [single] = paths.as_slice() {
            let meta = std::fs::metadata(single)
                .with_context(|| format!("--ssh {value}: cannot read {}", single.display()))?;
            if meta.file_type().is_socket() {
                return Ok(single.clone());
            }
        }
        for key in &paths {
            if !key.is_file() {
                bail!(
                    "--ssh {value}: {} is neither an agent socket nor a key file",
                    key.display()
                );
            }
        }
        let agent = start_agent(&paths, tmp_dir).with_context(|| format!("--ssh {value}"))?;
        let socket = agent._dir.path().join("agent.sock");
        self.started.push(agent);
        Ok(socket)
    }
}

/// `--ssh default` (or `--ssh ID`): the agent of `$SSH_AUTH_SOCK`.
fn from_environment(value: &str) -> anyhow::Result<PathBuf> {
    match std::env::var_os("SSH_AUTH_SOCK").filter(|v| !v.is_empty()) {
        Some(socket) => Ok(PathBuf::from(socket)),
        None => bail!(
            "--ssh {value}: SSH_AUTH_SOCK is not set; start ssh-agent (eval $(ssh-agent); ssh-add), or give the socket or key files: --ssh {value}=PATH"
        ),
    }
}

/// Starts `ssh-agent` on a socket in a new directory and adds `keys` to it.
fn start_agent(keys: &[PathBuf], tmp_dir: &Path) -> anyhow::Result<StartedAgent> {
    let dir = super::context::staging(tmp_dir, "ssh-")?;
    let socket = dir.path().join("agent.sock");
    let child = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start ssh-agent; install it (Debian package openssh-client)")?;
    let agent = StartedAgent { child, _dir: dir };
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    if !socket.exists() {
        bail!("ssh-agent did not create its socket");
    }
    let output = Command::new("ssh-add")
        .args(keys)
        .env("SSH_AUTH_SOCK", &socket)
        .env_remove("SSH_ASKPASS")
        .env_remove("DISPLAY")
        .stdin(Stdio::null())
        .output()
        .context("cannot run ssh-add; install it (Debian package openssh-client)")?;
    if !output.status.success() {
        bail!(
            "ssh-add could not load the keys ({}); a key with a passphrase must be in an agent already: give its socket instead",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(agent)
}
