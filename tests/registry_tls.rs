//! HTTPS registries: kiln tries HTTPS first, verifies the certificate
//! against the public roots and Docker's per-registry CA directory, skips
//! the check with --insecure, and says what to do when it fails.

mod registry_common;
#[path = "store_support.rs"]
mod support;

use registry_common::{skopeo_inspect, Registry};
use support::Store;

#[test]
fn a_self_signed_registry_needs_its_ca_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, ca) = Registry::start_tls(&dir.path().join("registry"));
    let store = Store::new();
    let id = store.import("busybox-amd64.tar", "busybox:1");
    let target = registry.reference("kiln/tls:1");
    // An empty certificate root: whatever the machine trusts in
    // /etc/docker/certs.d does not count.
    let certs = dir.path().join("certs.d");
    std::fs::create_dir_all(&certs).unwrap();
    let certs_flag = ["--certs-dir", certs.to_str().unwrap()];

    let mut args = vec!["push", "busybox:1", &target];
    args.extend(certs_flag);
    let err = store.fails(&args);
    let ca_dir = certs.join(registry.host());
    assert!(
        err.contains(&format!(
            "certificate of registry {} is not trusted",
            registry.host()
        )) && err.contains(&format!("{}/ca.crt", ca_dir.display()))
            && err.contains("--insecure"),
        "{err}"
    );

    // --insecure: unverified, but still HTTPS (the registry speaks nothing
    // else), and skopeo reads what was pushed.
    args.push("--insecure");
    assert_eq!(store.ok(&args).trim(), id);
    skopeo_inspect(&target);

    // The CA in Docker's layout makes it trusted: pull and build without
    // --insecure.
    std::fs::create_dir_all(&ca_dir).unwrap();
    std::fs::copy(&ca, ca_dir.join("ca.crt")).unwrap();
    let empty = Store::new();
    let mut pull = vec!["pull", &target];
    pull.extend(certs_flag);
    assert_eq!(empty.ok(&pull).trim(), id);
    empty.assert_fsck_clean();
    // The environment variable does the same for every command.
    let out = Store::new()
        .command(&["pull", &target])
        .env("KILN_CERTS_DIR", &certs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);
}
