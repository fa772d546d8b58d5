//! Generates one test per golden case folder (testdata/dockerfile/<case>/ and
//! testdata/dockerfile-invalid/<case>/, and the build checks' cases in
//! testdata/lint/<RuleName>/), so each case passes or fails by name.

use kiln_testsupport::golden;

use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata");
    golden::write_case_tests(
        &[
            golden::CaseFolder {
                dir: root.join("dockerfile"),
                marker: "Dockerfile",
                prefix: "valid",
                check: "check_valid",
            },
            golden::CaseFolder {
                dir: root.join("dockerfile-invalid"),
                marker: "Dockerfile",
                prefix: "invalid",
                check: "check_invalid",
            },
        ],
        "golden_cases.rs",
    );
    golden::write_case_tests(
        &[golden::CaseFolder {
            dir: root.join("lint"),
            marker: "Dockerfile",
            prefix: "lint",
            check: "check_lint",
        }],
        "lint_cases.rs",
    );
}
