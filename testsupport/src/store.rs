//! What the end-to-end tests of the kiln binary share: a temporary store,
//! the fixtures, the rootless test users, and running kiln and skopeo.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub use crate::fixtures::fixture;
use crate::run::{client, run_ok};

/// An unprivileged user (with a home) whom a test runs kiln as: rootless
/// kiln, from a test binary that stays root.
#[derive(Clone, Debug)]
pub struct TestUser {
    /// The login name.
    pub name: String,
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// The home directory (kiln's rootless store goes under it).
    pub home: PathBuf,
}

impl TestUser {
    /// The user `name` of /etc/passwd; panics when there is none
    /// (scripts/test.sh creates `kiln-test` and `kiln-test-nosub`).
    pub fn lookup(name: &str) -> TestUser {
        TestUser::find(name).unwrap_or_else(|| {
            panic!("no user {name:?}: scripts/test.sh creates the rootless test users")
        })
    }

    /// The user `name` of /etc/passwd, if there is one.
    pub fn find(name: &str) -> Option<TestUser> {
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() >= 7 && fields[0] == name).then(|| TestUser {
                name: name.to_owned(),
                uid: fields[2].parse().unwrap(),
                gid: fields[3].parse().unwrap(),
                home: PathBuf::from(fields[5]),
            })
        })
    }

    /// `KILN_TEST_USER`: every kiln the shared helpers start runs as that
    /// user (scripts/test.sh runs a handful of end-to-end tests so).
    pub fn from_env() -> Option<TestUser> {
        let name = std::env::var("KILN_TEST_USER")
            .ok()
            .filter(|n| !n.is_empty())?;
        Some(TestUser::lookup(&name))
    }

    /// `program` run as this user (`setpriv`, real and effective ids and
    /// the user's groups), with the user's HOME and no XDG directories of root's.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program)
            .env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name)
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_RUNTIME_DIR");
        command
    }

    /// Gives `path` (a test's own temporary directory) to this user.
    pub fn own(&self, path: &Path) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("chown {} to {}: {e}", path.display(), self.name));
    }
}

/// A temporary directory the user kiln runs as (`KILN_TEST_USER`, else
/// root) owns.
pub fn temp_dir_for(user: Option<&TestUser>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    if let Some(user) = user {
        user.own(dir.path());
    }
    dir
}

/// A store in a temporary directory.
pub struct Store {
    /// The temporary directory: the store is its `store` subdirectory.
    pub dir: tempfile::TempDir,
}

impl Default for Store {
    fn default() -> Store {
        Store {
            dir: temp_dir_for(TestUser::from_env().as_ref()),
        }
    }
}

impl Store {
    /// A fresh store, owned by the `KILN_TEST_USER` when that is set.
    pub fn new() -> Store {
        Store::default()
    }

    /// The store's root directory (`--root`).
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

    /// Runs kiln with `args` against this store, whatever its exit status.
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

/// The kiln binary under test: `CARGO_BIN_EXE_kiln`, which cargo sets when it
/// runs an integration test of the `kiln` package, else (a test binary run
/// by hand) the `kiln` beside the `deps/` directory the test binary is in.
pub fn kiln_exe() -> PathBuf {
    if let Some(exe) = std::env::var_os("CARGO_BIN_EXE_kiln") {
        return PathBuf::from(exe);
    }
    let test_exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries are in target/<profile>/deps");
    profile_dir.join("kiln")
}

/// `kiln --root ROOT ARGS` with no KILN_ROOT, SOURCE_DATE_EPOCH, colour or
/// stdin, so the host's settings cannot change what a test sees; as the
/// `KILN_TEST_USER` when that is set.
pub fn kiln_command(root: &Path, args: &[&str]) -> Command {
    kiln_command_as(TestUser::from_env().as_ref(), root, args)
}

/// [`kiln_command`] as `user` (root when `None`).
pub fn kiln_command_as(user: Option<&TestUser>, root: &Path, args: &[&str]) -> Command {
    let mut command = match user {
        Some(user) => user.command(kiln_exe()),
        None => Command::new(kiln_exe()),
    };
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

/// `skopeo inspect REF` as JSON.
pub fn skopeo_inspect(reference: &str) -> serde_json::Value {
    serde_json::from_str(&client("skopeo", &["inspect", reference])).expect("skopeo prints JSON")
}
