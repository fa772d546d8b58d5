//! Errors with source positions, and their rendering with the offending line.

use std::fmt;
use std::sync::Arc;

/// Where an instruction (or a part of one) sits in its Dockerfile.
///
/// Lines and columns count from 1. `line`/`column` point at the start of what
/// the span covers (an instruction's keyword, a flag, a word); `end_line` is the
/// last physical line of the instruction, heredoc bodies included.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    /// The Dockerfile's name as given to [`crate::parse`].
    pub file: Arc<str>,
    /// First line, from 1.
    pub line: u32,
    /// Column on `line`, from 1, counted in characters.
    pub column: u32,
    /// Last line of the instruction.
    pub end_line: u32,
}

/// A line and column, from 1: where a part of an instruction starts, kept
/// without the file name so an instruction carries one [`Span`] only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// Line, from 1.
    pub line: u32,
    /// Column on `line`, from 1, counted in characters.
    pub column: u32,
}

impl Span {
    /// The same file and last line, starting at `position`.
    pub fn at(&self, position: Position) -> Span {
        Span {
            file: self.file.clone(),
            line: position.line,
            column: position.column,
            end_line: self.end_line.max(position.line),
        }
    }

    /// Where this span starts.
    pub fn position(&self) -> Position {
        Position {
            line: self.line,
            column: self.column,
        }
    }
}

/// A line or column count as a [`Span`] keeps it: files past 4 billion lines
/// (or a line past 4 billion characters) saturate rather than wrap.
pub(crate) fn span_number(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Everything the frontend can reject. Messages are lowercase and, where the
/// input has a position, start with `file:line:column`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text is not a well-formed Dockerfile (unknown instruction, bad flag,
    /// unterminated heredoc, malformed arguments, ...).
    #[error("{span}: {message}")]
    Syntax {
        /// Where the problem is.
        span: Span,
        /// What is wrong and what was expected.
        message: String,
    },
    /// The Dockerfile is well-formed but cannot be compiled (undefined stage,
    /// cycle between stages, unknown base image, bad mount, ...).
    #[error("{span}: {message}")]
    Compile {
        /// Where the problem is.
        span: Span,
        /// What is wrong and what to do about it.
        message: String,
    },
    /// The Dockerfile has no instructions at all: it is empty, or holds only
    /// comments and blank lines (BuildKit: "file with no instructions").
    #[error("{span}: file with no instructions; a dockerfile needs at least a FROM line")]
    Empty {
        /// The file's last line (line 1 of an empty file).
        span: Span,
    },
    /// A `--target` that names no stage.
    #[error("target stage {name:?} is not defined; the stages are: {available}")]
    UnknownTarget {
        /// The name asked for.
        name: String,
        /// The stage names (or indices) that exist, comma-separated.
        available: String,
    },
    /// A `kiln import --change` that is not an allowed instruction.
    #[error("invalid change {change:?}: {message}")]
    Change {
        /// The change as given.
        change: String,
        /// What is wrong.
        message: String,
    },
}

/// Something a Dockerfile does that is accepted but probably not meant (as
/// BuildKit's build checks report them); the build goes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// Where it is.
    pub span: Span,
    /// What is wrong and what to write instead, lowercase.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.span, self.message)
    }
}

/// `Result` with the frontend's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The position the error refers to, when it has one.
    pub fn span(&self) -> Option<&Span> {
        match self {
            Error::Syntax { span, .. } | Error::Compile { span, .. } | Error::Empty { span } => {
                Some(span)
            }
            _ => None,
        }
    }

    pub(crate) fn syntax(span: Span, message: impl Into<String>) -> Self {
        Error::Syntax {
            span,
            message: message.into(),
        }
    }

    pub(crate) fn compile(span: Span, message: impl Into<String>) -> Self {
        Error::Compile {
            span,
            message: message.into(),
        }
    }

    /// The error as a user should see it: the message, then the offending line
    /// of `source` (the Dockerfile text the error came from) with a caret under
    /// the column. Without a span, just the message.
    pub fn render(&self, source: &str) -> String {
        let mut out = self.to_string();
        if let Some(lines) = self.span().and_then(|span| excerpt(span, source)) {
            out.push_str(&lines);
        }
        out
    }
}

/// The line of `source` that `span` points at, with a caret under the
/// column, each line after a newline; `None` when the line is not in
/// `source`.
pub(crate) fn excerpt(span: &Span, source: &str) -> Option<String> {
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    let text = source.lines().nth((span.line as usize).saturating_sub(1))?;
    Some(excerpt_of_line(span, text))
}

/// `excerpt` for the line `text` (already picked out of the source).
pub(crate) fn excerpt_of_line(span: &Span, text: &str) -> String {
    let text = text.strip_suffix('\r').unwrap_or(text);
    let number = span.line.to_string();
    let gutter = " ".repeat(number.len());
    // Tabs keep their width above the caret so it lines up in a terminal.
    let pad: String = text
        .chars()
        .take((span.column as usize).saturating_sub(1))
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    format!("\n{gutter} |\n{number} | {text}\n{gutter} | {pad}^")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_points_at_the_column() {
        let err = Error::syntax(
            Span {
                file: "Dockerfile".into(),
                line: 2,
                column: 5,
                end_line: 2,
            },
            "unknown flag \"--nope\"",
        );
        let rendered = err.render("FROM x\nRUN --nope true\n");
        assert_eq!(
            rendered,
            "Dockerfile:2:5: unknown flag \"--nope\"\n  |\n2 | RUN --nope true\n  |     ^"
        );
    }

    #[test]
    fn render_without_span_is_the_message() {
        let err = Error::UnknownTarget {
            name: "x".into(),
            available: "a".into(),
        };
        assert_eq!(err.render("FROM a"), err.to_string());
    }
}
