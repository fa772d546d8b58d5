//! Human views of a build graph: an indented text listing and a graphviz
//! drawing (`kiln parse --format text|dot`).

use std::fmt::Write as _;

use crate::graph::{Base, BuildGraph, CopyFrom, RunMount, Stage, StepKind};

/// At most `max` characters of `text` on one line, with `…` when cut.
fn shorten(text: &str, max: usize) -> String {
    let one_line = text.replace('\n', "\\n");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn short_key(key: &crate::key::Key) -> String {
    key.to_hex()[..12].to_string()
}

fn base_text(graph: &BuildGraph, stage: &Stage) -> String {
    match &stage.base {
        Base::Scratch => "scratch".to_string(),
        Base::Image { reference, image } => format!("image {reference} ({})", image.digest),
        Base::Stage(index) => match graph.stage(*index) {
            Some(parent) => format!("stage {}", parent.display_name()),
            None => format!("stage {index}"),
        },
    }
}

fn from_text(graph: &BuildGraph, from: &CopyFrom) -> String {
    match from {
        CopyFrom::Context => "context".to_string(),
        CopyFrom::Named(name) => format!("context {name}"),
        CopyFrom::Stage(index) => match graph.stage(*index) {
            Some(stage) => format!("stage {}", stage.display_name()),
            None => format!("stage {index}"),
        },
        CopyFrom::Image { reference, .. } => format!("image {reference}"),
    }
}

impl BuildGraph {
    /// The needed stages and their resolved steps, one block per stage, in
    /// build order.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let stages: Vec<&Stage> = self
            .needed_stages()
            .unwrap_or_else(|_| self.stages.iter().collect());
        for stage in stages {
            let target = if stage.index == self.target {
                " (target)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "stage {} {}{target}: FROM {} [{}] {}",
                stage.index,
                stage.name.as_deref().unwrap_or("-"),
                base_text(self, stage),
                stage.platform,
                short_key(&stage.digest),
            );
            for step in &stage.steps {
                let _ = writeln!(
                    out,
                    "  {:>4} {} {}",
                    step.span.line,
                    short_key(&step.digest),
                    shorten(&step.text, 100)
                );
                match &step.kind {
                    StepKind::Run(run) => {
                        let _ = writeln!(
                            out,
                            "         argv {}",
                            shorten(&format!("{:?}", run.argv), 120)
                        );
                        let _ = writeln!(
                            out,
                            "         user {} workdir {}{}{}",
                            run.user.as_deref().unwrap_or("root"),
                            run.workdir,
                            run.network
                                .map(|n| format!(" network {n}"))
                                .unwrap_or_default(),
                            if run.security == crate::graph::Security::Insecure {
                                " security insecure"
                            } else {
                                ""
                            }
                        );
                        let _ = writeln!(out, "         env {}", shorten(&run.env.join(" "), 120));
                        for mount in &run.mounts {
                            let _ = writeln!(out, "         mount {}", mount_text(self, mount));
                        }
                        for file in &run.files {
                            let _ = writeln!(out, "         file {} ({:o})", file.path, file.mode);
                        }
                    }
                    StepKind::Copy(copy) => {
                        let mut sources: Vec<String> = copy.sources.clone();
                        sources.extend(copy.heredocs.iter().map(|(n, _)| format!("<<{n}")));
                        let _ = writeln!(
                            out,
                            "         {} {} from {} -> {}{}{}",
                            if copy.add { "add" } else { "copy" },
                            shorten(&sources.join(" "), 80),
                            from_text(self, &copy.from),
                            copy.dest,
                            if copy.dest_is_dir { " (dir)" } else { "" },
                            copy.unpack
                                .map(|unpack| format!(" unpack={unpack}"))
                                .unwrap_or_default()
                        );
                    }
                    StepKind::Workdir(workdir) => {
                        let _ = writeln!(out, "         mkdir {}", workdir.path);
                    }
                    StepKind::Config => {}
                }
                if step.in_history {
                    let _ = writeln!(out, "         history {}", shorten(&step.created_by, 120));
                } else {
                    let _ = writeln!(out, "         (no history entry)");
                }
            }
            if stage.index == self.target {
                let config = serde_json::to_string(&self.config).unwrap_or_default();
                let _ = writeln!(out, "  config {config}");
            }
        }
        out
    }

    /// A graphviz drawing: one cluster per stage, steps in order, dashed
    /// edges for `--from` and mounts of other stages.
    pub fn to_dot(&self) -> String {
        let mut out = String::from(
            "digraph kiln {\n  rankdir=TB;\n  compound=true;\n  node [shape=box, fontname=\"monospace\", fontsize=10];\n",
        );
        let last_node = |stage: &Stage| -> String {
            match stage.steps.len() {
                0 => format!("s{}_base", stage.index),
                n => format!("s{}_{}", stage.index, n - 1),
            }
        };
        let mut edges = Vec::new();
        for stage in &self.stages {
            let _ = writeln!(out, "  subgraph cluster_{} {{", stage.index);
            let title = format!(
                "stage {}{}",
                stage.display_name(),
                if stage.index == self.target {
                    " (target)"
                } else {
                    ""
                }
            );
            let _ = writeln!(out, "    label={};", dot_string(&title));
            let _ = writeln!(
                out,
                "    s{}_base [shape=ellipse, label={}];",
                stage.index,
                dot_string(&format!("FROM {}", base_text(self, stage)))
            );
            let mut previous = format!("s{}_base", stage.index);
            for (i, step) in stage.steps.iter().enumerate() {
                let node = format!("s{}_{i}", stage.index);
                let style = if step.empty_layer {
                    ", style=dashed"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "    {node} [label={}{style}];",
                    dot_string(&shorten(&step.text, 60))
                );
                let _ = writeln!(out, "    {previous} -> {node};");
                let mut froms = Vec::new();
                match &step.kind {
                    StepKind::Copy(copy) => froms.push((&copy.from, "--from")),
                    StepKind::Run(run) => froms.extend(
                        run.mounts
                            .iter()
                            .filter_map(|m| m.from().map(|f| (f, "mount"))),
                    ),
                    _ => {}
                }
                for (from, label) in froms {
                    match from {
                        CopyFrom::Stage(index) => {
                            if let Some(source) = self.stage(*index) {
                                edges.push(format!(
                                    "  {} -> {node} [style=dashed, color=blue, label=\"{label}\"];",
                                    last_node(source)
                                ));
                            }
                        }
                        CopyFrom::Image { reference, .. } => {
                            let image_node = format!("image_{}", sanitize(reference));
                            edges.push(format!(
                                "  {image_node} [shape=ellipse, label={}];\n  {image_node} -> {node} [style=dashed, color=blue, label=\"{label}\"];",
                                dot_string(reference)
                            ));
                        }
                        CopyFrom::Context | CopyFrom::Named(_) => {}
                    }
                }
                previous = node;
            }
            let _ = writeln!(out, "  }}");
            if let Base::Stage(index) = stage.base {
                if let Some(parent) = self.stage(index) {
                    edges.push(format!(
                        "  {} -> s{}_base [color=darkgreen, label=\"FROM\"];",
                        last_node(parent),
                        stage.index
                    ));
                }
            }
        }
        for edge in edges {
            out.push_str(&edge);
            out.push('\n');
        }
        out.push_str("}\n");
        out
    }
}

fn mount_text(graph: &BuildGraph, mount: &RunMount) -> String {
    match mount {
        RunMount::Bind {
            target,
            from,
            source,
            rw,
        } => format!(
            "bind {target} <- {}:{source}{}",
            from_text(graph, from),
            if *rw { " rw" } else { "" }
        ),
        RunMount::Cache {
            id,
            target,
            sharing,
            readonly,
            ..
        } => format!(
            "cache {target} id={id} sharing={}{}",
            format!("{sharing:?}").to_lowercase(),
            if *readonly { " ro" } else { "" }
        ),
        RunMount::Tmpfs { target, size } => match size {
            Some(size) => format!("tmpfs {target} size={size}"),
            None => format!("tmpfs {target}"),
        },
        RunMount::Secret {
            id, target, env, ..
        } => format!(
            "secret id={id}{}{}",
            target
                .as_ref()
                .map(|t| format!(" target={t}"))
                .unwrap_or_default(),
            env.as_ref()
                .map(|e| format!(" env={e}"))
                .unwrap_or_default()
        ),
        RunMount::Ssh { id, target, .. } => format!("ssh id={id} target={target}"),
    }
}

fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A graphviz double-quoted string.
fn dot_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use crate::{compile, parse, CompileOptions, NoImages};

    #[test]
    fn dot_draws_clusters_and_from_edges() {
        let dockerfile = parse(
            "FROM scratch AS a\nRUN x\nFROM a AS b\nCOPY --from=a \"/q\" /q\nCOPY --from=img /y /y\n",
            "Dockerfile",
        )
        .unwrap();
        let graph = compile(&dockerfile, &CompileOptions::default(), &NoImages).unwrap();
        let dot = graph.to_dot();
        assert!(dot.starts_with("digraph kiln {"));
        assert!(dot.contains("subgraph cluster_0"));
        assert!(dot.contains("subgraph cluster_1"));
        assert!(dot.contains("s0_0 -> s1_0 [style=dashed, color=blue, label=\"--from\"]"));
        assert!(dot.contains("s0_0 -> s1_base [color=darkgreen, label=\"FROM\"]"));
        assert!(dot.contains("image_img -> s1_1"));
        assert!(dot.contains(r#"label="COPY --from=a \"/q\" /q""#));
        assert!(dot.trim_end().ends_with('}'));
        let text = graph.to_text();
        assert!(text.starts_with("stage 0 a: FROM scratch"));
        assert!(text.contains("stage 1 b (target): FROM stage a"));
    }
}
