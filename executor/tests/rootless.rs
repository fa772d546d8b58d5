//! The sandbox run by an ordinary user, in the user namespace
//! `enter_user_namespace` makes: a snapshot unpacked there, a step on
//! overlayfs and the same step on the copying fallback give one layer with
//! in-image owners. `harness = false`: a user namespace can only be entered
//! by a process with one thread, which libtest's main is not. Run as root,
//! it runs itself again as the user `kiln-test` (scripts/make-test-users.sh).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use kiln_executor::{CancelToken, Network, RunSpec, Snapshotter};

const USER: &str = "kiln-test";
const CHILD_ENV: &str = "KILN_EXECUTOR_ROOTLESS_CHILD";

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        as_the_user();
        return;
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filter.is_empty()
        && !filter
            .iter()
            .any(|f| "rootless_overlay_and_copy".contains(f.as_str()))
    {
        return;
    }
    let exists = Command::new("id")
        .arg(USER)
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        assert!(
            std::env::var_os("CI").is_none(),
            "no user {USER}: scripts/make-test-users.sh"
        );
        eprintln!("skipped: no user {USER} (scripts/make-test-users.sh)");
        return;
    }
    let fixtures = kiln_testsupport::fixtures::fixtures_dir();
    let status = Command::new("setpriv")
        .args([
            format!("--reuid={USER}"),
            format!("--regid={USER}"),
            "--init-groups".into(),
            "--".into(),
        ])
        .arg(std::env::current_exe().unwrap())
        .env(CHILD_ENV, "1")
        .env("KILN_FIXTURES", fixtures)
        .status()
        .unwrap();
    assert!(status.success(), "the rootless run failed ({status})");
    println!("test rootless_overlay_and_copy ... ok");
}

fn as_the_user() {
    kiln_executor::enter_user_namespace().expect("enter the user namespace");
    assert!(kiln_executor::in_user_namespace());
    // Removed by the user, inside the namespace (files of mapped ids).
    let dir = tempfile::tempdir().unwrap();
    let snapshots = Snapshotter::new(dir.path().join("snapshots")).unwrap();
    let tar = Path::new(&std::env::var_os("KILN_FIXTURES").unwrap()).join("busybox-amd64.tar");
    let lower = snapshots
        .prepare("sha256:fixture-busybox-amd64", || File::open(&tar))
        .unwrap();
    // Owners of the snapshot as the namespace sees them: the layer's (root).
    assert_eq!(
        std::fs::metadata(lower.join("bin/busybox")).unwrap().uid(),
        0
    );
    let script = "rm /bin/uname && rm -r /usr && mkdir /usr && echo new > /usr/only \
                  && mkdir /app && echo hi > /app/file && chown -R 33:44 /app \
                  && ls -l /dev/null > /dev/null && echo hi > /dev/null";
    let spec = RunSpec {
        lowers: vec![lower],
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin:/usr/bin".into()],
        cwd: "/".into(),
        network: Network::None,
        ..RunSpec::default()
    };
    let overlay = layer(&spec, dir.path(), "overlay");
    let copied = layer(
        &RunSpec {
            copy_rootfs: true,
            ..spec.clone()
        },
        dir.path(),
        "copy",
    );
    let expected = vec![
        ("app/".to_owned(), 33, 44),
        ("app/file".to_owned(), 33, 44),
        ("bin/".to_owned(), 0, 0),
        ("bin/.wh.uname".to_owned(), 0, 0),
        ("usr/".to_owned(), 0, 0),
        ("usr/.wh..wh..opq".to_owned(), 0, 0),
        ("usr/only".to_owned(), 0, 0),
    ];
    assert_eq!(overlay, expected);
    assert_eq!(copied, expected);
    kiln_executor::remove_tree(dir.path()).unwrap();
}

/// The step's layer: (path, uid, gid) of each entry.
fn layer(spec: &RunSpec, dir: &Path, name: &str) -> Vec<(String, u64, u64)> {
    let scratch = dir.join(name);
    let upper = kiln_executor::run(spec, &scratch, &CancelToken::new(), &mut |line| {
        eprintln!("{name}: {}", line.text())
    })
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut tar = Vec::new();
    upper.write_layer(&mut tar, &Default::default()).unwrap();
    let mut archive = tar::Archive::new(tar.as_slice());
    let entries = archive
        .entries()
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let header = entry.header();
            (
                entry.path().unwrap().to_string_lossy().into_owned(),
                header.uid().unwrap(),
                header.gid().unwrap(),
            )
        })
        .collect();
    kiln_executor::remove_tree(&scratch).unwrap();
    entries
}
