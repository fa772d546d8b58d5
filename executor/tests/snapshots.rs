//! Unpacking layers into snapshots: overlayfs form, safety against hostile
//! layers, and concurrent preparation.

mod common;

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::scratch;
use kiln_executor::{Error, RootfsView, Snapshotter};

/// Builds a tar from (path, kind, contents or link target).
fn tar_of(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, kind, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_mode(if *kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_mtime(1_600_000_000);
        header.set_uid(0);
        header.set_gid(0);
        // Bypass the tar crate's own path checks: hostile layers are not polite.
        let name = header.as_old_mut().name.as_mut();
        name[..path.len()].copy_from_slice(path.as_bytes());
        match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                header.set_link_name(data).unwrap();
                header.set_size(0);
                header.set_cksum();
                builder.append(&header, io::empty()).unwrap();
            }
            _ => {
                header.set_size(data.len() as u64);
                header.set_cksum();
                builder.append(&header, data.as_bytes()).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

fn prepare(
    snapshots: &Snapshotter,
    id: &str,
    tar: &[u8],
) -> kiln_executor::Result<std::path::PathBuf> {
    snapshots.prepare(id, || Ok::<_, io::Error>(tar))
}

#[test]
fn whiteouts_and_opaque_markers_become_overlayfs_form() {
    let dir = scratch();
    let snapshots = Snapshotter::new(dir.path().join("s")).unwrap();
    let base = prepare(
        &snapshots,
        "sha256:base",
        &tar_of(&[
            ("etc/", tar::EntryType::Directory, ""),
            ("etc/a", tar::EntryType::Regular, "a"),
            ("etc/b", tar::EntryType::Regular, "b"),
            ("opt/", tar::EntryType::Directory, ""),
            ("opt/old", tar::EntryType::Regular, "old"),
        ]),
    )
    .unwrap();
    let top = prepare(
        &snapshots,
        "sha256:top",
        &tar_of(&[
            ("etc/.wh.a", tar::EntryType::Regular, ""),
            ("opt/.wh..wh..opq", tar::EntryType::Regular, ""),
            ("opt/new", tar::EntryType::Regular, "new"),
        ]),
    )
    .unwrap();
    let whiteout = fs::symlink_metadata(top.join("etc/a")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    assert_eq!(
        xattr::get(top.join("opt"), "trusted.overlay.opaque")
            .unwrap()
            .unwrap(),
        b"y"
    );
    assert!(!top.join("opt/.wh..wh..opq").exists());
    let view = RootfsView::new(&[base, top]);
    assert_eq!(view.read_dir("/etc").unwrap().unwrap(), vec!["b"]);
    assert_eq!(view.read_dir("/opt").unwrap().unwrap(), vec!["new"]);
}

#[test]
fn hostile_layers_cannot_write_outside_the_snapshot() {
    let dir = scratch();
    let outside = dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let snapshots = Snapshotter::new(dir.path().join("s")).unwrap();

    // `..` is clamped at the snapshot root, as containerd does.
    let climbing = prepare(
        &snapshots,
        "sha256:climb",
        &tar_of(&[
            ("../../outside/evil", tar::EntryType::Regular, "x"),
            ("/abs", tar::EntryType::Regular, "y"),
        ]),
    )
    .unwrap();
    assert!(climbing.join("outside/evil").is_file());
    assert!(climbing.join("abs").is_file());

    // A symlink to outside, then a file through it.
    let through_symlink = tar_of(&[
        ("link", tar::EntryType::Symlink, outside.to_str().unwrap()),
        ("link/evil", tar::EntryType::Regular, "x"),
    ]);
    assert!(matches!(
        prepare(&snapshots, "sha256:symlink", &through_symlink),
        Err(Error::BadLayer { .. })
    ));

    // A relative symlink climbing out, then a file through it.
    let relative = tar_of(&[
        ("up", tar::EntryType::Symlink, "../../../.."),
        ("up/evil", tar::EntryType::Regular, "x"),
    ]);
    assert!(matches!(
        prepare(&snapshots, "sha256:relative", &relative),
        Err(Error::BadLayer { .. })
    ));

    // A hard link to a host file.
    let hardlink = tar_of(&[("passwd", tar::EntryType::Link, "/etc/passwd")]);
    assert!(matches!(
        prepare(&snapshots, "sha256:hardlink", &hardlink),
        Err(Error::BadLayer { .. })
    ));
    let hardlink_up = tar_of(&[("passwd", tar::EntryType::Link, "../../../../etc/passwd")]);
    assert!(prepare(&snapshots, "sha256:hardlink-up", &hardlink_up).is_err());

    // A whiteout through a symlink.
    let whiteout = tar_of(&[
        ("link", tar::EntryType::Symlink, outside.to_str().unwrap()),
        ("link/.wh.x", tar::EntryType::Regular, ""),
    ]);
    assert!(prepare(&snapshots, "sha256:whiteout", &whiteout).is_err());

    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "something was written outside"
    );
    // Failed unpacks leave neither a snapshot nor temporary directories behind.
    let names: Vec<String> = fs::read_dir(snapshots.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n == ".locks" || n == ".boot" || n == ".spread" || n == "sha256_climb"),
        "{names:?}"
    );
}

#[test]
fn entries_replace_earlier_ones_of_another_type() {
    let dir = scratch();
    let snapshots = Snapshotter::new(dir.path().join("s")).unwrap();
    let snapshot = prepare(
        &snapshots,
        "sha256:replace",
        &tar_of(&[
            ("thing/", tar::EntryType::Directory, ""),
            ("thing/inner", tar::EntryType::Regular, "x"),
            ("thing", tar::EntryType::Regular, "now a file"),
            ("other", tar::EntryType::Regular, "file"),
            ("other/", tar::EntryType::Directory, ""),
        ]),
    )
    .unwrap();
    assert_eq!(
        fs::read_to_string(snapshot.join("thing")).unwrap(),
        "now a file"
    );
    assert!(snapshot.join("other").is_dir());
}

#[test]
fn prepare_unpacks_once_under_concurrency() {
    let dir = scratch();
    let snapshots = Arc::new(Snapshotter::new(dir.path().join("s")).unwrap());
    let opened = Arc::new(AtomicUsize::new(0));
    let tar = Arc::new(tar_of(&[("file", tar::EntryType::Regular, "content")]));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (snapshots, opened, tar) = (snapshots.clone(), opened.clone(), tar.clone());
            std::thread::spawn(move || {
                snapshots
                    .prepare("sha256:shared", || {
                        opened.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        Ok::<_, io::Error>(io::Cursor::new(tar.to_vec()))
                    })
                    .unwrap()
            })
        })
        .collect();
    let paths: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(opened.load(Ordering::SeqCst), 1);
    assert!(paths.iter().all(|p| p == &paths[0]));
    assert_eq!(
        fs::read_to_string(paths[0].join("file")).unwrap(),
        "content"
    );
}

#[test]
fn a_snapshot_made_in_an_earlier_boot_is_unpacked_again() {
    let dir = scratch();
    let root = dir.path().join("s");
    let snapshots = Snapshotter::new(&root).unwrap();
    let tar = tar_of(&[("file", tar::EntryType::Regular, "content")]);
    let opened = AtomicUsize::new(0);
    let prepare = || {
        snapshots
            .prepare("sha256:layer", || {
                opened.fetch_add(1, Ordering::SeqCst);
                Ok::<_, io::Error>(io::Cursor::new(tar.clone()))
            })
            .unwrap()
    };
    let path = prepare();
    prepare();
    assert_eq!(opened.load(Ordering::SeqCst), 1, "same boot: unpacked once");
    assert!(snapshots.exists("sha256:layer").unwrap());

    // As if the machine had crashed after unpacking: another boot's marker,
    // and a file that lost its data.
    let marker = root.join(".boot").join(path.file_name().unwrap());
    let this_boot = fs::read_to_string(&marker).unwrap();
    fs::write(&marker, "an-earlier-boot").unwrap();
    fs::write(path.join("file"), "").unwrap();
    assert!(!snapshots.exists("sha256:layer").unwrap());
    assert_eq!(prepare(), path);
    assert_eq!(opened.load(Ordering::SeqCst), 2, "unpacked again");
    assert_eq!(fs::read_to_string(path.join("file")).unwrap(), "content");
    assert_eq!(fs::read_to_string(&marker).unwrap(), this_boot);

    // A snapshot whose marker a crash lost (markers are not fsynced) is
    // not used either.
    fs::remove_file(&marker).unwrap();
    fs::write(path.join("file"), "").unwrap();
    assert!(!snapshots.exists("sha256:layer").unwrap());
    assert_eq!(prepare(), path);
    assert_eq!(opened.load(Ordering::SeqCst), 3, "unpacked again");
    assert_eq!(fs::read_to_string(path.join("file")).unwrap(), "content");
    assert_eq!(fs::read_to_string(&marker).unwrap(), this_boot);
    // Leftovers of the replacement are gone.
    let leftovers: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn open_errors_and_bad_ids_are_reported() {
    let dir = scratch();
    let snapshots = Snapshotter::new(dir.path().join("s")).unwrap();
    let err = snapshots
        .prepare("sha256:missing", || {
            Err::<&[u8], _>(io::Error::new(io::ErrorKind::NotFound, "blob gone"))
        })
        .unwrap_err();
    assert!(err.to_string().contains("blob gone"), "{err}");
    assert!(!snapshots.exists("sha256:missing").unwrap());
    assert!(matches!(
        snapshots.path("../etc"),
        Err(Error::InvalidChainId(_))
    ));
    let truncated = &tar_of(&[("file", tar::EntryType::Regular, "content")])[..600];
    assert!(prepare(&snapshots, "sha256:truncated", truncated).is_err());
    assert!(!Path::new(&snapshots.path("sha256:truncated").unwrap()).exists());
}

/// A layer with every kind of entry and metadata the unpacker handles:
/// owners, setuid and odd modes, mtimes, xattrs, symlinks, hard links,
/// devices, FIFOs, whiteouts, an opaque directory, an entry that replaces an
/// earlier one, and files large enough to span many stream chunks.
fn rich_layer() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, owner: u64, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(owner);
        header.set_gid(owner + 1);
        header.set_mtime(1_500_000_000 + owner);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append_data(&mut header, path, data).unwrap();
    };
    add("etc/", tar::EntryType::Directory, 0o755, 0, b"");
    add(
        "etc/passwd",
        tar::EntryType::Regular,
        0o644,
        0,
        b"root:x:0:0\n",
    );
    add("etc/.wh.gone", tar::EntryType::Regular, 0o644, 0, b"");
    add("opt/", tar::EntryType::Directory, 0o1777, 5, b"");
    add("opt/.wh..wh..opq", tar::EntryType::Regular, 0o644, 0, b"");
    add("bin/", tar::EntryType::Directory, 0o555, 0, b"");
    add("bin/su", tar::EntryType::Regular, 0o4755, 0, b"setuid");
    add("secret", tar::EntryType::Regular, 0o000, 7, b"hidden");
    add("fifo", tar::EntryType::Fifo, 0o600, 3, b"");
    add("replaced", tar::EntryType::Regular, 0o644, 0, b"first");
    add("replaced", tar::EntryType::Regular, 0o640, 9, b"second");
    for (dir, size) in [("big", 3 << 20), ("many", 1000)] {
        add(
            &format!("{dir}/"),
            tar::EntryType::Directory,
            0o750,
            1000,
            b"",
        );
        for n in 0..40u8 {
            let data: Vec<u8> = (0..size).map(|i| (i as u8) ^ n).collect();
            add(
                &format!("{dir}/f{n}"),
                tar::EntryType::Regular,
                0o644,
                1000,
                &data,
            );
        }
    }
    let plain = |kind: tar::EntryType, mode: u32, mtime: u64| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(mtime);
        header.set_size(0);
        header
    };
    let mut header = plain(tar::EntryType::Char, 0o666, 1_500_000_000);
    header.set_device_major(1).unwrap();
    header.set_device_minor(3).unwrap();
    header.set_cksum();
    builder
        .append_data(&mut header, "null", io::empty())
        .unwrap();
    let mut header = plain(tar::EntryType::Symlink, 0o777, 1_400_000_000);
    header.set_cksum();
    builder
        .append_link(&mut header, "etc/link", "passwd")
        .unwrap();
    let mut header = plain(tar::EntryType::Link, 0o644, 0);
    header.set_cksum();
    builder
        .append_link(&mut header, "bin/su-again", "bin/su")
        .unwrap();
    builder
        .append_pax_extensions([
            ("SCHILY.xattr.user.note", b"kept".as_slice()),
            (
                "SCHILY.xattr.security.capability",
                b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            ),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
        ])
        .unwrap();
    let mut header = plain(tar::EntryType::Regular, 0o755, 1_300_000_000);
    header.set_size(4);
    header.set_cksum();
    builder
        .append_data(&mut header, "bin/ping", b"ping".as_slice())
        .unwrap();
    builder.into_inner().unwrap()
}

/// Files with the creator's owner and a plain mode are created that way;
/// the rest are changed after, and a setgid directory's group is never
/// taken for the creator's.
#[test]
fn files_get_their_exact_owners_and_modes_beside_setgid_directories() {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, uid: u64, gid: u64| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(1_500_000_000);
        let data: &[u8] = if kind.is_dir() { b"" } else { b"data" };
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append_data(&mut header, path, data).unwrap();
    };
    use tar::EntryType::{Directory, Regular};
    add("plain/", Directory, 0o755, 0, 0);
    // Enough files for the pool to take over.
    for n in 0..40 {
        add(&format!("plain/f{n}"), Regular, 0o644, 0, 0);
    }
    add("plain/group-writable", Regular, 0o666, 0, 0);
    add("plain/other-owner", Regular, 0o600, 5, 6);
    add("plain/setuid", Regular, 0o4755, 0, 0);
    add("shared/", Directory, 0o2775, 0, 50);
    for n in 0..40 {
        add(&format!("shared/f{n}"), Regular, 0o644, 0, 0);
    }
    add("shared/sub/g", Regular, 0o644, 0, 0);
    let layer = builder.into_inner().unwrap();

    // And the whole store under a setgid directory of another group.
    let dir = scratch();
    let parent = dir.path().join("group-store");
    fs::create_dir(&parent).unwrap();
    std::os::unix::fs::chown(&parent, None, Some(60)).unwrap();
    fs::set_permissions(
        &parent,
        std::os::unix::fs::PermissionsExt::from_mode(0o2775),
    )
    .unwrap();
    for root in [dir.path().join("s"), parent.join("s")] {
        let snapshots = Snapshotter::new(&root).unwrap();
        let snapshot = prepare(&snapshots, "sha256:owners", &layer).unwrap();
        let meta = |path: &str| {
            let meta = fs::symlink_metadata(snapshot.join(path)).unwrap();
            (meta.mode() & 0o7777, meta.uid(), meta.gid())
        };
        for n in 0..40 {
            assert_eq!(meta(&format!("plain/f{n}")), (0o644, 0, 0), "{root:?}");
            assert_eq!(meta(&format!("shared/f{n}")), (0o644, 0, 0), "{root:?}");
        }
        assert_eq!(meta("plain/group-writable"), (0o666, 0, 0));
        assert_eq!(meta("plain/other-owner"), (0o600, 5, 6));
        assert_eq!(meta("plain/setuid"), (0o4755, 0, 0));
        assert_eq!(meta("shared"), (0o2775, 0, 50));
        assert_eq!(meta("shared/sub/g"), (0o644, 0, 0));
    }
}

#[test]
fn a_streamed_snapshot_is_the_unpacked_one() {
    let dir = scratch();
    let root = dir.path().join("s");
    let snapshots = Snapshotter::new(&root).unwrap();
    let layer = rich_layer();
    let unpacked = prepare(&snapshots, "sha256:unpacked", &layer).unwrap();

    let mut stream = snapshots.stream();
    // Written in uneven pieces, as a tar writer does.
    for piece in layer.chunks(7_919) {
        io::Write::write_all(&mut stream, piece).unwrap();
    }
    assert!(!snapshots.exists("sha256:streamed").unwrap());
    let streamed = stream.finish("sha256:streamed").unwrap();
    assert_eq!(streamed, snapshots.path("sha256:streamed").unwrap());
    assert!(snapshots.exists("sha256:streamed").unwrap());

    let expected = common::tree_listing(&unpacked);
    assert!(expected.contains("bin/su 0o104755 0:1"), "{expected}");
    assert!(expected.contains("user.note=kept"), "{expected}");
    assert!(expected.contains("trusted.overlay.opaque=y"), "{expected}");
    let listing = common::tree_listing(&streamed);
    assert!(
        listing == expected,
        "{}",
        common::listing_diff(&listing, &expected)
    );
    // A stream is marked for its boot like any snapshot, and nothing of
    // its work is left beside the snapshots.
    assert!(root.join(".boot/sha256_streamed").is_file());
    assert_eq!(common::temp_leftovers(&root), Vec::<String>::new());
}

#[test]
fn streams_that_end_early_or_lose_a_race_leave_one_snapshot_and_no_work() {
    let dir = scratch();
    let root = dir.path().join("s");
    let snapshots = Snapshotter::new(&root).unwrap();
    let layer = rich_layer();

    // Dropped unfinished (the layer's step failed): nothing is named.
    let mut stream = snapshots.stream();
    io::Write::write_all(&mut stream, &layer[..layer.len() / 2]).unwrap();
    drop(stream);
    assert_eq!(common::temp_leftovers(&root), Vec::<String>::new());

    // A truncated layer: finish reports the unpacker's error.
    let mut stream = snapshots.stream();
    io::Write::write_all(&mut stream, &layer[..layer.len() / 2]).unwrap();
    assert!(stream.finish("sha256:cut").is_err());
    assert!(!snapshots.exists("sha256:cut").unwrap());
    assert_eq!(common::temp_leftovers(&root), Vec::<String>::new());

    // Another maker was first: theirs is kept, the stream's work removed.
    let first = prepare(
        &snapshots,
        "sha256:both",
        &tar_of(&[("mine", tar::EntryType::Regular, "1")]),
    )
    .unwrap();
    let mut stream = snapshots.stream();
    io::Write::write_all(&mut stream, &layer).unwrap();
    assert_eq!(stream.finish("sha256:both").unwrap(), first);
    assert!(first.join("mine").is_file());
    assert!(!first.join("etc").exists());
    assert_eq!(common::temp_leftovers(&root), Vec::<String>::new());
}

/// The pool's workers hold the directory they last wrote in open: one
/// replaced since (whited out, made again) gets the later files, not the
/// removed one.
#[test]
fn files_land_in_a_directory_made_again_not_the_removed_one() {
    let dir = scratch();
    let snapshots = Snapshotter::new(dir.path().join("s")).unwrap();
    let mut entries: Vec<(String, tar::EntryType, String)> = Vec::new();
    for round in 0..3 {
        entries.push(("d/".into(), tar::EntryType::Directory, String::new()));
        for n in 0..100 {
            entries.push((
                format!("d/f{round}-{n}"),
                tar::EntryType::Regular,
                n.to_string(),
            ));
        }
        if round < 2 {
            entries.push((".wh.d".into(), tar::EntryType::Regular, String::new()));
        }
    }
    let entries: Vec<(&str, tar::EntryType, &str)> = entries
        .iter()
        .map(|(p, k, d)| (p.as_str(), *k, d.as_str()))
        .collect();
    let snapshot = prepare(&snapshots, "sha256:again", &tar_of(&entries)).unwrap();
    let mut names: Vec<String> = fs::read_dir(snapshot.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut expected: Vec<String> = (0..100).map(|n| format!("f2-{n}")).collect();
    expected.sort();
    assert_eq!(names, expected);
    assert_eq!(fs::read_to_string(snapshot.join("d/f2-42")).unwrap(), "42");
}

#[test]
fn later_entries_wait_for_the_files_still_being_written() {
    let dir = scratch();
    let snapshots = Snapshotter::new(dir.path().join("s")).unwrap();
    let mut entries: Vec<(String, tar::EntryType, String)> =
        vec![("gone/".into(), tar::EntryType::Directory, String::new())];
    for n in 0..300 {
        entries.push((format!("gone/f{n}"), tar::EntryType::Regular, n.to_string()));
        entries.push((format!("kept/f{n}"), tar::EntryType::Regular, n.to_string()));
    }
    entries.extend([
        // A directory full of files just handed out becomes a symlink.
        ("gone".into(), tar::EntryType::Symlink, "kept".into()),
        // A file just handed out: linked, whited out, replaced, made a parent.
        ("link".into(), tar::EntryType::Link, "kept/f299".into()),
        (
            "kept/.wh.f298".into(),
            tar::EntryType::Regular,
            String::new(),
        ),
        ("kept/f297".into(), tar::EntryType::Regular, "again".into()),
        ("kept/f296".into(), tar::EntryType::Directory, String::new()),
        (
            "kept/f296/inside".into(),
            tar::EntryType::Regular,
            "in".into(),
        ),
    ]);
    let borrowed: Vec<(&str, tar::EntryType, &str)> = entries
        .iter()
        .map(|(p, k, d)| (p.as_str(), *k, d.as_str()))
        .collect();
    let snapshot = prepare(&snapshots, "sha256:races", &tar_of(&borrowed)).unwrap();
    assert_eq!(
        fs::read_link(snapshot.join("gone")).unwrap(),
        Path::new("kept")
    );
    assert_eq!(fs::read_to_string(snapshot.join("link")).unwrap(), "299");
    assert_eq!(
        fs::metadata(snapshot.join("link")).unwrap().ino(),
        fs::metadata(snapshot.join("kept/f299")).unwrap().ino()
    );
    assert!(fs::symlink_metadata(snapshot.join("kept/f298"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(
        fs::read_to_string(snapshot.join("kept/f297")).unwrap(),
        "again"
    );
    assert_eq!(
        fs::read_to_string(snapshot.join("kept/f296/inside")).unwrap(),
        "in"
    );
    assert_eq!(fs::read_to_string(snapshot.join("kept/f0")).unwrap(), "0");
    assert_eq!(fs::read_dir(snapshot.join("kept")).unwrap().count(), 300);
}

/// Reads a layer and notes which threads read it.
struct Watched<R> {
    inner: R,
    readers: Arc<std::sync::Mutex<Vec<std::thread::ThreadId>>>,
}

impl<R: io::Read> io::Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Ok(mut readers) = self.readers.lock() {
            readers.push(std::thread::current().id());
        }
        self.inner.read(buf)
    }
}

#[test]
fn layers_are_read_on_a_thread_of_their_own() {
    let dir = scratch();
    let snapshots = Snapshotter::new(dir.path().join("s")).unwrap();
    let readers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let layer = rich_layer();
    let snapshot = snapshots
        .prepare("sha256:ahead", || {
            Ok::<_, io::Error>(Watched {
                inner: io::Cursor::new(layer.clone()),
                readers: readers.clone(),
            })
        })
        .unwrap();
    // Decompression (the reader) overlaps file creation (this thread).
    let readers = readers.lock().unwrap();
    assert!(!readers.is_empty());
    assert!(readers.iter().all(|id| *id != std::thread::current().id()));
    let listing = common::tree_listing(&snapshot);
    assert!(listing.contains("bin/su 0o104755 0:1"), "{listing}");
}

#[test]
fn a_large_layer_is_unpacked_apart_and_lands_where_a_small_one_would() {
    let dir = scratch();
    let root = dir.path().join("s");
    let snapshots = Snapshotter::new(&root).unwrap();
    let tar = tar_of(&[
        ("etc/", tar::EntryType::Directory, ""),
        ("etc/hostname", tar::EntryType::Regular, "kiln"),
        ("bin/", tar::EntryType::Directory, ""),
        ("bin/sh", tar::EntryType::Symlink, "busybox"),
    ]);
    let open = || Ok::<_, io::Error>(io::Cursor::new(tar.clone()));
    let small = snapshots.prepare("sha256:small", open).unwrap();
    let large = snapshots
        .prepare_sized("sha256:large", 64 << 20, open)
        .unwrap();
    assert_eq!(large, root.join("sha256_large"));
    assert_eq!(
        kiln_testsupport::tree::tree_listing(&small),
        kiln_testsupport::tree::tree_listing(&large)
    );
    assert!(snapshots.exists("sha256:large").unwrap());
    // Filled under .spread/, renamed out of it: nothing is left there.
    let left: Vec<_> = fs::read_dir(root.join(".spread")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_streamed_layer_of_more_than_a_chunk_is_the_unpacked_one() {
    use std::io::Write;
    let dir = scratch();
    let root = dir.path().join("s");
    let snapshots = Snapshotter::new(&root).unwrap();
    // 3 MiB of files: the stream starts its directory apart, with the first
    // full chunk.
    let body = "x".repeat(64 << 10);
    let names: Vec<String> = (0..48).map(|n| format!("data/f{n}")).collect();
    let mut entries = vec![("data/", tar::EntryType::Directory, "")];
    entries.extend(
        names
            .iter()
            .map(|n| (n.as_str(), tar::EntryType::Regular, body.as_str())),
    );
    let tar = tar_of(&entries);
    assert!(tar.len() > 2 << 20);
    let mut stream = snapshots.stream();
    stream.write_all(&tar).unwrap();
    let streamed = stream.finish("sha256:big-streamed").unwrap();
    let unpacked = snapshots
        .prepare("sha256:big-unpacked", || {
            Ok::<_, io::Error>(io::Cursor::new(tar.clone()))
        })
        .unwrap();
    assert_eq!(
        kiln_testsupport::tree::tree_listing(&streamed),
        kiln_testsupport::tree::tree_listing(&unpacked)
    );
    let left: Vec<_> = fs::read_dir(root.join(".spread")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}
