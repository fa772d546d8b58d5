//! Helpers shared by the store and import tests (included with `#[path]`):
//! a temporary store, the fixtures, and running kiln and the real clients.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

#[path = "../testsupport/run.rs"]
mod run;
#[allow(unused_imports)]
pub use run::run_ok;

/// Where the fixtures are: $KILN_FIXTURES, else <workspace>/target/fixtures.
pub fn fixture(name: &str) -> PathBuf {
    let dir = std::env::var_os("KILN_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fixtures"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "fixture {} is missing: run scripts/make-fixtures.sh",
        path.display()
    );
    path
}

/// A store in a temporary directory.
pub struct Store {
    pub dir: tempfile::TempDir,
}

impl Default for Store {
    fn default() -> Store {
        Store {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// A path for scratch files beside the store.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `kiln --root STORE ARGS` with a clean environment.
    pub fn command(&self, args: &[&str]) -> Command {
        kiln_command(&self.root(), args)
    }

    pub fn kiln(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run kiln")
    }

    /// Runs kiln, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = run_ok(&mut self.command(args));
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs kiln, asserts failure, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.kiln(args);
        assert!(
            !out.status.success(),
            "kiln {args:?} should have failed; stdout:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).expect("utf-8 stderr")
    }

    /// Imports a fixture and returns the image id.
    pub fn import(&self, fixture_name: &str, name: &str) -> String {
        let tar = fixture(fixture_name);
        self.ok(&["import", tar.to_str().unwrap(), name])
            .trim()
            .to_owned()
    }

    /// `kiln fsck` succeeds with no problems.
    pub fn assert_fsck_clean(&self) {
        let out = self.kiln(&["fsck"]);
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "fsck found problems:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `kiln --root ROOT ARGS` with no KILN_ROOT, SOURCE_DATE_EPOCH, colour or
/// stdin, so the host's settings cannot change what a test sees.
pub fn kiln_command(root: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("KILN_ROOT")
        .env_remove("SOURCE_DATE_EPOCH")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

/// Runs `command` with `input` on its stdin; returns its output, whatever its
/// exit status.
pub fn output_with_stdin(command: &mut Command, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("wait for the command")
}

/// Runs a real client (skopeo, umoci, tar), asserting success; returns stdout.
pub fn client(program: &str, args: &[&str]) -> String {
    let out = run_ok(Command::new(program).args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `skopeo inspect REF` as JSON.
pub fn skopeo_inspect(reference: &str) -> serde_json::Value {
    serde_json::from_str(&client("skopeo", &["inspect", reference])).expect("skopeo prints JSON")
}
