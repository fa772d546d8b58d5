//! The raw syntax tree: a Dockerfile as written, instruction by instruction,
//! before any variable is expanded. This is what `kiln parse --format json`
//! prints (it expands nothing: a syntax dump).

use std::sync::Arc;

use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::error::{Position, Span};

/// A parsed Dockerfile.
#[derive(Clone, Debug, PartialEq)]
pub struct Dockerfile {
    /// The escape character (`\` or `` ` ``), from the `# escape=` directive.
    pub escape: char,
    /// The `# syntax=` directive, if any.
    pub syntax: Option<String>,
    /// The `# check=` directive, if any.
    pub check: Option<String>,
    /// The instructions in order (at least one).
    pub instructions: Vec<Instruction>,
}

/// The eighteen Dockerfile instructions. Keywords are case-insensitive in the
/// source and upper-case everywhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Keyword {
    /// `FROM`
    From,
    /// `RUN`
    Run,
    /// `CMD`
    Cmd,
    /// `LABEL`
    Label,
    /// `MAINTAINER`
    Maintainer,
    /// `EXPOSE`
    Expose,
    /// `ENV`
    Env,
    /// `ADD`
    Add,
    /// `COPY`
    Copy,
    /// `ENTRYPOINT`
    Entrypoint,
    /// `VOLUME`
    Volume,
    /// `USER`
    User,
    /// `WORKDIR`
    Workdir,
    /// `ARG`
    Arg,
    /// `ONBUILD`
    Onbuild,
    /// `STOPSIGNAL`
    Stopsignal,
    /// `HEALTHCHECK`
    Healthcheck,
    /// `SHELL`
    Shell,
}

impl Keyword {
    /// Every keyword, in the order of Docker's reference.
    pub const ALL: [Keyword; 18] = [
        Keyword::From,
        Keyword::Run,
        Keyword::Cmd,
        Keyword::Label,
        Keyword::Maintainer,
        Keyword::Expose,
        Keyword::Env,
        Keyword::Add,
        Keyword::Copy,
        Keyword::Entrypoint,
        Keyword::Volume,
        Keyword::User,
        Keyword::Workdir,
        Keyword::Arg,
        Keyword::Onbuild,
        Keyword::Stopsignal,
        Keyword::Healthcheck,
        Keyword::Shell,
    ];

    /// The upper-case keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Keyword::From => "FROM",
            Keyword::Run => "RUN",
            Keyword::Cmd => "CMD",
            Keyword::Label => "LABEL",
            Keyword::Maintainer => "MAINTAINER",
            Keyword::Expose => "EXPOSE",
            Keyword::Env => "ENV",
            Keyword::Add => "ADD",
            Keyword::Copy => "COPY",
            Keyword::Entrypoint => "ENTRYPOINT",
            Keyword::Volume => "VOLUME",
            Keyword::User => "USER",
            Keyword::Workdir => "WORKDIR",
            Keyword::Arg => "ARG",
            Keyword::Onbuild => "ONBUILD",
            Keyword::Stopsignal => "STOPSIGNAL",
            Keyword::Healthcheck => "HEALTHCHECK",
            Keyword::Shell => "SHELL",
        }
    }

    /// The keyword for `word`, ignoring case.
    pub fn from_word(word: &str) -> Option<Keyword> {
        // Compared only with the keywords of the same length and first
        // letter: this runs once per instruction.
        let first = word.as_bytes().first()?.to_ascii_uppercase();
        Keyword::ALL.into_iter().find(|k| {
            let name = k.as_str();
            name.len() == word.len()
                && name.as_bytes().first() == Some(&first)
                && name.eq_ignore_ascii_case(word)
        })
    }

    /// Whether the instruction may carry heredocs (`<<EOF`).
    pub fn takes_heredocs(self) -> bool {
        matches!(self, Keyword::Run | Keyword::Copy | Keyword::Add)
    }
}

impl std::fmt::Display for Keyword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `--name[=value]` flag of an instruction.
#[derive(Clone, Debug, PartialEq)]
pub struct Flag {
    /// The name without the leading `--`.
    pub name: String,
    /// The value after `=` (quotes removed, as BuildKit does), if any.
    pub value: Option<String>,
    /// Where the flag starts.
    pub span: Span,
}

impl Flag {
    /// The flag as `--name=value` or `--name`.
    pub fn text(&self) -> String {
        match &self.value {
            Some(value) => format!("--{}={value}", self.name),
            None => format!("--{}", self.name),
        }
    }
}

/// A `key value` / `key=value` pair of ENV, LABEL or ARG.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    /// The key, quotes removed, variables not expanded.
    pub key: String,
    /// The value, quotes removed, variables not expanded; `None` only for an
    /// ARG without a default.
    pub value: Option<String>,
    /// The key exactly as written (quotes and escapes kept), what the compiler
    /// expands.
    pub raw_key: String,
    /// The value exactly as written, what the compiler expands.
    pub raw_value: Option<String>,
}

/// A here-document attached to RUN, COPY or ADD.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter word, quotes removed (`EOF`).
    pub name: String,
    /// The body, every line with its newline, the delimiter line excluded.
    /// Leading tabs are kept even for `<<-` (see `strip_tabs`).
    pub content: String,
    /// Whether variables in the body are expanded (the delimiter was not quoted).
    pub expand: bool,
    /// `<<-`: leading tabs of every body line are removed when used.
    pub strip_tabs: bool,
}

impl Heredoc {
    /// The body as used: leading tabs removed from each line for `<<-`.
    pub fn effective_content(&self) -> String {
        if !self.strip_tabs {
            return self.content.clone();
        }
        self.content
            .split_inclusive('\n')
            .map(|line| line.trim_start_matches('\t'))
            .collect()
    }
}

/// One instruction as written.
#[derive(Clone, Debug, PartialEq)]
pub struct Instruction {
    /// The instruction.
    pub keyword: Keyword,
    /// The keyword's position; `end_line` is the instruction's last line
    /// (continuations and heredoc bodies included).
    pub span: Span,
    /// Flags in order, a bare `--` excluded.
    pub flags: Box<[Flag]>,
    /// Whether the arguments were a JSON string array (exec form).
    pub exec: bool,
    /// Exec form: the array's strings. Shell form of RUN, CMD, ENTRYPOINT,
    /// SHELL: one string, the command with continuations joined as Docker joins
    /// them. HEALTHCHECK: `["NONE"]` or `["CMD", ...]` followed by the command
    /// as for CMD. Every other instruction: the whitespace-separated words as
    /// written, quotes kept.
    pub args: Box<[String]>,
    /// ENV, LABEL and ARG: the pairs. `None` for every other instruction.
    pub pairs: Option<Box<[Pair]>>,
    /// Here-documents, in the order their delimiters appear.
    pub heredocs: Box<[Heredoc]>,
    /// ONBUILD: the wrapped instruction.
    pub onbuild: Option<Box<Instruction>>,
    /// The instruction on one line (keyword, flags, text), shared with the
    /// build steps made from it; [`Instruction::text`] is its tail.
    line: Arc<str>,
    /// Where the text starts in `line` (`u32::MAX` past 4 GiB, where the
    /// text reads as empty rather than wrong).
    text_offset: u32,
    /// Where `text` starts ([`Instruction::text_span`] makes it a span).
    pub text_start: Position,
}

impl Instruction {
    /// Where `text` starts, as a span in the instruction's file.
    pub fn text_span(&self) -> Span {
        self.span.at(self.text_start)
    }

    /// The instruction's flag called `name`, the last one if repeated.
    pub fn flag(&self, name: &str) -> Option<&Flag> {
        self.flags.iter().rev().find(|f| f.name == name)
    }

    /// The instruction as a single line: keyword, flags, and text (shared,
    /// not copied: every step made from the instruction holds it).
    pub fn original(&self) -> Arc<str> {
        self.line.clone()
    }

    /// The text after the flags, continuations joined, surrounding whitespace
    /// trimmed: what the instruction's arguments were parsed from.
    pub fn text(&self) -> &str {
        self.line
            .get(self.text_offset as usize..)
            .unwrap_or_default()
    }

    /// An instruction without arguments yet: `set_text` completes it.
    pub(crate) fn new(
        keyword: Keyword,
        span: Span,
        flags: Vec<Flag>,
        text_start: Position,
    ) -> Self {
        Instruction {
            keyword,
            span,
            flags: flags.into_boxed_slice(),
            exec: false,
            args: Box::default(),
            pairs: None,
            heredocs: Box::default(),
            onbuild: None,
            line: Arc::from(""),
            text_offset: 0,
            text_start,
        }
    }

    /// Sets the text, making the one-line form from the keyword, the flags
    /// and `text`.
    pub(crate) fn set_text(&mut self, text: &str) {
        let keyword = self.keyword.as_str();
        let flags: usize = self
            .flags
            .iter()
            .map(|f| f.name.len() + f.value.as_ref().map_or(0, |v| v.len() + 1) + 3)
            .sum();
        let mut out = String::with_capacity(keyword.len() + flags + text.len() + 1);
        out.push_str(keyword);
        for flag in &self.flags {
            out.push_str(" --");
            out.push_str(&flag.name);
            if let Some(value) = &flag.value {
                out.push('=');
                out.push_str(value);
            }
        }
        if !text.is_empty() {
            out.push(' ');
        }
        self.text_offset = u32::try_from(out.len()).unwrap_or(u32::MAX);
        out.push_str(text);
        self.line = Arc::from(out);
    }
}

impl Serialize for Dockerfile {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Dockerfile", 4)?;
        s.serialize_field("escape", &self.escape.to_string())?;
        s.serialize_field("syntax", &self.syntax)?;
        s.serialize_field("check", &self.check)?;
        s.serialize_field("instructions", &self.instructions)?;
        s.end()
    }
}

struct Pairs<'a>(&'a [Pair]);

impl Serialize for Pairs<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        // `[key, value, raw value]`: the value unquoted (variables not
        // expanded), then as written, quotes kept, so that `A='$x'` (never
        // expanded) and `A="$x"` (expanded) can be told apart.
        for pair in self.0 {
            seq.serialize_element(&(&pair.key, &pair.value, &pair.raw_value))?;
        }
        seq.end()
    }
}

impl Serialize for Instruction {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Instruction", 9)?;
        s.serialize_field("line", &self.span.line)?;
        s.serialize_field("end_line", &self.span.end_line)?;
        s.serialize_field("keyword", self.keyword.as_str())?;
        let flags: Vec<String> = self.flags.iter().map(Flag::text).collect();
        s.serialize_field("flags", &flags)?;
        s.serialize_field("exec", &self.exec)?;
        s.serialize_field("args", &self.args)?;
        s.serialize_field("pairs", &self.pairs.as_deref().map(Pairs))?;
        s.serialize_field("heredocs", &self.heredocs)?;
        s.serialize_field("onbuild", &self.onbuild)?;
        s.end()
    }
}
