//! `kiln push`, `pull` and `login` against real registries: Debian's
//! docker-registry (the distribution registry v2) started per test on
//! 127.0.0.1, with and without htpasswd auth; skopeo reads what kiln pushed.

mod registry_common;

use std::path::Path;
use std::process::Command;

use kiln_testsupport::run::{output_with_stdin, run_ok};
use kiln_testsupport::store::{fixture, Store};
use registry_common::{skopeo_inspect, Registry};

/// A store with the amd64 busybox fixture imported as `busybox:1`; returns its id.
fn store_with_busybox() -> (Store, String) {
    let store = Store::new();
    let fixture = fixture("busybox-amd64.tar");
    let id = store.ok(&["import", fixture.to_str().unwrap(), "busybox:1"]);
    (store, id.trim().to_owned())
}

/// Runs `kiln` with the credentials file in `docker_config`.
fn kiln_with_auth(store: &Store, docker_config: &Path, args: &[&str]) -> std::process::Output {
    store
        .command(args)
        .env("DOCKER_CONFIG", docker_config)
        .output()
        .expect("run kiln")
}

#[test]
fn push_then_pull_into_an_empty_store_keeps_the_digest_and_skopeo_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), None);
    let (store, id) = store_with_busybox();
    let target = registry.reference("kiln/busybox:1");

    let out = store.kiln(&["push", "busybox:1", &target, "--chunk-size", "64K"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "push failed:\n{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);
    assert_eq!(stderr.matches("uploaded").count(), 2, "{stderr}");

    // skopeo reads the manifest kiln pushed, and copies the image out whole
    // (fetching and verifying every blob).
    let manifest = skopeo_inspect(&target);
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    let copy = dir.path().join("copy");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{target}"))
            .arg(format!("oci:{}:copy", copy.display())),
    );

    // Everything is there now: a second push uploads nothing.
    let out = store.kiln(&["push", "busybox:1", &target]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("uploaded") && stderr.contains("already there"),
        "{stderr}"
    );

    // Pull into an empty store: same id, named after the reference, and the
    // store's blobs check out.
    let empty = Store::new();
    let pulled = empty.ok(&["pull", &target]);
    assert_eq!(pulled.trim(), id);
    let images = empty.ok(&["images", "--format", "json"]);
    assert!(images.contains(&target), "{images}");
    empty.ok(&["fsck"]);
    // A background kiln unpacks the pulled image for the first RUN.
    let snapshots = empty.root().join("kiln/snapshots");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_dir(&snapshots).is_ok_and(|mut entries| {
        entries.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("sha256_")))
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot after the pull"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Pulling again downloads nothing.
    let out = empty.kiln(&["pull", &target]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("downloaded"));
    // By digest too.
    let by_digest = format!("{}@{id}", registry.reference("kiln/busybox"));
    assert_eq!(Store::new().ok(&["pull", &by_digest]).trim(), id);
}

#[test]
fn a_second_repository_mounts_blobs_instead_of_uploading() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), None);
    let (store, id) = store_with_busybox();
    store.ok(&["push", "busybox:1", &registry.reference("team-a/busybox:1")]);
    let out = store.kiln(&["push", "busybox:1", &registry.reference("team-b/base:1")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("mounted from team-a/busybox").count(),
        2,
        "{stderr}"
    );
    assert!(!stderr.contains("uploaded"), "{stderr}");
    assert_eq!(
        Store::new()
            .ok(&["pull", &registry.reference("team-b/base:1")])
            .trim(),
        id
    );
}

#[test]
fn pull_picks_the_platform_from_a_multi_platform_index() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), None);
    let store = Store::new();
    let amd64 = store.ok(&[
        "import",
        fixture("busybox-amd64.tar").to_str().unwrap(),
        "bb:amd64",
    ]);
    let mips = store.ok(&[
        "import",
        fixture("busybox-mips64el.tar").to_str().unwrap(),
        "bb:mips64el",
    ]);
    let (amd64, mips) = (amd64.trim(), mips.trim());

    let target = registry.reference("kiln/multi:1");
    registry_common::push_index(
        &store.root(),
        &dir.path().join("layout"),
        &[(amd64, "amd64"), (mips, "mips64le")],
        &target,
    );

    let pulled = Store::new();
    assert_eq!(
        pulled
            .ok(&["pull", &target, "--platform", "linux/mips64le"])
            .trim(),
        mips
    );
    assert_eq!(
        pulled.ok(&["pull", &target, "--platform", "amd64"]).trim(),
        amd64
    );
    let err = pulled.fails(&["pull", &target, "--platform", "linux/arm64"]);
    assert!(
        err.contains("has no image for linux/arm64") && err.contains("linux/mips64le"),
        "{err}"
    );
}

#[test]
fn credentials_come_from_kiln_login_and_failures_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), Some(("ci", "s3cret")));
    let (store, id) = store_with_busybox();
    let docker_config = dir.path().join("docker");
    let target = registry.reference("private/busybox:1");

    let out = kiln_with_auth(&store, &docker_config, &["push", "busybox:1", &target]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("authentication to {} failed", registry.host()))
            && stderr.contains("kiln login"),
        "{stderr}"
    );

    let login = |password: &str| {
        output_with_stdin(
            store
                .command(&["login", &registry.host(), "-u", "ci", "--password-stdin"])
                .env("DOCKER_CONFIG", &docker_config),
            format!("{password}\n").as_bytes(),
        )
    };
    let out = login("wrong");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("authentication") && stderr.contains("\"ci\""),
        "{stderr}"
    );
    assert!(!docker_config.join("config.json").exists());

    let out = login("s3cret");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = std::fs::read_to_string(docker_config.join("config.json")).unwrap();
    assert!(saved.contains(&registry.host()), "{saved}");

    run_ok(
        store
            .command(&["push", "busybox:1", &target])
            .env("DOCKER_CONFIG", &docker_config),
    );
    let out = run_ok(
        Store::new()
            .command(&["pull", &target])
            .env("DOCKER_CONFIG", &docker_config),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);
}

#[test]
fn unknown_repositories_and_corrupt_blobs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), None);
    let empty = Store::new();
    let err = empty.fails(&["pull", &registry.reference("nobody/nothing:1")]);
    assert!(
        err.contains("not found") && err.contains("nobody/nothing"),
        "{err}"
    );

    let (store, _) = store_with_busybox();
    let target = registry.reference("kiln/corrupt:1");
    store.ok(&["push", "busybox:1", &target]);
    // Damage the layer in the registry's storage, keeping its size.
    let manifest = skopeo_inspect(&target);
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let hex = &layer[7..];
    let data = dir
        .path()
        .join("registry/data/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    for byte in bytes.iter_mut().take(64) {
        *byte ^= 0xff;
    }
    std::fs::write(&data, bytes).unwrap();
    let err = empty.fails(&["pull", &target]);
    assert!(err.contains("is corrupt") && err.contains(layer), "{err}");
    // Nothing half-written was kept: the damaged layer is not in the store
    // and the image has no name.
    assert!(!empty.root().join("blobs/sha256").join(hex).exists());
    assert!(!empty
        .ok(&["images", "--format", "json"])
        .contains("corrupt"));
    empty.ok(&["fsck"]);
}

#[test]
fn a_push_to_a_stopped_registry_fails_cleanly_and_a_retry_completes() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::start(&dir.path().join("registry"), None);
    let (store, id) = store_with_busybox();
    let target = registry.reference("kiln/retry:1");
    registry.stop();
    let err = store.fails(&["push", "busybox:1", &target]);
    assert!(err.contains("cannot reach registry"), "{err}");
    // Nothing names the image until its manifest is put.
    registry.run();
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{target}"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "the tag exists after a failed push");
    store.ok(&["push", "busybox:1", &target]);
    assert_eq!(Store::new().ok(&["pull", &target]).trim(), id);
}

/// A credential helper that speaks Docker's protocol (`get`/`store`/`erase`
/// on stdin and stdout), keeping one file per server in `$KILN_TEST_CREDS`.
const TEST_HELPER: &str = r#"#!/bin/sh
file() { printf '%s/%s' "$KILN_TEST_CREDS" "$(printf '%s' "$1" | tr '/:' '__')"; }
case "$1" in
  get) read -r server; f=$(file "$server")
       if [ -f "$f" ]; then cat "$f"; else echo "credentials not found in native keychain"; exit 1; fi ;;
  store) payload=$(cat)
         server=$(printf '%s' "$payload" | sed -n 's/.*"ServerURL":"\([^"]*\)".*/\1/p')
         printf '%s' "$payload" > "$(file "$server")" ;;
  erase) read -r server; rm -f "$(file "$server")" ;;
  *) echo "unknown action $1" >&2; exit 2 ;;
esac
"#;

#[test]
fn credential_helpers_keep_the_credentials_for_login_push_pull_and_logout() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), Some(("ci", "s3cret")));
    let (store, id) = store_with_busybox();
    let bin = dir.path().join("bin");
    let creds = dir.path().join("creds");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&creds).unwrap();
    let helper = bin.join("docker-credential-kilntest");
    std::fs::write(&helper, TEST_HELPER).unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let docker_config = dir.path().join("docker");
    std::fs::create_dir_all(&docker_config).unwrap();
    let config = docker_config.join("config.json");
    std::fs::write(&config, r#"{"credsStore":"kilntest"}"#).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let kiln = |args: &[&str]| {
        let mut command = store.command(args);
        command
            .env("DOCKER_CONFIG", &docker_config)
            .env("PATH", &path)
            .env("KILN_TEST_CREDS", &creds);
        command
    };
    let target = registry.reference("private/busybox:1");

    // The helper has nothing yet: the registry's refusal is the error.
    let out = kiln(&["push", "busybox:1", &target]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("authentication"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // login stores through the helper; config.json only lists the registry.
    let out = output_with_stdin(
        &mut kiln(&["login", &registry.host(), "-u", "ci", "--password-stdin"]),
        b"s3cret\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("docker-credential-kilntest"), "{stderr}");
    let saved = std::fs::read_to_string(&config).unwrap();
    assert!(!saved.contains("\"auth\""), "{saved}");
    let kept: serde_json::Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(kept["auths"][registry.host()], serde_json::json!({}));
    assert_eq!(kept["credsStore"], "kilntest");
    let entries: Vec<_> = std::fs::read_dir(&creds).unwrap().collect();
    assert_eq!(entries.len(), 1);

    run_ok(&mut kiln(&["push", "busybox:1", &target]));
    let fresh = Store::new();
    let out = run_ok(
        fresh
            .command(&["pull", &target])
            .env("DOCKER_CONFIG", &docker_config)
            .env("PATH", &path)
            .env("KILN_TEST_CREDS", &creds),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);

    // logout erases it from the helper and the file.
    run_ok(&mut kiln(&["logout", &registry.host()]));
    assert_eq!(std::fs::read_dir(&creds).unwrap().count(), 0);
    let saved = std::fs::read_to_string(&config).unwrap();
    assert!(!saved.contains(&registry.host()), "{saved}");

    // A helper named for this registry that is not installed is a clear error.
    std::fs::write(
        &config,
        format!(
            r#"{{"credHelpers":{{"{}":"nosuchhelper"}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    let out = kiln(&["push", "busybox:1", &target]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("docker-credential-nosuchhelper") && stderr.contains("credHelpers"),
        "{stderr}"
    );
}
