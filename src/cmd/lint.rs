//! `kiln lint`: BuildKit's build checks on a Dockerfile, without a store
//! (base images are taken to have an empty config, as for `kiln parse`);
//! and what `kiln build` shares with it: running the checks with the
//! context's .dockerignore, printing the findings, and the exit status of
//! `--check`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kiln_frontend::{
    compile, lint, parse, BuildGraph, CompileOptions, Dockerfile, LintInput, LintReport, NoImages,
};
use kiln_solver::IgnoreRules;

use super::{CmdResult, Global};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Dockerfile [default: CONTEXT/Dockerfile]; `-` reads it from stdin.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<String>,
    /// The stage whose base images are compiled (name or index) [default:
    /// the last]; every stage is checked.
    #[arg(long, value_name = "STAGE")]
    target: Option<String>,
    /// The platform to check for, os/arch[/variant] [default: this machine's].
    #[arg(long, value_name = "PLATFORM")]
    platform: Option<String>,
    /// The context directory, for its .dockerignore (CopyIgnoredFile).
    #[arg(value_name = "CONTEXT", default_value = ".")]
    context: PathBuf,
}

pub fn run(_global: &Global, args: Args) -> CmdResult {
    let (name, text) = read_dockerfile(&args)?;
    let dockerfile = parse(&text, &name).map_err(|e| anyhow::anyhow!(e.render(&text)))?;
    let host = super::parse::host_platform();
    let options = CompileOptions {
        build_args: Default::default(),
        target: args.target.clone(),
        target_platform: args.platform.clone().unwrap_or_else(|| host.clone()),
        build_platform: host,
        named_contexts: Default::default(),
    };
    let dockerfile_path = match args.file.as_deref() {
        Some("-") => None,
        Some(file) => Some(PathBuf::from(file)),
        None => Some(args.context.join("Dockerfile")),
    };
    let graph = compile(&dockerfile, &options, &NoImages);
    let checks = Checks {
        dockerfile: &dockerfile,
        text: &text,
        options: &options,
        graph: graph.as_ref().ok(),
        context: Some(&args.context),
        dockerfile_path: dockerfile_path.as_deref(),
    };
    let report = checks.run()?;
    print(&report, &text);
    // A Dockerfile that does not compile fails the check, after its findings.
    graph.map_err(|e| anyhow::anyhow!(e.render(&text)))?;
    check_result(&report)
}

fn read_dockerfile(args: &Args) -> anyhow::Result<(String, String)> {
    if args.file.as_deref() == Some("-") {
        return Ok(("<stdin>".to_string(), super::read_dockerfile(None)?));
    }
    // Named as `kiln build` names it: as given, or `Dockerfile`.
    let (path, name) = match &args.file {
        Some(file) => (PathBuf::from(file), file.clone()),
        None => (args.context.join("Dockerfile"), "Dockerfile".to_string()),
    };
    Ok((name, super::read_dockerfile(Some(&path))?))
}

/// What the checks of one build read.
pub struct Checks<'a> {
    pub dockerfile: &'a Dockerfile,
    pub text: &'a str,
    pub options: &'a CompileOptions,
    /// The compiled graph, when compiling worked.
    pub graph: Option<&'a BuildGraph>,
    /// The context directory, when there is one (for .dockerignore).
    pub context: Option<&'a Path>,
    pub dockerfile_path: Option<&'a Path>,
}

impl Checks<'_> {
    /// Runs the checks with the context's .dockerignore rules.
    pub fn run(&self) -> anyhow::Result<LintReport> {
        let rules = match self.context.filter(|c| c.is_dir()) {
            Some(context) => Some(IgnoreRules::for_build(context, self.dockerfile_path)?),
            None => None,
        };
        let ignored = |path: &str| rules.as_ref().is_some_and(|r| r.is_excluded(path));
        let input = LintInput {
            source: self.text,
            options: Some(self.options),
            graph: self.graph,
            ignored: rules.as_ref().map(|_| &ignored as &dyn Fn(&str) -> bool),
        };
        Ok(lint(self.dockerfile, &input))
    }
}

/// Prints the findings (and the directive's notes) on stderr.
pub fn print(report: &LintReport, text: &str) {
    let rendered = report.render(text);
    if !rendered.is_empty() {
        eprint!("{rendered}");
    }
}

/// The error a build stops with when `# check=error=true` and a check failed.
pub fn fail_on_error(report: &LintReport) -> anyhow::Result<()> {
    if report.fails() {
        let rules: Vec<&str> = report.rules().into_iter().map(|r| r.name()).collect();
        anyhow::bail!(
            "lint violations found for rules: {} (# check=error=true); fix them, or skip a rule with # check=skip=RULE",
            rules.join(", ")
        );
    }
    Ok(())
}

/// `--check`'s outcome, as `docker build --check`: a summary on stderr, and
/// exit status 1 when any check failed (warnings included).
pub fn check_result(report: &LintReport) -> CmdResult {
    fail_on_error(report)?;
    match report.findings.len() {
        0 => {
            eprintln!("check complete, no warnings found");
            Ok(ExitCode::SUCCESS)
        }
        n => {
            let plural = if n == 1 { "" } else { "s" };
            eprintln!("check complete, {n} warning{plural} found");
            Ok(ExitCode::FAILURE)
        }
    }
}
