//! End-to-end COPY/ADD semantics and .dockerignore with the kiln binary.

mod build_common;

use std::os::unix::fs::MetadataExt;

use build_common::Env;

#[test]
fn copy_rules_as_docker_has_them() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM busybox\n\
                 RUN mkdir -p /real && ln -s real /link\n\
                 COPY one.txt /link/\n\
                 COPY dir /dirdest\n\
                 COPY *.md /docs/\n\
                 WORKDIR /work\n\
                 COPY one.txt rel.txt\n\
                 COPY --chown=app --chmod=600 one.txt /owned\n\
                 COPY --chown=1:2 dir /numeric/\n\
                 ADD archive.tar /unpacked/\n\
                 COPY archive.tar /kept.tar\n",
            ),
            ("one.txt", "1"),
            ("dir/a", "a"),
            ("dir/sub/b", "b"),
            ("x.md", "x"),
            ("y.md", "y"),
            ("z.txt", "z"),
        ],
    );
    // A gzip tar with a name that does not say so.
    let staging = ctx.join("staging");
    std::fs::create_dir_all(staging.join("inside")).unwrap();
    std::fs::write(staging.join("inside/file"), "tar").unwrap();
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(ctx.join("archive.tar"))
        .arg("-C")
        .arg(&staging)
        .arg("inside")
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_dir_all(&staging).unwrap();

    let fs = env.export(&ctx, &[]);
    // The destination is resolved through the image's symlinks.
    assert_eq!(
        std::fs::read_to_string(fs.join("real/one.txt")).unwrap(),
        "1"
    );
    assert!(fs
        .join("link")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
    // A directory source copies its contents.
    assert_eq!(
        std::fs::read_to_string(fs.join("dirdest/sub/b")).unwrap(),
        "b"
    );
    assert!(!fs.join("dirdest/dir").exists());
    // Wildcards.
    assert!(fs.join("docs/x.md").is_file() && fs.join("docs/y.md").is_file());
    assert!(!fs.join("docs/z.txt").exists());
    // Relative destinations follow WORKDIR.
    assert!(fs.join("work/rel.txt").is_file());
    // --chown with a name from the image's /etc/passwd (app is 1000) and --chmod.
    let owned = fs.join("owned").metadata().unwrap();
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o777),
        (1000, 1000, 0o600)
    );
    let numeric = fs.join("numeric/sub/b").metadata().unwrap();
    assert_eq!((numeric.uid(), numeric.gid()), (1, 2));
    // ADD unpacks a local archive (recognised by content), COPY does not.
    assert_eq!(
        std::fs::read_to_string(fs.join("unpacked/inside/file")).unwrap(),
        "tar"
    );
    assert!(fs.join("kept.tar").is_file());
}

#[test]
fn copy_errors_name_the_line() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\n\nCOPY missing.txt /x\n")],
    );
    let out = env.try_build(&ctx, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("Dockerfile:3"), "{stderr}");
    assert!(stderr.contains("missing.txt"), "{stderr}");
}

#[test]
fn dockerignore_hides_files_and_dockerfile_specific_ignore_wins() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", "FROM busybox\nCOPY . /ctx\n"),
            ("other.Dockerfile", "FROM busybox\nCOPY . /ctx\n"),
            (".dockerignore", "# comment\n*.log\nbuild\n!build/keep\n"),
            ("other.Dockerfile.dockerignore", "src\n"),
            ("app.log", "log"),
            ("build/junk", "j"),
            ("build/keep", "k"),
            ("src/main.c", "c"),
        ],
    );
    let fs = env.export(&ctx, &[]);
    assert!(!fs.join("ctx/app.log").exists());
    assert!(!fs.join("ctx/build/junk").exists());
    assert!(fs.join("ctx/build/keep").is_file());
    assert!(fs.join("ctx/src/main.c").is_file());

    let other = ctx.join("other.Dockerfile");
    let fs = env.export(&ctx, &["-f", &other.to_string_lossy()]);
    assert!(fs.join("ctx/app.log").is_file());
    assert!(!fs.join("ctx/src").exists());
}

#[test]
fn ignored_file_changes_do_not_invalidate_the_cache() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", "FROM busybox\nCOPY . /ctx\n"),
            (".dockerignore", "*.tmp\n"),
            ("a", "1"),
        ],
    );
    let (first, _) = env.build(&ctx, &[]);
    std::fs::write(ctx.join("scratch.tmp"), "noise").unwrap();
    let (second, stderr) = env.build(&ctx, &[]);
    assert_eq!(first, second, "{stderr}");
}

#[test]
fn copy_from_images_and_stages_with_link_parents_exclude() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM busybox AS files\nRUN mkdir -p /out/a /out/b && echo 1 > /out/a/x.txt && echo 2 > /out/b/y.log && chown -R app /out\n\
                 FROM scratch\n\
                 COPY --from=busybox /etc/passwd /etc/passwd\n\
                 COPY --from=files /out /kept-owner/\n\
                 COPY --link --from=files --exclude=*.log /out/b /linked/\n\
                 COPY --parents src/./deep/f.txt other/g.txt /p/\n",
            ),
            ("src/deep/f.txt", "f"),
            ("other/g.txt", "g"),
        ],
    );
    let fs = env.export(&ctx, &[]);
    assert!(std::fs::read_to_string(fs.join("etc/passwd"))
        .unwrap()
        .contains("app"));
    // Files from a stage keep their owner.
    assert_eq!(
        fs.join("kept-owner/a/x.txt").metadata().unwrap().uid(),
        1000
    );
    assert!(fs.join("linked").is_dir());
    assert!(!fs.join("linked/y.log").exists());
    assert_eq!(
        std::fs::read_to_string(fs.join("p/deep/f.txt")).unwrap(),
        "f"
    );
    assert_eq!(
        std::fs::read_to_string(fs.join("p/other/g.txt")).unwrap(),
        "g"
    );
}

#[test]
fn add_downloads_urls_and_checks_them() {
    let env = Env::new();
    let served = env.context("served", &[("payload.txt", "payload\n")]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut server = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(&served)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 serves the test files");
    let url = format!("http://127.0.0.1:{port}/payload.txt");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let sum = "sha256:e3e4d47ef3cb8dc8b6b6aa3d7dbb2ef0d14ab3fa50a3f2d0e51c6ec05ea0a1b0";
    let dockerfile = format!("FROM busybox\nADD {url} /dl/\nADD --checksum={sum} {url} /pinned\n");
    let ctx = env.context("ctx", &[("Dockerfile", &dockerfile)]);
    let out = env.try_build(&ctx, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // The pinned checksum above is deliberately wrong: the error says so.
    assert!(!out.status.success());
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
    let good = stderr
        .split("the download is ")
        .nth(1)
        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
        .unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile.replace(sum, &good)).unwrap();
    let fs = env.export(&ctx, &[]);
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(
        std::fs::read_to_string(fs.join("dl/payload.txt")).unwrap(),
        "payload\n"
    );
    assert_eq!(fs.join("pinned").metadata().unwrap().mode() & 0o777, 0o600);

    // With the server gone the download is a clear error.
    let unreachable = env.context(
        "gone",
        &[(
            "Dockerfile",
            &format!("FROM busybox\nADD http://127.0.0.1:{port}/nope /x\n"),
        )],
    );
    let out = env.try_build(&unreachable, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("Dockerfile:2") && stderr.contains("cannot download"),
        "{stderr}"
    );
}
