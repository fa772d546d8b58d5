//! The process that keeps a rootless kiln's user namespace for the kilns
//! after it, as podman's pause process does.
//!
//! Making the namespace costs a helper process and two setuid programs
//! (`newuidmap`, `newgidmap`): about 3 ms, which is most of a warm build.
//! So the first rootless kiln leaves a small process (`kiln-userns`) in the
//! namespace, and a later kiln of the same user joins it with `setns`. It
//! joins only a namespace whose maps are exactly the ones it would write,
//! held by a process of the user's own; otherwise it makes a namespace as
//! before. The keeper ends on its own once no kiln has joined for
//! [`IDLE`], or when another keeper has taken its place.
//!
//! Its pid is in `$XDG_RUNTIME_DIR/kiln/userns.pid`, else
//! `$HOME/.cache/kiln/userns.pid` (a directory of the user's, mode 0700).

use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::sched::CloneFlags;

use crate::userns::{parse_id_map, IdRange};

/// How long a keeper waits for a kiln to join before it ends.
pub const IDLE: Duration = Duration::from_secs(600);

/// How often a keeper looks at its pid file.
const CHECK_EVERY: Duration = Duration::from_secs(20);

/// The keeper's name in `ps` (and its check that a pid is one).
const NAME: &str = "kiln-userns";

/// The pid file, in a directory only the user can write; `None` when there
/// is no such place (then every kiln makes its own namespace).
pub(crate) fn pid_file(uid: u32) -> Option<PathBuf> {
    pid_file_in(
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
        uid,
    )
}

fn pid_file_in(runtime: Option<PathBuf>, home: Option<PathBuf>, uid: u32) -> Option<PathBuf> {
    let base = match runtime.filter(|dir| owned_by(dir, uid)) {
        Some(dir) => dir.join("kiln"),
        None => home?.join(".cache/kiln"),
    };
    Some(base.join("userns.pid"))
}

fn owned_by(path: &Path, uid: u32) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir() && m.uid() == uid)
}

/// Joins the namespace of a live keeper whose maps are `uid_map` and
/// `gid_map` (as this process would write them). `true` when joined.
/// Called while the process has one thread, before any namespace is made.
pub(crate) fn join(pid_file: &Path, uid: u32, uid_map: &[IdRange], gid_map: &[IdRange]) -> bool {
    let Some(pid) = fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
    else {
        return false;
    };
    if !owned_by(pid_file.parent().unwrap_or(Path::new("/")), uid) {
        return false;
    }
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let is_keeper = fs::read_to_string(proc.join("comm")).is_ok_and(|c| c.trim() == NAME)
        && fs::metadata(&proc).is_ok_and(|m| m.uid() == uid);
    let read_map = |name: &str| fs::read_to_string(proc.join(name)).map(|t| parse_id_map(&t));
    if !is_keeper
        || read_map("uid_map").ok().as_deref() != Some(uid_map)
        || read_map("gid_map").ok().as_deref() != Some(gid_map)
    {
        return false;
    }
    let Ok(ns) = fs::File::open(proc.join("ns/user")) else {
        return false;
    };
    if nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWUSER).is_err() {
        return false;
    }
    // Tells the keeper a kiln still uses it.
    if let Ok(file) = fs::OpenOptions::new().write(true).open(pid_file) {
        let _ = file.set_modified(SystemTime::now());
    }
    true
}

/// Leaves a keeper in the namespace this process has just made and mapped.
/// Best effort: when it cannot start, the next kiln makes a namespace too.
/// Called while the process has one thread.
pub(crate) fn start(pid_file: &Path) {
    let Some(dir) = pid_file.parent() else {
        return;
    };
    if fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .is_err()
    {
        return;
    }
    // The keeper says on this pipe when its pid file names it: the kiln
    // that starts it returns only then, so the next kiln finds it (one
    // wait of a few milliseconds, once per keeper).
    let Ok((ready_r, ready_w)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else {
        return;
    };
    match crate::sys::fork_single_threaded() {
        Ok(None) => {
            // The first child: a new session, then a grandchild that no
            // kiln waits for, so it outlives this one without a zombie. It
            // runs `kiln __keep-userns PIDFILE 3`: a command line of its
            // own, not the one of the kiln that started it.
            let _ = nix::unistd::setsid();
            if let Ok(None) = crate::sys::fork_single_threaded() {
                use std::os::fd::AsRawFd;
                use std::os::unix::process::CommandExt;
                detach_descriptors(ready_w.as_raw_fd());
                if crate::sys::dup_to(ready_w.as_raw_fd(), READY_FD).is_ok() {
                    let _ = std::process::Command::new("/proc/self/exe")
                        .arg0("kiln")
                        .arg("__keep-userns")
                        .arg(pid_file)
                        .arg(READY_FD.to_string())
                        .exec();
                }
            }
            crate::sys::exit_now(0)
        }
        Ok(Some(child)) => {
            let _ = nix::sys::wait::waitpid(child, None);
            drop(ready_w);
            // A byte once it is ready, or the end of the pipe if it failed.
            let _ = crate::sys::read_byte(std::os::fd::AsRawFd::as_raw_fd(&ready_r));
        }
        Err(_) => {}
    }
}

/// The descriptor the keeper is told it is ready on.
const READY_FD: i32 = 3;

/// `kiln __keep-userns PIDFILE`, the keeper's life (in the namespace it
/// keeps, started by the kiln that made it): publish its pid, then sleep
/// until no kiln has joined for [`IDLE`] or another keeper took its place.
///
/// `ready_fd`, when given, gets one byte once the pid file names this
/// keeper, and is closed.
pub fn keep_user_namespace(pid_file: &Path, ready_fd: Option<i32>) -> ! {
    let _ = nix::sys::prctl::set_name(c"kiln-userns");
    let _ = std::env::set_current_dir("/");
    let me = std::process::id();
    let published = publish(pid_file, me).is_ok();
    if let Some(fd) = ready_fd {
        if published {
            crate::sys::write_all(fd, b"r");
        }
        let _ = nix::unistd::close(fd);
    }
    if !published {
        crate::sys::exit_now(0);
    }
    loop {
        std::thread::sleep(CHECK_EVERY);
        let still_mine = fs::read_to_string(pid_file).is_ok_and(|t| t.trim() == me.to_string());
        let recent = fs::metadata(pid_file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|at| at.elapsed().ok())
            .is_some_and(|idle| idle < IDLE);
        if !still_mine || !recent {
            crate::sys::exit_now(0);
        }
    }
}

/// Writes the pid file atomically (temporary file, rename).
fn publish(pid_file: &Path, pid: u32) -> std::io::Result<()> {
    let temp = pid_file.with_extension(format!("pid.{pid}"));
    let mut file = fs::File::create(&temp)?;
    writeln!(file, "{pid}")?;
    drop(file);
    fs::rename(&temp, pid_file)
}

/// Points stdin, stdout and stderr at /dev/null and closes every other
/// descriptor but `keep`, so the keeper holds no pipe, store or terminal
/// of kiln's.
fn detach_descriptors(keep: i32) {
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            let _ = crate::sys::dup_to(null.as_raw_fd(), fd);
        }
    }
    let open: Vec<i32> = fs::read_dir("/proc/self/fd")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|fd| *fd > 2 && *fd != keep)
                .collect()
        })
        .unwrap_or_default();
    for fd in open {
        let _ = nix::unistd::close(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pid_file_is_in_the_runtime_dir_only_when_it_is_the_users() {
        let dir = tempfile::tempdir().unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let home = Some(PathBuf::from("/home/someone"));
        assert_eq!(
            pid_file_in(Some(dir.path().to_path_buf()), home.clone(), uid),
            Some(dir.path().join("kiln/userns.pid"))
        );
        // Someone else's runtime directory is not used, nor a missing one.
        let fallback = Some(PathBuf::from("/home/someone/.cache/kiln/userns.pid"));
        assert_eq!(
            pid_file_in(Some(dir.path().to_path_buf()), home.clone(), uid + 1),
            fallback
        );
        assert_eq!(
            pid_file_in(Some(dir.path().join("none")), home, uid),
            fallback
        );
        assert_eq!(pid_file_in(None, None, uid), None);
    }

    #[test]
    fn a_pid_that_is_not_a_keeper_is_not_joined() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("userns.pid");
        let uid = nix::unistd::getuid().as_raw();
        let map = [IdRange {
            inside: 0,
            outside: uid,
            count: 1,
        }];
        // This test process: not named kiln-userns.
        fs::write(&file, format!("{}\n", std::process::id())).unwrap();
        assert!(!join(&file, uid, &map, &map));
        fs::write(&file, "not a pid\n").unwrap();
        assert!(!join(&file, uid, &map, &map));
        assert!(!join(&dir.path().join("none"), uid, &map, &map));
    }
}
