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

/// This process' cgroup path in the v1 hierarchy holding `controller`.
fn own_v1_cgroup(controller: &str) -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let _id = fields.next()?;
        let controllers = fields.next()?;
        let path = fields.next()?;
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_owned())
    })
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
        if mounts.v2.is_none() && crate::userns::in_user_namespace() {
            return Err(Error::Cgroup(
                "kiln runs in a user namespace (rootless) and this machine has cgroup v1, whose hierarchies cannot be delegated to one: --memory, --cpus, --cpu-shares and --pids-limit need kiln run as root, or cgroup v2 with a delegated subtree; leave them out to build without limits".into(),
            ));
        }
        let name = format!(
            "step-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        if let Some(v2) = &mounts.v2 {
            let available = fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
            if want
                .iter()
                .all(|c| available.split_whitespace().any(|a| a == *c))
            {
                return Self::create_v2(v2, &want, &name, limits).map(Some);
            }
        }
        let mut cgroup = StepCgroup {
            dirs: Vec::new(),
            memory_dir: None,
            v2: false,
        };
        for controller in &want {
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
            fs::create_dir_all(&dir)
                .map_err(|e| Error::Cgroup(format!("cannot create {}: {e}", dir.display())))?;
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
        Ok(Some(cgroup))
    }

    fn create_v2(mount: &Path, want: &[&str], name: &str, limits: &Limits) -> Result<Self> {
        let enable: String = want.iter().map(|c| format!("+{c} ")).collect();
        let parent = mount.join("kiln");
        fs::create_dir_all(&parent)
            .map_err(|e| Error::Cgroup(format!("cannot create {}: {e}", parent.display())))?;
        write(&mount.join("cgroup.subtree_control"), enable.trim())?;
        write(&parent.join("cgroup.subtree_control"), enable.trim())?;
        let dir = parent.join(name);
        fs::create_dir(&dir)
            .map_err(|e| Error::Cgroup(format!("cannot create {}: {e}", dir.display())))?;
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
