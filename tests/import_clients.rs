//! `kiln import` end to end, checked with the real clients: skopeo reads the
//! store as an OCI layout and sees the right architecture, umoci unpacks it.

use kiln_testsupport::run::{client, output_with_stdin};
use kiln_testsupport::store::{fixture, skopeo_inspect, Store};

#[test]
fn mips64el_rootfs_is_detected_and_skopeo_and_umoci_read_it() {
    let store = Store::new();
    let out = store
        .command(&[
            "import",
            fixture("busybox-mips64el.tar").to_str().unwrap(),
            "mips/busybox:1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "detected linux/mips64le from /bin/busybox (ELF 64-bit LSB, machine 8 (MIPS)"
        ),
        "{stderr}"
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");

    let root = store.root();
    let inspected = skopeo_inspect(&format!("oci:{}:mips/busybox:1", root.display()));
    assert_eq!(inspected["Architecture"], "mips64le");
    assert_eq!(inspected["Os"], "linux");
    assert_eq!(
        inspected["Digest"],
        id.as_str(),
        "the id is the manifest digest"
    );

    let bundle = store.path("bundle");
    client(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:mips/busybox:1", root.display()),
            bundle.to_str().unwrap(),
        ],
    );
    let passwd = std::fs::read_to_string(bundle.join("rootfs/etc/passwd")).unwrap();
    assert!(passwd.contains("app:x:1000:"), "{passwd}");
    let busybox = std::fs::read(bundle.join("rootfs/bin/busybox")).unwrap();
    assert_eq!(&busybox[..4], b"\x7fELF");
    assert_eq!(
        std::fs::read_link(bundle.join("rootfs/bin/sh"))
            .unwrap()
            .to_str()
            .unwrap(),
        "busybox"
    );
}

#[test]
fn amd64_rootfs_is_detected_and_config_changes_apply() {
    let store = Store::new();
    let id = store
        .ok(&[
            "import",
            "-c",
            "CMD [\"/bin/sh\", \"-c\", \"echo hi\"]",
            "--change",
            "ENV PATH=/usr/bin:/bin GREETING=hello",
            "-c",
            "HEALTHCHECK --interval=5s CMD true",
            "-c",
            "USER app",
            "-c",
            "EXPOSE 8080/udp",
            "-m",
            "made from busybox",
            fixture("busybox-amd64.tar").to_str().unwrap(),
            "bb",
        ])
        .trim()
        .to_owned();
    let inspected = skopeo_inspect(&format!("oci:{}:bb:latest", store.root().display()));
    assert_eq!(inspected["Architecture"], "amd64");
    let inspect: serde_json::Value = serde_json::from_str(&store.ok(&["inspect", "bb"])).unwrap();
    let image = &inspect[0];
    assert_eq!(image["Id"], id.as_str());
    assert_eq!(image["RepoTags"][0], "bb:latest");
    assert_eq!(image["Platform"], "linux/amd64");
    assert!(image["Size"].as_u64().unwrap() > 500_000);
    let config = &image["Config"]["config"];
    assert_eq!(
        config["Cmd"],
        serde_json::json!(["/bin/sh", "-c", "echo hi"])
    );
    assert_eq!(
        config["Env"],
        serde_json::json!(["PATH=/usr/bin:/bin", "GREETING=hello"])
    );
    assert_eq!(config["User"], "app");
    assert_eq!(config["Healthcheck"]["Interval"], 5_000_000_000u64);
    assert!(config["ExposedPorts"]["8080/udp"].is_object());
    let history: serde_json::Value =
        serde_json::from_str(&store.ok(&["history", "--format", "json", "bb"])).unwrap();
    assert_eq!(history[0]["Comment"], "made from busybox");
    assert_eq!(history[0]["CreatedBy"], "kiln import busybox-amd64.tar");
}

#[test]
fn a_change_other_than_config_is_refused_before_reading_the_input() {
    let store = Store::new();
    let stderr = store.fails(&["import", "-c", "RUN rm -rf /", "/nonexistent.tar", "x"]);
    assert!(stderr.contains("RUN"), "{stderr}");
    assert!(!stderr.contains("nonexistent"), "{stderr}");
}

#[test]
fn platform_names_debian_and_oci_and_disagreement() {
    let store = Store::new();
    let tar = fixture("busybox-mips64el.tar");
    let tar = tar.to_str().unwrap();
    for name in ["mips64el", "linux/mips64le", "mips64le"] {
        store.ok(&["import", "--platform", name, tar, "m"]);
        let inspected = skopeo_inspect(&format!("oci:{}:m:latest", store.root().display()));
        assert_eq!(inspected["Architecture"], "mips64le", "--platform {name}");
    }
    let stderr = store.fails(&["import", "--platform", "amd64", tar, "wrong"]);
    assert!(
        stderr.contains("--platform linux/amd64 disagrees with the rootfs")
            && stderr.contains("/bin/busybox is linux/mips64le")
            && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(store.kiln(&["inspect", "wrong"]).status.code() != Some(0));
    store.ok(&["import", "--force", "--platform", "amd64", tar, "forced"]);
    let inspected = skopeo_inspect(&format!("oci:{}:forced:latest", store.root().display()));
    assert_eq!(inspected["Architecture"], "amd64");
    let stderr = store.fails(&["import", "--platform", "linux/vax", tar, "x"]);
    assert!(stderr.contains("unknown platform"), "{stderr}");
}

#[test]
fn same_input_gives_the_same_id_and_source_date_epoch_sets_created() {
    let first = Store::new();
    let second = Store::new();
    let id1 = first.import("busybox-amd64.tar", "a");
    let id2 = second.import("busybox-amd64.tar", "b:other");
    assert_eq!(id1, id2);
    let dated = first
        .command(&[
            "import",
            fixture("busybox-amd64.tar").to_str().unwrap(),
            "dated",
        ])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(dated.status.success());
    let dated_id = String::from_utf8(dated.stdout).unwrap().trim().to_owned();
    assert_ne!(dated_id, id1);
    let inspected = skopeo_inspect(&format!("oci:{}:dated:latest", first.root().display()));
    assert_eq!(inspected["Created"], "2023-11-14T22:13:20Z");
}

#[test]
fn every_input_compression_stdin_and_directories_give_the_same_layer() {
    let store = Store::new();
    let tar = fixture("busybox-amd64.tar");
    let plain = store.import("busybox-amd64.tar", "plain");
    for (tool, args) in [
        ("gzip", vec!["-c"]),
        ("zstd", vec!["-c", "-q"]),
        ("xz", vec!["-c", "-T1"]),
        ("bzip2", vec!["-c"]),
    ] {
        let compressed = store.path(&format!("rootfs.{tool}"));
        let out = std::process::Command::new(tool)
            .args(&args)
            .arg(&tar)
            .output()
            .unwrap();
        assert!(out.status.success(), "{tool}");
        std::fs::write(&compressed, out.stdout).unwrap();
        let id = store.ok(&["import", compressed.to_str().unwrap(), tool]);
        // The history names the source file, so compare layers, not ids.
        let layer = |name: &str| -> serde_json::Value {
            let v: serde_json::Value = serde_json::from_str(&store.ok(&["inspect", name])).unwrap();
            v[0]["Config"]["rootfs"].clone()
        };
        assert_eq!(layer(tool), layer("plain"), "{tool}");
        assert!(id.starts_with("sha256:"));
    }
    // stdin
    let out = output_with_stdin(
        &mut store.command(&["import", "-", "from-stdin"]),
        &std::fs::read(&tar).unwrap(),
    );
    assert!(out.status.success());
    // a directory: unpacked with tar, imported, unpacked again by umoci
    let dir = store.path("rootfs-dir");
    std::fs::create_dir(&dir).unwrap();
    client(
        "tar",
        &["-xf", tar.to_str().unwrap(), "-C", dir.to_str().unwrap()],
    );
    let out = store
        .command(&["import", dir.to_str().unwrap(), "from-dir"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("detected linux/amd64"), "{stderr}");
    let bundle = store.path("bundle");
    client(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:from-dir:latest", store.root().display()),
            bundle.to_str().unwrap(),
        ],
    );
    assert!(bundle.join("rootfs/bin/busybox").is_file());
    assert_ne!(plain, "");
}

#[test]
fn zstd_and_uncompressed_layers_have_the_right_media_types() {
    let store = Store::new();
    let tar = fixture("busybox-amd64.tar");
    for (compression, media_type) in [
        ("zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
        ("none", "application/vnd.oci.image.layer.v1.tar"),
        ("gzip", "application/vnd.oci.image.layer.v1.tar+gzip"),
    ] {
        store.ok(&[
            "import",
            "--compression",
            compression,
            tar.to_str().unwrap(),
            compression,
        ]);
        let inspect: serde_json::Value =
            serde_json::from_str(&store.ok(&["inspect", compression])).unwrap();
        assert_eq!(inspect[0]["Manifest"]["layers"][0]["mediaType"], media_type);
        let bundle = store.path(&format!("bundle-{compression}"));
        if compression != "zstd" {
            // umoci 0.4 predates zstd layers.
            client(
                "umoci",
                &[
                    "unpack",
                    "--image",
                    &format!("{}:{compression}:latest", store.root().display()),
                    bundle.to_str().unwrap(),
                ],
            );
            assert!(bundle.join("rootfs/etc/passwd").is_file());
        }
    }
    store.assert_fsck_clean();
}

#[test]
fn a_rootfs_without_elf_files_needs_platform() {
    let store = Store::new();
    let dir = store.path("data");
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("etc/motd"), "hello\n").unwrap();
    let stderr = store.fails(&["import", dir.to_str().unwrap(), "data"]);
    assert!(stderr.contains("pass --platform"), "{stderr}");
    store.ok(&[
        "import",
        "--platform",
        "arm64",
        dir.to_str().unwrap(),
        "data",
    ]);
    let inspected = skopeo_inspect(&format!("oci:{}:data:latest", store.root().display()));
    assert_eq!(inspected["Architecture"], "arm64");
}
