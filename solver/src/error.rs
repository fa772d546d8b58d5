//! The solver's errors. Each one a user can cause says where and what to do.

use std::path::PathBuf;

/// Everything that can go wrong while solving a build.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A line of an ignore file does not parse.
    #[error("{}:{line}: {message}", file.display())]
    Ignore {
        file: PathBuf,
        line: usize,
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A COPY/ADD source or destination is unusable.
    #[error("{0}")]
    Copy(String),
    /// The build was cancelled (another step failed, or the user interrupted).
    #[error("the build was cancelled")]
    Cancelled,
    /// A step failed; the message names the instruction and its location.
    #[error("{0}")]
    Step(String),
    /// Anything the user asked for that cannot be done as asked.
    #[error("{0}")]
    Invalid(String),
}

/// The solver's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Adds the path to an I/O error.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
