//! Platforms of `kiln build`: with no `--platform`, an image the store has
//! for one platform only builds for that platform; a platform the store
//! lacks and a missing binfmt handler are errors that say what to do.

mod build_common;

use build_common::Env;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_imported_foreign_image_builds_for_its_platform_without_flags() {
    let env = Env::empty();
    env.import("busybox-mips64el.tar", "mbase");
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM mbase\nARG TARGETARCH\nRUN uname -m > /arch && echo $TARGETARCH > /targetarch\n",
        )],
    );
    let dest = env.dir.path().join("fs");
    let output = format!("type=local,dest={}", dest.display());
    let (_, stderr) = env.build(&ctx, &["--output", &output]);
    let notes: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("only for linux/mips64le"))
        .collect();
    assert_eq!(notes.len(), 1, "one note line:\n{stderr}");
    assert!(notes[0].contains("mbase"), "{stderr}");
    let read = |name: &str| std::fs::read_to_string(dest.join(name)).unwrap();
    assert_eq!(read("arch").trim(), "mips64");
    assert_eq!(read("targetarch").trim(), "mips64le");
}

#[test]
fn a_platform_the_store_lacks_leads_with_what_it_has() {
    let env = Env::empty();
    env.import("busybox-mips64el.tar", "mbase");
    let ctx = env.context("ctx", &[("Dockerfile", "FROM mbase\nRUN true\n")]);
    // --pull never: only the store is asked.
    let out = env.try_build(&ctx, &["--platform", "linux/amd64", "--pull", "never"]);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("the store has mbase for linux/mips64le but not for linux/amd64: build for it with --platform linux/mips64le"),
        "{stderr}"
    );
    // --pull missing (the default) tries docker.io, which is unreachable
    // here: the store's answer comes first, the network error after it.
    let out = env.try_build(&ctx, &["--platform", "linux/amd64"]);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("an error line:\n{stderr}"));
    let has = error.find("the store has mbase for linux/mips64le").expect(error);
    let pulling = error.find("pulling docker.io/library/mbase").expect(error);
    assert!(has < pulling, "{error}");
}

#[test]
fn a_missing_binfmt_handler_is_an_error_before_anything_runs() {
    if std::path::Path::new("/proc/sys/fs/binfmt_misc/qemu-ppc64le").exists() {
        eprintln!("skipped: this machine has a ppc64le handler");
        return;
    }
    let env = Env::empty();
    let tar = build_common::fixture("busybox-amd64.tar");
    let tar = tar.to_string_lossy();
    build_common::run_ok(&mut env.command(&[
        "import",
        "--platform",
        "linux/ppc64le",
        "--force",
        &tar,
        "ppcbase",
    ]));
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM ppcbase\nRUN echo first\nRUN echo second\n")],
    );
    let out = env.try_build(&ctx, &["--platform", "linux/ppc64le"]);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("cannot build for linux/ppc64le")
            && stderr.contains("kiln setup-binfmt ppc64le"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("RUN echo first"),
        "no step started:\n{stderr}"
    );
}
