//! The checks about variables, which follow Docker's scoping: global ARGs
//! (before the first FROM) are seen by FROM lines and, once re-declared, by
//! a stage; ENV and ARG in a stage are seen by the instructions after them;
//! a stage inherits its base's ENV (an earlier stage's, or the image's from
//! the compiled graph; PATH, which BuildKit always sets, otherwise).

use std::collections::HashSet;

use super::{finding, split_stages, stage_name, Finding, LintInput, Rule};
use crate::ast::{Dockerfile, Instruction, Keyword};
use crate::graph::{Base, BuildGraph};
use crate::shell::process_word;

/// Every variable check.
pub(super) fn check(dockerfile: &Dockerfile, input: &LintInput<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let (globals, stages) = split_stages(dockerfile);
    let defaults = global_defaults(globals, dockerfile.escape, input);
    let mut stage_env: Vec<(Option<String>, HashSet<String>)> = Vec::new();
    for (index, stage) in stages.iter().enumerate() {
        let Some((from, body)) = stage.split_first() else {
            continue;
        };
        from_variables(from, dockerfile.escape, &defaults, &mut out);
        let inherited = base_env(from, index, &stage_env, input.graph);
        let env = stage_variables(body, dockerfile.escape, inherited, &mut out);
        stage_env.push((stage_name(from).map(str::to_lowercase), env));
    }
    if let Some(graph) = input.graph {
        base_platforms(graph, &mut out);
    }
    out
}

/// A variable reference in a word: its name, and whether it has a modifier
/// (`${V:-default}` and the like, which handle an unset variable).
#[derive(Debug, PartialEq, Eq)]
struct Reference {
    name: String,
    modified: bool,
}

/// The variables `word` refers to, outside single quotes and not escaped.
fn references(word: &str, escape: char) -> Vec<Reference> {
    let chars: Vec<char> = word.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut single = false;
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if single {
            single = c != '\'';
        } else if c == escape {
            i += 1;
        } else if c == '\'' {
            single = true;
        } else if c == '$' && i < chars.len() {
            let braced = chars[i] == '{';
            let start = if braced { i + 1 } else { i };
            let mut end = start;
            while end < chars.len() && is_name(chars[end]) {
                end += 1;
            }
            if end == start {
                continue;
            }
            let name: String = chars[start..end].iter().collect();
            let modified = braced && chars.get(end) != Some(&'}');
            out.push(Reference { name, modified });
            i = end;
        }
    }
    out
}

/// The global ARGs' default values (expanded in order), with the platform
/// ARGs; `None` for a global ARG without a default.
fn global_defaults(
    globals: &[Instruction],
    escape: char,
    input: &LintInput<'_>,
) -> Vec<(String, Option<String>)> {
    let target = input
        .options
        .map_or("linux/amd64", |o| o.target_platform.as_str());
    let build = input
        .options
        .map_or("linux/amd64", |o| o.build_platform.as_str());
    let mut values: Vec<(String, Option<String>)> = Vec::new();
    for (prefix, platform) in [("TARGET", target), ("BUILD", build)] {
        let mut parts = platform.split('/');
        values.push((format!("{prefix}PLATFORM"), Some(platform.to_string())));
        for suffix in ["OS", "ARCH", "VARIANT"] {
            let part = parts.next().unwrap_or("").to_string();
            values.push((format!("{prefix}{suffix}"), Some(part)));
        }
    }
    for pair in globals.iter().flat_map(|i| i.pairs.iter().flatten()) {
        let value = pair.raw_value.as_deref().map(|raw| {
            let lookup = |n: &str| lookup(&values, n);
            process_word(raw, escape, Some(&lookup)).unwrap_or_default()
        });
        values.push((pair.key.clone(), value));
    }
    values
}

fn lookup<'v>(values: &'v [(String, Option<String>)], name: &str) -> Option<&'v str> {
    values
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_deref())
}

/// UndefinedArgInFrom and InvalidDefaultArgInFrom.
fn from_variables(
    from: &Instruction,
    escape: char,
    defaults: &[(String, Option<String>)],
    out: &mut Vec<Finding>,
) {
    let image = from.args.first().map_or("", String::as_str);
    let platform = from.flag("platform").and_then(|f| f.value.as_deref());
    let mut reported = HashSet::new();
    for word in std::iter::once(image).chain(platform) {
        for reference in references(word, escape) {
            let declared = defaults.iter().any(|(n, _)| *n == reference.name);
            if !declared && !reference.modified && reported.insert(reference.name.clone()) {
                let known = defaults.iter().map(|(n, _)| n.as_str());
                let hint = suggest(&reference.name, known)
                    .map_or(String::new(), |s| format!(" (did you mean {s}?)"));
                out.push(finding(
                    Rule::UndefinedArgInFrom,
                    &from.span,
                    format!("FROM argument '{}' is not declared{hint}", reference.name),
                ));
            }
        }
    }
    // An undeclared variable is UndefinedArgInFrom's to report.
    if !image.contains('$') || !reported.is_empty() {
        return;
    }
    let lookup = |n: &str| lookup(defaults, n);
    let expanded = process_word(image, escape, Some(&lookup)).unwrap_or_default();
    if !valid_reference(&expanded) {
        out.push(finding(
            Rule::InvalidDefaultArgInFrom,
            &from.span,
            format!("Default value for ARG {image} results in empty or invalid base image name"),
        ));
    }
}

/// Whether `reference` can name an image: `[host[:port]/]path[:tag][@digest]`
/// with a lower-case path.
fn valid_reference(reference: &str) -> bool {
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    if digest.is_some_and(|d| !d.contains(':')) {
        return false;
    }
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match name[last_slash..].find(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    let tag_ok = tag.is_none_or(|t| {
        !t.is_empty()
            && t.len() <= 128
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    });
    let mut components = path.split('/');
    let host = components.next().unwrap_or("");
    let has_host = path.contains('/') && (host.contains(['.', ':']) || host == "localhost");
    let repo_ok = |c: &str| {
        !c.is_empty()
            && c.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
    };
    let path_ok = if has_host {
        components.all(repo_ok)
    } else {
        path.split('/').all(repo_ok)
    };
    tag_ok && path_ok
}

/// The ENV names a stage starts with.
fn base_env(
    from: &Instruction,
    index: usize,
    earlier: &[(Option<String>, HashSet<String>)],
    graph: Option<&BuildGraph>,
) -> HashSet<String> {
    let image = from
        .args
        .first()
        .map_or(String::new(), |s| s.to_lowercase());
    if let Some((_, env)) = earlier.iter().find(|(n, _)| n.as_deref() == Some(&image)) {
        return env.clone();
    }
    let mut env: HashSet<String> = graph
        .and_then(|g| g.stage(index))
        .and_then(|stage| match &stage.base {
            Base::Image { image, .. } => image.config.env.clone(),
            _ => None,
        })
        .unwrap_or_default()
        .iter()
        .map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k).to_string())
        .collect();
    env.insert("PATH".to_string());
    env
}

/// The words of `instruction` the compiler expands variables in.
fn expanded_words(instruction: &Instruction) -> Vec<&str> {
    match instruction.keyword {
        Keyword::Env | Keyword::Label | Keyword::Arg => instruction
            .pairs
            .iter()
            .flatten()
            .flat_map(|p| std::iter::once(p.raw_key.as_str()).chain(p.raw_value.as_deref()))
            .collect(),
        Keyword::Add
        | Keyword::Copy
        | Keyword::Expose
        | Keyword::Stopsignal
        | Keyword::User
        | Keyword::Volume
        | Keyword::Workdir => {
            let flags = instruction
                .flags
                .iter()
                .filter(|f| f.name == "chown" || f.name == "chmod")
                .filter_map(|f| f.value.as_deref());
            instruction
                .args
                .iter()
                .map(String::as_str)
                .chain(flags)
                .collect()
        }
        _ => Vec::new(),
    }
}

/// UndefinedVar through one stage; returns the ENV names at its end.
fn stage_variables(
    body: &[Instruction],
    escape: char,
    mut env: HashSet<String>,
    out: &mut Vec<Finding>,
) -> HashSet<String> {
    let mut args: HashSet<String> = HashSet::new();
    for instruction in body {
        let mut reported = HashSet::new();
        for word in expanded_words(instruction) {
            for reference in references(word, escape) {
                let name = &reference.name;
                let defined = env.contains(name) || args.contains(name);
                if !defined && !reference.modified && reported.insert(name.clone()) {
                    let known = env.iter().chain(&args).map(String::as_str);
                    let hint = suggest(name, known)
                        .map_or(String::new(), |s| format!(" (did you mean ${s}?)"));
                    out.push(finding(
                        Rule::UndefinedVar,
                        &instruction.span,
                        format!("Usage of undefined variable '${name}'{hint}"),
                    ));
                }
            }
        }
        let keys = instruction.pairs.iter().flatten().map(|p| p.key.clone());
        match instruction.keyword {
            Keyword::Env => env.extend(keys),
            Keyword::Arg => args.extend(keys),
            _ => {}
        }
    }
    env
}

/// The name in `known` closest to `name` (ignoring case, at most two edits
/// away and fewer than half its letters), for a "did you mean" hint; ties go
/// to the first in sorted order so the hint is stable.
fn suggest<'k>(name: &str, known: impl Iterator<Item = &'k str>) -> Option<&'k str> {
    let wanted: Vec<char> = name.to_lowercase().chars().collect();
    let limit = 2.min(wanted.len().saturating_sub(1) / 2);
    let mut best: Option<(usize, &str)> = None;
    for candidate in known {
        let distance = edit_distance(
            &wanted,
            &candidate.to_lowercase().chars().collect::<Vec<_>>(),
        );
        if distance > limit || candidate == name {
            continue;
        }
        if best.is_none_or(|(d, b)| (distance, candidate) < (d, b)) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// Levenshtein distance.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// InvalidBaseImagePlatform: the store's image is not for the platform the
/// stage was asked to run on.
fn base_platforms(graph: &BuildGraph, out: &mut Vec<Finding>) {
    for stage in &graph.stages {
        let Base::Image { reference, image } = &stage.base else {
            continue;
        };
        let mut wanted = stage.platform.split('/');
        let (os, arch, variant) = (wanted.next(), wanted.next(), wanted.next());
        let mismatch = os != Some(image.os.as_str())
            || arch != Some(image.architecture.as_str())
            || variant
                .zip(image.variant.as_deref())
                .is_some_and(|(a, b)| a != b);
        if mismatch {
            let mut actual = format!("{}/{}", image.os, image.architecture);
            if let Some(variant) = &image.variant {
                actual.push('/');
                actual.push_str(variant);
            }
            out.push(finding(
                Rule::InvalidBaseImagePlatform,
                &stage.span,
                format!(
                    "Base image {reference} was pulled with platform {actual:?}, expected {:?} for current build",
                    stage.platform
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(word: &str) -> Vec<(String, bool)> {
        references(word, '\\')
            .into_iter()
            .map(|r| (r.name, r.modified))
            .collect()
    }

    #[test]
    fn references_as_the_shell_sees_them() {
        assert_eq!(names("$A/${B}"), [("A".into(), false), ("B".into(), false)]);
        assert_eq!(names("${A:-x}"), [("A".into(), true)]);
        assert_eq!(names("'$A'\\$B\"$C\""), [("C".into(), false)]);
        assert!(names("$ $1x").iter().all(|(n, _)| n == "1x"));
    }

    #[test]
    fn hints_name_a_close_declared_variable() {
        let known = ["VERSION", "PATH", "HOME_DIR"];
        assert_eq!(suggest("VERSON", known.into_iter()), Some("VERSION"));
        assert_eq!(suggest("home_dir", known.into_iter()), Some("HOME_DIR"));
        assert_eq!(suggest("X", known.into_iter()), None);
        assert_eq!(suggest("MISSING", known.into_iter()), None);
    }

    #[test]
    fn references_are_judged_like_docker() {
        for ok in [
            "alpine",
            "alpine:3.20",
            "localhost:5000/a/b:c",
            "a@sha256:00",
        ] {
            assert!(valid_reference(ok), "{ok}");
        }
        for bad in ["", "Alpine", "alpine:", "a b", "a@nodigest"] {
            assert!(!valid_reference(bad), "{bad}");
        }
    }
}
