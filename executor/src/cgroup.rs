//! Resource limits through cgroups: v2 where its controllers are available,
//! v1 (one hierarchy per controller) otherwise.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::spec::Limits;

const CPU_PERIOD_US: u64 = 100_000;

/// The cgroup (one directory per v1 controller, or one v2 directory) of one step.
#[derive(Debug)]
pub(crate) struct StepCgroup {
    dirs: Vec<PathBuf>,
    memory_dir: Option<PathBuf>,
    v2: bool,
}

struct Mounts {
    v2: Option<PathBuf>,
    /// (controller list, mount point) of v1 hierarchies.
    v1: Vec<(Vec<String>, PathBuf)>,
}

fn cgroup_mounts() -> Result<Mounts> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::Cgroup(format!("cannot read /proc/self/mountinfo: {e}")))?;
    let mut mounts = Mounts {
        v2: None,
        v1: Vec::new(),
    };
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split(' ').nth(4).unwrap_or("");
        let mut right = right.split(' ');
        let fstype = right.next().unwrap_or("");
        let _source = right.next();
        let options = right.next().unwrap_or("");
        match fstype {
            "cgroup2" if mounts.v2.is_none() => mounts.v2 = Some(PathBuf::from(mount_point)),
            "cgroup" => {
                let controllers = options
                    .split(',')
                    .filter(|o| matches!(*o, "memory" | "cpu" | "pids"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>();
                if !controllers.is_empty() {
                    mounts.v1.push((controllers, PathBuf::from(mount_point)));
                }
            }
            _ => {}
        }
    }
    Ok(mounts)
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// This process' cgroup path in the first hierarchy of /proc/self/cgroup
/// whose (id, controller list) `wanted` accepts.
fn own_cgroup(wanted: impl Fn(&str, &str) -> bool) -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let id = fields.next()?;
        let controllers = fields.next()?;
        let path = fields.next()?;
        wanted(id, controllers).then(|| path.to_owned())
    })
}

/// This process' cgroup path in the v1 hierarchy holding `controller`.
fn own_v1_cgroup(controller: &str) -> Option<String> {
    own_cgroup(|_, controllers| controllers.split(',').any(|c| c == controller))
}

/// The name of the leaf cgroup kiln moves the processes of its parent cgroup
/// into, so that the parent may enable controllers for its children (cgroup
/// v2 lets a cgroup other than the root have processes or controlled
/// children, not both). Docker-in-Docker and rootlesskit do the same.
const LEAF: &str = "kiln-init";

/// This process' cgroup in the v2 hierarchy (the `0::` line of /proc/self/cgroup).
fn own_v2_cgroup() -> Option<String> {
    own_cgroup(|id, controllers| id == "0" && controllers.is_empty())
}

fn controllers_in(file: &Path) -> Vec<String> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The v2 cgroup kiln's step cgroups go under, with `want` enabled for its
/// children; `None` when the v2 hierarchy does not offer the controllers
/// (a hybrid machine whose controllers are bound to v1).
///
/// As root that is the hierarchy's root (in a cgroup namespace, the
/// container's cgroup), as Docker's cgroupfs driver does. Rootless, it is
/// kiln's own cgroup, the subtree systemd (`Delegate=`) or a container
/// runtime delegated to the user, or that cgroup's parent when kiln already
/// moved its processes into the leaf.
fn v2_parent(mount: &Path, want: &[&str], rootless: bool) -> Result<Option<PathBuf>> {
    let root_offers = controllers_in(&mount.join("cgroup.controllers"));
    let own = own_v2_cgroup().unwrap_or_else(|| "/".to_owned());
    let own_dir = mount.join(own.trim_start_matches('/'));
    let mut parent = if rootless {
        own_dir
    } else {
        mount.to_path_buf()
    };
    if parent.file_name().is_some_and(|n| n == LEAF) {
        let up = parent.parent().map(Path::to_path_buf).unwrap_or_default();
        if has_all(&controllers_in(&up.join("cgroup.controllers")), want) {
            parent = up;
        }
    }
    let offers = if parent == mount {
        root_offers.clone()
    } else {
        controllers_in(&parent.join("cgroup.controllers"))
    };
    if has_all(&offers, want) {
        enable_controllers(&parent, want)?;
        return Ok(Some(parent));
    }
    if !has_all(&root_offers, want) {
        return Ok(None);
    }
    let missing: Vec<&str> = want
        .iter()
        .copied()
        .filter(|c| !offers.iter().any(|o| o == c))
        .collect();
    Err(Error::Cgroup(format!(
        "the cgroup v2 controller(s) {} are not delegated to kiln's cgroup {}: run kiln in a delegated scope (`systemd-run --user --scope -p Delegate=yes kiln build ...`; systemd delegates only memory and pids to users unless a drop-in for user@.service says `Delegate=cpu memory pids`), or leave out --memory/--cpus/--cpu-shares/--pids-limit",
        missing.join(", "),
        parent.display()
    )))
}

fn has_all(have: &[String], want: &[&str]) -> bool {
    want.iter().all(|c| have.iter().any(|h| h == c))
}

/// Enables `want` in `dir`'s `cgroup.subtree_control`. Processes in `dir`
/// (kiln itself, the shell that started it) move into `dir/kiln-init` first:
/// the kernel refuses domain controllers (memory) beside them (EBUSY), and
/// accepts threaded ones (pids, cpu) but then makes `dir` a thread root
/// whose children cannot hold domain controllers (EOPNOTSUPP). The
/// hierarchy's real root (no `cgroup.type`) may hold both.
fn enable_controllers(dir: &Path, want: &[&str]) -> Result<()> {
    let control = dir.join("cgroup.subtree_control");
    if has_all(&controllers_in(&control), want) {
        return Ok(());
    }
    let real_root = !dir.join("cgroup.type").exists();
    if !real_root && has_processes(dir) {
        move_processes_to_leaf(dir)?;
    }
    let enable = want
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    match fs::write(&control, &enable) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            move_processes_to_leaf(dir)?;
            write(&control, &enable)
        }
        Err(e) => Err(Error::Cgroup(format!(
            "cannot write {enable:?} to {}: {e}",
            control.display()
        ))),
    }
}

fn has_processes(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|procs| !procs.trim().is_empty())
}

fn move_processes_to_leaf(dir: &Path) -> Result<()> {
    let leaf = dir.join(LEAF);
    if !leaf.is_dir() {
        make_dir(&leaf)?;
    }
    let procs = fs::read_to_string(dir.join("cgroup.procs")).map_err(|e| {
        Error::Cgroup(format!(
            "cannot read {}: {e}",
            dir.join("cgroup.procs").display()
        ))
    })?;
    for pid in procs.lines().filter(|l| !l.is_empty()) {
        match fs::write(leaf.join("cgroup.procs"), pid) {
            // Gone since the list was read.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => {
                return Err(Error::Cgroup(format!(
                    "cannot move process {pid} into {} (so that {} may enable controllers): {e}",
                    leaf.display(),
                    dir.display()
                )))
            }
            Ok(()) => {}
        }
    }
    Ok(())
}

fn make_dir(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(Error::Cgroup(format!(
            "cannot create {}: {e}",
            dir.display()
        ))),
        _ => Ok(()),
    }
}

fn needed(limits: &Limits) -> Vec<&'static str> {
    let mut out = Vec::new();
    if limits.memory.is_some() {
        out.push("memory");
    }
    if limits.cpu_shares.is_some() || limits.cpus.is_some() {
        out.push("cpu");
    }
    if limits.pids.is_some() {
        out.push("pids");
    }
    out
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value)
        .map_err(|e| Error::Cgroup(format!("cannot write {value:?} to {}: {e}", path.display())))
}

impl StepCgroup {
    /// Creates a cgroup with `limits` applied; `None` when there are no limits.
    pub(crate) fn create(limits: &Limits) -> Result<Option<Self>> {
        if limits.is_empty() {
            return Ok(None);
        }
        validate(limits)?;
        let want = needed(limits);
        let mounts = cgroup_mounts()?;
        let rootless = crate::userns::in_user_namespace();
        let name = format!(
            "step-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        if let Some(v2) = &mounts.v2 {
            if let Some(parent) = v2_parent(v2, &want, rootless)? {
                return Self::create_v2(&parent, &want, &name, limits).map(Some);
            }
        }
        if rootless {
            return Err(Error::Cgroup(
                "kiln runs in a user namespace (rootless) and this machine has cgroup v1, whose hierarchies cannot be delegated to one: --memory, --cpus, --cpu-shares and --pids-limit need kiln run as root, or cgroup v2 with a delegated subtree; leave them out to build without limits".into(),
            ));
        }
        Self::create_v1(&mounts, &want, &name, limits).map(Some)
    }

    fn create_v1(mounts: &Mounts, want: &[&str], name: &str, limits: &Limits) -> Result<Self> {
        let mut cgroup = StepCgroup {
            dirs: Vec::new(),
            memory_dir: None,
            v2: false,
        };
        for controller in want {
            let Some((_, mount)) = mounts
                .v1
                .iter()
                .find(|(c, _)| c.iter().any(|x| x == controller))
            else {
                return Err(Error::Cgroup(format!(
                    "the {controller} controller is available in neither a cgroup v2 nor a v1 hierarchy; mount it or run without --memory/--cpus/--cpu-shares/--pids-limit"
                )));
            };
            // Under kiln's own cgroup, so that limits kiln runs under (a CI
            // container's, say) still apply to its steps.
            let dir = own_v1_cgroup(controller)
                .map(|own| mount.join(own.trim_start_matches('/')))
                .filter(|parent| parent.is_dir())
                .unwrap_or_else(|| mount.to_path_buf())
                .join(format!("kiln-{name}"));
            if cgroup.dirs.contains(&dir) {
                continue;
            }
            make_dir(&dir)?;
            cgroup.dirs.push(dir.clone());
            match *controller {
                "memory" => {
                    if let Some(memory) = limits.memory {
                        write(&dir.join("memory.limit_in_bytes"), &memory.to_string())?;
                        let swap = dir.join("memory.memsw.limit_in_bytes");
                        if swap.exists() {
                            write(&swap, &memory.to_string())?;
                        }
                    }
                    cgroup.memory_dir = Some(dir);
                }
                "cpu" => {
                    if let Some(shares) = limits.cpu_shares {
                        write(&dir.join("cpu.shares"), &shares.to_string())?;
                    }
                    if let Some(cpus) = limits.cpus {
                        write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                        write(
                            &dir.join("cpu.cfs_quota_us"),
                            &((cpus * CPU_PERIOD_US as f64) as u64).to_string(),
                        )?;
                    }
                }
                "pids" => {
                    if let Some(pids) = limits.pids {
                        write(&dir.join("pids.max"), &pids.to_string())?;
                    }
                }
                _ => {}
            }
        }
        Ok(cgroup)
    }

    /// A v2 step cgroup under `parent` (whose subtree already has `want`).
    fn create_v2(parent: &Path, want: &[&str], name: &str, limits: &Limits) -> Result<Self> {
        let kiln = parent.join("kiln");
        if !kiln.is_dir() {
            make_dir(&kiln)?;
        }
        enable_controllers(&kiln, want)?;
        let dir = kiln.join(name);
        make_dir(&dir)?;
        let cgroup = StepCgroup {
            dirs: vec![dir.clone()],
            memory_dir: Some(dir.clone()),
            v2: true,
        };
        if let Some(memory) = limits.memory {
            write(&dir.join("memory.max"), &memory.to_string())?;
            if dir.join("memory.swap.max").exists() {
                write(&dir.join("memory.swap.max"), "0")?;
            }
        }
        if let Some(shares) = limits.cpu_shares {
            // The conversion runc uses from v1 shares (2..262144) to v2 weight (1..10000).
            let weight = 1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142;
            write(&dir.join("cpu.weight"), &weight.to_string())?;
        }
        if let Some(cpus) = limits.cpus {
            write(
                &dir.join("cpu.max"),
                &format!("{} {CPU_PERIOD_US}", (cpus * CPU_PERIOD_US as f64) as u64),
            )?;
        }
        if let Some(pids) = limits.pids {
            write(&dir.join("pids.max"), &pids.to_string())?;
        }
        Ok(cgroup)
    }

    /// Moves `pid` into the cgroup.
    pub(crate) fn add(&self, pid: Pid) -> Result<()> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.as_raw().to_string())?;
        }
        Ok(())
    }

    /// Whether the OOM killer struck inside the cgroup.
    pub(crate) fn out_of_memory(&self) -> bool {
        let Some(dir) = &self.memory_dir else {
            return false;
        };
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        let text = fs::read_to_string(dir.join(file)).unwrap_or_default();
        let counted = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .any(|(k, v)| k == key && v.trim().parse::<u64>().is_ok_and(|n| n > 0));
        counted
            || (!self.v2
                && fs::read_to_string(dir.join("memory.failcnt")).is_ok_and(|t| t.trim() != "0"))
    }
}

fn validate(limits: &Limits) -> Result<()> {
    if limits.memory.is_some_and(|m| m < 6 * 1024 * 1024) {
        return Err(Error::InvalidSpec(
            "the memory limit must be at least 6 MiB, as in Docker".into(),
        ));
    }
    if limits.cpus.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
        return Err(Error::InvalidSpec(
            "--cpus must be a positive number".into(),
        ));
    }
    if limits.pids.is_some_and(|p| p == 0) {
        return Err(Error::InvalidSpec("--pids-limit must be at least 1".into()));
    }
    Ok(())
}

impl Drop for StepCgroup {
    fn drop(&mut self) {
        // The step's processes are reaped before this runs, but the kernel
        // detaches them from the cgroup asynchronously: retry briefly.
        let deadline = Instant::now() + Duration::from_millis(500);
        for dir in &self.dirs {
            loop {
                match fs::remove_dir(dir) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    _ => break,
                }
            }
        }
    }
}
