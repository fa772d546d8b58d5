//! Hostile input: random text, deep nesting, 100k continuation lines, huge
//! heredocs. Nothing may panic or overflow the stack. (The fuzz target in fuzz/
//! explores further; frontend/benches/parse.rs shows how parse time scales.)

use kiln_frontend::{compile, lint, parse, CompileOptions, LintInput, NoImages};

use kiln_testsupport::dockerfiles::{continuation_file, heredoc_file, heredoc_markers_file};

fn options() -> CompileOptions {
    CompileOptions {
        target_platform: "linux/amd64".into(),
        build_platform: "linux/amd64".into(),
        ..CompileOptions::default()
    }
}

/// Parses, compiles and lints what parses, rendering errors and findings:
/// none of it may panic.
fn exercise(text: &str) {
    match parse(text, "Dockerfile") {
        Ok(dockerfile) => {
            let _ = debug_len(&dockerfile);
            let options = options();
            let compiled = compile(&dockerfile, &options, &NoImages);
            match &compiled {
                Ok(graph) => {
                    let _ = graph.to_text();
                    let _ = graph.to_dot();
                }
                Err(e) => {
                    let _ = e.render(text);
                }
            }
            let ignored = |path: &str| path.len().is_multiple_of(2);
            let input = LintInput {
                source: text,
                options: Some(&options),
                graph: compiled.as_ref().ok(),
                ignored: Some(&ignored),
            };
            let _ = lint(&dockerfile, &input).render(text);
        }
        Err(e) => {
            let _ = e.render(text);
        }
    }
}

fn debug_len(dockerfile: &kiln_frontend::Dockerfile) -> usize {
    format!("{dockerfile:?}").len()
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_dockerfile_like_text_never_panics() {
    const PIECES: &[&str] = &[
        "FROM ",
        "scratch",
        " AS ",
        "RUN ",
        "COPY ",
        "ADD ",
        "ENV ",
        "ARG ",
        "LABEL ",
        "ONBUILD ",
        "HEALTHCHECK ",
        "CMD ",
        "SHELL ",
        "WORKDIR ",
        "USER ",
        "EXPOSE ",
        "VOLUME ",
        "\n",
        "\r\n",
        "\\\n",
        "`",
        "\\",
        "\"",
        "'",
        "$",
        "${",
        "}",
        ":-",
        ":+",
        ":?",
        "=",
        "--",
        "--mount=",
        "type=cache,target=/c",
        "--from=",
        "0",
        "1",
        "[",
        "]",
        "[\"",
        "\", \"",
        "<<",
        "<<-",
        "EOF",
        "\tEOF",
        "# ",
        "# escape=`\n",
        "# syntax=x\n",
        " ",
        "\t",
        "a",
        "é",
        "\u{feff}",
        ",",
        "{",
        "/",
        ".",
        "--chmod=",
        "755",
        "-",
        "NONE",
        "CMD",
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..3000 {
        let len = rng.below(60);
        let mut text = String::new();
        if rng.below(2) == 0 {
            text.push_str("FROM scratch\n");
        }
        for _ in 0..len {
            text.push_str(PIECES[rng.below(PIECES.len())]);
        }
        exercise(&text);
    }
    let mut bytes_rng = Rng(42);
    for _ in 0..1000 {
        let len = bytes_rng.below(200);
        let bytes: Vec<u8> = (0..len).map(|_| (bytes_rng.next() % 128) as u8).collect();
        exercise(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let depth = 100_000;
    let json = format!(
        "FROM scratch\nCMD {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert!(parse(&json, "Dockerfile").is_err());
    let unbalanced = format!("FROM scratch\nCMD {}\n", "[".repeat(depth));
    exercise(&unbalanced);
    let vars = format!(
        "FROM scratch\nENV A={}x{}\n",
        "${A:-".repeat(depth),
        "}".repeat(depth)
    );
    assert!(parse(&vars, "Dockerfile").is_err());
    let onbuild = format!("FROM scratch\n{}RUN x\n", "ONBUILD ".repeat(depth));
    assert!(parse(&onbuild, "Dockerfile").is_err());
    let quotes = format!("FROM scratch\nENV A={}\n", "\"'".repeat(depth));
    exercise(&quotes);
}

fn many_instructions(count: usize) -> String {
    let mut text = String::from("FROM scratch AS s0\n");
    for i in 0..count {
        text.push_str(match i % 5 {
            0 => "RUN echo $HOME && \\\n  true\n",
            1 => "ENV A=1 B=\"two\"\n",
            2 => "COPY --link a b /dir/\n",
            3 => "LABEL x=y\n",
            _ => "RUN [\"/bin/true\", \"x\"]\n",
        });
    }
    text
}

#[test]
fn huge_inputs_parse() {
    let dockerfile = parse(&continuation_file(100_000), "Dockerfile").unwrap();
    assert_eq!(dockerfile.instructions.len(), 2);
    let big = heredoc_file(200_000);
    let dockerfile = parse(&big, "Dockerfile").unwrap();
    assert_eq!(
        dockerfile.instructions[1].heredocs[0]
            .content
            .lines()
            .count(),
        200_000
    );
    let graph = compile(&dockerfile, &options(), &NoImages).unwrap();
    assert_eq!(graph.stages[0].steps.len(), 1);
}

/// The inputs frontend/benches/parse.rs times at growing sizes (to show the
/// parser scales linearly) must parse, or fail cleanly, at every size.
#[test]
fn scaling_inputs_parse_or_fail_cleanly() {
    let dockerfile = parse(&many_instructions(10_000), "Dockerfile").unwrap();
    assert_eq!(dockerfile.instructions.len(), 10_001);
    let graph = compile(&dockerfile, &options(), &NoImages).unwrap();
    assert_eq!(graph.stages[0].steps.len(), 10_000);
    let markers = heredoc_markers_file(10_000);
    let e = parse(&markers, "Dockerfile").unwrap_err();
    assert!(e.to_string().contains("unterminated heredoc"), "{e}");
    let _ = e.render(&markers);
    exercise(&heredoc_markers_file(10_000));
    exercise(&many_instructions(10_000));
}

/// Every other instruction of a long file fails a check: finding and
/// rendering them looks each line up once (not a walk of the text per
/// finding, which would be quadratic).
#[test]
fn many_findings_lint_and_render() {
    let mut text = String::from("FROM scratch\n");
    for _ in 0..50_000 {
        text.push_str("RUN true\nrun true\n");
    }
    let dockerfile = parse(&text, "Dockerfile").unwrap();
    let input = LintInput {
        source: &text,
        ..LintInput::default()
    };
    let report = lint(&dockerfile, &input);
    assert_eq!(report.findings.len(), 50_000);
    assert_eq!(report.render(&text).matches("| ^\n").count(), 50_000);
}
