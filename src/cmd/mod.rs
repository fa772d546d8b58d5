//! One module per subcommand, plus what they share: global options, the store,
//! reading a Dockerfile, error reporting and colour.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub mod archive;
pub mod attest;
pub mod build;
pub mod images;
pub mod import;
pub mod lint;
pub mod manifest;
pub mod parse;
pub mod registry;
pub mod run;
pub mod setup_binfmt;
pub mod store;
pub mod unpack;

/// Options every subcommand takes.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// The store directory [default: $KILN_ROOT, else /var/lib/kiln as root,
    /// else $XDG_DATA_HOME/kiln or ~/.local/share/kiln]
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

impl Global {
    /// The store directory: `--root`, else `$KILN_ROOT`, else `/var/lib/kiln`
    /// as root, else `$XDG_DATA_HOME/kiln` or `~/.local/share/kiln`.
    pub fn store_root(&self) -> anyhow::Result<PathBuf> {
        if let Some(root) = &self.root {
            return Ok(root.clone());
        }
        let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(root) = non_empty("KILN_ROOT") {
            return Ok(PathBuf::from(root));
        }
        if running_as_root() {
            return Ok(PathBuf::from("/var/lib/kiln"));
        }
        if let Some(data) = non_empty("XDG_DATA_HOME") {
            return Ok(PathBuf::from(data).join("kiln"));
        }
        match non_empty("HOME") {
            Some(home) => Ok(PathBuf::from(home).join(".local/share/kiln")),
            None => anyhow::bail!("cannot tell where the store is: set --root, KILN_ROOT or HOME"),
        }
    }

    /// Opens (creating on first use) the store.
    pub fn open_store(&self) -> anyhow::Result<kiln_cache::Store> {
        let root = self.store_root()?;
        kiln_cache::Store::open(&root).map_err(|e| {
            anyhow::Error::new(e).context(format!("cannot open the store at {}", root.display()))
        })
    }
}

/// Whether kiln runs as root (effective uid 0), read from /proc so the binary
/// needs no unsafe code.
fn running_as_root() -> bool {
    // Root of kiln's own user namespace is the user who started it.
    if kiln_executor::is_rootless() {
        return false;
    }
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Makes an ordinary user's kiln root of a user namespace that maps root to
/// the user and 1..65535 to the user's subordinate ids (see
/// `kiln_executor::enter_user_namespace`); nothing for root.
pub fn enter_rootless() -> anyhow::Result<()> {
    use anyhow::Context;
    let setup = kiln_executor::enter_user_namespace()
        .context("kiln runs rootless in a user namespace of its own")?;
    if let Some(kiln_executor::Rootless::RootOnly { why }) = setup {
        eprintln!(
            "note: rootless kiln maps only root ({why}): files and steps of other ids fail; `sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $USER` gives the user a range"
        );
    }
    Ok(())
}

/// Says (once per process) that the default network is the host's: kiln
/// is rootless and the user cannot open /dev/net/tun, which slirp4netns needs.
pub fn note_rootless_network() {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        eprintln!(
            "note: rootless kiln cannot open /dev/net/tun, so the default network is the host's (as --network host); make /dev/net/tun mode 0666 (as Debian's udev does) for a private network, or use --network none"
        );
    });
}

/// The parser of a `--network MODE` flag: the names of
/// [`kiln_frontend::Network`], listed in `--help` and in clap's error for
/// any other value.
pub fn network_parser() -> impl clap::builder::TypedValueParser<Value = kiln_frontend::Network> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(kiln_frontend::Network::ALL.map(|n| n.as_str()))
        .try_map(|name| name.parse::<kiln_frontend::Network>())
}

/// What a subcommand returns: its exit code, or an error to report.
pub type CmdResult = anyhow::Result<ExitCode>;

/// Prints an error and its causes to stderr, the way every subcommand does.
pub fn report_error(err: &anyhow::Error) {
    eprintln!("{}", error_report(err));
}

/// `error: MESSAGE` and a `caused by: CAUSE` line per cause. A cause whose
/// text the line before already shows (an error that prints its source and
/// also returns it from `source()`, as the store's and executor's I/O
/// errors do) is not printed twice.
fn error_report(err: &anyhow::Error) -> String {
    let mut message = format!("error: {err}");
    let mut shown = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !shown.contains(&text) {
            message.push_str(&format!("\n  caused by: {text}"));
        }
        shown = text;
    }
    message
}

/// Whether stderr may carry colour: not when `NO_COLOR` is set, nor when it is
/// not a terminal.
pub fn stderr_color() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// A Dockerfile's text, from standard input (`None`) or a file, read as bytes
/// as Docker reads it (see `kiln_frontend::dockerfile_text`).
pub(crate) fn read_dockerfile(path: Option<&Path>) -> anyhow::Result<String> {
    use anyhow::Context;
    use std::io::Read;
    let bytes = match path {
        None => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read the Dockerfile from standard input")?;
            bytes
        }
        Some(path) => std::fs::read(path).with_context(|| {
            format!(
                "cannot read {}; name the Dockerfile with -f FILE",
                path.display()
            )
        })?,
    };
    Ok(kiln_frontend::dockerfile_text(bytes))
}

#[cfg(test)]
mod tests {
    use super::error_report;

    #[test]
    fn an_error_report_shows_every_cause_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        // The store's I/O error shows its cause and returns it from source().
        let store = kiln_cache::Error::Io {
            path: "/store/blob".into(),
            source: io,
        };
        let err = anyhow::Error::new(store).context("cannot read the image");
        let report = error_report(&err);
        assert_eq!(
            report,
            "error: cannot read the image\n  caused by: /store/blob: entity not found"
        );
    }

    #[test]
    fn a_located_build_error_reports_its_instruction_then_its_cause() {
        let file = "FROM scratch\nCOPY --chmod=9 a /\n";
        let dockerfile = kiln_frontend::parse(file, "Dockerfile").unwrap();
        let step = &dockerfile.instructions[1];
        let err = kiln_solver::Error::Located {
            span: step.span.clone(),
            text: "COPY --chmod=9 a /".into(),
            platform: None,
            source: Box::new(kiln_solver::Error::Copy("--chmod=9: bad".into())),
        };
        assert_eq!(
            error_report(&anyhow::Error::new(err)),
            "error: Dockerfile:2:1: COPY --chmod=9 a /\n  caused by: --chmod=9: bad"
        );
    }
}
