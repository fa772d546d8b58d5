//! save, load, images, tag, rmi and prune, checked with skopeo and umoci.

use kiln_testsupport::run::{client, run_ok};
use kiln_testsupport::store::{skopeo_inspect, Store};

#[test]
fn oci_archives_open_in_skopeo_and_umoci_and_load_back() {
    let store = Store::new();
    let id = store.import("busybox-mips64el.tar", "mips/busybox:1");
    store.ok(&["tag", "mips/busybox:1", "mips/busybox:latest"]);
    let archive = store.path("images.tar");
    store.ok(&[
        "save",
        "-o",
        archive.to_str().unwrap(),
        "mips/busybox:1",
        "mips/busybox",
    ]);
    // The same images give the same archive, byte for byte (index.json's
    // annotations included), whichever kiln process writes it.
    for again in ["images-again-1.tar", "images-again-2.tar"] {
        let copy = store.path(again);
        store.ok(&[
            "save",
            "-o",
            copy.to_str().unwrap(),
            "mips/busybox:1",
            "mips/busybox",
        ]);
        assert!(
            std::fs::read(&copy).unwrap() == std::fs::read(&archive).unwrap(),
            "{again} differs from the first save"
        );
    }
    let inspected = skopeo_inspect(&format!("oci-archive:{}:mips/busybox:1", archive.display()));
    assert_eq!(inspected["Architecture"], "mips64le");
    assert_eq!(inspected["Digest"], id.as_str());
    // umoci reads layouts from directories: untar and unpack.
    let layout = store.path("layout");
    std::fs::create_dir(&layout).unwrap();
    client(
        "tar",
        &[
            "-xf",
            archive.to_str().unwrap(),
            "-C",
            layout.to_str().unwrap(),
        ],
    );
    let bundle = store.path("bundle");
    client(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:mips/busybox:latest", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    assert!(bundle.join("rootfs/bin/busybox").is_file());

    let other = Store::new();
    let loaded = other.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert_eq!(
        loaded.lines().collect::<Vec<_>>(),
        vec![id.as_str(), id.as_str()]
    );
    let images: serde_json::Value =
        serde_json::from_str(&other.ok(&["images", "--format", "json"])).unwrap();
    let names: Vec<&str> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["mips/busybox:1", "mips/busybox:latest"]);
    assert_eq!(images[0]["Platform"], "linux/mips64le");
    other.assert_fsck_clean();
}

#[test]
fn docker_archives_have_docker_load_layout_and_round_trip() {
    let store = Store::new();
    let amd = store.import("busybox-amd64.tar", "bb:amd");
    let mips = store.import("busybox-mips64el.tar", "bb:mips");
    let archive = store.path("docker.tar");
    store.ok(&[
        "save",
        "--format",
        "docker",
        "-o",
        archive.to_str().unwrap(),
        "bb:amd",
        "bb:mips",
    ]);
    let listing = client("tar", &["-tf", archive.to_str().unwrap()]);
    assert!(listing.lines().any(|l| l == "manifest.json"), "{listing}");
    assert!(listing.lines().any(|l| l == "repositories"), "{listing}");
    let manifest: serde_json::Value = serde_json::from_str(&client(
        "tar",
        &["-xOf", archive.to_str().unwrap(), "manifest.json"],
    ))
    .unwrap();
    assert_eq!(manifest[0]["RepoTags"][0], "bb:amd");
    assert_eq!(manifest[1]["RepoTags"][0], "bb:mips");
    // Layers are plain tars named by their diff_id, as docker load wants them.
    let layer = manifest[1]["Layers"][0].as_str().unwrap();
    let members = client("tar", &["-xOf", archive.to_str().unwrap(), layer]);
    assert!(!members.is_empty());
    for (name, arch) in [("bb:amd", "amd64"), ("bb:mips", "mips64le")] {
        let inspected = skopeo_inspect(&format!("docker-archive:{}:{name}", archive.display()));
        assert_eq!(inspected["Architecture"], arch);
    }
    let other = Store::new();
    let loaded = other.ok(&["load", "-i", archive.to_str().unwrap()]);
    // Loading recompresses the same tars the same way: the ids survive the round trip.
    assert_eq!(
        loaded.lines().collect::<Vec<_>>(),
        vec![amd.as_str(), mips.as_str()]
    );
    other.assert_fsck_clean();
}

#[test]
fn archives_made_by_skopeo_load_from_stdin_too() {
    let store = Store::new();
    store.import("busybox-amd64.tar", "bb");
    let docker_archive = store.path("skopeo-docker.tar");
    client(
        "skopeo",
        &[
            "copy",
            &format!("oci:{}:bb:latest", store.root().display()),
            &format!(
                "docker-archive:{}:docker.io/library/busybox:musl",
                docker_archive.display()
            ),
        ],
    );
    let other = Store::new();
    run_ok(
        other
            .command(&["load"])
            .stdin(std::fs::File::open(&docker_archive).unwrap()),
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&other.ok(&["inspect", "busybox:musl"])).unwrap();
    assert_eq!(inspect[0]["Platform"], "linux/amd64");
    let stderr = other.fails(&["load", "-i", "/etc/hostname"]);
    assert!(
        stderr.contains("not a tar archive") || stderr.contains("neither"),
        "{stderr}"
    );
}

#[test]
fn tag_rmi_and_prune_keep_what_is_named() {
    let store = Store::new();
    let id = store.import("busybox-amd64.tar", "one");
    store.import("busybox-mips64el.tar", "mips");
    store.ok(&["tag", &id[7..19], "two:v2"]);
    let table = store.ok(&["images"]);
    assert!(table.starts_with("REPOSITORY"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
    assert_eq!(store.ok(&["prune"]).trim(), "0");
    store.ok(&["rmi", "one"]);
    // Still named two:v2: nothing is freed.
    skopeo_inspect(&format!("oci:{}:two:v2", store.root().display()));
    let out = store.kiln(&["rmi", &id]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("freed"));
    assert!(store.kiln(&["inspect", "two:v2"]).status.code() != Some(0));
    let stderr = store.fails(&["rmi", "nothing"]);
    assert!(stderr.contains("no image named"), "{stderr}");
    skopeo_inspect(&format!("oci:{}:mips:latest", store.root().display()));
    store.assert_fsck_clean();
}

#[test]
fn docker_archives_without_images_or_with_broken_json_are_refused() {
    let store = Store::new();
    for (name, manifest, expected) in [
        ("empty", "[]", "no images in the archive"),
        (
            "truncated",
            "[{\"Config\":",
            "manifest.json of the archive is malformed JSON",
        ),
        (
            "garbage",
            "not json at all",
            "manifest.json of the archive is malformed JSON",
        ),
    ] {
        let dir = store.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("manifest.json"), manifest).unwrap();
        let archive = store.path(&format!("{name}.tar"));
        let status = std::process::Command::new("tar")
            .arg("-cf")
            .arg(&archive)
            .arg("-C")
            .arg(&dir)
            .arg("manifest.json")
            .status()
            .unwrap();
        assert!(status.success());
        let stderr = store.fails(&["load", "-i", archive.to_str().unwrap()]);
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
}
