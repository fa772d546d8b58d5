//! `kiln build --debug-shell`: where a RUN step fails, an interactive shell
//! (the stage's SHELL) in the step's filesystem (its layers and the changes
//! it made), environment, working dir, user, network and mounts, on kiln's
//! terminal; the build ends with the step's error when the shell exits.

use std::io::IsTerminal;

use kiln_executor::CancelToken;
use kiln_solver::{DebugShell, FailedStep};

/// Why `--debug-shell` cannot be used here, if it cannot.
pub fn check_terminal() -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        anyhow::bail!(
            "--debug-shell opens an interactive shell where a RUN step fails, which needs a terminal, and stdin or stderr is not one: run kiln build from a terminal, or drop --debug-shell"
        );
    }
    Ok(())
}

/// The shell on kiln's terminal.
#[derive(Debug)]
pub struct TerminalShell;

impl DebugShell for TerminalShell {
    fn open(&self, step: &FailedStep<'_>) {
        let shell = step
            .shell
            .first()
            .cloned()
            .unwrap_or_else(|| "/bin/sh".into());
        eprintln!();
        eprintln!("{}: {}", step.location, step.error);
        eprintln!(
            "the step ran: {}",
            crate::cmd::run::shell_words(&step.spec.argv)
        );
        eprintln!("opening {shell} in the step's filesystem; exit the shell to end the build");
        if let Err(e) = open_shell(step, shell) {
            eprintln!("error: cannot open the debug shell: {e:#}");
        }
    }
}

fn open_shell(step: &FailedStep<'_>, shell: String) -> anyhow::Result<()> {
    let (stdio, relay) = crate::cmd::run::io::terminal(true)?;
    let mut spec = step.spec.clone();
    spec.lowers.push(step.upper.clone());
    spec.argv = vec![shell];
    spec.stdin = None;
    spec.stdio = Some(stdio);
    let result = kiln_executor::run(&spec, &step.scratch, &CancelToken::new(), &mut |_| {});
    drop(spec);
    relay.finish();
    match result {
        Ok(_)
        | Err(kiln_executor::Error::ExitCode { .. })
        | Err(kiln_executor::Error::Signaled { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
