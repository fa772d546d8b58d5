//! `kiln setup-binfmt [ARCH...]`: registers qemu-user handlers (with the F flag)
//! in binfmt_misc so RUN steps of foreign images work.

use std::process::ExitCode;

use anyhow::Context;
use kiln_executor::{host_arch, qemu_name, setup_binfmt, BinfmtSetup};

use super::{CmdResult, Global};

/// Architectures registered when none are named: the ones Debian ships images for.
const DEFAULT_ARCHS: &[&str] = &[
    "arm64", "arm", "386", "ppc64le", "s390x", "riscv64", "mips64le", "loong64",
];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Architectures to register (OCI or Debian names: arm64, armhf, mips64le,
    /// mips64el, ppc64le, riscv64, s390x, ...) [default: every foreign one whose
    /// qemu-user-static handler is installed]
    #[arg(value_name = "ARCH")]
    pub archs: Vec<String>,
}

pub fn run(_global: &Global, args: Args) -> CmdResult {
    let explicit = !args.archs.is_empty();
    let archs: Vec<String> = if explicit {
        args.archs
    } else {
        DEFAULT_ARCHS
            .iter()
            .filter(|arch| !kiln_executor::is_native(arch))
            .filter(|arch| {
                qemu_name(arch).is_ok_and(|name| {
                    std::path::Path::new(&format!("/usr/lib/binfmt.d/qemu-{name}.conf")).exists()
                })
            })
            .map(|arch| arch.to_string())
            .collect()
    };
    if archs.is_empty() {
        anyhow::bail!(
            "no qemu-user-static handlers are installed for architectures other than {}: run `apt-get install qemu-user-static`, then `kiln setup-binfmt`",
            host_arch()
        );
    }
    for arch in &archs {
        qemu_name(arch)?;
    }
    let done =
        setup_binfmt(&archs).context("registering binfmt_misc handlers (this needs root)")?;
    let mut report = Vec::new();
    for item in &done {
        let (arch, status, config) = match item {
            BinfmtSetup::Native { arch } => (arch, "native", None),
            BinfmtSetup::AlreadyRegistered { arch } => (arch, "already-registered", None),
            BinfmtSetup::Registered { arch, config } => {
                (arch, "registered", Some(config.display().to_string()))
            }
        };
        eprintln!(
            "{arch}: {}",
            match (&config, status) {
                (Some(config), _) => format!("registered from {config}"),
                (None, "native") => "runs natively, nothing to do".to_owned(),
                _ => "handler already registered with the F flag".to_owned(),
            }
        );
        report.push(serde_json::json!({ "arch": arch, "status": status, "config": config }));
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}
