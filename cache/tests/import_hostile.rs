//! Hostile and untidy archives given to `import_tar`: each case in
//! testdata/import/<case>/ holds the expected outcome (the layer's entries and
//! what was cleaned, or the error). `UPDATE_EXPECT=1` rewrites them.

use std::io::Read;
use std::path::PathBuf;

use kiln_cache::{import_tar, Compression, Store};

/// One tar member, with its name written byte for byte (no cleaning by the
/// tar crate, so `..` and absolute names reach the importer).
struct Member {
    name: &'static str,
    kind: tar::EntryType,
    link: &'static str,
    data: &'static [u8],
}

fn file(name: &'static str, data: &'static [u8]) -> Member {
    Member {
        name,
        kind: tar::EntryType::Regular,
        link: "",
        data,
    }
}
fn dir(name: &'static str) -> Member {
    Member {
        name,
        kind: tar::EntryType::Directory,
        link: "",
        data: b"",
    }
}
fn symlink(name: &'static str, link: &'static str) -> Member {
    Member {
        name,
        kind: tar::EntryType::Symlink,
        link,
        data: b"",
    }
}
fn hardlink(name: &'static str, link: &'static str) -> Member {
    Member {
        name,
        kind: tar::EntryType::Link,
        link,
        data: b"",
    }
}

fn archive(members: &[Member]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for member in members {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(member.kind);
        header.set_mode(if member.kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_size(member.data.len() as u64);
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..member.name.len()].copy_from_slice(member.name.as_bytes());
        gnu.linkname[..member.link.len()].copy_from_slice(member.link.as_bytes());
        header.set_cksum();
        builder.append(&header, member.data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn cases() -> Vec<(&'static str, Vec<Member>)> {
    vec![
        (
            "tidy",
            vec![
                dir("./"),
                dir("./etc/"),
                file("./etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
                symlink("./bin", "usr/bin"),
            ],
        ),
        (
            "absolute-names",
            vec![dir("/etc/"), file("/etc/hostname", b"kiln\n")],
        ),
        ("dot-dot", vec![dir("etc/"), file("etc/../../escape", b"x")]),
        ("dot-dot-inside", vec![dir("a/"), file("a/../b", b"x")]),
        (
            "through-symlink",
            vec![symlink("etc", "/etc"), file("etc/shadow", b"x")],
        ),
        (
            "through-symlink-dir",
            vec![
                dir("usr/"),
                symlink("usr/lib", "../../../host"),
                dir("usr/lib/x/"),
            ],
        ),
        (
            "duplicate-file",
            vec![file("a", b"first"), file("a", b"second")],
        ),
        (
            "duplicate-dir",
            vec![dir("d/"), file("d/f", b"x"), dir("d/")],
        ),
        ("file-then-dir", vec![file("x", b"x"), dir("x/")]),
        ("parent-is-file", vec![file("x", b"x"), file("x/y", b"y")]),
        (
            "hardlink-forward",
            vec![hardlink("a", "b"), file("b", b"b")],
        ),
        ("hardlink-escape", vec![hardlink("a", "../../etc/passwd")]),
        (
            "hardlink-ok",
            vec![
                file("usr/bin/gzip", b"binary"),
                hardlink("bin/gunzip", "usr/bin/gzip"),
            ],
        ),
        ("truncated", vec![file("big", b"only part")]),
        (
            "symlink-after-children",
            vec![file("etc/shadow", b"x"), symlink("etc", "/host/etc")],
        ),
    ]
}

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/import")
}

fn outcome(store: &Store, name: &str, bytes: Vec<u8>) -> String {
    let bytes = if name == "truncated" {
        // Cut the archive inside the data of its only member.
        bytes[..512 + 4].to_vec()
    } else {
        bytes
    };
    match import_tar(store, &bytes[..], Compression::Gzip) {
        Err(e) => format!("error: {e}\n"),
        Ok(imported) => {
            let mut out = String::from("ok\n");
            let mut layer = Vec::new();
            store
                .open_layer(&imported.layer.descriptor)
                .unwrap()
                .read_to_end(&mut layer)
                .unwrap();
            let mut archive = tar::Archive::new(&layer[..]);
            for entry in archive.entries().unwrap() {
                let entry = entry.unwrap();
                let link = entry
                    .link_name()
                    .unwrap()
                    .map(|l| format!(" -> {}", l.display()))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "{:?} {}{link} ({} bytes)\n",
                    entry.header().entry_type(),
                    entry.path().unwrap().display(),
                    entry.size()
                ));
            }
            for line in imported.cleaned {
                out.push_str(&format!("cleaned {line}\n"));
            }
            out
        }
    }
}

#[test]
fn hostile_archives_are_cleaned_or_refused() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    for (name, members) in cases() {
        let actual = outcome(&store, name, archive(&members));
        let path = testdata().join(name).join("expected");
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{} is missing; run with UPDATE_EXPECT=1", path.display()));
        if expected != actual {
            failures.push(format!(
                "{name}:\n--- expected\n{expected}--- actual\n{actual}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Whatever the input did, nothing but blobs and temporary files was written.
    assert!(store.fsck(false).unwrap().is_clean());
}
