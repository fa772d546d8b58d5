//! Placeholder until its issue lands; replaced by the owner of this command.

use super::{CmdResult, Global};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_global: &Global, _args: Args) -> CmdResult {
    anyhow::bail!("not implemented yet")
}
