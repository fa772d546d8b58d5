//! The Dockerfile frontend: text in, a typed and validated build graph out.
//!
//! Three layers, as in BuildKit's `parser` / `instructions` / `dockerfile2llb`:
//! the pest grammar (`grammar/dockerfile.pest`) produces a syntax tree of raw
//! instructions with source spans; those are typed and validated into
//! instructions; the instructions of each stage become vertices of a build graph
//! with stable definition digests, which the solver uses as the basis of its
//! cache keys.
#![forbid(unsafe_code)]

mod key;

pub use key::{Key, KeyEncoder};
