//! Rootless kiln: the user namespace an ordinary user's kiln process joins
//! as it starts, and what the sandbox and the snapshots do differently in a
//! user namespace.
//!
//! [`enter_user_namespace`] maps namespace root to the user and namespace ids
//! 1..=65535 to the user's subordinate range (`/etc/subuid`, `/etc/subgid`),
//! written by the setuid helpers `newuidmap`/`newgidmap` from a helper process
//! left outside; with no range (or no helpers) only root is mapped. From then
//! on every id kiln sees or sets is an in-image id: snapshots unpack with
//! their layers' owners, the diff writer reads them back, COPY --chown and
//! RUN chown set them, and prune removes what they own.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitStatus};

use crate::error::{Error, Result};

/// Set (to the user's own uid) in kiln's environment once it has entered
/// its user namespace; processes kiln re-executes inherit it.
pub const ROOTLESS_ENV: &str = "KILN_ROOTLESS";

/// Ids a rootless namespace maps beyond root: 1..=65535, as Docker's and
/// podman's default ranges.
const SUBORDINATE_IDS: u32 = 65535;

/// The overlayfs xattr namespaces (`trusted.` as root, `user.` in a user
/// namespace, with the `userxattr` mount option).
const OVERLAY_XATTR_PREFIXES: [&str; 2] = ["trusted.overlay.", "user.overlay."];

/// One line of `/proc/self/uid_map` or `gid_map`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// The id maps of kiln's process, read once.
#[derive(Debug)]
pub(crate) struct IdMaps {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
    /// `setgroups` is allowed (it is denied where only root is mapped).
    pub setgroups: bool,
}

impl IdMaps {
    fn identity(ranges: &[IdRange]) -> bool {
        ranges
            == [IdRange {
                inside: 0,
                outside: 0,
                count: u32::MAX,
            }]
    }

    /// Whether kiln runs in a user namespace other than the host's.
    pub fn in_user_namespace(&self) -> bool {
        !Self::identity(&self.uids)
    }

    pub fn maps_uid(&self, id: u32) -> bool {
        maps(&self.uids, id)
    }

    pub fn maps_gid(&self, id: u32) -> bool {
        maps(&self.gids, id)
    }
}

fn maps(ranges: &[IdRange], id: u32) -> bool {
    ranges
        .iter()
        .any(|r| id >= r.inside && u64::from(id) < u64::from(r.inside) + u64::from(r.count))
}

pub(crate) fn parse_id_map(text: &str) -> Vec<IdRange> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().map(|f| f.parse::<u32>().ok());
            Some(IdRange {
                inside: fields.next()??,
                outside: fields.next()??,
                count: fields.next()??,
            })
        })
        .collect()
}

/// kiln's id maps. Read on first use: [`enter_user_namespace`] runs before.
pub(crate) fn id_maps() -> &'static IdMaps {
    static MAPS: OnceLock<IdMaps> = OnceLock::new();
    MAPS.get_or_init(|| {
        let read = |name: &str| {
            fs::read_to_string(format!("/proc/self/{name}"))
                .map(|t| parse_id_map(&t))
                .unwrap_or_default()
        };
        let mut uids = read("uid_map");
        if uids.is_empty() {
            // No user namespaces in this kernel: the host's identity.
            uids = vec![IdRange {
                inside: 0,
                outside: 0,
                count: u32::MAX,
            }];
        }
        let mut gids = read("gid_map");
        if gids.is_empty() {
            gids = uids.clone();
        }
        let setgroups =
            fs::read_to_string("/proc/self/setgroups").map_or(true, |t| t.trim() != "deny");
        IdMaps {
            uids,
            gids,
            setgroups,
        }
    })
}

/// Whether this is an ordinary user's kiln in the user namespace
/// [`enter_user_namespace`] made (or a kiln it re-executed): root here is
/// that user, not an administrator.
pub fn is_rootless() -> bool {
    std::env::var_os(ROOTLESS_ENV).is_some()
}

/// Whether kiln runs in a user namespace (rootless, or root of an
/// unprivileged container): no device nodes, no cgroups, `user.` overlay xattrs.
pub fn in_user_namespace() -> bool {
    id_maps().in_user_namespace()
}

/// Whether the default RUN network (slirp4netns on a tap device) can be made:
/// always as root; rootless only where the user may open `/dev/net/tun`
/// (Debian's udev makes it 0666; some machines and containers keep it 0600).
/// Where it cannot, the default network of rootless steps is the host's.
pub fn private_network_usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        !in_user_namespace()
            || fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .is_ok()
    })
}

/// The xattr marking an opaque directory for the overlay mounts kiln makes.
pub(crate) fn opaque_xattr() -> &'static str {
    if in_user_namespace() {
        "user.overlay.opaque"
    } else {
        "trusted.overlay.opaque"
    }
}

/// Marks `dir` opaque for overlayfs (snapshots and the copying fallback).
pub(crate) fn mark_opaque(dir: &Path) -> std::io::Result<()> {
    xattr::set(dir, opaque_xattr(), b"y")
}

/// Whether `dir` is an opaque directory (either xattr namespace: an upper
/// dir of a rootless step has `user.`, a root one `trusted.`).
pub(crate) fn is_opaque(dir: &Path) -> bool {
    OVERLAY_XATTR_PREFIXES.iter().any(|prefix| {
        matches!(xattr::get(dir, format!("{prefix}opaque")), Ok(Some(value)) if value == b"y")
    })
}

/// overlayfs' private xattrs, never taken from or written to layers.
pub(crate) fn is_overlay_xattr(name: &str) -> bool {
    OVERLAY_XATTR_PREFIXES
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// The error for an id a step or file needs that kiln's namespace lacks.
pub(crate) fn unmapped(kind: &'static str, id: u32, needed_by: String) -> Error {
    Error::UnmappedId {
        kind,
        id,
        needed_by,
    }
}

/// The error for an owner (`uid`, `gid`) that kiln's user namespace does not
/// map, if one is not: what a failed chown (EINVAL) means there.
pub(crate) fn unmapped_owner(uid: u32, gid: u32, what: impl FnOnce() -> String) -> Option<Error> {
    let maps = id_maps();
    if !maps.in_user_namespace() {
        return None;
    }
    if !maps.maps_uid(uid) {
        Some(unmapped("uid", uid, what()))
    } else if !maps.maps_gid(gid) {
        Some(unmapped("gid", gid, what()))
    } else {
        None
    }
}

/// Fails when kiln's user namespace does not map `uid` or `gid`, naming them
/// and `what` needs them (`--chown=1000`): before files are made.
pub fn check_owner_mapped(uid: u32, gid: u32, what: &str) -> Result<()> {
    match unmapped_owner(uid, gid, || what.to_owned()) {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// How kiln's user namespace was set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rootless {
    /// Root and the user's subordinate ranges are mapped.
    Full {
        /// The user's first subordinate uid (what uid 1 maps to).
        uid_start: u32,
        /// The user's first subordinate gid (what gid 1 maps to).
        gid_start: u32,
        /// How many subordinate ids are mapped.
        count: u32,
    },
    /// Only root is mapped: `why` says what was missing.
    RootOnly {
        /// What was missing (subordinate ids, newuidmap, ...).
        why: String,
    },
}

/// The first subordinate range of `/etc/subuid`-style `text` for the user
/// `name` (or numeric `id`): (start, count).
pub(crate) fn subordinate_range(text: &str, name: Option<&str>, id: u32) -> Option<(u32, u32)> {
    let id = id.to_string();
    text.lines().find_map(|line| {
        let mut fields = line.trim().split(':');
        let owner = fields.next()?;
        if owner != id && Some(owner) != name {
            return None;
        }
        let start = fields.next()?.parse().ok()?;
        let count: u32 = fields.next()?.parse().ok()?;
        (count > 0).then_some((start, count))
    })
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn enter_error(step: impl Into<String>, errno: Errno) -> Error {
    Error::UserNamespace {
        step: step.into(),
        errno,
    }
}

fn thread_count() -> Option<usize> {
    fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

/// Makes kiln's process (run by an ordinary user) root of a new user
/// namespace mapping root to the user and 1..=65535 to the user's
/// subordinate ranges; returns `None` for root, who needs none. Must be
/// called while the process has one thread (first thing in `main`).
pub fn enter_user_namespace() -> Result<Option<Rootless>> {
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    if nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    if thread_count() != Some(1) {
        return Err(enter_error(
            "enter a user namespace (the process must have one thread)",
            Errno::EINVAL,
        ));
    }
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    let read = |file: &str| fs::read_to_string(file).unwrap_or_default();
    let subuid = subordinate_range(&read("/etc/subuid"), name.as_deref(), uid);
    let subgid = subordinate_range(&read("/etc/subgid"), name.as_deref(), gid)
        .or_else(|| subordinate_range(&read("/etc/subgid"), name.as_deref(), uid));
    let helpers = (find_program("newuidmap"), find_program("newgidmap"));
    let setup = match (subuid, subgid, helpers) {
        (Some((uid_start, uids)), Some((gid_start, gids)), (Some(newuidmap), Some(newgidmap))) => {
            let count = uids.min(gids).min(SUBORDINATE_IDS);
            let maps = HelperMaps {
                newuidmap,
                newgidmap,
                uid_map: rootless_map(uid, uid_start, count),
                gid_map: rootless_map(gid, gid_start, count),
            };
            // The namespace a kiln before this one left is the same one:
            // join it (microseconds) instead of making it (milliseconds).
            let keeper = crate::keeper::pid_file(uid);
            let joined = keeper
                .as_deref()
                .is_some_and(|file| crate::keeper::join(file, uid, &maps.uid_map, &maps.gid_map));
            if !joined {
                unshare_with_helpers(&maps)?;
                if let Some(file) = &keeper {
                    crate::keeper::start(file);
                }
            }
            Rootless::Full {
                uid_start,
                gid_start,
                count,
            }
        }
        (subuid, _, (newuidmap, newgidmap)) => {
            let why = if newuidmap.is_none() || newgidmap.is_none() {
                "newuidmap/newgidmap are not installed (apt-get install uidmap)"
            } else if subuid.is_none() {
                "the user has no range in /etc/subuid"
            } else {
                "the user has no range in /etc/subgid"
            }
            .to_owned();
            unshare_root_only(uid, gid)?;
            Rootless::RootOnly { why }
        }
    };
    // Processes kiln re-executes (a detached container's supervisor) are
    // already inside and must know the store is the user's.
    std::env::set_var(ROOTLESS_ENV, uid.to_string());
    Ok(Some(setup))
}

struct HelperMaps {
    newuidmap: PathBuf,
    newgidmap: PathBuf,
    uid_map: [IdRange; 2],
    gid_map: [IdRange; 2],
}

/// Root to the user's own `id`, 1..=`count` to the subordinate ids from
/// `start`: the map written for the namespace, and the one a keeper's must be.
fn rootless_map(id: u32, start: u32, count: u32) -> [IdRange; 2] {
    [
        IdRange {
            inside: 0,
            outside: id,
            count: 1,
        },
        IdRange {
            inside: 1,
            outside: start,
            count,
        },
    ]
}

fn unshare_error(errno: Errno) -> Error {
    let step = match errno {
        Errno::EPERM | Errno::ENOSPC | Errno::EUSERS => {
            "create a user namespace (are user namespaces allowed? see /proc/sys/user/max_user_namespaces, and in a container its seccomp and AppArmor profiles)"
        }
        _ => "create a user namespace",
    };
    enter_error(step, errno)
}

/// Unshares the user namespace while a helper process, forked before and so
/// left in the host's namespace, runs the setuid `newuidmap`/`newgidmap` on
/// this process (a setuid program executed inside the new namespace would
/// not be privileged).
fn unshare_with_helpers(maps: &HelperMaps) -> Result<()> {
    let (go_r, go_w) =
        nix::unistd::pipe().map_err(|e| enter_error("create a pipe for newuidmap", e))?;
    let parent = std::process::id();
    let helper = match crate::sys::fork_single_threaded()
        .map_err(|e| enter_error("start the id-mapping helper", e))?
    {
        None => {
            drop(go_w);
            let code = match crate::sys::read_byte(std::os::fd::AsRawFd::as_raw_fd(&go_r)) {
                true => run_map_helpers(parent, maps),
                false => 1,
            };
            crate::sys::exit_now(code)
        }
        Some(pid) => pid,
    };
    drop(go_r);
    let unshared = nix::sched::unshare(CloneFlags::CLONE_NEWUSER);
    if unshared.is_ok() {
        crate::sys::write_all(std::os::fd::AsRawFd::as_raw_fd(&go_w), b"g");
    }
    drop(go_w);
    let status = loop {
        match waitpid(helper, None) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    unshared.map_err(unshare_error)?;
    match status {
        Ok(WaitStatus::Exited(_, 0)) => Ok(()),
        _ => Err(enter_error(
            format!(
                "map ids with {} and {} (their message is above; check /etc/subuid and /etc/subgid; in a container without CAP_SYS_ADMIN they need file capabilities instead of setuid: setcap cap_setuid+ep newuidmap, cap_setgid+ep newgidmap)",
                maps.newuidmap.display(),
                maps.newgidmap.display()
            ),
            Errno::EPERM,
        )),
    }
}

/// In the helper: `newuidmap PID 0 UID 1 1 START COUNT` and newgidmap,
/// at the same time (each writes its own map; one exec's latency, not two).
fn run_map_helpers(pid: u32, maps: &HelperMaps) -> i32 {
    let children: Vec<_> = [
        (&maps.newuidmap, maps.uid_map),
        (&maps.newgidmap, maps.gid_map),
    ]
    .into_iter()
    .map(|(program, map)| {
        std::process::Command::new(program)
            .arg(pid.to_string())
            .args(
                map.iter()
                    .flat_map(|r| [r.inside, r.outside, r.count])
                    .map(|n| n.to_string()),
            )
            .stdin(std::process::Stdio::null())
            .spawn()
    })
    .collect();
    let mut code = 0;
    for child in children {
        let succeeded = child.is_ok_and(|mut c| c.wait().is_ok_and(|s| s.success()));
        if !succeeded {
            code = 1;
        }
    }
    code
}

/// Maps only root to the user: what an unprivileged process may write itself
/// (after denying `setgroups`).
fn unshare_root_only(uid: u32, gid: u32) -> Result<()> {
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER).map_err(unshare_error)?;
    let write = |file: &str, text: String| {
        fs::write(file, text).map_err(|e| {
            enter_error(
                format!("write {file}"),
                Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            )
        })
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("0 {uid} 1\n"))?;
    write("/proc/self/gid_map", format!("0 {gid} 1\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_maps_parse_and_answer_membership() {
        let uids =
            parse_id_map("         0       1001          1\n         1     100000      65535\n");
        assert_eq!(
            uids,
            vec![
                IdRange {
                    inside: 0,
                    outside: 1001,
                    count: 1
                },
                IdRange {
                    inside: 1,
                    outside: 100000,
                    count: 65535
                }
            ]
        );
        let maps = IdMaps {
            uids: uids.clone(),
            gids: parse_id_map("0 1001 1\n"),
            setgroups: false,
        };
        assert!(maps.in_user_namespace());
        assert!(maps.maps_uid(0) && maps.maps_uid(33) && maps.maps_uid(65535));
        assert!(!maps.maps_uid(65536));
        assert!(maps.maps_gid(0) && !maps.maps_gid(33));
        let host = IdMaps {
            uids: parse_id_map("0 0 4294967295"),
            gids: parse_id_map("0 0 4294967295"),
            setgroups: true,
        };
        assert!(!host.in_user_namespace());
        assert!(host.maps_uid(4_000_000_000));
    }

    #[test]
    fn subordinate_ranges_are_found_by_name_or_uid() {
        let text = "alice:100000:65536\n1002:200000:1000\nbob:300000:0\n";
        assert_eq!(
            subordinate_range(text, Some("alice"), 1001),
            Some((100000, 65536))
        );
        assert_eq!(
            subordinate_range(text, Some("carol"), 1002),
            Some((200000, 1000))
        );
        assert_eq!(subordinate_range(text, Some("bob"), 1003), None);
        assert_eq!(subordinate_range("", Some("alice"), 1001), None);
    }

    #[test]
    fn both_overlay_xattr_namespaces_are_private() {
        assert!(is_overlay_xattr("trusted.overlay.opaque"));
        assert!(is_overlay_xattr("user.overlay.redirect"));
        assert!(!is_overlay_xattr("user.mime_type"));
        assert!(!is_overlay_xattr("security.capability"));
    }
}
