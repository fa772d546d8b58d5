//! End-to-end: `--output type=local` writes what the image holds (modes,
//! device nodes, FIFOs), and ADD unpacks a tar's special files as such and
//! refuses entries that climb out with `..`. Needs root, as kiln does.

mod build_common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use build_common::Env;

fn mode(path: &Path) -> u32 {
    path.symlink_metadata().unwrap().mode() & 0o7777
}

/// (major, minor) of a device node.
fn device(path: &Path) -> (u64, u64) {
    let rdev = path.symlink_metadata().unwrap().rdev();
    (
        (rdev >> 8) & 0xfff,
        (rdev & 0xff) | ((rdev >> 12) & 0xfff00),
    )
}

#[test]
fn local_output_keeps_directory_modes_devices_and_fifos() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\n\
             RUN mkdir -m 1777 /sticky && mkdir -m 2750 /setgid \
             && mknod -m 666 /cdev c 1 3 && mknod -m 660 /bdev b 7 0 \
             && mkfifo -m 640 /fifo\n",
        )],
    );
    let fs = env.export(&ctx, &[]);
    assert_eq!(mode(&fs.join("tmp")), 0o1777);
    assert_eq!(mode(&fs.join("sticky")), 0o1777);
    assert_eq!(mode(&fs.join("setgid")), 0o2750);
    let cdev = fs.join("cdev");
    assert!(cdev
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!((device(&cdev), mode(&cdev)), ((1, 3), 0o666));
    let bdev = fs.join("bdev");
    assert!(bdev
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_block_device());
    assert_eq!((device(&bdev), mode(&bdev)), ((7, 0), 0o660));
    let fifo = fs.join("fifo");
    assert!(fifo.symlink_metadata().unwrap().file_type().is_fifo());
    assert_eq!(mode(&fifo), 0o640);
}

#[test]
fn add_of_a_tar_keeps_its_devices_and_fifos() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nADD devices.tar /unpacked/\n")],
    );
    let tree = env.dir.path().join("tree");
    std::fs::create_dir_all(tree.join("dev")).unwrap();
    std::fs::write(tree.join("file"), "f").unwrap();
    for args in [
        vec!["mknod", "-m", "660", "dev/loop9", "b", "7", "9"],
        vec!["mknod", "-m", "666", "dev/null", "c", "1", "3"],
        vec!["mkfifo", "-m", "600", "dev/pipe"],
        vec!["chmod", "1777", "dev"],
    ] {
        let status = Command::new(args[0])
            .args(&args[1..])
            .current_dir(&tree)
            .status()
            .unwrap();
        assert!(status.success(), "{args:?}");
    }
    let status = Command::new("tar")
        .arg("-cf")
        .arg(ctx.join("devices.tar"))
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let fs = env.export(&ctx, &[]);
    let unpacked = fs.join("unpacked");
    let loop9 = unpacked.join("dev/loop9");
    assert!(loop9
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_block_device());
    assert_eq!((device(&loop9), mode(&loop9)), ((7, 9), 0o660));
    let null = unpacked.join("dev/null");
    assert!(null
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(device(&null), (1, 3));
    let pipe = unpacked.join("dev/pipe");
    assert!(pipe.symlink_metadata().unwrap().file_type().is_fifo());
    assert_eq!(mode(&pipe), 0o600);
    assert_eq!(mode(&unpacked.join("dev")), 0o1777);
    assert_eq!(std::fs::read_to_string(unpacked.join("file")).unwrap(), "f");
}

#[test]
fn add_of_a_tar_with_dotdot_entries_names_the_entry() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nADD evil.tar /unpacked/\n")],
    );
    let script = "import io, sys, tarfile\n\
                  with tarfile.open(sys.argv[1], 'w', format=tarfile.GNU_FORMAT) as tar:\n\
                  \x20   for name in ['ok', '../evil']:\n\
                  \x20       info = tarfile.TarInfo(name)\n\
                  \x20       info.size = 1\n\
                  \x20       tar.addfile(info, io.BytesIO(b'x'))\n";
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(ctx.join("evil.tar"))
        .status()
        .unwrap();
    assert!(status.success());
    let out = env.try_build(&ctx, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("entry \"../evil\""), "{stderr}");
    assert!(stderr.contains("Dockerfile:2"), "{stderr}");
    assert!(!stderr.contains("complete tar archive"), "{stderr}");
}
