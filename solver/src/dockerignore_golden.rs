//! Golden tests of `.dockerignore`: every folder under testdata/dockerignore/
//! holds the context's paths (files.txt: one a line, a trailing `/` for an
//! empty directory), the ignore file(s) and the paths a build sees
//! (expected.txt, directories with a trailing `/`). A `.dockerignore` in the
//! folder goes to the context root; a `dockerfile` file names the
//! Dockerfile's path in the context, and `dockerfile.dockerignore` in the
//! folder then goes beside it as `<Dockerfile>.dockerignore`.
//! `UPDATE_EXPECT=1` rewrites expected.txt.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_testsupport::golden;

use crate::dockerignore::IgnoreRules;
use crate::source::{walk, BuildContext, SourceFs};

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/dockerignore")
        .join(case)
}

fn check_case(case: &str) {
    let dir = case_dir(case);
    let context = tempfile::tempdir().unwrap();
    let files = fs::read_to_string(dir.join("files.txt")).unwrap();
    for line in files.lines().filter(|l| !l.trim().is_empty()) {
        let path = context.path().join(line);
        if line.ends_with('/') {
            fs::create_dir_all(&path).unwrap();
        } else {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, line).unwrap();
        }
    }
    if let Ok(text) = fs::read(dir.join(".dockerignore")) {
        fs::write(context.path().join(".dockerignore"), text).unwrap();
    }
    let dockerfile = fs::read_to_string(dir.join("dockerfile"))
        .ok()
        .map(|name| context.path().join(name.trim()));
    if let (Some(dockerfile), Ok(text)) =
        (&dockerfile, fs::read(dir.join("dockerfile.dockerignore")))
    {
        let mut name = dockerfile.file_name().unwrap().to_os_string();
        name.push(".dockerignore");
        fs::write(dockerfile.with_file_name(name), text).unwrap();
    }
    let rules = IgnoreRules::for_build(context.path(), dockerfile.as_deref()).unwrap();
    let ctx = BuildContext::new(context.path(), rules, None).unwrap();
    let root = ctx.entry(".", false).unwrap().unwrap();
    let mut actual = String::new();
    for entry in walk(&ctx, &root).unwrap().iter().skip(1) {
        actual.push_str(&entry.rel);
        if entry.meta.is_dir() {
            actual.push('/');
        }
        actual.push('\n');
    }
    golden::expect_file(&dir.join("expected.txt"), &actual);
}

include!(concat!(env!("OUT_DIR"), "/dockerignore_cases.rs"));
