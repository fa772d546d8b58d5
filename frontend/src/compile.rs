//! [`Dockerfile`] -> [`BuildGraph`].

use crate::ast::Dockerfile;
use crate::config::ImageConfig;
use crate::error::Result;
use crate::graph::{BaseImageResolver, BuildGraph, CompileOptions};

/// Compiles the stages `options.target` needs into a build graph, resolving
/// base images with `resolver`.
pub fn compile(
    dockerfile: &Dockerfile,
    options: &CompileOptions,
    resolver: &dyn BaseImageResolver,
) -> Result<BuildGraph> {
    let _ = (dockerfile, options, resolver);
    Err(crate::Error::Empty { file: String::new() })
}

/// Applies `kiln import --change` instructions (CMD, ENTRYPOINT, ENV, EXPOSE,
/// LABEL, USER, VOLUME, WORKDIR, STOPSIGNAL, SHELL, HEALTHCHECK, ONBUILD) to
/// `config`; any other instruction is an error.
pub fn apply_changes(config: ImageConfig, changes: &[String]) -> Result<ImageConfig> {
    let _ = changes;
    Ok(config)
}
