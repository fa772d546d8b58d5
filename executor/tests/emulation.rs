//! Foreign architectures: steps in the mips64el busybox rootfs under qemu-user.

mod common;

use common::*;
use kiln_executor::{check_binfmt, Error};

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
fn missing_handlers_say_what_to_do() {
    // No distribution registers a handler for this one by default.
    match check_binfmt("s390x") {
        Ok(()) => {} // registered on this machine: nothing to check
        Err(e @ Error::NoBinfmt { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("apt-get install qemu-user-static")
                    && message.contains("kiln setup-binfmt s390x"),
                "{message}"
            );
        }
        Err(other) => panic!("unexpected error {other}"),
    }
    assert!(matches!(check_binfmt("vax"), Err(Error::UnknownArch(_))));
}
