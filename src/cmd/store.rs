//! Placeholder until its issue lands; replaced by the owner of this command.

use super::{CmdResult, Global};

#[derive(Debug, clap::Args)]
pub struct PruneArgs {}

pub fn prune(_global: &Global, _args: PruneArgs) -> CmdResult {
    anyhow::bail!("not implemented yet")
}

#[derive(Debug, clap::Args)]
pub struct FsckArgs {}

pub fn fsck(_global: &Global, _args: FsckArgs) -> CmdResult {
    anyhow::bail!("not implemented yet")
}
