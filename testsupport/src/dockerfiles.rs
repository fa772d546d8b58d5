//! Generated Dockerfiles: the benchmark and the instruction-count example
//! share `generate`, so both measure the same input; the benchmark (how parse
//! time scales) and the pathological tests (nothing panics at size) share the
//! others.

/// A Dockerfile of `instructions` instructions mixing every common kind, in
/// several stages, with continuations, heredocs and variables.
pub fn generate(instructions: usize) -> String {
    generate_stages(instructions, true)
}

/// `generate` in one stage: no stage inherits another's labels, so memory
/// grows with the instructions alone.
pub fn generate_flat(instructions: usize) -> String {
    generate_stages(instructions, false)
}

fn generate_stages(instructions: usize, stages: bool) -> String {
    let mut text =
        String::from("# syntax=docker/dockerfile:1\nARG BASE=debian:12\nFROM $BASE AS stage0\n");
    let mut count = 2;
    let mut stage = 0;
    while count < instructions {
        let i = count;
        let line = match i % 10 {
            0 => format!("RUN --mount=type=cache,target=/var/cache/apt apt-get update && \\\n    apt-get install -y pkg{i}\n"),
            1 => format!(
                "ENV VAR{}=value{i} OTHER{}=\"${{VAR{}}}/bin\"\n",
                i % 20,
                i % 20,
                i % 20
            ),
            2 => format!("COPY --chown=app:app src{i}/ ./dst{i}/\n"),
            3 => format!("WORKDIR /work/${{VAR{}}}\n", (i - 2) % 20),
            4 => format!("LABEL org.example.k{i}=\"v {i}\"\n"),
            5 => format!("RUN [\"/bin/echo\", \"exec {i}\"]\n"),
            6 => format!("ARG A{}=default{i}\n", i % 30),
            7 => format!("RUN <<EOF\necho heredoc {i}\necho $A{}\nEOF\n", (i - 1) % 30),
            8 => format!("EXPOSE {}/tcp\n", 1000 + i % 5000),
            _ => {
                if stages && i % 1000 == 9 {
                    stage += 1;
                    format!("FROM stage{} AS stage{stage}\n", stage - 1)
                } else {
                    format!("USER user{i}\n")
                }
            }
        };
        text.push_str(&line);
        count += 1;
    }
    if stages {
        text.push_str("COPY --from=stage0 /a /b\n");
    }
    text.push_str("CMD [\"/bin/sh\"]\n");
    text
}

/// One RUN continued over `lines` physical lines, with comments inside.
pub fn continuation_file(lines: usize) -> String {
    let mut text = String::from("FROM scratch\nRUN echo start \\\n");
    for i in 0..lines {
        text.push_str(&format!("  --flag{i} x{i} \\\n"));
        if i % 7 == 0 {
            text.push_str("# a comment inside\n\n");
        }
    }
    text.push_str("  end\n");
    text
}

/// A COPY with one heredoc of `lines` lines.
pub fn heredoc_file(lines: usize) -> String {
    let mut text = String::from("FROM scratch\nCOPY <<EOF /big\n");
    for i in 0..lines {
        text.push_str(&format!("line {i} with $VAR and ${{OTHER:-x}} \\ text\n"));
    }
    text.push_str("EOF\n");
    text
}

/// A RUN naming `count` heredocs, none terminated (an error).
pub fn heredoc_markers_file(count: usize) -> String {
    let mut text = String::from("FROM scratch\nRUN cat");
    for i in 0..count {
        text.push_str(&format!(" <<x{i} \\\n"));
    }
    text.push_str("\nbody\n");
    text
}
