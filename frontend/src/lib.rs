//! The Dockerfile frontend: text in, a typed and validated build graph out.
//!
//! Three layers, as in BuildKit's `parser` / `instructions` / `dockerfile2llb`:
//! the pest grammar (`grammar/dockerfile.pest`) and the line reader produce a
//! syntax tree of raw instructions with source spans ([`parse`] ->
//! [`Dockerfile`]); [`compile`] validates them, expands variables with Docker's
//! rules and turns the stages the target needs into a [`BuildGraph`] whose
//! steps carry stable definition digests ([`Key`], built with [`KeyEncoder`]),
//! which the solver uses as the basis of its cache keys. [`lint`] runs
//! BuildKit's build checks (with the `# check=` directive) over the syntax
//! tree and, when there is one, the build graph. [`apply_changes`]
//! applies `kiln import --change` instructions to an [`ImageConfig`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod ast;
mod compile;
mod config;
mod error;
mod graph;
mod key;
mod lint;
mod mount;
mod parse;
mod path;
mod render;
mod shell;

pub use ast::{Dockerfile, Flag, Heredoc, Instruction, Keyword, Pair};
pub use compile::{apply_changes, compile};
pub use config::{Empty, Healthcheck, ImageConfig};
pub use error::{Error, Position, Result, Span, Warning};
pub use graph::{
    context_name, Base, BaseImage, BaseImageResolver, BuildGraph, CacheSharing, CompileOptions,
    CopyFrom, CopyStep, NamedContext, Network, NoImages, RunFile, RunMount, RunStep, Security,
    Stage, Step, StepKind, UnknownNetwork, WorkdirStep, PLACEHOLDER_DIGEST,
};
pub use key::{Key, KeyEncoder};
pub use lint::{lint, CheckDirective, Finding, LintInput, LintReport, Rule};
pub use parse::{dockerfile_text, parse};
