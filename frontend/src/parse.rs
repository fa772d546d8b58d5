//! Dockerfile text -> [`Dockerfile`]: the line reader (directives, escape
//! character, continuations, comments, heredoc bodies) and, per logical line,
//! the pest grammar.

use std::borrow::Cow;
use std::sync::Arc;

use pest::Parser as _;

use crate::ast::{Dockerfile, Flag, Heredoc, Instruction, Keyword, Pair};
use crate::error::{span_number, Error, Result, Span};
use crate::shell::process_word;

#[derive(pest_derive::Parser)]
#[grammar = "../../grammar/dockerfile.pest"]
struct Grammar;

/// Parses Dockerfile `text`; `file_name` names it in spans and errors.
///
/// Checks everything that can be checked without evaluating the file: the
/// directives, every instruction's keyword, flags (names, and values where
/// they are not expanded later), argument counts and forms, heredocs, and that
/// only ARG comes before the first FROM.
pub fn parse(text: &str, file_name: &str) -> Result<Dockerfile> {
    let lines = split_lines(text);
    let mut reader = Reader {
        file: Arc::from(file_name),
        lines: &lines,
        next: 0,
        escape: '\\',
    };
    let (syntax, check) = reader.directives()?;
    // At most one instruction per line: growing the list would copy every
    // instruction read so far, several times over.
    let mut instructions = Vec::with_capacity(lines.len() - reader.next);
    let mut seen_from = false;
    while let Some(logical) = reader.logical_line() {
        let instruction = reader.instruction(&logical)?;
        if !seen_from && !matches!(instruction.keyword, Keyword::From | Keyword::Arg) {
            return Err(Error::syntax(
                instruction.span.clone(),
                format!(
                    "{} before the first FROM: only ARG may come before FROM; start the build stage with a FROM line",
                    instruction.keyword
                ),
            ));
        }
        seen_from |= instruction.keyword == Keyword::From;
        instructions.push(instruction);
    }
    // Heredoc bodies and continuations make lines that are no instruction;
    // a file mostly made of them should not keep the room.
    if instructions.capacity() > 2 * instructions.len() {
        instructions.shrink_to_fit();
    }
    if instructions.is_empty() {
        return Err(reader.empty());
    }
    if !seen_from {
        let last = instructions.last().map(|i| i.span.clone());
        if let Some(span) = last {
            return Err(Error::syntax(
                span,
                "the dockerfile has no FROM line; add one such as \"FROM scratch\"",
            ));
        }
    }
    Ok(Dockerfile {
        escape: reader.escape,
        syntax,
        check,
        instructions,
    })
}

/// The physical lines of a Dockerfile, without a leading UTF-8 BOM, each with
/// its LF or CRLF ending removed from the body the parser reads.
fn split_lines(text: &str) -> Vec<Line<'_>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split_inclusive('\n')
        .map(|raw| {
            let body = raw.strip_suffix('\n').unwrap_or(raw);
            let body = body.strip_suffix('\r').unwrap_or(body);
            Line { raw, body }
        })
        .collect()
}

/// Parses one line as a single instruction (for ONBUILD triggers stored in an
/// image config, and `kiln import --change`). Heredoc bodies may follow the
/// line, as in a Dockerfile.
pub(crate) fn parse_instruction(text: &str, file_name: &str) -> Result<Instruction> {
    let lines = split_lines(text);
    let mut reader = Reader {
        file: Arc::from(file_name),
        lines: &lines,
        next: 0,
        escape: '\\',
    };
    match reader.logical_line() {
        Some(logical) => reader.instruction(&logical),
        None => Err(reader.empty()),
    }
}

/// A Dockerfile's bytes as text. Like Docker, kiln reads a file that is not
/// valid UTF-8 (a Latin-1 comment, say) rather than refusing it: each byte
/// that is not part of a UTF-8 character becomes U+FFFD, which is what an
/// image config (JSON) written by BuildKit holds for such a byte in a
/// label, an environment value or a command. (BuildKit passes a RUN
/// command's bytes to the shell unchanged; kiln passes U+FFFD.)
pub fn dockerfile_text(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

struct Line<'a> {
    /// With its line ending.
    raw: &'a str,
    /// Without `\n` / `\r\n`.
    body: &'a str,
}

/// Consecutive physical lines joined into one instruction's text.
struct Logical<'a> {
    /// Borrowed from the line for the common one-line instruction.
    text: Cow<'a, str>,
    /// Where `text` starts.
    first: Segment,
    /// Where each further piece of `text` came from, in order (continuation
    /// lines only, so a one-line instruction allocates nothing here).
    more: Vec<Segment>,
}

struct Segment {
    /// Byte offset in the logical text.
    start: usize,
    /// Index of the physical line.
    line: usize,
    /// Byte offset in the physical line's body.
    column_byte: usize,
}

struct Reader<'a> {
    file: Arc<str>,
    lines: &'a [Line<'a>],
    next: usize,
    escape: char,
}

/// `is_ws` for a byte of UTF-8 text.
fn is_ws_byte(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | 0x0B | 0x0C | b'\r')
}

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{0B}' | '\u{0C}' | '\r')
}

fn trim_leading_ws(s: &str) -> &str {
    s.trim_start_matches(char::is_whitespace)
}

fn is_comment(body: &str) -> bool {
    trim_leading_ws(body).starts_with('#')
}

/// Removes a trailing escape character (plus trailing blanks); says whether
/// the instruction ends on this line.
///
/// As in current BuildKit, an escape character that is itself escaped
/// (`COPY a C:\\dir\\`, or ``` echo a`` ``` after `` # escape=` ``) does
/// not continue the line. Like BuildKit, only the one character before the last escape
/// is looked at, so `foo\\\` (an escaped escape, then an escape) is no
/// continuation either; dockerd 20.10's old frontend joined all of these.
fn trim_continuation(body: &str, escape: char) -> (&str, bool) {
    let trimmed = body.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(before) if !before.ends_with(escape) => (before, false),
        _ => (body, true),
    }
}

impl<'a> Reader<'a> {
    /// The error for a file without instructions, at its last line.
    fn empty(&self) -> Error {
        let line = self.lines.len().max(1);
        Error::Empty {
            span: self.span(line, 1, line),
        }
    }

    fn span(&self, line: usize, column: usize, end_line: usize) -> Span {
        Span {
            file: self.file.clone(),
            line: span_number(line),
            column: span_number(column),
            end_line: span_number(end_line),
        }
    }

    /// The position of byte `offset` of a logical line.
    fn position(&self, logical: &Logical, offset: usize) -> (usize, usize) {
        // Binary search: a logical line may have very many segments.
        let after = logical.more.partition_point(|s| s.start <= offset);
        let segment = match after.checked_sub(1) {
            Some(i) => logical.more.get(i).unwrap_or(&logical.first),
            None => &logical.first,
        };
        let body = self.lines.get(segment.line).map_or("", |l| l.body);
        let byte = segment.column_byte + (offset - segment.start.min(offset));
        let column = body.get(..byte).map_or(byte, |s| s.chars().count()) + 1;
        (segment.line + 1, column)
    }

    fn span_at(&self, logical: &Logical, offset: usize, end_line: usize) -> Span {
        let (line, column) = self.position(logical, offset);
        self.span(line, column, end_line.max(line))
    }

    /// Reads the parser directives at the top of the file.
    fn directives(&mut self) -> Result<(Option<String>, Option<String>)> {
        let mut syntax = None;
        let mut check = None;
        let mut escape = None;
        while let Some(line) = self.lines.get(self.next) {
            let body = trim_leading_ws(line.body);
            let Ok(mut pairs) = Grammar::parse(Rule::directive, body) else {
                break;
            };
            let Some(directive) = pairs.next() else { break };
            let mut name = String::new();
            let mut value = String::new();
            for part in directive.into_inner() {
                match part.as_rule() {
                    Rule::directive_name => name = part.as_str().to_ascii_lowercase(),
                    Rule::directive_value => value = part.as_str().trim_end().to_string(),
                    _ => {}
                }
            }
            let slot = match name.as_str() {
                "syntax" => &mut syntax,
                "check" => &mut check,
                "escape" => &mut escape,
                // Any other `# name=value` is a comment and ends the directives.
                _ => break,
            };
            let column = line.body.len() - body.len() + 1;
            if slot.is_some() {
                return Err(Error::syntax(
                    self.span(self.next + 1, column, self.next + 1),
                    format!("only one {name} parser directive can be used; remove this one"),
                ));
            }
            *slot = Some(value);
            self.next += 1;
        }
        if let Some(value) = escape {
            self.escape = match value.as_str() {
                "\\" => '\\',
                "`" => '`',
                other => {
                    let line = (0..self.next)
                        .find(|&i| {
                            self.lines[i].body.contains("escape")
                                && self.lines[i].body.contains(other)
                        })
                        .map_or(1, |i| i + 1);
                    return Err(Error::syntax(
                        self.span(line, 1, line),
                        format!(
                            "invalid escape character {other:?}: the escape directive takes \\ or `"
                        ),
                    ));
                }
            };
        }
        Ok((syntax, check))
    }

    /// The next instruction's text, continuations joined and comment lines
    /// inside it dropped; `None` at the end of the file.
    fn logical_line(&mut self) -> Option<Logical<'a>> {
        loop {
            let index = self.next;
            let line = self.lines.get(index)?;
            self.next += 1;
            let body = trim_leading_ws(line.body);
            if body.is_empty() || body.starts_with('#') {
                continue;
            }
            let (first, mut ended) = trim_continuation(body, self.escape);
            let mut logical = Logical {
                text: Cow::Borrowed(first),
                first: Segment {
                    start: 0,
                    line: index,
                    column_byte: line.body.len() - body.len(),
                },
                more: Vec::new(),
            };
            while !ended {
                let Some(next) = self.lines.get(self.next) else {
                    break;
                };
                let index = self.next;
                self.next += 1;
                if is_comment(next.body) || trim_leading_ws(next.body).is_empty() {
                    continue;
                }
                let (part, end) = trim_continuation(next.body, self.escape);
                logical.more.push(Segment {
                    start: logical.text.len(),
                    line: index,
                    column_byte: 0,
                });
                logical.text.to_mut().push_str(part);
                ended = end;
            }
            if logical.text.trim().is_empty() {
                continue;
            }
            return Some(logical);
        }
    }

    /// Parses a logical line, then reads the bodies of its heredocs.
    fn instruction(&mut self, logical: &Logical) -> Result<Instruction> {
        let end_line = self.next;
        let mut instruction = self.parse_logical(logical, 0, end_line, false)?;
        let target = match instruction.onbuild.as_deref_mut() {
            Some(inner) => inner,
            None => &mut instruction,
        };
        if target.keyword.takes_heredocs() && target.text().contains("<<") {
            let markers = self.heredoc_markers(logical, target)?;
            // One heredoc is the common case: no room for four.
            let mut heredocs = Vec::with_capacity(markers.len());
            for (marker, name, expand, strip_tabs) in markers {
                let mut content = String::new();
                let mut terminated = false;
                while let Some(line) = self.lines.get(self.next) {
                    self.next += 1;
                    let candidate = if strip_tabs {
                        line.body.trim_start_matches('\t')
                    } else {
                        line.body
                    };
                    if candidate == name {
                        terminated = true;
                        break;
                    }
                    content.push_str(line.raw);
                }
                if !terminated {
                    return Err(Error::syntax(
                        marker,
                        format!(
                            "unterminated heredoc: no line consisting of {name:?} ends it before the end of the file; add one"
                        ),
                    ));
                }
                heredocs.push(Heredoc {
                    name,
                    content,
                    expand,
                    strip_tabs,
                });
            }
            target.heredocs = heredocs.into();
        }
        let end_line = span_number(self.next);
        instruction.span.end_line = end_line;
        if let Some(inner) = instruction.onbuild.as_deref_mut() {
            inner.span.end_line = end_line;
        }
        Ok(instruction)
    }

    /// The heredocs a RUN/COPY/ADD line opens: (marker span, name, expand,
    /// strip_tabs) in order.
    fn heredoc_markers(
        &self,
        logical: &Logical,
        instruction: &Instruction,
    ) -> Result<Vec<(Span, String, bool, bool)>> {
        let mut found = Vec::new();
        let text_offset = logical.text.find(instruction.text()).unwrap_or_default();
        for (start, word) in split_words(instruction.text(), '\\') {
            if !word.contains("<<") {
                continue;
            }
            let Some((strip_tabs, raw_name)) = heredoc_marker(word) else {
                continue;
            };
            let span = self.span_at(logical, text_offset + start, self.next);
            // The delimiter must be one word; `<<"a b"` is, `<<a b` is not.
            if split_words(raw_name, '\\').len() != 1 {
                continue;
            }
            let name = process_word(raw_name, '\\', None)
                .map_err(|e| Error::syntax(span.clone(), format!("bad heredoc delimiter: {e}")))?;
            let quotes = |s: &str| s.chars().filter(|c| *c == '"' || *c == '\'').count();
            let expand = quotes(&name) == quotes(raw_name);
            if name.is_empty() {
                continue;
            }
            found.push((span, name, expand, strip_tabs));
        }
        Ok(found)
    }

    /// Parses the logical text starting at byte `offset` (past `ONBUILD `
    /// for a trigger).
    fn parse_logical(
        &self,
        logical: &Logical,
        offset: usize,
        end_line: usize,
        in_onbuild: bool,
    ) -> Result<Instruction> {
        let text = logical.text.get(offset..).unwrap_or_default();
        let at = |o: usize| self.span_at(logical, offset + o, end_line);
        let InstructionParts {
            keyword: keyword_word,
            keyword_offset,
            flags: raw_flags,
            rest,
            rest_offset,
        } = match simple_instruction(text) {
            Some(parts) => parts,
            None => grammar_instruction(text)
                .map_err(|e| Error::syntax(at(0), format!("cannot parse instruction: {e}")))?,
        };
        let span = at(keyword_offset);
        let keyword = keyword_of(keyword_word, &span)?;
        let trimmed = rest.trim_end_matches(is_ws);
        let lead = rest.len() - rest.trim_start_matches(is_ws).len();
        let args_text = trimmed.trim_start_matches(is_ws).to_string();
        let text_span = at(rest_offset + lead.min(trimmed.len()));
        let mut flags = Vec::with_capacity(raw_flags.len());
        for (start, word) in raw_flags {
            let body = word.strip_prefix("--").unwrap_or(&word);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            flags.push(Flag {
                name,
                value,
                span: at(start),
            });
        }
        // The text is set at the end: the arguments are parsed from `rest`.
        let mut instruction = Instruction::new(keyword, span, flags, text_span.position());
        check_flags(&instruction)?;
        let rest = args_text;
        match keyword {
            Keyword::Run | Keyword::Cmd | Keyword::Entrypoint | Keyword::Shell => {
                Self::command_args(&mut instruction, &rest, &text_span)?
            }
            Keyword::Add | Keyword::Copy | Keyword::Volume => {
                Self::file_args(&mut instruction, &rest, &text_span)?
            }
            Keyword::Healthcheck => Self::healthcheck_args(&mut instruction, &rest, &text_span)?,
            Keyword::Env | Keyword::Label => self.pair_args(&mut instruction, &rest, &text_span)?,
            Keyword::Arg => self.arg_args(&mut instruction, &rest, &text_span)?,
            Keyword::Onbuild if in_onbuild => {
                return Err(Error::syntax(
                    instruction.span.clone(),
                    "ONBUILD ONBUILD is not allowed".to_string(),
                ))
            }
            Keyword::Onbuild => self.onbuild_args(
                &mut instruction,
                &rest,
                &text_span,
                logical,
                offset + rest_offset + lead,
                end_line,
            )?,
            Keyword::From => Self::from_args(&mut instruction, &rest, &text_span)?,
            Keyword::Expose => Self::expose_args(&mut instruction, &rest, &text_span)?,
            Keyword::Maintainer | Keyword::User | Keyword::Workdir | Keyword::Stopsignal => {
                Self::word_args(&mut instruction, &rest, &text_span)?
            }
        }
        instruction.set_text(&rest);
        Ok(instruction)
    }

    /// RUN, CMD, ENTRYPOINT, SHELL: an exec-form array or the shell-form command.
    fn command_args(instruction: &mut Instruction, rest: &str, text_span: &Span) -> Result<()> {
        match exec_form(rest).map_err(|m| Error::syntax(instruction.text_span(), m))? {
            Some(args) => {
                instruction.exec = true;
                instruction.args = args.into();
            }
            None if rest.is_empty() => {}
            None => instruction.args = Box::new([rest.to_string()]),
        }
        if instruction.keyword == Keyword::Run && !instruction.exec && rest.is_empty() {
            return fail(text_span, "RUN requires a command".into());
        }
        if instruction.keyword == Keyword::Shell {
            if !instruction.exec {
                return fail(text_span,
                    "SHELL requires the arguments to be in JSON form, e.g. SHELL [\"/bin/bash\", \"-c\"]"
                        .into(),
                );
            }
            if instruction.args.is_empty() {
                return fail(text_span, "SHELL requires at least one argument".into());
            }
        }
        Ok(())
    }

    /// ADD, COPY, VOLUME: an exec-form array or the words as written.
    fn file_args(instruction: &mut Instruction, rest: &str, text_span: &Span) -> Result<()> {
        let keyword = instruction.keyword;
        match exec_form(rest).map_err(|m| Error::syntax(instruction.text_span(), m))? {
            Some(args) => {
                instruction.exec = true;
                instruction.args = args.into();
            }
            None => instruction.args = split_plain(rest).into(),
        }
        if instruction.keyword == Keyword::Volume {
            if instruction.args.is_empty() {
                return fail(text_span, "VOLUME requires at least one argument".into());
            }
            if instruction.args.iter().any(|a| a.trim().is_empty()) {
                return fail(text_span, "VOLUME paths cannot be empty strings".into());
            }
        } else if instruction.args.len() < 2 {
            return fail(text_span, format!(
                "{keyword} requires at least two arguments (sources and a destination), but {} given",
                instruction.args.len()
            ));
        }
        Ok(())
    }

    /// HEALTHCHECK: `NONE`, or `CMD` and a command in either form.
    fn healthcheck_args(instruction: &mut Instruction, rest: &str, text_span: &Span) -> Result<()> {
        let (kind, command) = match rest.find(char::is_whitespace) {
            Some(i) => (&rest[..i], rest[i..].trim_start()),
            None => (rest, ""),
        };
        if kind.is_empty() {
            return fail(
                text_span,
                "HEALTHCHECK requires NONE or CMD followed by a command".into(),
            );
        }
        let mut args = vec![kind.to_string()];
        match kind.to_ascii_uppercase().as_str() {
            "NONE" => {
                if !command.is_empty() {
                    return fail(text_span, "HEALTHCHECK NONE takes no arguments".into());
                }
                if !instruction.flags.is_empty() {
                    return Err(Error::syntax(
                        instruction.flags[0].span.clone(),
                        "HEALTHCHECK NONE takes no flags".to_string(),
                    ));
                }
            }
            "CMD" => {
                match exec_form(command).map_err(|m| Error::syntax(instruction.text_span(), m))? {
                    Some(exec_args) => {
                        instruction.exec = true;
                        args.extend(exec_args);
                    }
                    None if command.is_empty() => {
                        return fail(text_span, "HEALTHCHECK CMD requires a command".into())
                    }
                    None => args.push(command.to_string()),
                }
            }
            other => {
                return fail(
                    text_span,
                    format!("unknown HEALTHCHECK type {other:?}: use CMD <command> or NONE"),
                )
            }
        }
        instruction.args = args.into();
        Ok(())
    }

    /// ENV and LABEL: `key=value` pairs, or the old `key value` form.
    fn pair_args(&self, instruction: &mut Instruction, rest: &str, text_span: &Span) -> Result<()> {
        let keyword = instruction.keyword;
        let words = self.words(rest);
        if words.is_empty() {
            return fail(
                text_span,
                format!("{keyword} requires at least one key=value pair"),
            );
        }
        let mut pairs = Vec::with_capacity(words.len());
        if !words[0].contains('=') {
            // The old form: `ENV key the rest of the line`.
            let split = rest.find(is_ws);
            let Some(split) = split else {
                return fail(
                    text_span,
                    format!(
                    "{keyword} {} has no value: write {keyword} {}=value (or {keyword} {} value)",
                    words[0], words[0], words[0]
                ),
                );
            };
            let key = &rest[..split];
            let value = rest[split..].trim_start_matches(is_ws);
            pairs.push(self.pair(instruction, key, Some(value))?);
        } else {
            for word in &words {
                let Some((key, value)) = word.split_once('=') else {
                    return fail(
                        text_span,
                        format!(
                            "cannot find = in {word:?}; every word must be of the form name=value"
                        ),
                    );
                };
                pairs.push(self.pair(instruction, key, Some(value))?);
            }
        }
        instruction.args = words.into();
        instruction.pairs = Some(pairs.into());
        Ok(())
    }

    /// ARG: names, each optionally with `=default`.
    fn arg_args(&self, instruction: &mut Instruction, rest: &str, text_span: &Span) -> Result<()> {
        let words = self.words(rest);
        if words.is_empty() {
            return fail(
                text_span,
                "ARG requires a name, optionally with =default".into(),
            );
        }
        let mut pairs = Vec::with_capacity(words.len());
        for word in &words {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word.as_str(), None),
            };
            pairs.push(self.pair(instruction, key, value)?);
        }
        instruction.args = words.into();
        instruction.pairs = Some(pairs.into());
        Ok(())
    }

    /// ONBUILD: the trigger, parsed as an instruction of its own.
    fn onbuild_args(
        &self,
        instruction: &mut Instruction,
        rest: &str,
        text_span: &Span,
        logical: &Logical,
        inner_offset: usize,
        end_line: usize,
    ) -> Result<()> {
        if rest.is_empty() {
            return fail(
                text_span,
                "ONBUILD requires an instruction to run later".into(),
            );
        }
        let inner = self.parse_logical(logical, inner_offset, end_line, true)?;
        if matches!(
            inner.keyword,
            Keyword::Onbuild | Keyword::From | Keyword::Maintainer
        ) {
            return Err(Error::syntax(
                inner.span.clone(),
                format!("{} is not allowed as an ONBUILD trigger", inner.keyword),
            ));
        }
        instruction.args = split_plain(rest).into();
        instruction.onbuild = Some(Box::new(inner));
        Ok(())
    }

    /// FROM: an image and optionally `AS name`.
    fn from_args(instruction: &mut Instruction, rest: &str, text_span: &Span) -> Result<()> {
        instruction.args = split_plain(rest).into();
        let n = instruction.args.len();
        if !(n == 1 || (n == 3 && instruction.args[1].eq_ignore_ascii_case("as"))) {
            return fail(
                text_span,
                "FROM requires an image and optionally AS <name>: FROM <image> [AS <name>]".into(),
            );
        }
        if n == 3 {
            let name = &instruction.args[2];
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !valid {
                return fail(text_span, format!(
                    "invalid stage name {name:?}: it must start with a letter and contain only letters, digits, '_', '.' and '-'"
                ));
            }
        }
        Ok(())
    }

    /// EXPOSE: the ports as written.
    fn expose_args(instruction: &mut Instruction, rest: &str, text_span: &Span) -> Result<()> {
        instruction.args = split_plain(rest).into();
        if instruction.args.is_empty() {
            return fail(text_span, "EXPOSE requires at least one port".into());
        }
        Ok(())
    }

    /// MAINTAINER, USER, WORKDIR, STOPSIGNAL: the words as written.
    fn word_args(instruction: &mut Instruction, rest: &str, text_span: &Span) -> Result<()> {
        let keyword = instruction.keyword;
        instruction.args = split_plain(rest).into();
        if instruction.args.is_empty() {
            return fail(text_span, format!("{keyword} requires an argument"));
        }
        Ok(())
    }

    fn words(&self, text: &str) -> Vec<String> {
        split_words(text, self.escape)
            .into_iter()
            .map(|(_, w)| w.to_string())
            .collect()
    }

    fn pair(&self, instruction: &Instruction, key: &str, value: Option<&str>) -> Result<Pair> {
        let unquote = |s: &str| {
            process_word(s, self.escape, None).map_err(|e| {
                Error::syntax(
                    instruction.text_span(),
                    format!("{}: {e}", instruction.keyword),
                )
            })
        };
        let unquoted_key = unquote(key)?;
        if unquoted_key.is_empty() {
            return Err(Error::syntax(
                instruction.text_span(),
                format!("{} names cannot be empty", instruction.keyword),
            ));
        }
        Ok(Pair {
            key: unquoted_key,
            value: value.map(unquote).transpose()?,
            raw_key: key.to_string(),
            raw_value: value.map(str::to_string),
        })
    }
}

/// The common exec form, a JSON array of strings without escapes or control
/// characters, read without running the grammar (which costs far more per
/// line); `None` leaves anything else to the `json_array` rule.
/// `simple_json_matches_the_json_array_rule` checks that both agree.
fn simple_json_strings(text: &str) -> Option<Vec<String>> {
    let json_ws = |s: &str| s.trim_start_matches([' ', '\t', '\n', '\r']).len();
    let mut rest = text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .strip_prefix('[')?;
    let mut out = Vec::new();
    rest = &rest[rest.len() - json_ws(rest)..];
    if let Some(after) = rest.strip_prefix(']') {
        return after
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .is_empty()
            .then_some(out);
    }
    loop {
        let body = rest.strip_prefix('"')?;
        let end = body.find(['"', '\\'])?;
        let (string, after) = body.split_at(end);
        if string.contains(|c: char| c < '\u{20}') {
            return None;
        }
        out.push(string.to_string());
        let after = after.strip_prefix('"')?;
        let after = &after[after.len() - json_ws(after)..];
        if let Some(next) = after.strip_prefix(',') {
            rest = &next[next.len() - json_ws(next)..];
        } else {
            let tail = after.strip_prefix(']')?;
            return tail
                .trim_start_matches([' ', '\t', '\n', '\r'])
                .is_empty()
                .then_some(out);
        }
    }
}

/// The grammar's `heredoc_marker` rule as a scan (the grammar costs far
/// more per word; `heredoc_scan_matches_the_rule` checks that both agree):
/// optional digits, `<<`, an optional `-` (strip tabs), then a delimiter of
/// at least one character and no `<`. Returns (strip_tabs, raw delimiter).
fn heredoc_marker(word: &str) -> Option<(bool, &str)> {
    let rest = word.trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = rest.strip_prefix("<<")?;
    let (strip_tabs, name) = match rest.strip_prefix('-') {
        Some(name) => (true, name),
        None => (false, rest),
    };
    (!name.is_empty() && !name.contains('<')).then_some((strip_tabs, name))
}

/// An instruction line split as the grammar's `instruction` rule splits it.
struct InstructionParts<'t> {
    keyword: &'t str,
    keyword_offset: usize,
    /// Each flag's offset and its text with quotes and escapes removed.
    flags: Vec<(usize, Cow<'t, str>)>,
    rest: &'t str,
    rest_offset: usize,
}

/// Splits `text` with the grammar's `instruction` rule.
fn grammar_instruction(
    text: &str,
) -> std::result::Result<InstructionParts<'_>, Box<pest::error::Error<Rule>>> {
    let parsed = Grammar::parse(Rule::instruction, text)?.next();
    let mut parts = InstructionParts {
        keyword: "",
        keyword_offset: 0,
        flags: Vec::new(),
        rest: "",
        rest_offset: text.len(),
    };
    for part in parsed.into_iter().flat_map(|p| p.into_inner()) {
        match part.as_rule() {
            Rule::keyword => {
                parts.keyword = part.as_str();
                parts.keyword_offset = part.as_span().start();
            }
            Rule::flag => parts.flags.push((
                part.as_span().start(),
                Cow::Owned(unquote_flag(part.as_str())),
            )),
            Rule::rest => {
                parts.rest = part.as_str();
                parts.rest_offset = part.as_span().start();
            }
            _ => {}
        }
    }
    Ok(parts)
}

/// The common shapes of an instruction line (flags without quotes or
/// backslashes) split without running the grammar, which costs far more per
/// line than this scan; the same split as `grammar_instruction`, or `None`
/// to leave the line to it.
/// The instruction a keyword names (in any case), or an error that suggests
/// the nearest one.
fn keyword_of(word: &str, span: &Span) -> Result<Keyword> {
    Keyword::from_word(word).ok_or_else(|| {
        let suggestion = Keyword::ALL
            .iter()
            .map(|k| {
                (
                    strsim::levenshtein(&k.as_str().to_lowercase(), &word.to_lowercase()),
                    k,
                )
            })
            .min_by_key(|(d, _)| *d)
            .filter(|(d, k)| *d <= 2.max(k.as_str().len() / 3))
            .map(|(_, k)| format!(" (did you mean {k}?)"))
            .unwrap_or_default();
        Error::syntax(
            span.clone(),
            format!("unknown instruction {:?}{suggestion}", word.to_uppercase()),
        )
    })
}

/// A syntax error at `span`.
fn fail<T>(span: &Span, message: String) -> Result<T> {
    Err(Error::syntax(span.clone(), message))
}

fn simple_instruction(text: &str) -> Option<InstructionParts<'_>> {
    // Byte scans: the blanks are ASCII, so the cuts are character boundaries.
    let bytes = text.as_bytes();
    let skip_ws = |from: usize| {
        bytes
            .get(from..)
            .and_then(|rest| rest.iter().position(|&b| !is_ws_byte(b)))
            .map_or(text.len(), |i| from + i)
    };
    let word_end = |from: usize| {
        bytes
            .get(from..)
            .and_then(|rest| rest.iter().position(|&b| is_ws_byte(b)))
            .map_or(text.len(), |i| from + i)
    };
    let keyword_offset = skip_ws(0);
    let keyword_end = word_end(keyword_offset);
    if keyword_end == keyword_offset {
        return None;
    }
    let mut pos = keyword_end;
    let mut flags = Vec::new();
    let rest_offset = loop {
        let start = skip_ws(pos);
        if start == pos || !text[start..].starts_with("--") {
            break start;
        }
        let end = word_end(start);
        let word = &text[start..end];
        if word == "--" {
            break skip_ws(end);
        }
        if word.contains(['"', '\'', '\\']) {
            return None;
        }
        flags.push((start, Cow::Borrowed(word)));
        pos = end;
    };
    Some(InstructionParts {
        keyword: &text[keyword_offset..keyword_end],
        keyword_offset,
        flags,
        rest: &text[rest_offset..],
        rest_offset,
    })
}

/// Whitespace-separated words (quotes and escapes kept, but white space inside
/// them does not split), with their byte offsets.
fn split_words(text: &str, escape: char) -> Vec<(usize, &str)> {
    // Without quotes or escapes, the grammar splits exactly at white space.
    if !text.contains(['"', '\'', escape]) {
        return split_plain_offsets(text);
    }
    scan_words(text, escape)
}

/// The grammar's `words` rule as a single pass over the characters (the
/// grammar costs far more per line; `scan_matches_the_words_rule` checks
/// that both split alike): white space ends a word except inside quotes or
/// right after the escape character, which also escapes inside double quotes
/// but not inside single quotes; an unterminated quote runs to the end.
fn scan_words(text: &str, escape: char) -> Vec<(usize, &str)> {
    #[derive(PartialEq)]
    enum Quote {
        None,
        Single,
        Double,
    }
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut quote = Quote::None;
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        if quote == Quote::None && is_ws(c) {
            if let Some(s) = start.take() {
                out.push((s, &text[s..i]));
            }
            continue;
        }
        if start.is_none() {
            start = Some(i);
        }
        match quote {
            Quote::Single => {
                if c == '\'' {
                    quote = Quote::None;
                }
            }
            Quote::Double => {
                if c == escape {
                    chars.next();
                } else if c == '"' {
                    quote = Quote::None;
                }
            }
            Quote::None => {
                if c == escape {
                    chars.next();
                } else if c == '"' {
                    quote = Quote::Double;
                } else if c == '\'' {
                    quote = Quote::Single;
                }
            }
        }
    }
    if let Some(s) = start {
        out.push((s, &text[s..]));
    }
    out
}

/// The grammar's `words` rule, which `scan_words` implements.
#[cfg(test)]
fn grammar_words(text: &str, escape: char) -> Vec<(usize, &str)> {
    let mut input = String::with_capacity(text.len() + 1);
    input.push(escape);
    input.push_str(text);
    let shift = escape.len_utf8();
    let Ok(mut pairs) = Grammar::parse(Rule::words, &input) else {
        return split_plain_offsets(text);
    };
    let Some(words) = pairs.next() else {
        return Vec::new();
    };
    words
        .into_inner()
        .filter(|p| p.as_rule() == Rule::word)
        .filter_map(|p| {
            let span = p.as_span();
            let start = span.start().checked_sub(shift)?;
            let end = span.end().checked_sub(shift)?;
            Some((start, text.get(start..end)?))
        })
        .collect()
}

fn split_plain_offsets(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    // Bytes, not characters: the blanks are ASCII, and an ASCII byte never
    // occurs inside a wider character, so every cut is a character boundary.
    for (i, &b) in text.as_bytes().iter().enumerate() {
        if is_ws_byte(b) {
            if let Some(s) = start.take() {
                out.extend(text.get(s..i).map(|word| (s, word)));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        out.extend(text.get(s..).map(|word| (s, word)));
    }
    out
}

/// Whitespace-separated words, quotes not special (BuildKit's
/// `parseStringsWhitespaceDelimited`).
fn split_plain(text: &str) -> Vec<String> {
    split_plain_offsets(text)
        .into_iter()
        .map(|(_, w)| w.to_string())
        .collect()
}

/// A flag word with its quotes removed and backslash escapes applied (as
/// BuildKit's flag reader does).
fn unquote_flag(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\\') => out.extend(chars.next()),
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (_, c) => out.push(c),
        }
    }
    out
}

/// The strings of a JSON array, `None` when `text` is not a JSON array (shell
/// form), an error when it is one but holds something other than strings.
pub(crate) fn exec_form(text: &str) -> std::result::Result<Option<Vec<String>>, String> {
    if !text.trim_start().starts_with('[') {
        return Ok(None);
    }
    if json_depth(text) > MAX_JSON_DEPTH {
        return Err(format!(
            "when using JSON array syntax, arrays must contain strings only, not arrays nested {MAX_JSON_DEPTH} deep or more"
        ));
    }
    if let Some(strings) = simple_json_strings(text) {
        return Ok(Some(strings));
    }
    let Ok(mut pairs) = Grammar::parse(Rule::json_array, text) else {
        return Ok(None);
    };
    let Some(array) = pairs.next() else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for value in array.into_inner() {
        let Some(inner) = value.into_inner().next() else {
            continue;
        };
        match inner.as_rule() {
            Rule::json_string => {
                let chars = inner.into_inner().next().map_or("", |p| p.as_str());
                // Raw control characters make the text invalid JSON, so it is
                // shell form.
                if chars.contains(|c: char| c < '\u{20}') {
                    return Ok(None);
                }
                out.push(json_unescape(chars));
            }
            _ => {
                return Err(format!(
                    "when using JSON array syntax, arrays must contain strings only, not {}",
                    inner.as_str()
                ))
            }
        }
    }
    Ok(Some(out))
}

/// Deeper JSON nesting is rejected before the (recursive) grammar sees it.
const MAX_JSON_DEPTH: usize = 64;

/// The deepest nesting of `[`/`{` outside JSON strings.
fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for c in text.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Decodes the escapes of a JSON string body the grammar already validated;
/// lone surrogates become U+FFFD as in Go's encoding/json.
fn json_unescape(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    let mut pending_high: Option<u16> = None;
    let hex4 = |chars: &mut std::str::Chars<'_>| -> u16 {
        let digits: String = chars.by_ref().take(4).collect();
        u16::from_str_radix(&digits, 16).unwrap_or(0xFFFD)
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            if pending_high.take().is_some() {
                out.push('\u{FFFD}');
            }
            out.push(c);
            continue;
        }
        let Some(e) = chars.next() else { break };
        if e == 'u' {
            let unit = hex4(&mut chars);
            if let Some(high) = pending_high.take() {
                if (0xDC00..0xE000).contains(&unit) {
                    let code =
                        0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(unit) - 0xDC00);
                    out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
                    continue;
                }
                out.push('\u{FFFD}');
            }
            if (0xD800..0xDC00).contains(&unit) {
                pending_high = Some(unit);
            } else {
                out.push(char::from_u32(u32::from(unit)).unwrap_or('\u{FFFD}'));
            }
            continue;
        }
        if pending_high.take().is_some() {
            out.push('\u{FFFD}');
        }
        out.push(match e {
            'b' => '\u{08}',
            'f' => '\u{0C}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            other => other,
        });
    }
    if pending_high.is_some() {
        out.push('\u{FFFD}');
    }
    out
}

/// How a flag takes its value.
#[derive(Clone, Copy, PartialEq)]
enum FlagKind {
    /// `--name` or `--name=true|false`.
    Bool,
    /// `--name=value`, once.
    String,
    /// `--name=value`, repeatable.
    List,
}

fn allowed_flags(keyword: Keyword) -> &'static [(&'static str, FlagKind)] {
    use FlagKind::*;
    match keyword {
        Keyword::Copy => &[
            ("from", String),
            ("chown", String),
            ("chmod", String),
            ("link", Bool),
            ("exclude", List),
            ("parents", Bool),
        ],
        Keyword::Add => &[
            ("chown", String),
            ("chmod", String),
            ("checksum", String),
            ("keep-git-dir", Bool),
            ("link", Bool),
            ("exclude", List),
            ("unpack", Bool),
        ],
        Keyword::Run => &[("mount", List), ("network", String), ("security", String)],
        Keyword::From => &[("platform", String)],
        Keyword::Healthcheck => &[
            ("interval", String),
            ("timeout", String),
            ("start-period", String),
            ("start-interval", String),
            ("retries", String),
        ],
        _ => &[],
    }
}

/// Checks an instruction's flags: known names, values where needed, no
/// repeats of single-valued flags, and values that are never expanded.
fn check_flags(instruction: &Instruction) -> Result<()> {
    let allowed = allowed_flags(instruction.keyword);
    let mut seen: Vec<&str> = Vec::new();
    for flag in &instruction.flags {
        let err = |message: String| Err(Error::syntax(flag.span.clone(), message));
        let Some((_, kind)) = allowed.iter().find(|(name, _)| *name == flag.name) else {
            let names: Vec<String> = allowed.iter().map(|(n, _)| format!("--{n}")).collect();
            let hint = if names.is_empty() {
                format!("{} takes no flags", instruction.keyword)
            } else {
                format!("{} takes {}", instruction.keyword, names.join(", "))
            };
            return err(format!("unknown flag --{} ({hint})", flag.name));
        };
        match (kind, &flag.value) {
            (FlagKind::Bool, Some(v)) if v != "true" && v != "false" => {
                return err(format!(
                    "--{} takes no value or true/false, not {v:?}",
                    flag.name
                ))
            }
            (FlagKind::String | FlagKind::List, None) => {
                return err(format!(
                    "--{} needs a value: --{}=<value>",
                    flag.name, flag.name
                ))
            }
            _ => {}
        }
        if *kind != FlagKind::List {
            if seen.contains(&flag.name.as_str()) {
                return err(format!("--{} is given more than once", flag.name));
            }
            seen.push(&flag.name);
        }
        if instruction.keyword == Keyword::Healthcheck {
            let value = flag.value.as_deref().unwrap_or_default();
            if flag.name == "retries" {
                if value.parse::<u64>().map_or(true, |n| n == 0) {
                    return err(format!(
                        "--retries must be a whole number of at least 1, not {value:?}"
                    ));
                }
            } else if let Err(message) = parse_duration(value) {
                return err(format!("--{}: {message}", flag.name));
            }
        }
        if instruction.keyword == Keyword::Run {
            let value = flag.value.as_deref().unwrap_or_default();
            if flag.name == "mount" {
                check_mount_from(value).or_else(err)?;
            }
            match flag.name.as_str() {
                "network" => {
                    if let Err(unknown) = value.parse::<crate::graph::Network>() {
                        return err(unknown.to_string());
                    }
                }
                "security" if !["sandbox", "insecure"].contains(&value) => {
                    return err(format!(
                        "--security must be sandbox or insecure, not {value:?}"
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// `--mount=...,from=<stage>` names a stage or image without variables:
/// BuildKit must know the stages a RUN reads before expanding anything, so
/// it refuses a `$` anywhere but last in the value, and so does kiln.
fn check_mount_from(spec: &str) -> std::result::Result<(), String> {
    for field in crate::mount::csv_fields(spec) {
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        if !key.trim().eq_ignore_ascii_case("from") {
            continue;
        }
        if value.find('$').is_some_and(|at| at + 1 != value.len()) {
            return Err(format!(
                "--mount from={value:?} cannot use variables (they are not expanded there); name the stage with FROM ... AS <name> and mount from=<name>"
            ));
        }
    }
    Ok(())
}

/// A Go duration (`30s`, `1m30s`, `1.5h`, `500ms`) in nanoseconds.
pub(crate) fn parse_duration(text: &str) -> std::result::Result<u64, String> {
    let bad = || {
        format!("invalid duration {text:?}: write a number with a unit, like 30s, 1m30s or 500ms")
    };
    if text == "0" {
        return Ok(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = text;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += number * factor;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Instruction {
        let file = parse(&format!("FROM scratch\n{text}"), "Dockerfile").unwrap();
        file.instructions.into_iter().nth(1).unwrap()
    }

    fn err(text: &str) -> String {
        parse(text, "Dockerfile").unwrap_err().to_string()
    }

    #[test]
    fn continuation_joins_as_docker_does() {
        let run = one("RUN --network=none echo one && \\\n    echo two\n");
        assert_eq!(*run.args, ["echo one &&     echo two"]);
        assert_eq!(run.flags[0].text(), "--network=none");
        assert_eq!((run.span.line, run.span.end_line), (2, 3));
    }

    #[test]
    fn comments_and_blank_lines_inside_continuations_are_dropped() {
        let run = one("RUN a \\\n# comment\n\n  # indented comment\n b\n");
        assert_eq!(*run.args, ["a  b"]);
        assert_eq!(run.span.end_line, 6);
    }

    #[test]
    fn exec_form_and_fallback() {
        let run = one("RUN [\"echo\", \"a\\u0041\\/\"]");
        assert!(run.exec);
        assert_eq!(*run.args, ["echo", "aA/"]);
        let run = one("RUN [not json]");
        assert!(!run.exec);
        assert_eq!(*run.args, ["[not json]"]);
        assert!(err("FROM x\nCMD [\"a\", [\"b\"]]").contains("strings only"));
        assert!(err("FROM x\nCMD [\"a\", 1]").contains("strings only"));
        let cmd = one("CMD []");
        assert!(cmd.exec && cmd.args.is_empty());
    }

    #[test]
    fn json_surrogates() {
        assert_eq!(json_unescape("\\ud83d\\ude00"), "😀");
        assert_eq!(json_unescape("\\ud83dx"), "\u{FFFD}x");
        assert_eq!(json_unescape("\\u0000"), "\0");
    }

    #[test]
    fn flags() {
        let copy = one("COPY --from=\"build stage\" --link -- --weird /dst");
        assert_eq!(copy.flags.len(), 2);
        assert_eq!(copy.flags[0].value.as_deref(), Some("build stage"));
        assert_eq!(*copy.args, ["--weird", "/dst"]);
        let e = err("FROM x\nCOPY --nope a b");
        assert!(e.starts_with("Dockerfile:2:6: unknown flag --nope"), "{e}");
        assert!(err("FROM x\nCOPY --from a b").contains("needs a value"));
        assert!(err("FROM x\nCOPY --link=maybe a b").contains("true/false"));
        assert!(err("FROM x\nCOPY --from=a --from=b a b").contains("more than once"));
        assert!(err("FROM x\nENV --x=1 A=b").contains("ENV takes no flags"));
        assert!(err("FROM x\nHEALTHCHECK --interval=5 CMD true").contains("invalid duration"));
    }

    #[test]
    fn env_forms() {
        let env = one("ENV A=1 B=\"two words\" C='$x' D=\\$y");
        let pairs = env.pairs.unwrap();
        let shown: Vec<(&str, Option<&str>)> = pairs
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_deref()))
            .collect();
        assert_eq!(
            shown,
            [
                ("A", Some("1")),
                ("B", Some("two words")),
                ("C", Some("$x")),
                ("D", Some("\\$y"))
            ]
        );
        let env = one("ENV KEY the rest  of it");
        let pair = &env.pairs.unwrap()[0];
        assert_eq!(
            (pair.key.as_str(), pair.value.as_deref()),
            ("KEY", Some("the rest  of it"))
        );
        assert!(err("FROM x\nENV ONLY").contains("has no value"));
        assert!(err("FROM x\nENV A=1 B").contains("cannot find ="));
    }

    #[test]
    fn heredocs() {
        let text =
            "FROM x\nRUN <<EOF\necho $HOME\nEOF\nCOPY <<-\"A\" <<B /dst/\n\tone\n\tA\ntwo\nB\n";
        let file = parse(text, "Dockerfile").unwrap();
        let run = &file.instructions[1];
        assert_eq!(run.heredocs[0].content, "echo $HOME\n");
        assert!(run.heredocs[0].expand);
        assert_eq!((run.span.line, run.span.end_line), (2, 4));
        let copy = &file.instructions[2];
        assert_eq!(copy.heredocs.len(), 2);
        assert_eq!(copy.heredocs[0].name, "A");
        assert!(!copy.heredocs[0].expand && copy.heredocs[0].strip_tabs);
        assert_eq!(copy.heredocs[0].effective_content(), "one\n");
        assert_eq!(copy.heredocs[1].content, "two\n");
        let e = err("FROM x\nRUN cat <<EOF\nnever ends\n");
        assert!(e.starts_with("Dockerfile:2:9: unterminated heredoc"), "{e}");
    }

    #[test]
    fn directives_and_escape() {
        let file = parse(
            "\u{feff}# syntax=docker/dockerfile:1\n# escape=`\r\nFROM x\r\nRUN a `\r\n  b\r\n",
            "Dockerfile",
        )
        .unwrap();
        assert_eq!(file.escape, '`');
        assert_eq!(file.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(*file.instructions[1].args, ["a   b"]);
        // After the first non-directive line, `# escape=` is a comment.
        let file = parse("FROM x\n# escape=`\nRUN a \\\n b", "Dockerfile").unwrap();
        assert_eq!(file.escape, '\\');
        assert_eq!(*file.instructions[1].args, ["a  b"]);
        assert!(err("# escape=x\nFROM x").contains("invalid escape"));
        assert!(err("# syntax=a\n# syntax=b\nFROM x").contains("only one syntax"));
    }

    #[test]
    fn rejected_files() {
        assert!(matches!(parse("", "Dockerfile"), Err(Error::Empty { .. })));
        let e = err("# only\n\n  # indented\n");
        assert!(
            e.starts_with("Dockerfile:3:1: file with no instructions"),
            "{e}"
        );
        assert!(err("RUN true").contains("before the first FROM"));
        let e = err("FROM x\nFROBNICATE y");
        assert!(
            e.starts_with("Dockerfile:2:1: unknown instruction \"FROBNICATE\""),
            "{e}"
        );
        assert!(err("FROM x\nRUNN y").contains("did you mean RUN?"));
        assert!(err("FROM x\nONBUILD FROM y").contains("not allowed as an ONBUILD trigger"));
        assert!(err("FROM x\nONBUILD ONBUILD RUN y").contains("not allowed"));
    }

    #[test]
    fn onbuild_and_healthcheck() {
        let on = one("onbuild run --mount=type=cache,target=/c make");
        let inner = on.onbuild.unwrap();
        assert_eq!(inner.keyword, Keyword::Run);
        assert_eq!(*inner.args, ["make"]);
        assert_eq!(inner.span.column, 9);
        let hc = one("HEALTHCHECK --interval=5s CMD [\"curl\", \"-f\"]");
        assert!(hc.exec);
        assert_eq!(*hc.args, ["CMD", "curl", "-f"]);
        assert_eq!(*one("HEALTHCHECK NONE").args, ["NONE"]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m30s").unwrap(), 90_000_000_000);
        assert_eq!(parse_duration("500ms").unwrap(), 500_000_000);
        assert_eq!(parse_duration("1.5h").unwrap(), 5_400_000_000_000);
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
    }
}

#[cfg(test)]
mod grammar_details {
    use super::*;

    #[test]
    fn words_keep_quotes_and_escapes_together() {
        let words = |t: &str, e: char| -> Vec<String> {
            split_words(t, e)
                .into_iter()
                .map(|(_, w)| w.to_string())
                .collect()
        };
        assert_eq!(
            words(r#"a="b c" d\ e 'f g'h"#, '\\'),
            [r#"a="b c""#, r"d\ e", "'f g'h"]
        );
        assert_eq!(words(r#"x="a\"b c" y"#, '\\'), [r#"x="a\"b c""#, "y"]);
        assert_eq!(words("a` b c\\ d", '`'), ["a` b", "c\\", "d"]);
        assert_eq!(words(r#"q="C:\ x" r"#, '`'), [r#"q="C:\ x""#, "r"]);
        assert_eq!(words("'it\\' s", '\\'), ["'it\\'", "s"]);
    }

    /// Random lines built from the characters that matter to the grammar.
    fn random_lines() -> Vec<String> {
        const PIECES: &[&str] = &[
            " ",
            "\t",
            "\r",
            "\"",
            "'",
            "\\",
            "`",
            "--",
            "-",
            "=",
            "a",
            "b c",
            "é",
            "$x",
            "[",
            "]",
            "--mount=type=cache",
            "RUN",
            "ENV",
            "<<EOF",
            "\u{0B}",
        ];
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        (0..20_000)
            .map(|_| {
                let len = next(12);
                (0..len).map(|_| PIECES[next(PIECES.len())]).collect()
            })
            .collect()
    }

    #[test]
    fn simple_json_matches_the_json_array_rule() {
        const PIECES: &[&str] = &[
            "[", "]", "\"", ",", " ", "\t", "\n", "a", "é", "\\", "\\n", "1", "x y", "\u{1}",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut simple = 0;
        for _ in 0..50_000 {
            let len = next(14);
            let mut text = String::from(["[", " [\"", "[\""][next(3)]);
            for _ in 0..len {
                text.push_str(PIECES[next(PIECES.len())]);
            }
            if let Some(fast) = simple_json_strings(&text) {
                simple += 1;
                let by_grammar = Grammar::parse(Rule::json_array, &text)
                    .ok()
                    .and_then(|mut p| p.next());
                let Some(array) = by_grammar else {
                    panic!("{text:?}: read as {fast:?}, but the grammar rejects it");
                };
                let strings: Vec<String> = array
                    .into_inner()
                    .filter_map(|v| v.into_inner().next())
                    .map(|v| v.into_inner().next().map_or("", |p| p.as_str()).to_string())
                    .collect();
                assert_eq!(fast, strings, "{text:?}");
            }
        }
        assert!(simple > 100, "only {simple} simple arrays generated");
        assert_eq!(
            simple_json_strings(" [ \"a\" , \"b c\" ] "),
            Some(vec!["a".to_string(), "b c".to_string()])
        );
        assert_eq!(simple_json_strings("[]"), Some(vec![]));
        assert_eq!(simple_json_strings("[\"a\",]"), None);
        assert_eq!(simple_json_strings("[\"a\"] x"), None);
    }

    #[test]
    fn heredoc_scan_matches_the_rule() {
        fn by_grammar(word: &str) -> Option<(bool, &str)> {
            let marker = Grammar::parse(Rule::heredoc_marker, word).ok()?.next()?;
            let mut strip_tabs = false;
            let mut name = "";
            for part in marker.into_inner() {
                match part.as_rule() {
                    Rule::strip_tabs => strip_tabs = true,
                    Rule::heredoc_name => name = part.as_str(),
                    _ => {}
                }
            }
            Some((strip_tabs, name))
        }
        const PIECES: &[&str] = &["<", "<<", "-", "1", "E", "'", "\"", "é", " ", "<<-"];
        let mut state: u64 = 0x1234_5678_9ABC_DEF1;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut markers = 0;
        for _ in 0..20_000 {
            let mut word = String::new();
            for _ in 0..next(7) {
                word.push_str(PIECES[next(PIECES.len())]);
            }
            let fast = heredoc_marker(&word);
            markers += usize::from(fast.is_some());
            assert_eq!(fast, by_grammar(&word), "{word:?}");
        }
        assert!(markers > 1000, "only {markers} markers generated");
        for word in ["<<EOF", "2<<-'E O'", "<<-", "<<", "<<a<b", "x<<EOF"] {
            assert_eq!(heredoc_marker(word), by_grammar(word), "{word:?}");
        }
    }

    #[test]
    fn scan_matches_the_words_rule() {
        for line in random_lines() {
            for escape in ['\\', '`'] {
                assert_eq!(
                    scan_words(&line, escape),
                    grammar_words(&line, escape),
                    "{line:?} with escape {escape:?}"
                );
            }
        }
    }

    #[test]
    fn simple_split_matches_the_instruction_rule() {
        for line in random_lines() {
            let Some(fast) = simple_instruction(&line) else {
                continue;
            };
            let grammar = grammar_instruction(&line).unwrap();
            assert_eq!(
                (
                    fast.keyword,
                    fast.keyword_offset,
                    &fast.flags,
                    fast.rest,
                    fast.rest_offset
                ),
                (
                    grammar.keyword,
                    grammar.keyword_offset,
                    &grammar.flags,
                    grammar.rest,
                    grammar.rest_offset
                ),
                "{line:?}"
            );
        }
    }

    #[test]
    fn flags_unquote_like_buildkit() {
        assert_eq!(unquote_flag(r#"--a="b c""#), "--a=b c");
        assert_eq!(unquote_flag(r#"--a='b\'c'"#), "--a=b'c");
        assert_eq!(unquote_flag(r"--a=b\ c"), "--a=b c");
    }

    #[test]
    fn control_characters_in_json_mean_shell_form() {
        assert_eq!(exec_form("[\"a\tb\"]").unwrap(), None);
        assert_eq!(
            exec_form("[\"a\\tb\"]").unwrap(),
            Some(vec!["a\tb".to_string()])
        );
    }
}
