//! The private network of a build: one namespace shared by its steps, reached
//! through slirp4netns, with the host's loopback out of reach; stopping it
//! leaves nothing running. Needs root and slirp4netns; no traffic leaves this
//! machine.

mod common;

use std::io::Write;
use std::net::TcpListener;

use common::*;
use kiln_executor::{Network, PrivateNetwork};

/// Starts the network, or says why this host cannot (only without root or
/// slirp4netns, which CI has).
fn private_network() -> Option<PrivateNetwork> {
    // CI's machine must run these: there a missing prerequisite fails.
    let in_ci = std::env::var_os("CI").is_some();
    if !nix::unistd::geteuid().is_root() {
        assert!(!in_ci, "the private network needs root");
        eprintln!("skipped: the private network needs root");
        return None;
    }
    match PrivateNetwork::start() {
        Err(kiln_executor::Error::NetworkStackMissing) => {
            assert!(!in_ci, "slirp4netns is not installed");
            eprintln!("skipped: slirp4netns is not installed (scripts/install-deps.sh)");
            None
        }
        other => Some(other.unwrap()),
    }
}

fn on(network: &Network, script: &str) -> Vec<String> {
    let mut s = shell(script);
    s.network = network.clone();
    let out = run(&s);
    out.upper();
    out.stdout.clone()
}

/// A server on the host's 127.0.0.1 that answers "host".
fn host_loopback_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(b"host\n");
        }
    });
    port
}

#[test]
fn steps_share_one_private_namespace_with_the_stack_as_gateway() {
    let Some(network) = private_network() else {
        return;
    };
    let network = Network::Private(network);
    let script = "readlink /proc/self/ns/net; ls /sys/class/net | tr '\\n' ' '; echo; ip route | grep default; cat /etc/resolv.conf | grep nameserver";
    let first = on(&network, script);
    let second = on(&network, script);
    assert_eq!(first, second, "both steps are on the same network");
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(
        first[0],
        host_ns.to_string_lossy(),
        "not the host's namespace"
    );
    assert_eq!(
        &first[1..],
        [
            "lo tap0 ",
            "default via 10.0.2.2 dev tap0 ",
            "nameserver 10.0.2.3"
        ]
    );
}

#[test]
fn the_host_loopback_is_out_of_reach() {
    let Some(network) = private_network() else {
        return;
    };
    let port = host_loopback_server();
    // The step's own loopback, and slirp4netns' gateway, which would lead to
    // the host's loopback without --disable-host-loopback.
    let probe = format!(
        "for a in 127.0.0.1 10.0.2.2; do nc -w 2 $a {port} </dev/null || echo unreachable; done"
    );
    assert_eq!(
        on(&Network::Private(network), &probe),
        ["unreachable", "unreachable"]
    );
    // The same probe on the host's network reaches the server.
    assert_eq!(on(&Network::Host, &probe)[0], "host");
}

/// The command name of a process, if it exists (zombies included).
fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_string())
}

fn holds_namespace(inode: &str) -> Vec<String> {
    let mut holders = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let dir = entry.path();
        let links = std::iter::once(dir.join("ns/net")).chain(
            std::fs::read_dir(dir.join("fd"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path()),
        );
        for link in links {
            if std::fs::read_link(&link).is_ok_and(|t| t.to_string_lossy() == inode) {
                holders.push(link.display().to_string());
            }
        }
    }
    holders
}

#[test]
fn dropping_the_last_handle_stops_the_stack_and_frees_the_namespace() {
    let Some(network) = private_network() else {
        return;
    };
    let pid = network.stack_pid();
    assert_eq!(comm(pid).as_deref(), Some("slirp4netns"));
    let network = Network::Private(network);
    let inode = on(&network, "readlink /proc/self/ns/net").remove(0);
    assert!(!holds_namespace(&inode).is_empty());
    drop(network);
    // Killed and reaped: no process, not even a zombie.
    assert_eq!(comm(pid), None, "slirp4netns {pid} is still there");
    assert_eq!(holds_namespace(&inode), Vec::<String>::new());
}
