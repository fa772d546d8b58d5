//! The parent side of a step: prepares the plan, starts the sandbox's init,
//! streams output, waits, and turns the outcome into a result.

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{pipe2, Pid};

use crate::cgroup::StepCgroup;
use crate::child::{self, Op, Plan};
use crate::diff::Upper;
use crate::error::{io_err, Error, Result};
use crate::spec::{CancelToken, Mount, Network, OutputLine, RunSpec, Stream};
use crate::sys::{self, ExecArray};
use crate::user::resolve_user;
use crate::userns::{id_maps, IdMaps};
use crate::view::RootfsView;

/// Lines of output kept for the error of a failed step.
const LAST_LINES: usize = 10;
/// Longest line delivered whole; longer ones are split (a step printing
/// megabytes without a newline must not exhaust memory).
const MAX_LINE: usize = 64 * 1024;
/// How often a running step checks its cancel token.
const CANCEL_POLL: Duration = Duration::from_millis(20);
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

/// Root filesystem strategy for one attempt.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RootMode {
    Overlay,
    /// Overlayfs is unavailable: the merged view is copied into the scratch dir.
    Copy,
}

fn cstring(bytes: impl Into<Vec<u8>>) -> Result<CString> {
    CString::new(bytes)
        .map_err(|_| Error::InvalidSpec("a path, argument or variable contains a NUL byte".into()))
}

fn path_c(path: &Path) -> Result<CString> {
    cstring(path.as_os_str().as_bytes())
}

/// Builds the plan's operations and remembers what each one is, for errors.
struct PlanBuilder {
    ops: Vec<Op>,
    descriptions: Vec<String>,
    /// In-image paths of the mountpoints created as stubs, deepest last, and
    /// whether each is a file.
    stubs: Vec<(String, bool)>,
    /// Stubs go into an extra lower dir instead of being created by the sandbox.
    stubs_in_lower: bool,
}

impl PlanBuilder {
    fn push(&mut self, op: Op, description: String) {
        self.ops.push(op);
        self.descriptions.push(description);
    }

    /// Creates whatever is missing of `target` (an in-image path) as directories,
    /// or with a final empty file when `file`; returns the resolved host path
    /// under `merged`.
    fn mountpoint(
        &mut self,
        view: &RootfsView,
        merged: &Path,
        target: &str,
        file: bool,
    ) -> Result<(String, PathBuf)> {
        let (resolved, missing) = view
            .resolve_for_create(target)
            .map_err(|e| Error::InvalidSpec(format!("mount target {target}: {e}")))?;
        let parts: Vec<&str> = resolved.split('/').filter(|p| !p.is_empty()).collect();
        let first_missing = parts.len().saturating_sub(missing);
        let mut in_image = String::new();
        for (i, part) in parts.iter().enumerate() {
            in_image.push('/');
            in_image.push_str(part);
            if i < first_missing {
                continue;
            }
            let is_file = file && i + 1 == parts.len();
            self.stubs.push((in_image.clone(), is_file));
            if self.stubs_in_lower {
                continue;
            }
            let host = merged.join(&in_image[1..]);
            if is_file {
                self.push(
                    Op::Touch(path_c(&host)?),
                    format!("create mountpoint {in_image}"),
                );
            } else {
                self.push(
                    Op::Mkdir(path_c(&host)?, 0o755),
                    format!("create mountpoint {in_image}"),
                );
            }
        }
        let host = if resolved == "/" {
            merged.to_path_buf()
        } else {
            merged.join(&resolved[1..])
        };
        Ok((resolved, host))
    }

    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
        what: String,
    ) -> Result<()> {
        self.push(
            Op::Mount {
                source: source.map(cstring).transpose()?,
                target: path_c(target)?,
                fstype: fstype.map(cstring).transpose()?,
                flags,
                data: data.map(cstring).transpose()?,
            },
            what,
        );
        Ok(())
    }

    fn bind(&mut self, source: &Path, target: &Path, readonly: bool, what: &str) -> Result<()> {
        self.push(
            Op::Mount {
                source: Some(path_c(source)?),
                target: path_c(target)?,
                fstype: None,
                flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                data: None,
            },
            format!("bind {} to {what}", source.display()),
        );
        if readonly {
            self.mount(
                None,
                target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None,
                format!("make {what} read-only"),
            )?;
        }
        Ok(())
    }
}

/// The directories of one run inside the scratch dir.
struct Scratch {
    /// The scratch dir itself, which is also where the overlay is mounted (in
    /// the sandbox's mount namespace only): one directory less to create and
    /// remove per step.
    root: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    /// The copied root filesystem of the copying fallback.
    copy_root: PathBuf,
    etc: PathBuf,
}

impl Scratch {
    /// Where the step's root filesystem is assembled.
    fn rootfs(&self, mode: RootMode) -> &Path {
        match mode {
            RootMode::Overlay => &self.root,
            RootMode::Copy => &self.copy_root,
        }
    }
}

fn prepare_scratch(scratch: &Path) -> Result<Scratch> {
    let scratch = &std::path::absolute(scratch).map_err(io_err("resolve", scratch))?;
    let text = scratch.to_string_lossy();
    if text.contains([':', ',', '\\']) {
        return Err(Error::InvalidSpec(format!(
            "scratch dir {text:?} must not contain ':', ',' or '\\' (overlayfs option syntax)"
        )));
    }
    let dirs = Scratch {
        root: scratch.to_path_buf(),
        upper: scratch.join("upper"),
        work: scratch.join("work"),
        copy_root: scratch.join("rootfs"),
        etc: scratch.join("etc"),
    };
    for dir in [&dirs.upper, &dirs.work] {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    fs::set_permissions(
        &dirs.upper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(io_err("chmod", &dirs.upper))?;
    Ok(dirs)
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    version >= (major, minor)
}

/// The directory all `lowers` are in (the snapshot root), if there is one.
fn common_parent(lowers: &[PathBuf]) -> Option<PathBuf> {
    lowers
        .first()
        .and_then(|l| l.parent())
        .filter(|p| lowers.iter().all(|l| l.parent() == Some(p)))
        .map(Path::to_path_buf)
}

const OVERLAY_STEP: &str = "mount the overlay root filesystem";

fn overlay_options(
    lowers: &[PathBuf],
    parent: Option<PathBuf>,
    scratch: &Scratch,
) -> Result<(PathBuf, String)> {
    // Lower dirs are given relative to the snapshot root (the sandbox's init
    // enters it first) so that deep stacks fit in the one page the kernel
    // accepts for mount options.
    let mut lowerdir = String::new();
    for lower in lowers.iter().rev() {
        let text = match &parent {
            Some(parent) => lower
                .strip_prefix(parent)
                .unwrap_or(lower)
                .to_string_lossy()
                .into_owned(),
            None => lower.to_string_lossy().into_owned(),
        };
        if text.contains([':', ',', '\\']) {
            return Err(Error::InvalidSpec(format!(
                "snapshot path {} contains ':', ',' or '\\'",
                lower.display()
            )));
        }
        if !lowerdir.is_empty() {
            lowerdir.push(':');
        }
        lowerdir.push_str(&text);
    }
    let mut options = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        scratch.upper.display(),
        scratch.work.display()
    );
    // In a user namespace overlayfs keeps its xattrs in `user.overlay.`
    // (snapshots mark opaque directories there too).
    if crate::userns::in_user_namespace() {
        options.push_str(",userxattr");
    }
    // The upper dir is thrown away after the layer is written: unmounting need
    // not sync the whole upper filesystem (overlayfs' `volatile`, Linux 5.10+).
    if kernel_at_least(5, 10) {
        options.push_str(",volatile");
    }
    // Redirects and metadata-only copy-ups would leave changes in the upper dir
    // that are not self-contained files: turn them off where the kernel enables them.
    for feature in ["redirect_dir", "metacopy"] {
        let enabled = fs::read_to_string(format!("/sys/module/overlay/parameters/{feature}"))
            .is_ok_and(|v| v.trim() == "Y" || v.trim() == "on");
        if enabled {
            options.push_str(&format!(",{feature}=off"));
        }
    }
    if options.len() >= 4000 {
        return Err(Error::InvalidSpec(format!(
            "too many layers ({}) for one overlay mount",
            lowers.len()
        )));
    }
    Ok((parent.unwrap_or_else(|| PathBuf::from("/")), options))
}

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
fn default_caps() -> u64 {
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
fn own_capabilities(last_cap: u32) -> u64 {
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

/// How one of [`KERNEL_PATHS`] is guarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guard {
    /// Hidden: a file reads as /dev/null, a directory as an empty read-only tmpfs.
    Mask,
    ReadOnly,
}

/// Docker's read-only and masked paths (runc applies them in this order),
/// each guarded where the sandbox's /proc or /sys has it.
const KERNEL_PATHS: &[(&str, Guard)] = &[
    ("/proc/bus", Guard::ReadOnly),
    ("/proc/fs", Guard::ReadOnly),
    ("/proc/irq", Guard::ReadOnly),
    ("/proc/sys", Guard::ReadOnly),
    ("/proc/sysrq-trigger", Guard::ReadOnly),
    ("/proc/acpi", Guard::Mask),
    ("/proc/asound", Guard::Mask),
    ("/proc/interrupts", Guard::Mask),
    ("/proc/kcore", Guard::Mask),
    ("/proc/keys", Guard::Mask),
    ("/proc/latency_stats", Guard::Mask),
    ("/proc/timer_list", Guard::Mask),
    ("/proc/timer_stats", Guard::Mask),
    ("/proc/sched_debug", Guard::Mask),
    ("/proc/scsi", Guard::Mask),
    ("/sys/firmware", Guard::Mask),
    ("/sys/devices/virtual/powercap", Guard::Mask),
];

/// Guards [`KERNEL_PATHS`] in the sandbox's own /proc and /sys mounts (at
/// `proc_dir` and `sys_dir`); masked files become binds of `null`, the
/// sandbox's /dev/null. Whether a path exists is decided in the sandbox.
fn guard_kernel_paths(
    b: &mut PlanBuilder,
    proc_dir: &Path,
    sys_dir: &Path,
    null: &Path,
) -> Result<()> {
    for (path, guard) in KERNEL_PATHS {
        let host = [("/proc/", proc_dir), ("/sys/", sys_dir)]
            .into_iter()
            .find_map(|(prefix, dir)| path.strip_prefix(prefix).map(|rest| dir.join(rest)))
            .ok_or_else(|| Error::InvalidSpec(format!("{path} is not in /proc or /sys")))?;
        match guard {
            Guard::Mask => b.push(
                Op::Mask {
                    path: path_c(&host)?,
                    null: path_c(null)?,
                },
                format!("mask {path}"),
            ),
            Guard::ReadOnly => b.push(
                Op::ReadOnly {
                    path: path_c(&host)?,
                    // Both filesystems are mounted nosuid, nodev, noexec.
                    flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                },
                format!("make {path} read-only"),
            ),
        }
    }
    Ok(())
}

/// The device nodes runc creates for a container without a terminal:
/// (name, major, minor), each a 0666 character device owned by root.
const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Docker's /dev at `dev`: a tmpfs with [`DEVICES`], devpts, shm, mqueue
/// and the standard links. In a user namespace, which cannot make device
/// nodes, the host's devices are bound instead (as rootless runc does).
fn docker_dev(
    b: &mut PlanBuilder,
    dev: &Path,
    shm_size: Option<u64>,
    userns: Option<&IdMaps>,
) -> Result<()> {
    let shm_options = format!("mode=1777,size={}", shm_size.unwrap_or(64 << 20));
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    b.mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
        "mount /dev".into(),
    )?;
    for (name, major, minor) in DEVICES {
        if userns.is_some() {
            b.push(
                Op::Touch(path_c(&dev.join(name))?),
                format!("create /dev/{name}"),
            );
            b.bind(
                &Path::new("/dev").join(name),
                &dev.join(name),
                false,
                &format!("/dev/{name}"),
            )?;
            continue;
        }
        b.push(
            Op::Mknod(
                path_c(&dev.join(name))?,
                0o666,
                nix::sys::stat::makedev(*major, *minor),
            ),
            format!("create /dev/{name}"),
        );
    }
    // The tty group owns ptys where the namespace maps it.
    let devpts_options = match userns {
        Some(maps) if !maps.maps_gid(5) => "newinstance,ptmxmode=0666,mode=0620",
        _ => "newinstance,ptmxmode=0666,mode=0620,gid=5",
    };
    // (name, source, type, flags, options)
    let filesystems = [
        (
            "pts",
            "devpts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some(devpts_options),
        ),
        (
            "shm",
            "shm",
            "tmpfs",
            nosuid_nodev_noexec,
            Some(shm_options.as_str()),
        ),
        // The message queues of the sandbox's own ipc namespace.
        ("mqueue", "mqueue", "mqueue", nosuid_nodev_noexec, None),
    ];
    for (name, source, fstype, flags, data) in filesystems {
        let dir = dev.join(name);
        b.push(
            Op::Mkdir(path_c(&dir)?, 0o755),
            format!("create /dev/{name}"),
        );
        b.mount(
            Some(source),
            &dir,
            Some(fstype),
            flags,
            data,
            format!("mount /dev/{name}"),
        )?;
    }
    let mut links = vec![
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    // As runc: only where the kernel has /proc/kcore (it is masked anyway).
    if Path::new("/proc/kcore").exists() {
        links.push(("core", "/proc/kcore"));
    }
    for (name, target) in links {
        b.push(
            Op::Symlink {
                target: cstring(target)?,
                path: path_c(&dev.join(name))?,
            },
            format!("create /dev/{name}"),
        );
    }
    Ok(())
}

/// kiln's argument and environment strings as the kernel locates them, read
/// once per process.
fn process_strings() -> Result<sys::ProcessStrings> {
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

/// The resolv.conf a step on `network` sees; `None` without a network.
fn resolv_conf(network: &Network) -> Option<Vec<u8>> {
    match network {
        Network::Private(private) => Some(private.resolv_conf().to_vec()),
        Network::Host => Some(fs::read("/etc/resolv.conf").unwrap_or_default()),
        Network::None => None,
    }
}

struct Prepared {
    plan: Plan,
    descriptions: Vec<String>,
    stubs: Vec<String>,
    flags: CloneFlags,
}

fn build_plan(
    spec: &RunSpec,
    scratch: &Scratch,
    mode: RootMode,
    view: &RootfsView,
    fds: [RawFd; 5],
    wait_for_go: bool,
) -> Result<Prepared> {
    let merged = scratch.rootfs(mode);
    // Mountpoint stubs and the shared resolv.conf/hosts live beside the
    // snapshots when the lowers come from one snapshot root.
    let shared_root = match mode {
        RootMode::Overlay => common_parent(&spec.lowers).map(|p| p.join(".mountpoints")),
        RootMode::Copy => None,
    };
    let mut b = PlanBuilder {
        ops: Vec::new(),
        descriptions: Vec::new(),
        stubs: Vec::new(),
        stubs_in_lower: shared_root.is_some(),
    };
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let (_, proc_dir) = b.mountpoint(view, merged, "/proc", false)?;
    b.mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        nosuid_nodev_noexec,
        None,
        "mount /proc".into(),
    )?;
    let userns = Some(id_maps()).filter(|maps| maps.in_user_namespace());
    let (_, dev) = b.mountpoint(view, merged, "/dev", false)?;
    docker_dev(&mut b, &dev, spec.shm_size, userns)?;
    let (_, sys_dir) = b.mountpoint(view, merged, "/sys", false)?;
    // A privileged (`--security=insecure`) step gets /sys writable and every
    // kernel path, as BuildKit's insecure mode gives them.
    let (sys_flags, sys_what) = match spec.privileged {
        true => (nosuid_nodev_noexec, "mount /sys"),
        false => (
            nosuid_nodev_noexec | MsFlags::MS_RDONLY,
            "mount /sys read-only",
        ),
    };
    if userns.is_some() && spec.network == Network::Host {
        // sysfs can only be mounted in a user namespace that owns the
        // network namespace: on the host's network, the host's /sys is bound.
        b.bind(Path::new("/sys"), &sys_dir, !spec.privileged, "/sys")?;
    } else {
        b.mount(
            Some("sysfs"),
            &sys_dir,
            Some("sysfs"),
            sys_flags,
            None,
            sys_what.into(),
        )?;
    }
    if !spec.privileged {
        guard_kernel_paths(&mut b, &proc_dir, &sys_dir, &dev.join("null"))?;
    }

    let hostname = if spec.hostname.is_empty() {
        "kiln"
    } else {
        spec.hostname.as_str()
    };
    if let Some(resolv_content) = resolv_conf(&spec.network) {
        // The network's resolv.conf and a hosts file naming the sandbox:
        // shared read-only files (as BuildKit binds them) where there is a
        // snapshot root, else per-step writable copies in the scratch dir.
        let mut hosts_content = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
        );
        for (name, address) in &spec.extra_hosts {
            hosts_content.push_str(&format!("{address}\t{name}\n"));
        }
        let (resolv, hosts, readonly) = match &shared_root {
            Some(root) => {
                let files = root.join("files");
                (
                    crate::mountpoints::shared_file(&files, "resolv.conf", &resolv_content)?,
                    crate::mountpoints::shared_file(&files, "hosts", hosts_content.as_bytes())?,
                    true,
                )
            }
            None => {
                fs::create_dir_all(&scratch.etc).map_err(io_err("create", &scratch.etc))?;
                let resolv = scratch.etc.join("resolv.conf");
                fs::write(&resolv, resolv_content).map_err(io_err("write", &resolv))?;
                let hosts = scratch.etc.join("hosts");
                fs::write(&hosts, hosts_content).map_err(io_err("write", &hosts))?;
                (resolv, hosts, false)
            }
        };
        for (source, target) in [(&resolv, "/etc/resolv.conf"), (&hosts, "/etc/hosts")] {
            let (_, host_target) = b.mountpoint(view, merged, target, true)?;
            b.bind(source, &host_target, readonly, target)?;
        }
    }
    for mount in &spec.mounts {
        match mount {
            Mount::Bind {
                source,
                target,
                readonly,
            } => {
                // Files, and sockets (an ssh agent's), are bound onto a file.
                let is_file = !fs::metadata(source)
                    .map_err(io_err("inspect mount source", source))?
                    .is_dir();
                let (_, host_target) = b.mountpoint(view, merged, target, is_file)?;
                b.bind(source, &host_target, *readonly, target)?;
            }
            Mount::Tmpfs { target, size } => {
                let (_, host_target) = b.mountpoint(view, merged, target, false)?;
                let data = size.map(|s| format!("size={s}"));
                b.mount(
                    Some("tmpfs"),
                    &host_target,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    data.as_deref(),
                    format!("mount tmpfs on {target}"),
                )?;
            }
        }
    }
    b.push(
        Op::Hostname(cstring(hostname)?),
        format!("set hostname {hostname}"),
    );
    if spec.network == Network::None {
        b.push(Op::LoopbackUp, "bring up loopback".into());
    }
    b.push(
        Op::Chdir(path_c(merged)?),
        "enter the root filesystem".into(),
    );
    b.push(Op::PivotRootHere, "pivot_root".into());
    let cwd = if spec.cwd.is_empty() {
        "/"
    } else {
        spec.cwd.as_str()
    };
    let (resolved_cwd, missing) = view
        .resolve_for_create(cwd)
        .map_err(|e| Error::InvalidSpec(format!("working directory {cwd}: {e}")))?;
    if missing > 0 {
        let parts: Vec<&str> = resolved_cwd.split('/').filter(|p| !p.is_empty()).collect();
        let mut path = String::new();
        for (i, part) in parts.iter().enumerate() {
            path.push('/');
            path.push_str(part);
            if i >= parts.len() - missing {
                b.push(
                    Op::Mkdir(cstring(path.as_str())?, 0o755),
                    format!("create working directory {path}"),
                );
            }
        }
    }
    b.push(
        Op::Chdir(cstring(resolved_cwd.as_str())?),
        format!("enter working directory {resolved_cwd}"),
    );
    if spec.read_only_root {
        b.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
            "make the root filesystem read-only".into(),
        )?;
    }

    // The root filesystem comes first; its lower dirs are known now that every
    // mountpoint is.
    let mut root = PlanBuilder {
        ops: Vec::new(),
        descriptions: Vec::new(),
        stubs: Vec::new(),
        stubs_in_lower: false,
    };
    root.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
        "make all mounts private".into(),
    )?;
    match mode {
        RootMode::Overlay => {
            let mut lowers = spec.lowers.clone();
            if let Some(shared) = &shared_root {
                if !b.stubs.is_empty() {
                    lowers.push(crate::mountpoints::stub_lower(shared, view, &b.stubs)?);
                }
            }
            let (parent, options) = overlay_options(&lowers, common_parent(&spec.lowers), scratch)?;
            root.push(
                Op::Chdir(path_c(&parent)?),
                format!("enter {}", parent.display()),
            );
            root.mount(
                Some("overlay"),
                merged,
                Some("overlay"),
                MsFlags::empty(),
                Some(&options),
                OVERLAY_STEP.into(),
            )?;
        }
        RootMode::Copy => {
            root.bind(merged, merged, false, "the root filesystem")?;
        }
    }
    root.ops.append(&mut b.ops);
    root.descriptions.append(&mut b.descriptions);
    b.ops = root.ops;
    b.descriptions = root.descriptions;

    let user = resolve_user(view, &spec.user)?;
    if let Some(maps) = userns {
        check_mapped(maps, &user, &spec.user)?;
    }
    let env = with_defaults(&spec.env, &user.home);
    let candidates = exec_candidates(&spec.argv[0], &env);
    let mut groups: Vec<libc::gid_t> = user.additional_gids.clone();
    if !groups.contains(&user.gid) {
        groups.insert(0, user.gid);
    }
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    // The private network is joined with setns: no namespace made per step.
    if spec.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let last_cap = last_cap();
    let (keep_caps, seccomp) = if spec.privileged {
        (own_capabilities(last_cap), None)
    } else {
        let caps = default_caps();
        (caps, crate::seccomp::filter_for(&spec.seccomp, caps)?)
    };
    let plan = Plan {
        ops: b.ops,
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
        set_groups: userns.is_none_or(|maps| maps.setgroups),
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
        descriptions: b.descriptions,
        // Stubs in a lower dir never reach the upper dir: nothing to clean up.
        stubs: if b.stubs_in_lower {
            Vec::new()
        } else {
            b.stubs.into_iter().map(|(path, _)| path).collect()
        },
        flags,
    })
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
    let streams = Streams::open(spec)?;
    let (report_r, report_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let cgroup = StepCgroup::create(&spec.limits)?;
    let fds = [
        streams.child[0].as_raw_fd(),
        streams.child[1].as_raw_fd(),
        streams.child[2].as_raw_fd(),
        report_w.as_raw_fd(),
        go_r.as_raw_fd(),
    ];
    let prepared = build_plan(spec, scratch, mode, view, fds, cgroup.is_some())?;
    let overlay_index = prepared.descriptions.iter().position(|d| d == OVERLAY_STEP);

    let init = match sys::clone_process(prepared.flags.bits()) {
        Ok(Some(pid)) => pid,
        Ok(None) => child::init_main(&prepared.plan),
        Err(errno) => {
            return Err(Attempt::Failed(Error::Sandbox {
                step: "create namespaces (clone)".into(),
                errno,
            }))
        }
    };
    let Streams {
        child: child_ends,
        stdin_w,
        out_r,
        err_r,
    } = streams;
    drop((child_ends, report_w, go_r));
    let mut guard = InitGuard { pid: Some(init) };
    if let Some(cgroup) = &cgroup {
        cgroup.add(init)?;
        sys::write_all(go_w.as_raw_fd(), b"g");
    }
    drop(go_w);

    // Feed stdin from a helper thread so a step that never reads it cannot block us.
    let feeder = match (&spec.stdin, stdin_w) {
        (Some(bytes), Some(stdin_w)) => {
            let bytes = bytes.clone();
            let mut file = File::from(stdin_w);
            Some(std::thread::spawn(move || {
                let _ = file.write_all(&bytes);
            }))
        }
        _ => None,
    };

    let mut last = VecDeque::new();
    let mut out = LineSplitter {
        stream: Stream::Stdout,
        buffer: Vec::new(),
    };
    let mut err = LineSplitter {
        stream: Stream::Stderr,
        buffer: Vec::new(),
    };
    let mut report_bytes = Vec::new();
    let mut open = [out_r, err_r, Some(report_r)];
    let mut cancelled = false;
    let mut buffer = vec![0u8; 64 * 1024];
    while open.iter().any(Option::is_some) {
        if !cancelled && cancel.is_cancelled() {
            cancelled = true;
            guard.kill();
        }
        if spec.stdio.is_some() {
            guard.forward(cancel.take_signals());
        }
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
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(errno) => {
                return Err(Attempt::Failed(Error::Sandbox {
                    step: "wait for output".into(),
                    errno,
                }))
            }
        }
        let ready: Vec<usize> = poll_fds
            .iter()
            .zip(&which)
            .filter(|(p, _)| p.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, i)| *i)
            .collect();
        drop(poll_fds);
        for i in ready {
            let Some(fd) = &open[i] else { continue };
            match nix::unistd::read(fd, &mut buffer) {
                Ok(0) => open[i] = None,
                Ok(n) => match i {
                    0 => out.feed(&buffer[..n], on_output, &mut last),
                    1 => err.feed(&buffer[..n], on_output, &mut last),
                    _ => report_bytes.extend_from_slice(&buffer[..n]),
                },
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(_) => open[i] = None,
            }
        }
    }
    out.finish(on_output, &mut last);
    err.finish(on_output, &mut last);
    let init_status = guard.wait();
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    if cancelled {
        return Err(Attempt::Failed(Error::Cancelled));
    }
    let mut reports = Reports::default();
    read_reports(&report_bytes, &mut reports);
    let last_lines: Vec<String> = last.into_iter().collect();
    if let Some((kind, errno)) = reports.failure {
        let errno = Errno::from_raw(errno);
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
    if status != 0 && cgroup.as_ref().is_some_and(|c| c.out_of_memory()) {
        return Err(Attempt::Failed(Error::OutOfMemory {
            limit: spec.limits.memory.unwrap_or_default(),
            last_lines,
        }));
    }
    if status & 0x7f != 0 {
        return Err(Attempt::Failed(Error::Signaled {
            signal: status & 0x7f,
            last_lines,
        }));
    }
    let code = (status >> 8) & 0xff;
    if code != 0 {
        return Err(Attempt::Failed(Error::ExitCode { code, last_lines }));
    }
    Ok(prepared.stubs)
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
struct InitGuard {
    pid: Option<Pid>,
}

impl InitGuard {
    /// Sends each signal of the bit set to init, which passes it on to the
    /// main process.
    fn forward(&self, signals: u64) {
        let Some(pid) = self.pid else { return };
        for number in 1..64 {
            if signals & (1 << number) != 0 {
                if let Ok(signal) = Signal::try_from(number) {
                    let _ = kill(pid, signal);
                }
            }
        }
    }

    fn kill(&mut self) {
        if let Some(pid) = self.pid {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }

    fn wait(&mut self) -> Option<WaitStatus> {
        let pid = self.pid.take()?;
        loop {
            match waitpid(pid, None) {
                Err(Errno::EINTR) => continue,
                Ok(status) => return Some(status),
                Err(_) => return None,
            }
        }
    }
}

impl Drop for InitGuard {
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

    fn builder() -> PlanBuilder {
        PlanBuilder {
            ops: Vec::new(),
            descriptions: Vec::new(),
            stubs: Vec::new(),
            stubs_in_lower: false,
        }
    }

    #[test]
    fn kernel_paths_are_guarded_in_the_sandbox_mounts() {
        let mut b = builder();
        guard_kernel_paths(
            &mut b,
            Path::new("/m/proc"),
            Path::new("/m/sys"),
            Path::new("/m/dev/null"),
        )
        .unwrap();
        assert_eq!(b.ops.len(), KERNEL_PATHS.len());
        for ((path, guard), op) in KERNEL_PATHS.iter().zip(&b.ops) {
            let expected = format!("/m{path}");
            match (guard, op) {
                (Guard::Mask, Op::Mask { path, null }) => {
                    assert_eq!(path.to_str(), Ok(expected.as_str()));
                    assert_eq!(null.to_str(), Ok("/m/dev/null"));
                }
                (Guard::ReadOnly, Op::ReadOnly { path, flags }) => {
                    assert_eq!(path.to_str(), Ok(expected.as_str()));
                    assert_eq!(
                        *flags,
                        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
                    );
                }
                _ => panic!("{path}: wrong kind of op"),
            }
        }
    }

    #[test]
    fn the_plan_guards_proc_and_sys_once_dev_and_sys_are_mounted() {
        let lower = tempfile::tempdir().unwrap();
        for dir in ["proc", "dev", "sys"] {
            fs::create_dir(lower.path().join(dir)).unwrap();
        }
        let scratch_dir = tempfile::tempdir().unwrap();
        let scratch = prepare_scratch(scratch_dir.path()).unwrap();
        let spec = RunSpec {
            lowers: vec![lower.path().to_path_buf()],
            argv: vec!["true".into()],
            network: Network::None,
            ..RunSpec::default()
        };
        let view = RootfsView::new(&spec.lowers);
        let prepared = build_plan(&spec, &scratch, RootMode::Copy, &view, [0; 5], false).unwrap();
        let position = |what: &str| {
            prepared
                .descriptions
                .iter()
                .position(|d| d == what)
                .unwrap_or_else(|| panic!("no {what:?} in {:#?}", prepared.descriptions))
        };
        let first_guard = position("make /proc/bus read-only");
        for before in [
            "mount /proc",
            "mount /dev",
            "create /dev/null",
            "mount /sys read-only",
        ] {
            assert!(position(before) < first_guard, "{before}");
        }
        for (path, guard) in KERNEL_PATHS {
            let what = match guard {
                Guard::Mask => format!("mask {path}"),
                Guard::ReadOnly => format!("make {path} read-only"),
            };
            assert!(position(&what) < position("pivot_root"));
        }
        for name in ["pts", "shm", "mqueue"] {
            position(&format!("mount /dev/{name}"));
        }
        for (name, _, _) in DEVICES {
            let index = position(&format!("create /dev/{name}"));
            assert!(matches!(prepared.plan.ops[index], Op::Mknod(_, 0o666, _)));
        }
        assert_eq!(prepared.plan.init_caps, 1 << 5);
        assert_eq!(prepared.plan.process_strings, process_strings().unwrap());
    }

    fn root_only_maps() -> IdMaps {
        IdMaps {
            uids: crate::userns::parse_id_map("0 1001 1\n"),
            gids: crate::userns::parse_id_map("0 1001 1\n"),
            setgroups: false,
        }
    }

    #[test]
    fn in_a_user_namespace_dev_binds_the_host_devices() {
        let maps = root_only_maps();
        let mut b = builder();
        docker_dev(&mut b, Path::new("/m/dev"), None, Some(&maps)).unwrap();
        assert!(!b.ops.iter().any(|op| matches!(op, Op::Mknod(..))));
        for (name, _, _) in DEVICES {
            let bind = b
                .descriptions
                .iter()
                .position(|d| d == &format!("bind /dev/{name} to /dev/{name}"))
                .unwrap_or_else(|| panic!("no bind of /dev/{name}: {:#?}", b.descriptions));
            assert!(
                matches!(&b.ops[bind - 1], Op::Touch(path) if path.to_str() == Ok(&format!("/m/dev/{name}")))
            );
        }
        // gid 5 (tty) is not mapped: devpts must not name it.
        let devpts = b
            .descriptions
            .iter()
            .position(|d| d == "mount /dev/pts")
            .unwrap();
        match &b.ops[devpts] {
            Op::Mount {
                data: Some(data), ..
            } => {
                assert!(!data.to_str().unwrap().contains("gid=5"), "{data:?}")
            }
            _ => panic!("devpts is not a mount"),
        }
        let mut root = builder();
        docker_dev(&mut root, Path::new("/m/dev"), None, None).unwrap();
        assert_eq!(
            root.ops
                .iter()
                .filter(|op| matches!(op, Op::Mknod(..)))
                .count(),
            DEVICES.len()
        );
    }

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
}
