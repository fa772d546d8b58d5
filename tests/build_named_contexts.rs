//! `--build-context NAME=VALUE`, as BuildKit takes it: an image
//! (`docker-image://`, `oci-layout://`) or a directory (a path, a tarball
//! URL, a git URL) that `FROM NAME`, `COPY --from=NAME` and
//! `RUN --mount=from=NAME` read instead of the image or stage NAME. Servers
//! are started here on 127.0.0.1 and stopped after.

mod build_common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use build_common::servers::{free_port, git, git_daemon, httpd};
use build_common::{cached_steps, run_ok, run_steps, Env};

fn images(env: &Env) -> Vec<u8> {
    run_ok(&mut env.command(&["images", "--format", "json"])).stdout
}

fn read(dir: &Path, path: &str) -> String {
    std::fs::read_to_string(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn docker_image_contexts_replace_a_from_image_and_a_stage_of_their_name() {
    let env = Env::new();
    // `alpine` is not in the store: only the context makes it busybox. The
    // stage `base` would fail (no such file): the context replaces it.
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM scratch AS base\nCOPY no-such-file /\n\nFROM alpine AS other\nRUN echo from-alpine > /a\n\nFROM base\nCOPY --from=other /a /a\nCOPY --from=docker.io/library/alpine:latest /bin/busybox /copied-busybox\nRUN cat /a\n",
        )],
    );
    let dest = env.export(
        &ctx,
        &[
            "--pull",
            "never",
            "--build-context",
            "alpine=docker-image://busybox",
            "--build-context",
            "base=docker-image://busybox:latest",
        ],
    );
    assert_eq!(read(&dest, "a"), "from-alpine\n");
    assert!(dest.join("bin/busybox").is_file());
    assert!(dest.join("copied-busybox").is_file());

    // Without the contexts, alpine is an image the store does not have.
    let out = env.try_build(&ctx, &["--pull", "never"]);
    assert!(!out.status.success());
}

#[test]
fn a_directory_context_for_copy_from_mount_from_and_from() {
    let env = Env::new();
    let other = env.context(
        "other",
        &[
            ("lib/a.txt", "a from other\n"),
            ("lib/secret.key", "ignored\n"),
            (".dockerignore", "**/*.key\n"),
        ],
    );
    let ctx = env.context(
        "ctx",
        &[
            ("lib/a.txt", "a from the main context\n"),
            (
                "Dockerfile",
                "FROM src AS files\n\nFROM busybox\nCOPY --from=src lib /lib-copy\nRUN --mount=from=src,target=/m cat /m/lib/a.txt > /mounted && ls /m/lib > /listing\nCOPY --from=files / /files\nCOPY lib/a.txt /main.txt\n",
            ),
        ],
    );
    let context_arg = format!("src={}", other.display());
    let dest = env.export(&ctx, &["--build-context", &context_arg]);
    assert_eq!(read(&dest, "lib-copy/a.txt"), "a from other\n");
    assert_eq!(read(&dest, "mounted"), "a from other\n");
    assert_eq!(
        read(&dest, "listing"),
        "a.txt\n",
        "its own .dockerignore applies"
    );
    assert_eq!(read(&dest, "files/lib/a.txt"), "a from other\n");
    assert!(!dest.join("files/lib/secret.key").exists());
    assert_eq!(read(&dest, "main.txt"), "a from the main context\n");

    // Keyed by content: the same files are a cache hit, a change re-runs.
    let (_, stderr) = env.build(&ctx, &["--build-context", &context_arg]);
    assert_eq!(run_steps(&stderr), 0, "{stderr}");
    std::fs::write(other.join("lib/a.txt"), "changed\n").unwrap();
    let dest = env.export(&ctx, &["--build-context", &context_arg]);
    assert_eq!(read(&dest, "mounted"), "changed\n");
    assert_eq!(read(&dest, "files/lib/a.txt"), "changed\n");

    // A stage of the context's name is replaced by the directory.
    let ctx2 = env.context(
        "ctx2",
        &[(
            "Dockerfile",
            "FROM busybox AS src\nRUN echo never > /never\n\nFROM busybox\nCOPY --from=src . /from-src\n",
        )],
    );
    let dest = env.export(&ctx2, &["--build-context", &context_arg]);
    assert_eq!(read(&dest, "from-src/lib/a.txt"), "changed\n");
    assert!(!dest.join("from-src/never").exists());
}

#[test]
fn a_directory_stage_has_an_empty_config() {
    let env = Env::new();
    let other = env.context("other", &[("hello", "hi\n")]);
    let ctx = env.context("ctx", &[("Dockerfile", "FROM src\n")]);
    let context_arg = format!("src={}", other.display());
    let (id, _) = env.build(&ctx, &["-t", "fromdir", "--build-context", &context_arg]);
    let inspect = run_ok(&mut env.command(&["inspect", "fromdir"])).stdout;
    let inspect = String::from_utf8_lossy(&inspect);
    assert!(!id.is_empty());
    assert!(!inspect.contains("\"Cmd\""), "{inspect}");
    let dest = env.export(&ctx, &["--build-context", &context_arg]);
    assert_eq!(read(&dest, "hello"), "hi\n");
}

#[test]
fn links_in_a_directory_context_stay_inside_it() {
    let env = Env::new();
    let host = env.dir.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("shadow"), "host secret\n").unwrap();
    let other = env.context("other", &[("data/f", "inside\n")]);
    symlink("/etc", other.join("etclink")).unwrap();
    symlink("../host", other.join("beside")).unwrap();
    let context_arg = format!("src={}", other.display());
    for source in ["etclink/passwd", "beside/shadow"] {
        for instruction in [
            format!("COPY --from=src {source} /x"),
            format!("RUN --mount=from=src,source={source},target=/x cat /x"),
        ] {
            let ctx = env.context(
                "ctx",
                &[("Dockerfile", &format!("FROM busybox\n{instruction}\n"))],
            );
            let out = env.try_build(&ctx, &["--build-context", &context_arg]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{instruction}: {stderr}");
            assert!(
                stderr.contains(&format!("{source}: not found in the build context src")),
                "{instruction}: {stderr}"
            );
            assert!(!stderr.contains("host secret") && !stderr.contains("root:"));
        }
    }
}

#[test]
fn oci_layout_contexts_from_kiln_save_and_skopeo() {
    let maker = Env::new();
    let ctx = maker.context(
        "make",
        &[("Dockerfile", "FROM busybox\nRUN echo layout > /marker\n")],
    );
    maker.build(&ctx, &["-t", "marked:v1"]);
    let archive = maker.dir.path().join("marked.tar");
    run_ok(&mut maker.command(&["save", "-o", &archive.to_string_lossy(), "marked:v1"]));
    let layout = maker.dir.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    run_ok(Command::new("tar").args([
        "-xf",
        &archive.to_string_lossy(),
        "-C",
        &layout.to_string_lossy(),
    ]));
    let skopeo_layout = maker.dir.path().join("skopeo-layout");
    run_ok(Command::new("skopeo").args([
        "copy",
        "-q",
        &format!("oci-archive:{}:marked:v1", archive.display()),
        &format!("oci:{}:other", skopeo_layout.display()),
    ]));

    // A store that has only busybox: the image comes from the layout.
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM base\nCOPY --from=base /marker /again\nRUN cat /marker /again > /both\n",
        )],
    );
    for value in [
        format!("base=oci-layout://{}", layout.display()),
        format!("base=oci-layout://{}:v1", layout.display()),
        format!("base=oci-layout://{}:other", skopeo_layout.display()),
    ] {
        let dest = env.export(&ctx, &["--pull", "never", "--build-context", &value]);
        assert_eq!(read(&dest, "both"), "layout\nlayout\n", "{value}");
    }
    let value = format!("base=oci-layout://{}:nosuchtag", layout.display());
    let out = env.try_build(&ctx, &["--build-context", &value]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--build-context base=oci-layout://")
            && stderr.contains("no image tagged \"nosuchtag\""),
        "{stderr}"
    );
}

#[test]
fn tarball_and_git_url_contexts() {
    let env = Env::new();
    // A tarball on busybox httpd.
    let served = env.dir.path().join("www");
    std::fs::create_dir_all(&served).unwrap();
    let tarred = env.context("tarred", &[("t/file", "from the tarball\n")]);
    run_ok(Command::new("tar").args([
        "-C",
        &tarred.to_string_lossy(),
        "-czf",
        &served.join("ctx.tar.gz").to_string_lossy(),
        ".",
    ]));
    let http_port = free_port();
    let _httpd = httpd(&served, http_port);
    // A repository on git-daemon.
    let base = env.dir.path().join("git");
    let work = base.join("work");
    std::fs::create_dir_all(work.join("sub")).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("sub/file"), "from git\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "one"]);
    git(&base, &["clone", "-q", "--bare", "work", "repo.git"]);
    let git_port = free_port();
    let _daemon = git_daemon(&base, git_port);

    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nCOPY --from=tarball t/file /t\nCOPY --from=repo file /g\n",
        )],
    );
    let tarball = format!("tarball=http://127.0.0.1:{http_port}/ctx.tar.gz");
    let repo = format!("repo=git://127.0.0.1:{git_port}/repo.git#main:sub");
    let args = ["--build-context", &tarball, "--build-context", &repo];
    let dest = env.export(&ctx, &args);
    assert_eq!(read(&dest, "t"), "from the tarball\n");
    assert_eq!(read(&dest, "g"), "from git\n");
    // Fetched again, the same content: cached.
    let (_, stderr) = env.build(&ctx, &args);
    assert_eq!(cached_steps(&stderr), 2, "{stderr}");

    // Unreachable sources fail before anything is built or stored.
    let before = images(&env);
    for value in [
        format!("tarball=http://127.0.0.1:{http_port}/missing.tar.gz"),
        format!("repo=git://127.0.0.1:{git_port}/repo.git#nosuchref"),
    ] {
        let out = env.try_build(&ctx, &["-t", "never", "--build-context", &value]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("--build-context"), "{stderr}");
        assert!(!stderr.contains("#1 "), "nothing may run: {stderr}");
    }
    assert_eq!(images(&env), before);
}

#[test]
fn bad_values_are_errors_that_name_the_flag_and_leave_the_store_alone() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nCOPY --from=src . /\n")],
    );
    let before = images(&env);
    for (value, says) in [
        ("src=target://base", "unknown scheme target://"),
        ("src=/no/such/dir", "/no/such/dir is not a directory"),
        (
            "src=oci-layout:///no/such/layout",
            "not an OCI image layout",
        ),
        ("Src=.", "is not a context name"),
    ] {
        let out = env.try_build(&ctx, &["-t", "never", "--build-context", value]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{value}");
        assert!(
            stderr.contains("--build-context") && stderr.contains(says),
            "{value}: {stderr}"
        );
    }
    // An image the store lacks (and may not pull) says where it came from.
    let out = env.try_build(
        &ctx,
        &[
            "--pull",
            "never",
            "-t",
            "never",
            "--build-context",
            "src=docker-image://nosuchimage:1",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no image \"nosuchimage:1\"") && stderr.contains("--build-context src="),
        "{stderr}"
    );
    assert_eq!(images(&env), before);
}

fn sha256_hex(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path)).stdout;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn an_oci_layout_index_gives_the_image_of_the_build_platform() {
    // A layout whose one entry is a multi-platform index of busybox for
    // amd64 and mips64le.
    let maker = Env::new();
    maker.import("busybox-mips64el.tar", "bb-mips:latest");
    let archive = maker.dir.path().join("both.tar");
    run_ok(&mut maker.command(&[
        "save",
        "-o",
        &archive.to_string_lossy(),
        "busybox:latest",
        "bb-mips:latest",
    ]));
    let layout = maker.dir.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    run_ok(Command::new("tar").args([
        "-xf",
        &archive.to_string_lossy(),
        "-C",
        &layout.to_string_lossy(),
    ]));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entries: Vec<serde_json::Value> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let name = entry["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap();
            let arch = if name.starts_with("bb-mips") {
                "mips64le"
            } else {
                "amd64"
            };
            serde_json::json!({
                "mediaType": entry["mediaType"],
                "digest": entry["digest"],
                "size": entry["size"],
                "platform": {"architecture": arch, "os": "linux"},
            })
        })
        .collect();
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    let staged = layout.join("nested.json");
    std::fs::write(&staged, &nested).unwrap();
    let hex = sha256_hex(&staged);
    std::fs::rename(&staged, layout.join("blobs/sha256").join(&hex)).unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{hex}"),
            "size": nested.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }],
    });
    std::fs::write(layout.join("index.json"), top.to_string()).unwrap();

    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", "FROM base\n")]);
    let value = format!("base=oci-layout://{}:multi", layout.display());
    for (platform, arch) in [("linux/mips64le", "mips64le"), ("linux/amd64", "amd64")] {
        env.build(
            &ctx,
            &[
                "-t",
                "out",
                "--platform",
                platform,
                "--build-context",
                &value,
            ],
        );
        let inspect = run_ok(&mut env.command(&["inspect", "out"])).stdout;
        let inspect = String::from_utf8_lossy(&inspect);
        assert!(
            inspect.contains(&format!("\"{arch}\"")),
            "{platform}: {inspect}"
        );
    }
}
