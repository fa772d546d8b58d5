//! End-to-end `kiln build` on the busybox fixture: RUN, COPY, cache hits and
//! misses, whiteouts, multi-stage, heredocs, cache mounts.

mod build_common;

use build_common::{cached_steps, run_steps, Env};

#[test]
fn run_and_copy_then_everything_cached() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", "FROM busybox\nCOPY hello.txt /hello.txt\nRUN cat /hello.txt > /copied && echo ran\nENV A=1\nRUN echo $A > /a\n"),
            ("hello.txt", "hello\n"),
        ],
    );
    let (id, stderr) = env.build(&ctx, &["-t", "t1"]);
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(run_steps(&stderr), 3, "{stderr}");
    let (again, stderr) = env.build(&ctx, &["-t", "t1"]);
    assert_eq!(id, again);
    assert_eq!(cached_steps(&stderr), 3, "{stderr}");
    let fs = env.export(&ctx, &[]);
    assert_eq!(std::fs::read_to_string(fs.join("copied")).unwrap(), "hello\n");
    assert_eq!(std::fs::read_to_string(fs.join("a")).unwrap(), "1\n");
}
