//! Docker's word processing: quote removal, escapes and variable substitution
//! (`$V`, `${V}`, `${V:-w}`, `${V-w}`, `${V:+w}`, `${V+w}`, `${V:?msg}`,
//! `${V?msg}`), with no expansion inside single quotes.

/// Where variable values come from.
pub(crate) trait Vars {
    /// The value of `name`, `None` when unset.
    fn get(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> Vars for F {
    fn get(&self, name: &str) -> Option<String> {
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
    vars: Option<&dyn Vars>,
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
    };
    lexer.word(None)
}

struct Lexer<'a> {
    text: &'a str,
    /// Byte offset of the next character in `text`.
    pos: usize,
    escape: char,
    vars: Option<&'a dyn Vars>,
    /// Nesting of `${...:-${...}}`, bounded so that input cannot exhaust the stack.
    depth: usize,
}

/// How deeply `${V:-${W:-...}}` may nest.
const MAX_DEPTH: usize = 64;

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.text.get(self.pos..)?.chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
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
                match self.next() {
                    None => break,
                    Some(escaped) => {
                        if self.vars.is_none() && escaped == '$' {
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
                Some(c) if c == self.escape => match self.peek() {
                    None => {}
                    Some(next) if next == '"' || next == '$' || next == self.escape => {
                        self.pos += next.len_utf8();
                        if self.vars.is_none() && next == '$' {
                            out.push(self.escape);
                        }
                        out.push(next);
                    }
                    // Other escapes stay as written inside double quotes.
                    Some(_) => out.push(c),
                },
                Some(c) => out.push(c),
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        if let Some(c) = self.peek() {
            if c.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    name.push(d);
                    self.pos += 1;
                }
                return name;
            }
        }
        while let Some(c) = self.peek() {
            if !(c.is_alphanumeric() || c == '_') {
                break;
            }
            name.push(c);
            self.pos += c.len_utf8();
        }
        name
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
                Some(vars) => out.push_str(&vars.get(&name).unwrap_or_default()),
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
        let value = self.vars.and_then(|vars| vars.get(&name));
        let next = self.next();
        let result = match next {
            Some('}') => value.unwrap_or_default(),
            Some(':') | Some('-') | Some('+') | Some('?') => {
                let colon = next == Some(':');
                let modifier = if colon { self.next() } else { next };
                self.depth += 1;
                let word = self.word(Some('}'));
                self.depth -= 1;
                let word = word?;
                self.pos += 1; // the '}'
                // With a colon an empty value counts as unset.
                let set = match &value {
                    Some(v) => !(colon && v.is_empty()),
                    None => false,
                };
                match modifier {
                    Some('-') => {
                        if set {
                            value.unwrap_or_default()
                        } else {
                            word
                        }
                    }
                    Some('+') => {
                        if set {
                            word
                        } else {
                            String::new()
                        }
                    }
                    Some('?') => {
                        if set || self.vars.is_none() {
                            value.unwrap_or_default()
                        } else if word.is_empty() {
                            return Err(format!("{name}: parameter is not set"));
                        } else {
                            return Err(format!("{name}: {word}"));
                        }
                    }
                    other => {
                        return Err(format!(
                            "unsupported modifier {:?} in substitution of {name}; use one of :- - :+ + :? ?",
                            other.map(String::from).unwrap_or_default()
                        ))
                    }
                }
            }
            None => return Err(format!("missing '}}' in substitution of {name}")),
            Some(other) => {
                return Err(format!(
                    "unsupported modifier '{other}' in substitution of {name}; use one of :- - :+ + :? ?"
                ))
            }
        };
        match self.vars {
            None => out.push_str(self.text.get(start..self.pos).unwrap_or_default()),
            Some(_) => out.push_str(&result),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(word: &str) -> Result<String, String> {
        let vars = |name: &str| match name {
            "SET" => Some("value".to_string()),
            "EMPTY" => Some(String::new()),
            "SPACE" => Some("a b".to_string()),
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
            process_word("`$SET", '`', Some(&|_: &str| Some("x".to_string()))).unwrap(),
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
        assert!(expand("${SET/a/b}").is_err());
        assert!(expand("${}").is_err());
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
    vars: &dyn Vars,
) -> Result<String, String> {
    let mut lexer = Lexer {
        text: content,
        pos: 0,
        escape,
        vars: Some(vars),
        depth: 0,
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
        let vars = |name: &str| (name == "A").then(|| "1".to_string());
        let out = expand_heredoc("'$A' \"${A}\" \\$A \\n $B.\n", '\\', &vars).unwrap();
        assert_eq!(out, "'1' \"1\" $A \\n .\n");
    }
}
