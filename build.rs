//! Generates one end-to-end test per golden build folder
//! (testdata/build/<case>/), so each case passes or fails by name.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/build");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut cases: Vec<String> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Dockerfile").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    cases.sort();
    let mut out = String::new();
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
        let _ = writeln!(
            out,
            "#[test]\nfn golden_{ident}() {{\n    check_case({case:?});\n}}\n"
        );
    }
    let dest =
        Path::new(&std::env::var("OUT_DIR").unwrap_or_default()).join("build_golden_cases.rs");
    if let Err(e) = std::fs::write(&dest, out) {
        panic!("cannot write {}: {e}", dest.display());
    }
}
