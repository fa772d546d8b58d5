//! Platforms of `kiln build`: with no `--platform`, an image the store has
//! for one platform only builds for that platform; a platform the store
//! lacks and a missing binfmt handler are errors that say what to do.

mod build_common;

use build_common::Env;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_imported_foreign_image_builds_for_its_platform_without_flags() {
    let env = Env::empty();
    env.import("busybox-mips64el.tar", "mbase");
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM mbase\nARG TARGETARCH\nRUN uname -m > /arch && echo $TARGETARCH > /targetarch\n",
        )],
    );
    let dest = env.dir.path().join("fs");
    let output = format!("type=local,dest={}", dest.display());
    let (_, stderr) = env.build(&ctx, &["--output", &output]);
    let notes: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("only for linux/mips64le"))
        .collect();
    assert_eq!(notes.len(), 1, "one note line:\n{stderr}");
    assert!(notes[0].contains("mbase"), "{stderr}");
    let read = |name: &str| std::fs::read_to_string(dest.join(name)).unwrap();
    assert_eq!(read("arch").trim(), "mips64");
    assert_eq!(read("targetarch").trim(), "mips64le");
}

#[test]
fn a_platform_the_store_lacks_leads_with_what_it_has() {
    let env = Env::empty();
    env.import("busybox-mips64el.tar", "mbase");
    let ctx = env.context("ctx", &[("Dockerfile", "FROM mbase\nRUN true\n")]);
    // --pull never: only the store is asked.
    let out = env.try_build(&ctx, &["--platform", "linux/amd64", "--pull", "never"]);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("the store has mbase for linux/mips64le but not for linux/amd64: build for it with --platform linux/mips64le"),
        "{stderr}"
    );
    // --pull missing (the default) tries docker.io, which is unreachable
    // here: the store's answer comes first, the network error after it.
    let out = env.try_build(&ctx, &["--platform", "linux/amd64"]);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("an error line:\n{stderr}"));
    let has = error
        .find("the store has mbase for linux/mips64le")
        .expect(error);
    let pulling = error.find("pulling docker.io/library/mbase").expect(error);
    assert!(has < pulling, "{error}");
}

#[test]
fn a_missing_binfmt_handler_is_an_error_before_anything_runs() {
    if std::path::Path::new("/proc/sys/fs/binfmt_misc/qemu-ppc64le").exists() {
        eprintln!("skipped: this machine has a ppc64le handler");
        return;
    }
    let env = Env::empty();
    let tar = build_common::fixture("busybox-amd64.tar");
    let tar = tar.to_string_lossy();
    build_common::run_ok(&mut env.command(&[
        "import",
        "--platform",
        "linux/ppc64le",
        "--force",
        &tar,
        "ppcbase",
    ]));
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM ppcbase\nRUN echo first\nRUN echo second\n",
        )],
    );
    let out = env.try_build(&ctx, &["--platform", "linux/ppc64le"]);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("cannot build for linux/ppc64le")
            && stderr.contains("kiln setup-binfmt ppc64le"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("RUN echo first"),
        "no step started:\n{stderr}"
    );
}

/// A store with `base-amd64` and `base-mips64le`, and a Dockerfile picking
/// the one of each target platform.
fn two_bases() -> Env {
    let env = Env::empty();
    env.import("busybox-amd64.tar", "base-amd64");
    env.import("busybox-mips64el.tar", "base-mips64le");
    env
}

const BOTH: &str = "linux/amd64,linux/mips64le";
const PER_ARCH: &str = "ARG TARGETARCH\nFROM base-$TARGETARCH\nRUN uname -m > /arch\n";

fn run(cmd: &mut std::process::Command) -> String {
    String::from_utf8_lossy(&build_common::run_ok(cmd).stdout).into_owned()
}

fn skopeo_raw(reference: &str) -> serde_json::Value {
    let out = run(std::process::Command::new("skopeo").args(["inspect", "--raw", reference]));
    serde_json::from_str(&out).expect("skopeo prints JSON")
}

/// The (architecture, digest) of each entry of an index.
fn entries(index: &serde_json::Value) -> Vec<(String, String)> {
    index["manifests"]
        .as_array()
        .expect("an index")
        .iter()
        .map(|m| {
            (
                m["platform"]["architecture"].as_str().unwrap().to_owned(),
                m["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn one_build_makes_an_index_that_skopeo_and_umoci_read() {
    let env = two_bases();
    let ctx = env.context("ctx", &[("Dockerfile", PER_ARCH)]);
    let local = env.dir.path().join("fs");
    let archive = env.dir.path().join("app.tar");
    let (id, _) = env.build(&ctx, &["--platform", BOTH, "-t", "app"]);
    // From the store, an OCI layout.
    let store = env.root();
    let index = skopeo_raw(&format!("oci:{}:app:latest", store.display()));
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{index}"
    );
    let listed = entries(&index);
    assert_eq!(
        listed.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
        ["amd64", "mips64le"]
    );
    let listing =
        run(std::process::Command::new("umoci").args(["ls", "--layout", &store.to_string_lossy()]));
    assert!(listing.lines().any(|l| l == "app:latest"), "{listing}");
    // Each platform's manifest unpacks with umoci and has its own /arch.
    for (arch, digest) in &listed {
        let name = format!("app-{arch}");
        build_common::run_ok(&mut env.command(&["tag", digest, &name]));
        let bundle = env.dir.path().join(format!("bundle-{arch}"));
        build_common::run_ok(std::process::Command::new("umoci").args([
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:{name}:latest", store.display()),
            &bundle.to_string_lossy(),
        ]));
        let uname = std::fs::read_to_string(bundle.join("rootfs/arch")).unwrap();
        let want = if arch == "amd64" { "x86_64" } else { "mips64" };
        assert_eq!(uname.trim(), want);
    }
    // The same build again is cached and gives the same index.
    let output = format!("type=oci,dest={}", archive.display());
    let (again, stderr) = env.build(
        &ctx,
        &["--platform", BOTH, "-t", "app", "--output", &output],
    );
    assert_eq!(again, id);
    assert_eq!(build_common::cached_steps(&stderr), 2, "{stderr}");
    // An OCI archive holds the index.
    let from_archive = skopeo_raw(&format!("oci-archive:{}:app", archive.display()));
    assert_eq!(entries(&from_archive), listed);
    let unpacked = env.dir.path().join("layout");
    std::fs::create_dir(&unpacked).unwrap();
    run(std::process::Command::new("tar").args([
        "-xf",
        &archive.to_string_lossy(),
        "-C",
        &unpacked.to_string_lossy(),
    ]));
    let listing = run(std::process::Command::new("umoci").args([
        "ls",
        "--layout",
        &unpacked.to_string_lossy(),
    ]));
    assert!(listing.contains("app"), "{listing}");
    // type=local: a directory per platform.
    let output = format!("type=local,dest={}", local.display());
    env.build(&ctx, &["--platform", BOTH, "--output", &output]);
    for (dir, want) in [("linux_amd64", "x86_64"), ("linux_mips64le", "mips64")] {
        let uname = std::fs::read_to_string(local.join(dir).join("arch")).unwrap();
        assert_eq!(uname.trim(), want);
    }
}

#[test]
fn the_cross_compile_pattern_runs_the_build_platform_stage_once() {
    let env = two_bases();
    // `busybox` for both platforms: a multi-platform build of the bases.
    let bases = env.context(
        "bases",
        &[("Dockerfile", "ARG TARGETARCH\nFROM base-$TARGETARCH\n")],
    );
    env.build(&bases, &["--platform", BOTH, "-t", "busybox"]);
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM --platform=$BUILDPLATFORM busybox AS build\n\
             RUN echo shared > /shared && uname -m > /built-on\n\
             ARG TARGETARCH\n\
             RUN echo \"binary for $TARGETARCH\" > /app\n\
             FROM busybox\n\
             COPY --from=build /app /built-on /\n\
             RUN uname -m > /arch\n",
        )],
    );
    let local = env.dir.path().join("fs");
    let output = format!("type=local,dest={}", local.display());
    let (_, stderr) = env.build(&ctx, &["--platform", BOTH, "--output", &output]);
    let shared_runs = stderr
        .lines()
        .filter(|l| {
            l.starts_with('#') && l.ends_with("RUN echo shared > /shared && uname -m > /built-on")
        })
        .count();
    assert_eq!(
        shared_runs, 1,
        "the build-platform step runs once:\n{stderr}"
    );
    for (dir, arch, uname) in [
        ("linux_amd64", "amd64", "x86_64"),
        ("linux_mips64le", "mips64le", "mips64"),
    ] {
        let read = |f: &str| std::fs::read_to_string(local.join(dir).join(f)).unwrap();
        assert_eq!(read("app").trim(), format!("binary for {arch}"));
        assert_eq!(read("built-on").trim(), "x86_64");
        assert_eq!(read("arch").trim(), uname);
    }
}

#[test]
fn a_failing_platform_fails_the_build_names_it_and_tags_nothing() {
    let env = two_bases();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "ARG TARGETARCH\nFROM base-$TARGETARCH\nRUN test \"$(uname -m)\" = x86_64\n",
        )],
    );
    let out = env.try_build(&ctx, &["--platform", BOTH, "-t", "app"]);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .expect(&stderr);
    assert!(error.contains("linux/mips64le"), "{stderr}");
    let images = run(&mut env.command(&["images"]));
    assert!(!images.contains("app"), "{images}");
    // Outputs that hold one platform say so before building.
    let out = env.try_build(
        &ctx,
        &["--platform", BOTH, "--output", "type=docker,dest=x.tar"],
    );
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("type=docker holds one platform"));
}

#[test]
fn annotations_and_metadata_file_as_buildkit_writes_them() {
    let env = two_bases();
    let ctx = env.context("ctx", &[("Dockerfile", PER_ARCH)]);
    let metadata = env.dir.path().join("meta.json");
    let (id, _) = env.build(
        &ctx,
        &[
            "--platform",
            BOTH,
            "-t",
            "app",
            "--annotation",
            "org.opencontainers.image.title=app",
            "--annotation",
            "index:org.opencontainers.image.description=both",
            "--annotation",
            "manifest[linux/mips64le]:only=mips",
            "--annotation",
            "manifest-descriptor:entry=yes",
            "--metadata-file",
            &metadata.to_string_lossy(),
        ],
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
    assert_eq!(meta["containerimage.digest"], id.as_str());
    assert_eq!(meta["containerimage.descriptor"]["digest"], id.as_str());
    assert_eq!(
        meta["containerimage.descriptor"]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(meta["image.name"], "app");
    let store = env.root();
    let index = skopeo_raw(&format!("oci:{}:app:latest", store.display()));
    assert_eq!(
        index["annotations"]["org.opencontainers.image.description"],
        "both"
    );
    assert!(index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["annotations"]["entry"] == "yes"));
    for (arch, digest) in entries(&index) {
        let blob = store.join("blobs/sha256").join(&digest[7..]);
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(blob).unwrap()).unwrap();
        assert_eq!(
            manifest["annotations"]["org.opencontainers.image.title"],
            "app"
        );
        let only = &manifest["annotations"]["only"];
        assert_eq!(*only == "mips", arch == "mips64le", "{manifest}");
    }
}

#[test]
fn two_clean_stores_give_the_same_index_digest() {
    let build = || {
        let env = two_bases();
        let ctx = env.context("ctx", &[("Dockerfile", PER_ARCH), ("f", "x")]);
        let out = build_common::run_ok(
            env.command(&["build", "--progress", "quiet", "--platform", BOTH])
                .arg(&ctx)
                .env("SOURCE_DATE_EPOCH", "1700000000"),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let first = build();
    assert!(first.starts_with("sha256:"), "{first}");
    assert_eq!(first, build());
}

#[test]
fn indexes_in_the_store_inspect_tag_save_load_prune_and_manifest_commands() {
    let env = two_bases();
    let kiln = |args: &[&str]| run(&mut env.command(args));
    let id = kiln(&["manifest", "create", "both", "base-amd64", "base-mips64le"]);
    let id = id.trim();
    let raw: serde_json::Value =
        serde_json::from_str(&kiln(&["manifest", "inspect", "both"])).unwrap();
    assert_eq!(entries(&raw).len(), 2);
    // add/remove edit the entries.
    kiln(&["manifest", "remove", "both", "base-amd64"]);
    let raw: serde_json::Value =
        serde_json::from_str(&kiln(&["manifest", "inspect", "both"])).unwrap();
    assert_eq!(
        entries(&raw)
            .iter()
            .map(|(a, _)| a.as_str())
            .collect::<Vec<_>>(),
        ["mips64le"]
    );
    let again = kiln(&["manifest", "add", "both", "base-amd64"]);
    let raw: serde_json::Value =
        serde_json::from_str(&kiln(&["manifest", "inspect", "both"])).unwrap();
    assert_eq!(entries(&raw).len(), 2);
    assert_ne!(again.trim(), "", "{again}");
    kiln(&["manifest", "create", "both", "base-amd64", "base-mips64le"]);
    // inspect shows the index, --platform one image.
    let shown: serde_json::Value = serde_json::from_str(&kiln(&["inspect", "both"])).unwrap();
    assert_eq!(shown[0]["Id"], id);
    assert_eq!(
        shown[0]["Platforms"],
        serde_json::json!(["linux/amd64", "linux/mips64le"])
    );
    let mips: serde_json::Value =
        serde_json::from_str(&kiln(&["inspect", "--platform", "linux/mips64le", "both"])).unwrap();
    assert_eq!(mips[0]["Platform"], "linux/mips64le");
    // tag keeps the index.
    kiln(&["tag", "both", "copy"]);
    let copy: serde_json::Value = serde_json::from_str(&kiln(&["inspect", "copy"])).unwrap();
    assert_eq!(copy[0]["Id"], id);
    // Manifests an index keeps are never pruned.
    kiln(&["rmi", "base-amd64", "base-mips64le", "copy"]);
    kiln(&["prune"]);
    build_common::run_ok(&mut env.command(&["fsck"]));
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM both\nRUN uname -m > /arch\n")],
    );
    let local = env.dir.path().join("fs");
    let output = format!("type=local,dest={}", local.display());
    env.build(
        &ctx,
        &["--platform", BOTH, "--pull", "never", "--output", &output],
    );
    assert_eq!(
        std::fs::read_to_string(local.join("linux_mips64le/arch"))
            .unwrap()
            .trim(),
        "mips64"
    );
    // save --format oci keeps the index, load keeps it; docker refuses it.
    let archive = env.dir.path().join("both.tar");
    kiln(&["save", "-o", &archive.to_string_lossy(), "both"]);
    let out = env.kiln(&["save", "--format", "docker", "-o", "/dev/null", "both"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("multi-platform index"),
        "{}",
        stderr_of(&out)
    );
    let other = Env::empty();
    let loaded = run(&mut other.command(&["load", "-i", &archive.to_string_lossy()]));
    assert_eq!(loaded.trim(), id);
    let shown: serde_json::Value =
        serde_json::from_str(&run(&mut other.command(&["inspect", "both"]))).unwrap();
    assert_eq!(shown[0]["Id"], id);
    let images = run(&mut other.command(&["images"]));
    assert_eq!(
        images.lines().filter(|l| l.starts_with("both ")).count(),
        2,
        "{images}"
    );
    build_common::run_ok(&mut other.command(&["fsck"]));
}
