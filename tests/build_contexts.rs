//! Contexts from anywhere, as `docker build` takes them: a tar on stdin, a
//! tarball (or a Dockerfile) at an http URL, a git repository served by
//! `git daemon`. Every server is started here on 127.0.0.1 and stopped after.

mod build_common;

use std::path::Path;
use std::process::Command;

use build_common::servers::{free_port, git, git_daemon, httpd};
use build_common::{cached_steps, output_with_stdin, run_ok, Env};

/// A context directory with a Dockerfile at `docker/build.Dockerfile` that
/// copies the whole context.
fn write_context(dir: &Path) {
    std::fs::create_dir_all(dir.join("docker")).unwrap();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("docker/build.Dockerfile"),
        "FROM busybox\nCOPY src /src\nRUN cat /src/hello > /copied\n",
    )
    .unwrap();
    std::fs::write(dir.join("src/hello"), "hello from the archive\n").unwrap();
}

fn tar_czf(dir: &Path, out: &Path) {
    run_ok(Command::new("tar").args([
        "-C",
        &dir.to_string_lossy(),
        "-czf",
        &out.to_string_lossy(),
        ".",
    ]));
}

#[test]
fn a_tar_on_stdin_is_the_context_and_anything_else_the_dockerfile() {
    let env = Env::new();
    let src = env.dir.path().join("src-ctx");
    write_context(&src);
    let archive = env.dir.path().join("ctx.tgz");
    tar_czf(&src, &archive);
    let bytes = std::fs::read(&archive).unwrap();
    let dest = env.dir.path().join("out");
    let out_arg = format!("type=local,dest={}", dest.display());
    let build = |input: &[u8], extra: &[&str]| {
        let mut args = vec!["build", "--progress", "plain", "--output", &out_arg];
        args.extend_from_slice(extra);
        args.push("-");
        output_with_stdin(&mut env.command(&args), input)
    };
    let out = build(&bytes, &["-f", "docker/build.Dockerfile"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("copied")).unwrap(),
        "hello from the archive\n"
    );
    // The same archive again: its files are keyed by content, so all cached.
    let out = build(&bytes, &["-f", "docker/build.Dockerfile"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(cached_steps(&stderr), 2, "{stderr}");

    // Without -f the archive must hold a Dockerfile at its top.
    let out = build(&bytes, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("the context has no Dockerfile"), "{stderr}");

    // Plain text on stdin is the Dockerfile, with no context.
    let out = build(b"FROM busybox\nRUN echo text > /copied\n", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("copied")).unwrap(),
        "text\n"
    );
}

#[test]
fn a_tarball_or_a_dockerfile_at_an_http_url() {
    let env = Env::new();
    let served = env.dir.path().join("www");
    std::fs::create_dir_all(&served).unwrap();
    let src = env.dir.path().join("src-ctx");
    write_context(&src);
    std::fs::rename(src.join("docker/build.Dockerfile"), src.join("Dockerfile")).unwrap();
    tar_czf(&src, &served.join("ctx.tar.gz"));
    std::fs::write(
        served.join("Dockerfile"),
        "FROM busybox\nRUN echo plain > /copied\n",
    )
    .unwrap();
    let port = free_port();
    let _httpd = httpd(&served, port);
    let dest = env.dir.path().join("out");
    let out_arg = format!("type=local,dest={}", dest.display());
    let url = format!("http://127.0.0.1:{port}/ctx.tar.gz");
    run_ok(&mut env.command(&["build", "-q", "--output", &out_arg, &url]));
    assert_eq!(
        std::fs::read_to_string(dest.join("copied")).unwrap(),
        "hello from the archive\n"
    );
    let url = format!("http://127.0.0.1:{port}/Dockerfile");
    run_ok(&mut env.command(&["build", "-q", "--output", &out_arg, &url]));
    assert_eq!(
        std::fs::read_to_string(dest.join("copied")).unwrap(),
        "plain\n"
    );

    let url = format!("http://127.0.0.1:{port}/missing.tar.gz");
    let out = env.kiln(&["build", "-q", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("HTTP 404"), "{stderr}");
}

/// Two repositories under `base`: `lib.git` and `app.git`, whose `v1` tag
/// has `app/Dockerfile`, `app/version` and the submodule `app/lib`.
fn make_repositories(base: &Path, port: u16) {
    let lib = base.join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    git(&lib, &["init", "-q", "-b", "main"]);
    std::fs::write(lib.join("lib.txt"), "from the submodule\n").unwrap();
    git(&lib, &["add", "."]);
    git(&lib, &["commit", "-q", "-m", "lib"]);
    git(base, &["clone", "-q", "--bare", "lib", "lib.git"]);

    let app = base.join("work");
    std::fs::create_dir_all(app.join("app")).unwrap();
    git(&app, &["init", "-q", "-b", "main"]);
    std::fs::write(
        app.join("app/Dockerfile"),
        "FROM busybox\nCOPY . /app\nRUN cat /app/version /app/lib/lib.txt > /out && ls -a /app /app/lib > /listing\n",
    )
    .unwrap();
    std::fs::write(app.join("app/version"), "v1\n").unwrap();
    git(
        &app,
        &[
            "submodule",
            "add",
            "-q",
            &format!("git://127.0.0.1:{port}/lib.git"),
            "app/lib",
        ],
    );
    git(&app, &["add", "."]);
    git(&app, &["commit", "-q", "-m", "v1"]);
    git(&app, &["tag", "v1"]);
    std::fs::write(app.join("app/version"), "v2\n").unwrap();
    git(&app, &["commit", "-q", "-am", "v2"]);
    git(base, &["clone", "-q", "--bare", "work", "app.git"]);
}

#[test]
fn git_contexts_at_a_ref_and_subdirectory_with_submodules() {
    let env = Env::new();
    let base = env.dir.path().join("git");
    std::fs::create_dir_all(&base).unwrap();
    let port = free_port();
    let _daemon = git_daemon(&base, port);
    make_repositories(&base, port);
    let dest = env.dir.path().join("out");
    let out_arg = format!("type=local,dest={}", dest.display());
    let url = format!("git://127.0.0.1:{port}/app.git#v1:app");

    let (_, stderr) = env.build(Path::new(&url), &["--output", &out_arg]);
    assert_eq!(
        std::fs::read_to_string(dest.join("out")).unwrap(),
        "v1\nfrom the submodule\n",
        "{stderr}"
    );
    let listing = std::fs::read_to_string(dest.join("listing")).unwrap();
    assert!(!listing.contains(".git"), "{listing}");

    // The same commit again is a cache hit.
    let (_, stderr) = env.build(Path::new(&url), &[]);
    assert_eq!(cached_steps(&stderr), 2, "{stderr}");

    // The branch has v2; BUILDKIT_CONTEXT_KEEP_GIT_DIR keeps .git (here the
    // submodule's, the one inside the context directory).
    let url = format!("git://127.0.0.1:{port}/app.git#main:app");
    env.build(
        Path::new(&url),
        &[
            "--output",
            &out_arg,
            "--build-arg",
            "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1",
        ],
    );
    assert!(std::fs::read_to_string(dest.join("out"))
        .unwrap()
        .starts_with("v2\n"));
    assert!(std::fs::read_to_string(dest.join("listing"))
        .unwrap()
        .contains(".git"));

    // A ref the repository lacks: a clear error, and the store keeps no more images.
    let images_before = run_ok(&mut env.command(&["images", "--format", "json"])).stdout;
    let url = format!("git://127.0.0.1:{port}/app.git#nosuchref");
    let out = env.try_build(Path::new(&url), &["-t", "never"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("git context git://127.0.0.1") && stderr.contains("nosuchref"),
        "{stderr}"
    );
    assert_eq!(
        run_ok(&mut env.command(&["images", "--format", "json"])).stdout,
        images_before
    );
}

#[test]
fn add_of_a_git_repository_is_keyed_by_the_commit_its_ref_names() {
    let env = Env::new();
    let base = env.dir.path().join("git");
    std::fs::create_dir_all(&base).unwrap();
    let port = free_port();
    let _daemon = git_daemon(&base, port);
    make_repositories(&base, port);
    let repo = format!("git://127.0.0.1:{port}/app.git");
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            &format!(
                "FROM busybox\n\
                 ADD {repo}#v1 /src\n\
                 ADD --keep-git-dir=true {repo}#main /full\n\
                 RUN cat /src/app/version /full/app/version > /versions \
                  && ls -a /src > /src-list && ls -a /full > /full-list\n"
            ),
        )],
    );
    let dest = env.dir.path().join("out");
    let out_arg = format!("type=local,dest={}", dest.display());
    env.build(&ctx, &["--output", &out_arg]);
    let read = |p: &str| std::fs::read_to_string(dest.join(p)).unwrap();
    assert_eq!(read("versions"), "v1\nv2\n");
    let has_git_dir = |list: &str| read(list).lines().any(|l| l == ".git");
    assert!(!has_git_dir("src-list"), "{}", read("src-list"));
    assert!(has_git_dir("full-list"), "{}", read("full-list"));
    assert_eq!(
        std::fs::read_to_string(dest.join("src/app/lib/lib.txt")).unwrap(),
        "from the submodule\n"
    );

    // Nothing moved: every step is cached.
    let (_, stderr) = env.build(&ctx, &[]);
    assert_eq!(cached_steps(&stderr), 3, "{stderr}");

    // main moves on: its ADD and what follows run again, the tag's stays.
    let work = base.join("work");
    std::fs::write(work.join("app/version"), "v3\n").unwrap();
    git(&work, &["commit", "-q", "-am", "v3"]);
    git(&work, &["push", "-q", "../app.git", "main"]);
    let (_, stderr) = env.build(&ctx, &["--output", &out_arg]);
    assert_eq!(cached_steps(&stderr), 1, "{stderr}");
    assert_eq!(read("versions"), "v1\nv3\n");
}
