//! docker build's flags for RUN steps: `--add-host`, `--ulimit`,
//! `--shm-size`, and `RUN --security=insecure` with `--allow security.insecure`.

mod build_common;

use build_common::Env;

#[test]
fn hosts_limits_and_shm_size_reach_every_step() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\n\
             RUN cat /etc/hosts > /hosts && grep 'open files' /proc/self/limits > /limits \
              && df -k /dev/shm | tail -1 > /shm\n",
        )],
    );
    let fs = env.export(
        &ctx,
        &[
            "--add-host",
            "db:10.1.2.3",
            "--add-host",
            "gw=host-gateway",
            "--ulimit",
            "nofile=1024:2048",
            "--shm-size",
            "128m",
        ],
    );
    let read = |p: &str| std::fs::read_to_string(fs.join(p)).unwrap();
    let hosts = read("hosts");
    assert!(hosts.contains("10.1.2.3\tdb\n"), "{hosts}");
    let gateway = hosts
        .lines()
        .find(|l| l.ends_with("\tgw"))
        .unwrap_or_else(|| panic!("{hosts}"));
    assert!(gateway.parse::<std::net::IpAddr>().is_err());
    assert!(
        gateway
            .split('\t')
            .next()
            .unwrap()
            .parse::<std::net::Ipv4Addr>()
            .is_ok(),
        "{gateway}"
    );
    let limits: Vec<String> = read("limits")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(limits[3..5], ["1024", "2048"], "{limits:?}");
    let shm: Vec<String> = read("shm").split_whitespace().map(String::from).collect();
    assert_eq!(shm[1], "131072", "{shm:?}");

    // Bad values are errors naming the flag, before anything runs.
    for (flag, value, says) in [
        ("--ulimit", "nofile=2048:1024", "soft limit is above"),
        ("--ulimit", "files=1", "unknown limit"),
        ("--add-host", "db:nonsense", "not an IP address"),
        ("--shm-size", "1x", "128m"),
    ] {
        let out = env.try_build(&ctx, &[flag, value]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
    }
}

#[test]
fn insecure_steps_need_the_entitlement_and_then_run_privileged() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\n\
             RUN grep -E '^(CapEff|Seccomp):' /proc/self/status > /sandboxed\n\
             RUN --security=insecure grep -E '^(CapEff|Seccomp):' /proc/self/status > /insecure \
              && grep ' /sys ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1 > /sys-mode\n",
        )],
    );
    let out = env.try_build(&ctx, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("Dockerfile:3:1") && stderr.contains("--allow security.insecure"),
        "{stderr}"
    );

    let fs = env.export(&ctx, &["--allow", "security.insecure"]);
    let read = |p: &str| std::fs::read_to_string(fs.join(p)).unwrap();
    let sandboxed = read("sandboxed");
    assert!(sandboxed.contains("Seccomp:\t2"), "{sandboxed}");
    let insecure = read("insecure");
    assert!(insecure.contains("Seccomp:\t0"), "{insecure}");
    let caps = insecure
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:\t"))
        .unwrap();
    let caps = u64::from_str_radix(caps.trim(), 16).unwrap();
    // CAP_SYS_ADMIN (21) and every other capability the kernel has.
    assert!(caps & (1 << 21) != 0 && caps.count_ones() >= 38, "{caps:x}");
    assert_eq!(read("sys-mode"), "rw\n");

    let out = env.try_build(&ctx, &["--allow", "network.none"]);
    assert!(!out.status.success());
}
