//! Terminals for `kiln run -t`: a pseudo-terminal pair whose replica side a
//! container's main process gets as its controlling terminal, the host
//! terminal in raw mode while kiln relays it, and window sizes.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::termios::{self, SetArg, Termios};

use crate::error::{Error, Result};

fn term_err(action: &'static str) -> impl FnOnce(nix::errno::Errno) -> Error {
    move |errno| Error::Io {
        action,
        path: PathBuf::from("the terminal"),
        source: errno.into(),
    }
}

/// A pseudo-terminal: kiln reads and writes `controller`; the container's
/// process gets `replica` as its stdin, stdout and stderr.
#[derive(Debug)]
pub struct Pty {
    /// The side kiln reads and writes.
    pub controller: OwnedFd,
    /// The side the process gets as its terminal.
    pub replica: OwnedFd,
}

impl Pty {
    /// A new pair, its window the size of `like` when that is a terminal.
    pub fn open(like: Option<BorrowedFd<'_>>) -> Result<Pty> {
        let pair = nix::pty::openpty(None, None).map_err(term_err("open a pseudo-terminal for"))?;
        let pty = Pty {
            controller: pair.master,
            replica: pair.slave,
        };
        if let Some(like) = like {
            let _ = copy_window_size(like, pty.controller.as_fd());
        }
        Ok(pty)
    }
}

/// Gives `to` the window size of the terminal `from` (the container's
/// foreground process group gets SIGWINCH when it changes).
pub fn copy_window_size(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> Result<()> {
    let size = crate::sys::window_size(from.as_raw_fd()).map_err(term_err("read the size of"))?;
    crate::sys::set_window_size(to.as_raw_fd(), &size).map_err(term_err("set the size of"))
}

/// The host terminal in raw mode (no echo, no line editing, no signals from
/// keys: Ctrl-C reaches the container as a byte); restored when dropped.
#[derive(Debug)]
pub struct RawMode {
    fd: OwnedFd,
    saved: Termios,
}

impl RawMode {
    /// Puts the terminal `fd` in raw mode.
    pub fn enter(fd: BorrowedFd<'_>) -> Result<RawMode> {
        let fd = fd.try_clone_to_owned().map_err(|source| Error::Io {
            action: "duplicate",
            path: PathBuf::from("the terminal"),
            source,
        })?;
        let saved = termios::tcgetattr(&fd).map_err(term_err("read the settings of"))?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&fd, SetArg::TCSANOW, &raw).map_err(term_err("set raw mode on"))?;
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(&self.fd, SetArg::TCSANOW, &self.saved);
    }
}
