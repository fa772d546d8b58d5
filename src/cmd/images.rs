//! Placeholder until its issue lands; replaced by the owner of this command.

use super::{CmdResult, Global};

#[derive(Debug, clap::Args)]
pub struct ImagesArgs {}

pub fn images(_global: &Global, _args: ImagesArgs) -> CmdResult {
    anyhow::bail!("not implemented yet")
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {}

pub fn inspect(_global: &Global, _args: InspectArgs) -> CmdResult {
    anyhow::bail!("not implemented yet")
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {}

pub fn history(_global: &Global, _args: HistoryArgs) -> CmdResult {
    anyhow::bail!("not implemented yet")
}

#[derive(Debug, clap::Args)]
pub struct TagArgs {}

pub fn tag(_global: &Global, _args: TagArgs) -> CmdResult {
    anyhow::bail!("not implemented yet")
}

#[derive(Debug, clap::Args)]
pub struct RmiArgs {}

pub fn rmi(_global: &Global, _args: RmiArgs) -> CmdResult {
    anyhow::bail!("not implemented yet")
}
