//! `kiln build --sbom --provenance`: SPDX and SLSA documents attached to the
//! image as OCI 1.1 referrers, kept by prune while the image lives, carried
//! by `save --format oci`, pushed to a registry without the referrers API
//! (docker-registry: the `sha256-<hex>` tag schema) and pulled back with
//! `pull --referrers`; reproducible under SOURCE_DATE_EPOCH, and nothing at
//! all without the flags.

mod build_common;
mod registry_common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use build_common::{run_ok, Env};
use registry_common::{skopeo_inspect, Registry};

const EMPTY_JSON_DIGEST: &str = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

fn stdout(out: std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn json(env: &Env, args: &[&str]) -> serde_json::Value {
    let text = stdout(run_ok(&mut env.command(args)));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
}

fn referrers(env: &Env, image: &str) -> serde_json::Value {
    json(env, &["inspect", "--referrers", image])["manifests"].clone()
}

fn sha256_of(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    stdout(out).split_whitespace().next().unwrap().to_owned()
}

const BUSYBOX_DOCKERFILE: &str = "FROM busybox\nARG FLAVOUR=plain\nCOPY hello.txt /srv/hello.txt\nRUN echo $FLAVOUR > /flavour\n";

fn busybox_context(env: &Env) -> std::path::PathBuf {
    env.context(
        "ctx",
        &[("Dockerfile", BUSYBOX_DOCKERFILE), ("hello.txt", "hello\n")],
    )
}

#[test]
fn sbom_of_debian_lists_what_dpkg_query_lists_and_provenance_names_base_and_dockerfile() {
    let env = Env::empty();
    env.import("debian12-minbase-amd64.tar.zst", "debian:12");
    let dockerfile = "FROM debian:12\nCOPY hello.txt /srv/hello.txt\nRUN dpkg-query -W -f='${db:Status-Status} ${Package} ${Version} ${Architecture}\\n' > /pkgs.txt\n";
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", dockerfile), ("hello.txt", "hello\n")],
    );
    let out_dir = env.dir.path().join("fs");
    let output = format!("type=local,dest={}", out_dir.display());
    let mut build = env.command(&[
        "build",
        "--progress",
        "plain",
        "--network",
        "none",
        "--sbom",
        "--provenance=mode=max",
        "--build-arg",
        "RELEASE=7",
        "--secret",
        "id=token,env=KILN_TEST_TOKEN",
        "-t",
        "app",
        "--output",
        &output,
        ctx.to_str().unwrap(),
    ]);
    build.env("KILN_TEST_TOKEN", "hunter2-secret-value");
    let image = stdout(run_ok(&mut build));

    // What dpkg itself says is installed, inside the image.
    let listed = std::fs::read_to_string(out_dir.join("pkgs.txt")).unwrap();
    let expected: BTreeSet<String> = listed
        .lines()
        .filter_map(|line| line.strip_prefix("installed "))
        .map(str::to_owned)
        .collect();
    assert!(expected.len() > 50, "{listed}");
    let sbom = json(&env, &["attest", "show", "app", "--type", "sbom"]);
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
    assert_eq!(sbom["dataLicense"], "CC0-1.0");
    assert_eq!(sbom["SPDXID"], "SPDXRef-DOCUMENT");
    let packages = sbom["packages"].as_array().unwrap();
    let found: BTreeSet<String> = packages
        .iter()
        .filter(|p| p["SPDXID"] != "SPDXRef-Image")
        .map(|p| {
            let purl = p["externalRefs"][0]["referenceLocator"].as_str().unwrap();
            let arch = purl.rsplit_once("?arch=").unwrap().1;
            assert!(purl.starts_with("pkg:deb/debian/"), "{purl}");
            format!(
                "{} {} {arch}",
                p["name"].as_str().unwrap(),
                p["versionInfo"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(found, expected);
    let hello = sbom["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["fileName"] == "./srv/hello.txt")
        .expect("the COPYed file is listed");
    assert_eq!(
        hello["checksums"][1]["checksumValue"],
        sha256_of(&ctx.join("hello.txt"))
    );

    let provenance = json(&env, &["attest", "show", "app", "--type", "provenance"]);
    assert_eq!(provenance["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(
        provenance["predicateType"],
        "https://slsa.dev/provenance/v1"
    );
    assert_eq!(
        provenance["subject"][0]["digest"]["sha256"],
        image.trim_start_matches("sha256:")
    );
    let definition = &provenance["predicate"]["buildDefinition"];
    let base = json(&env, &["inspect", "debian:12"])[0]["Id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        definition["resolvedDependencies"][0]["digest"]["sha256"],
        base.trim_start_matches("sha256:")
    );
    assert_eq!(
        definition["externalParameters"]["configSource"]["digest"]["sha256"],
        sha256_of(&ctx.join("Dockerfile"))
    );
    assert_eq!(
        definition["externalParameters"]["request"]["args"]["build-arg:RELEASE"],
        "7"
    );
    assert!(definition["internalParameters"]["steps"][1]["command"]
        .as_str()
        .unwrap()
        .starts_with("RUN dpkg-query"));
    let text = provenance.to_string();
    assert!(!text.contains("hunter2"), "a secret leaked: {text}");
    let metadata = &provenance["predicate"]["runDetails"]["metadata"];
    assert!(metadata["startedOn"].as_str().unwrap() <= metadata["finishedOn"].as_str().unwrap());
}

#[test]
fn referrers_use_the_tag_schema_on_docker_registry_and_come_back_with_pull() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), None);
    let name = registry.reference("kiln/app:1");
    let ctx = busybox_context(&env);
    let (image, _) = env.build(&ctx, &["--sbom", "--provenance", "-t", &name, "--push"]);
    let hex = image.trim_start_matches("sha256:");
    let ours = referrers(&env, &name);
    assert_eq!(ours.as_array().unwrap().len(), 2);

    // docker-registry has no referrers API: the tag schema holds them.
    let index = skopeo_inspect(&registry.reference(&format!("kiln/app:sha256-{hex}")));
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let listed = index["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{index}");
    let types: BTreeSet<&str> = listed
        .iter()
        .map(|m| m["artifactType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        BTreeSet::from(["application/spdx+json", "application/vnd.in-toto+json"])
    );
    for entry in listed {
        let digest = entry["digest"].as_str().unwrap();
        let manifest = skopeo_inspect(&registry.reference(&format!("kiln/app@{digest}")));
        assert_eq!(manifest["subject"]["digest"], image);
        assert_eq!(manifest["artifactType"], entry["artifactType"]);
        assert_eq!(
            manifest["config"]["mediaType"],
            "application/vnd.oci.empty.v1+json"
        );
        assert_eq!(manifest["layers"][0]["mediaType"], entry["artifactType"]);
    }
    // Pushing again updates the list (read, add what is missing, write):
    // nothing is listed twice.
    run_ok(&mut env.command(&["push", &name]));
    let again = skopeo_inspect(&registry.reference(&format!("kiln/app:sha256-{hex}")));
    assert_eq!(again["manifests"].as_array().unwrap().len(), 2);

    let other = Env::empty();
    let pulled = stdout(run_ok(&mut other.command(&["pull", "--referrers", &name])));
    assert_eq!(pulled, image);
    assert_eq!(referrers(&other, &name), ours);
    let sbom = json(&other, &["attest", "show", &name, "--type", "sbom"]);
    assert_eq!(sbom["files"][0]["fileName"], "./srv/hello.txt");
    let out = other.kiln(&["fsck"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Without --referrers a pull brings only the image.
    let plain = Env::empty();
    run_ok(&mut plain.command(&["pull", &name]));
    assert_eq!(referrers(&plain, &name), serde_json::json!([]));
}

#[test]
fn prune_keeps_attestations_while_the_image_lives_and_save_carries_them() {
    let env = Env::new();
    let ctx = busybox_context(&env);
    env.build(&ctx, &["--sbom", "--provenance", "-t", "app"]);
    let listed = referrers(&env, "app");
    let digests: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
                .to_owned()
        })
        .collect();
    let blob = |hex: &str| env.root().join("blobs/sha256").join(hex);
    run_ok(&mut env.command(&["prune"]));
    assert!(digests.iter().all(|d| blob(d).is_file()));
    assert_eq!(referrers(&env, "app"), listed);
    run_ok(&mut env.command(&["fsck"]));

    // An OCI archive carries them, skopeo still reads the image by name,
    // and load attaches them again.
    let archive = env.dir.path().join("app.tar");
    run_ok(&mut env.command(&["save", "-o", archive.to_str().unwrap(), "app"]));
    run_ok(
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci-archive:{}:app:latest", archive.display())),
    );
    let loaded = Env::empty();
    run_ok(&mut loaded.command(&["load", "-i", archive.to_str().unwrap()]));
    assert_eq!(referrers(&loaded, "app"), listed);
    json(&loaded, &["attest", "show", "app", "--type", "provenance"]);

    run_ok(&mut env.command(&["rmi", "app"]));
    run_ok(&mut env.command(&["prune"]));
    assert!(digests.iter().all(|d| !blob(d).exists()));
    assert!(!blob(EMPTY_JSON_DIGEST).exists());
    let out = env.kiln(&["fsck"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn attestations_are_reproducible_with_source_date_epoch() {
    let build = || {
        let env = Env::new();
        let ctx = busybox_context(&env);
        let mut command = env.command(&[
            "build",
            "-q",
            "--sbom=scan-stages=true",
            "--provenance=mode=max",
            "-t",
            "app",
            ctx.to_str().unwrap(),
        ]);
        command.env("SOURCE_DATE_EPOCH", "1700000000");
        let image = stdout(run_ok(&mut command));
        let listed = referrers(&env, "app");
        (image, listed)
    };
    let (first_image, first) = build();
    let (second_image, second) = build();
    assert_eq!(first_image, second_image);
    assert_eq!(first.as_array().unwrap().len(), 2);
    assert_eq!(first, second);
}

#[test]
fn a_build_without_the_flags_adds_nothing() {
    let plain = Env::new();
    let ctx = busybox_context(&plain);
    let mut command = plain.command(&["build", "-q", "-t", "app", ctx.to_str().unwrap()]);
    command.env("SOURCE_DATE_EPOCH", "1700000000");
    let image = stdout(run_ok(&mut command));
    assert_eq!(referrers(&plain, "app"), serde_json::json!([]));
    assert!(!plain
        .root()
        .join("blobs/sha256")
        .join(EMPTY_JSON_DIGEST)
        .exists());
    let out = plain.kiln(&["attest", "show", "app", "--type", "sbom"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sbom"));

    // The same build with attestations makes the very same image.
    let attested = Env::new();
    let ctx = busybox_context(&attested);
    let mut command = attested.command(&[
        "build",
        "-q",
        "--sbom",
        "--provenance",
        "-t",
        "app",
        ctx.to_str().unwrap(),
    ]);
    command.env("SOURCE_DATE_EPOCH", "1700000000");
    assert_eq!(stdout(run_ok(&mut command)), image);
}
