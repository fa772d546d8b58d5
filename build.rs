//! Generates one end-to-end test per golden build folder
//! (testdata/build/<case>/), so each case passes or fails by name.

use kiln_testsupport::golden;

use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    golden::write_case_tests(
        &[golden::CaseFolder {
            dir: root.join("testdata/build"),
            marker: "Dockerfile",
            prefix: "golden",
            check: "check_case",
        }],
        "build_golden_cases.rs",
    );
}
