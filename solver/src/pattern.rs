//! Path patterns as Docker reads them: Go's `filepath.Match` syntax (`*`, `?`,
//! `[...]` classes with `^` negation and ranges, `\` escapes) plus `**`, which
//! matches any number of directories. The same rules serve `.dockerignore`,
//! COPY/ADD wildcards and `--exclude`, as they do in BuildKit (moby's
//! patternmatcher), so a pattern means the same thing in every place.

use regex::Regex;

/// One compiled pattern over slash-separated paths relative to a root.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    regex: Regex,
}

/// Why a pattern did not compile: an unclosed `[` class, mostly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadPattern {
    pub(crate) pattern: String,
    pub(crate) reason: String,
}

impl Pattern {
    /// Compiles a cleaned pattern (no leading `/`, no `.` or `..` segments).
    pub(crate) fn new(text: &str) -> Result<Pattern, BadPattern> {
        let bad = |reason: &str| BadPattern {
            pattern: text.to_string(),
            reason: reason.to_string(),
        };
        let mut re = String::from("^");
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    // `**/` is the same as `**`: any number of directories.
                    if chars.peek() == Some(&'/') {
                        chars.next();
                    }
                    if chars.peek().is_none() {
                        re.push_str(".*");
                    } else {
                        re.push_str("(?:.*/)?");
                    }
                }
                '*' => re.push_str("[^/]*"),
                '?' => re.push_str("[^/]"),
                '\\' => match chars.next() {
                    Some(escaped) => re.push_str(&regex::escape(&escaped.to_string())),
                    None => return Err(bad("the pattern ends with a lone `\\`")),
                },
                '[' => {
                    re.push('[');
                    if chars.peek() == Some(&'^') {
                        chars.next();
                        re.push('^');
                    }
                    let mut members = 0;
                    loop {
                        match chars.next() {
                            None => return Err(bad("a `[` character class is not closed")),
                            Some(']') if members > 0 => break,
                            Some(']') => return Err(bad("a `[]` character class is empty")),
                            Some('\\') => match chars.next() {
                                Some(escaped) => re.push_str(&regex::escape(&escaped.to_string())),
                                None => return Err(bad("a `[` character class is not closed")),
                            },
                            Some('-') if members > 0 && chars.peek() != Some(&']') => re.push('-'),
                            Some(other) => re.push_str(&regex::escape(&other.to_string())),
                        }
                        members += 1;
                    }
                    re.push(']');
                }
                other => re.push_str(&regex::escape(&other.to_string())),
            }
        }
        re.push('$');
        let regex = Regex::new(&re).map_err(|e| bad(&e.to_string()))?;
        Ok(Pattern { regex })
    }

    /// Whether the whole path matches.
    pub(crate) fn matches(&self, path: &str) -> bool {
        self.regex.is_match(path)
    }
}

/// Whether a COPY source or `--exclude` argument uses wildcards at all.
pub(crate) fn has_wildcards(text: &str) -> bool {
    text.contains(['*', '?', '['])
}

/// Cleans a path the way Go's `path.Clean` does, then drops a leading `/`:
/// `./a//b/../c/` becomes `a/c`, `/` and `.` become `.`.
pub(crate) fn clean_relative(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        Pattern::new(pattern).unwrap().matches(path)
    }

    #[test]
    fn go_filepath_match_rules() {
        // Cases from Go's filepath.Match documentation and tests.
        assert!(m("abc", "abc"));
        assert!(m("*", "abc"));
        assert!(m("*c", "abc"));
        assert!(!m("a*", "ab/c"));
        assert!(m("a*/b", "abc/b"));
        assert!(!m("a*/b", "a/c/b"));
        assert!(m("a*b*c*d*e*/f", "axbxcxdxe/f"));
        assert!(!m("a*b*c*d*e*/f", "axbxcxdxexxx/fff"));
        assert!(m("ab[c]", "abc"));
        assert!(m("ab[b-d]", "abc"));
        assert!(!m("ab[e-g]", "abc"));
        assert!(!m("ab[^c]", "abc"));
        assert!(!m("ab[^b-d]", "abc"));
        assert!(m("ab[^e-g]", "abc"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "ab"));
        assert!(m("a?b", "a☺b"));
        assert!(m("a[^a]b", "a☺b"));
        assert!(!m("a???b", "a☺b"));
        assert!(m("[\\-]", "-"));
        assert!(m("[x\\-]", "x"));
        assert!(!m("[x\\-]", "z"));
        assert!(m("[\\-x]", "-"));
        assert!(!m("a?b", "a/b"));
        assert!(!m("*", "a/b"));
    }

    #[test]
    fn regex_metacharacters_are_literal() {
        assert!(m("a.b", "a.b"));
        assert!(!m("a.b", "axb"));
        assert!(m("(x)+{y}|$", "(x)+{y}|$"));
    }

    #[test]
    fn double_star_spans_directories() {
        assert!(m("**", "a/b/c"));
        assert!(m("**/*.go", "a.go"));
        assert!(m("**/*.go", "x/y/a.go"));
        assert!(!m("**/*.go", "x/y/a.goo"));
        assert!(m("a/**/b", "a/b"));
        assert!(m("a/**/b", "a/x/y/b"));
        assert!(m("dir/**", "dir/a/b"));
    }

    #[test]
    fn bad_patterns_are_errors() {
        assert!(Pattern::new("[").is_err());
        assert!(Pattern::new("a[b").is_err());
        assert!(Pattern::new("a\\").is_err());
        assert!(Pattern::new("[]").is_err());
    }

    #[test]
    fn cleaning() {
        assert_eq!(clean_relative("./a//b/../c/"), "a/c");
        assert_eq!(clean_relative("/"), ".");
        assert_eq!(clean_relative("."), ".");
        assert_eq!(clean_relative("/foo/bar"), "foo/bar");
        assert_eq!(clean_relative("../../x"), "x");
    }
}
