//! `kiln build` against a real registry on 127.0.0.1: FROM, COPY --from and
//! RUN --mount=from pull registry images as `--pull` says, a moved tag invalidates the cache
//! only when it is pulled again, `--push` sends the result, and Docker Hub
//! names fail clearly when there is no network.

mod registry_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_testsupport::store::Store;
use registry_common::{skopeo_inspect, Registry};

/// A build context with these files in a fresh directory under `dir`.
fn context(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).unwrap();
    for (path, text) in files {
        std::fs::write(root.join(path), text).unwrap();
    }
    root
}

/// `kiln build --progress plain ARGS CONTEXT`: (success, stdout, stderr).
fn build(store: &Store, context: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["build", "--progress", "plain"];
    all.extend_from_slice(args);
    all.push(context.to_str().unwrap());
    let out = store.kiln(&all);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn build_ok(store: &Store, context: &Path, args: &[&str]) -> (String, String) {
    let (ok, stdout, stderr) = build(store, context, args);
    assert!(ok, "build failed:\n{stderr}");
    (stdout, stderr)
}

/// A file of an image in the store, read through `kiln build --output`.
fn file_in(store: &Store, image: &str, path: &str, dir: &Path) -> String {
    let ctx = context(dir, &format!("read-{}", &image[7..19]), &[]);
    std::fs::write(ctx.join("Dockerfile"), format!("FROM {image}\n")).unwrap();
    let out = dir.join(format!("fs-{}", &image[7..19]));
    let dest = format!("type=local,dest={}", out.display());
    build_ok(store, &ctx, &["--pull", "never", "--output", &dest]);
    std::fs::read_to_string(out.join(path.trim_start_matches('/'))).unwrap_or_default()
}

#[test]
fn from_pulls_missing_images_and_pull_always_follows_a_moved_tag() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), None);
    let base = registry.reference("kiln/base:1");
    let publisher = Store::new();
    publisher.import("busybox-amd64.tar", "busybox:1");

    // v1 of the base image, published with build --push.
    let v1_ctx = context(
        dir.path(),
        "v1",
        &[("Dockerfile", "FROM busybox:1\nRUN echo v1 > /version\n")],
    );
    let (v1, _) = build_ok(&publisher, &v1_ctx, &["-t", &base, "--push"]);

    // A consumer with an empty store: FROM pulls the base, COPY --from pulls
    // another registry image.
    publisher.ok(&["push", "busybox:1", &registry.reference("kiln/tools:1")]);
    publisher.ok(&["push", "busybox:1", &registry.reference("kiln/mounted:1")]);
    let tools = registry.reference("kiln/tools:1");
    let mounted = registry.reference("kiln/mounted:1");
    let app = context(
        dir.path(),
        "app",
        &[(
            "Dockerfile",
            &format!(
                "FROM {base}\nCOPY --from={tools} /bin/busybox /tools/busybox\nRUN --mount=from={mounted},target=/m test -x /m/bin/busybox && cat /version > /seen\n"
            ),
        )],
    );
    let consumer = Store::new();
    let (first, stderr) = build_ok(&consumer, &app, &[]);
    assert!(
        stderr.contains(&format!("pulling {base} for linux/amd64"))
            && stderr.contains(&format!("pulling {tools}"))
            && stderr.contains(&format!("pulling {mounted}"))
            && stderr.contains("downloaded"),
        "{stderr}"
    );
    assert_eq!(
        consumer
            .ok(&["images", "--format", "json"])
            .matches(&base)
            .count(),
        1
    );
    assert_eq!(file_in(&consumer, &first, "/seen", dir.path()).trim(), "v1");
    assert!(consumer.root().is_dir());
    consumer.assert_fsck_clean();

    // `always` with an unchanged upstream: the manifest is checked, no blob
    // moves, every step is cached.
    let (again, stderr) = build_ok(&consumer, &app, &["--pull", "always"]);
    assert_eq!(again, first);
    assert!(
        stderr.contains(&format!("pulling {base}")) && !stderr.contains("downloaded"),
        "{stderr}"
    );
    assert!(!stderr.contains(" DONE "), "a step ran again:\n{stderr}");

    // v2 under the same tag.
    let v2_ctx = context(
        dir.path(),
        "v2",
        &[("Dockerfile", "FROM busybox:1\nRUN echo v2 > /version\n")],
    );
    let (v2, _) = build_ok(&publisher, &v2_ctx, &["-t", &base, "--push"]);
    assert_ne!(v1, v2);

    // `missing` keeps the stored v1: nothing pulled, everything cached.
    let (kept, stderr) = build_ok(&consumer, &app, &[]);
    assert_eq!(kept, first);
    assert!(!stderr.contains("pulling"), "{stderr}");
    // `always` sees the moved tag: the RUN step runs on v2.
    let (rebuilt, stderr) = build_ok(&consumer, &app, &["--pull", "always"]);
    assert_ne!(rebuilt, first);
    assert!(stderr.contains("downloaded"), "{stderr}");
    assert_eq!(
        file_in(&consumer, &rebuilt, "/seen", dir.path()).trim(),
        "v2"
    );
    consumer.assert_fsck_clean();

    // `never` with an empty store: the compile error says how to get it.
    let (ok, _, stderr) = build(&Store::new(), &app, &["--pull", "never"]);
    assert!(!ok);
    assert!(
        stderr.contains("Dockerfile:1:")
            && stderr.contains(&format!("no image {base:?}"))
            && stderr.contains("kiln pull"),
        "{stderr}"
    );
}

#[test]
fn build_push_sends_every_tag_and_a_pull_gives_the_same_digest() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), None);
    let store = Store::new();
    store.import("busybox-amd64.tar", "busybox:1");
    let ctx = context(
        dir.path(),
        "ctx",
        &[("Dockerfile", "FROM busybox:1\nRUN echo built > /built\n")],
    );
    let first = registry.reference("kiln/app:1");
    let second = registry.reference("other/app:latest");

    // A name without a registry is refused before anything runs.
    let (ok, _, stderr) = build(&store, &ctx, &["-t", &first, "-t", "app:1", "--push"]);
    assert!(!ok);
    assert!(
        stderr.contains("-t app:1 names no registry") && !stderr.contains("RUN echo"),
        "{stderr}"
    );
    let (ok, _, stderr) = build(&store, &ctx, &["--push"]);
    assert!(!ok && stderr.contains("-t REGISTRY/REPO"), "{stderr}");

    let (id, stderr) = build_ok(&store, &ctx, &["-t", &first, "-t", &second, "--push"]);
    assert!(id.starts_with("sha256:"), "stdout is the image id: {id}");
    assert!(
        stderr.contains(&format!("pushing {id} to {first}"))
            && stderr.contains(&format!("pushing {id} to {second}"))
            && stderr.contains("mounted from kiln/app"),
        "{stderr}"
    );
    for target in [&first, &second] {
        let inspected = skopeo_inspect(target);
        assert_eq!(inspected["layers"].as_array().unwrap().len(), 2);
        assert_eq!(Store::new().ok(&["pull", target]).trim(), id);
    }
}

#[test]
fn docker_hub_names_without_a_network_fail_naming_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), "ctx", &[("Dockerfile", "FROM busybox\n")]);
    let store = Store::new();
    // A network namespace of our own has no route anywhere: offline for sure.
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--net"])
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .arg("--root")
        .arg(store.root())
        .args(["build", "--progress", "plain"])
        .arg(&ctx)
        .env_remove("KILN_ROOT")
        .output()
        .expect("run unshare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("Dockerfile:1:")
            && stderr.contains("docker.io/library/busybox:latest")
            && stderr.contains("cannot reach registry docker.io"),
        "{stderr}"
    );
}

#[test]
fn each_stage_platform_pulls_its_entry_of_a_multi_platform_index() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), None);
    let publisher = Store::new();
    let amd64 = publisher.import("busybox-amd64.tar", "bb:amd64");
    let mips = publisher.import("busybox-mips64el.tar", "bb:mips64el");
    let multi = registry.reference("kiln/multi:1");
    registry_common::push_index(
        &publisher.root(),
        &dir.path().join("layout"),
        &[(&amd64, "amd64"), (&mips, "mips64le")],
        &multi,
    );
    let ctx = context(
        dir.path(),
        "ctx",
        &[(
            "Dockerfile",
            &format!("FROM {multi}\nRUN uname -m > /arch\n"),
        )],
    );
    let store = Store::new();
    let (foreign, stderr) = build_ok(&store, &ctx, &["--platform", "linux/mips64le"]);
    assert!(
        stderr.contains(&format!("pulling {multi} for linux/mips64le")),
        "{stderr}"
    );
    assert_eq!(
        file_in(&store, &foreign, "/arch", dir.path()).trim(),
        "mips64"
    );
    // The store's name now means the mips64le image; an amd64 build does not
    // take it (the default --pull missing pulls the amd64 entry).
    let (native, stderr) = build_ok(&store, &ctx, &["--platform", "linux/amd64"]);
    assert!(
        stderr.contains(&format!("pulling {multi} for linux/amd64")),
        "{stderr}"
    );
    assert_eq!(
        file_in(&store, &native, "/arch", dir.path()).trim(),
        "x86_64"
    );
    // A platform the index lacks: the error lists what it has.
    let (ok, _, stderr) = build(&store, &ctx, &["--platform", "linux/arm64"]);
    assert!(!ok);
    assert!(
        stderr.contains("has no image for linux/arm64") && stderr.contains("linux/mips64le"),
        "{stderr}"
    );
}
