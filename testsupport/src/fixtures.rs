//! The fixtures scripts/make-fixtures.sh makes (busybox rootfs tars, ...).

use std::path::{Path, PathBuf};

/// The fixtures directory: $KILN_FIXTURES, else <workspace>/target/fixtures.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("KILN_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fixtures"),
    }
}

/// The fixture file `name`; panics, saying how to make it, when it is missing.
pub fn fixture(name: &str) -> PathBuf {
    let path = fixtures_dir().join(name);
    assert!(
        path.is_file(),
        "fixture {} is missing: run scripts/make-fixtures.sh (or set KILN_FIXTURES)",
        path.display()
    );
    path
}
