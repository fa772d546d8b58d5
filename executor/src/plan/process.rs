//! The step's process: user and groups, environment, program candidates,
//! capabilities and seccomp, rlimits, namespaces, stdio; and assembling the
//! [`Plan`].

use std::fs;
use std::os::fd::RawFd;

use nix::sched::CloneFlags;

use super::{cstring, PlanBuilder, Prepared};
use crate::child::Plan;
use crate::error::{Error, Result};
use crate::spec::Network;
use crate::sys::{self, ExecArray};
use crate::user::resolve_user;
use crate::userns::IdMaps;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set (moby's `DefaultCapabilities`).
const DEFAULT_CAPS: &[u32] = &[
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL
    6,  // SETGID
    7,  // SETUID
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    13, // NET_RAW
    18, // SYS_CHROOT
    27, // MKNOD
    29, // AUDIT_WRITE
    31, // SETFCAP
];

/// CAP_KILL: the sandbox's init kills what the step leaves behind, whatever
/// user it runs as (pid 1 of a namespace is no exception to kill(2)'s checks).
const INIT_CAP_KILL: u32 = 5;

/// A step's user and groups must be ids kiln's user namespace maps.
fn check_mapped(maps: &IdMaps, user: &crate::User, name: &str) -> Result<()> {
    let needed_by = || {
        let name = if name.is_empty() { "root" } else { name };
        format!("the step's user {name:?}")
    };
    if !maps.maps_uid(user.uid) {
        return Err(crate::userns::unmapped("uid", user.uid, needed_by()));
    }
    for gid in std::iter::once(&user.gid).chain(&user.additional_gids) {
        if !maps.maps_gid(*gid) {
            return Err(crate::userns::unmapped("gid", *gid, needed_by()));
        }
    }
    Ok(())
}

fn with_defaults(env: &[String], home: &str) -> Vec<String> {
    // A name given twice keeps its last value, as Docker's ENV does.
    let mut env: Vec<String> = env
        .iter()
        .enumerate()
        .filter(|(i, entry)| {
            let name = entry.split('=').next().unwrap_or("");
            !env[i + 1..]
                .iter()
                .any(|later| later.split('=').next() == Some(name))
        })
        .map(|(_, entry)| entry.clone())
        .collect();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    env
}

fn exec_candidates(program: &str, env: &[String]) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_owned()];
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .map(|dir| if dir.is_empty() { "." } else { dir })
        .map(|dir| format!("{}/{program}", dir.trim_end_matches('/')))
        .collect()
}

/// Docker's default capabilities as a bit mask.
pub(super) fn default_caps() -> u64 {
    DEFAULT_CAPS
        .iter()
        .fold(0u64, |acc, cap| acc | (1u64 << cap))
}

/// See [`crate::prepare_seccomp`].
pub(crate) fn prepare_seccomp(seccomp: &crate::Seccomp) {
    let _ = crate::seccomp::filter_for(seccomp, default_caps());
}

/// Every capability kiln itself holds (its permitted set): what a
/// privileged step gets, as BuildKit gives the daemon's.
pub(super) fn own_capabilities(last_cap: u32) -> u64 {
    let all = u64::MAX >> (63 - last_cap);
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapPrm:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .map_or(all, |held| held & all)
}

fn last_cap() -> u32 {
    fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(40)
        .min(63)
}

/// kiln's argument and environment strings as the kernel locates them, read
/// once per process.
pub(super) fn process_strings() -> Result<sys::ProcessStrings> {
    static STRINGS: std::sync::OnceLock<Option<sys::ProcessStrings>> = std::sync::OnceLock::new();
    let strings = STRINGS.get_or_init(|| {
        fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| parse_process_strings(&stat))
    });
    strings.ok_or_else(|| {
        Error::InvalidSpec(
            "cannot locate kiln's arguments in /proc/self/stat (is /proc mounted?)".into(),
        )
    })
}

/// Fields 48 to 51 of a `/proc/PID/stat` line (`comm`, field 2, may hold
/// spaces and parentheses: fields are counted after its last `)`).
fn parse_process_strings(stat: &str) -> Option<sys::ProcessStrings> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    // The first field after comm is field 3.
    let mut fields = after_comm.split_whitespace().skip(48 - 3);
    let mut next = || fields.next()?.parse::<usize>().ok();
    let strings = sys::ProcessStrings {
        arg_start: next()?,
        arg_end: next()?,
        env_start: next()?,
        env_end: next()?,
    };
    (strings.arg_start != 0 && strings.arg_end > strings.arg_start).then_some(strings)
}

/// The capabilities the step's process keeps, `last_cap`, and its seccomp
/// filter: everything for a privileged step, else Docker's defaults.
type Capabilities = (u64, u32, Option<std::sync::Arc<crate::seccomp::Filter>>);

impl PlanBuilder<'_> {
    /// The step's identity (its user checked against kiln's user namespace),
    /// environment, capabilities, limits and namespaces around the ops built
    /// so far.
    pub(super) fn process(self, fds: [RawFd; 5], wait_for_go: bool) -> Result<Prepared> {
        let spec = self.spec;
        let user = resolve_user(self.view, &spec.user)?;
        if let Some(maps) = self.userns {
            check_mapped(maps, &user, &spec.user)?;
        }
        let env = with_defaults(&spec.env, &user.home);
        let candidates = exec_candidates(&spec.argv[0], &env);
        let mut groups: Vec<libc::gid_t> = user.additional_gids.clone();
        if !groups.contains(&user.gid) {
            groups.insert(0, user.gid);
        }
        let (keep_caps, last_cap, seccomp) = self.capabilities()?;
        let plan = Plan {
            ops: self.ops.ops,
            exec_candidates: candidates.into_iter().map(cstring).collect::<Result<_>>()?,
            argv: ExecArray::new(
                spec.argv
                    .iter()
                    .map(|a| cstring(a.as_str()))
                    .collect::<Result<_>>()?,
            ),
            envp: ExecArray::new(env.into_iter().map(cstring).collect::<Result<_>>()?),
            uid: user.uid,
            gid: user.gid,
            groups,
            set_groups: self.userns.is_none_or(|maps| maps.setgroups),
            keep_caps,
            last_cap,
            rlimits: spec.ulimits.clone(),
            process_strings: process_strings()?,
            init_caps: 1u64 << INIT_CAP_KILL,
            fds,
            wait_for_go,
            seccomp,
            netns: match &spec.network {
                Network::Private(network) => Some(network.netns_fd()),
                Network::None | Network::Host => None,
            },
            new_session: spec.stdio.is_some(),
            controlling_terminal: spec.stdio.as_ref().is_some_and(|s| s.terminal),
            forward_signals: spec.stdio.is_some(),
        };
        Ok(Prepared {
            plan,
            descriptions: self.ops.descriptions,
            // Stubs in a lower dir never reach the upper dir: nothing to clean up.
            stubs: if self.ops.stubs_in_lower {
                Vec::new()
            } else {
                self.ops.stubs.into_iter().map(|(path, _)| path).collect()
            },
            flags: clone_flags(&spec.network),
        })
    }

    /// See [`Capabilities`].
    fn capabilities(&self) -> Result<Capabilities> {
        let last_cap = last_cap();
        Ok(if self.spec.privileged {
            (own_capabilities(last_cap), last_cap, None)
        } else {
            let caps = default_caps();
            (
                caps,
                last_cap,
                crate::seccomp::filter_for(&self.spec.seccomp, caps)?,
            )
        })
    }
}

/// The namespaces the sandbox's init is cloned into.
fn clone_flags(network: &Network) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    // The private network is joined with setns: no namespace made per step.
    if *network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::root_only_maps;

    #[test]
    fn a_user_the_namespace_does_not_map_is_named() {
        let maps = root_only_maps();
        let user = |uid, gid, additional_gids: Vec<u32>| crate::User {
            uid,
            gid,
            additional_gids,
            home: "/".into(),
        };
        assert!(check_mapped(&maps, &user(0, 0, vec![]), "").is_ok());
        let err = check_mapped(&maps, &user(1000, 0, vec![]), "app").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("uid 1000") && text.contains("\"app\""),
            "{text}"
        );
        assert!(text.contains("usermod --add-subuids"), "{text}");
        let err = check_mapped(&maps, &user(0, 0, vec![27]), "root").unwrap_err();
        assert!(err.to_string().contains("gid 27"), "{err}");
    }

    #[test]
    fn process_strings_are_counted_after_the_command_name() {
        // Fields 3 to 52, each its own number; comm holds a space and a ')'.
        let fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        let stat = format!("42 (a) b) {}\n", fields.join(" "));
        assert_eq!(
            parse_process_strings(&stat),
            Some(sys::ProcessStrings {
                arg_start: 48,
                arg_end: 49,
                env_start: 50,
                env_end: 51,
            })
        );
        assert_eq!(parse_process_strings("42 (kiln) S 1 2"), None);
        let this = process_strings().unwrap();
        assert!(this.arg_end > this.arg_start && this.env_end >= this.env_start);
    }

    #[test]
    fn environment_gets_path_and_home_and_keeps_the_last_of_a_name() {
        let env = with_defaults(&["A=1".into(), "B=2".into(), "A=3".into()], "/home/app");
        assert_eq!(
            env,
            [
                "B=2".to_owned(),
                "A=3".to_owned(),
                format!("PATH={DEFAULT_PATH}"),
                "HOME=/home/app".to_owned(),
            ]
        );
        let own = with_defaults(&["PATH=/x".into(), "HOME=/h".into()], "/root");
        assert_eq!(own, ["PATH=/x", "HOME=/h"]);
    }

    #[test]
    fn a_bare_program_is_searched_in_the_last_path() {
        let env = ["PATH=/a".to_owned(), "PATH=/b/::/c".to_owned()];
        assert_eq!(exec_candidates("sh", &env), ["/b/sh", "./sh", "/c/sh"]);
        assert_eq!(exec_candidates("./run", &env), ["./run"]);
        assert_eq!(
            exec_candidates("sh", &[]).len(),
            DEFAULT_PATH.split(':').count()
        );
    }

    #[test]
    fn only_a_step_without_a_network_gets_a_network_namespace_of_its_own() {
        let base = CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC;
        assert_eq!(clone_flags(&Network::Host), base);
        assert_eq!(clone_flags(&Network::None), base | CloneFlags::CLONE_NEWNET);
    }

    #[test]
    fn default_capabilities_are_dockers() {
        let caps = default_caps();
        assert_eq!(caps.count_ones() as usize, DEFAULT_CAPS.len());
        assert_ne!(caps & (1 << INIT_CAP_KILL), 0);
        // CAP_SYS_ADMIN (21) is not among them.
        assert_eq!(caps & (1 << 21), 0);
    }
}
