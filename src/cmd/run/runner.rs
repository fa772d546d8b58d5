//! Runs a container: its image's snapshots as lower dirs, its writable layer
//! in its directory in the store (`fs/upper`), its mounts and volumes, its
//! network, through the executor's sandbox; and Docker's exit codes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use kiln_cache::{ContainerRecord, Containers, Store};
use kiln_executor::{CancelToken, Limits, Mount, Network, RunSpec, Stdio};

use super::options::{ContainerSpec, MountSpec};

/// Docker's exit code when the command is not found.
pub const NOT_FOUND: i32 = 127;
/// Docker's exit code when the command cannot be executed.
pub const CANNOT_EXECUTE: i32 = 126;
/// Docker's exit code when the container could not be run at all.
pub const RUN_FAILED: i32 = 125;

/// The directory the container's writable layer lives in (`upper`, `work`).
pub fn fs_dir(containers: &Containers, id: &str) -> PathBuf {
    containers.dir(id).join("fs")
}

/// The snapshot directories of the container's image, unpacked where missing.
pub fn image_lowers(store: &Store, record: &ContainerRecord) -> anyhow::Result<Vec<PathBuf>> {
    let image = store.resolve(&record.image_id)?.with_context(|| {
        format!(
            "the image of container {} ({}) is no longer in the store",
            record.name, record.image_id
        )
    })?;
    Ok(kiln_solver::image_lowers(store, &image.layers()?)?)
}

/// Runs the container with `stdio` as its standard streams and returns its
/// exit code: the command's, 128 + the signal that killed it, 127 when the
/// command is not found and 126 when it cannot be executed (the reason on
/// stderr), as Docker's.
pub fn run(
    store: &Store,
    containers: &Containers,
    record: &ContainerRecord,
    spec: &ContainerSpec,
    stdio: Stdio,
    cancel: &CancelToken,
) -> anyhow::Result<i32> {
    let lowers = image_lowers(store, record)?;
    let mounts = mounts(store, containers, record, spec, &lowers)?;
    let network = network(spec)?;
    let run_spec = RunSpec {
        lowers,
        argv: spec.argv.clone(),
        env: super::command::environment(&spec.env, record.short_id(), &spec.user_env, spec.tty),
        cwd: spec.cwd.clone(),
        user: spec.user.clone(),
        hostname: record.short_id().to_string(),
        network,
        mounts,
        arch: spec.arch.clone(),
        limits: Limits {
            memory: spec.memory,
            cpu_shares: None,
            cpus: spec.cpus,
            pids: spec.pids,
        },
        stdio: Some(stdio),
        read_only_root: spec.read_only,
        ..RunSpec::default()
    };
    let result = kiln_executor::run(
        &run_spec,
        &fs_dir(containers, &record.id),
        cancel,
        &mut |_| {},
    );
    exit_code(result)
}

/// Docker's exit code for how the sandbox ended.
fn exit_code(result: kiln_executor::Result<kiln_executor::Upper>) -> anyhow::Result<i32> {
    use kiln_executor::Error;
    use nix::errno::Errno;
    match result {
        Ok(_) => Ok(0),
        Err(Error::ExitCode { code, .. }) => Ok(code),
        Err(Error::Signaled { signal, .. }) => Ok(128 + signal),
        Err(Error::OutOfMemory { .. }) | Err(Error::Cancelled) => Ok(128 + libc::SIGKILL),
        Err(err @ Error::Exec { errno, .. }) => {
            eprintln!("kiln: {err}");
            Ok(match errno {
                Errno::ENOENT | Errno::ENOTDIR => NOT_FOUND,
                _ => CANNOT_EXECUTE,
            })
        }
        Err(err) => Err(err.into()),
    }
}

fn network(spec: &ContainerSpec) -> anyhow::Result<Network> {
    Ok(match spec.network {
        kiln_frontend::Network::None => Network::None,
        kiln_frontend::Network::Host => Network::Host,
        kiln_frontend::Network::Default
            if !kiln_executor::private_network_usable() && spec.ports.is_empty() =>
        {
            crate::cmd::note_rootless_network();
            Network::Host
        }
        kiln_frontend::Network::Default => {
            let ports: Vec<kiln_executor::PublishedPort> = spec
                .ports
                .iter()
                .map(|p| kiln_executor::PublishedPort {
                    host_ip: p.host_ip.clone(),
                    host_port: p.host_port,
                    container_port: p.container_port,
                    udp: p.udp,
                })
                .collect();
            Network::Private(kiln_executor::PrivateNetwork::start_publishing(&ports)?)
        }
    })
}

/// The executor's mounts for the container's: binds and tmpfs as they are,
/// volumes as binds of their directories (an anonymous one in the
/// container's directory, a named one in the store's `kiln/volumes/`),
/// filled from the image when new, as Docker fills them.
fn mounts(
    store: &Store,
    containers: &Containers,
    record: &ContainerRecord,
    spec: &ContainerSpec,
    lowers: &[PathBuf],
) -> anyhow::Result<Vec<Mount>> {
    let mut mounts = Vec::new();
    for (index, mount) in spec.mounts.iter().enumerate() {
        mounts.push(match mount {
            MountSpec::Bind {
                source,
                target,
                readonly,
            } => Mount::Bind {
                source: source.clone(),
                target: target.clone(),
                readonly: *readonly,
            },
            MountSpec::Tmpfs { target, size } => Mount::Tmpfs {
                target: target.clone(),
                size: *size,
            },
            MountSpec::Volume {
                name,
                target,
                readonly,
            } => {
                let dir = match name {
                    Some(name) => store.root().join("kiln/volumes").join(name),
                    None => containers
                        .dir(&record.id)
                        .join("volumes")
                        .join(index.to_string()),
                };
                prepare_volume(&dir, lowers, target)?;
                Mount::Bind {
                    source: dir,
                    target: target.clone(),
                    readonly: *readonly,
                }
            }
        });
    }
    Ok(mounts)
}

/// Creates a volume's directory on first use, with what the image has at
/// `target`.
fn prepare_volume(dir: &Path, lowers: &[PathBuf], target: &str) -> anyhow::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let parent = dir.parent().context("a volume directory has a parent")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".new-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a volume in {}", parent.display()))?;
    kiln_solver::export_image_path(lowers, target, staging.path())
        .with_context(|| format!("cannot fill the volume for {target} from the image"))?;
    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, dir) {
        let _ = std::fs::remove_dir_all(&staged);
        if !dir.exists() {
            bail!("cannot create volume {}: {e}", dir.display());
        }
    }
    Ok(())
}

/// A descriptor shared by the streams of [`Stdio`].
pub fn shared(fd: impl Into<std::os::fd::OwnedFd>) -> Arc<std::os::fd::OwnedFd> {
    Arc::new(fd.into())
}
