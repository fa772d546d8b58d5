//! HTTPS registries: kiln tries HTTPS first, verifies the certificate
//! against the public roots and Docker's per-registry CA directory, skips
//! the check with --insecure, and says what to do when it fails.

mod registry_common;

use kiln_testsupport::run::run_ok;
use kiln_testsupport::store::Store;
use registry_common::{skopeo_inspect, Registry};

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
    let out = run_ok(
        Store::new()
            .command(&["pull", &target])
            .env("KILN_CERTS_DIR", &certs),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);
}

#[test]
fn a_registry_that_wants_a_client_certificate_gets_the_one_in_certs_d() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, ca) = Registry::start_mutual_tls(&dir.path().join("registry"));
    let store = Store::new();
    let id = store.import("busybox-amd64.tar", "busybox:1");
    let target = registry.reference("kiln/mtls:1");
    let certs = dir.path().join("certs.d");
    let host_dir = certs.join(registry.host());
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(&ca.certificate, host_dir.join("ca.crt")).unwrap();
    let push = [
        "push",
        "busybox:1",
        &target,
        "--certs-dir",
        certs.to_str().unwrap(),
    ];

    // Trusted server, but no client certificate: the registry refuses, and
    // kiln says where the certificate goes (no fall back to plain HTTP).
    let err = store.fails(&push);
    assert!(
        err.contains("wants a client certificate")
            && err.contains(&format!("{}/client.cert", host_dir.display())),
        "{err}"
    );

    // A key without its certificate is refused before connecting, naming both.
    let (client_cert, client_key) = ca.issue(
        "client",
        "/CN=kiln test client",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    );
    std::fs::copy(&client_key, host_dir.join("client.key")).unwrap();
    let err = store.fails(&push);
    assert!(
        err.contains("client.key") && err.contains("client.cert"),
        "{err}"
    );

    // The pair in Docker's layout: push, then pull into an empty store.
    std::fs::copy(&client_cert, host_dir.join("client.cert")).unwrap();
    assert_eq!(store.ok(&push).trim(), id);
    let empty = Store::new();
    let pull = ["pull", &target, "--certs-dir", certs.to_str().unwrap()];
    assert_eq!(empty.ok(&pull).trim(), id);
    empty.assert_fsck_clean();
}
