//! Shared helpers for the executor's integration tests: fixtures unpacked as
//! snapshots, and a runner that collects output.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln_executor::{CancelToken, OutputLine, RunSpec, Snapshotter, Stream, Upper};

#[allow(unused_imports)]
pub use kiln_testsupport::fixtures::fixture;

/// One snapshot root per test binary, kept under the target dir.
pub fn snapshotter() -> &'static (tempfile::TempDir, Snapshotter) {
    static SNAPSHOTS: OnceLock<(tempfile::TempDir, Snapshotter)> = OnceLock::new();
    SNAPSHOTS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("kiln-executor-test-")
            .tempdir_in(scratch_parent())
            .unwrap();
        let snapshotter = Snapshotter::new(dir.path().join("snapshots")).unwrap();
        (dir, snapshotter)
    })
}

/// Where scratch dirs go: the workspace's target dir (a real filesystem, not tmpfs
/// or overlay, so overlay upper dirs and trusted xattrs work).
pub fn scratch_parent() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/executor-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("step-")
        .tempdir_in(scratch_parent())
        .unwrap()
}

/// The snapshot of a busybox fixture ("amd64" or "mips64el").
pub fn busybox(arch: &str) -> PathBuf {
    let tar = fixture(&format!("busybox-{arch}.tar"));
    snapshotter()
        .1
        .prepare(&format!("sha256:fixture-busybox-{arch}"), || {
            File::open(&tar)
        })
        .unwrap()
}

pub fn spec(argv: &[&str]) -> RunSpec {
    RunSpec {
        lowers: vec![busybox("amd64")],
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin:/usr/bin".into()],
        cwd: "/".into(),
        ..RunSpec::default()
    }
}

pub fn shell(script: &str) -> RunSpec {
    spec(&["/bin/sh", "-c", script])
}

pub struct Outcome {
    pub result: kiln_executor::Result<Upper>,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    pub scratch: tempfile::TempDir,
}

impl Outcome {
    pub fn upper(&self) -> &Upper {
        match &self.result {
            Ok(upper) => upper,
            Err(e) => panic!(
                "step failed: {e}\nstdout: {:?}\nstderr: {:?}",
                self.stdout, self.stderr
            ),
        }
    }

    pub fn layer_entries(&self) -> Vec<String> {
        let mut tar = Vec::new();
        self.upper()
            .write_layer(&mut tar, &Default::default())
            .unwrap();
        list_tar(&tar)
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        let _ = kiln_executor::remove_tree(self.scratch.path());
    }
}

pub fn run(spec: &RunSpec) -> Outcome {
    run_with(spec, &CancelToken::new())
}

pub fn run_with(spec: &RunSpec, cancel: &CancelToken) -> Outcome {
    let scratch = scratch();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let result = kiln_executor::run(
        spec,
        scratch.path(),
        cancel,
        &mut |line: OutputLine| match line.stream {
            Stream::Stdout => stdout.push(line.text().into_owned()),
            Stream::Stderr => stderr.push(line.text().into_owned()),
        },
    );
    Outcome {
        result,
        stdout,
        stderr,
        scratch,
    }
}

pub fn list_tar(bytes: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// This process's mount table, sorted: whole lines of /proc/self/mountinfo
/// (no field on them changes on its own), to compare before and after runs.
pub fn host_mounts() -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

#[allow(unused_imports)]
pub use kiln_testsupport::tree::{listing_diff, tree_listing};

/// Temporary directories (`.tmp-*`) left in a snapshot root.
pub fn temp_leftovers(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".tmp-"))
        .collect()
}
