//! The checks that read only the syntax tree: casing, stage names, forms of
//! instructions, EXPOSE values, secrets in ARG/ENV names, and files that
//! .dockerignore excludes.

use std::collections::HashSet;

use super::{finding, source_lines, split_stages, stage_name, Finding, LintInput, Rule};
use crate::ast::{Dockerfile, Instruction, Keyword};

/// Every syntax-tree check, in no particular order.
pub(super) fn check(dockerfile: &Dockerfile, input: &LintInput<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let lines = source_lines(input.source);
    instruction_casing(dockerfile, &lines, &mut out);
    let (_, stages) = split_stages(dockerfile);
    let mut names: HashSet<String> = HashSet::new();
    for stage in stages {
        let Some((from, body)) = stage.split_first() else {
            continue;
        };
        from_line(from, &lines, &mut names, &mut out);
        stage_body(body, &mut out);
        for instruction in body {
            one_instruction(instruction, input, &mut out);
        }
    }
    out
}

/// The keyword as written in the source, when the span points at it.
fn written_keyword<'s>(instruction: &Instruction, lines: &[&'s str]) -> Option<&'s str> {
    let line = lines.get((instruction.span.line as usize).checked_sub(1)?)?;
    let start = line
        .char_indices()
        .nth((instruction.span.column as usize).checked_sub(1)?)?
        .0;
    let word = line.get(start..start + instruction.keyword.as_str().len())?;
    word.eq_ignore_ascii_case(instruction.keyword.as_str())
        .then_some(word)
}

/// ConsistentInstructionCasing: keywords follow the file's majority casing
/// (upper case on a tie); a mixed-case keyword never matches.
fn instruction_casing(dockerfile: &Dockerfile, lines: &[&str], out: &mut Vec<Finding>) {
    let written: Vec<(&Instruction, &str)> = dockerfile
        .instructions
        .iter()
        .filter_map(|i| Some((i, written_keyword(i, lines)?)))
        .collect();
    let upper = written
        .iter()
        .filter(|(_, w)| *w == w.to_ascii_uppercase())
        .count();
    let lower = written
        .iter()
        .filter(|(_, w)| *w == w.to_ascii_lowercase())
        .count();
    let majority_upper = upper >= lower;
    for (instruction, word) in written {
        let expected = if majority_upper {
            word.to_ascii_uppercase()
        } else {
            word.to_ascii_lowercase()
        };
        if word != expected {
            out.push(finding(
                Rule::ConsistentInstructionCasing,
                &instruction.span,
                format!(
                    "Command '{word}' should match the case of the command majority ({})",
                    if majority_upper {
                        "uppercase"
                    } else {
                        "lowercase"
                    }
                ),
            ));
        }
    }
}

/// The FROM line's checks: AS casing, the stage name, a constant platform.
fn from_line(
    from: &Instruction,
    lines: &[&str],
    names: &mut HashSet<String>,
    out: &mut Vec<Finding>,
) {
    let span = &from.span;
    if let (Some(name), Some(keyword)) = (stage_name(from), written_keyword(from, lines)) {
        let as_word = &from.args[1];
        let from_upper = keyword == keyword.to_ascii_uppercase();
        let from_lower = keyword == keyword.to_ascii_lowercase();
        if (from_upper && *as_word != as_word.to_ascii_uppercase())
            || (from_lower && *as_word != as_word.to_ascii_lowercase())
        {
            out.push(finding(
                Rule::FromAsCasing,
                span,
                format!("'{as_word}' and '{keyword}' keywords' casing do not match"),
            ));
        }
        let lower = name.to_lowercase();
        if name != lower {
            out.push(finding(
                Rule::StageNameCasing,
                span,
                format!("Stage name '{name}' should be lowercase"),
            ));
        }
        if lower == "scratch" || lower == "context" {
            out.push(finding(
                Rule::ReservedStageName,
                span,
                format!("Stage name should not use the same name as reserved stage {lower:?}"),
            ));
        }
        if !names.insert(lower.clone()) {
            out.push(finding(
                Rule::DuplicateStageName,
                span,
                format!("Duplicate stage name {lower:?}, stage names should be unique"),
            ));
        }
    }
    let platform_flag = from.flag("platform");
    if let Some((flag, platform)) = platform_flag.and_then(|f| Some((f, f.value.as_deref()?))) {
        // A stage named for the platform it pins (`AS build-arm64`) is
        // deliberate, as BuildKit lets it be.
        let arch = platform.split('/').nth(1).unwrap_or(platform);
        let named_for_it =
            stage_name(from).is_some_and(|n| n.to_lowercase().contains(&arch.to_lowercase()));
        if !platform.contains('$') && !named_for_it {
            out.push(finding(
                Rule::FromPlatformFlagConstDisallowed,
                &flag.span,
                format!("FROM --platform flag should not use constant value {platform:?}"),
            ));
        }
    }
}

/// Checks about a stage as a whole: repeated CMD/ENTRYPOINT/HEALTHCHECK,
/// shell-form CMD/ENTRYPOINT, relative WORKDIR.
fn stage_body(body: &[Instruction], out: &mut Vec<Finding>) {
    for keyword in [Keyword::Cmd, Keyword::Entrypoint, Keyword::Healthcheck] {
        let found: Vec<&Instruction> = body.iter().filter(|i| i.keyword == keyword).collect();
        if let Some((_, earlier)) = found.split_last() {
            for instruction in earlier {
                out.push(finding(
                    Rule::MultipleInstructionsDisallowed,
                    &instruction.span,
                    format!("Multiple {keyword} instructions should not be used in the same stage because only the last one will be used"),
                ));
            }
        }
    }
    let mut shell_set = false;
    let mut workdir_set = false;
    for instruction in body {
        match instruction.keyword {
            Keyword::Shell => shell_set = true,
            Keyword::Cmd | Keyword::Entrypoint if !instruction.exec && !shell_set => {
                out.push(finding(
                    Rule::JsonArgsRecommended,
                    &instruction.span,
                    format!(
                        "JSON arguments recommended for {} to prevent unintended behavior related to OS signals",
                        instruction.keyword
                    ),
                ));
            }
            Keyword::Workdir => {
                let dir = instruction.args.first().map_or("", String::as_str);
                let dir = dir.trim_matches(|c| c == '"' || c == '\'');
                // Relative to an earlier WORKDIR of the stage is what was meant.
                let relative = !dir.starts_with('/') && !dir.starts_with('$');
                if relative && !workdir_set {
                    out.push(finding(
                        Rule::WorkdirRelativePath,
                        &instruction.span,
                        format!("Relative workdir {dir:?} can have unexpected results if the base image changes"),
                    ));
                }
                workdir_set = true;
            }
            _ => {}
        }
    }
}

/// Checks about one instruction on its own.
fn one_instruction(instruction: &Instruction, input: &LintInput<'_>, out: &mut Vec<Finding>) {
    let span = &instruction.span;
    match instruction.keyword {
        Keyword::Maintainer => out.push(finding(
            Rule::MaintainerDeprecated,
            span,
            "Maintainer instruction is deprecated in favor of using label".into(),
        )),
        Keyword::Env | Keyword::Label => {
            let first = instruction.text().split_whitespace().next().unwrap_or("");
            if !first.contains('=') && instruction.pairs.as_ref().is_some_and(|p| !p.is_empty()) {
                let keyword = instruction.keyword;
                out.push(finding(
                    Rule::LegacyKeyValueFormat,
                    span,
                    format!("\"{keyword} key=value\" should be used instead of legacy \"{keyword} key value\" format"),
                ));
            }
            if instruction.keyword == Keyword::Env {
                secrets(instruction, out);
            }
        }
        Keyword::Arg => secrets(instruction, out),
        Keyword::Expose => expose(instruction, out),
        Keyword::Copy | Keyword::Add => {
            if let Some(ignored) = input.ignored {
                ignored_sources(instruction, ignored, out);
            }
        }
        _ => {}
    }
}

/// ExposeProtoCasing and ExposeInvalidFormat, on the words as written (a
/// word with a variable is judged by the compiler's expansion only).
fn expose(instruction: &Instruction, out: &mut Vec<Finding>) {
    for word in instruction.args.iter().filter(|w| !w.contains('$')) {
        let word = word.trim_matches(|c| c == '"' || c == '\'');
        if word.contains(':') {
            out.push(finding(
                Rule::ExposeInvalidFormat,
                &instruction.span,
                format!("EXPOSE instruction should not define an IP address or host port mapping, found '{word}'"),
            ));
        }
        if let Some((_, proto)) = word.rsplit_once('/') {
            if proto != proto.to_ascii_lowercase() {
                out.push(finding(
                    Rule::ExposeProtoCasing,
                    &instruction.span,
                    format!("Defined protocol '{word}' in EXPOSE instruction should be lowercase"),
                ));
            }
        }
    }
}

/// The words a name is made of, as BuildKit splits them: at `_`, compared
/// ignoring case (`apiKey` is one word, `API_KEY` two).
fn name_words(name: &str) -> Vec<String> {
    name.split('_')
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Words that mark a name as holding a secret, and the one that clears it.
const SECRET_WORDS: [&str; 10] = [
    "apikey",
    "auth",
    "credential",
    "credentials",
    "key",
    "password",
    "pword",
    "passwd",
    "secret",
    "token",
];

/// SecretsUsedInArgOrEnv: ARG and ENV values end up in the image's
/// history or config, so names that look like secrets are flagged.
fn secrets(instruction: &Instruction, out: &mut Vec<Finding>) {
    for pair in instruction.pairs.iter().flatten() {
        let words = name_words(&pair.key);
        if words.iter().any(|w| w == "public") {
            continue;
        }
        if words.iter().any(|w| SECRET_WORDS.contains(&w.as_str())) {
            out.push(finding(
                Rule::SecretsUsedInArgOrEnv,
                &instruction.span,
                format!(
                    "Do not use ARG or ENV instructions for sensitive data ({} {:?})",
                    instruction.keyword, pair.key
                ),
            ));
        }
    }
}

/// CopyIgnoredFile: a COPY/ADD source from the context that .dockerignore
/// excludes (sources with variables, URLs, heredocs and `--from` are not
/// from the context as written).
fn ignored_sources(
    instruction: &Instruction,
    ignored: &dyn Fn(&str) -> bool,
    out: &mut Vec<Finding>,
) {
    if instruction.flag("from").is_some() || instruction.args.len() < 2 {
        return;
    }
    let sources = &instruction.args[..instruction.args.len() - 1];
    for source in sources {
        let path = source.trim_matches(|c| c == '"' || c == '\'');
        let skip = path.contains('$')
            || path.starts_with("<<")
            || path.contains("://")
            || path.starts_with("git@");
        let clean = path
            .trim_start_matches("./")
            .trim_start_matches('/')
            .trim_end_matches('/');
        if skip || clean.is_empty() || clean == "." {
            continue;
        }
        if ignored(clean) {
            let verb = if instruction.keyword == Keyword::Add {
                "Add"
            } else {
                "Copy"
            };
            out.push(finding(
                Rule::CopyIgnoredFile,
                &instruction.span,
                format!("Attempting to {verb} file {path:?} that is excluded by .dockerignore"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_words() {
        assert_eq!(name_words("AWS_SECRET_KEY"), ["aws", "secret", "key"]);
        assert_eq!(name_words("apiKey"), ["apikey"]);
        assert_eq!(name_words("_github__Token"), ["github", "token"]);
        assert_eq!(name_words("MONKEY"), ["monkey"]);
    }
}
