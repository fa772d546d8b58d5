//! Foreign architectures: steps in the mips64el busybox rootfs under qemu-user.

mod common;

use common::*;
use kiln_executor::{check_binfmt, setup_binfmt, BinfmtSetup, Error};

#[test]
fn mips64el_runs_under_qemu() {
    check_binfmt("mips64le").expect(
        "qemu-mips64el must be registered with the F flag: run `kiln setup-binfmt mips64le`",
    );
    let mut s = shell("uname -m; echo built > /made-on-mips");
    s.lowers = vec![busybox("mips64el")];
    s.arch = Some("mips64le".into());
    let out = run(&s);
    out.upper();
    assert_eq!(out.stdout, vec!["mips64"]);
    assert_eq!(out.layer_entries(), vec!["made-on-mips"]);
}

#[test]
fn amd64_runs_natively() {
    let mut s = shell("uname -m");
    s.arch = Some("amd64".into());
    let out = run(&s);
    assert_eq!(out.stdout, vec!["x86_64"]);
}

#[test]
fn setup_registers_handlers_with_the_f_flag() {
    let done = setup_binfmt(&["s390x".to_owned(), "amd64".to_owned()]).unwrap();
    assert!(
        matches!(
            &done[0],
            BinfmtSetup::Registered { .. } | BinfmtSetup::AlreadyRegistered { .. }
        ),
        "{done:?}"
    );
    assert!(matches!(&done[1], BinfmtSetup::Native { .. }));
    check_binfmt("s390x").unwrap();
    let flags = std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-s390x").unwrap();
    assert!(
        flags
            .lines()
            .any(|l| l.starts_with("flags:") && l.contains('F')),
        "{flags}"
    );
    // Running it again changes nothing.
    assert!(matches!(
        &setup_binfmt(&["s390x".to_owned()]).unwrap()[0],
        BinfmtSetup::AlreadyRegistered { .. }
    ));
    assert!(matches!(
        setup_binfmt(&["vax".to_owned()]),
        Err(Error::UnknownArch(_))
    ));
}
