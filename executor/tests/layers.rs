//! The diff writer: overlay upper dirs from real steps, and plain directories,
//! turned into OCI layer tars.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::*;
use kiln_executor::{write_dir_layer, DiffOptions, RunSpec, Snapshotter, Upper};
use sha2::{Digest, Sha256};

struct TarEntry {
    path: String,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    mtime: u64,
    link: Option<String>,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn entries(tar_bytes: &[u8]) -> Vec<TarEntry> {
    let mut archive = tar::Archive::new(tar_bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut xattrs = Vec::new();
            if let Some(exts) = e.pax_extensions().unwrap() {
                for ext in exts {
                    let ext = ext.unwrap();
                    if let Some(name) = ext.key().unwrap().strip_prefix("SCHILY.xattr.") {
                        xattrs.push((name.to_owned(), ext.value_bytes().to_vec()));
                    }
                }
            }
            TarEntry {
                path: e.path().unwrap().to_string_lossy().into_owned(),
                kind: e.header().entry_type(),
                mode: e.header().mode().unwrap(),
                uid: e.header().uid().unwrap(),
                mtime: e.header().mtime().unwrap(),
                link: e
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned()),
                xattrs,
            }
        })
        .collect()
}

fn layer(upper: &Upper, options: &DiffOptions) -> Vec<u8> {
    let mut bytes = Vec::new();
    upper.write_layer(&mut bytes, options).unwrap();
    bytes
}

#[test]
fn deletions_become_whiteouts() {
    let out = run(&shell("rm /bin/uname /etc/group && rm -r /var/tmp"));
    assert_eq!(
        out.layer_entries(),
        vec![
            "bin/",
            "bin/.wh.uname",
            "etc/",
            "etc/.wh.group",
            "var/",
            "var/.wh.tmp"
        ]
    );
}

#[test]
fn replaced_directories_are_opaque() {
    // Without network the sandbox binds nothing into /etc, so it can be removed.
    let mut s = shell("rm -r /etc && mkdir /etc && echo new > /etc/only");
    s.network = kiln_executor::Network::None;
    let out = run(&s);
    assert_eq!(
        out.layer_entries(),
        vec!["etc/", "etc/.wh..wh..opq", "etc/only"]
    );
}

#[test]
fn type_changes_symlinks_hardlinks_and_modes() {
    let out = run(&shell(
        "rm /bin/uname && echo script > /bin/uname && ln -s /bin/busybox /usr/bin/bb && \
         echo data > /tmp/a && ln /tmp/a /tmp/b && chmod 4755 /tmp/a && chmod 0750 /var/tmp && mkdir -m 1777 /shared && \
         echo x > /tmp/owned && chown 1000:1000 /tmp/owned",
    ));
    let tar = layer(out.upper(), &DiffOptions::default());
    let all = entries(&tar);
    let find = |p: &str| {
        all.iter().find(|e| e.path == p).unwrap_or_else(|| {
            panic!(
                "no {p} in {:?}",
                all.iter().map(|e| &e.path).collect::<Vec<_>>()
            )
        })
    };
    assert_eq!(find("bin/uname").kind, tar::EntryType::Regular);
    let link = find("usr/bin/bb");
    assert_eq!(
        (link.kind, link.link.as_deref()),
        (tar::EntryType::Symlink, Some("/bin/busybox"))
    );
    let a = find("tmp/a");
    assert_eq!((a.kind, a.mode), (tar::EntryType::Regular, 0o4755));
    let b = find("tmp/b");
    assert_eq!(
        (b.kind, b.link.as_deref()),
        (tar::EntryType::Link, Some("tmp/a"))
    );
    assert_eq!(find("var/tmp/").mode, 0o750);
    assert_eq!(find("shared/").mode, 0o1777);
    assert_eq!(find("tmp/owned").uid, 1000);
    // Sorted, parents before children.
    let paths: Vec<&str> = all.iter().map(|e| e.path.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort_by(|x, y| {
        x.trim_end_matches('/')
            .split('/')
            .cmp(y.trim_end_matches('/').split('/'))
    });
    assert_eq!(paths, sorted);
}

#[test]
fn same_step_gives_the_same_digest_with_source_date_epoch() {
    let step = shell("mkdir -p /app/sub && echo hello > /app/sub/file && ln -s file /app/sub/link && rm /etc/group");
    let options = DiffOptions {
        source_date_epoch: Some(1_700_000_000),
        ..DiffOptions::default()
    };
    let digest = |spec: &RunSpec| {
        let out = run(spec);
        let tar = layer(out.upper(), &options);
        assert!(entries(&tar).iter().all(|e| e.mtime <= 1_700_000_000));
        hex::encode(Sha256::digest(&tar))
    };
    let first = digest(&step);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(first, digest(&step));
}

#[test]
fn unchanged_steps_give_empty_layers() {
    let out = run(&shell("cat /etc/passwd > /dev/null"));
    let mut tar = Vec::new();
    let summary = out
        .upper()
        .write_layer(&mut tar, &DiffOptions::default())
        .unwrap();
    assert!(summary.empty);
    assert_eq!(summary.entries, 0);
    assert!(entries(&tar).is_empty());
}

#[test]
fn xattrs_are_kept_but_not_overlay_ones() {
    let dir = scratch();
    let root = dir.path().join("tree");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("bin/ping"), "elf").unwrap();
    // cap_net_raw+ep in the kernel's VFS v2 format.
    let capability = [
        0u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    xattr::set(root.join("bin/ping"), "security.capability", &capability).unwrap();
    xattr::set(root.join("bin/ping"), "user.note", b"kept").unwrap();
    xattr::set(root.join("bin"), "trusted.overlay.impure", b"y").unwrap();
    let mut tar = Vec::new();
    write_dir_layer(&root, &mut tar, &DiffOptions::default()).unwrap();
    let all = entries(&tar);
    assert_eq!(
        all.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
        vec!["bin/", "bin/ping"]
    );
    assert!(all[0].xattrs.is_empty());
    let mut xattrs = all[1].xattrs.clone();
    xattrs.sort();
    assert_eq!(
        xattrs,
        vec![
            ("security.capability".to_owned(), capability.to_vec()),
            ("user.note".to_owned(), b"kept".to_vec())
        ]
    );

    // And they survive unpacking into a snapshot.
    let snapshots = Snapshotter::new(dir.path().join("snapshots")).unwrap();
    let snapshot = snapshots
        .prepare("sha256:xattrs", || Ok::<_, std::io::Error>(tar.as_slice()))
        .unwrap();
    assert_eq!(
        xattr::get(snapshot.join("bin/ping"), "security.capability")
            .unwrap()
            .unwrap(),
        capability
    );
}

#[test]
fn a_socket_is_left_out_with_its_xattrs() {
    let dir = scratch();
    let root = dir.path().join("tree");
    fs::create_dir_all(&root).unwrap();
    // "a.sock" sorts before "b": a record of the socket's would land on b.
    let _listener = std::os::unix::net::UnixListener::bind(root.join("a.sock")).unwrap();
    xattr::set(root.join("a.sock"), "trusted.note", b"socket's").unwrap();
    fs::write(root.join("b"), "file").unwrap();
    let mut tar = Vec::new();
    let summary = write_dir_layer(&root, &mut tar, &DiffOptions::default()).unwrap();
    let all = entries(&tar);
    assert_eq!(
        all.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
        vec!["b"]
    );
    assert!(all[0].xattrs.is_empty(), "{:?}", all[0].xattrs);
    assert_eq!(summary.entries, 1);
}

#[test]
fn plain_directories_keep_owners_modes_and_hardlinks() {
    let dir = scratch();
    let root = dir.path().join("tree");
    fs::create_dir_all(root.join("app")).unwrap();
    fs::write(root.join("app/tool"), "x").unwrap();
    std::os::unix::fs::chown(root.join("app/tool"), Some(1000), Some(1000)).unwrap();
    fs::set_permissions(root.join("app/tool"), fs::Permissions::from_mode(0o2755)).unwrap();
    fs::hard_link(root.join("app/tool"), root.join("app/alias")).unwrap();
    xattr::set(root.join("app/tool"), "user.note", b"kept").unwrap();
    let mut tar = Vec::new();
    let summary = write_dir_layer(
        &root,
        &mut tar,
        &DiffOptions {
            source_date_epoch: Some(10),
            ..DiffOptions::default()
        },
    )
    .unwrap();
    assert_eq!(summary.entries, 3);
    let all = entries(&tar);
    assert_eq!(
        all.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
        vec!["app/", "app/alias", "app/tool"]
    );
    assert_eq!(
        (all[1].kind, all[1].mode, all[1].uid),
        (tar::EntryType::Regular, 0o2755, 1000)
    );
    assert_eq!(
        (all[2].kind, all[2].link.as_deref()),
        (tar::EntryType::Link, Some("app/alias"))
    );
    assert!(all.iter().all(|e| e.mtime == 10));
    // The file's xattrs (read through its descriptor) and the link's.
    let note = [("user.note".to_owned(), b"kept".to_vec())];
    assert_eq!(all[1].xattrs, note);
    assert_eq!(all[2].xattrs, note);
    assert_eq!(fs::metadata(root.join("app/tool")).unwrap().nlink(), 2);
}

#[test]
fn copying_fallback_gives_the_same_layer_as_overlayfs() {
    let script = "rm /bin/uname && rm -r /var/tmp && mkdir -p /app && echo hi > /app/file && chmod 0750 /root && \
                  rm -r /usr && mkdir /usr && echo new > /usr/only && cat /src/input";
    let host = scratch();
    fs::write(host.path().join("input"), "mounted").unwrap();
    let mut step = shell(script);
    step.network = kiln_executor::Network::None;
    step.mounts = vec![kiln_executor::Mount::Bind {
        source: host.path().to_path_buf(),
        target: "/src".into(),
        readonly: true,
    }];
    let overlay = run(&step);
    step.copy_rootfs = true;
    let copied = run(&step);
    assert_eq!(copied.stdout, vec!["mounted"]);
    let expected = vec![
        "app/",
        "app/file",
        "bin/",
        "bin/.wh.uname",
        "root/",
        "usr/",
        "usr/.wh..wh..opq",
        "usr/only",
        "var/",
        "var/.wh.tmp",
    ];
    assert_eq!(overlay.layer_entries(), expected);
    assert_eq!(copied.layer_entries(), expected);
}

#[test]
fn extra_files_are_written_from_their_source_in_tar_order() {
    let dir = scratch();
    let root = dir.path().join("tree");
    fs::create_dir_all(root.join("app/sub")).unwrap();
    fs::write(root.join("app/sub/in-tree"), "tree").unwrap();
    let source = dir.path().join("elsewhere");
    fs::write(&source, "from the source").unwrap();
    std::os::unix::fs::chown(&source, Some(7), Some(8)).unwrap();
    fs::set_permissions(&source, fs::Permissions::from_mode(0o751)).unwrap();
    let extra_file = |path: &std::path::Path| kiln_executor::ExtraFile {
        source: path.to_path_buf(),
        metadata: fs::symlink_metadata(path).unwrap(),
    };
    // In any order: the layer sorts them among the tree's entries.
    let extra = [
        ("app/sub/a-extra".to_owned(), extra_file(&source)),
        ("app/b-extra".to_owned(), extra_file(&source)),
    ];
    let mut tar = Vec::new();
    let summary =
        kiln_executor::write_dir_layer_with(&root, extra, &mut tar, &DiffOptions::default())
            .unwrap();
    assert_eq!(summary.entries, 5);
    let all = entries(&tar);
    assert_eq!(
        all.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
        vec![
            "app/",
            "app/b-extra",
            "app/sub/",
            "app/sub/a-extra",
            "app/sub/in-tree"
        ]
    );
    // Two entries from one source file are two files, not a hard link.
    for extra in [&all[1], &all[3]] {
        assert_eq!(
            (extra.kind, extra.mode, extra.uid),
            (tar::EntryType::Regular, 0o751, 7)
        );
    }
    let mut archive = tar::Archive::new(&tar[..]);
    let mut content = String::new();
    let mut found = archive.entries().unwrap().nth(1).unwrap().unwrap();
    std::io::Read::read_to_string(&mut found, &mut content).unwrap();
    assert_eq!(content, "from the source");
    // Only regular files can be extra.
    let not_a_file = [("app/dir".to_owned(), extra_file(&root.join("app/sub")))];
    assert!(kiln_executor::write_dir_layer_with(
        &root,
        not_a_file,
        &mut Vec::new(),
        &DiffOptions::default()
    )
    .is_err());
}

#[test]
fn extra_files_are_digested_as_they_are_written_when_asked() {
    let dir = scratch();
    let root = dir.path().join("tree");
    fs::create_dir_all(&root).unwrap();
    let small = dir.path().join("small");
    fs::write(&small, "a small file").unwrap();
    // Larger than one read of the tar writer's buffer.
    let large_bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let large = dir.path().join("large");
    fs::write(&large, &large_bytes).unwrap();
    let empty = dir.path().join("empty");
    fs::write(&empty, "").unwrap();
    let linked = dir.path().join("linked");
    fs::hard_link(&small, &linked).unwrap();
    let extra_file = |path: &std::path::Path| kiln_executor::ExtraFile {
        source: path.to_path_buf(),
        metadata: fs::symlink_metadata(path).unwrap(),
    };
    let extra = || {
        [
            ("a".to_owned(), extra_file(&small)),
            ("b".to_owned(), extra_file(&large)),
            ("c".to_owned(), extra_file(&empty)),
            // Another link to `small`: written as a hard link, not read.
            ("d".to_owned(), extra_file(&linked)),
        ]
    };
    let options = DiffOptions {
        digest_extra_files: true,
        ..DiffOptions::default()
    };
    let mut tar = Vec::new();
    let summary = kiln_executor::write_dir_layer_with(&root, extra(), &mut tar, &options).unwrap();
    let blake3 = |bytes: &[u8]| *blake3::hash(bytes).as_bytes();
    assert_eq!(
        summary.extra_digests,
        vec![
            (small.clone(), blake3(b"a small file")),
            (large.clone(), blake3(&large_bytes)),
            (empty.clone(), blake3(b"")),
        ]
    );
    // The tar is the one written without digests.
    let mut plain = Vec::new();
    let summary =
        kiln_executor::write_dir_layer_with(&root, extra(), &mut plain, &DiffOptions::default())
            .unwrap();
    assert!(summary.extra_digests.is_empty());
    assert_eq!(tar, plain);
    assert_eq!(entries(&tar)[3].kind, tar::EntryType::Link);
}
