//! Snapshots made before a build asks for them (issue 18): an imported
//! image's (by a detached kiln right after import), and a COPY's that a later
//! RUN mounts (as its layer is written, without reading the blob back); each
//! the same tree the unpacker makes from the stored blob.

mod build_common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use build_common::{fixture, run_ok, Env};
use kiln_testsupport::tree::{listing_diff, tree_listing};

/// The layer snapshots of the store (not the exported context trees).
fn layer_snapshots(env: &Env) -> BTreeSet<PathBuf> {
    std::fs::read_dir(env.root().join("kiln/snapshots"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("sha256_")
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Removes a snapshot and its boot marker, as prune does, so the next user
/// unpacks it again from its blob.
fn forget(snapshot: &Path) {
    kiln_executor::remove_tree(snapshot).unwrap();
    let name = snapshot.file_name().unwrap();
    let marker = snapshot.parent().unwrap().join(".boot").join(name);
    let _ = std::fs::remove_file(marker);
}

fn birth(path: &Path) -> SystemTime {
    std::fs::symlink_metadata(path)
        .unwrap()
        .created()
        .expect("birth times (statx)")
}

#[test]
fn an_imported_image_has_its_snapshot_and_it_is_the_unpacked_one() {
    let env = Env::empty();
    let rootfs = fixture("debian12-minbase-amd64.tar.zst");
    run_ok(&mut env.command(&["import", &rootfs.to_string_lossy(), "deb:12"]));
    // Import returns with the layer stored; a detached kiln makes the
    // snapshot right after, without any build asking for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let snapshots = loop {
        let snapshots = layer_snapshots(&env);
        if !snapshots.is_empty() || std::time::Instant::now() > deadline {
            break snapshots;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        snapshots.len(),
        1,
        "import made the snapshot: {snapshots:?}"
    );
    let snapshot = snapshots.first().unwrap();
    let made_by_import = tree_listing(snapshot);
    assert!(made_by_import.contains("usr/bin/su 0o104755 0:0"));

    // The first RUN unpacks it from the stored layer when it is missing.
    forget(snapshot);
    let context = env.context("ctx", &[("Dockerfile", "FROM deb:12\nRUN true\n")]);
    env.build(&context, &[]);
    assert!(snapshot.is_dir());
    let unpacked = tree_listing(snapshot);
    assert!(
        made_by_import == unpacked,
        "{}",
        listing_diff(&made_by_import, &unpacked)
    );
}

/// `count` files of 1 MiB that do not compress, so the layer takes a while
/// to write.
fn write_noise(dir: &Path, count: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for n in 0..count {
        let mut data = Vec::with_capacity(1 << 20);
        while data.len() < 1 << 20 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            data.extend_from_slice(&state.to_le_bytes());
        }
        std::fs::write(dir.join(format!("f{n}")), data).unwrap();
    }
}

fn layer_blob(env: &Env, image: &str, index: usize) -> PathBuf {
    let blobs = env.root().join("blobs/sha256");
    let manifest = std::fs::read(blobs.join(image.trim_start_matches("sha256:"))).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let digest = manifest["layers"][index]["digest"].as_str().unwrap();
    blobs.join(digest.trim_start_matches("sha256:"))
}

#[test]
fn a_copy_that_a_run_mounts_is_unpacked_as_its_layer_is_written() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let context = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM busybox:latest\nCOPY data /data\nRUN ls -l /data > /listing\n",
            ),
            ("data/tools/run.sh", "#!/bin/sh\n"),
        ],
    );
    write_noise(&context.join("data/noise"), 24);
    std::fs::set_permissions(
        context.join("data/tools/run.sh"),
        std::fs::Permissions::from_mode(0o4750),
    )
    .unwrap();
    std::os::unix::fs::symlink("tools/run.sh", context.join("data/run")).unwrap();
    let base = layer_snapshots(&env);
    let (image, _) = env.build(&context, &[]);

    // The COPY's snapshot, and only it: no step mounts the RUN's result.
    let made: Vec<PathBuf> = layer_snapshots(&env).difference(&base).cloned().collect();
    assert_eq!(made.len(), 1, "{made:?}");
    let snapshot = &made[0];
    // Made while its layer was written, not unpacked from the finished blob.
    let blob = layer_blob(&env, &image, 1);
    let blob_written = std::fs::metadata(&blob).unwrap().modified().unwrap();
    assert!(
        birth(snapshot) < blob_written,
        "the snapshot was made after its blob"
    );
    let streamed = tree_listing(snapshot);
    assert!(
        streamed.contains("data/tools/run.sh 0o104750 0:0"),
        "{streamed}"
    );
    assert!(streamed.contains("data/run 0o120777"), "{streamed}");

    // What unpacking the stored layer makes (an export of the cached build
    // unpacks every layer it lacks).
    forget(snapshot);
    env.export(&context, &[]);
    assert!(snapshot.is_dir());
    let unpacked = tree_listing(snapshot);
    assert!(
        unpacked == streamed,
        "{}",
        listing_diff(&streamed, &unpacked)
    );

    // A COPY no later step mounts is left to be unpacked if ever needed.
    let before = layer_snapshots(&env);
    let last = env.context(
        "last",
        &[("Dockerfile", "FROM busybox:latest\nCOPY data /elsewhere\n")],
    );
    write_noise(&last.join("data"), 2);
    env.build(&last, &[]);
    assert_eq!(layer_snapshots(&env), before);
}

#[test]
fn rmi_right_after_import_waits_for_the_background_unpack_and_frees_the_space() {
    let env = Env::empty();
    let rootfs = fixture("debian12-minbase-amd64.tar.zst");
    run_ok(&mut env.command(&["import", &rootfs.to_string_lossy(), "deb:12"]));
    // The unpack of 120 MB takes a while: rmi waits for it, then prunes.
    let out = env.command(&["rmi", "deb:12"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("deleted"), "{stderr}");
    assert!(!stderr.contains("another kiln process"), "{stderr}");
    let blobs = std::fs::read_dir(env.root().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "{stderr}");
    assert!(layer_snapshots(&env).is_empty());
}
