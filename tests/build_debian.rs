//! End-to-end builds on Debian 12 minbase roots, the way most real Dockerfiles
//! start: `apt-get update && apt-get install` on the default network (apt drops
//! to its `_apt` user, so /dev/null must be writable by anyone), a `useradd`ed
//! non-root `USER`, and bash. amd64 natively, mips64el under qemu-user.

mod build_common;

use build_common::Env;

/// apt-get as Dockerfiles write it, then a non-root user that writes /dev/null
/// and uses what was installed.
const DOCKERFILE: &str = r#"FROM debian:12
RUN apt-get update && apt-get install -y --no-install-recommends file \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 builder
USER builder
WORKDIR /home/builder
RUN echo x > /dev/null && bash -c 'file --brief /bin/bash > kind; id -un > who; [[ -w /dev/null ]] && echo ok > devnull'
"#;

/// Builds [`DOCKERFILE`] on a fresh store; returns the store (which owns the
/// exported tree) and the exported filesystem.
fn apt_build(fixture: &str, platform: Option<&str>) -> (Env, std::path::PathBuf) {
    let env = Env::empty();
    env.import(fixture, "debian:12");
    let ctx = env.context("ctx", &[("Dockerfile", DOCKERFILE)]);
    let mut extra = Vec::new();
    if let Some(platform) = platform {
        extra.extend(["--platform", platform]);
    }
    let fs = env.export(&ctx, &extra);
    (env, fs)
}

fn read(fs: &std::path::Path, path: &str) -> String {
    std::fs::read_to_string(fs.join(path))
        .unwrap_or_else(|e| panic!("{path} in the built image: {e}"))
}

fn assert_installed(fs: &std::path::Path, machine: &str) {
    let status = read(fs, "var/lib/dpkg/status");
    assert!(
        status.contains("Package: file\nStatus: install ok installed"),
        "the package is not installed"
    );
    assert_eq!(read(fs, "home/builder/who"), "builder\n");
    assert_eq!(read(fs, "home/builder/devnull"), "ok\n");
    let kind = read(fs, "home/builder/kind");
    assert!(kind.contains(machine), "file says {kind:?}");
    let meta = std::fs::metadata(fs.join("home/builder/kind")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
}

#[test]
fn apt_get_install_and_a_non_root_user_on_debian_amd64() {
    let (_env, fs) = apt_build("debian12-minbase-amd64.tar.zst", None);
    assert_installed(&fs, "x86-64");
}

#[test]
fn apt_get_install_and_a_non_root_user_on_debian_mips64el_under_qemu() {
    let (_env, fs) = apt_build("debian12-minbase-mips64el.tar.zst", Some("linux/mips64le"));
    assert_installed(&fs, "MIPS");
}
