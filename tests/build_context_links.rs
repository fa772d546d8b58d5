//! End-to-end: symlinks in the build context and in a `--from` image's
//! rootfs are followed inside their root, never into the host (BuildKit's
//! fsutil and securejoin semantics). A path that would leave the root is
//! not found.

mod build_common;

use std::os::unix::fs::symlink;
use std::path::Path;

use build_common::Env;

/// A context whose links point at the host's /etc and at a host directory
/// beside the context (`host/` with a secret, an `ssh/` directory).
fn hostile_context(env: &Env, name: &str, dockerfile: &str) -> std::path::PathBuf {
    let host = env.dir.path().join("host");
    std::fs::create_dir_all(host.join("ssh")).unwrap();
    std::fs::write(host.join("shadow"), "host secret\n").unwrap();
    std::fs::write(host.join("ssh/ssh_host_key"), "host key\n").unwrap();
    let ctx = env.context(
        name,
        &[
            ("Dockerfile", dockerfile),
            ("data/f", "inside\n"),
            ("a/b/f", "b\n"),
        ],
    );
    symlink("/etc", ctx.join("etclink")).unwrap();
    symlink(&host, ctx.join("hostlink")).unwrap();
    symlink("../../../../../../../../etc", ctx.join("rel")).unwrap();
    symlink("../host", ctx.join("beside")).unwrap();
    symlink("data/../../host", ctx.join("dotdot")).unwrap();
    ctx
}

fn assert_not_found(env: &Env, ctx: &Path, source: &str, line: usize) {
    let out = env.try_build(ctx, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{source} was copied: {stderr}");
    assert!(
        stderr.contains(&format!("{source}: not found in the build context")),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("Dockerfile:{line}")), "{stderr}");
    assert!(!stderr.contains("host secret") && !stderr.contains("root:"));
}

#[test]
fn copy_and_add_through_links_out_of_the_context_are_not_found() {
    let env = Env::new();
    for (n, (instruction, source)) in [
        ("COPY etclink/shadow /s", "etclink/shadow"),
        ("ADD etclink/shadow /s", "etclink/shadow"),
        ("COPY etclink/passwd /p", "etclink/passwd"),
        ("COPY etclink/ssh/ /ssh/", "etclink/ssh/"),
        ("COPY hostlink/ssh/ /ssh/", "hostlink/ssh/"),
        ("ADD hostlink/shadow /s", "hostlink/shadow"),
        ("COPY rel/passwd /p", "rel/passwd"),
        ("COPY beside/shadow /s", "beside/shadow"),
        ("COPY dotdot/shadow /s", "dotdot/shadow"),
        ("COPY etclink /e", "etclink"),
    ]
    .into_iter()
    .enumerate()
    {
        let ctx = hostile_context(
            &env,
            &format!("ctx{n}"),
            &format!("FROM busybox\n{instruction}\n"),
        );
        assert_not_found(&env, &ctx, source, 2);
    }
}

#[test]
fn bind_mounts_through_links_out_of_the_context_are_not_found() {
    let env = Env::new();
    for source in ["etclink/shadow", "hostlink/shadow", "rel/passwd"] {
        let ctx = hostile_context(
            &env,
            &source.replace('/', "-"),
            &format!("FROM busybox\nRUN --mount=type=bind,source={source},target=/m cat /m\n"),
        );
        let out = env.try_build(&ctx, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{source} was mounted: {stderr}");
        assert!(
            stderr.contains(&format!("{source}: not found in the build context")),
            "{stderr}"
        );
        assert!(!stderr.contains("host secret") && !stderr.contains("root:x"));
    }
}

#[test]
fn links_inside_the_context_are_followed_as_docker_follows_them() {
    let env = Env::new();
    let ctx = hostile_context(
        &env,
        "ctx",
        "FROM busybox\n\
         COPY abs/f /abs-f\n\
         COPY a/link/f /middle-f\n\
         COPY up/g /up-g\n\
         COPY abs/ /abs-dir/\n\
         RUN --mount=type=bind,source=abs/f,target=/m cp /m /mounted\n\
         COPY etclink/../data/f /lexical\n",
    );
    // An absolute target means the context's root; `..` climbs from the link.
    symlink("/data", ctx.join("abs")).unwrap();
    symlink("../a/b", ctx.join("a/link")).unwrap();
    std::fs::create_dir_all(ctx.join("data/sub")).unwrap();
    std::fs::write(ctx.join("data/sub/g"), "g\n").unwrap();
    symlink("a/../data/sub", ctx.join("up")).unwrap();
    let fs = env.export(&ctx, &[]);
    let read = |path: &str| std::fs::read_to_string(fs.join(path)).unwrap();
    assert_eq!(read("abs-f"), "inside\n");
    assert_eq!(read("middle-f"), "b\n");
    assert_eq!(read("up-g"), "g\n");
    assert_eq!(read("abs-dir/f"), "inside\n");
    assert_eq!(read("mounted"), "inside\n");
    // A source path is cleaned as written (Docker's path.Clean) first.
    assert_eq!(read("lexical"), "inside\n");
}

#[test]
fn a_link_to_an_ignored_file_is_not_found() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", "FROM busybox\nCOPY to-secret /s\n"),
            (".dockerignore", "secret.key\n"),
            ("secret.key", "ignored\n"),
        ],
    );
    symlink("secret.key", ctx.join("to-secret")).unwrap();
    assert_not_found(&env, &ctx, "to-secret", 2);
}

#[test]
fn copy_from_an_image_resolves_its_links_in_its_rootfs() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox AS img\n\
             RUN echo image-only > /etc/kiln-marker && ln -s /etc /e && ln -s ../../../../../etc /r \
             && mkdir /d && ln -s /etc/kiln-marker /d/abs\n\
             FROM busybox\n\
             COPY --from=img /e/kiln-marker /via-abs\n\
             COPY --from=img /r/kiln-marker /via-rel\n\
             COPY --from=img /d/abs /via-file-link\n\
             COPY --from=img /e/../etc/kiln-marker /via-dotdot\n\
             RUN --mount=type=bind,from=img,source=e/kiln-marker,target=/m cp /m /mounted\n",
        )],
    );
    let fs = env.export(&ctx, &[]);
    for path in [
        "via-abs",
        "via-rel",
        "via-file-link",
        "via-dotdot",
        "mounted",
    ] {
        assert_eq!(
            std::fs::read_to_string(fs.join(path)).unwrap(),
            "image-only\n",
            "{path}"
        );
    }
    // The host has no such file: a lookup on the host would have failed.
    assert!(!Path::new("/etc/kiln-marker").exists());

    // And a host file the image lacks is not found through the image's link.
    let ctx = env.context(
        "ctx2",
        &[(
            "Dockerfile",
            "FROM busybox AS img\nRUN ln -s /etc /e && rm -f /etc/shadow\n\
             FROM busybox\nCOPY --from=img /e/shadow /s\n",
        )],
    );
    let out = env.try_build(&ctx, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("/e/shadow: not found"), "{stderr}");
}
