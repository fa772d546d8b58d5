//! Real steps in the busybox fixture: output, exit codes, users, environment,
//! isolation, process cleanup, cancellation, limits and mounts. Needs root.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use kiln_executor::{CancelToken, Error, Limits, Mount, Network};

#[test]
fn streams_stdout_and_stderr_line_by_line() {
    let out = run(&shell(
        "echo one; echo two >&2; printf 'three\\nfour'; echo five >&2",
    ));
    out.upper();
    assert_eq!(out.stdout, vec!["one", "three", "four"]);
    assert_eq!(out.stderr, vec!["two", "five"]);
}

#[test]
fn output_arrives_while_the_step_runs() {
    let scratch = scratch();
    let started = Instant::now();
    let mut first_line_at = None;
    let spec = shell("echo early; sleep 1; echo late");
    let result = kiln_executor::run(&spec, scratch.path(), &CancelToken::new(), &mut |line| {
        if line.text() == "early" {
            first_line_at = Some(started.elapsed());
        }
    });
    let total = started.elapsed();
    let _ = kiln_executor::remove_tree(scratch.path());
    result.unwrap();
    let first = first_line_at.expect("the first line was delivered");
    assert!(total >= Duration::from_secs(1));
    assert!(
        first + Duration::from_millis(500) < total,
        "first line at {first:?}, step took {total:?}"
    );
}

#[test]
fn non_zero_exit_is_an_error_with_the_last_lines() {
    let out = run(&shell(
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo line$i; done; exit 3",
    ));
    match &out.result {
        Err(Error::ExitCode { code, last_lines }) => {
            assert_eq!(*code, 3);
            assert_eq!(last_lines.len(), 10);
            assert_eq!(last_lines.last().unwrap(), "line12");
            let message = out.result.as_ref().unwrap_err().to_string();
            assert!(
                message.contains("exited with code 3") && message.contains("line12"),
                "{message}"
            );
        }
        other => panic!("expected an exit code error, got {other:?}"),
    }
}

#[test]
fn killed_by_signal_is_reported() {
    let out = run(&shell("kill -TERM $$"));
    assert!(
        matches!(out.result, Err(Error::Signaled { signal: 15, .. })),
        "{:?}",
        out.result.as_ref().err()
    );
}

#[test]
fn missing_program_says_so() {
    let out = run(&spec(&["no-such-program"]));
    match &out.result {
        Err(Error::Exec { program, .. }) => assert_eq!(program, "no-such-program"),
        other => panic!("expected an exec error, got {other:?}"),
    }
}

#[test]
fn program_is_searched_in_the_step_path() {
    let mut s = spec(&["echo", "found"]);
    s.env = vec!["PATH=/nowhere:/bin".into()];
    let out = run(&s);
    out.upper();
    assert_eq!(out.stdout, vec!["found"]);
}

#[test]
fn runs_as_the_image_user() {
    let mut s = shell("id -u; id -g; id -G; echo $HOME; touch /tmp/by-app");
    s.user = "app".into();
    let out = run(&s);
    out.upper();
    assert_eq!(out.stdout, vec!["1000", "1000", "1000", "/home/app"]);
    let meta = fs::metadata(out.upper().path().join("tmp/by-app")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 1000);

    let mut s = shell("id -u; id -g");
    s.user = "4242:nogroup".into();
    let out = run(&s);
    out.upper();
    assert_eq!(out.stdout, vec!["4242", "65534"]);

    let mut s = shell("true");
    s.user = "nosuchuser".into();
    assert!(matches!(run(&s).result, Err(Error::UnknownUser { .. })));
}

#[test]
fn unprivileged_user_cannot_write_root_files() {
    let mut s = shell("echo x > /etc/passwd");
    s.user = "app".into();
    assert!(matches!(run(&s).result, Err(Error::ExitCode { .. })));
}

#[test]
fn environment_and_working_directory() {
    let mut s = shell("pwd; echo $GREETING; echo $PATH");
    s.env = vec![
        "GREETING=first".into(),
        "GREETING=hello world".into(),
        "PATH=/bin".into(),
    ];
    s.cwd = "/work/dir".into();
    let out = run(&s);
    assert_eq!(out.stdout, vec!["/work/dir", "hello world", "/bin"]);
    assert_eq!(out.layer_entries(), vec!["work/", "work/dir/"]);
}

#[test]
fn stdin_bytes_are_fed() {
    let mut s = shell("cat; echo");
    s.stdin = Some(b"from stdin".to_vec());
    let out = run(&s);
    out.upper();
    assert_eq!(out.stdout, vec!["from stdin"]);
    // Without stdin bytes the step reads /dev/null.
    let out = run(&shell("cat; echo done"));
    assert_eq!(out.stdout, vec!["done"]);
}

#[test]
fn hostname_is_its_own() {
    let mut s = shell("hostname; cat /etc/hosts | grep -c buildhost");
    s.hostname = "buildhost".into();
    let out = run(&s);
    out.upper();
    assert_eq!(out.stdout, vec!["buildhost", "1"]);
    assert_ne!(nix::unistd::gethostname().unwrap(), "buildhost");
}

#[test]
fn network_none_has_only_loopback() {
    // A server on the host's loopback: a step with its own network namespace
    // cannot reach it (its 127.0.0.1 is its own), while a step on the host's
    // network gets "host" back. No traffic ever leaves this machine.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            use std::io::Write;
            let _ = conn.write_all(b"host\n");
        }
    });
    let reach = format!("nc -w 2 127.0.0.1 {port} </dev/null || echo unreachable");
    let mut s = shell(&format!(
        "ls /sys/class/net; ping -c1 -W1 127.0.0.1 >/dev/null && echo loopback-ok; {reach}"
    ));
    s.network = Network::None;
    let out = run(&s);
    out.upper();
    assert_eq!(out.stdout, vec!["lo", "loopback-ok", "unreachable"]);

    // The same probe on the host's network does reach the server, so the
    // assertion above can fail.
    let mut s = shell(&reach);
    s.network = Network::Host;
    let out = run(&s);
    out.upper();
    assert_eq!(out.stdout, vec!["host"], "stderr: {:?}", out.stderr);
}

#[test]
fn host_network_sees_host_interfaces_and_resolv_conf() {
    let host_interfaces = fs::read_dir("/sys/class/net").unwrap().count();
    let mut s = shell("ls /sys/class/net | wc -l; test -f /etc/resolv.conf && echo resolv");
    s.network = Network::Host;
    let out = run(&s);
    out.upper();
    assert_eq!(
        out.stdout,
        vec![host_interfaces.to_string(), "resolv".to_string()]
    );
    // The mountpoints made for resolv.conf and hosts do not reach the layer.
    assert_eq!(out.layer_entries(), Vec::<String>::new());
}

#[test]
fn cannot_see_host_processes_or_files() {
    let marker = scratch_parent().join("host-secret-marker");
    fs::write(&marker, "secret").unwrap();
    let script = format!(
        "ls /proc | grep -c '^[0-9]'; cat {m} 2>/dev/null || echo no-host-file; ls /proc/1/root{m} 2>/dev/null || echo no-host-root",
        m = marker.display()
    );
    let out = run(&shell(&script));
    out.upper();
    // Only the shell and its subshells: no host processes.
    let visible: usize = out.stdout[0].parse().unwrap();
    assert!(visible <= 4, "saw {visible} processes");
    assert_eq!(&out.stdout[1..], ["no-host-file", "no-host-root"]);
}

#[test]
fn cannot_mount_or_change_the_host() {
    let out = run(&shell("mount -t tmpfs none /tmp && echo mounted; echo x > /proc/sys/kernel/hostname && echo wrote; echo 1 > /sys/kernel/mm/ksm/run && echo sys; true"));
    out.upper();
    assert_eq!(out.stdout, Vec::<String>::new(), "stderr: {:?}", out.stderr);
}

#[test]
fn leftover_processes_are_killed_when_the_main_process_exits() {
    let started = Instant::now();
    // 37 s: a duration no other test uses, since tests of this binary run at
    // once and the check below looks at every process on the host.
    let out = run(&shell("sleep 37 & sleep 37 & echo started"));
    out.upper();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "run waited for leftovers: {:?}",
        started.elapsed()
    );
    // No busybox sleep of ours is left on the host.
    let survivors = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            fs::read_to_string(e.path().join("cmdline")).is_ok_and(|c| c == "sleep\u{0}37\u{0}")
        })
        .count();
    assert_eq!(survivors, 0);
}

#[test]
fn cancellation_stops_the_step() {
    let cancel = CancelToken::new();
    let trigger = cancel.clone();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        trigger.cancel();
    });
    let started = Instant::now();
    let out = run_with(&shell("sleep 30; echo finished"), &cancel);
    canceller.join().unwrap();
    assert!(
        matches!(out.result, Err(Error::Cancelled)),
        "{:?}",
        out.result.as_ref().err()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    let mut s = shell("i=0; while [ $i -lt 60 ]; do sleep 5 & i=$((i+1)); done; echo spawned");
    s.limits = Limits {
        pids: Some(20),
        ..Limits::default()
    };
    let out = run(&s);
    assert!(
        out.stdout.is_empty()
            || out
                .stderr
                .iter()
                .any(|l| l.contains("fork") || l.contains("resource")),
        "stdout {:?} stderr {:?}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr
            .iter()
            .any(|l| l.contains("fork") || l.contains("Resource")),
        "{:?}",
        out.stderr
    );
}

#[test]
fn memory_limit_kills_a_hog() {
    let mut s = shell("dd if=/dev/zero of=/dev/null bs=200M count=1 && echo survived");
    s.limits = Limits {
        memory: Some(64 * 1024 * 1024),
        ..Limits::default()
    };
    let out = run(&s);
    match &out.result {
        Err(Error::OutOfMemory { limit, .. }) => assert_eq!(*limit, 64 * 1024 * 1024),
        other => panic!(
            "expected the OOM killer, got {other:?}, stdout {:?}",
            out.stdout
        ),
    }
    // The same step without the limit passes.
    let out = run(&shell(
        "dd if=/dev/zero of=/dev/null bs=200M count=1 2>/dev/null && echo survived",
    ));
    assert_eq!(out.stdout, vec!["survived"]);
}

#[test]
fn cpu_limits_are_accepted() {
    let mut s = shell("echo ok");
    s.limits = Limits {
        cpus: Some(0.5),
        cpu_shares: Some(512),
        ..Limits::default()
    };
    let out = run(&s);
    assert_eq!(out.stdout, vec!["ok"]);
}

#[test]
fn mounts_work_and_leave_no_trace_in_the_layer() {
    let host = scratch();
    let context = host.path().join("context");
    fs::create_dir_all(&context).unwrap();
    fs::write(context.join("input.txt"), "from context").unwrap();
    let cache = host.path().join("cache");
    fs::create_dir_all(&cache).unwrap();
    let secret = host.path().join("secret");
    fs::write(&secret, "hunter2").unwrap();

    let mut s = shell(
        "cat /src/input.txt; echo; echo cached > /var/cache/app/entry; cat /run/secrets/token; echo; \
         echo scratch > /mnt/tmp/file; echo nope > /src/new 2>/dev/null || echo context-is-readonly; echo done > /result",
    );
    s.mounts = vec![
        Mount::Bind {
            source: context.clone(),
            target: "/src".into(),
            readonly: true,
        },
        Mount::Bind {
            source: cache.clone(),
            target: "/var/cache/app".into(),
            readonly: false,
        },
        Mount::Bind {
            source: secret.clone(),
            target: "/run/secrets/token".into(),
            readonly: true,
        },
        Mount::Tmpfs {
            target: "/mnt/tmp".into(),
            size: Some(1 << 20),
        },
    ];
    let out = run(&s);
    out.upper();
    assert_eq!(
        out.stdout,
        vec!["from context", "hunter2", "context-is-readonly"]
    );
    assert_eq!(fs::read_to_string(cache.join("entry")).unwrap(), "cached\n");
    assert!(!context.join("new").exists());
    // Only the step's own file: no /src, /var/cache/app, /run/secrets, /mnt stubs.
    assert_eq!(out.layer_entries(), vec!["result"]);
    let mut tar = Vec::new();
    out.upper()
        .write_layer(&mut tar, &Default::default())
        .unwrap();
    assert!(!tar.windows(7).any(|w| w == b"hunter2"));
}

#[test]
fn proc_dev_sys_do_not_leak_into_layers() {
    let out = run(&shell("ls /dev/null /dev/zero /dev/urandom /dev/pts /dev/shm >/dev/null && echo devices; test -d /proc/self && echo proc; touch /dev/shm/x; true"));
    assert_eq!(out.stdout, vec!["devices", "proc"]);
    assert_eq!(out.layer_entries(), Vec::<String>::new());
}

#[test]
fn host_mounts_are_unchanged_after_runs() {
    let before = host_mounts();
    for _ in 0..3 {
        let mut s = shell("echo x > /f");
        s.mounts = vec![Mount::Tmpfs {
            target: "/mnt/t".into(),
            size: None,
        }];
        run(&s).upper();
    }
    let out = run(&shell("exit 1"));
    assert!(out.result.is_err());
    assert_eq!(before, host_mounts());
}

#[test]
fn steps_run_concurrently_from_many_threads() {
    let handles: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                let out = run(&shell(&format!("echo step{i}; echo {i} > /f{i}")));
                (out.stdout.clone(), out.layer_entries())
            })
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let (stdout, entries) = handle.join().unwrap();
        assert_eq!(stdout, vec![format!("step{i}")]);
        assert_eq!(entries, vec![format!("f{i}")]);
    }
}

#[test]
fn relative_paths_are_rejected() {
    let mut s = shell("true");
    s.cwd = "relative".into();
    assert!(matches!(run(&s).result, Err(Error::InvalidSpec(_))));
}

#[test]
fn mountpoints_keep_the_image_metadata_of_their_parents() {
    let host = scratch();
    let mut s = shell("stat -c '%a %u' /root /root/.cache; ls -a /root; echo hi > /root/note");
    s.mounts = vec![Mount::Tmpfs {
        target: "/root/.cache/tool".into(),
        size: None,
    }];
    let out = run(&s);
    out.upper();
    // /root is 0700 in the fixture; the stub parent /root/.cache is new.
    assert_eq!(out.stdout, vec!["700 0", "755 0", ".", "..", ".cache"]);
    // The stub dirs are not in the layer: only the step's file and its parent.
    assert_eq!(out.layer_entries(), vec!["root/", "root/note"]);
    drop(host);
}

#[test]
fn capabilities_are_dockers_defaults_and_no_new_privs_is_set() {
    let mut s = shell("grep -E '^(CapEff|CapBnd|CapInh|NoNewPrivs)' /proc/self/status");
    let signals = run(&shell(
        "grep -E '^(SigBlk|SigIgn)' /proc/self/status; umask",
    ));
    // Nothing inherited from the test harness: no ignored SIGPIPE (nor any other
    // standard signal; glibc keeps 32 and 33 for itself), Docker's umask.
    assert_eq!(signals.stdout[0], "SigBlk:\t0000000000000000");
    let ignored =
        u64::from_str_radix(signals.stdout[1].trim_start_matches("SigIgn:\t"), 16).unwrap();
    assert_eq!(ignored & 0x7fff_ffff, 0, "{:?}", signals.stdout);
    assert_eq!(signals.stdout[2], "0022");
    let out = run(&s);
    out.upper();
    // moby's default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID
    // SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
    assert_eq!(
        out.stdout,
        vec![
            "CapInh:\t0000000000000000",
            "CapEff:\t00000000a80425fb",
            "CapBnd:\t00000000a80425fb",
            "NoNewPrivs:\t1"
        ]
    );
    s.user = "app".into();
    let out = run(&s);
    assert_eq!(out.stdout[1], "CapEff:\t0000000000000000");
}

#[test]
fn supplementary_groups_come_from_the_image() {
    // A layer on top of the fixture that makes app a member of two more groups.
    let mut builder = tar::Builder::new(Vec::new());
    let group = b"root:x:0:\nnogroup:x:65534:\napp:x:1000:\nwheel:x:10:app\nstaff:x:50:other,app\n";
    let mut header = tar::Header::new_gnu();
    header.set_path("etc/group").unwrap();
    header.set_size(group.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    builder.append(&header, &group[..]).unwrap();
    let tar = builder.into_inner().unwrap();
    let groups_layer = snapshotter()
        .1
        .prepare("sha256:test-groups-layer", || {
            Ok::<_, std::io::Error>(tar.as_slice())
        })
        .unwrap();
    let mut s = shell("id -G");
    s.lowers.push(groups_layer);
    s.user = "app".into();
    let out = run(&s);
    out.upper();
    assert_eq!(out.stdout, vec!["1000 10 50"]);
}

#[test]
fn dev_is_dockers_and_writable_by_any_user() {
    let mut s = shell(
        "echo x > /dev/null && echo null-ok; head -c 4 /dev/zero | wc -c; \
         for n in null zero full random urandom tty; do stat -c '%n %F %a %u:%g %t,%T' /dev/$n; done; \
         stat -c '%n %a %u:%g' /dev /dev/shm /dev/mqueue; \
         for l in ptmx fd stdin stdout stderr; do echo $l $(readlink /dev/$l); done; \
         awk '$2 ~ \"^/dev\" { print $2, $1, $3, $4 }' /proc/mounts",
    );
    s.user = "nobody".into();
    let out = run(&s);
    out.upper();
    let lines: Vec<&str> = out.stdout.iter().map(String::as_str).collect();
    assert_eq!(
        lines[..16],
        [
            "null-ok",
            "4",
            "/dev/null character special file 666 0:0 1,3",
            "/dev/zero character special file 666 0:0 1,5",
            "/dev/full character special file 666 0:0 1,7",
            "/dev/random character special file 666 0:0 1,8",
            "/dev/urandom character special file 666 0:0 1,9",
            "/dev/tty character special file 666 0:0 5,0",
            "/dev 755 0:0",
            "/dev/shm 1777 0:0",
            "/dev/mqueue 1777 0:0",
            "ptmx pts/ptmx",
            "fd /proc/self/fd",
            "stdin /proc/self/fd/0",
            "stdout /proc/self/fd/1",
            "stderr /proc/self/fd/2",
        ],
        "{lines:#?}"
    );
    let mounts = &lines[16..];
    let mount = |target: &str| {
        mounts
            .iter()
            .find(|m| m.split(' ').next() == Some(target))
            .unwrap_or_else(|| panic!("{target} is not mounted: {mounts:#?}"))
            .to_string()
    };
    let has = |line: &str, parts: &[&str]| {
        let options: Vec<&str> = line.split([' ', ',']).collect();
        parts.iter().all(|p| options.contains(p))
    };
    let dev = mount("/dev");
    assert!(
        has(&dev, &["tmpfs", "nosuid", "size=65536k", "mode=755"]),
        "{dev}"
    );
    let pts = mount("/dev/pts");
    assert!(
        has(
            &pts,
            &[
                "devpts",
                "nosuid",
                "noexec",
                "gid=5",
                "mode=620",
                "ptmxmode=666"
            ]
        ),
        "{pts}"
    );
    let shm = mount("/dev/shm");
    assert!(
        has(&shm, &["tmpfs", "nosuid", "nodev", "noexec", "size=65536k"]),
        "{shm}"
    );
    let mqueue = mount("/dev/mqueue");
    assert!(
        has(&mqueue, &["mqueue", "nosuid", "nodev", "noexec"]),
        "{mqueue}"
    );
}

#[test]
fn kernel_paths_are_masked_or_read_only() {
    let out = run(&shell(
        "ls -A /sys/firmware /proc/acpi | grep -v ':$' | grep -c . ; \
         cat /proc/interrupts /proc/keys /proc/timer_list 2>/dev/null | wc -c; \
         touch /sys/firmware/x 2>/dev/null && echo firmware-writable; \
         echo x > /proc/sysrq-trigger 2>/dev/null && echo sysrq-writable; \
         awk '$2 ~ \"^/(proc|sys)/\" { print $2, $3, $4 }' /proc/mounts; true",
    ));
    out.upper();
    assert_eq!(out.stdout[..2], ["0", "0"], "{:#?}", out.stdout);
    let mounts = &out.stdout[2..];
    let mount = |target: &str| {
        mounts
            .iter()
            .find(|m| m.split(' ').next() == Some(target))
            .unwrap_or_else(|| panic!("{target} is not guarded: {mounts:#?}"))
            .clone()
    };
    // A masked directory is an empty read-only tmpfs, a masked file /dev/null.
    assert!(mount("/sys/firmware").starts_with("/sys/firmware tmpfs ro,"));
    let exists = |path: &str| std::path::Path::new(path).exists();
    if exists("/proc/acpi") {
        assert!(mount("/proc/acpi").starts_with("/proc/acpi tmpfs ro,"));
    }
    if exists("/proc/interrupts") {
        assert!(mount("/proc/interrupts").starts_with("/proc/interrupts tmpfs rw,"));
    }
    for read_only in ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"] {
        if !exists(read_only) {
            continue;
        }
        let line = mount(read_only);
        assert!(
            line.starts_with(&format!("{read_only} proc ro,nosuid,nodev,noexec")),
            "{line}"
        );
    }
}

#[test]
fn init_shows_no_arguments_and_keeps_only_cap_kill() {
    let out = run(&shell(
        "tr '\\0' '|' < /proc/1/cmdline; echo; cat /proc/1/comm; \
         grep -E '^(CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/1/status; \
         cat /proc/1/environ 2>/dev/null | wc -c; \
         readlink /proc/1/fd/3 || echo x > /proc/1/fd/3 || echo no-report-pipe",
    ));
    out.upper();
    assert_eq!(
        out.stdout,
        [
            "kiln-init|",
            "kiln-init",
            // CAP_KILL only, for the leftovers of any user.
            "CapPrm:\t0000000000000020",
            "CapEff:\t0000000000000020",
            "CapBnd:\t0000000000000000",
            "CapAmb:\t0000000000000000",
            "NoNewPrivs:\t1",
            // Not dumpable: its environment and report pipe are out of reach.
            "0",
            "no-report-pipe",
        ]
    );
}

#[test]
fn leftovers_of_an_unprivileged_step_are_killed() {
    let started = Instant::now();
    // 38 s: a duration no other test uses (see the test above for root).
    let mut s = shell("sleep 38 & echo started");
    s.user = "app".into();
    let out = run(&s);
    out.upper();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "run waited for leftovers: {:?}",
        started.elapsed()
    );
}
