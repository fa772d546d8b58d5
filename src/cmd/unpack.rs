//! Snapshots made in the background after `kiln import` and `kiln pull`.
//!
//! Writing an image's files into a snapshot takes longer than storing its
//! layer, and a build needs the snapshot only at its first RUN. So import
//! and pull return once the image is stored and leave the snapshot to a
//! detached kiln (`kiln __unpack ID`, in a process group of its own). It
//! holds the store open like any kiln (prune waits for it) and makes the
//! snapshot under the executor's per-snapshot lock with the usual atomic
//! rename: a build started meanwhile waits for the snapshot instead of
//! making it twice, and a kiln killed halfway leaves no snapshot, only a
//! temporary tree the next kiln removes.

use std::os::unix::process::CommandExt;
use std::process::{ExitCode, Stdio};

use super::{CmdResult, Global};

/// Starts `kiln __unpack IMAGE_ID` for the store of `global`. Derived data:
/// when it cannot start, the snapshot is made when a step first needs it.
pub fn spawn(global: &Global, image_id: &str) {
    let started = global.store_root().and_then(|root| {
        let exe = std::env::current_exe()?;
        std::process::Command::new(exe)
            .arg("--root")
            .arg(root)
            .arg("__unpack")
            .arg(image_id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Not in the caller's process group: Ctrl-C at the terminal
            // after import returns is not for it.
            .process_group(0)
            .spawn()?;
        Ok(())
    });
    if let Err(e) = started {
        eprintln!("warning: the image's snapshot is made on first use: {e:#}");
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image whose snapshots to make.
    image: String,
}

/// `kiln __unpack ID`: makes the snapshots of every layer of the image.
pub fn run(global: &Global, args: Args) -> CmdResult {
    let root = global.store_root()?;
    // The store may have been removed since import returned (a test's
    // temporary store): then there is nothing to do, and nothing to create.
    if !root.join("index.json").is_file() {
        return Ok(ExitCode::SUCCESS);
    }
    let store = global.open_store()?;
    let Some(image) = store.resolve(&args.image)? else {
        return Ok(ExitCode::SUCCESS);
    };
    kiln_solver::image_lowers(&store, &image.layers()?)?;
    Ok(ExitCode::SUCCESS)
}
