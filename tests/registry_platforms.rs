//! Multi-platform images and a real registry (docker-registry on
//! 127.0.0.1): a build for two platforms pushes every manifest and then the
//! index; `--push-by-digest` from two stores ("machines") joined by
//! `kiln manifest create` in the registry; `pull --all-platforms`; one
//! registry cache for every platform.

mod registry_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_testsupport::run::run_ok;
use kiln_testsupport::store::Store;
use registry_common::{skopeo_inspect, Registry};

const BOTH: &str = "linux/amd64,linux/mips64le";
const PER_ARCH: &str = "ARG TARGETARCH\nFROM base-$TARGETARCH\nRUN uname -m > /arch\n";

fn context(dir: &Path, name: &str, dockerfile: &str) -> PathBuf {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("Dockerfile"), dockerfile).unwrap();
    root
}

/// A store with `base-amd64` and/or `base-mips64le`.
fn store_with(bases: &[&str]) -> Store {
    let store = Store::new();
    for arch in bases {
        let fixture = match *arch {
            "amd64" => "busybox-amd64.tar",
            _ => "busybox-mips64el.tar",
        };
        store.import(fixture, &format!("base-{arch}"));
    }
    store
}

/// `kiln build --progress plain ARGS CONTEXT`, which must work: stdout.
fn build(store: &Store, context: &Path, args: &[&str]) -> String {
    let mut all = vec!["build", "--progress", "plain"];
    all.extend_from_slice(args);
    all.push(context.to_str().unwrap());
    store.ok(&all).trim().to_owned()
}

/// Each platform's /arch of `image` in `store`, through a build of it for
/// both platforms with a local output.
fn arch_files(store: &Store, image: &str, dir: &Path) -> Vec<String> {
    let ctx = context(dir, "read", &format!("FROM {image}\n"));
    let out = dir.join("fs");
    let dest = format!("type=local,dest={}", out.display());
    build(
        store,
        &ctx,
        &["--platform", BOTH, "--pull", "never", "--output", &dest],
    );
    ["linux_amd64", "linux_mips64le"]
        .iter()
        .map(|d| {
            std::fs::read_to_string(out.join(d).join("arch"))
                .unwrap()
                .trim()
                .to_owned()
        })
        .collect()
}

fn architectures(index: &serde_json::Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("an index: {index}"))
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_two_platform_build_pushes_an_index_and_pull_all_platforms_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), None);
    let target = registry.reference("kiln/app:1");
    let builder = store_with(&["amd64", "mips64le"]);
    let ctx = context(dir.path(), "ctx", PER_ARCH);
    let id = build(
        &builder,
        &ctx,
        &["--platform", BOTH, "-t", &target, "--push"],
    );
    let index = skopeo_inspect(&target);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(architectures(&index), ["amd64", "mips64le"]);
    let out = run_ok(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--override-arch",
        "mips64le",
        &format!("docker://{target}"),
    ]));
    let mips: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(mips["Architecture"], "mips64le", "{mips}");
    // `kiln push` of a stored index sends it too, under another tag.
    let again = registry.reference("kiln/app:2");
    let pushed = builder.ok(&["push", &target, &again]);
    assert_eq!(pushed.trim(), id);
    assert_eq!(
        architectures(&skopeo_inspect(&again)),
        ["amd64", "mips64le"]
    );

    // A plain pull keeps this machine's platform only.
    let one = Store::new();
    one.ok(&["pull", &target]);
    let images: serde_json::Value =
        serde_json::from_str(&one.ok(&["images", "--format", "json"])).unwrap();
    assert_eq!(images.as_array().unwrap().len(), 1, "{images}");
    assert_eq!(images[0]["Platform"], "linux/amd64");
    // --all-platforms keeps the whole index, byte for byte.
    let all = Store::new();
    let pulled = all.ok(&["pull", "--all-platforms", &target]);
    assert_eq!(pulled.trim(), id);
    let images: serde_json::Value =
        serde_json::from_str(&all.ok(&["images", "--format", "json"])).unwrap();
    assert_eq!(images.as_array().unwrap().len(), 2, "{images}");
    assert_eq!(arch_files(&all, &target, dir.path()), ["x86_64", "mips64"]);
    all.assert_fsck_clean();
}

#[test]
fn push_by_digest_from_two_machines_then_manifest_create_in_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), None);
    let ctx = context(dir.path(), "ctx", PER_ARCH);
    // Two machines, each building its own platform, the second into another
    // repository (its blobs are mounted, never downloaded).
    let mut digests = Vec::new();
    for (arch, repository) in [("amd64", "kiln/app"), ("mips64le", "kiln/app-mips")] {
        let machine = store_with(&[arch]);
        let metadata = dir.path().join(format!("{arch}.json"));
        let repo = registry.reference(repository);
        let id = build(
            &machine,
            &ctx,
            &[
                "--platform",
                &format!("linux/{arch}"),
                "-t",
                &repo,
                "--push",
                "--push-by-digest",
                "--metadata-file",
                metadata.to_str().unwrap(),
            ],
        );
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
        assert_eq!(meta["containerimage.digest"], id.as_str());
        assert_eq!(meta["image.name"], repo.as_str());
        // By digest only: no tag was pushed (docker-registry answers 404
        // for a repository without tags).
        let tags = Command::new("skopeo")
            .args([
                "list-tags",
                "--tls-verify=false",
                &format!("docker://{repo}"),
            ])
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&tags.stdout);
        assert!(
            !tags.status.success() && String::from_utf8_lossy(&tags.stderr).contains("404")
                || !listed.contains("latest"),
            "{listed}"
        );
        digests.push(format!("{repo}@{id}"));
    }
    let multi = registry.reference("kiln/app:multi");
    let joiner = Store::new();
    let created = joiner.ok(&["manifest", "create", &multi, &digests[0], &digests[1]]);
    let index = skopeo_inspect(&multi);
    assert_eq!(architectures(&index), ["amd64", "mips64le"]);
    // kiln writes the index canonically (sorted, compact): its digest is
    // the digest of what the registry serves.
    assert_eq!(
        format!(
            "sha256:{}",
            sha256_hex(&serde_json::to_vec(&index).unwrap())
        ),
        created.trim()
    );
    // The joiner read manifests and configs only: its store has no blob.
    assert_eq!(
        std::fs::read_dir(joiner.root().join("blobs/sha256")).map_or(0, |d| d.count()),
        0
    );
    let inspected: serde_json::Value =
        serde_json::from_str(&joiner.ok(&["manifest", "inspect", &multi])).unwrap();
    assert_eq!(architectures(&inspected), ["amd64", "mips64le"]);
    let all = Store::new();
    all.ok(&["pull", "--all-platforms", &multi]);
    assert_eq!(arch_files(&all, &multi, dir.path()), ["x86_64", "mips64"]);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

#[test]
fn one_registry_cache_holds_every_platforms_records() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), None);
    let cache = format!("type=registry,ref={}", registry.reference("kiln/cache:1"));
    let ctx = context(dir.path(), "ctx", PER_ARCH);
    let first = store_with(&["amd64", "mips64le"]);
    let id = build(
        &first,
        &ctx,
        &[
            "--platform",
            BOTH,
            "--cache-to",
            &format!("{cache},mode=max"),
        ],
    );
    let second = store_with(&["amd64", "mips64le"]);
    let mut args = vec![
        "build",
        "--progress",
        "plain",
        "--platform",
        BOTH,
        "--cache-from",
    ];
    args.push(&cache);
    let ctx_arg = ctx.to_string_lossy().into_owned();
    args.push(&ctx_arg);
    let out = run_ok(&mut second.command(&args));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let cached = stderr.lines().filter(|l| l.ends_with(" CACHED")).count();
    assert_eq!(cached, 2, "both platforms' steps from the cache:\n{stderr}");
    assert!(!stderr.contains(" DONE "), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);
}
