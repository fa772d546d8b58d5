//! Foreign architectures through qemu-user and binfmt_misc.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{io_err, Error, Result};

const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";
/// Where Debian's qemu-user-static (and systemd-binfmt) keep handler definitions.
const BINFMT_CONF_DIRS: &[&str] = &["/usr/lib/binfmt.d", "/etc/binfmt.d", "/usr/share/binfmts"];

/// The OCI architecture of this machine (`amd64`, `arm64`, ...).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "mips64" if cfg!(target_endian = "little") => "mips64le",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// qemu's name for an OCI architecture (`mips64le` -> `mips64el`), accepting
/// Debian names too.
pub fn qemu_name(arch: &str) -> Result<&'static str> {
    Ok(match arch {
        "amd64" | "x86_64" => "x86_64",
        "arm64" | "aarch64" => "aarch64",
        "arm" | "armhf" | "armel" => "arm",
        "386" | "i386" => "i386",
        "mips64le" | "mips64el" => "mips64el",
        "mips64" => "mips64",
        "mipsle" | "mipsel" => "mipsel",
        "mips" => "mips",
        "ppc64le" | "ppc64el" => "ppc64le",
        "ppc64" => "ppc64",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "loong64" | "loongarch64" => "loongarch64",
        _ => return Err(Error::UnknownArch(arch.to_owned())),
    })
}

/// Whether binaries of `arch` run here without emulation.
pub fn is_native(arch: &str) -> bool {
    let Ok(name) = qemu_name(arch) else {
        return false;
    };
    let host = qemu_name(host_arch()).unwrap_or("");
    name == host || (host == "x86_64" && name == "i386") || (host == "aarch64" && name == "arm")
}

/// Checks that binaries of `arch` can run in a sandbox: natively, or through a
/// registered, enabled binfmt_misc handler with the `F` flag (the interpreter is
/// opened at registration, so it works after `pivot_root` into the image).
pub fn check_binfmt(arch: &str) -> Result<()> {
    if is_native(arch) {
        return Ok(());
    }
    let name = qemu_name(arch)?;
    let entry = Path::new(BINFMT_DIR).join(format!("qemu-{name}"));
    let no = |reason: String| Error::NoBinfmt {
        arch: arch.to_owned(),
        reason,
    };
    let text = match fs::read_to_string(&entry) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !Path::new(BINFMT_DIR).join("register").exists() {
                return Err(no(format!("binfmt_misc is not mounted at {BINFMT_DIR}")));
            }
            return Err(no(format!("{} is not registered", entry.display())));
        }
        Err(e) => return Err(no(format!("cannot read {}: {e}", entry.display()))),
    };
    let parsed = parse_entry(&text);
    if !parsed.enabled {
        return Err(no(format!("{} is disabled", entry.display())));
    }
    if !parsed.flags.contains('F') {
        return Err(no(format!(
            "{} lacks the F flag (flags: {:?})",
            entry.display(),
            parsed.flags
        )));
    }
    Ok(())
}

struct BinfmtEntry {
    enabled: bool,
    flags: String,
}

fn parse_entry(text: &str) -> BinfmtEntry {
    let mut enabled = false;
    let mut flags = String::new();
    for line in text.lines() {
        if line.trim() == "enabled" {
            enabled = true;
        } else if let Some(rest) = line.strip_prefix("flags:") {
            flags = rest.trim().to_owned();
        }
    }
    BinfmtEntry { enabled, flags }
}

/// What [`setup_binfmt`] did for one architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinfmtSetup {
    /// Nothing to do: the host runs it natively.
    Native {
        /// The OCI architecture.
        arch: String,
    },
    /// A suitable handler was already registered.
    AlreadyRegistered {
        /// The OCI architecture.
        arch: String,
    },
    /// A handler was registered from `config`.
    Registered {
        /// The OCI architecture.
        arch: String,
        /// The binfmt.d file the handler line came from.
        config: PathBuf,
    },
}

/// Registers qemu-user handlers with the `F` flag for `archs` (OCI or Debian
/// names), mounting binfmt_misc first if needed. Handler lines come from the
/// installed qemu-user-static's `/usr/lib/binfmt.d/qemu-ARCH.conf`; an existing
/// handler without `F` is replaced. Needs root.
pub fn setup_binfmt(archs: &[String]) -> Result<Vec<BinfmtSetup>> {
    ensure_binfmt_mounted()?;
    let mut done = Vec::new();
    for arch in archs {
        if is_native(arch) {
            done.push(BinfmtSetup::Native { arch: arch.clone() });
            continue;
        }
        if check_binfmt(arch).is_ok() {
            done.push(BinfmtSetup::AlreadyRegistered { arch: arch.clone() });
            continue;
        }
        let name = qemu_name(arch)?;
        let (config, line) = find_config(name).ok_or_else(|| Error::NoBinfmt {
            arch: arch.clone(),
            reason: format!(
                "no qemu-{name}.conf in {}: qemu-user-static is not installed",
                BINFMT_CONF_DIRS.join(", ")
            ),
        })?;
        let line = with_f_flag(&line).ok_or_else(|| Error::NoBinfmt {
            arch: arch.clone(),
            reason: format!(
                "{} does not hold a binfmt_misc registration line",
                config.display()
            ),
        })?;
        let entry = Path::new(BINFMT_DIR).join(format!("qemu-{name}"));
        if entry.exists() {
            write_to(&entry, "-1")?;
        }
        write_to(&Path::new(BINFMT_DIR).join("register"), &line)?;
        check_binfmt(arch)?;
        done.push(BinfmtSetup::Registered {
            arch: arch.clone(),
            config,
        });
    }
    Ok(done)
}

fn ensure_binfmt_mounted() -> Result<()> {
    if Path::new(BINFMT_DIR).join("register").exists() {
        return Ok(());
    }
    nix::mount::mount(
        Some("binfmt_misc"),
        BINFMT_DIR,
        Some("binfmt_misc"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| Error::Io {
        action: "mount binfmt_misc on",
        path: PathBuf::from(BINFMT_DIR),
        source: e.into(),
    })
}

fn write_to(path: &Path, text: &str) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("open", path))?;
    file.write_all(text.as_bytes())
        .map_err(io_err("write", path))
}

fn find_config(name: &str) -> Option<(PathBuf, String)> {
    for dir in BINFMT_CONF_DIRS {
        let path = Path::new(dir).join(format!("qemu-{name}.conf"));
        if let Ok(text) = fs::read_to_string(&path) {
            if let Some(line) = text.lines().find(|l| l.starts_with(':')) {
                return Some((path, line.trim().to_owned()));
            }
        }
    }
    None
}

/// Adds `F` to the flags field (the last of the seven `:`-separated fields).
fn with_f_flag(line: &str) -> Option<String> {
    let fields: Vec<&str> = line.split(':').collect();
    // ":name:type:offset:magic:mask:interpreter:flags" splits into 8 parts.
    if fields.len() != 8 || !fields[0].is_empty() {
        return None;
    }
    let flags = fields[7];
    if flags.contains('F') {
        return Some(line.to_owned());
    }
    let mut out = fields[..7].join(":");
    out.push(':');
    out.push_str(flags);
    out.push('F');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names() {
        assert_eq!(qemu_name("mips64le").unwrap(), "mips64el");
        assert_eq!(qemu_name("mips64el").unwrap(), "mips64el");
        assert!(qemu_name("vax").is_err());
        assert!(is_native(host_arch()));
    }

    #[test]
    fn adds_the_f_flag() {
        assert_eq!(
            with_f_flag(":qemu-x:M::ab:ff:/usr/bin/q:OC").unwrap(),
            ":qemu-x:M::ab:ff:/usr/bin/q:OCF"
        );
        assert_eq!(
            with_f_flag(":qemu-x:M::ab:ff:/usr/bin/q:POCF").unwrap(),
            ":qemu-x:M::ab:ff:/usr/bin/q:POCF"
        );
        assert!(with_f_flag("garbage").is_none());
    }

    #[test]
    fn missing_handler_error_says_what_to_do() {
        let message = Error::NoBinfmt {
            arch: "s390x".into(),
            reason: "not registered".into(),
        }
        .to_string();
        assert!(
            message.contains("apt-get install qemu-user-static"),
            "{message}"
        );
        assert!(message.contains("kiln setup-binfmt s390x"), "{message}");
        assert!(matches!(check_binfmt("vax"), Err(Error::UnknownArch(_))));
        assert!(check_binfmt(host_arch()).is_ok());
    }

    #[test]
    fn parses_proc_entries() {
        let entry = parse_entry("enabled\ninterpreter /q\nflags: POF\noffset 0\n");
        assert!(entry.enabled);
        assert_eq!(entry.flags, "POF");
    }
}
