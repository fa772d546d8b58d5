//! Whole plans built from specs, checked as data (no root needed: nothing
//! is mounted).

use std::fs;
use std::path::Path;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;

use super::kernel::{Guard, KERNEL_PATHS};
use super::*;
use crate::spec::{Mount, Network, Ulimit};

/// A user namespace mapping only root (rootless kiln without subids).
pub(crate) fn root_only_maps() -> IdMaps {
    IdMaps {
        uids: crate::userns::parse_id_map("0 1001 1\n"),
        gids: crate::userns::parse_id_map("0 1001 1\n"),
        setgroups: false,
    }
}

/// An image of one snapshot in a snapshot root, holding `dirs`.
struct Image {
    root: tempfile::TempDir,
    scratch: tempfile::TempDir,
}

impl Image {
    fn new(dirs: &[&str]) -> Image {
        let root = tempfile::tempdir().unwrap();
        let lower = root.path().join("snap");
        fs::create_dir(&lower).unwrap();
        for dir in dirs {
            fs::create_dir_all(lower.join(dir)).unwrap();
        }
        Image {
            root,
            scratch: tempfile::tempdir().unwrap(),
        }
    }

    fn lower(&self) -> PathBuf {
        self.root.path().join("snap")
    }

    fn write(&self, path: &str, content: &str) {
        let path = self.lower().join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    /// A spec running `true` on this image.
    fn spec(&self) -> RunSpec {
        RunSpec {
            lowers: vec![self.lower()],
            argv: vec!["true".into()],
            ..RunSpec::default()
        }
    }

    fn plan(&self, spec: &RunSpec, mode: RootMode) -> Prepared {
        self.try_plan(spec, mode, None).unwrap()
    }

    fn try_plan(
        &self,
        spec: &RunSpec,
        mode: RootMode,
        userns: Option<&IdMaps>,
    ) -> Result<Prepared> {
        let scratch = prepare_scratch(self.scratch.path()).unwrap();
        let view = RootfsView::new(&spec.lowers);
        PlanBuilder::new(spec, &scratch, mode, &view, userns).build([0; 5], false)
    }
}

/// The image every sandbox needs: the kernel filesystems' mountpoints.
const BASE: &[&str] = &["proc", "dev", "sys", "etc"];

fn position(prepared: &Prepared, what: &str) -> usize {
    prepared
        .descriptions
        .iter()
        .position(|d| d == what)
        .unwrap_or_else(|| panic!("no {what:?} in {:#?}", prepared.descriptions))
}

fn has(prepared: &Prepared, what: &str) -> bool {
    prepared.descriptions.iter().any(|d| d == what)
}

fn op<'p>(prepared: &'p Prepared, what: &str) -> &'p Op {
    &prepared.plan.ops[position(prepared, what)]
}

/// A mount's (source, target, fstype, flags, data), as text.
fn mount(op: &Op) -> (String, String, String, MsFlags, String) {
    let text = |c: &Option<CString>| {
        c.as_ref()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    match op {
        Op::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => (
            text(source),
            target.to_string_lossy().into_owned(),
            text(fstype),
            *flags,
            text(data),
        ),
        _ => panic!("not a mount"),
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
    let prepared = PlanBuilder::new(&spec, &scratch, RootMode::Copy, &view, None)
        .build([0; 5], false)
        .unwrap();
    let position = |what: &str| position(&prepared, what);
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
    for (name, _, _) in super::dev::DEVICES {
        let index = position(&format!("create /dev/{name}"));
        assert!(matches!(prepared.plan.ops[index], Op::Mknod(_, 0o666, _)));
    }
    assert_eq!(prepared.plan.init_caps, 1 << 5);
    assert_eq!(
        prepared.plan.process_strings,
        process::process_strings().unwrap()
    );
}

#[test]
fn concerns_come_in_the_order_the_sandbox_needs_them() {
    // Every mountpoint exists: no stub lower (which needs root to chown).
    let image = Image::new(&["proc", "dev", "sys", "etc", "tmp"]);
    image.write("etc/hosts", "");
    image.write("etc/resolv.conf", "");
    let mut spec = image.spec();
    spec.mounts = vec![Mount::Tmpfs {
        target: "/tmp".into(),
        size: None,
    }];
    let prepared = image.plan(&spec, RootMode::Overlay);
    let indices: Vec<usize> = [
        "make all mounts private",
        OVERLAY_STEP,
        "mount /proc",
        "mount /dev",
        "mount /sys read-only",
        "make /proc/bus read-only",
        "mask /sys/devices/virtual/powercap",
        "mount tmpfs on /tmp",
        "set hostname kiln",
        "enter the root filesystem",
        "pivot_root",
        "enter working directory /",
    ]
    .iter()
    .map(|what| position(&prepared, what))
    .collect();
    assert_eq!(indices[0], 0);
    assert!(indices.windows(2).all(|w| w[0] < w[1]), "{indices:?}");
    assert_eq!(*indices.last().unwrap(), prepared.plan.ops.len() - 1);
    assert_eq!(prepared.descriptions.len(), prepared.plan.ops.len());
}

#[test]
fn the_overlay_takes_lower_dirs_relative_to_the_snapshot_root() {
    let image = Image::new(BASE);
    image.write("etc/hosts", "");
    image.write("etc/resolv.conf", "");
    let mut second = image.spec();
    fs::create_dir(image.root.path().join("top")).unwrap();
    second.lowers.push(image.root.path().join("top"));
    let prepared = image.plan(&second, RootMode::Overlay);
    let enter = position(&prepared, OVERLAY_STEP) - 1;
    assert!(matches!(&prepared.plan.ops[enter],
        Op::Chdir(dir) if dir.to_str() == Ok(image.root.path().to_str().unwrap())));
    let (source, target, fstype, flags, data) = mount(op(&prepared, OVERLAY_STEP));
    assert_eq!((source.as_str(), fstype.as_str()), ("overlay", "overlay"));
    assert_eq!(flags, MsFlags::empty());
    let scratch = fs::canonicalize(image.scratch.path()).unwrap();
    assert_eq!(Path::new(&target), scratch);
    // The topmost lower comes first; no mountpoint is missing, so there is
    // no stub lower.
    assert!(data.starts_with("lowerdir=top:snap,"), "{data}");
    assert!(
        data.contains(&format!(",upperdir={}/upper,", scratch.display())),
        "{data}"
    );
    assert!(data.contains(&format!(",workdir={}/work", scratch.display())));
    assert!(!data.contains("redirect_dir=on") && !data.contains("metacopy=on"));
}

#[test]
fn missing_mountpoints_come_from_a_stub_lower_on_an_overlay() {
    if !nix::unistd::geteuid().is_root() {
        // The stub lower's directories are chowned to the image's owners.
        eprintln!("skipped: needs root");
        return;
    }
    let image = Image::new(&[]);
    let prepared = image.plan(&image.spec(), RootMode::Overlay);
    // Nothing is created in the upper dir, so there is nothing to clean up.
    assert!(prepared.stubs.is_empty());
    assert!(!prepared
        .descriptions
        .iter()
        .any(|d| d.starts_with("create mountpoint")));
    let (.., data) = mount(op(&prepared, OVERLAY_STEP));
    let stub = data
        .strip_prefix("lowerdir=.mountpoints/")
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no stub lower first in {data}"));
    let stub = image.root.path().join(".mountpoints").join(stub);
    for dir in ["proc", "dev", "sys", "etc"] {
        assert!(stub.join(dir).is_dir(), "{dir}");
    }
    for file in ["etc/hosts", "etc/resolv.conf"] {
        assert!(stub.join(file).is_file(), "{file}");
    }
}

#[test]
fn on_a_copy_missing_mountpoints_are_created_and_listed_for_removal() {
    let image = Image::new(&["proc", "sys"]);
    let prepared = image.plan(&image.spec(), RootMode::Copy);
    assert_eq!(
        prepared.descriptions[..2],
        [
            "make all mounts private".to_owned(),
            format!(
                "bind {0} to the root filesystem",
                fs::canonicalize(image.scratch.path())
                    .unwrap()
                    .join("rootfs")
                    .display()
            )
        ]
    );
    // Each mountpoint's missing parents are listed again (the view does not
    // see what the sandbox creates); removal tolerates that.
    assert_eq!(
        prepared.stubs,
        ["/dev", "/etc", "/etc/resolv.conf", "/etc", "/etc/hosts"]
    );
    assert!(matches!(
        op(&prepared, "create mountpoint /dev"),
        Op::Mkdir(_, 0o755)
    ));
    assert!(matches!(
        op(&prepared, "create mountpoint /etc/hosts"),
        Op::Touch(_)
    ));
    assert!(
        position(&prepared, "create mountpoint /etc/hosts") < position(&prepared, "pivot_root")
    );
}

#[test]
fn without_a_network_there_are_no_network_files_and_loopback_comes_up() {
    let image = Image::new(BASE);
    let mut spec = image.spec();
    spec.network = Network::None;
    spec.hostname = "box".into();
    let prepared = image.plan(&spec, RootMode::Copy);
    assert!(!prepared.descriptions.iter().any(|d| d.contains("/etc/")));
    assert!(matches!(op(&prepared, "set hostname box"),
        Op::Hostname(name) if name.to_str() == Ok("box")));
    assert!(matches!(op(&prepared, "bring up loopback"), Op::LoopbackUp));
    assert!(prepared.flags.contains(CloneFlags::CLONE_NEWNET));
    assert!(!image.scratch.path().join("etc").exists());
}

#[test]
fn on_the_host_network_a_copy_gets_its_own_writable_network_files() {
    let image = Image::new(BASE);
    let mut spec = image.spec();
    spec.extra_hosts = vec![("db".into(), "10.0.0.2".into())];
    let prepared = image.plan(&spec, RootMode::Copy);
    assert!(!has(&prepared, "bring up loopback"));
    assert!(!prepared.flags.contains(CloneFlags::CLONE_NEWNET));
    assert!(has(&prepared, "set hostname kiln"));
    let etc = fs::canonicalize(image.scratch.path()).unwrap().join("etc");
    let hosts = fs::read_to_string(etc.join("hosts")).unwrap();
    assert!(hosts.contains("127.0.1.1\tkiln\n"), "{hosts}");
    assert!(hosts.ends_with("10.0.0.2\tdb\n"), "{hosts}");
    assert_eq!(
        fs::read(etc.join("resolv.conf")).unwrap(),
        fs::read("/etc/resolv.conf").unwrap_or_default()
    );
    for (file, target) in [("hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf")] {
        let bind = format!("bind {} to {target}", etc.join(file).display());
        let (_, host_target, ..) = mount(op(&prepared, &bind));
        assert!(
            host_target.ends_with(&format!("rootfs{target}")),
            "{host_target}"
        );
        assert!(!has(&prepared, &format!("make {target} read-only")));
    }
}

#[test]
fn on_an_overlay_network_files_are_shared_and_read_only() {
    let image = Image::new(BASE);
    let mut spec = image.spec();
    spec.hostname = "builder".into();
    let prepared = image.plan(&spec, RootMode::Overlay);
    // Files named after their content, in the snapshot root.
    let files = image.root.path().join(".mountpoints/files");
    let bind = prepared
        .descriptions
        .iter()
        .position(|d| d.starts_with("bind ") && d.ends_with(" to /etc/hosts"))
        .unwrap();
    let (hosts, ..) = mount(&prepared.plan.ops[bind]);
    let hosts = Path::new(&hosts);
    assert_eq!(hosts.parent(), Some(files.as_path()));
    assert!(fs::read_to_string(hosts).unwrap().contains("\tbuilder\n"));
    let (.., flags, _) = mount(&prepared.plan.ops[bind + 1]);
    assert_eq!(
        flags,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY
    );
    assert_eq!(prepared.descriptions[bind + 1], "make /etc/hosts read-only");
    assert!(has(&prepared, "make /etc/resolv.conf read-only"));
    assert!(!image.scratch.path().join("etc").exists());
}

#[test]
fn the_specs_mounts_keep_their_order_flags_and_options() {
    let image = Image::new(BASE);
    let secret = image.root.path().join("secret");
    fs::write(&secret, "s").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut spec = image.spec();
    spec.mounts = vec![
        Mount::Tmpfs {
            target: "/scratch".into(),
            size: Some(1 << 20),
        },
        Mount::Bind {
            source: secret.clone(),
            target: "/run/secrets/token".into(),
            readonly: true,
        },
        Mount::Bind {
            source: cache.path().to_path_buf(),
            target: "/root/.cache".into(),
            readonly: false,
        },
    ];
    let prepared = image.plan(&spec, RootMode::Copy);
    let (source, _, fstype, flags, data) = mount(op(&prepared, "mount tmpfs on /scratch"));
    assert_eq!((source.as_str(), fstype.as_str()), ("tmpfs", "tmpfs"));
    assert_eq!(flags, MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
    assert_eq!(data, "size=1048576");
    let secret_bind = position(
        &prepared,
        &format!("bind {} to /run/secrets/token", secret.display()),
    );
    let (.., flags, _) = mount(&prepared.plan.ops[secret_bind]);
    assert_eq!(flags, MsFlags::MS_BIND | MsFlags::MS_REC);
    assert_eq!(
        prepared.descriptions[secret_bind + 1],
        "make /run/secrets/token read-only"
    );
    // A file is bound onto a file, a directory onto a directory.
    assert!(matches!(
        op(&prepared, "create mountpoint /run/secrets/token"),
        Op::Touch(_)
    ));
    assert!(matches!(
        op(&prepared, "create mountpoint /root/.cache"),
        Op::Mkdir(..)
    ));
    let cache_bind = position(
        &prepared,
        &format!("bind {} to /root/.cache", cache.path().display()),
    );
    assert!(!has(&prepared, "make /root/.cache read-only"));
    assert!(position(&prepared, "mount tmpfs on /scratch") < secret_bind);
    assert!(secret_bind < cache_bind);
    assert!(cache_bind < position(&prepared, "set hostname kiln"));
    assert!(prepared.stubs.contains(&"/run/secrets/token".to_owned()));
}

#[test]
fn a_missing_working_directory_is_created_inside_the_new_root() {
    let image = Image::new(&["proc", "dev", "sys", "etc", "srv"]);
    let mut spec = image.spec();
    spec.cwd = "/srv/app/src".into();
    let prepared = image.plan(&spec, RootMode::Copy);
    let pivot = position(&prepared, "pivot_root");
    let app = position(&prepared, "create working directory /srv/app");
    let src = position(&prepared, "create working directory /srv/app/src");
    assert!(pivot < app && app < src);
    assert!(!has(&prepared, "create working directory /srv"));
    assert!(matches!(&prepared.plan.ops[src],
        Op::Mkdir(path, 0o755) if path.to_str() == Ok("/srv/app/src")));
    assert!(
        matches!(op(&prepared, "enter working directory /srv/app/src"),
        Op::Chdir(path) if path.to_str() == Ok("/srv/app/src"))
    );
}

#[test]
fn a_read_only_root_is_remounted_after_the_working_directory_is_made() {
    let image = Image::new(BASE);
    let mut spec = image.spec();
    spec.cwd = "/work".into();
    assert!(!has(
        &image.plan(&spec, RootMode::Copy),
        "make the root filesystem read-only"
    ));
    spec.read_only_root = true;
    let prepared = image.plan(&spec, RootMode::Copy);
    let remount = position(&prepared, "make the root filesystem read-only");
    assert_eq!(remount, prepared.plan.ops.len() - 1);
    assert!(position(&prepared, "create working directory /work") < remount);
    let (_, target, _, flags, _) = mount(&prepared.plan.ops[remount]);
    assert_eq!(target, "/");
    assert_eq!(
        flags,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY
    );
}

#[test]
fn a_privileged_step_gets_writable_sys_every_capability_and_no_filter() {
    let image = Image::new(BASE);
    let mut spec = image.spec();
    let confined = image.plan(&spec, RootMode::Copy);
    assert!(confined.plan.seccomp.is_some());
    assert_eq!(confined.plan.keep_caps, process::default_caps());
    spec.privileged = true;
    let prepared = image.plan(&spec, RootMode::Copy);
    assert!(!has(&prepared, "mount /sys read-only"));
    let (.., flags, _) = mount(op(&prepared, "mount /sys"));
    assert!(!flags.contains(MsFlags::MS_RDONLY));
    assert!(!prepared
        .plan
        .ops
        .iter()
        .any(|op| matches!(op, Op::Mask { .. } | Op::ReadOnly { .. })));
    assert!(prepared.plan.seccomp.is_none());
    let last_cap = prepared.plan.last_cap;
    assert_eq!(prepared.plan.keep_caps, process::own_capabilities(last_cap));
    // kiln runs these tests with more than Docker's defaults (as root).
    assert_eq!(prepared.plan.init_caps, 1 << 5);
}

#[test]
fn rootless_binds_the_hosts_sys_and_devices_and_checks_the_user() {
    let image = Image::new(BASE);
    let maps = root_only_maps();
    let spec = image.spec();
    let prepared = image.try_plan(&spec, RootMode::Copy, Some(&maps)).unwrap();
    assert!(!prepared.plan.set_groups);
    // On the host's network sysfs cannot be mounted: the host's is bound.
    let bind = position(&prepared, "bind /sys to /sys");
    assert_eq!(prepared.descriptions[bind + 1], "make /sys read-only");
    assert!(!has(&prepared, "mount /sys read-only"));
    assert!(has(&prepared, "bind /dev/null to /dev/null"));
    assert!(!prepared
        .plan
        .ops
        .iter()
        .any(|op| matches!(op, Op::Mknod(..))));
    // Without a network of the host's, sysfs is the sandbox's own.
    let mut none = image.spec();
    none.network = Network::None;
    let prepared = image.try_plan(&none, RootMode::Copy, Some(&maps)).unwrap();
    assert!(has(&prepared, "mount /sys read-only"));
    // A user the namespace does not map is refused before anything runs.
    let mut user = image.spec();
    user.user = "1000".into();
    let err = image
        .try_plan(&user, RootMode::Copy, Some(&maps))
        .err()
        .expect("an unmapped user");
    assert!(err.to_string().contains("uid 1000"), "{err}");
    assert!(image.try_plan(&user, RootMode::Copy, None).is_ok());
}

#[test]
fn identity_environment_and_limits_reach_the_plan() {
    let image = Image::new(BASE);
    image.write(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    );
    image.write("etc/group", "root:x:0:\napp:x:1000:\nwheel:x:10:app\n");
    let mut spec = image.spec();
    spec.user = "app".into();
    spec.argv = vec!["make".into(), "all".into()];
    spec.env = vec!["PATH=/opt/bin:/bin".into()];
    spec.shm_size = Some(1 << 30);
    spec.ulimits = vec![Ulimit {
        resource: nix::sys::resource::Resource::RLIMIT_NOFILE,
        soft: 1024,
        hard: 2048,
    }];
    let plan = image.plan(&spec, RootMode::Copy);
    let (.., data) = mount(op(&plan, "mount /dev/shm"));
    assert_eq!(data, format!("mode=1777,size={}", 1u64 << 30));
    let plan = plan.plan;
    assert_eq!((plan.uid, plan.gid), (1000, 1000));
    assert_eq!(plan.groups, [1000, 10]);
    assert!(plan.set_groups);
    let strings = |c: &[CString]| -> Vec<String> {
        c.iter().map(|c| c.to_string_lossy().into_owned()).collect()
    };
    assert_eq!(
        strings(&plan.exec_candidates),
        ["/opt/bin/make", "/bin/make"]
    );
    assert_eq!(plan.rlimits, spec.ulimits);
    assert!(!plan.wait_for_go && !plan.new_session && !plan.forward_signals);
    assert_eq!(plan.netns, None);
}
