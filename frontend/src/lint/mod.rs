//! Build checks: BuildKit's Dockerfile lint rules (StageNameCasing,
//! UndefinedVar, ...) over a parsed [`Dockerfile`], and the `# check=`
//! directive that skips them or makes them fail the build.
//!
//! Most rules read only the syntax tree (`rules`); the ones about variables
//! (`vars`) follow Docker's ARG and ENV scoping, with the base images' ENV
//! taken from a compiled [`BuildGraph`] when there is one. Nothing here
//! touches the context directory: CopyIgnoredFile asks the caller through
//! [`LintInput::ignored`].

use std::fmt;

use crate::ast::{Dockerfile, Instruction, Keyword};
use crate::error::{excerpt, excerpt_of_line, Span, Warning};
use crate::graph::{BuildGraph, CompileOptions};

mod directive;
mod rules;
mod vars;

pub use directive::CheckDirective;

/// One of BuildKit's build checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// A stage name is not lowercase.
    StageNameCasing,
    /// `FROM x as y`: the keywords' casing differ.
    FromAsCasing,
    /// Instruction keywords mix upper and lower case.
    ConsistentInstructionCasing,
    /// Two stages have the same name.
    DuplicateStageName,
    /// A stage is called `scratch` or `context`.
    ReservedStageName,
    /// CMD or ENTRYPOINT in shell form.
    JsonArgsRecommended,
    /// MAINTAINER instead of a label.
    MaintainerDeprecated,
    /// FROM uses a variable no global ARG declares.
    UndefinedArgInFrom,
    /// An instruction uses a variable nothing declares.
    UndefinedVar,
    /// WORKDIR relative with no absolute WORKDIR before it.
    WorkdirRelativePath,
    /// Several CMD, ENTRYPOINT or HEALTHCHECK in one stage.
    MultipleInstructionsDisallowed,
    /// `ENV key value` / `LABEL key value`.
    LegacyKeyValueFormat,
    /// FROM's image is empty or invalid with the ARG defaults.
    InvalidDefaultArgInFrom,
    /// `FROM --platform=linux/amd64`: a constant platform.
    FromPlatformFlagConstDisallowed,
    /// COPY or ADD of a file .dockerignore excludes.
    CopyIgnoredFile,
    /// ARG or ENV named like a secret.
    SecretsUsedInArgOrEnv,
    /// The base image's platform is not the one asked for.
    InvalidBaseImagePlatform,
    /// EXPOSE with an upper-case protocol.
    ExposeProtoCasing,
    /// EXPOSE with an IP address or a host port.
    ExposeInvalidFormat,
}

impl Rule {
    /// Every rule, in the order of BuildKit's reference.
    pub const ALL: [Rule; 19] = [
        Rule::StageNameCasing,
        Rule::FromAsCasing,
        Rule::ConsistentInstructionCasing,
        Rule::DuplicateStageName,
        Rule::ReservedStageName,
        Rule::JsonArgsRecommended,
        Rule::MaintainerDeprecated,
        Rule::UndefinedArgInFrom,
        Rule::UndefinedVar,
        Rule::WorkdirRelativePath,
        Rule::MultipleInstructionsDisallowed,
        Rule::LegacyKeyValueFormat,
        Rule::InvalidDefaultArgInFrom,
        Rule::FromPlatformFlagConstDisallowed,
        Rule::CopyIgnoredFile,
        Rule::SecretsUsedInArgOrEnv,
        Rule::InvalidBaseImagePlatform,
        Rule::ExposeProtoCasing,
        Rule::ExposeInvalidFormat,
    ];

    /// BuildKit's name for the rule.
    pub fn name(self) -> &'static str {
        match self {
            Rule::StageNameCasing => "StageNameCasing",
            Rule::FromAsCasing => "FromAsCasing",
            Rule::ConsistentInstructionCasing => "ConsistentInstructionCasing",
            Rule::DuplicateStageName => "DuplicateStageName",
            Rule::ReservedStageName => "ReservedStageName",
            Rule::JsonArgsRecommended => "JSONArgsRecommended",
            Rule::MaintainerDeprecated => "MaintainerDeprecated",
            Rule::UndefinedArgInFrom => "UndefinedArgInFrom",
            Rule::UndefinedVar => "UndefinedVar",
            Rule::WorkdirRelativePath => "WorkdirRelativePath",
            Rule::MultipleInstructionsDisallowed => "MultipleInstructionsDisallowed",
            Rule::LegacyKeyValueFormat => "LegacyKeyValueFormat",
            Rule::InvalidDefaultArgInFrom => "InvalidDefaultArgInFrom",
            Rule::FromPlatformFlagConstDisallowed => "FromPlatformFlagConstDisallowed",
            Rule::CopyIgnoredFile => "CopyIgnoredFile",
            Rule::SecretsUsedInArgOrEnv => "SecretsUsedInArgOrEnv",
            Rule::InvalidBaseImagePlatform => "InvalidBaseImagePlatform",
            Rule::ExposeProtoCasing => "ExposeProtoCasing",
            Rule::ExposeInvalidFormat => "ExposeInvalidFormat",
        }
    }

    /// The rule called `name` (BuildKit compares names ignoring case).
    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL
            .into_iter()
            .find(|rule| rule.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One check that a Dockerfile fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The check.
    pub rule: Rule,
    /// Where: the instruction, or the word at fault.
    pub span: Span,
    /// What is wrong, as BuildKit words it.
    pub message: String,
}

impl Finding {
    /// `file:line:column: Rule: message`, then the line with a caret under
    /// the column.
    pub fn render(&self, source: &str) -> String {
        let mut out = self.to_string();
        if let Some(lines) = excerpt(&self.span, source) {
            out.push_str(&lines);
        }
        out
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.span, self.rule, self.message)
    }
}

/// What the checks need besides the Dockerfile.
#[derive(Clone, Copy, Default)]
pub struct LintInput<'a> {
    /// The Dockerfile's text, for the keywords as written.
    pub source: &'a str,
    /// The platforms (for the FROM defaults); of the build args only
    /// `BUILDKIT_DOCKERFILE_CHECK` is used: the checks judge the
    /// Dockerfile's own defaults, as BuildKit does.
    pub options: Option<&'a CompileOptions>,
    /// The compiled graph, when compiling worked: the base images' ENV and
    /// platforms. Without it base images are taken to set only PATH.
    pub graph: Option<&'a BuildGraph>,
    /// Whether the context's .dockerignore excludes a path (relative to the
    /// context); without it CopyIgnoredFile is not checked.
    pub ignored: Option<&'a dyn Fn(&str) -> bool>,
}

/// What the checks found, after `# check=`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LintReport {
    /// The findings not skipped, in file order.
    pub findings: Vec<Finding>,
    /// `# check=error=true`: the findings fail the build.
    pub error: bool,
    /// Problems with the `# check=` directive itself (an unknown rule in
    /// `skip=`, a bad `error=` value), at the directive's line.
    pub notes: Vec<Warning>,
}

impl LintReport {
    /// Whether the findings must fail the build.
    pub fn fails(&self) -> bool {
        self.error && !self.findings.is_empty()
    }

    /// The report as `kiln lint` prints it: the directive's notes, then each
    /// finding (`warning:`, or `error:` under `error=true`) with its line and
    /// a caret, one block after another; empty when all is well.
    pub fn render(&self, source: &str) -> String {
        // One pass over the source, however many findings.
        let lines = source_lines(source);
        let excerpt = |span: &Span| {
            (span.line as usize)
                .checked_sub(1)
                .and_then(|i| lines.get(i))
                .map_or(String::new(), |text| excerpt_of_line(span, text))
        };
        let mut out = String::new();
        for note in &self.notes {
            out.push_str(&format!("warning: {note}{}\n", excerpt(&note.span)));
        }
        let level = if self.error { "error" } else { "warning" };
        for finding in &self.findings {
            out.push_str(&format!("{level}: {finding}{}\n", excerpt(&finding.span)));
        }
        out
    }

    /// The rules found, without repeats, in rule order.
    pub fn rules(&self) -> Vec<Rule> {
        let mut rules: Vec<Rule> = self.findings.iter().map(|f| f.rule).collect();
        rules.sort();
        rules.dedup();
        rules
    }
}

/// The build arg that replaces the `# check=` directive, as in BuildKit.
pub const CHECK_BUILD_ARG: &str = "BUILDKIT_DOCKERFILE_CHECK";

/// Runs every check on `dockerfile` and applies its `# check=` directive
/// (or the `BUILDKIT_DOCKERFILE_CHECK` build arg, which takes its place).
pub fn lint(dockerfile: &Dockerfile, input: &LintInput<'_>) -> LintReport {
    let from_arg = input
        .options
        .and_then(|o| o.build_args.get(CHECK_BUILD_ARG))
        .map(String::as_str);
    let text = from_arg.or(dockerfile.check.as_deref()).unwrap_or("");
    let directive = CheckDirective::parse(text);
    let mut findings = rules::check(dockerfile, input);
    findings.extend(vars::check(dockerfile, input));
    findings.retain(|f| !directive.skips(f.rule));
    // Dockerfile order; a stable sort keeps each instruction's findings in
    // rule order.
    findings.sort_by_key(|f| (f.span.line, f.span.column));
    let span = directive_span(dockerfile, input.source);
    let notes = directive
        .notes
        .into_iter()
        .map(|message| Warning {
            span: span.clone(),
            message: match from_arg {
                Some(_) => format!("--build-arg {CHECK_BUILD_ARG}: {message}"),
                None => message,
            },
        })
        .collect();
    LintReport {
        findings,
        error: directive.error,
        notes,
    }
}

/// Where the `# check=` directive is: the first comment line that holds
/// it (directives come first), else line 1.
fn directive_span(dockerfile: &Dockerfile, source: &str) -> Span {
    let file = dockerfile
        .instructions
        .first()
        .map_or_else(|| "Dockerfile".into(), |i| i.span.file.clone());
    let line = source
        .lines()
        .take_while(|l| l.trim_start().starts_with('#') || l.trim().is_empty())
        .position(|l| l.to_ascii_lowercase().contains("check"))
        .map_or(1, |i| i + 1);
    let line = u32::try_from(line).unwrap_or(u32::MAX);
    Span {
        file,
        line,
        column: 1,
        end_line: line,
    }
}

/// A finding at `span`.
fn finding(rule: Rule, span: &Span, message: String) -> Finding {
    Finding {
        rule,
        span: span.clone(),
        message,
    }
}

/// The ARGs before the first FROM, and the stages (each starting with its
/// FROM).
fn split_stages(dockerfile: &Dockerfile) -> (&[Instruction], Vec<&[Instruction]>) {
    let instructions = &dockerfile.instructions;
    let starts: Vec<usize> = (0..instructions.len())
        .filter(|&i| instructions[i].keyword == Keyword::From)
        .collect();
    let first = starts.first().copied().unwrap_or(instructions.len());
    let stages = starts
        .iter()
        .enumerate()
        .map(|(n, &start)| {
            let end = starts.get(n + 1).copied().unwrap_or(instructions.len());
            &instructions[start..end]
        })
        .collect();
    (&instructions[..first], stages)
}

/// The source's lines (a byte order mark dropped), for looking lines up by
/// number without walking the text again.
fn source_lines(source: &str) -> Vec<&str> {
    source
        .strip_prefix('\u{feff}')
        .unwrap_or(source)
        .lines()
        .collect()
}

/// `FROM image AS name`: the name as written.
fn stage_name(from: &Instruction) -> Option<&str> {
    match &*from.args {
        [_, as_word, name] if as_word.eq_ignore_ascii_case("as") => Some(name),
        _ => None,
    }
}
