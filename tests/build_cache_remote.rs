//! `kiln build --cache-to/--cache-from`: two runners with separate stores
//! share build cache through a real registry (Debian's docker-registry on
//! 127.0.0.1) or through a directory, as CI fleets do.

mod build_common;
mod registry_common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use build_common::{cached_steps, output_with_stdin, run_ok, run_steps, Env};
use registry_common::{skopeo_inspect, Registry};

/// Two stages: RUN steps, a COPY from the context, a COPY --from.
const DOCKERFILE: &str = "\
FROM busybox AS builder
RUN echo built > /built.txt && mkdir /out
COPY a.txt /out/a.txt
RUN cat /out/a.txt /built.txt > /out/result

FROM busybox
COPY b.txt /b.txt
RUN echo final >> /b.txt
COPY --from=builder /out/result /result
";

fn context(env: &Env) -> PathBuf {
    env.context(
        "ctx",
        &[
            ("Dockerfile", DOCKERFILE),
            ("a.txt", "from a\n"),
            ("b.txt", "from b\n"),
        ],
    )
}

/// Builds with these flags; returns (image id, steps run, steps cached, stderr).
fn build(env: &Env, context: &Path, flags: &[&str]) -> (String, usize, usize, String) {
    let (id, stderr) = env.build(context, flags);
    (id, run_steps(&stderr), cached_steps(&stderr), stderr)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn digests(values: &serde_json::Value) -> BTreeSet<String> {
    values
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .collect()
}

/// The layers of an image in a store.
fn image_layers(env: &Env, id: &str) -> BTreeSet<String> {
    let hex = id.strip_prefix("sha256:").unwrap();
    digests(&json(&env.root().join("blobs/sha256").join(hex))["layers"])
}

fn has_blob(env: &Env, digest: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").unwrap();
    env.root().join("blobs/sha256").join(hex).is_file()
}

/// The manifest a cache directory tags `latest`.
fn cache_dir_manifest(dir: &Path) -> serde_json::Value {
    let index = json(&dir.join("index.json"));
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "latest")
        .expect("a latest tag")
        .clone();
    let hex = entry["digest"]
        .as_str()
        .unwrap()
        .strip_prefix("sha256:")
        .unwrap();
    json(&dir.join("blobs/sha256").join(hex))
}

/// Runner A exports, runner B (an empty store but for the same base image)
/// imports: everything cached, the same image, and the builder stage's
/// layers never fetched; then one changed file re-runs exactly the steps
/// after it. `cache_layers` lists the layers of A's export.
fn second_runner_reuses_everything(
    cache_to: &str,
    cache_from: &str,
    cache_layers: impl Fn() -> BTreeSet<String>,
) {
    let runner_a = Env::new();
    let (id_a, ran, cached, _) = build(&runner_a, &context(&runner_a), &["--cache-to", cache_to]);
    assert_eq!((ran, cached), (6, 0));

    let runner_b = Env::new();
    let context_b = context(&runner_b);
    // The usual CI pattern: import and export the same cache. Re-exporting
    // what was imported must not download the layers nothing read.
    let (id_b, ran, cached, stderr) = build(
        &runner_b,
        &context_b,
        &["--cache-from", cache_from, "--cache-to", cache_to],
    );
    assert_eq!((ran, cached), (0, 6), "{stderr}");
    assert_eq!(id_a, id_b, "the same image from the imported cache");
    assert!(stderr.contains("exported build cache"), "{stderr}");

    let exported = cache_layers();
    let in_image = image_layers(&runner_b, &id_b);
    let intermediate: Vec<&String> = exported.difference(&in_image).collect();
    assert_eq!(
        intermediate.len(),
        3,
        "the builder stage's RUN, COPY, RUN layers"
    );
    for digest in &intermediate {
        assert!(
            !has_blob(&runner_b, digest),
            "{digest} was fetched though nothing read it"
        );
    }
    for digest in &in_image {
        assert!(
            has_blob(&runner_b, digest),
            "{digest} of the image is missing"
        );
    }
    run_ok(&mut runner_b.command(&["fsck"]));

    // COPY b.txt changes: it, the RUN after it and the COPY --from re-run;
    // the COPY --from reads the builder stage, fetched now.
    std::fs::write(context_b.join("b.txt"), "changed\n").unwrap();
    let rootfs = runner_b.dir.path().join("rootfs");
    let output = format!("type=local,dest={}", rootfs.display());
    let (id_c, ran, cached, stderr) = build(
        &runner_b,
        &context_b,
        &["--cache-from", cache_from, "--output", &output],
    );
    assert_eq!((ran, cached), (3, 3), "{stderr}");
    assert_ne!(id_c, id_b);
    assert_eq!(
        std::fs::read_to_string(rootfs.join("result")).unwrap(),
        "from a\nbuilt\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("b.txt")).unwrap(),
        "changed\nfinal\n"
    );
}

#[test]
fn a_registry_cache_serves_a_second_runner_with_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), None);
    let reference = registry.reference("app/cache:main");
    second_runner_reuses_everything(
        &format!("type=registry,ref={reference},mode=max"),
        &format!("type=registry,ref={reference}"),
        || {
            let manifest = skopeo_inspect(&reference);
            assert_eq!(
                manifest["config"]["mediaType"],
                "application/vnd.kiln.cache.config.v1+json"
            );
            digests(&manifest["layers"])
        },
    );
}

#[test]
fn a_cache_directory_serves_a_second_runner_with_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    second_runner_reuses_everything(
        &format!("type=local,dest={},mode=max", cache.display()),
        &format!("type=local,src={}", cache.display()),
        || digests(&cache_dir_manifest(&cache)["layers"]),
    );
}

/// The CI case end to end: runner B starts with nothing at all, pulls
/// the base image named in FROM, and takes every step from the registry
/// cache, ending with the same image as runner A.
#[test]
fn a_runner_with_nothing_in_its_store_pulls_the_base_and_takes_every_step_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), None);
    let base = registry.reference("base/busybox:1");
    let cache = format!("type=registry,ref={}", registry.reference("app/cache:main"));
    let dockerfile = format!(
        "FROM {base}\nCOPY a.txt /a.txt\nRUN cat /a.txt > /copied && echo ran >> /copied\n"
    );
    let files = [("Dockerfile", dockerfile.as_str()), ("a.txt", "from a\n")];

    let runner_a = Env::new();
    run_ok(&mut runner_a.command(&["push", "busybox:latest", &base]));
    let context_a = runner_a.context("ctx", &files);
    let (id_a, ran, cached, _) = build(&runner_a, &context_a, &["--cache-to", &cache]);
    assert_eq!((ran, cached), (2, 0));

    let runner_b = Env::empty();
    let context_b = runner_b.context("ctx", &files);
    let (id_b, ran, cached, stderr) = build(&runner_b, &context_b, &["--cache-from", &cache]);
    assert_eq!((ran, cached), (0, 2), "{stderr}");
    assert_eq!(id_a, id_b, "{stderr}");
    for digest in image_layers(&runner_b, &id_b) {
        assert!(has_blob(&runner_b, &digest), "{digest} is missing");
    }
    run_ok(&mut runner_b.command(&["fsck"]));
}

#[test]
fn mode_min_exports_only_the_image_steps() {
    let runner_a = Env::new();
    let cache = runner_a.dir.path().join("cache");
    let ctx = context(&runner_a);
    let to = format!("type=local,dest={}", cache.display());
    let (id_a, _, _, _) = build(&runner_a, &ctx, &["--cache-to", &to]);
    assert_eq!(
        cache_dir_manifest(&cache)["layers"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    let runner_b = Env::new();
    let from = format!("type=local,src={}", cache.display());
    let (id_b, ran, cached, stderr) =
        build(&runner_b, &context(&runner_b), &["--cache-from", &from]);
    assert_eq!(
        (ran, cached),
        (3, 3),
        "the builder stage runs again:\n{stderr}"
    );
    assert_eq!(id_a, id_b);

    // --no-cache ignores imported records as well as local ones.
    let fresh = Env::new();
    let (_, ran, cached, stderr) = build(
        &fresh,
        &context(&fresh),
        &["--no-cache", "--cache-from", &from],
    );
    assert_eq!((ran, cached), (6, 0), "{stderr}");

    // A second export to the same directory replaces the tag and reuses blobs.
    let max = format!("type=local,dest={},mode=max", cache.display());
    build(&runner_a, &ctx, &["--cache-to", &max]);
    assert_eq!(
        cache_dir_manifest(&cache)["layers"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    let index = json(&cache.join("index.json"));
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
}

#[test]
fn a_corrupt_blob_in_a_cache_directory_is_a_clear_error() {
    let runner_a = Env::new();
    let cache = runner_a.dir.path().join("cache");
    let to = format!("type=local,dest={}", cache.display());
    let (id_a, _, _, _) = build(&runner_a, &context(&runner_a), &["--cache-to", &to]);
    let layer = image_layers(&runner_a, &id_a)
        .into_iter()
        .find(|d| {
            cache_dir_manifest(&cache)["layers"]
                .to_string()
                .contains(d.as_str())
        })
        .unwrap();
    let path = cache
        .join("blobs/sha256")
        .join(layer.strip_prefix("sha256:").unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let runner_b = Env::new();
    let from = format!("type=local,src={}", cache.display());
    let out = runner_b.try_build(&context(&runner_b), &["--cache-from", &from]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains("the cache is corrupt"), "{stderr}");
    assert!(
        !has_blob(&runner_b, &layer),
        "a corrupt blob entered the store"
    );
}

#[test]
fn a_missing_or_unreachable_cache_is_a_warning() {
    let env = Env::new();
    let ctx = context(&env);
    let missing_dir = env.dir.path().join("no-cache-here");
    let from_dir = format!("type=local,src={}", missing_dir.display());
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), None);
    let missing_ref = format!("type=registry,ref={}", registry.reference("none:cache"));
    // Nothing listens on port 9 of loopback (discard is not run here).
    let unreachable = "type=registry,ref=127.0.0.1:9/app:cache";
    let (_, ran, _, stderr) = build(
        &env,
        &ctx,
        &[
            "--cache-from",
            &from_dir,
            "--cache-from",
            &missing_ref,
            "--cache-from",
            unreachable,
        ],
    );
    assert_eq!(ran, 6);
    assert_eq!(
        stderr.matches("warning: --cache-from").count(),
        3,
        "{stderr}"
    );
    assert!(
        stderr.contains("cannot reach registry 127.0.0.1:9"),
        "{stderr}"
    );
}

/// `kiln` on `env`'s store with the docker credentials in `docker_config`.
fn kiln_with_credentials(
    env: &Env,
    docker_config: &Path,
    args: &[&str],
    stdin: &str,
) -> std::process::Output {
    output_with_stdin(
        env.command(args).env("DOCKER_CONFIG", docker_config),
        stdin.as_bytes(),
    )
}

#[test]
fn a_registry_cache_uses_kiln_login_credentials_and_says_when_they_are_missing() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), Some(("ci", "s3cret")));
    let reference = registry.reference("private/cache:main");
    let to = format!("type=registry,ref={reference},mode=max");
    let from = format!("type=registry,ref={reference}");
    let no_credentials = dir.path().join("none");
    let credentials = dir.path().join("docker");

    let runner_a = Env::new();
    let ctx = context(&runner_a);
    let build_a = |docker_config: &Path, to: &str| {
        let context = ctx.to_string_lossy().into_owned();
        let args = ["build", "--progress", "plain", "--cache-to", to, &context];
        kiln_with_credentials(&runner_a, docker_config, &args, "")
    };
    let out = build_a(&no_credentials, &to);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the cache could not be exported") && stderr.contains("kiln login"),
        "{stderr}"
    );
    let out = build_a(&no_credentials, &format!("{to},ignore-error=true"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("warning: --cache-to"), "{stderr}");

    let login = ["login", &registry.host(), "-u", "ci", "--password-stdin"];
    let out = kiln_with_credentials(&runner_a, &credentials, &login, "s3cret\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = build_a(&credentials, &to);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A fresh runner importing the cache with these credentials; returns
    // its stderr (the build must succeed either way).
    let import_on_fresh_runner = |docker_config: &Path| {
        let runner = Env::new();
        let ctx = context(&runner).to_string_lossy().into_owned();
        let args = ["build", "--progress", "plain", "--cache-from", &from, &ctx];
        let out = kiln_with_credentials(&runner, docker_config, &args, "");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    let stderr = import_on_fresh_runner(&no_credentials);
    assert!(
        stderr.contains("warning: --cache-from") && stderr.contains("authentication"),
        "{stderr}"
    );
    assert_eq!(cached_steps(&stderr), 0, "{stderr}");

    let stderr = import_on_fresh_runner(&credentials);
    assert_eq!(
        (run_steps(&stderr), cached_steps(&stderr)),
        (0, 6),
        "{stderr}"
    );
}
