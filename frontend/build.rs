//! Generates one test per golden case folder (testdata/dockerfile/<case>/ and
//! testdata/dockerfile-invalid/<case>/), so each case passes or fails by name.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata");
    let mut out = String::new();
    for (folder, check) in [
        ("dockerfile", "check_valid"),
        ("dockerfile-invalid", "check_invalid"),
    ] {
        let dir = root.join(folder);
        println!("cargo:rerun-if-changed={}", dir.display());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut cases: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("Dockerfile").is_file())
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
            let prefix = if folder == "dockerfile" {
                "valid"
            } else {
                "invalid"
            };
            let _ = writeln!(
                out,
                "#[test]\nfn {prefix}_{ident}() {{\n    {check}({case:?});\n}}\n"
            );
        }
    }
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap_or_default()).join("golden_cases.rs");
    if let Err(e) = std::fs::write(&dest, out) {
        panic!("cannot write {}: {e}", dest.display());
    }
}
