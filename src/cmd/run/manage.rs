//! Detached containers and the commands that manage containers: the
//! supervisor (`kiln __supervise ID`), `ps`, `logs`, `stop`, `rm`, `wait`.

use std::fs::File;
use std::io::{Read, Write};
use std::process::{ExitCode, Stdio as ProcessStdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kiln_cache::{ContainerRecord, ContainerState, ContainerStatus, Containers};
use kiln_executor::CancelToken;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::io;
use super::options::ContainerSpec;
use crate::cmd::{CmdResult, Global};

const LOG_FILE: &str = "container.log";
const SUPERVISOR_LOG: &str = "supervisor.log";

fn spec_of(record: &ContainerRecord) -> anyhow::Result<ContainerSpec> {
    serde_json::from_value(record.spec.clone())
        .with_context(|| format!("container {}: its config does not parse", record.name))
}

/// `kiln run -d`: starts the supervisor, waits until the container runs (or
/// failed to), prints its id.
pub fn start_detached(
    global: &Global,
    containers: &Containers,
    record: &ContainerRecord,
) -> anyhow::Result<i32> {
    let dir = containers.dir(&record.id);
    let log_path = dir.join(SUPERVISOR_LOG);
    let log =
        File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find kiln's own executable")?;
    let mut child = std::process::Command::new(exe)
        .arg("--root")
        .arg(global.store_root()?)
        .arg("__supervise")
        .arg(&record.id)
        .stdin(ProcessStdio::null())
        .stdout(ProcessStdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start the container's supervisor")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = containers.state(&record.id)?;
        if let Some(error) = &state.error {
            bail!("{error}");
        }
        if state.status != ContainerStatus::Created {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let said = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!(
                "the container's supervisor ended ({status}) before it ran: {}",
                said.trim()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the container did not start within 2 minutes; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    crate::cmd::images::emit(&record.id)?;
    Ok(0)
}

#[derive(Debug, clap::Args)]
pub struct SuperviseArgs {
    id: String,
}

/// The supervisor of a detached container: runs it with its output in
/// `container.log`, records its state, removes it with `--rm`.
pub fn supervise(global: &Global, args: SuperviseArgs) -> CmdResult {
    // A session of its own: the terminal `kiln run -d` came from may close.
    let _ = nix::unistd::setsid();
    let signals = io::block_signals()?;
    let store = global.open_store()?;
    let containers = Containers::new(&store)?;
    let record = containers.find(&args.id)?;
    let spec = spec_of(&record)?;
    let lock = containers.lock_running(&record.id)?;
    let started = super::running_state();
    containers.write_state(&record.id, &started)?;
    let cancel = CancelToken::new();
    io::relay_signals(signals, cancel.clone(), None);
    let outcome = (|| {
        let log_path = containers.dir(&record.id).join(LOG_FILE);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let (stdio, logged) = io::logged(log, spec.interactive, spec.tty)?;
        let code = super::runner::run(&store, &containers, &record, &spec, stdio, &cancel);
        logged.finish();
        code
    })();
    if let Err(e) = &outcome {
        eprintln!("error: {e:#}");
    }
    super::finish(&containers, &record, &spec, &started, &outcome, lock)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Show every container, not only running ones.
    #[arg(short = 'a', long)]
    all: bool,
    /// Print only the ids.
    #[arg(short = 'q', long)]
    quiet: bool,
}

fn ago(seconds: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    human(now.saturating_sub(seconds))
}

fn human(seconds: u64) -> String {
    match seconds {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".into(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "About an hour".into(),
        s if s < 48 * 3600 => format!("{} hours", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

fn status_text(state: &ContainerState) -> String {
    match state.status {
        ContainerStatus::Created => "Created".into(),
        ContainerStatus::Running => format!("Up {}", ago(state.started.unwrap_or(0))),
        ContainerStatus::Exited => format!(
            "Exited ({}) {} ago",
            state.exit_code.unwrap_or(0),
            ago(state.finished.or(state.started).unwrap_or(0))
        ),
    }
}

/// `kiln ps`: the containers, as `docker ps` shows them.
pub fn ps(global: &Global, args: PsArgs) -> CmdResult {
    let store = global.open_store()?;
    let containers = Containers::new(&store)?;
    let mut rows = Vec::new();
    for record in containers.list()?.into_iter().rev() {
        let state = containers.state(&record.id)?;
        if !args.all && state.status != ContainerStatus::Running {
            continue;
        }
        if args.quiet {
            rows.push(vec![record.short_id().to_string()]);
            continue;
        }
        let spec = spec_of(&record).unwrap_or_default();
        let mut command = spec.command_line.clone();
        if command.chars().count() > 20 {
            command = format!("{}…", command.chars().take(19).collect::<String>());
        }
        rows.push(vec![
            record.short_id().to_string(),
            record.image.clone(),
            format!("\"{command}\""),
            format!("{} ago", ago(record.created)),
            status_text(&state),
            spec.ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            record.name.clone(),
        ]);
    }
    let mut out = String::new();
    if !args.quiet {
        rows.insert(
            0,
            [
                "CONTAINER ID",
                "IMAGE",
                "COMMAND",
                "CREATED",
                "STATUS",
                "PORTS",
                "NAMES",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        );
    }
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    print_stdout(out.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

fn print_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Keep printing what the container writes until it exits.
    #[arg(short = 'f', long)]
    follow: bool,
    /// The container: its name or id.
    container: String,
}

/// `kiln logs`: a detached container's output, stdout to stdout and stderr
/// to stderr.
pub fn logs(global: &Global, args: LogsArgs) -> CmdResult {
    let store = global.open_store()?;
    let containers = Containers::new(&store)?;
    let record = containers.find(&args.container)?;
    let path = containers.dir(&record.id).join(LOG_FILE);
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if spec_of(&record)?.detached {
                return Ok(ExitCode::SUCCESS);
            }
            bail!("container {} ran in the foreground: its output went to the terminal, kiln keeps logs of detached (-d) containers only", record.name);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let mut pending = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut chunk)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n > 0 {
            pending.extend_from_slice(&chunk[..n]);
            for (stream, bytes) in io::take_records(&mut pending) {
                if stream == io::STDERR {
                    let mut err = std::io::stderr().lock();
                    let _ = err.write_all(&bytes);
                } else {
                    print_stdout(&bytes)?;
                }
            }
            continue;
        }
        if !args.follow || !containers.is_running(&record.id)? {
            // One more read: what came between the last read and the check.
            let n = file.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                return Ok(ExitCode::SUCCESS);
            }
            pending.extend_from_slice(&chunk[..n]);
            for (stream, bytes) in io::take_records(&mut pending) {
                if stream == io::STDERR {
                    let _ = std::io::stderr().lock().write_all(&bytes);
                } else {
                    print_stdout(&bytes)?;
                }
            }
            continue;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// Seconds to wait after the stop signal before killing the container.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    time: u64,
    /// The containers: names or ids.
    #[arg(required = true)]
    containers: Vec<String>,
}

/// The signal `kiln stop` sends: the image's STOPSIGNAL, else SIGTERM.
fn stop_signal(spec: &ContainerSpec) -> anyhow::Result<Signal> {
    let Some(text) = &spec.stop_signal else {
        return Ok(Signal::SIGTERM);
    };
    if let Ok(number) = text.parse::<i32>() {
        return Signal::try_from(number)
            .with_context(|| format!("STOPSIGNAL {text} is not a signal"));
    }
    let name = text.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<Signal>()
        .with_context(|| format!("STOPSIGNAL {text} is not a signal"))
}

/// Stops a running container: its stop signal, then after `grace` the kill
/// (through its runner, which records the exit); a runner that does not
/// answer is killed itself (the kernel then kills the container).
fn stop_one(
    containers: &Containers,
    record: &ContainerRecord,
    grace: Duration,
) -> anyhow::Result<()> {
    let state = containers.state(&record.id)?;
    let Some(pid) = state
        .pid
        .filter(|_| state.status == ContainerStatus::Running)
    else {
        return Ok(());
    };
    let runner = Pid::from_raw(pid as i32);
    let spec = spec_of(record)?;
    let _ = kill(runner, stop_signal(&spec)?);
    if wait_stopped(containers, &record.id, grace)? {
        return Ok(());
    }
    let _ = kill(runner, io::KILL_REQUEST);
    if wait_stopped(containers, &record.id, Duration::from_secs(5))? {
        return Ok(());
    }
    let _ = kill(runner, Signal::SIGKILL);
    containers.wait_stopped(&record.id)?;
    if spec.auto_remove {
        let _ = containers.remove(&record.id);
    }
    Ok(())
}

/// Whether the container stopped running within `limit`.
fn wait_stopped(containers: &Containers, id: &str, limit: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + limit;
    loop {
        if !containers.is_running(id)? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `kiln stop`.
pub fn stop(global: &Global, args: StopArgs) -> CmdResult {
    let store = global.open_store()?;
    let containers = Containers::new(&store)?;
    for name in &args.containers {
        let record = containers.find(name)?;
        stop_one(&containers, &record, Duration::from_secs(args.time))?;
        crate::cmd::images::emit(name)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Kill a running container first.
    #[arg(short = 'f', long)]
    force: bool,
    /// The containers: names or ids.
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `kiln rm`: removes containers (writable layer, logs, anonymous volumes).
pub fn rm(global: &Global, args: RmArgs) -> CmdResult {
    let store = global.open_store()?;
    let containers = Containers::new(&store)?;
    for name in &args.containers {
        let record = containers.find(name)?;
        if args.force {
            stop_one(&containers, &record, Duration::ZERO)?;
        }
        match containers.remove(&record.id) {
            // A --rm container removed by its runner as it stopped.
            Err(_) if !containers.dir(&record.id).exists() => {}
            other => other?,
        }
        crate::cmd::images::emit(name)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// The containers: names or ids.
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `kiln wait`: blocks until each container stops, prints its exit code.
pub fn wait(global: &Global, args: WaitArgs) -> CmdResult {
    let store = global.open_store()?;
    let containers = Containers::new(&store)?;
    for name in &args.containers {
        let record = containers.find(name)?;
        containers.wait_stopped(&record.id)?;
        let code = match containers.state(&record.id) {
            Ok(state) => state.exit_code.unwrap_or(0),
            // Removed as it stopped (--rm): its code went with it.
            Err(_) => 0,
        };
        crate::cmd::images::emit(code)?;
    }
    Ok(ExitCode::SUCCESS)
}
