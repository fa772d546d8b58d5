//! The syscalls the parent makes on the sandbox's init, behind a trait: the
//! real [`Host`] goes through `sys.rs` and nix, and tests use a recording
//! double so the phases of a run can be checked without root.

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::child::{self, Plan};
use crate::sys;

/// What the parent does to the sandbox's init.
pub(crate) trait Syscalls {
    /// Creates the sandbox's init in new `flags` namespaces; the child runs
    /// `plan` and never returns here.
    fn clone_init(&self, flags: CloneFlags, plan: &Plan) -> Result<Pid, Errno>;
    /// Writes the go byte on `fd`: the init may start (it waited to be
    /// moved into the step's cgroup).
    fn signal_go(&self, fd: std::os::fd::RawFd);
    /// Sends `signal` to `pid`, ignoring failures (it may be gone already).
    fn kill(&self, pid: Pid, signal: Signal);
    /// Reaps `pid`; `None` when it cannot be waited for.
    fn wait(&self, pid: Pid) -> Option<WaitStatus>;
}

/// The real syscalls.
pub(crate) struct Host;

impl Syscalls for Host {
    fn clone_init(&self, flags: CloneFlags, plan: &Plan) -> Result<Pid, Errno> {
        match sys::clone_process(flags.bits())? {
            Some(pid) => Ok(pid),
            None => child::init_main(plan),
        }
    }

    fn signal_go(&self, fd: std::os::fd::RawFd) {
        sys::write_all(fd, b"g");
    }

    fn kill(&self, pid: Pid, signal: Signal) {
        let _ = nix::sys::signal::kill(pid, signal);
    }

    fn wait(&self, pid: Pid) -> Option<WaitStatus> {
        loop {
            match waitpid(pid, None) {
                Err(Errno::EINTR) => continue,
                Ok(status) => return Some(status),
                Err(_) => return None,
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod recording {
    //! A [`Syscalls`] double that records every call and runs nothing.

    use std::cell::RefCell;

    use super::*;

    /// One recorded call.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Call {
        Clone(CloneFlags),
        Go,
        Kill(Pid, Signal),
        Wait(Pid),
    }

    /// Records calls; `clone_init` "starts" `pid` (or fails with `clone_error`),
    /// and `wait` reports it exited with `exit_code`.
    pub(crate) struct Recorder {
        pub(crate) calls: RefCell<Vec<Call>>,
        pub(crate) pid: Pid,
        pub(crate) clone_error: Option<Errno>,
        pub(crate) exit_code: i32,
    }

    impl Recorder {
        pub(crate) fn new() -> Self {
            Recorder {
                calls: RefCell::new(Vec::new()),
                pid: Pid::from_raw(4242),
                clone_error: None,
                exit_code: 0,
            }
        }

        pub(crate) fn calls(&self) -> Vec<Call> {
            self.calls.borrow().clone()
        }
    }

    impl Syscalls for Recorder {
        fn clone_init(&self, flags: CloneFlags, _plan: &Plan) -> Result<Pid, Errno> {
            self.calls.borrow_mut().push(Call::Clone(flags));
            match self.clone_error {
                Some(errno) => Err(errno),
                None => Ok(self.pid),
            }
        }

        fn signal_go(&self, _fd: std::os::fd::RawFd) {
            self.calls.borrow_mut().push(Call::Go);
        }

        fn kill(&self, pid: Pid, signal: Signal) {
            self.calls.borrow_mut().push(Call::Kill(pid, signal));
        }

        fn wait(&self, pid: Pid) -> Option<WaitStatus> {
            self.calls.borrow_mut().push(Call::Wait(pid));
            Some(WaitStatus::Exited(pid, self.exit_code))
        }
    }
}
