//! The solver: runs a build graph from the frontend.
//!
//! It looks every vertex up in the cache, runs what is missing through the
//! executor (independent vertices in parallel), turns COPY/ADD and metadata
//! instructions into layers and image config, and writes the finished image to
//! the store.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod attest;
mod copy;
mod dockerignore;
#[cfg(test)]
mod dockerignore_golden;
mod error;
mod fetch;
mod pattern;
mod progress;
mod remote_context;
mod scheduler;
mod solve;
mod source;
mod ssh;
mod tar_export;
mod views;
mod workdir;

pub use attest::{
    AttestOptions, ContextOrigin, Invocation, ProvenanceMode, SbomOptions,
    PREDICATE_TYPE_ANNOTATION, PROVENANCE_ARTIFACT_TYPE, SBOM_ARTIFACT_TYPE,
};
pub use dockerignore::IgnoreRules;
pub use error::{Error, Result};
pub use progress::{Event, Progress};
pub use remote_context::{
    fetch_url_context, looks_like_archive, unpack_context_tar, Checkout, ContextSource, Fetched,
    GitSource,
};
pub use solve::{
    export_filesystem, export_image_path, image_lowers, solve, solve_platforms, Built, BuiltRecord,
    DebugShell, FailedStep, ManifestAnnotation, SolveOptions, StoreResolver,
};
pub use source::BuildContext;
pub use tar_export::export_filesystem_tar;
