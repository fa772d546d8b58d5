//! What docker build users type: `-q`, `-o DIR`, `--output type=tar`,
//! `--load`, `# syntax=`.

mod build_common;

use build_common::{run_ok, Env};

#[test]
fn quiet_prints_only_the_image_id() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN echo hi > /hi\n")],
    );
    let out = run_ok(&mut env.command(&["build", "-q", "--load", &ctx.to_string_lossy()]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.trim().starts_with("sha256:") && stdout.lines().count() == 1,
        "{stdout}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let out = env.kiln(&["build", "-q", "--progress", "plain", &ctx.to_string_lossy()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--progress plain"));
}

#[test]
fn output_shorthand_and_the_tar_exporter_write_the_filesystem() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN mkdir -p /data && echo hi > /data/hi && chmod 1777 /data && ln -s /data/hi /link && rm /bin/yes\n",
        )],
    );
    let ctx_arg = ctx.to_string_lossy().into_owned();
    // -o DIR is type=local.
    let dir = env.dir.path().join("out");
    run_ok(&mut env.command(&["build", "-q", "-o", &dir.to_string_lossy(), &ctx_arg]));
    assert_eq!(
        std::fs::read_to_string(dir.join("data/hi")).unwrap(),
        "hi\n"
    );

    // type=tar to a file, read back by GNU tar: the filesystem, not an image.
    let tar = env.dir.path().join("fs.tar");
    let output = format!("type=tar,dest={}", tar.display());
    run_ok(&mut env.command(&["build", "-q", "--output", &output, &ctx_arg]));
    let listing = run_ok(std::process::Command::new("tar").args(["-tvf", &tar.to_string_lossy()]));
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("drwxrwxrwt") && l.ends_with(" data")),
        "{listing}"
    );
    assert!(
        listing.lines().any(|l| l.ends_with("link -> /data/hi")),
        "{listing}"
    );
    assert!(
        listing.lines().any(|l| l.ends_with(" bin/busybox")),
        "{listing}"
    );
    assert!(
        !listing.contains("manifest.json")
            && !listing.contains("bin/yes")
            && !listing.contains(".wh."),
        "{listing}"
    );

    // -o - is the same tar on stdout, byte for byte: names, owners, modes
    // and modification times come from the image, not from the export.
    let out = run_ok(&mut env.command(&["build", "-q", "-o", "-", &ctx_arg]));
    let written = std::fs::read(&tar).unwrap();
    assert!(
        out.stdout == written,
        "the tar on stdout ({} bytes) differs from the one written to a file ({} bytes)",
        out.stdout.len(),
        written.len()
    );
}

#[test]
fn syntax_directives_use_the_built_in_frontend_or_fail() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "# syntax=docker/dockerfile:1\nFROM busybox\nRUN true\n",
        )],
    );
    let (_, stderr) = env.build(&ctx, &[]);
    assert!(
        stderr.contains("using kiln's built-in Dockerfile frontend"),
        "{stderr}"
    );

    std::fs::write(
        ctx.join("Dockerfile"),
        "# syntax=example.com/my/frontend:1\nFROM busybox\nRUN true\n",
    )
    .unwrap();
    let out = env.try_build(&ctx, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("Dockerfile:1: # syntax=example.com/my/frontend:1"),
        "{stderr}"
    );
    assert!(!stderr.contains("RUN true"), "nothing was built: {stderr}");
}
