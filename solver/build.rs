//! Generates one unit test per golden case folder under
//! testdata/dockerignore/<case>/, so each case passes or fails by name.

use kiln_testsupport::golden;

use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    golden::write_case_tests(
        &[golden::CaseFolder {
            dir: root.join("testdata/dockerignore"),
            marker: "files.txt",
            prefix: "dockerignore",
            check: "check_case",
        }],
        "dockerignore_cases.rs",
    );
}
