//! Transfers cut in the middle, deterministically: a TCP proxy in front of a
//! real registry closes a connection after a set number of bytes of a blob
//! upload or download. The failure is a clean error, nothing corrupt or
//! half-written is visible in the registry or the store, and a retry through
//! the healed proxy completes.

mod registry_common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use kiln_testsupport::run::client;
use kiln_testsupport::store::Store;
use registry_common::Registry;

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    /// Count what the client sends (a push's blob bodies).
    Upload,
    /// Count what the registry answers (a pull's blobs).
    Download,
}

/// A proxy on 127.0.0.1 that forwards to a registry and cuts every
/// connection once `limit` bytes went the counted way on it, until healed.
struct CuttingProxy {
    port: u16,
    limit: Arc<AtomicU64>,
    cuts: Arc<AtomicUsize>,
}

impl CuttingProxy {
    fn start(upstream: u16, direction: Direction, limit: u64) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let limit = Arc::new(AtomicU64::new(limit));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (shared_limit, shared_cuts) = (limit.clone(), cuts.clone());
        // The accept loop lives as long as the test process; each connection
        // has a thread per direction.
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let limit = shared_limit.load(Ordering::SeqCst);
                let (up_limit, down_limit) = match direction {
                    Direction::Upload => (limit, u64::MAX),
                    Direction::Download => (u64::MAX, limit),
                };
                let sockets = || [client.try_clone().unwrap(), server.try_clone().unwrap()];
                let (up_sockets, down_sockets) = (sockets(), sockets());
                let (up_cuts, down_cuts) = (shared_cuts.clone(), shared_cuts.clone());
                let (to_client, from_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pump(client, server, up_limit, &up_sockets, &up_cuts));
                std::thread::spawn(move || {
                    pump(
                        from_server,
                        to_client,
                        down_limit,
                        &down_sockets,
                        &down_cuts,
                    )
                });
            }
        });
        CuttingProxy { port, limit, cuts }
    }

    /// From now on, new connections are forwarded whole.
    fn heal(&self) {
        self.limit.store(u64::MAX, Ordering::SeqCst);
    }

    fn reference(&self, repository: &str) -> String {
        format!("127.0.0.1:{}/{repository}", self.port)
    }
}

/// Copies `from` to `to`; after `limit` bytes, closes both sockets of the
/// connection (`both`) and counts a cut.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    limit: u64,
    both: &[TcpStream; 2],
    cuts: &AtomicUsize,
) {
    let mut buffer = [0u8; 16 << 10];
    let mut sent = 0u64;
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        let allowed = (limit - sent).min(n as u64) as usize;
        if to.write_all(&buffer[..allowed]).is_err() {
            return;
        }
        sent += allowed as u64;
        if allowed < n {
            cuts.fetch_add(1, Ordering::SeqCst);
            for stream in both {
                let _ = stream.shutdown(Shutdown::Both);
            }
            return;
        }
    }
}

fn registry_blob(registry_dir: &Path, digest: &str) -> std::path::PathBuf {
    let hex = &digest[7..];
    registry_dir
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

fn skopeo(args: &[&str]) -> std::process::Output {
    Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo")
}

fn layer_of(store: &Store, image: &str) -> String {
    let manifest = store.root().join("blobs/sha256").join(&image[7..]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    manifest["layers"][0]["digest"].as_str().unwrap().to_owned()
}

fn interrupted_push_leaves_nothing_and_a_retry_completes(chunk_size: &str) {
    let dir = tempfile::tempdir().unwrap();
    let registry_dir = dir.path().join("registry");
    let registry = Registry::start(&registry_dir, None);
    let store = Store::new();
    let id = store.import("busybox-amd64.tar", "busybox:1");
    let layer = layer_of(&store, &id);
    let proxy = CuttingProxy::start(registry.port, Direction::Upload, 100 << 10);
    let target = proxy.reference("kiln/cut:1");

    let out = store.kiln(&["push", "busybox:1", &target, "--chunk-size", chunk_size]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the push went through:\n{stderr}");
    assert!(proxy.cuts.load(Ordering::SeqCst) > 0);
    assert!(
        stderr.starts_with("pushing")
            && stderr.contains("the connection to registry")
            && stderr.contains("broke during the upload of blob")
            && !stderr.contains("panicked"),
        "{stderr}"
    );
    // The registry names no image and holds no partial layer.
    let direct = registry.reference("kiln/cut:1");
    let inspect = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{direct}"),
    ]);
    assert!(!inspect.status.success(), "the tag exists after a cut push");
    assert!(!registry_blob(&registry_dir, &layer).exists());

    proxy.heal();
    assert_eq!(
        store
            .ok(&["push", "busybox:1", &target, "--chunk-size", chunk_size])
            .trim(),
        id
    );
    // skopeo fetches and verifies every blob.
    let copy = dir.path().join("copy");
    client(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{direct}"),
            &format!("oci:{}:copy", copy.display()),
        ],
    );
}

#[test]
fn a_push_cut_mid_blob_fails_cleanly_and_a_retry_completes() {
    interrupted_push_leaves_nothing_and_a_retry_completes("64M");
}

#[test]
fn a_chunked_push_cut_mid_blob_fails_cleanly_and_a_retry_completes() {
    interrupted_push_leaves_nothing_and_a_retry_completes("32K");
}

#[test]
fn a_pull_cut_mid_blob_fails_cleanly_and_a_retry_completes() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), None);
    let publisher = Store::new();
    let id = publisher.import("busybox-amd64.tar", "busybox:1");
    let layer = layer_of(&publisher, &id);
    publisher.ok(&["push", "busybox:1", &registry.reference("kiln/cut:1")]);
    let proxy = CuttingProxy::start(registry.port, Direction::Download, 100 << 10);
    let source = proxy.reference("kiln/cut:1");

    let store = Store::new();
    let err = store.fails(&["pull", &source]);
    assert!(proxy.cuts.load(Ordering::SeqCst) > 0);
    assert!(
        err.contains(&layer)
            && err.contains("connection to registry")
            && err.contains("broke during the download")
            && !err.contains("panicked"),
        "{err}"
    );
    // No partial blob, no name, nothing for fsck to find.
    assert!(!store.root().join("blobs/sha256").join(&layer[7..]).exists());
    assert!(!store
        .ok(&["images", "--format", "json"])
        .contains("kiln/cut"));
    store.assert_fsck_clean();

    proxy.heal();
    assert_eq!(store.ok(&["pull", &source]).trim(), id);
    store.assert_fsck_clean();
}
