//! Golden tests, shared by every crate that has them: a build script writes
//! one `#[test]` per case folder (so each case passes or fails by name), and
//! each test compares what it made with the folder's expected file
//! (`UPDATE_EXPECT=1` rewrites it). Used by the build scripts (build.rs,
//! frontend/build.rs, solver/build.rs) and their tests.

use std::path::{Path, PathBuf};

/// A folder of golden cases: each subfolder holding `marker` becomes
/// `#[test] fn {prefix}_{case}() { {check}("case") }`.
pub struct CaseFolder<'a> {
    /// The folder whose subfolders are the cases.
    pub dir: PathBuf,
    /// The file a subfolder must hold to be a case.
    pub marker: &'a str,
    /// The start of each generated test's name.
    pub prefix: &'a str,
    /// The function each test calls with its case's folder name.
    pub check: &'a str,
}

/// Writes the tests of every case in `folders` to `$OUT_DIR/{out_file}`, for
/// the tests to `include!`; cargo reruns the script when a folder changes.
pub fn write_case_tests(folders: &[CaseFolder], out_file: &str) {
    use std::fmt::Write as _;
    let mut out = String::new();
    for folder in folders {
        println!("cargo:rerun-if-changed={}", folder.dir.display());
        let mut cases: Vec<String> = std::fs::read_dir(&folder.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(folder.marker).is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        cases.sort();
        for case in cases {
            let ident: String = case
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            let (prefix, check) = (folder.prefix, folder.check);
            let _ = writeln!(
                out,
                "#[test]\nfn {prefix}_{ident}() {{\n    {check}({case:?});\n}}\n"
            );
        }
    }
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap_or_default()).join(out_file);
    if let Err(e) = std::fs::write(&dest, out) {
        panic!("cannot write {}: {e}", dest.display());
    }
}

/// Compares `actual` with the file at `path`, or rewrites the file under
/// `UPDATE_EXPECT`.
pub fn expect_file(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_EXPECT=1 to create it",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs (rerun with UPDATE_EXPECT=1 to accept):\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}
