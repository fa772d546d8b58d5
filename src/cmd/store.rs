//! `kiln prune` and `kiln fsck`: the store's housekeeping.

use std::process::ExitCode;

use super::images::{emit, human_size};
use super::{CmdResult, Global};

#[derive(Debug, clap::Args)]
pub struct PruneArgs {}

#[derive(Debug, clap::Args)]
pub struct UnshareArgs {
    /// The command and its arguments [default: $SHELL, else /bin/sh].
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<String>,
}

/// `kiln unshare [COMMAND...]`: the command in the user namespace kiln
/// entered as it started (for root, kiln's own namespaces: it just runs).
/// Its exit code is the command's.
pub fn unshare(args: UnshareArgs) -> CmdResult {
    use anyhow::Context;
    let mut words = args.command;
    if words.is_empty() {
        words.push(std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".to_owned()));
    }
    let status = std::process::Command::new(&words[0])
        .args(&words[1..])
        .status()
        .with_context(|| format!("cannot run {:?}", words[0]))?;
    let code = status
        .code()
        .unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0));
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

pub fn prune(global: &Global, _args: PruneArgs) -> CmdResult {
    let store = global.open_store()?;
    let report = match store.try_prune()? {
        Some(report) => report,
        None => {
            eprintln!("waiting for the other kiln processes using the store to finish");
            store.prune()?
        }
    };
    eprintln!(
        "removed {} blobs, {} snapshots and {} temporary files",
        report.blobs_removed, report.snapshots_removed, report.temp_files_removed
    );
    // The bytes freed are the command's data.
    emit(report.bytes_freed)?;
    eprintln!("freed {}", human_size(report.bytes_freed));
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct FsckArgs {
    /// Remove corrupt blobs, so the next import or build writes them again.
    #[arg(long)]
    repair: bool,
}

pub fn fsck(global: &Global, args: FsckArgs) -> CmdResult {
    let store = global.open_store()?;
    let report = store.fsck(args.repair)?;
    for problem in &report.problems {
        emit(format_args!(
            "{}: {}",
            problem.path.display(),
            problem.message
        ))?;
    }
    for digest in &report.removed {
        eprintln!("removed corrupt blob {digest}");
    }
    eprintln!(
        "checked {} blobs ({}); {} problems",
        report.blobs_checked,
        human_size(report.bytes_checked),
        report.problems.len()
    );
    if report.temp_files > 0 {
        eprintln!(
            "{} temporary files of a running kiln or from interrupted writes; the next kiln to find the store unused, or `kiln prune`, removes them",
            report.temp_files
        );
    }
    if report.is_clean() {
        Ok(ExitCode::SUCCESS)
    } else {
        if !args.repair {
            eprintln!("run `kiln fsck --repair`, then re-import or rebuild the damaged images");
        }
        Ok(ExitCode::FAILURE)
    }
}
