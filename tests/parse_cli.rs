//! `kiln parse` end to end: the binary's output formats, stdin, build args,
//! targets, and how errors reach the user.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn kiln(args: &[&str], stdin: Option<&str>) -> Output {
    kiln_bytes(args, stdin.map(str::as_bytes))
}

fn kiln_bytes(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kiln");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("wait for kiln")
}

fn testdata(case: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/dockerfile")
        .join(case)
        .join("Dockerfile")
        .display()
        .to_string()
}

#[test]
fn json_is_the_golden_shape() {
    let out = kiln(&["parse", "-f", &testdata("issue-example")], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/dockerfile/issue-example/expected.json"),
    )
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}

#[test]
fn reads_stdin_and_prints_dot_and_text() {
    let text = "FROM scratch AS a\nRUN x\nFROM a\nCOPY --from=a /x /y\n";
    let out = kiln(&["parse", "-f", "-", "--format", "dot"], Some(text));
    assert!(out.status.success());
    let dot = String::from_utf8_lossy(&out.stdout);
    assert!(
        dot.starts_with("digraph kiln {") && dot.contains("cluster_1"),
        "{dot}"
    );
    let out = kiln(
        &[
            "parse",
            "-f",
            "-",
            "--format",
            "text",
            "--target",
            "a",
            "--platform",
            "linux/arm64",
        ],
        Some(text),
    );
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.starts_with("stage 0 a (target): FROM scratch [linux/arm64]"),
        "{listing}"
    );
    assert!(!listing.contains("stage 1"));
}

#[test]
fn build_args_reach_the_graph() {
    let text = "ARG BASE=scratch\nFROM $BASE\nARG V=1\nRUN echo\n";
    let out = kiln(
        &[
            "parse",
            "-f",
            "-",
            "--format",
            "text",
            "--build-arg",
            "V=2",
            "--build-arg",
            "BASE=alpine",
        ],
        Some(text),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("FROM image alpine"), "{listing}");
    assert!(listing.contains("V=2"), "{listing}");
}

#[test]
fn errors_show_the_line_and_a_caret_on_stderr() {
    let out = kiln(
        &["parse", "-f", "-"],
        Some("FROM scratch\nCOPY --nope a b\n"),
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("<stdin>:2:6: unknown flag --nope"),
        "{stderr}"
    );
    assert!(stderr.contains("2 | COPY --nope a b"), "{stderr}");
    assert!(stderr.contains("  |      ^"), "{stderr}");
    let out = kiln(&["parse", "-f", "/nonexistent/Dockerfile"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/Dockerfile"));
}

#[test]
fn a_latin1_dockerfile_is_read_as_docker_reads_it() {
    // Latin-1 bytes (not UTF-8) in a comment and in a label value.
    let text = b"# caf\xe9 cr\xe8me\nFROM scratch\nLABEL who=Jos\xe9\n";
    let out = kiln_bytes(&["parse", "-f", "-", "--format", "text"], Some(text));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("\"who\":\"Jos\u{fffd}\""), "{listing}");
}

#[test]
fn an_empty_or_comments_only_dockerfile_names_a_line() {
    let out = kiln(&["parse", "-f", "-"], Some("# syntax=x\n\n# nothing\n"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("<stdin>:3:1: file with no instructions"),
        "{stderr}"
    );
}

/// Each ENV doubles A: 2^40 bytes if expanded.
fn doubling_dockerfile() -> String {
    let mut text = String::from("FROM scratch\nENV A=aaaaaaaaaa\n");
    for _ in 0..40 {
        text.push_str("ENV A=$A$A\n");
    }
    text.push_str("RUN echo \"$A\"\n");
    text
}

#[test]
fn json_is_a_syntax_dump_that_expands_nothing() {
    let text = doubling_dockerfile();
    let out = kiln(&["parse", "-f", "-", "--format", "json"], Some(&text));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(json.contains("\"A=$A$A\""), "{json}");
    assert!(out.stdout.len() < 64 * 1024, "{} bytes", out.stdout.len());
}

#[test]
fn an_exponential_expansion_stops_at_the_limit_with_its_line() {
    let text = doubling_dockerfile();
    let out = kiln(&["parse", "-f", "-", "--format", "text"], Some(&text));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 10 bytes doubled 17 times is more than 1 MiB: the 17th ENV A=$A$A.
    assert!(stderr.contains("<stdin>:19:5: "), "{stderr}");
    assert!(stderr.contains("larger than 1 MiB"), "{stderr}");
}

#[test]
fn warnings_go_to_stderr() {
    let out = kiln(
        &["parse", "-f", "-", "--format", "text"],
        Some("FROM scratch\nEXPOSE 80:8080 0\n"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: <stdin>:2:1: ExposeInvalidFormat: EXPOSE instruction should not define an IP address or host port mapping, found '80:8080'"),
        "{stderr}"
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("\"ExposedPorts\":{\"0/tcp\":{},\"8080/tcp\":{}}"),
        "{listing}"
    );
}
