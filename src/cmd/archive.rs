//! Placeholder until its issue lands; replaced by the owner of this command.

use super::{CmdResult, Global};

#[derive(Debug, clap::Args)]
pub struct SaveArgs {}

pub fn save(_global: &Global, _args: SaveArgs) -> CmdResult {
    anyhow::bail!("not implemented yet")
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {}

pub fn load(_global: &Global, _args: LoadArgs) -> CmdResult {
    anyhow::bail!("not implemented yet")
}
