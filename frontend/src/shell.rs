//! Docker's word processing: quote removal, escapes and variable substitution
//! (`$V`, `${V}`, `${V:-w}`, `${V-w}`, `${V:+w}`, `${V+w}`, `${V:?msg}`,
//! `${V?msg}`, and Dockerfile 1.7's `${V#p}`, `${V##p}`, `${V%p}`, `${V%%p}`,
//! `${V/p/r}`, `${V//p/r}`), with no expansion inside single quotes.

use regex::Regex;

/// Where variable values come from. Values are lent, not copied: most are
/// pasted into the result as they are.
pub(crate) trait Vars<'v> {
    /// The value of `name`, `None` when unset.
    fn get(&self, name: &str) -> Option<&'v str>;
}

impl<'v, F: Fn(&str) -> Option<&'v str>> Vars<'v> for F {
    fn get(&self, name: &str) -> Option<&'v str> {
        self(name)
    }
}

/// Removes quotes and escapes from `word` and expands variables from `vars`.
/// With `vars = None` variable references are kept as written (and so is the
/// escape before an escaped `$`), which shows a value "as written but
/// unquoted". Errors are lowercase messages without a position.
pub(crate) fn process_word(
    word: &str,
    escape: char,
    vars: Option<&dyn Vars<'_>>,
) -> Result<String, String> {
    // Nothing to unquote, unescape or expand: the common case, and far
    // cheaper than the lexer.
    if !word.contains(['$', '\'', '"', escape]) {
        return Ok(word.to_string());
    }
    let mut lexer = Lexer {
        text: word,
        pos: 0,
        escape,
        vars,
        depth: 0,
        raw_escapes: false,
        limit: MAX_WORD.max(word.len()),
    };
    lexer.word(None)
}

/// The most bytes one word may expand to (or its own length, if longer):
/// a variable built from itself (`ENV A=$A$A` line after line) doubles at
/// each line, and would otherwise take all memory in a few dozen lines.
pub(crate) const MAX_WORD: usize = 1 << 20;

fn too_large() -> String {
    format!(
        "the expansion is larger than {} MiB, the most one word may expand to; is a variable built from itself (A=$A$A)?",
        MAX_WORD >> 20
    )
}

struct Lexer<'a, 'v> {
    text: &'a str,
    /// Byte offset of the next character in `text`.
    pos: usize,
    escape: char,
    vars: Option<&'a dyn Vars<'v>>,
    /// Nesting of `${...:-${...}}`, bounded so that input cannot exhaust the stack.
    depth: usize,
    /// Keep escape characters in the output (inside patterns).
    raw_escapes: bool,
    /// The most bytes an expansion may produce.
    limit: usize,
}

/// How deeply `${V:-${W:-...}}` may nest.
const MAX_DEPTH: usize = 64;

impl<'a, 'v> Lexer<'a, 'v> {
    fn peek(&self) -> Option<char> {
        self.text.get(self.pos..)?.chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    /// Appends what a variable expanded to, within the limit.
    fn push_expansion(&self, out: &mut String, value: &str) -> Result<(), String> {
        if out.len() + value.len() > self.limit {
            return Err(too_large());
        }
        out.push_str(value);
        Ok(())
    }

    /// Reads until the end, or until an unquoted, unescaped `stop`.
    fn word(&mut self, stop: Option<char>) -> Result<String, String> {
        let mut out = String::with_capacity(self.text.len() - self.pos.min(self.text.len()));
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                return Ok(out);
            }
            self.pos += c.len_utf8();
            if c == self.escape {
                if self.raw_escapes {
                    out.push(c);
                }
                match self.next() {
                    None => break,
                    Some(escaped) => {
                        if !self.raw_escapes && self.vars.is_none() && escaped == '$' {
                            out.push(self.escape);
                        }
                        out.push(escaped);
                    }
                }
            } else if c == '\'' {
                self.single_quoted(&mut out)?;
            } else if c == '"' {
                self.double_quoted(&mut out)?;
            } else if c == '$' {
                self.dollar(&mut out)?;
            } else {
                out.push(c);
            }
        }
        match stop {
            Some(stop) => Err(format!("missing '{stop}' in variable substitution")),
            None => Ok(out),
        }
    }

    fn single_quoted(&mut self, out: &mut String) -> Result<(), String> {
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of text while looking for the matching single quote".into(),
                    )
                }
                Some('\'') => return Ok(()),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quoted(&mut self, out: &mut String) -> Result<(), String> {
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of text while looking for the matching double quote".into(),
                    )
                }
                Some('"') => return Ok(()),
                Some('$') => self.dollar(out)?,
                Some(c) if c == self.escape => {
                    if self.raw_escapes {
                        out.push(c);
                    }
                    match self.peek() {
                        None => {}
                        Some(next) if next == '"' || next == '$' || next == self.escape => {
                            self.pos += next.len_utf8();
                            if !self.raw_escapes && self.vars.is_none() && next == '$' {
                                out.push(self.escape);
                            }
                            out.push(next);
                        }
                        // Other escapes stay as written inside double quotes
                        // (so a raw one shows twice, as in BuildKit).
                        Some(_) => out.push(c),
                    }
                }
                Some(c) => out.push(c),
            }
        }
    }

    /// A variable name (letters, digits and `_`, or only digits), borrowed
    /// from the text.
    fn name(&mut self) -> &'a str {
        let start = self.pos;
        if self.peek().is_some_and(|c| c.is_ascii_digit()) {
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
        } else {
            while let Some(c) = self.peek() {
                if !(c.is_alphanumeric() || c == '_') {
                    break;
                }
                self.pos += c.len_utf8();
            }
        }
        self.text.get(start..self.pos).unwrap_or_default()
    }

    /// The word of a `${V<modifier>word}` up to `stop`, which is consumed;
    /// `raw` keeps escape characters in the result (BuildKit does so for
    /// patterns and replacements, whose escapes mean something there).
    fn nested_word(&mut self, stop: char, raw: bool) -> Result<String, String> {
        let outer_raw = std::mem::replace(&mut self.raw_escapes, raw);
        self.depth += 1;
        let word = self.word(Some(stop));
        self.depth -= 1;
        self.raw_escapes = outer_raw;
        let word = word?;
        self.pos += stop.len_utf8();
        Ok(word)
    }

    /// After a `$`.
    fn dollar(&mut self, out: &mut String) -> Result<(), String> {
        let start = self.pos - 1;
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                out.push('$');
                return Ok(());
            }
            match self.vars {
                None => out.push_str(self.text.get(start..self.pos).unwrap_or_default()),
                Some(vars) => self.push_expansion(out, vars.get(name).unwrap_or_default())?,
            }
            return Ok(());
        }
        self.pos += 1;
        if self.depth >= MAX_DEPTH {
            return Err(format!(
                "variable substitutions nested more than {MAX_DEPTH} deep"
            ));
        }
        let name = self.name();
        if name.is_empty() {
            return Err("bad substitution: a variable name must follow \"${\"".into());
        }
        let value = self.vars.and_then(|vars| vars.get(name));
        let next = self.next();
        let modifier = if next == Some(':') { self.next() } else { next };
        // With a colon an empty value counts as unset (for - + ?; BuildKit
        // reads `${V:#p}` and `${V:%p}` as `${V#p}` and `${V%p}`).
        let colon = next == Some(':');
        let set = match value {
            Some(v) => !(colon && v.is_empty()),
            None => false,
        };
        let result = match modifier {
            None => return Err(format!("missing '}}' in substitution of {name}")),
            Some('}') if !colon => {
                match self.vars {
                    None => out.push_str(self.text.get(start..self.pos).unwrap_or_default()),
                    Some(_) => self.push_expansion(out, value.unwrap_or_default())?,
                }
                return Ok(());
            }
            Some('-') => {
                let word = self.nested_word('}', false)?;
                if set {
                    value.unwrap_or_default().to_string()
                } else {
                    word
                }
            }
            Some('+') => {
                let word = self.nested_word('}', false)?;
                if set {
                    word
                } else {
                    String::new()
                }
            }
            Some('?') => {
                let word = self.nested_word('}', false)?;
                if set || self.vars.is_none() {
                    value.unwrap_or_default().to_string()
                } else if word.is_empty() {
                    return Err(format!("{name}: parameter is not set"));
                } else {
                    return Err(format!("{name}: {word}"));
                }
            }
            Some(kind @ ('#' | '%')) => {
                // The pattern keeps its escapes: they are the pattern's own.
                let word = self.nested_word('}', true)?;
                // `##` / `%%`: the longest match instead of the shortest.
                let (pattern, longest) = match word.strip_prefix(kind) {
                    Some(rest) => (rest, true),
                    None => (word.as_str(), false),
                };
                let value = value.unwrap_or_default();
                if self.vars.is_none() {
                    value.to_string()
                } else if kind == '#' {
                    trim_prefix(value, pattern, longest)?
                } else {
                    trim_suffix(value, pattern, longest)?
                }
            }
            Some('/') if !colon => {
                let all = self.peek() == Some('/');
                if all {
                    self.pos += 1;
                }
                let pattern = self.nested_word('/', true).map_err(|_| {
                    format!("missing '/' after the pattern in substitution of {name}: write ${{{name}/pattern/replacement}}")
                })?;
                let replacement = self.nested_word('}', true)?;
                let value = value.unwrap_or_default();
                if self.vars.is_none() {
                    value.to_string()
                } else {
                    replace(value, &pattern, &replacement, all, self.limit)?
                }
            }
            Some(other) => {
                let written = if colon {
                    format!(":{other}")
                } else {
                    other.to_string()
                };
                return Err(format!(
                    "unsupported modifier '{written}' in substitution of {name}; use one of :- - :+ + :? ? # ## % %% / //"
                ));
            }
        };
        match self.vars {
            None => out.push_str(self.text.get(start..self.pos).unwrap_or_default()),
            Some(_) => self.push_expansion(out, &result)?,
        }
        Ok(())
    }
}

/// A shell pattern as BuildKit reads it, as a regular expression: `*` is any
/// run of characters (the shortest, or with `longest` the longest), `?` one
/// character, neither crossing a newline; `\\*`, `\\?` and `\\\\` are the
/// characters themselves; `\\}` and `\\/` are `}` and `/` (escaped only to
/// get past `${...}`); every other character, brackets included, is itself
/// (BuildKit has no bracket expressions).
fn pattern_regex(pattern: &str, longest: bool, anchored: bool) -> Result<Regex, String> {
    let mut out = String::with_capacity(pattern.len() + 8);
    if anchored {
        out.push('^');
    }
    let mut chars = pattern.chars().peekable();
    let mut buf = [0u8; 4];
    while let Some(c) = chars.next() {
        match c {
            '*' => out.push_str(if longest { ".*" } else { ".*?" }),
            '?' => out.push('.'),
            '\\' => {
                if matches!(chars.peek(), Some('}' | '/')) {
                    continue;
                }
                match chars.next() {
                    Some(escaped @ ('*' | '?' | '\\')) => {
                        out.push('\\');
                        out.push(escaped);
                    }
                    Some(other) => {
                        return Err(format!(
                            "invalid escape '\\{other}' in a pattern: only \\*, \\?, \\\\, \\}} and \\/ may be escaped"
                        ))
                    }
                    None => {
                        return Err(
                            "invalid escape at the end of a pattern: write \\\\ for a backslash"
                                .to_string(),
                        )
                    }
                }
            }
            other => out.push_str(&regex::escape(other.encode_utf8(&mut buf))),
        }
    }
    Regex::new(&out).map_err(|e| format!("invalid pattern: {e}"))
}

/// `${V#p}` / `${V##p}`: `value` without the shortest (longest) prefix that
/// matches `pattern`; unchanged when none does.
fn trim_prefix(value: &str, pattern: &str, longest: bool) -> Result<String, String> {
    let re = pattern_regex(pattern, longest, true)?;
    Ok(match re.find(value) {
        Some(found) => value.get(found.end()..).unwrap_or_default().to_string(),
        None => value.to_string(),
    })
}

/// `${V%p}` / `${V%%p}`: `value` without the shortest (longest) suffix that
/// matches `pattern`. As in BuildKit, the pattern (escape pairs kept
/// together) and the value are reversed and the prefix is trimmed.
fn trim_suffix(value: &str, pattern: &str, longest: bool) -> Result<String, String> {
    let mut tokens: Vec<&str> = Vec::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(c) = rest.chars().next() {
        let mut len = c.len_utf8();
        if c == '\\' {
            let escaped = rest.get(len..).and_then(|after| after.chars().next());
            len += escaped.map_or(0, char::len_utf8);
        }
        let (token, after) = rest.split_at(len);
        tokens.push(token);
        rest = after;
    }
    let reversed_pattern: String = tokens.into_iter().rev().collect();
    let reversed_value: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reversed_value, &reversed_pattern, longest)?;
    Ok(trimmed.chars().rev().collect())
}

/// `${V/p/r}` / `${V//p/r}`: the first (every) longest match of `pattern`
/// anywhere in `value` replaced by `replacement`. Like BuildKit, which uses
/// Go's `ReplaceAllString`, `//` expands `$name` / `${name}` in the
/// replacement as a reference to a group (the pattern has none, so they
/// become nothing) and `$$` as `$`; `/` inserts the replacement as it is.
fn replace(
    value: &str,
    pattern: &str,
    replacement: &str,
    all: bool,
    limit: usize,
) -> Result<String, String> {
    let re = pattern_regex(pattern, true, false)?;
    if all {
        // `replace_all`, checking the size as it grows: a long value of
        // short matches times a long replacement is a product.
        let mut out = String::new();
        let mut last = 0;
        for captures in re.captures_iter(value) {
            let Some(found) = captures.get(0) else {
                continue;
            };
            out.push_str(value.get(last..found.start()).unwrap_or_default());
            captures.expand(replacement, &mut out);
            last = found.end();
            if out.len() > limit {
                return Err(too_large());
            }
        }
        out.push_str(value.get(last..).unwrap_or_default());
        return Ok(out);
    }
    Ok(match re.find(value) {
        Some(found) => {
            let mut out = String::with_capacity(value.len() + replacement.len());
            out.push_str(value.get(..found.start()).unwrap_or_default());
            out.push_str(replacement);
            out.push_str(value.get(found.end()..).unwrap_or_default());
            out
        }
        None => value.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(word: &str) -> Result<String, String> {
        let vars = |name: &str| match name {
            "SET" => Some("value"),
            "EMPTY" => Some(""),
            "SPACE" => Some("a b"),
            _ => None,
        };
        process_word(word, '\\', Some(&vars))
    }

    #[test]
    fn plain_and_braced() {
        assert_eq!(expand("$SET/${SET}x").unwrap(), "value/valuex");
        assert_eq!(expand("$UNSET-").unwrap(), "-");
        assert_eq!(expand("a$").unwrap(), "a$");
        assert_eq!(expand("$ x").unwrap(), "$ x");
        assert_eq!(expand("${SPACE}").unwrap(), "a b");
    }

    #[test]
    fn modifiers_distinguish_unset_and_empty() {
        assert_eq!(expand("${UNSET:-w}").unwrap(), "w");
        assert_eq!(expand("${EMPTY:-w}").unwrap(), "w");
        assert_eq!(expand("${EMPTY-w}").unwrap(), "");
        assert_eq!(expand("${UNSET-w}").unwrap(), "w");
        assert_eq!(expand("${SET:-w}").unwrap(), "value");
        assert_eq!(expand("${SET:+w}").unwrap(), "w");
        assert_eq!(expand("${EMPTY:+w}").unwrap(), "");
        assert_eq!(expand("${EMPTY+w}").unwrap(), "w");
        assert_eq!(expand("${UNSET+w}").unwrap(), "");
        assert_eq!(expand("${UNSET:-$SET}").unwrap(), "value");
        assert_eq!(expand("${UNSET:-a b}").unwrap(), "a b");
    }

    #[test]
    fn required_variables() {
        assert_eq!(expand("${SET:?oops}").unwrap(), "value");
        assert_eq!(expand("${UNSET:?oops}").unwrap_err(), "UNSET: oops");
        assert_eq!(expand("${EMPTY?oops}").unwrap(), "");
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(expand("'$SET'").unwrap(), "$SET");
        assert_eq!(expand("\"$SET\"").unwrap(), "value");
        assert_eq!(expand("\\$SET").unwrap(), "$SET");
        assert_eq!(expand("\"a\\\"b\\n\"").unwrap(), "a\"b\\n");
        assert_eq!(expand("a\\ b").unwrap(), "a b");
        assert_eq!(expand("'it'\"'\"'s'").unwrap(), "it's");
        assert_eq!(
            process_word("`$SET", '`', Some(&|_: &str| Some("x"))).unwrap(),
            "$SET"
        );
    }

    #[test]
    fn errors() {
        assert!(expand("'open").is_err());
        assert!(expand("\"open").is_err());
        assert!(expand("${").is_err());
        assert!(expand("${SET").is_err());
        assert!(expand("${SET:-x").is_err());
        assert!(expand("${}").is_err());
    }

    fn expand_with(word: &str) -> Result<String, String> {
        let vars = |name: &str| {
            let value = match name {
                "FILE" => "archive.tar.gz",
                "P" => "/usr/local/bin",
                "EXT" => "gz",
                "STAR" => "*star",
                "BRACKETS" => "[ab]c",
                "NL" => "a\nb",
                "DOTS" => "a.b.c",
                "EMPTY" => "",
                _ => return None,
            };
            Some(value)
        };
        process_word(word, '\\', Some(&vars))
    }

    #[test]
    fn prefix_and_suffix_removal() {
        let cases = [
            ("${FILE%.*}", "archive.tar"),
            ("${FILE%%.*}", "archive"),
            ("${FILE#*.}", "tar.gz"),
            ("${FILE##*.}", "gz"),
            ("${P#/usr}", "/local/bin"),
            ("${P#*/}", "usr/local/bin"),
            ("${P##*/}", "bin"),
            ("${P%/*}", "/usr/local"),
            ("${P%%/*}", ""),
            ("${DOTS%.*}", "a.b"),
            ("${DOTS%%.*}", "a"),
            ("${FILE#arch?ve}", ".tar.gz"),
            ("${FILE#x}", "archive.tar.gz"),
            ("${FILE%x}", "archive.tar.gz"),
            ("${FILE%.$EXT}", "archive.tar"),
            ("${FILE#\"*.\"}", "tar.gz"),
            // BuildKit reads a colon before # and % as nothing.
            ("${FILE:#*.}", "tar.gz"),
            // `*` is the shortest run for # and %: possibly nothing.
            ("${STAR#*}", "*star"),
            ("${STAR##*}", ""),
            ("${STAR#\\*}", "star"),
            // No bracket expressions: brackets are themselves.
            ("${BRACKETS#[ab]}", "c"),
            // Wildcards do not cross a newline.
            ("${NL##*}", "\nb"),
            ("${NL%%*}", "a\n"),
            ("${UNSET#*}", ""),
            ("${EMPTY%%*}", ""),
        ];
        for (word, expected) in cases {
            assert_eq!(expand_with(word).as_deref(), Ok(expected), "{word}");
        }
    }

    #[test]
    fn pattern_replacement() {
        let cases = [
            ("${FILE/./-}", "archive-tar.gz"),
            ("${FILE//./-}", "archive-tar-gz"),
            ("${P//\\//:}", ":usr:local:bin"),
            // The longest match at the leftmost place.
            ("${FILE/a*./}", "gz"),
            ("${FILE/r*e/X}", "aX.tar.gz"),
            ("${FILE/x/y}", "archive.tar.gz"),
            ("${FILE//?/.}", ".............."),
            ("${FILE/#/x}", "archive.tar.gz"),
            ("${UNSET/a/b}", ""),
            ("${UNSET//*/x}", "x"),
            ("${P/\\/usr/$EXT}", "gz/local/bin"),
            // The replacement keeps its escapes, as in BuildKit.
            ("${FILE/a/\\}}", "\\}rchive.tar.gz"),
        ];
        for (word, expected) in cases {
            assert_eq!(expand_with(word).as_deref(), Ok(expected), "{word}");
        }
    }

    #[test]
    fn malformed_patterns_are_errors() {
        for (word, message) in [
            ("${FILE#\\a}", "invalid escape '\\a'"),
            ("${FILE%%x\\}", "missing '}'"),
            ("${FILE/x}", "missing '/' after the pattern"),
            ("${FILE#x", "missing '}'"),
            ("${FILE//x/y", "missing '}'"),
            ("${FILE:/x/y}", "unsupported modifier ':/'"),
            ("${FILE^^}", "unsupported modifier '^'"),
        ] {
            let error = expand_with(word).unwrap_err();
            assert!(error.contains(message), "{word}: {error}");
        }
    }

    #[test]
    fn expansions_are_bounded() {
        let big = "x".repeat(MAX_WORD / 2 + 1);
        let vars = |name: &str| (name == "BIG").then_some(big.as_str());
        let expand = |word: &str| process_word(word, '\\', Some(&vars));
        assert_eq!(expand("$BIG").unwrap().len(), big.len());
        for word in [
            "$BIG$BIG",
            "${BIG}${BIG}",
            "${UNSET:-$BIG$BIG}",
            "${BIG:+$BIG$BIG}",
            "${BIG//x/xx}",
            "${BIG//?/$BIG}",
        ] {
            let error = expand(word).unwrap_err();
            assert!(error.contains("larger than 1 MiB"), "{word}: {error}");
        }
        // A long word of its own is no expansion.
        let long = "y".repeat(2 * MAX_WORD);
        assert_eq!(expand(&format!("'{long}'")).unwrap(), long);
        let heredoc = expand_heredoc("$BIG $BIG", '\\', &vars).unwrap_err();
        assert!(heredoc.contains("larger than"), "{heredoc}");
    }

    #[test]
    fn verbatim_mode_keeps_pattern_forms() {
        let out = process_word("${A#b} ${A%%c} ${A//d/e}", '\\', None).unwrap();
        assert_eq!(out, "${A#b} ${A%%c} ${A//d/e}");
    }

    #[test]
    fn verbatim_mode_only_unquotes() {
        let out = process_word("\"$A ${B:-c}\" 'd' \\$E", '\\', None).unwrap();
        assert_eq!(out, "$A ${B:-c} d \\$E");
    }
}

/// Expands variables in a heredoc body the way BuildKit does for COPY/ADD
/// heredocs with an unquoted delimiter: only `$` references (and `\$`) are
/// special; quotes and other escapes stay as written.
pub(crate) fn expand_heredoc(
    content: &str,
    escape: char,
    vars: &dyn Vars<'_>,
) -> Result<String, String> {
    let mut lexer = Lexer {
        text: content,
        pos: 0,
        escape,
        vars: Some(vars),
        depth: 0,
        raw_escapes: false,
        limit: MAX_WORD.max(content.len()),
    };
    let mut out = String::with_capacity(content.len());
    while let Some(c) = lexer.next() {
        if c == escape && lexer.peek() == Some('$') {
            lexer.pos += 1;
            out.push('$');
        } else if c == '$' {
            lexer.dollar(&mut out)?;
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod heredoc_tests {
    use super::*;

    #[test]
    fn heredoc_expansion_keeps_quotes() {
        let vars = |name: &str| (name == "A").then_some("1");
        let out = expand_heredoc("'$A' \"${A}\" \\$A \\n $B.\n", '\\', &vars).unwrap();
        assert_eq!(out, "'1' \"1\" $A \\n .\n");
    }
}
