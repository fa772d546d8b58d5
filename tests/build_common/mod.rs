//! Shared helpers of the `kiln build` end-to-end tests: a temporary store with
//! the busybox fixtures as base images, and running the kiln binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod servers;

#[allow(unused_imports)]
pub use kiln_testsupport::run::{output_with_stdin, run_ok};
pub use kiln_testsupport::store::fixture;
use kiln_testsupport::store::kiln_command_as;
pub use kiln_testsupport::store::{temp_dir_for, TestUser};

/// A store in a temporary directory with `busybox` (amd64) imported; kiln
/// runs as `user` (`KILN_TEST_USER` by default), else root.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub user: Option<TestUser>,
}

impl Env {
    pub fn new() -> Env {
        Env::with_user(TestUser::from_env())
    }

    /// [`Env::new`] with kiln run as `user` (root when `None`).
    pub fn with_user(user: Option<TestUser>) -> Env {
        let env = Env::empty_with_user(user);
        env.import("busybox-amd64.tar", "busybox:latest");
        env
    }

    /// A store with nothing in it (a fresh CI runner).
    pub fn empty() -> Env {
        Env::empty_with_user(TestUser::from_env())
    }

    fn empty_with_user(user: Option<TestUser>) -> Env {
        Env {
            dir: temp_dir_for(user.as_ref()),
            user,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Imports a fixture rootfs tar with `kiln import`.
    pub fn import(&self, fixture_name: &str, name: &str) {
        let tar = fixture(fixture_name);
        run_ok(&mut self.command(&["import", &tar.to_string_lossy(), name]));
    }

    /// A context directory with these files.
    pub fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (path, content) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        dir
    }

    pub fn kiln(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run kiln")
    }

    /// `kiln --root STORE ARGS` in a clean environment (see `kiln_command`).
    pub fn command(&self, args: &[&str]) -> Command {
        kiln_command_as(self.user.as_ref(), &self.root(), args)
    }

    /// Builds `context` with extra args; panics with stderr when it fails.
    /// Returns (image id, stderr).
    pub fn build(&self, context: &Path, extra: &[&str]) -> (String, String) {
        let out = run_ok(&mut self.build_command(context, extra));
        (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn try_build(&self, context: &Path, extra: &[&str]) -> Output {
        self.build_command(context, extra)
            .output()
            .expect("run kiln")
    }

    /// `kiln build --progress plain EXTRA CONTEXT`.
    fn build_command(&self, context: &Path, extra: &[&str]) -> Command {
        let mut args = vec!["build", "--progress", "plain"];
        args.extend_from_slice(extra);
        let context = context.to_string_lossy().into_owned();
        args.push(&context);
        self.command(&args)
    }

    /// The merged filesystem of a built image, through `--output type=local`.
    pub fn export(&self, context: &Path, extra: &[&str]) -> PathBuf {
        let dest = self.dir.path().join(format!("export-{}", rand_suffix()));
        let output = format!("type=local,dest={}", dest.display());
        let mut args: Vec<&str> = extra.to_vec();
        args.push("--output");
        args.push(&output);
        self.build(context, &args);
        dest
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Steps reported as CACHED / run in a plain-progress stderr.
pub fn cached_steps(stderr: &str) -> usize {
    stderr.lines().filter(|l| l.ends_with(" CACHED")).count()
}

pub fn run_steps(stderr: &str) -> usize {
    stderr.lines().filter(|l| l.contains(" DONE ")).count()
}
