//! `kiln run` and the commands that work on its containers (`ps`, `logs`,
//! `stop`, `rm`, `wait`, `commit`). kiln stays daemonless: a foreground
//! container is run by the `kiln run` process itself; a detached one (`-d`)
//! by a small supervisor, kiln re-executed as `kiln __supervise ID` in a
//! session of its own. Either records the container's state in the store
//! (`kiln_cache::Containers`) and holds its running lock while it runs.
//!
//! - `options.rs`: the resolved run options kept in the container's config;
//!   `-v`, `--mount`, `-p` parsers.
//! - `command.rs`: Docker's ENTRYPOINT/CMD and environment rules.
//! - `runner.rs`: the sandbox for a container, Docker's exit codes.
//! - `io.rs`: stdio, the `-t` terminal relay, detached logs, signals.
//! - `manage.rs`: `ps`, `logs`, `stop`, `rm`, `wait`, and the supervisor.
//! - `commit.rs`: `kiln commit`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use kiln_cache::{ContainerRecord, ContainerState, ContainerStatus, Containers, Store};
use kiln_executor::CancelToken;
use kiln_frontend::Network;

use super::{CmdResult, Global};

pub mod command;
pub mod commit;
pub mod io;
pub mod manage;
pub mod options;
pub mod runner;

use options::{ContainerSpec, MountSpec};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Remove the container (its writable layer and anonymous volumes) when
    /// it exits.
    #[arg(long)]
    rm: bool,
    /// Run in the background and print the container's id.
    #[arg(short = 'd', long)]
    detach: bool,
    /// A name for the container [default: a generated one].
    #[arg(long)]
    name: Option<String>,
    /// Keep stdin open: the container reads kiln's stdin.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the container a terminal (with -i: kiln's terminal, in raw mode).
    #[arg(short = 't', long)]
    tty: bool,
    /// Set an environment variable: NAME=VALUE, or NAME for kiln's own value.
    #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<String>,
    /// Read environment variables from a file (NAME=VALUE lines).
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Bind a host path (SRC:DST[:ro]), a named volume (NAME:DST[:ro]) or an
    /// anonymous volume (DST).
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    volume: Vec<String>,
    /// A mount: type=bind|tmpfs|volume,source=...,target=...[,readonly][,tmpfs-size=SIZE].
    #[arg(long = "mount", value_name = "type=TYPE,...")]
    mount: Vec<String>,
    /// The working directory inside the container (created when missing).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// The user: NAME|UID[:GROUP|GID], names from the image's /etc/passwd and /etc/group.
    #[arg(short = 'u', long = "user", value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// Replace the image's ENTRYPOINT (and drop its CMD); "" for none.
    #[arg(long, value_name = "CMD")]
    entrypoint: Option<String>,
    /// The network: default (its own, outbound through slirp4netns), none, host.
    /// Rootless, default is the host's network where the user cannot open
    /// /dev/net/tun (slirp4netns needs it; kiln says so).
    #[arg(long, default_value_t, value_parser = super::network_parser())]
    network: Network,
    /// Publish a container port on the host: [IP:]HOST:CONTAINER[/udp] (default network).
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[IP:]HOST:CONTAINER[/udp]"
    )]
    publish: Vec<String>,
    /// The platform the image must be for, e.g. linux/mips64le (foreign ones
    /// run under qemu-user).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long = "read-only")]
    read_only: bool,
    /// Memory limit, e.g. 512m or 2g (swap is limited to the same).
    #[arg(long, value_name = "BYTES", value_parser = super::build::parse_memory)]
    memory: Option<u64>,
    /// CPU quota in CPUs, e.g. 1.5.
    #[arg(long, value_name = "CPUS", value_parser = super::build::parse_cpus)]
    cpus: Option<f64>,
    /// Maximum number of processes.
    #[arg(long = "pids-limit", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pids_limit: Option<u64>,
    /// The image: a name or an id.
    image: String,
    /// The command and its arguments (replacing the image's CMD).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// `kiln run`. Exits with the container's exit code; 125 when kiln could
/// not run it, as Docker.
pub fn run(global: &Global, args: Args) -> CmdResult {
    // Before any thread starts, so that every thread has them blocked.
    let signals = io::block_signals()?;
    match start(global, args, signals) {
        Ok(code) => Ok(ExitCode::from(code.clamp(0, 255) as u8)),
        Err(err) => {
            super::report_error(&err);
            Ok(ExitCode::from(runner::RUN_FAILED as u8))
        }
    }
}

fn start(global: &Global, args: Args, signals: nix::sys::signal::SigSet) -> anyhow::Result<i32> {
    let store = global.open_store()?;
    let containers = Containers::new(&store)?;
    let (spec, image_id) = resolve(&store, &args)?;
    let record = containers.create(
        args.name.as_deref(),
        &args.image,
        &image_id,
        serde_json::to_value(&spec).context("serializing the container's options")?,
    )?;
    if spec.detached {
        return manage::start_detached(global, &containers, &record);
    }
    foreground(&store, &containers, &record, &spec, signals)
}

/// Resolves the flags against the image: what the container runs and how.
fn resolve(store: &Store, args: &Args) -> anyhow::Result<(ContainerSpec, String)> {
    let wanted: Option<kiln_cache::Platform> = args
        .platform
        .as_deref()
        .map(str::parse)
        .transpose()
        .context("--platform")?;
    // A multi-platform name gives its image for --platform.
    let image = store
        .resolve_for(&args.image, wanted.as_ref())?
        .with_context(|| {
            format!(
                "no image named {:?} in the store: build, import or pull it first (`kiln images` lists them)",
                args.image
            )
        })?;
    let platform = image.platform();
    if let Some(wanted) = &wanted {
        if !platform.matches(wanted) {
            bail!(
                "image {} is for {platform}, not {wanted}: pull or import it for {wanted}, or drop --platform",
                args.image
            );
        }
    }
    let config: kiln_frontend::ImageConfig = match image.raw_config.get("config") {
        Some(value) if !value.is_null() => serde_json::from_value(value.clone())
            .with_context(|| format!("image {}: its config does not parse", args.image))?,
        _ => kiln_frontend::ImageConfig::default(),
    };
    let argv = command::argv(
        config.entrypoint.as_deref().unwrap_or_default(),
        config.cmd.as_deref().unwrap_or_default(),
        args.entrypoint.as_deref(),
        &args.command,
    )?;
    let mut user_env = Vec::new();
    for file in &args.env_file {
        user_env.extend(command::read_env_file(file)?);
    }
    for entry in &args.env {
        if let Some(entry) = command::env_entry(entry).with_context(|| format!("-e {entry}"))? {
            user_env.push(entry);
        }
    }
    let cwd = match (&args.workdir, &config.working_dir) {
        (Some(dir), _) if !dir.starts_with('/') => {
            bail!("-w {dir}: the working directory must be an absolute path")
        }
        (Some(dir), _) => dir.clone(),
        (None, Some(dir)) if dir.starts_with('/') => dir.clone(),
        _ => "/".to_string(),
    };
    let mut mounts = Vec::new();
    for value in &args.volume {
        mounts.push(options::parse_volume(value)?);
    }
    for value in &args.mount {
        mounts.push(options::parse_mount(value)?);
    }
    // The image's VOLUMEs the user did not mount over: anonymous volumes.
    for target in config.volumes.iter().flat_map(|v| v.keys()) {
        let clean = target.trim_end_matches('/');
        let clean = if clean.is_empty() { "/" } else { clean };
        if !mounts
            .iter()
            .any(|m| m.target().trim_end_matches('/') == clean.trim_end_matches('/'))
        {
            mounts.push(MountSpec::Volume {
                name: None,
                target: clean.to_string(),
                readonly: false,
            });
        }
    }
    let ports = args
        .publish
        .iter()
        .map(|p| options::parse_port(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !ports.is_empty() && !kiln_executor::private_network_usable() {
        bail!(
            "-p needs the default network (slirp4netns on /dev/net/tun), which rootless kiln cannot open here: make /dev/net/tun mode 0666 (as Debian's udev does), or use --network host and no -p"
        );
    }
    if !ports.is_empty() && args.network != Network::Default {
        bail!(
            "-p publishes ports of the default network; drop --network {} or -p",
            args.network
        );
    }
    let arch =
        (!kiln_executor::is_native(&platform.architecture)).then(|| platform.architecture.clone());
    let spec = ContainerSpec {
        command_line: shell_words(&argv),
        argv,
        env: config.env.clone().unwrap_or_default(),
        user_env,
        cwd,
        user: args
            .user
            .clone()
            .or(config.user.clone())
            .unwrap_or_default(),
        arch,
        network: args.network,
        ports,
        mounts,
        read_only: args.read_only,
        memory: args.memory,
        cpus: args.cpus,
        pids: args.pids_limit,
        interactive: args.interactive,
        tty: args.tty,
        auto_remove: args.rm,
        detached: args.detach,
        stop_signal: config.stop_signal.clone(),
    };
    Ok((spec, image.id().to_string()))
}

/// An argv as one line, words with spaces quoted (for `ps` and history).
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|w| {
            if w.is_empty() || w.contains(|c: char| c.is_whitespace() || "\"'\\$".contains(c)) {
                format!("{w:?}")
            } else {
                w.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The state of a container that now runs in this process.
pub(crate) fn running_state() -> ContainerState {
    ContainerState {
        status: ContainerStatus::Running,
        pid: Some(std::process::id()),
        started: Some(now()),
        finished: None,
        exit_code: None,
        error: None,
    }
}

/// Records how the container ended and, with `--rm`, removes it.
pub(crate) fn finish(
    containers: &Containers,
    record: &ContainerRecord,
    spec: &ContainerSpec,
    started: &ContainerState,
    outcome: &anyhow::Result<i32>,
    lock: kiln_cache::RunningLock,
) -> anyhow::Result<()> {
    let state = ContainerState {
        status: ContainerStatus::Exited,
        pid: None,
        started: started.started,
        finished: Some(now()),
        exit_code: Some(*outcome.as_ref().unwrap_or(&runner::RUN_FAILED)),
        error: outcome.as_ref().err().map(|e| format!("{e:#}")),
    };
    containers.write_state(&record.id, &state)?;
    if spec.auto_remove {
        containers
            .remove_running(&record.id, lock)
            .with_context(|| format!("cannot remove container {} (--rm)", record.name))?;
    }
    Ok(())
}

/// Runs a container in this process, with kiln's stdio or terminal.
fn foreground(
    store: &Store,
    containers: &Containers,
    record: &ContainerRecord,
    spec: &ContainerSpec,
    signals: nix::sys::signal::SigSet,
) -> anyhow::Result<i32> {
    let lock = containers.lock_running(&record.id)?;
    let started = running_state();
    containers.write_state(&record.id, &started)?;
    let cancel = CancelToken::new();
    let outcome = (|| {
        let (stdio, relay) = match spec.tty {
            true => {
                let (stdio, relay) = io::terminal(spec.interactive)?;
                (stdio, Some(relay))
            }
            false => (io::inherited(spec.interactive)?, None),
        };
        let resize = match &relay {
            Some(relay) if std::io::IsTerminal::is_terminal(&std::io::stdout()) => Some((
                std::os::fd::AsFd::as_fd(&std::io::stdout()).try_clone_to_owned()?,
                relay.controller.clone(),
            )),
            _ => None,
        };
        io::relay_signals(signals, cancel.clone(), resize);
        let code = runner::run(store, containers, record, spec, stdio, &cancel);
        if let Some(relay) = relay {
            relay.finish();
        }
        code
    })();
    finish(containers, record, spec, &started, &outcome, lock)?;
    outcome
}
