//! What the step sees of its network: /etc/resolv.conf, /etc/hosts, the
//! hostname and, without a network, the loopback interface.

use std::fs;
use std::path::PathBuf;

use super::{cstring, PlanBuilder};
use crate::child::Op;
use crate::error::{io_err, Result};
use crate::spec::Network;

impl PlanBuilder<'_> {
    /// The step's hostname (`kiln` unless the spec names one).
    fn hostname(&self) -> &str {
        if self.spec.hostname.is_empty() {
            "kiln"
        } else {
            self.spec.hostname.as_str()
        }
    }

    /// The network's resolv.conf and a hosts file naming the sandbox, bound
    /// onto /etc/resolv.conf and /etc/hosts: shared read-only files (as
    /// BuildKit binds them) where there is a snapshot root, else per-step
    /// writable copies in the scratch dir. Nothing without a network.
    pub(super) fn network_files(&mut self) -> Result<()> {
        let Some(resolv_content) = resolv_conf(&self.spec.network) else {
            return Ok(());
        };
        let hosts_content = hosts(self.hostname(), &self.spec.extra_hosts);
        let (resolv, hosts, readonly) = match &self.shared_root {
            Some(root) => {
                let files = root.join("files");
                (
                    crate::mountpoints::shared_file(&files, "resolv.conf", &resolv_content)?,
                    crate::mountpoints::shared_file(&files, "hosts", hosts_content.as_bytes())?,
                    true,
                )
            }
            None => {
                let (resolv, hosts) = self.scratch_files(&resolv_content, &hosts_content)?;
                (resolv, hosts, false)
            }
        };
        for (source, target) in [(&resolv, "/etc/resolv.conf"), (&hosts, "/etc/hosts")] {
            let (_, host_target) = self.mountpoint(target, true)?;
            self.ops.bind(source, &host_target, readonly, target)?;
        }
        Ok(())
    }

    /// Writes the step's own resolv.conf and hosts into the scratch dir.
    fn scratch_files(
        &self,
        resolv_content: &[u8],
        hosts_content: &str,
    ) -> Result<(PathBuf, PathBuf)> {
        let etc = &self.scratch.etc;
        fs::create_dir_all(etc).map_err(io_err("create", etc))?;
        let resolv = etc.join("resolv.conf");
        fs::write(&resolv, resolv_content).map_err(io_err("write", &resolv))?;
        let hosts = etc.join("hosts");
        fs::write(&hosts, hosts_content).map_err(io_err("write", &hosts))?;
        Ok((resolv, hosts))
    }

    /// Sets the hostname; brings up loopback in the step's own network
    /// namespace (`--network=none`).
    pub(super) fn uts_and_loopback(&mut self) -> Result<()> {
        let hostname = self.hostname().to_owned();
        self.ops.push(
            Op::Hostname(cstring(hostname.as_str())?),
            format!("set hostname {hostname}"),
        );
        if self.spec.network == Network::None {
            self.ops.push(Op::LoopbackUp, "bring up loopback".into());
        }
        Ok(())
    }
}

/// The resolv.conf a step on `network` sees; `None` without a network.
fn resolv_conf(network: &Network) -> Option<Vec<u8>> {
    match network {
        Network::Private(private) => Some(private.resolv_conf().to_vec()),
        Network::Host => Some(fs::read("/etc/resolv.conf").unwrap_or_default()),
        Network::None => None,
    }
}

/// /etc/hosts of a sandbox named `hostname`, with the `--add-host` entries.
fn hosts(hostname: &str, extra_hosts: &[(String, String)]) -> String {
    let mut content = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    );
    for (name, address) in extra_hosts {
        content.push_str(&format!("{address}\t{name}\n"));
    }
    content
}
