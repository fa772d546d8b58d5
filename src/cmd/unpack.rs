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
//! temporary tree the next kiln removes. While it runs it holds
//! `kiln/unpack/<image>.lock`, so `kiln rmi` right after an import can tell
//! a short unpack (worth waiting for) from a long-lived user of the store
//! such as a detached container.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use super::{CmdResult, Global};

/// Starts `kiln __unpack IMAGE_ID` for the store of `global`. Derived data:
/// when it cannot start, the snapshot is made when a step first needs it.
pub fn spawn(global: &Global, image_id: &str) {
    let started = global.store_root().and_then(|root| {
        let exe = std::env::current_exe()?;
        let mut child = std::process::Command::new(exe)
            .arg("--root")
            .arg(root)
            .arg("__unpack")
            .arg(image_id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Not in the caller's process group: Ctrl-C at the terminal
            // after import returns is not for it.
            .process_group(0)
            .spawn()?;
        // It says when it holds its lock (or closes its stdout by ending):
        // a `kiln rmi` started after import returns then sees it running.
        if let Some(mut out) = child.stdout.take() {
            let mut byte = [0u8; 1];
            let _ = std::io::Read::read(&mut out, &mut byte);
        }
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
    // Locked before the store is opened: from then on, `running` sees it.
    let dir = root.join("kiln/unpack");
    fs::create_dir_all(&dir)?;
    let name: String = args
        .image
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let lock_path = dir.join(format!("{name}.lock"));
    let lock = File::create(&lock_path)?;
    lock.lock()?;
    // Tells the importing kiln, which then returns; nothing else is written.
    let mut out = std::io::stdout();
    let _ =
        std::io::Write::write_all(&mut out, b"\n").and_then(|()| std::io::Write::flush(&mut out));
    let made = unpack(global, &args.image);
    let _ = fs::remove_file(&lock_path);
    made?;
    Ok(ExitCode::SUCCESS)
}

fn unpack(global: &Global, image: &str) -> anyhow::Result<()> {
    let store = global.open_store()?;
    if let Some(image) = store.resolve(image)? {
        kiln_solver::image_lowers(&store, &image.layers()?)?;
    }
    Ok(())
}

/// Whether a background unpack is running on the store at `root`.
pub fn running(root: &Path) -> bool {
    let Ok(entries) = fs::read_dir(root.join("kiln/unpack")) else {
        return false;
    };
    entries.flatten().any(|entry| {
        File::open(entry.path())
            .is_ok_and(|file| matches!(file.try_lock_shared(), Err(fs::TryLockError::WouldBlock)))
    })
}

/// Prunes the store once no other kiln uses it, waiting for background
/// unpacks (seconds) but not for other users (a detached container may run
/// for days): `None` when one of those still has the store open.
pub fn prune_after_unpacks(
    global: &Global,
    store: &kiln_cache::Store,
) -> anyhow::Result<Option<kiln_cache::PruneReport>> {
    let root = global.store_root()?;
    loop {
        if let Some(report) = store.try_prune()? {
            return Ok(Some(report));
        }
        if !running(&root) {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
