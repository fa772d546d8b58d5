//! The packages an image's own package databases list: dpkg's status file
//! (and `status.d/`, as distroless images keep it) and apk's installed
//! database. rpm's database (a sqlite file of binary rpm headers) is not
//! read.

use kiln_executor::RootfsView;

use crate::error::{Error, Result};

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// `deb` or `apk`: the purl type.
    pub kind: &'static str,
    /// The purl namespace: the distribution's `ID` (debian, ubuntu, alpine).
    pub distro: String,
}

impl Package {
    /// The package URL: `pkg:deb/debian/NAME@VERSION?arch=ARCH`.
    pub fn purl(&self) -> String {
        format!(
            "pkg:{}/{}/{}@{}?arch={}",
            self.kind,
            purl_encode(&self.distro),
            purl_encode(&self.name),
            purl_encode(&self.version),
            purl_encode(&self.arch)
        )
    }
}

/// Percent-encodes what the purl spec does not allow bare in a segment
/// (an epoch's `:`, `+`, `~`'s neighbours...), keeping `A-Za-z0-9.-_~`.
fn purl_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b".-_~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Every package the image's databases list, sorted, without duplicates.
pub(crate) fn installed(view: &RootfsView) -> Result<Vec<Package>> {
    let read = |path: &str| view.read_file(path).map_err(unreadable_packages);
    let os_release = read("/etc/os-release")?.or(read("/usr/lib/os-release")?);
    let distro = |default: &str| {
        os_release
            .as_deref()
            .and_then(|bytes| os_release_id(&String::from_utf8_lossy(bytes)))
            .unwrap_or_else(|| default.to_owned())
    };
    let mut packages = Vec::new();
    if let Some(status) = read("/var/lib/dpkg/status")? {
        packages.extend(parse_dpkg_status(
            &String::from_utf8_lossy(&status),
            &distro("debian"),
            true,
        ));
    }
    if let Some(names) = view
        .read_dir("/var/lib/dpkg/status.d")
        .map_err(unreadable_packages)?
    {
        for name in names.iter().filter(|n| !n.ends_with(".md5sums")) {
            if let Some(bytes) = read(&format!("/var/lib/dpkg/status.d/{name}"))? {
                // distroless' files often have no Status: being there is
                // being installed.
                packages.extend(parse_dpkg_status(
                    &String::from_utf8_lossy(&bytes),
                    &distro("debian"),
                    false,
                ));
            }
        }
    }
    if let Some(db) = read("/lib/apk/db/installed")? {
        packages.extend(parse_apk_installed(
            &String::from_utf8_lossy(&db),
            &distro("alpine"),
        ));
    }
    packages.sort();
    packages.dedup();
    Ok(packages)
}

fn unreadable_packages(err: kiln_executor::Error) -> Error {
    Error::Attest {
        what: "cannot read the image's package database",
        source: Box::new(err),
    }
}

/// `ID=` of an os-release file, unquoted.
fn os_release_id(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("ID="))
        .map(|v| v.trim().trim_matches(['"', '\'']).to_owned())
        .filter(|v| !v.is_empty())
}

/// The paragraphs of a deb822 file as (field, value) lists; continuation
/// lines (starting with a space or tab) belong to the field before.
fn paragraphs(text: &str) -> Vec<Vec<(&str, &str)>> {
    let mut all = Vec::new();
    let mut current = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                all.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            continue;
        }
        if let Some((field, value)) = line.split_once(':') {
            current.push((field.trim(), value.trim()));
        }
    }
    if !current.is_empty() {
        all.push(current);
    }
    all
}

/// The installed packages of a dpkg status file. A package counts when its
/// Status says it is wanted (install or hold) and installed (or only
/// waiting for triggers); removed ones (`deinstall ok config-files`,
/// `purge ok not-installed`) and half-done ones are skipped. Without a
/// Status field, `status_required` decides.
pub(crate) fn parse_dpkg_status(text: &str, distro: &str, status_required: bool) -> Vec<Package> {
    let mut packages = Vec::new();
    for paragraph in paragraphs(text) {
        let field = |name: &str| {
            paragraph
                .iter()
                .find(|(f, _)| f.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };
        let installed = match field("Status") {
            Some(status) => {
                let words: Vec<&str> = status.split_whitespace().collect();
                matches!(words.first(), Some(&"install" | &"hold"))
                    && matches!(
                        words.get(2),
                        Some(&"installed" | &"triggers-pending" | &"triggers-awaited")
                    )
            }
            None => !status_required,
        };
        let (Some(name), Some(version)) = (field("Package"), field("Version")) else {
            continue;
        };
        if !installed {
            continue;
        }
        packages.push(Package {
            name: name.to_owned(),
            version: version.to_owned(),
            arch: field("Architecture").unwrap_or("all").to_owned(),
            kind: "deb",
            distro: distro.to_owned(),
        });
    }
    packages
}

/// The packages of apk's installed database (`P:` name, `V:` version, `A:`
/// architecture, one blank-line separated record each).
pub(crate) fn parse_apk_installed(text: &str, distro: &str) -> Vec<Package> {
    let mut packages = Vec::new();
    for record in text.split("\n\n") {
        let field = |key: &str| {
            record
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        };
        if let (Some(name), Some(version)) = (field("P"), field("V")) {
            packages.push(Package {
                name: name.to_owned(),
                version: version.to_owned(),
                arch: field("A").unwrap_or("noarch").to_owned(),
                kind: "apk",
                distro: distro.to_owned(),
            });
        }
    }
    packages
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "\
Package: libc6
Status: install ok installed
Priority: optional
Architecture: amd64
Multi-Arch: same
Version: 2.36-9+deb12u4
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system.

Package: libc6
Status: install ok installed
Architecture: i386
Multi-Arch: same
Version: 2.36-9+deb12u4

Package: old-tool
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1

Package: gone
Status: purge ok not-installed
Architecture: amd64
Version: 2.0

Package: leaving
Status: deinstall ok installed
Architecture: amd64
Version: 3.0

Package: half
Status: install reinstreq half-installed
Architecture: amd64
Version: 4.0

Package: held
Status: hold ok installed
Architecture: all
Version: 1:5.0~rc1

Package: waiting
Status: install ok triggers-pending
Architecture: amd64
Version: 6
";

    #[test]
    fn dpkg_status_lists_installed_packages_of_every_arch_and_skips_removed_ones() {
        let names: Vec<(String, String, String)> = parse_dpkg_status(STATUS, "debian", true)
            .into_iter()
            .map(|p| (p.name, p.arch, p.version))
            .collect();
        let expected = [
            ("libc6", "amd64", "2.36-9+deb12u4"),
            ("libc6", "i386", "2.36-9+deb12u4"),
            ("held", "all", "1:5.0~rc1"),
            ("waiting", "amd64", "6"),
        ]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()));
        assert_eq!(names, expected);
    }

    #[test]
    fn status_d_entries_without_status_count_as_installed() {
        let text = "Package: base-files\nArchitecture: amd64\nVersion: 12.4\n";
        assert_eq!(parse_dpkg_status(text, "debian", false).len(), 1);
        assert!(parse_dpkg_status(text, "debian", true).is_empty());
    }

    #[test]
    fn purls_encode_epochs_and_plus_signs() {
        let held = &parse_dpkg_status(STATUS, "debian", true)[2];
        assert_eq!(held.purl(), "pkg:deb/debian/held@1%3A5.0~rc1?arch=all");
        let libc = &parse_dpkg_status(STATUS, "debian", true)[0];
        assert_eq!(
            libc.purl(),
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64"
        );
    }

    #[test]
    fn apk_installed_records() {
        let db = "C:Q1abc=\nP:musl\nV:1.2.4-r2\nA:x86_64\nL:MIT\n\nC:Q1def=\nP:busybox\nV:1.36.1-r5\nA:x86_64\n";
        let packages = parse_apk_installed(db, "alpine");
        assert_eq!(packages.len(), 2);
        assert_eq!(
            packages[0].purl(),
            "pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64"
        );
    }

    #[test]
    fn os_release_ids_are_unquoted() {
        assert_eq!(
            os_release_id("NAME=\"Debian\"\nID=\"debian\"\n").as_deref(),
            Some("debian")
        );
        assert_eq!(os_release_id("ID=alpine\n").as_deref(), Some("alpine"));
        assert_eq!(os_release_id("NAME=x\n"), None);
    }
}
