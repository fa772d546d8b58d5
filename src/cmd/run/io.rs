//! A container's standard streams: kiln's own (foreground), a terminal
//! relayed to kiln's (`-t`), or a log file (`-d`); and the signals kiln
//! passes on to the container.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context};
use kiln_executor::{CancelToken, Pty, RawMode, Stdio};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};

use super::runner::shared;

/// The signal `kiln stop` sends the process running a container when the
/// container did not stop in time: it kills the container (SIGKILL cannot
/// be relayed, and the runner must live to record the exit).
pub const KILL_REQUEST: Signal = Signal::SIGPWR;

/// Signals kiln relays to the container (and SIGWINCH for `-t`,
/// [`KILL_REQUEST`] for `kiln stop`).
const RELAYED: [Signal; 9] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCONT,
    Signal::SIGWINCH,
    KILL_REQUEST,
];

/// Blocks the relayed signals in the calling thread, and so in every thread
/// it starts: call before any thread exists; [`relay_signals`] then takes
/// them synchronously.
pub fn block_signals() -> anyhow::Result<SigSet> {
    let mut set = SigSet::empty();
    for signal in RELAYED {
        set.add(signal);
    }
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .context("cannot block signals")?;
    Ok(set)
}

/// A thread that passes the signals of `set` on to the container through
/// `cancel`; with `resize`, SIGWINCH copies the host terminal's window size
/// to the container's.
pub fn relay_signals(set: SigSet, cancel: CancelToken, resize: Option<(OwnedFd, Arc<OwnedFd>)>) {
    std::thread::spawn(move || loop {
        match set.wait() {
            Ok(Signal::SIGWINCH) => {
                if let Some((host, controller)) = &resize {
                    let _ = kiln_executor::copy_window_size(host.as_fd(), controller.as_fd());
                }
            }
            Ok(signal) if signal == KILL_REQUEST => cancel.cancel(),
            Ok(signal) => cancel.forward_signal(signal as i32),
            Err(_) => return,
        }
    });
}

fn dup(fd: impl AsFd, what: &str) -> anyhow::Result<Arc<OwnedFd>> {
    Ok(shared(
        fd.as_fd()
            .try_clone_to_owned()
            .with_context(|| format!("cannot duplicate {what}"))?,
    ))
}

fn dev_null() -> anyhow::Result<Arc<OwnedFd>> {
    Ok(shared(
        File::open("/dev/null").context("cannot open /dev/null")?,
    ))
}

/// kiln's own streams for a foreground container without `-t` (stdin only
/// with `-i`).
pub fn inherited(interactive: bool) -> anyhow::Result<Stdio> {
    Ok(Stdio {
        stdin: if interactive {
            dup(std::io::stdin(), "stdin")?
        } else {
            dev_null()?
        },
        stdout: dup(std::io::stdout(), "stdout")?,
        stderr: dup(std::io::stderr(), "stderr")?,
        terminal: false,
    })
}

/// A foreground `-t`: the container's terminal relayed to kiln's, which is
/// in raw mode while it runs (with `-i`).
pub struct Relay {
    _raw: Option<RawMode>,
    output: JoinHandle<()>,
    /// For SIGWINCH.
    pub controller: Arc<OwnedFd>,
}

impl Relay {
    /// Waits for the last of the container's output, then restores the
    /// terminal.
    pub fn finish(self) {
        let _ = self.output.join();
    }
}

/// The streams of a foreground `-t` container and the relay that serves them.
pub fn terminal(interactive: bool) -> anyhow::Result<(Stdio, Relay)> {
    let stdin = std::io::stdin();
    if interactive && !stdin.is_terminal() {
        bail!("the input device is not a TTY: drop -t, or run kiln from a terminal");
    }
    let stdout = std::io::stdout();
    let like = if stdout.is_terminal() {
        Some(stdout.as_fd())
    } else if stdin.is_terminal() {
        Some(stdin.as_fd())
    } else {
        None
    };
    let pty = Pty::open(like)?;
    let controller = shared(pty.controller);
    let replica = shared(pty.replica);
    let raw = match interactive {
        true => Some(RawMode::enter(stdin.as_fd())?),
        false => None,
    };
    if interactive {
        let mut to_container = File::from(controller.as_ref().try_clone()?);
        std::thread::spawn(move || {
            let mut input = std::io::stdin().lock();
            let mut buffer = [0u8; 4096];
            loop {
                match input.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if to_container.write_all(&buffer[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    let mut from_container = File::from(controller.as_ref().try_clone()?);
    let output = std::thread::spawn(move || {
        let mut out = std::io::stdout().lock();
        let mut buffer = [0u8; 4096];
        // EIO once the container's last process closed the terminal.
        while let Ok(n) = from_container.read(&mut buffer) {
            if n == 0 || out.write_all(&buffer[..n]).is_err() {
                break;
            }
            let _ = out.flush();
        }
    });
    let stdio = Stdio {
        stdin: replica.clone(),
        stdout: replica.clone(),
        stderr: replica,
        terminal: true,
    };
    Ok((
        stdio,
        Relay {
            _raw: raw,
            output,
            controller,
        },
    ))
}

/// Which stream a log record holds.
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;

/// Streams of a detached container: its output goes to the log file as
/// records `[stream: u8][length: u32 LE][bytes]` (in the order it came);
/// with `-i` its stdin is a pipe kept open (and never written) until it
/// ends, as `docker run -di` keeps it.
pub struct Logged {
    pump: JoinHandle<()>,
    _stdin_writer: Option<OwnedFd>,
}

impl Logged {
    /// Waits until the log has everything the container wrote.
    pub fn finish(self) {
        let _ = self.pump.join();
    }
}

pub fn logged(log: File, interactive: bool, tty: bool) -> anyhow::Result<(Stdio, Logged)> {
    let (stdin, stdin_writer) = if interactive {
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot make a pipe")?;
        (shared(r), Some(w))
    } else {
        (dev_null()?, None)
    };
    let (stdio, sources) = if tty {
        let pty = Pty::open(None)?;
        let replica = shared(pty.replica);
        let stdio = Stdio {
            stdin: if interactive { replica.clone() } else { stdin },
            stdout: replica.clone(),
            stderr: replica,
            terminal: true,
        };
        (stdio, vec![(STDOUT, pty.controller)])
    } else {
        let pipe =
            || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot make a pipe");
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let stdio = Stdio {
            stdin,
            stdout: shared(out_w),
            stderr: shared(err_w),
            terminal: false,
        };
        (stdio, vec![(STDOUT, out_r), (STDERR, err_r)])
    };
    let pump = std::thread::spawn(move || pump(log, sources));
    Ok((
        stdio,
        Logged {
            pump,
            _stdin_writer: stdin_writer,
        },
    ))
}

/// Copies what the sources say into `log` as records, until all of them end.
fn pump(mut log: File, mut sources: Vec<(u8, OwnedFd)>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut buffer = vec![0u8; 64 * 1024];
    while !sources.is_empty() {
        let mut fds: Vec<PollFd> = sources
            .iter()
            .map(|(_, fd)| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        if let Err(e) = poll(&mut fds, PollTimeout::NONE) {
            if e == nix::errno::Errno::EINTR {
                continue;
            }
            return;
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut ended = Vec::new();
        for (index, (stream, fd)) in sources.iter().enumerate() {
            if !ready[index] {
                continue;
            }
            match nix::unistd::read(fd, &mut buffer) {
                Ok(0) | Err(_) => ended.push(index),
                Ok(n) => {
                    let mut record = Vec::with_capacity(n + 5);
                    record.push(*stream);
                    record.extend_from_slice(&(n as u32).to_le_bytes());
                    record.extend_from_slice(&buffer[..n]);
                    let _ = log.write_all(&record);
                }
            }
        }
        for index in ended.into_iter().rev() {
            sources.remove(index);
        }
    }
    let _ = log.sync_data();
}

/// Splits log records off the front of `buffer`, leaving a partial one.
pub fn take_records(buffer: &mut Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let mut records = Vec::new();
    let mut at = 0;
    while buffer.len() >= at + 5 {
        let len = u32::from_le_bytes([
            buffer[at + 1],
            buffer[at + 2],
            buffer[at + 3],
            buffer[at + 4],
        ]) as usize;
        if buffer.len() < at + 5 + len {
            break;
        }
        records.push((buffer[at], buffer[at + 5..at + 5 + len].to_vec()));
        at += 5 + len;
    }
    buffer.drain(..at);
    records
}
