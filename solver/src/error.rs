//! The solver's errors. Each one a user can cause says where and what to do.
//!
//! A variant that has a cause keeps it: either its message shows the cause
//! (and `source()` does not return it), or `source()` returns it (and the
//! message does not show it), never both, so printing the chain
//! ([`Error::chain_text`], or the binary's `caused by:` lines) shows every
//! cause once. The store's and the executor's errors are wrapped as they
//! are (`transparent`): they follow their own crates' conventions.

use std::fmt;
use std::path::PathBuf;

use kiln_cache::Platform;
use kiln_frontend::Span;

/// Everything that can go wrong while solving a build.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A line of an ignore file does not parse.
    #[error("{}:{line}: {message}", file.display())]
    Ignore {
        /// The ignore file.
        file: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said (shown in the message, so not a `source()`).
        error: std::io::Error,
    },
    /// A COPY/ADD source or destination is unusable.
    #[error("{0}")]
    Copy(String),
    /// The build was cancelled (another step failed, or the user interrupted).
    #[error("the build was cancelled")]
    Cancelled,
    /// A lock shared by the build's threads was poisoned: a thread panicked
    /// while it held it, so what it guards cannot be trusted.
    #[error("the build's {0} is unusable: a build thread panicked while it held its lock")]
    Poisoned(&'static str),
    /// Something the user asked for that cannot be done as asked.
    #[error("{0}")]
    Invalid(String),
    /// An instruction failed: where it is, its text, and why.
    #[error("{}", Located::header(.platform.as_deref(), .span, .text))]
    Located {
        /// The instruction's place in its Dockerfile.
        span: Span,
        /// The instruction as written.
        text: String,
        /// The platform the instruction was built for, when a build makes
        /// several (boxed: an error stays small).
        platform: Option<Box<Platform>>,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },
    /// The build graph cannot be solved (for example a stage depends on a
    /// stage that cannot be reached).
    #[error(transparent)]
    Graph(#[from] kiln_frontend::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] kiln_cache::Error),
    /// The executor failed (running a step, reading or writing a snapshot).
    /// Its `Cancelled` becomes [`Error::Cancelled`] instead.
    #[error(transparent)]
    Exec(kiln_executor::Error),
    /// A `--chown` user or group the image does not know.
    #[error("--chown={spec}")]
    Chown {
        /// The `--chown` value.
        spec: String,
        /// Why it cannot be resolved.
        #[source]
        source: kiln_executor::Error,
    },
    /// A platform's RUN steps cannot run on this machine.
    #[error("cannot build for {platform}")]
    Emulation {
        /// The platform (boxed: an error stays small).
        platform: Box<Platform>,
        /// Why not (usually: no binfmt_misc handler).
        #[source]
        source: kiln_executor::Error,
    },
    /// An attestation cannot be made.
    #[error("{what}")]
    Attest {
        /// Which attestation, or what part of it.
        what: &'static str,
        /// Why not.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl From<kiln_executor::Error> for Error {
    fn from(err: kiln_executor::Error) -> Self {
        match err {
            kiln_executor::Error::Cancelled => Error::Cancelled,
            other => Error::Exec(other),
        }
    }
}

/// The solver's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// `err`, located at an instruction: its span and text come first in
    /// the message. A cancellation stays a cancellation.
    pub(crate) fn at(step: &kiln_frontend::Step, err: Error) -> Error {
        match err {
            Error::Cancelled => Error::Cancelled,
            other => Error::Located {
                span: step.span.clone(),
                text: step.text.to_string(),
                platform: None,
                source: Box::new(other),
            },
        }
    }

    /// With several platforms, a located error also names its platform.
    pub(crate) fn on_platform(self, wanted: &Platform) -> Error {
        match self {
            Error::Located {
                span,
                text,
                platform: None,
                source,
            } => Error::Located {
                span,
                text,
                platform: Some(Box::new(wanted.clone())),
                source,
            },
            other => other,
        }
    }

    /// Whether the build was cancelled (rather than failed).
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Cancelled)
    }

    /// The message and its causes on one line, `a: b: c`; a cause whose text
    /// a message already shows is not repeated. What progress output shows.
    pub fn chain_text(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(err) = cause {
            let next = err.to_string();
            if !text.contains(&next) {
                text.push_str(": ");
                text.push_str(&next);
            }
            cause = err.source();
        }
        text
    }
}

/// How a [`Error::Located`] introduces itself.
struct Located;

impl Located {
    fn header<'a>(
        platform: Option<&'a Platform>,
        span: &'a Span,
        text: &'a str,
    ) -> impl fmt::Display + 'a {
        struct Header<'a>(Option<&'a Platform>, &'a Span, &'a str);
        impl fmt::Display for Header<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                if let Some(platform) = self.0 {
                    write!(f, "{platform}: ")?;
                }
                write!(f, "{}: {}", self.1, self.2)
            }
        }
        Header(platform, span, text)
    }
}

/// Adds the path to an I/O error.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |error| Error::Io { path, error }
}

/// A poisoned lock as an error: `what` names what the lock guards.
pub(crate) fn poisoned<T>(what: &'static str) -> impl FnOnce(T) -> Error {
    move |_| Error::Poisoned(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> kiln_frontend::Step {
        let file = "FROM scratch\nRUN exit 3\n";
        let dockerfile = kiln_frontend::parse(file, "Dockerfile").unwrap();
        let graph = kiln_frontend::compile(
            &dockerfile,
            &kiln_frontend::CompileOptions::default(),
            &NoImages,
        )
        .unwrap();
        graph.stages[0].steps[0].clone()
    }

    struct NoImages;
    impl kiln_frontend::BaseImageResolver for NoImages {
        fn resolve(
            &self,
            _: &str,
            _: &str,
        ) -> std::result::Result<Option<kiln_frontend::BaseImage>, String> {
            Ok(None)
        }
    }

    #[test]
    fn a_located_error_keeps_its_cause_as_its_source() {
        let cause = kiln_executor::Error::ExitCode {
            code: 3,
            last_lines: Vec::new(),
        };
        let err = Error::at(&step(), cause.into());
        assert_eq!(err.to_string(), "Dockerfile:2:1: RUN exit 3");
        let source = std::error::Error::source(&err).expect("a source");
        assert_eq!(source.to_string(), "the step exited with code 3");
        let Error::Located { source, .. } = &err else {
            panic!("not located: {err:?}");
        };
        assert!(matches!(
            **source,
            Error::Exec(kiln_executor::Error::ExitCode { code: 3, .. })
        ));
        assert_eq!(
            err.chain_text(),
            "Dockerfile:2:1: RUN exit 3: the step exited with code 3"
        );
    }

    #[test]
    fn a_located_error_names_its_platform_when_asked() {
        let err = Error::at(&step(), Error::Invalid("no".into()))
            .on_platform(&"linux/arm64".parse().unwrap());
        assert_eq!(
            err.chain_text(),
            "linux/arm64: Dockerfile:2:1: RUN exit 3: no"
        );
    }

    #[test]
    fn a_cancellation_stays_one() {
        let err = Error::at(&step(), kiln_executor::Error::Cancelled.into());
        assert!(err.is_cancelled());
    }

    #[test]
    fn a_poisoned_lock_is_not_a_cancellation() {
        let lock = std::sync::Mutex::new(0);
        let _ = std::panic::catch_unwind(|| {
            let _guard = lock.lock().unwrap();
            panic!("poison it");
        });
        let err = lock
            .lock()
            .map(|_| ())
            .map_err(poisoned("results"))
            .unwrap_err();
        assert!(!err.is_cancelled());
        assert!(err.to_string().contains("results"), "{err}");
    }

    #[test]
    fn the_chain_does_not_repeat_a_cause_a_message_shows() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let store = kiln_cache::Error::Io {
            path: "/store/blob".into(),
            source: io,
        };
        let text = Error::from(store).chain_text();
        assert_eq!(text.matches("not found").count(), 1, "{text}");
    }
}
