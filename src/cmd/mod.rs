//! One module per subcommand, plus what they share: global options, the store,
//! error reporting and colour.

use std::path::PathBuf;
use std::process::ExitCode;

pub mod archive;
pub mod build;
pub mod images;
pub mod import;
pub mod parse;
pub mod setup_binfmt;
pub mod store;

/// Options every subcommand takes.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// The store directory [default: $KILN_ROOT, else /var/lib/kiln as root,
    /// else $XDG_DATA_HOME/kiln or ~/.local/share/kiln]
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

/// What a subcommand returns: its exit code, or an error to report.
pub type CmdResult = anyhow::Result<ExitCode>;

/// Prints an error and its causes to stderr, the way every subcommand does.
pub fn report_error(err: &anyhow::Error) {
    let mut message = format!("error: {err}");
    for cause in err.chain().skip(1) {
        message.push_str(&format!("\n  caused by: {cause}"));
    }
    eprintln!("{message}");
}

/// Whether stderr may carry colour: not when `NO_COLOR` is set, nor when it is
/// not a terminal.
pub fn stderr_color() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}
