//! Rootless kiln: builds, runs and housekeeping by an ordinary user, from a
//! test binary that stays root. kiln runs as `kiln-test` (a subordinate
//! range in /etc/subuid and /etc/subgid) or `kiln-test-nosub` (none), the
//! users scripts/make-test-users.sh creates.

mod build_common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use build_common::{run_ok, Env, TestUser};

/// The test user with a subordinate range; `None` (the test is skipped)
/// only outside CI when scripts/make-test-users.sh has not run.
fn user(name: &str) -> Option<TestUser> {
    match TestUser::find(name) {
        Some(user) => Some(user),
        None if std::env::var_os("CI").is_some() => {
            panic!("no user {name}: scripts/make-test-users.sh creates it")
        }
        None => {
            eprintln!("skipped: no user {name} (scripts/make-test-users.sh)");
            None
        }
    }
}

/// Owners (uid, gid) of every entry of an image's layers, by layer then path.
fn layer_owners(store: &Path, image_id: &str) -> Vec<BTreeMap<String, (u64, u64)>> {
    let blob = |digest: &str| {
        store
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(image_id)).unwrap()).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| {
            let bytes = std::fs::read(blob(layer["digest"].as_str().unwrap())).unwrap();
            let reader: Box<dyn Read> = match layer["mediaType"].as_str().unwrap() {
                media if media.ends_with("+gzip") => {
                    Box::new(flate2::read::MultiGzDecoder::new(&bytes[..]))
                }
                media if media.ends_with(".tar") => Box::new(&bytes[..]),
                media => panic!("layer of type {media}"),
            };
            let mut archive = tar::Archive::new(reader);
            let mut owners = BTreeMap::new();
            for entry in archive.entries().unwrap() {
                let mut entry = entry.unwrap();
                let header = entry.header().clone();
                let path = entry.path().unwrap().to_string_lossy().into_owned();
                owners.insert(path, (header.uid().unwrap(), header.gid().unwrap()));
                std::io::copy(&mut entry.by_ref(), &mut std::io::sink()).unwrap();
            }
            owners
        })
        .collect()
}

const OWNERS_DOCKERFILE: &str = "FROM busybox\n\
    COPY --chown=1000:1000 a /a\n\
    RUN chown 33:33 /a && mkdir -p /srv/www && touch /srv/www/index && chown -R 65534:65534 /srv/www && rm /etc/group\n\
    USER nobody\n\
    RUN touch /tmp/nobody-was-here\n";

#[test]
fn rootless_layers_hold_in_image_owners_and_match_a_root_build() {
    let Some(user) = user("kiln-test") else {
        return;
    };
    let build = |env: &Env| {
        let ctx = env.context("ctx", &[("Dockerfile", OWNERS_DOCKERFILE), ("a", "a\n")]);
        let out = run_ok(
            env.command(&["build", "-q", "--network", "none"])
                .arg(&ctx)
                .env("SOURCE_DATE_EPOCH", "1700000000"),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let rootless = Env::with_user(Some(user.clone()));
    let id = build(&rootless);
    let layers = layer_owners(&rootless.root(), &id);
    // busybox, COPY, RUN, RUN.
    assert_eq!(layers.len(), 4, "{layers:?}");
    assert_eq!(layers[1]["a"], (1000, 1000));
    assert_eq!(layers[2]["a"], (33, 33));
    assert_eq!(layers[2]["srv/www/index"], (65534, 65534));
    assert_eq!(layers[2]["srv/www/"], (65534, 65534));
    assert!(layers[2].contains_key("etc/.wh.group"), "{:?}", layers[2]);
    assert_eq!(layers[3]["tmp/nobody-was-here"], (65534, 65534));
    // Never a host id (the user's own or a subordinate one).
    for (path, (uid, gid)) in layers.iter().flatten() {
        assert!(
            *uid < 65536 && *gid < 65536,
            "{path} is owned by {uid}:{gid}"
        );
    }
    // The store's own files are the user's.
    for name in ["index.json", "oci-layout", "blobs", "kiln"] {
        assert_eq!(
            std::fs::metadata(rootless.root().join(name)).unwrap().uid(),
            user.uid
        );
    }
    let root = Env::with_user(None);
    assert_eq!(build(&root), id, "root and rootless builds differ");
}

#[test]
fn a_rootless_step_cannot_write_outside_its_rootfs() {
    let Some(user) = user("kiln-test") else {
        return;
    };
    let env = Env::with_user(Some(user));
    // A host file the user may write, named by its host path inside the step.
    let host_file = env.dir.path().join("host-file");
    std::fs::write(&host_file, "untouched\n").unwrap();
    std::os::unix::fs::chown(&host_file, Some(env.user.as_ref().unwrap().uid), None).unwrap();
    let target = host_file.display().to_string();
    let dockerfile = format!(
        "FROM busybox\n\
         RUN mkdir -p $(dirname {target}) && echo changed > {target} \
           && (echo changed > /proc/1/root{target} || true) \
           && (echo changed > /proc/self/root{target} || true) \
           && (mount -t tmpfs none /mnt 2>/dev/null && echo mounted || echo no-mount) > /mount-result \
           && (touch /sys/kernel/kiln-test 2>/dev/null && echo wrote-sys || echo sys-read-only) > /sys-result\n"
    );
    let ctx = env.context("ctx", &[("Dockerfile", &dockerfile)]);
    let fs = env.export(&ctx, &["--network", "none"]);
    assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "untouched\n");
    let inside = fs.join(target.trim_start_matches('/'));
    assert_eq!(std::fs::read_to_string(inside).unwrap(), "changed\n");
    assert_eq!(
        std::fs::read_to_string(fs.join("mount-result")).unwrap(),
        "no-mount\n"
    );
    assert_eq!(
        std::fs::read_to_string(fs.join("sys-result")).unwrap(),
        "sys-read-only\n"
    );
}

#[test]
fn rootless_steps_see_their_ids_devices_and_networks() {
    let Some(user) = user("kiln-test") else {
        return;
    };
    let env = Env::with_user(Some(user));
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\n\
             RUN id -u > /uid && echo hi > /dev/null && head -c 4 /dev/urandom | wc -c > /random \
               && cat /proc/self/uid_map | tr -s ' ' > /uid_map && ls /sys/class > /dev/null && mkdir /owned && chown 33:33 /owned\n\
             RUN --network=host ls /sys/class > /dev/null && echo host > /host\n",
        )],
    );
    let fs = env.export(&ctx, &["--network", "none"]);
    assert_eq!(std::fs::read_to_string(fs.join("uid")).unwrap(), "0\n");
    assert_eq!(
        std::fs::read_to_string(fs.join("random")).unwrap().trim(),
        "4"
    );
    // Root is the user, 1..65535 the subordinate range.
    let map = std::fs::read_to_string(fs.join("uid_map")).unwrap();
    assert_eq!(
        map,
        " 0 1001 1\n 1 100000 65535\n".replace("1001", &env.user.as_ref().unwrap().uid.to_string())
    );
    assert_eq!(std::fs::read_to_string(fs.join("host")).unwrap(), "host\n");
    // A local export is the user's, whatever the image's owners (/owned is 33's).
    let user_uid = env.user.as_ref().unwrap().uid;
    for path in walk(&fs) {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.uid(), user_uid, "{}", path.display());
    }
    assert!(fs.join("owned").is_dir());
    // cgroup v1 cannot be delegated: limits are an error that says so. (A
    // hybrid machine mounts cgroup2 too, but with the controllers bound to v1.)
    if !cgroup2_offers_memory() {
        let out = env.try_build(&ctx, &["--no-cache", "--memory", "64m"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("cgroup v1") && stderr.contains("--memory"),
            "{stderr}"
        );
    }
}

#[test]
fn kiln_run_and_prune_work_rootless_and_leave_nothing_the_user_cannot_remove() {
    let Some(user) = user("kiln-test") else {
        return;
    };
    let env = Env::with_user(Some(user.clone()));
    let out = run_ok(&mut env.command(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-u",
        "33",
        "busybox",
        "sh",
        "-c",
        "id -u; touch /tmp/x",
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "33\n");
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,target=/c,uid=33 touch /c/f && mkdir /d && chown 1234 /d && chmod 700 /d && touch /d/f\n",
        )],
    );
    env.build(&ctx, &["-t", "x", "--network", "none"]);
    // Snapshots hold files of mapped ids, which only kiln's namespace may remove.
    let snapshots = env.root().join("kiln/snapshots");
    let mapped = walk(&env.root())
        .into_iter()
        .filter(|p| std::fs::symlink_metadata(p).unwrap().uid() != user.uid);
    assert!(mapped.count() > 0);
    run_ok(&mut env.command(&["rmi", "x", "busybox"]));
    run_ok(&mut env.command(&["prune"]));
    let left: Vec<_> = std::fs::read_dir(&snapshots)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "prune left snapshots: {left:?}");
    // What prune keeps (cache mounts) goes with `kiln unshare rm`.
    let root = env.root().display().to_string();
    run_ok(&mut env.command(&["unshare", "rm", "-rf", &root]));
    assert!(!env.root().exists());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[test]
fn without_subordinate_ids_root_builds_work_and_other_ids_are_named() {
    let Some(user) = user("kiln-test-nosub") else {
        return;
    };
    let env = Env::with_user(Some(user));
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo ok > /ok && id -u > /uid\n",
        )],
    );
    let fs = env.export(&ctx, &["--network", "none"]);
    assert_eq!(std::fs::read_to_string(fs.join("uid")).unwrap(), "0\n");
    for (dockerfile, id) in [
        ("FROM busybox\nUSER 1000\nRUN true\n", "uid 1000"),
        ("FROM busybox\nCOPY --chown=33:33 Dockerfile /x\n", "uid 33"),
        (
            "FROM busybox\nRUN --mount=type=cache,target=/c,uid=70 true\n",
            "uid 70",
        ),
    ] {
        std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        let out = env.try_build(&ctx, &["--network", "none"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains(id) && stderr.contains("usermod --add-subuids"),
            "{stderr}"
        );
        assert!(stderr.contains("Dockerfile:"), "no line: {stderr}");
    }
}

#[test]
fn the_default_network_is_private_where_the_user_can_open_tun_else_the_hosts() {
    let Some(user) = user("kiln-test") else {
        return;
    };
    let tun_usable = user
        .command("sh")
        .args(["-c", "exec 3<>/dev/net/tun"])
        .status()
        .unwrap()
        .success();
    let env = Env::with_user(Some(user));
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN ip -4 addr > /addresses\n")],
    );
    let (_, stderr) = env.build(&ctx, &["-t", "net"]);
    let fs = env.export(&ctx, &[]);
    let addresses = std::fs::read_to_string(fs.join("addresses")).unwrap();
    let publish = env.kiln(&["run", "--rm", "-p", "18080:80", "net", "true"]);
    if tun_usable {
        assert!(addresses.contains("10.0.2.100"), "{addresses}");
        assert!(!stderr.contains("/dev/net/tun"), "{stderr}");
        return;
    }
    // The host's network, said once; -p cannot be served and says why.
    assert!(!addresses.contains("10.0.2.100"), "{addresses}");
    assert!(
        stderr.contains("the default network is the host's"),
        "{stderr}"
    );
    let publish_err = String::from_utf8_lossy(&publish.stderr);
    assert!(!publish.status.success());
    assert!(
        publish_err.contains("-p needs the default network"),
        "{publish_err}"
    );
}

/// Whether a cgroup2 hierarchy is mounted with the memory controller in it.
fn cgroup2_offers_memory() -> bool {
    cgroup2_mount_offering(&["memory"]).is_some()
}

/// A mounted cgroup2 hierarchy whose root offers every one of `controllers`.
fn cgroup2_mount_offering(controllers: &[&str]) -> Option<std::path::PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .filter(|line| line.contains(" - cgroup2 "))
        .filter_map(|line| line.split(' ').nth(4))
        .map(std::path::PathBuf::from)
        .find(|mount| {
            let offered =
                std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
            controllers
                .iter()
                .all(|c| offered.split_whitespace().any(|o| o == *c))
        })
}

/// A cgroup v2 subtree given to a user the way systemd's `Delegate=yes`
/// gives one to a user session: a directory under the hierarchy's root with
/// memory, pids and cpu enabled for it, the directory and its
/// `cgroup.procs`, `cgroup.subtree_control` and `cgroup.threads` owned by
/// the user. Removed (with what kiln made in it) when dropped.
struct DelegatedCgroup {
    dir: std::path::PathBuf,
}

impl DelegatedCgroup {
    /// `None` where no cgroup v2 hierarchy offers the three controllers.
    fn create(user: &TestUser) -> Option<DelegatedCgroup> {
        let root = cgroup2_mount_offering(&["memory", "pids", "cpu"])?;
        std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids +cpu").unwrap();
        let dir = root.join(format!("kiln-test-delegated-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        for path in [
            dir.clone(),
            dir.join("cgroup.procs"),
            dir.join("cgroup.subtree_control"),
            dir.join("cgroup.threads"),
        ] {
            std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid)).unwrap();
        }
        Some(DelegatedCgroup { dir })
    }

    /// `command`, started inside the delegated subtree (a root shell moves
    /// itself in, then execs the command, which drops to the user).
    fn wrap(&self, command: &std::process::Command) -> std::process::Command {
        let mut wrapped = std::process::Command::new("sh");
        wrapped
            .arg("-c")
            // Once kiln has moved the first processes into kiln-init, the
            // top holds none (cgroup v2 refuses them there): start in the
            // leaf then, as a shell kiln moved would.
            .arg(r#"{ echo $$ > "$0/kiln-init/cgroup.procs" || echo $$ > "$0/cgroup.procs"; } 2>/dev/null && exec "$@""#)
            .arg(&self.dir)
            .arg(command.get_program())
            .args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        wrapped
    }

    /// The step cgroups kiln has made in the subtree.
    fn steps(&self) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(self.dir.join("kiln"))
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for DelegatedCgroup {
    fn drop(&mut self) {
        for step in self.steps() {
            let _ = std::fs::remove_dir(step);
        }
        let _ = std::fs::remove_dir(self.dir.join("kiln"));
        let _ = std::fs::remove_dir(self.dir.join("kiln-init"));
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn rootless_limits_apply_in_a_delegated_cgroup_v2_subtree() {
    let Some(user) = user("kiln-test") else {
        return;
    };
    let Some(cgroup) = DelegatedCgroup::create(&user) else {
        eprintln!("skipped: no cgroup v2 hierarchy offers memory, pids and cpu here (cgroup v1); scripts/test-cgroup2-vm.sh runs this test on one");
        return;
    };
    let env = Env::with_user(Some(user));
    let build = |dockerfile: &str, extra: &[&str]| {
        let ctx = env.context("ctx", &[("Dockerfile", dockerfile)]);
        let mut args = vec!["build", "--progress", "plain", "--no-cache"];
        args.extend_from_slice(extra);
        let ctx = ctx.to_string_lossy().into_owned();
        args.push(&ctx);
        cgroup.wrap(&env.command(&args))
    };
    // 40 background processes do not fit in a pids limit of 16.
    let pids = "FROM busybox\nRUN for i in $(seq 40); do sleep 1 & done; wait\n";
    let out = build(pids, &["--pids-limit", "16"]).output().unwrap();
    assert!(
        !out.status.success(),
        "the pids limit was not applied:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_ok(&mut build(pids, &["--pids-limit", "100"]));
    // A step that needs 64 MiB at once under a 32 MiB limit is killed, and
    // kiln says it ran out of memory.
    let hog = "FROM busybox\nRUN dd if=/dev/zero of=/dev/null bs=64M count=1\n";
    let out = build(hog, &["--memory", "32m"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("out of memory"), "{stderr}");
    run_ok(&mut build(hog, &["--memory", "256m"]));
    // The step runs in a cgroup of the delegated subtree with the CPU quota.
    let slow = "FROM busybox\nRUN sleep 3\n";
    let mut child = build(slow, &["--cpus", "0.5"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let quota = loop {
        // Once the step's process is in its cgroup, the limits are set.
        let found = cgroup.steps().into_iter().find_map(|step| {
            let procs = std::fs::read_to_string(step.join("cgroup.procs")).ok()?;
            (!procs.trim().is_empty())
                .then(|| std::fs::read_to_string(step.join("cpu.max")).ok())
                .flatten()
        });
        if let Some(quota) = found {
            break quota;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no step cgroup appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(child.wait().unwrap().success());
    assert_eq!(quota.trim(), "50000 100000");
    // kiln moved itself out of the subtree's top (which now enables the
    // controllers for its children) and left no step cgroup behind.
    let enabled = std::fs::read_to_string(cgroup.dir.join("cgroup.subtree_control")).unwrap();
    assert!(
        enabled.contains("memory") && enabled.contains("pids"),
        "{enabled}"
    );
    assert!(cgroup.steps().is_empty(), "{:?}", cgroup.steps());
}

#[test]
fn later_rootless_kilns_join_the_namespace_the_first_left() {
    let Some(user) = user("kiln-test") else {
        return;
    };
    let env = Env::with_user(Some(user.clone()));
    // A HOME of this test's own: its keeper's pid file is no other test's.
    let home = tempfile::tempdir().unwrap();
    user.own(home.path());
    let pid_file = home.path().join(".cache/kiln/userns.pid");
    let namespace = || {
        let out = run_ok(
            env.command(&["unshare", "readlink", "/proc/self/ns/user"])
                .env("HOME", home.path()),
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let keeper = || -> u32 {
        let text = std::fs::read_to_string(&pid_file).unwrap();
        text.trim().parse().unwrap()
    };
    // The first kiln makes the namespace and leaves a keeper in it; the
    // next ones join that namespace.
    let first = namespace();
    let pid = keeper();
    assert_eq!(namespace(), first);
    assert_eq!(namespace(), first);
    let proc = format!("/proc/{pid}");
    assert_eq!(
        std::fs::read_link(format!("{proc}/ns/user"))
            .unwrap()
            .to_string_lossy(),
        first
    );
    assert_eq!(
        std::fs::read_to_string(format!("{proc}/comm")).unwrap(),
        "kiln-userns\n"
    );
    assert_eq!(std::fs::metadata(&proc).unwrap().uid(), user.uid);
    // A pid file naming a process that is not a keeper of this user's (here
    // the test, root's) is not joined: kiln makes a namespace and a keeper.
    std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
    let other = namespace();
    assert_ne!(other, first);
    assert_ne!(keeper(), std::process::id());
    assert_eq!(namespace(), other);
    // The first keeper ends at its next look at the pid file (within 20 s),
    // which no longer names it; the second is stopped here.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(keeper() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
}
