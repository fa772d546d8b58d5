//! Crash safety and concurrency of the store, with real processes: a kiln
//! killed mid-import leaves a consistent store, and imports and tags running
//! at once lose nothing.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kiln_testsupport::store::{fixture, skopeo_inspect, Store};

/// Writes an endless uncompressed tar of 1 MiB files with varied content to `sink`
/// until it fails (the reader died).
fn feed_large_tar(sink: impl Write) {
    feed_tar(sink, u64::MAX, true);
}

/// Writes `files` members of 1 MiB to `sink`, and the end-of-archive marker
/// when `end` is set (without it the reader waits for more); stops early when
/// the reader goes away.
fn feed_tar(mut sink: impl Write, files: u64, end: bool) {
    let mut index = 0u64;
    while index < files {
        let mut header = [0u8; 512];
        let name = format!("data/file-{index:08}");
        header[..name.len()].copy_from_slice(name.as_bytes());
        header[100..107].copy_from_slice(b"0000644");
        header[108..115].copy_from_slice(b"0000000");
        header[116..123].copy_from_slice(b"0000000");
        header[124..135].copy_from_slice(format!("{:011o}", 1u64 << 20).as_bytes());
        header[136..147].copy_from_slice(b"00000000000");
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let mut data = vec![0u8; 1 << 20];
        let mut state = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for chunk in data.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        if sink.write_all(&header).is_err() || sink.write_all(&data).is_err() {
            return;
        }
        index += 1;
    }
    if end {
        let _ = sink.write_all(&[0u8; 1024]);
    }
}

fn temp_bytes(store: &Store) -> u64 {
    std::fs::read_dir(store.root().join("kiln/tmp"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_process_killed_mid_import_leaves_a_consistent_store() {
    let store = Store::new();
    store.import("busybox-amd64.tar", "before");
    let mut child = store
        .command(&["import", "--platform", "amd64", "-", "never"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || feed_large_tar(stdin));
    // Kill it once a good part of a layer has been written.
    let started = Instant::now();
    while temp_bytes(&store) < 8 << 20 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the import never wrote anything"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    feeder.join().unwrap();
    assert!(temp_bytes(&store) >= 8 << 20, "SIGKILL cleans nothing up");

    // The next kiln to open the store (no other one has it open) removes
    // the debris the killed one left in tmp/.
    store.assert_fsck_clean();
    assert_eq!(temp_bytes(&store), 0);
    assert!(store.kiln(&["inspect", "never"]).status.code() != Some(0));
    // The store still works: images read, a new import succeeds.
    skopeo_inspect(&format!("oci:{}:before:latest", store.root().display()));
    store.import("busybox-mips64el.tar", "after");
    store.ok(&["prune"]);
    assert_eq!(temp_bytes(&store), 0);
    store.assert_fsck_clean();
    let images = store.ok(&["images", "--format", "json"]);
    assert!(
        images.contains("before:latest") && images.contains("after:latest"),
        "{images}"
    );
}

#[test]
fn two_imports_at_once_into_one_store_both_land() {
    let store = Store::new();
    let spawn = |fixture_name: &str, name: &str| {
        store
            .command(&["import", fixture(fixture_name).to_str().unwrap(), name])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The same content twice and a different one, all at once.
    let children = vec![
        spawn("busybox-amd64.tar", "x86"),
        spawn("busybox-mips64el.tar", "mips"),
        spawn("busybox-amd64.tar", "x86-again"),
    ];
    let ids: Vec<String> = children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        })
        .collect();
    assert_eq!(ids[0], ids[2]);
    assert_ne!(ids[0], ids[1]);
    let root = store.root();
    assert_eq!(
        skopeo_inspect(&format!("oci:{}:x86:latest", root.display()))["Architecture"],
        "amd64"
    );
    assert_eq!(
        skopeo_inspect(&format!("oci:{}:mips:latest", root.display()))["Architecture"],
        "mips64le"
    );
    store.assert_fsck_clean();
}

#[test]
fn concurrent_tags_are_all_kept() {
    let store = Store::new();
    store.import("busybox-amd64.tar", "base");
    let children: Vec<_> = (0..12)
        .map(|i| {
            store
                .command(&["tag", "base", &format!("copy:{i}")])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let images: serde_json::Value =
        serde_json::from_str(&store.ok(&["images", "--format", "json"])).unwrap();
    assert_eq!(images.as_array().unwrap().len(), 13, "{images}");
    store.assert_fsck_clean();
}

#[test]
fn fsck_reports_a_damaged_blob_and_repair_lets_a_reimport_heal_it() {
    let store = Store::new();
    let id = store.import("busybox-amd64.tar", "bb");
    let inspect: serde_json::Value = serde_json::from_str(&store.ok(&["inspect", &id])).unwrap();
    let layer = inspect[0]["Manifest"]["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = store
        .root()
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let out = store.kiln(&["fsck"]);
    assert!(!out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(layer.trim_start_matches("sha256:")) && report.contains("hashes to"),
        "{report}"
    );
    assert!(!store.kiln(&["fsck", "--repair"]).status.success());
    assert!(!path.exists());
    store.import("busybox-amd64.tar", "bb");
    store.assert_fsck_clean();
}

#[test]
fn prune_waits_for_an_import_in_progress_and_loses_nothing() {
    let store = Store::new();
    let mut import = store
        .command(&["import", "--platform", "amd64", "-", "slow"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = import.stdin.take().unwrap();
    feed_tar(&mut stdin, 16, false);
    // The import has a temporary blob but no name yet: exactly what prune removes
    // when nobody uses the store.
    let started = Instant::now();
    while temp_bytes(&store) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the import never wrote anything"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut prune = store
        .command(&["prune"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        prune.try_wait().unwrap().is_none(),
        "prune ran while an import was in progress"
    );
    feed_tar(&mut stdin, 0, true);
    drop(stdin);
    let imported = import.wait_with_output().unwrap();
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let pruned = prune.wait_with_output().unwrap();
    assert!(
        pruned.status.success(),
        "{}",
        String::from_utf8_lossy(&pruned.stderr)
    );
    assert!(
        String::from_utf8_lossy(&pruned.stderr).contains("waiting for the other kiln processes"),
        "{}",
        String::from_utf8_lossy(&pruned.stderr)
    );
    store.assert_fsck_clean();
    let inspect: serde_json::Value = serde_json::from_str(&store.ok(&["inspect", "slow"])).unwrap();
    assert_eq!(inspect[0]["Platform"], "linux/amd64");
}
