//! `.dockerignore`: which files of the build context a build may see.
//!
//! The rules are Docker's: one pattern a line, `#` starts a comment line,
//! surrounding spaces are trimmed, `!` makes an exception, patterns are cleaned
//! (`./a`, `/a` and `a/` all mean `a`), the last matching pattern wins, and a
//! pattern that matches a directory excludes everything below it (unless a later
//! exception brings a path back). `<Dockerfile>.dockerignore` beside a named
//! Dockerfile takes precedence over the context's `.dockerignore`.

use std::path::{Path, PathBuf};

use crate::pattern::{clean_relative, Pattern};
use crate::{Error, Result};

#[derive(Debug, Clone)]
struct Rule {
    pattern: Pattern,
    exception: bool,
}

/// The compiled rules of one ignore file (or none: everything is included).
#[derive(Debug, Clone, Default)]
pub struct IgnoreRules {
    rules: Vec<Rule>,
    source: Option<PathBuf>,
}

impl IgnoreRules {
    /// Parses ignore-file text; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<IgnoreRules> {
        let mut rules = Vec::new();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (index, raw) in text.lines().enumerate() {
            // Comments are recognised before trimming, as Docker does.
            if raw.starts_with('#') {
                continue;
            }
            let mut line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let exception = line.starts_with('!');
            if exception {
                line = line[1..].trim();
            }
            if line.is_empty() {
                continue;
            }
            let cleaned = clean_relative(line);
            let pattern = Pattern::new(&cleaned).map_err(|bad| Error::Ignore {
                file: file.to_path_buf(),
                line: index + 1,
                message: format!(
                    "bad pattern `{}`: {}; fix or remove that line",
                    bad.pattern, bad.reason
                ),
            })?;
            rules.push(Rule { pattern, exception });
        }
        Ok(IgnoreRules {
            rules,
            source: Some(file.to_path_buf()),
        })
    }

    /// Reads the rules that apply to a build: `<dockerfile>.dockerignore` when it
    /// exists beside the Dockerfile, else `<context>/.dockerignore`, else none.
    pub fn for_build(context: &Path, dockerfile: Option<&Path>) -> Result<IgnoreRules> {
        let mut candidates = Vec::new();
        if let Some(dockerfile) = dockerfile {
            if let Some(name) = dockerfile.file_name() {
                let mut specific = name.to_os_string();
                specific.push(".dockerignore");
                candidates.push(dockerfile.with_file_name(specific));
            }
        }
        candidates.push(context.join(".dockerignore"));
        for candidate in candidates {
            match std::fs::read(&candidate) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    return IgnoreRules::parse(&text, &candidate);
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Io {
                        path: candidate,
                        error: source,
                    })
                }
            }
        }
        Ok(IgnoreRules::default())
    }

    /// The file these rules came from.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Whether no rule can exclude anything.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any rule is an exception: then an excluded directory may still
    /// hold included paths and must be walked.
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.exception)
    }

    /// Whether a context path (slash-separated, relative, cleaned) is excluded:
    /// the last rule matching the path or one of its parent directories wins.
    pub fn is_excluded(&self, path: &str) -> bool {
        let mut excluded = false;
        for rule in &self.rules {
            // An exclusion cannot change an excluded path, nor an exception an
            // included one.
            if rule.exception != excluded {
                continue;
            }
            if matches_self_or_parent(&rule.pattern, path) {
                excluded = !rule.exception;
            }
        }
        excluded
    }
}

/// Whether `pattern` matches `path` or one of its parent directories.
pub(crate) fn matches_self_or_parent(pattern: &Pattern, path: &str) -> bool {
    if pattern.matches(path) {
        return true;
    }
    let mut end = 0;
    while let Some(slash) = path[end..].find('/') {
        end += slash;
        if pattern.matches(&path[..end]) {
            return true;
        }
        end += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> IgnoreRules {
        IgnoreRules::parse(text, Path::new(".dockerignore")).unwrap()
    }

    /// The examples of Docker's `.dockerignore` reference.
    #[test]
    fn docker_reference_examples() {
        let r = rules("# comment\n*/temp*\n*/*/temp*\ntemp?\n");
        assert!(r.is_excluded("somedir/temporary.txt"));
        assert!(r.is_excluded("somedir/temp"));
        assert!(r.is_excluded("somedir/subdir/temporary.txt"));
        assert!(r.is_excluded("tempa"));
        assert!(r.is_excluded("tempb/inner/file"));
        assert!(!r.is_excluded("temp"));
        assert!(!r.is_excluded("a/b/c/temp.txt"));
        assert!(!r.is_excluded("# comment"));

        let r = rules("*.md\n!README.md\n");
        assert!(r.is_excluded("CHANGES.md"));
        assert!(!r.is_excluded("README.md"));
        assert!(
            !r.is_excluded("docs/x.md"),
            "`*` does not cross directories"
        );

        let r = rules("*.md\n!README*.md\nREADME-secret.md\n");
        assert!(r.is_excluded("README-secret.md"));
        assert!(!r.is_excluded("README-public.md"));

        let r = rules("*.md\nREADME-secret.md\n!README*.md\n");
        assert!(!r.is_excluded("README-secret.md"), "the last match wins");

        let r = rules("**/*.go\n");
        assert!(r.is_excluded("main.go"));
        assert!(r.is_excluded("cmd/x/main.go"));
    }

    #[test]
    fn cleaning_and_trimming() {
        let r = rules("  /abs  \n./dot\nslash/\n\n   \n  # not a comment after spaces\n");
        assert!(r.is_excluded("abs"));
        assert!(r.is_excluded("dot"));
        assert!(r.is_excluded("slash"));
        assert!(r.is_excluded("slash/inner"));
        assert!(r.is_excluded("# not a comment after spaces"));
        assert!(!r.is_excluded("other"));
    }

    #[test]
    fn directory_excludes_contents_and_exceptions_reach_inside() {
        let r = rules("build\n!build/keep.txt\n");
        assert!(r.is_excluded("build"));
        assert!(r.is_excluded("build/a/b.o"));
        assert!(!r.is_excluded("build/keep.txt"));
        assert!(r.has_exceptions());

        let r = rules("*\n!src\n");
        assert!(r.is_excluded("Makefile"));
        assert!(!r.is_excluded("src"));
        assert!(!r.is_excluded("src/main.rs"));
    }

    #[test]
    fn exception_prefix_with_spaces() {
        let r = rules("a*\n! abc\n");
        assert!(r.is_excluded("abd"));
        assert!(!r.is_excluded("abc"));
    }

    #[test]
    fn bad_pattern_names_file_and_line() {
        let err = IgnoreRules::parse("ok\n\nbad[\n", Path::new("ctx/.dockerignore")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("ctx/.dockerignore:3"), "{text}");
        assert!(text.contains("bad["), "{text}");
    }

    #[test]
    fn dockerfile_specific_ignore_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".dockerignore"), "a\n").unwrap();
        std::fs::write(dir.path().join("app.Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(dir.path().join("app.Dockerfile.dockerignore"), "b\n").unwrap();
        let dockerfile = dir.path().join("app.Dockerfile");
        let r = IgnoreRules::for_build(dir.path(), Some(&dockerfile)).unwrap();
        assert!(r.is_excluded("b"));
        assert!(!r.is_excluded("a"));
        let plain =
            IgnoreRules::for_build(dir.path(), Some(&dir.path().join("Dockerfile"))).unwrap();
        assert!(plain.is_excluded("a"));
        let none = IgnoreRules::for_build(&dir.path().join("nowhere"), None).unwrap();
        assert!(none.is_empty());
    }
}
