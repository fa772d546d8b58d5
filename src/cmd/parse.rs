//! `kiln parse`: a Dockerfile's instructions (JSON), or its build graph as
//! text or graphviz, without a store. Errors show the offending line.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use kiln_frontend::{compile, parse, CompileOptions, NoImages};

use super::{CmdResult, Global};

/// What `kiln parse` prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// The instructions as parsed (spans, flags, args, pairs, heredocs).
    Json,
    /// The build graph: stages, resolved steps, digests, final configs.
    Text,
    /// The build graph for graphviz (`| dot -Tsvg > graph.svg`).
    Dot,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Dockerfile to read, `-` for standard input.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        default_value = "Dockerfile"
    )]
    file: String,
    /// What to print.
    #[arg(long, value_enum, default_value = "json")]
    format: Format,
    /// Set a build argument (repeatable).
    #[arg(long = "build-arg", value_name = "K=V")]
    build_args: Vec<String>,
    /// The stage to build (name or index) [default: the last].
    #[arg(long, value_name = "STAGE")]
    target: Option<String>,
    /// The platform to build for, os/arch[/variant] [default: this machine's].
    #[arg(long, value_name = "PLATFORM")]
    platform: Option<String>,
}

/// This machine as an OCI platform string.
pub(crate) fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm/v7",
        "mips64" if cfg!(target_endian = "little") => "mips64le",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        other => other,
    };
    format!("linux/{arch}")
}

pub fn run(_global: &Global, args: Args) -> CmdResult {
    let (name, text) = if args.file == "-" {
        ("<stdin>".to_string(), super::read_dockerfile(None)?)
    } else {
        let text = super::read_dockerfile(Some(std::path::Path::new(&args.file)))?;
        (args.file.clone(), text)
    };
    let mut build_args = BTreeMap::new();
    for arg in &args.build_args {
        match arg.split_once('=') {
            Some((k, v)) if !k.is_empty() => build_args.insert(k.to_string(), v.to_string()),
            _ => match std::env::var(arg) {
                // `--build-arg NAME` takes the value from the environment, as docker does.
                Ok(v) if !arg.is_empty() => build_args.insert(arg.clone(), v),
                _ => anyhow::bail!("--build-arg {arg:?}: write NAME=value (or NAME to take it from the environment)"),
            },
        };
    }
    let dockerfile = parse(&text, &name).map_err(|e| anyhow::anyhow!(e.render(&text)))?;
    let output = match args.format {
        // A syntax dump: nothing is expanded or compiled.
        Format::Json => {
            let mut json = serde_json::to_string_pretty(&dockerfile)?;
            json.push('\n');
            json
        }
        Format::Text | Format::Dot => {
            let platform = args.platform.unwrap_or_else(host_platform);
            let options = CompileOptions {
                build_args,
                target: args.target,
                target_platform: platform,
                build_platform: host_platform(),
                ..CompileOptions::default()
            };
            let graph = compile(&dockerfile, &options, &NoImages)
                .map_err(|e| anyhow::anyhow!(e.render(&text)))?;
            for warning in &graph.warnings {
                eprintln!("warning: {warning}");
            }
            let checks = super::lint::Checks {
                dockerfile: &dockerfile,
                text: &text,
                options: &options,
                graph: Some(&graph),
                context: None,
                dockerfile_path: None,
            };
            super::lint::print(&checks.run()?, &text);
            match args.format {
                Format::Dot => graph.to_dot(),
                _ => graph.to_text(),
            }
        }
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // A closed pipe (`| head`) is not an error worth reporting.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("cannot write to standard output"),
    }
}
