//! The parent side of a step: prepares the plan, starts the sandbox's init,
//! streams output, waits, and turns the outcome into a result.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::{pipe2, Pid};

use crate::cgroup::StepCgroup;
use crate::child;
use crate::diff::Upper;
use crate::error::{io_err, Error, Result};
use crate::plan::{prepare_scratch, PlanBuilder, Prepared, RootMode, Scratch, OVERLAY_STEP};
use crate::spec::{CancelToken, OutputLine, RunSpec, Stream};
use crate::syscalls::{Host, Syscalls};
use crate::userns::id_maps;
use crate::view::RootfsView;

/// Lines of output kept for the error of a failed step.
const LAST_LINES: usize = 10;
/// Longest line delivered whole; longer ones are split (a step printing
/// megabytes without a newline must not exhaust memory).
const MAX_LINE: usize = 64 * 1024;
/// How often a running step checks its cancel token.
const CANCEL_POLL: Duration = Duration::from_millis(20);

fn validate(spec: &RunSpec) -> Result<()> {
    if spec.argv.is_empty() {
        return Err(Error::InvalidSpec("no command to run".into()));
    }
    if !spec.cwd.is_empty() && !spec.cwd.starts_with('/') {
        return Err(Error::InvalidSpec(format!(
            "working directory {:?} is not absolute",
            spec.cwd
        )));
    }
    for mount in &spec.mounts {
        if !mount.target().starts_with('/') {
            return Err(Error::InvalidSpec(format!(
                "mount target {:?} is not absolute",
                mount.target()
            )));
        }
    }
    if spec.stdio.is_some() && spec.stdin.is_some() {
        return Err(Error::InvalidSpec(
            "stdin bytes and stdio descriptors are exclusive".into(),
        ));
    }
    if spec.hostname.len() > 64 || spec.hostname.contains('\0') {
        return Err(Error::InvalidSpec(format!(
            "hostname {:?} is longer than 64 bytes",
            spec.hostname
        )));
    }
    Ok(())
}

/// Output pipe reader: splits into lines, delivers them, keeps the last few.
struct LineSplitter {
    stream: Stream,
    buffer: Vec<u8>,
}

impl LineSplitter {
    fn feed(
        &mut self,
        bytes: &[u8],
        sink: &mut dyn FnMut(OutputLine),
        last: &mut VecDeque<String>,
    ) {
        self.buffer.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(pos) = self.buffer[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos;
            let mut line = &self.buffer[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            deliver(self.stream, line.to_vec(), sink, last);
            start = end + 1;
        }
        self.buffer.drain(..start);
        while self.buffer.len() > MAX_LINE {
            let rest = self.buffer.split_off(MAX_LINE);
            let line = std::mem::replace(&mut self.buffer, rest);
            deliver(self.stream, line, sink, last);
        }
    }

    fn finish(&mut self, sink: &mut dyn FnMut(OutputLine), last: &mut VecDeque<String>) {
        if !self.buffer.is_empty() {
            let line = std::mem::take(&mut self.buffer);
            deliver(self.stream, line, sink, last);
        }
    }
}

fn deliver(
    stream: Stream,
    bytes: Vec<u8>,
    sink: &mut dyn FnMut(OutputLine),
    last: &mut VecDeque<String>,
) {
    if last.len() == LAST_LINES {
        last.pop_front();
    }
    last.push_back(String::from_utf8_lossy(&bytes).into_owned());
    sink(OutputLine { stream, bytes });
}

/// What the sandbox reported.
#[derive(Default)]
struct Reports {
    failure: Option<(u32, i32)>,
    status: Option<i32>,
}

fn read_reports(buffer: &[u8], reports: &mut Reports) {
    for record in buffer.chunks_exact(8) {
        let kind = u32::from_ne_bytes([record[0], record[1], record[2], record[3]]);
        let value = i32::from_ne_bytes([record[4], record[5], record[6], record[7]]);
        if kind == child::REPORT_STATUS {
            reports.status = Some(value);
        } else if reports.failure.is_none() {
            reports.failure = Some((kind, value));
        }
    }
}

/// Runs one step; see [`run`](crate::run).
pub(crate) fn run(
    spec: &RunSpec,
    scratch_dir: &Path,
    cancel: &CancelToken,
    on_output: &mut dyn FnMut(OutputLine),
) -> Result<Upper> {
    validate(spec)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::Sandbox {
            step: "run a step as an ordinary user outside a user namespace (kiln enters one as it starts: kiln_executor::enter_user_namespace)".into(),
            errno: Errno::EPERM,
        });
    }
    if let Some(arch) = &spec.arch {
        crate::binfmt::check_binfmt(arch)?;
    }
    let scratch = prepare_scratch(scratch_dir)?;
    let view = RootfsView::new(&spec.lowers);
    let first = if spec.copy_rootfs {
        Err(Attempt::OverlayUnavailable(Errno::ENODEV))
    } else {
        attempt(spec, &scratch, RootMode::Overlay, &view, cancel, on_output)
    };
    match first {
        Err(Attempt::OverlayUnavailable(errno)) => {
            // Overlayfs is unavailable here (errno tells why): run on a copy.
            let _ = errno;
            fs::create_dir_all(&scratch.copy_root).map_err(io_err("create", &scratch.copy_root))?;
            let index = crate::copydiff::copy_view(&view, &scratch.copy_root)?;
            match attempt(spec, &scratch, RootMode::Copy, &view, cancel, on_output) {
                Ok(stubs) => {
                    crate::copydiff::diff_into_upper(
                        &index,
                        &scratch.copy_root,
                        &scratch.upper,
                        &stubs,
                    )?;
                    Ok(Upper::new(&scratch.upper, spec.lowers.clone()))
                }
                Err(Attempt::Failed(e)) => Err(e),
                Err(Attempt::OverlayUnavailable(errno)) => Err(Error::Sandbox {
                    step: "prepare the root filesystem".into(),
                    errno,
                }),
            }
        }
        Err(Attempt::Failed(e)) => Err(e),
        Ok(stubs) => {
            remove_stubs(&scratch.upper, &stubs);
            Ok(Upper::new(&scratch.upper, spec.lowers.clone()))
        }
    }
}

enum Attempt {
    OverlayUnavailable(Errno),
    Failed(Error),
}

impl From<Error> for Attempt {
    fn from(e: Error) -> Self {
        Attempt::Failed(e)
    }
}

/// The step's standard streams: the ends its main process gets (as 0, 1,
/// 2) and the ends kiln keeps (stdin to feed, output to read), which are
/// `None` for descriptors given in [`RunSpec::stdio`].
struct Streams {
    child: [OwnedFd; 3],
    stdin_w: Option<OwnedFd>,
    out_r: Option<OwnedFd>,
    err_r: Option<OwnedFd>,
}

impl Streams {
    fn open(spec: &RunSpec) -> Result<Streams> {
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(io_err("duplicate a descriptor of", "the step's stdio"))
        };
        if let Some(stdio) = &spec.stdio {
            return Ok(Streams {
                child: [dup(&stdio.stdin)?, dup(&stdio.stdout)?, dup(&stdio.stderr)?],
                stdin_w: None,
                out_r: None,
                err_r: None,
            });
        }
        let (stdin_source, stdin_w) = match &spec.stdin {
            Some(_) => {
                let (r, w) = pipe()?;
                (r, Some(w))
            }
            None => (
                File::open("/dev/null")
                    .map_err(io_err("open", "/dev/null"))?
                    .into(),
                None,
            ),
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        Ok(Streams {
            child: [stdin_source, out_w, err_w],
            stdin_w,
            out_r: Some(out_r),
            err_r: Some(err_r),
        })
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::Io {
        action: "create pipe for",
        path: PathBuf::from("the sandbox"),
        source: e.into(),
    })
}

/// One sandboxed run; returns the mountpoint stubs it created.
fn attempt(
    spec: &RunSpec,
    scratch: &Scratch,
    mode: RootMode,
    view: &RootfsView,
    cancel: &CancelToken,
    on_output: &mut dyn FnMut(OutputLine),
) -> std::result::Result<Vec<String>, Attempt> {
    let pipes = Pipes::open(spec)?;
    let cgroup = StepCgroup::create(&spec.limits)?;
    let userns = Some(id_maps()).filter(|maps| maps.in_user_namespace());
    let prepared = PlanBuilder::new(spec, scratch, mode, view, userns)
        .build(pipes.child_fds(), cgroup.is_some())?;
    let sys = Host;
    let (mut guard, kept) = start(&sys, &prepared, pipes, cgroup.as_ref())?;
    let feeder = feed_stdin(&spec.stdin, kept.stdin_w);
    let pumped = pump(
        &mut guard,
        [kept.out_r, kept.err_r, Some(kept.report_r)],
        spec.stdio.is_some(),
        cancel,
        on_output,
    )?;
    let init_status = guard.wait();
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    outcome(pumped, init_status, &prepared, mode, spec, cgroup.as_ref())
}

/// Every pipe of one run: the step's streams, the init's report pipe and the
/// go pipe (the init waits on it until it is in the step's cgroup).
struct Pipes {
    streams: Streams,
    report_r: OwnedFd,
    report_w: OwnedFd,
    go_r: OwnedFd,
    go_w: OwnedFd,
}

impl Pipes {
    fn open(spec: &RunSpec) -> Result<Pipes> {
        let streams = Streams::open(spec)?;
        let (report_r, report_w) = pipe()?;
        let (go_r, go_w) = pipe()?;
        Ok(Pipes {
            streams,
            report_r,
            report_w,
            go_r,
            go_w,
        })
    }

    /// The init's descriptors as numbered here: stdin, stdout, stderr,
    /// report, go.
    fn child_fds(&self) -> [RawFd; 5] {
        [
            self.streams.child[0].as_raw_fd(),
            self.streams.child[1].as_raw_fd(),
            self.streams.child[2].as_raw_fd(),
            self.report_w.as_raw_fd(),
            self.go_r.as_raw_fd(),
        ]
    }
}

/// The ends of [`Pipes`] kiln keeps once the init runs.
struct Kept {
    stdin_w: Option<OwnedFd>,
    out_r: Option<OwnedFd>,
    err_r: Option<OwnedFd>,
    report_r: OwnedFd,
}

/// Clones the sandbox's init, closes the init's ends here, and lets it go
/// once it is in the step's cgroup.
fn start<'s, S: Syscalls>(
    sys: &'s S,
    prepared: &Prepared,
    pipes: Pipes,
    cgroup: Option<&StepCgroup>,
) -> std::result::Result<(InitGuard<'s, S>, Kept), Attempt> {
    let init = sys
        .clone_init(prepared.flags, &prepared.plan)
        .map_err(|errno| Error::Sandbox {
            step: "create namespaces (clone)".into(),
            errno,
        })?;
    let Pipes {
        streams,
        report_r,
        report_w,
        go_r,
        go_w,
    } = pipes;
    let Streams {
        child: child_ends,
        stdin_w,
        out_r,
        err_r,
    } = streams;
    drop((child_ends, report_w, go_r));
    let guard = InitGuard {
        sys,
        pid: Some(init),
    };
    if let Some(cgroup) = cgroup {
        cgroup.add(init)?;
        sys.signal_go(go_w.as_raw_fd());
    }
    drop(go_w);
    let kept = Kept {
        stdin_w,
        out_r,
        err_r,
        report_r,
    };
    Ok((guard, kept))
}

/// Feeds stdin from a helper thread so a step that never reads it cannot
/// block us.
fn feed_stdin(
    stdin: &Option<Vec<u8>>,
    stdin_w: Option<OwnedFd>,
) -> Option<std::thread::JoinHandle<()>> {
    match (stdin, stdin_w) {
        (Some(bytes), Some(stdin_w)) => {
            let bytes = bytes.clone();
            let mut file = File::from(stdin_w);
            Some(std::thread::spawn(move || {
                let _ = file.write_all(&bytes);
            }))
        }
        _ => None,
    }
}

/// What [`pump`] read until every pipe closed.
struct Pumped {
    /// The last lines of output.
    last: VecDeque<String>,
    /// The init's report records.
    reports: Vec<u8>,
    /// The step was cancelled (and its init killed).
    cancelled: bool,
}

/// Reads stdout, stderr and the report pipe (`open`, in this order) until
/// all are closed, delivering output lines as they come; kills the init
/// when `cancel` fires, and forwards the signals given to `cancel` when
/// `forward` (`kiln run`).
fn pump<S: Syscalls>(
    guard: &mut InitGuard<'_, S>,
    mut open: [Option<OwnedFd>; 3],
    forward: bool,
    cancel: &CancelToken,
    on_output: &mut dyn FnMut(OutputLine),
) -> std::result::Result<Pumped, Attempt> {
    let mut pumped = Pumped {
        last: VecDeque::new(),
        reports: Vec::new(),
        cancelled: false,
    };
    let mut out = LineSplitter {
        stream: Stream::Stdout,
        buffer: Vec::new(),
    };
    let mut err = LineSplitter {
        stream: Stream::Stderr,
        buffer: Vec::new(),
    };
    let mut buffer = vec![0u8; 64 * 1024];
    while open.iter().any(Option::is_some) {
        if !pumped.cancelled && cancel.is_cancelled() {
            pumped.cancelled = true;
            guard.kill();
        }
        if forward {
            guard.forward(cancel.take_signals());
        }
        for i in ready(&open)? {
            let Some(fd) = &open[i] else { continue };
            match nix::unistd::read(fd, &mut buffer) {
                Ok(0) => open[i] = None,
                Ok(n) => match i {
                    0 => out.feed(&buffer[..n], on_output, &mut pumped.last),
                    1 => err.feed(&buffer[..n], on_output, &mut pumped.last),
                    _ => pumped.reports.extend_from_slice(&buffer[..n]),
                },
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(_) => open[i] = None,
            }
        }
    }
    out.finish(on_output, &mut pumped.last);
    err.finish(on_output, &mut pumped.last);
    Ok(pumped)
}

/// Indices of the open descriptors with something to read, waiting at most
/// [`CANCEL_POLL`]; none after a timeout or an interruption.
fn ready(open: &[Option<OwnedFd>; 3]) -> std::result::Result<Vec<usize>, Attempt> {
    let mut poll_fds: Vec<PollFd> = Vec::new();
    let mut which = Vec::new();
    for (i, fd) in open.iter().enumerate() {
        if let Some(fd) = fd {
            poll_fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            which.push(i);
        }
    }
    match poll(
        &mut poll_fds,
        PollTimeout::try_from(CANCEL_POLL).unwrap_or(PollTimeout::MAX),
    ) {
        Ok(0) | Err(Errno::EINTR) => return Ok(Vec::new()),
        Ok(_) => {}
        Err(errno) => {
            return Err(Attempt::Failed(Error::Sandbox {
                step: "wait for output".into(),
                errno,
            }))
        }
    }
    Ok(poll_fds
        .iter()
        .zip(&which)
        .filter(|(p, _)| p.revents().is_some_and(|r| !r.is_empty()))
        .map(|(_, i)| *i)
        .collect())
}

/// The run's result from what the init reported: a setup failure (of the
/// overlay mount: overlayfs is unavailable), the main process' status, or
/// none at all.
fn outcome(
    pumped: Pumped,
    init_status: Option<WaitStatus>,
    prepared: &Prepared,
    mode: RootMode,
    spec: &RunSpec,
    cgroup: Option<&StepCgroup>,
) -> std::result::Result<Vec<String>, Attempt> {
    if pumped.cancelled {
        return Err(Attempt::Failed(Error::Cancelled));
    }
    let mut reports = Reports::default();
    read_reports(&pumped.reports, &mut reports);
    let last_lines: Vec<String> = pumped.last.into_iter().collect();
    if let Some((kind, errno)) = reports.failure {
        let errno = Errno::from_raw(errno);
        let overlay_index = prepared.descriptions.iter().position(|d| d == OVERLAY_STEP);
        if Some(kind as usize) == overlay_index && mode == RootMode::Overlay {
            return Err(Attempt::OverlayUnavailable(errno));
        }
        return Err(Attempt::Failed(failure_error(
            kind,
            errno,
            &prepared.descriptions,
            spec,
        )));
    }
    let Some(status) = reports.status else {
        return Err(Attempt::Failed(Error::Sandbox {
            step: format!("the sandbox's init ended unexpectedly ({init_status:?})"),
            errno: Errno::UnknownErrno,
        }));
    };
    if status != 0 && cgroup.is_some_and(|c| c.out_of_memory()) {
        return Err(Attempt::Failed(Error::OutOfMemory {
            limit: spec.limits.memory.unwrap_or_default(),
            last_lines,
        }));
    }
    exit_status(status, last_lines)?;
    Ok(prepared.stubs.clone())
}

/// The main process' raw wait `status` as a result: killed by a signal,
/// exited non-zero, or success.
fn exit_status(status: i32, last_lines: Vec<String>) -> Result<()> {
    if status & 0x7f != 0 {
        return Err(Error::Signaled {
            signal: status & 0x7f,
            last_lines,
        });
    }
    let code = (status >> 8) & 0xff;
    if code != 0 {
        return Err(Error::ExitCode { code, last_lines });
    }
    Ok(())
}
fn failure_error(kind: u32, errno: Errno, descriptions: &[String], spec: &RunSpec) -> Error {
    let program = spec.argv.first().cloned().unwrap_or_default();
    match kind {
        child::REPORT_EXEC => Error::Exec {
            reason: match errno {
                Errno::ENOENT => "no such file in the image (or in its PATH)".to_owned(),
                Errno::ENOEXEC => "not an executable for this architecture or without an interpreter; set the platform or run `kiln setup-binfmt`".to_owned(),
                other => other.desc().to_owned(),
            },
            program,
            errno,
        },
        child::REPORT_IDENTITY => Error::Sandbox {
            step: format!("switch to user {:?}", spec.user),
            errno,
        },
        child::REPORT_CAPS => Error::Sandbox { step: "drop capabilities".into(), errno },
        child::REPORT_FORK => Error::Sandbox { step: "start the step's process".into(), errno },
        child::REPORT_SECCOMP => Error::Sandbox { step: "load the seccomp filter".into(), errno },
        child::REPORT_NETNS => Error::Sandbox { step: "join the build's network namespace".into(), errno },
        child::REPORT_RLIMIT => Error::Sandbox { step: "set the --ulimit limits".into(), errno },
        child::REPORT_SESSION => Error::Sandbox { step: "start a session with the terminal".into(), errno },
        child::REPORT_SIGNALS => Error::Sandbox { step: "forward signals to the process".into(), errno },
        index => {
            let mut step = descriptions.get(index as usize).cloned().unwrap_or_else(|| format!("setup step {index}"));
            if step == "mount /proc" && errno == Errno::EPERM && crate::userns::in_user_namespace() {
                // The kernel refuses a new /proc where the one kiln sees has masked paths.
                step.push_str(" (in a user namespace a new /proc needs an unmasked one: in a container, --security-opt systempaths=unconfined or procMount: Unmasked)");
            }
            Error::Sandbox { step, errno }
        }
    }
}

/// Removes the mountpoints the sandbox created in the upper dir (deepest first),
/// unless the step put something inside them.
fn remove_stubs(upper: &Path, stubs: &[String]) {
    for stub in stubs.iter().rev() {
        let path = upper.join(stub.trim_start_matches('/'));
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                let _ = fs::remove_dir(&path);
            }
            Ok(meta) if meta.is_file() && meta.len() == 0 => {
                let _ = fs::remove_file(&path);
            }
            _ => {}
        }
    }
}

/// Kills and reaps the sandbox's init if the step ends early (error, cancel,
/// panic in a callback): nothing outlives `run`.
struct InitGuard<'s, S: Syscalls> {
    sys: &'s S,
    pid: Option<Pid>,
}

impl<S: Syscalls> InitGuard<'_, S> {
    /// Sends each signal of the bit set to init, which passes it on to the
    /// main process.
    fn forward(&self, signals: u64) {
        let Some(pid) = self.pid else { return };
        for number in 1..64 {
            if signals & (1 << number) != 0 {
                if let Ok(signal) = Signal::try_from(number) {
                    self.sys.kill(pid, signal);
                }
            }
        }
    }

    fn kill(&mut self) {
        if let Some(pid) = self.pid {
            self.sys.kill(pid, Signal::SIGKILL);
        }
    }

    fn wait(&mut self) -> Option<WaitStatus> {
        let pid = self.pid.take()?;
        self.sys.wait(pid)
    }
}

impl<S: Syscalls> Drop for InitGuard<'_, S> {
    fn drop(&mut self) {
        if self.pid.is_some() {
            self.kill();
            self.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscalls::recording::{Call, Recorder};

    /// A plan for `true` over an image of one snapshot (overlay mode, so it
    /// has the overlay mount); the temporary dirs live as long as it.
    fn prepared(fds: [RawFd; 5]) -> (Prepared, [tempfile::TempDir; 2]) {
        let root = tempfile::tempdir().unwrap();
        let lower = root.path().join("snap");
        for dir in ["proc", "dev", "sys", "etc"] {
            fs::create_dir_all(lower.join(dir)).unwrap();
        }
        let scratch_dir = tempfile::tempdir().unwrap();
        let scratch = prepare_scratch(scratch_dir.path()).unwrap();
        let spec = spec(vec![lower]);
        let view = RootfsView::new(&spec.lowers);
        let prepared = PlanBuilder::new(&spec, &scratch, RootMode::Overlay, &view, None)
            .build(fds, false)
            .unwrap();
        (prepared, [root, scratch_dir])
    }

    fn spec(lowers: Vec<PathBuf>) -> RunSpec {
        RunSpec {
            lowers,
            argv: vec!["true".into()],
            ..RunSpec::default()
        }
    }

    fn record(kind: u32, value: i32) -> Vec<u8> {
        let mut bytes = kind.to_ne_bytes().to_vec();
        bytes.extend_from_slice(&value.to_ne_bytes());
        bytes
    }

    fn pumped(reports: Vec<u8>) -> Pumped {
        Pumped {
            last: VecDeque::from(["last".to_owned()]),
            reports,
            cancelled: false,
        }
    }

    #[test]
    fn start_clones_into_the_plans_namespaces_and_keeps_only_kilns_ends() {
        let pipes = Pipes::open(&RunSpec::default()).unwrap();
        let (prepared, _dirs) = prepared(pipes.child_fds());
        let sys = Recorder::new();
        let Ok((guard, kept)) = start(&sys, &prepared, pipes, None) else {
            panic!("start failed")
        };
        // No cgroup: the init is not held back, so no go byte.
        assert_eq!(sys.calls(), [Call::Clone(prepared.flags)]);
        // The init's ends are closed here: the output pipes are at their end.
        let mut buffer = [0u8; 8];
        for fd in [kept.out_r.as_ref().unwrap(), kept.err_r.as_ref().unwrap()] {
            assert_eq!(nix::unistd::read(fd, &mut buffer), Ok(0));
        }
        assert_eq!(nix::unistd::read(&kept.report_r, &mut buffer), Ok(0));
        assert!(kept.stdin_w.is_none());
        // A run that ends early kills and reaps its init.
        drop(guard);
        assert_eq!(
            sys.calls()[1..],
            [Call::Kill(sys.pid, Signal::SIGKILL), Call::Wait(sys.pid)]
        );
    }

    #[test]
    fn a_failed_clone_is_a_sandbox_error_with_nothing_to_reap() {
        let pipes = Pipes::open(&RunSpec::default()).unwrap();
        let (prepared, _dirs) = prepared(pipes.child_fds());
        let mut sys = Recorder::new();
        sys.clone_error = Some(Errno::EPERM);
        match start(&sys, &prepared, pipes, None) {
            Err(Attempt::Failed(Error::Sandbox { step, errno })) => {
                assert_eq!(step, "create namespaces (clone)");
                assert_eq!(errno, Errno::EPERM);
            }
            _ => panic!("not a clone failure"),
        }
        assert_eq!(sys.calls(), [Call::Clone(prepared.flags)]);
    }

    /// Three pipes holding `out`, `err` and `reports`, their writers closed.
    fn filled(out: &[u8], err: &[u8], reports: &[u8]) -> [Option<OwnedFd>; 3] {
        [out, err, reports].map(|bytes| {
            let (r, w) = pipe().unwrap();
            File::from(w).write_all(bytes).unwrap();
            Some(r)
        })
    }

    #[test]
    fn pump_delivers_lines_and_collects_reports() {
        let sys = Recorder::new();
        let mut guard = InitGuard {
            sys: &sys,
            pid: Some(sys.pid),
        };
        let status = record(child::REPORT_STATUS, 0);
        let mut lines = Vec::new();
        let Ok(pumped) = pump(
            &mut guard,
            filled(b"a\nb", b"e\r\n", &status),
            false,
            &CancelToken::new(),
            &mut |line| lines.push((line.stream, line.bytes)),
        ) else {
            panic!("pump failed")
        };
        assert!(lines.contains(&(Stream::Stdout, b"a".to_vec())));
        assert!(lines.contains(&(Stream::Stdout, b"b".to_vec())));
        assert!(lines.contains(&(Stream::Stderr, b"e".to_vec())));
        assert_eq!(lines.len(), 3);
        assert_eq!(pumped.reports, status);
        assert_eq!(pumped.last.len(), 3);
        assert!(!pumped.cancelled);
        assert_eq!(sys.calls(), []);
        guard.pid = None;
    }

    #[test]
    fn pump_kills_a_cancelled_step_once_and_forwards_signals() {
        let sys = Recorder::new();
        let mut guard = InitGuard {
            sys: &sys,
            pid: Some(sys.pid),
        };
        let cancel = CancelToken::new();
        cancel.forward_signal(libc::SIGTERM);
        cancel.cancel();
        let Ok(pumped) = pump(
            &mut guard,
            filled(b"", b"", b""),
            true,
            &cancel,
            &mut |_| {},
        ) else {
            panic!("pump failed")
        };
        assert!(pumped.cancelled);
        assert_eq!(
            sys.calls(),
            [
                Call::Kill(sys.pid, Signal::SIGKILL),
                Call::Kill(sys.pid, Signal::SIGTERM)
            ]
        );
        // Signals are forwarded only to `kiln run`'s steps.
        let cancel = CancelToken::new();
        cancel.forward_signal(libc::SIGTERM);
        let before = sys.calls().len();
        let Ok(_) = pump(
            &mut guard,
            filled(b"", b"", b""),
            false,
            &cancel,
            &mut |_| {},
        ) else {
            panic!("pump failed")
        };
        assert_eq!(sys.calls().len(), before);
        assert_eq!(guard.wait(), Some(WaitStatus::Exited(sys.pid, 0)));
        assert_eq!(guard.wait(), None);
    }

    #[test]
    fn outcome_turns_reports_into_results() {
        let (prepared, _dirs) = prepared([0; 5]);
        let spec = spec(Vec::new());
        let run =
            |reports: Vec<u8>, mode| outcome(pumped(reports), None, &prepared, mode, &spec, None);
        let status = |raw| record(child::REPORT_STATUS, raw);
        assert!(matches!(run(status(0), RootMode::Overlay), Ok(stubs) if stubs == prepared.stubs));
        match run(status(3 << 8), RootMode::Overlay) {
            Err(Attempt::Failed(Error::ExitCode { code, last_lines })) => {
                assert_eq!((code, last_lines), (3, vec!["last".to_owned()]));
            }
            _ => panic!("not an exit code"),
        }
        assert!(matches!(
            run(status(9), RootMode::Overlay),
            Err(Attempt::Failed(Error::Signaled { signal: 9, .. }))
        ));
        // The overlay mount failing means overlayfs is unavailable, unless
        // the run is already on a copy.
        let overlay = position_of(&prepared, OVERLAY_STEP);
        let failed = || record(overlay, Errno::EINVAL as i32);
        assert!(matches!(
            run(failed(), RootMode::Overlay),
            Err(Attempt::OverlayUnavailable(Errno::EINVAL))
        ));
        match run(failed(), RootMode::Copy) {
            Err(Attempt::Failed(Error::Sandbox { step, errno })) => {
                assert_eq!((step.as_str(), errno), (OVERLAY_STEP, Errno::EINVAL));
            }
            _ => panic!("not a sandbox error"),
        }
        // The first failure counts; a status after it does not.
        let mut exec = record(child::REPORT_EXEC, Errno::ENOENT as i32);
        exec.extend(record(position_of(&prepared, "mount /proc"), 1));
        exec.extend(status(0));
        match run(exec, RootMode::Overlay) {
            Err(Attempt::Failed(Error::Exec { program, errno, .. })) => {
                assert_eq!((program.as_str(), errno), ("true", Errno::ENOENT));
            }
            _ => panic!("not an exec error"),
        }
        match run(Vec::new(), RootMode::Overlay) {
            Err(Attempt::Failed(Error::Sandbox { step, .. })) => {
                assert!(step.contains("ended unexpectedly"), "{step}");
            }
            _ => panic!("not a sandbox error"),
        }
        let mut cancelled = pumped(status(0));
        cancelled.cancelled = true;
        assert!(matches!(
            outcome(cancelled, None, &prepared, RootMode::Overlay, &spec, None),
            Err(Attempt::Failed(Error::Cancelled))
        ));
    }

    fn position_of(prepared: &Prepared, what: &str) -> u32 {
        prepared
            .descriptions
            .iter()
            .position(|d| d == what)
            .unwrap() as u32
    }
}
