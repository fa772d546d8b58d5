//! The `kiln` command: the only place that prints, reads the environment for
//! user-facing defaults, or uses `anyhow`. Each subcommand lives in `cmd/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

// A build allocates many small, short-lived strings (the frontend's words,
// keys and configs; the solver's paths): mimalloc serves them at a third of
// glibc malloc's instructions (see frontend/benches/parse.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A daemonless OCI image builder with a Dockerfile compiler.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    global: cmd::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Parse a Dockerfile and print its instructions or build graph.
    Parse(cmd::parse::Args),
    /// Build an image from a Dockerfile and a context directory.
    Build(Box<cmd::build::Args>),
    /// Run BuildKit's build checks on a Dockerfile, without a store.
    Lint(cmd::lint::Args),
    /// Make a base image from a rootfs tarball or directory.
    Import(cmd::import::Args),
    /// List the images in the store.
    Images(cmd::images::ImagesArgs),
    /// Print an image's config, digest and size as JSON.
    Inspect(cmd::images::InspectArgs),
    /// Show the history of an image.
    History(cmd::images::HistoryArgs),
    /// Give an image another name.
    Tag(cmd::images::TagArgs),
    /// Remove image names (and the images no name refers to any more).
    Rmi(cmd::images::RmiArgs),
    /// Write images to an OCI or docker archive.
    Save(cmd::archive::SaveArgs),
    /// Read images from an OCI or docker archive.
    Load(cmd::archive::LoadArgs),
    /// Remove what no tag or cache record references.
    Prune(cmd::store::PruneArgs),
    /// Run a command in kiln's user namespace (rootless: as its root, so
    /// store files owned by mapped ids can be read or removed).
    Unshare(cmd::store::UnshareArgs),
    /// Re-hash every blob in the store and report damage.
    Fsck(cmd::store::FsckArgs),
    /// Push an image from the store to a registry.
    Push(cmd::registry::PushArgs),
    /// Pull an image from a registry into the store.
    Pull(cmd::registry::PullArgs),
    /// Save credentials for a registry in Docker's config.json (or the
    /// credential helper it names).
    Login(cmd::registry::LoginArgs),
    /// Forget the credentials for a registry.
    Logout(cmd::registry::LogoutArgs),
    /// Make, change and show multi-platform image indexes, in the store or
    /// in a registry.
    Manifest(cmd::manifest::Args),
    /// Show the attestations (SBOM, provenance) attached to an image.
    Attest(cmd::attest::Args),
    /// Register qemu-user handlers in binfmt_misc for foreign architectures.
    SetupBinfmt(cmd::setup_binfmt::Args),
    /// Run a command in a new container of an image.
    Run(Box<cmd::run::Args>),
    /// List containers.
    Ps(cmd::run::manage::PsArgs),
    /// Print a detached container's output.
    Logs(cmd::run::manage::LogsArgs),
    /// Stop running containers (their stop signal, then a kill).
    Stop(cmd::run::manage::StopArgs),
    /// Remove containers.
    Rm(cmd::run::manage::RmArgs),
    /// Wait for containers to stop and print their exit codes.
    Wait(cmd::run::manage::WaitArgs),
    /// Make an image of a container's changes.
    Commit(cmd::run::commit::Args),
    /// Runs a detached container (started by `kiln run -d`).
    #[command(name = "__supervise", hide = true)]
    Supervise(cmd::run::manage::SuperviseArgs),
    /// Makes an image's snapshots (started by import and pull).
    #[command(name = "__unpack", hide = true)]
    Unpack(cmd::unpack::Args),
    /// Keeps a rootless kiln's user namespace for the next kiln (started by
    /// the kiln that made it).
    #[command(name = "__keep-userns", hide = true)]
    KeepUserns {
        /// Where the keeper writes its pid.
        pid_file: std::path::PathBuf,
        /// A descriptor to write one byte to once the pid file names it.
        ready_fd: Option<i32>,
    },
}

fn main() -> ExitCode {
    kiln_executor::disable_huge_pages();
    let cli = Cli::parse();
    // An ordinary user's kiln becomes root of a user namespace of its own
    // before anything else (it must still have one thread).
    if let Err(err) = cmd::enter_rootless() {
        cmd::report_error(&err);
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Parse(args) => cmd::parse::run(&cli.global, args),
        Command::Build(args) => cmd::build::run(&cli.global, *args),
        Command::Lint(args) => cmd::lint::run(&cli.global, args),
        Command::Import(args) => cmd::import::run(&cli.global, args),
        Command::Images(args) => cmd::images::images(&cli.global, args),
        Command::Inspect(args) => cmd::images::inspect(&cli.global, args),
        Command::History(args) => cmd::images::history(&cli.global, args),
        Command::Tag(args) => cmd::images::tag(&cli.global, args),
        Command::Rmi(args) => cmd::images::rmi(&cli.global, args),
        Command::Save(args) => cmd::archive::save(&cli.global, args),
        Command::Load(args) => cmd::archive::load(&cli.global, args),
        Command::Prune(args) => cmd::store::prune(&cli.global, args),
        Command::Unshare(args) => cmd::store::unshare(args),
        Command::Fsck(args) => cmd::store::fsck(&cli.global, args),
        Command::Push(args) => cmd::registry::push(&cli.global, args),
        Command::Pull(args) => cmd::registry::pull(&cli.global, args),
        Command::Login(args) => cmd::registry::login(&cli.global, args),
        Command::Logout(args) => cmd::registry::logout(&cli.global, args),
        Command::Manifest(args) => cmd::manifest::run(&cli.global, args),
        Command::Attest(args) => cmd::attest::run(&cli.global, args),
        Command::SetupBinfmt(args) => cmd::setup_binfmt::run(&cli.global, args),
        Command::Run(args) => cmd::run::run(&cli.global, *args),
        Command::Ps(args) => cmd::run::manage::ps(&cli.global, args),
        Command::Logs(args) => cmd::run::manage::logs(&cli.global, args),
        Command::Stop(args) => cmd::run::manage::stop(&cli.global, args),
        Command::Rm(args) => cmd::run::manage::rm(&cli.global, args),
        Command::Wait(args) => cmd::run::manage::wait(&cli.global, args),
        Command::Commit(args) => cmd::run::commit::run(&cli.global, args),
        Command::Supervise(args) => cmd::run::manage::supervise(&cli.global, args),
        Command::Unpack(args) => cmd::unpack::run(&cli.global, args),
        Command::KeepUserns { pid_file, ready_fd } => {
            kiln_executor::keep_user_namespace(&pid_file, ready_fd)
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            cmd::report_error(&err);
            ExitCode::FAILURE
        }
    }
}
