//! Build contexts that are not a local directory, as `docker build` takes
//! them: a tar on stdin, a tarball URL, a git repository. Each is made into a
//! directory in the store's temporary area, which then serves as an ordinary
//! context: its files are keyed by content like any other, so an unchanged
//! commit or tarball is a cache hit.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{io_err, Error, Result};

/// What a `docker build` context argument names, by Docker's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextSource {
    /// A local directory.
    Dir(PathBuf),
    /// `-`: a context tar, or a Dockerfile, on stdin.
    Stdin,
    /// An http(s) URL of a tarball (or of a Dockerfile).
    Url(String),
    /// A git repository.
    Git(GitSource),
}

/// A git context: where, which ref, which directory of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSource {
    /// The URL git is given.
    pub url: String,
    /// The branch, tag or commit (`#REF`); the remote's HEAD when empty.
    pub reference: String,
    /// The directory of the repository that is the context (`#REF:DIR`).
    pub subdir: String,
}

impl ContextSource {
    /// Classifies a context argument as the docker CLI does: `-`; git URLs
    /// (`git://`, `git@`, `ssh://`, `github.com/`, or http(s) ending in
    /// `.git` before the fragment); other http(s) URLs; else a directory.
    pub fn parse(arg: &str) -> ContextSource {
        if arg == "-" {
            return ContextSource::Stdin;
        }
        let (base, fragment) = arg.split_once('#').unwrap_or((arg, ""));
        let is_http = base.starts_with("http://") || base.starts_with("https://");
        let git_url = if base.starts_with("git://")
            || base.starts_with("git@")
            || base.starts_with("ssh://")
            || (is_http && base.ends_with(".git"))
        {
            Some(base.to_owned())
        } else {
            base.strip_prefix("github.com/")
                .map(|rest| format!("https://github.com/{rest}"))
        };
        if let Some(url) = git_url {
            let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
            return ContextSource::Git(GitSource {
                url,
                reference: reference.to_owned(),
                subdir: subdir.trim_matches('/').to_owned(),
            });
        }
        if is_http {
            return ContextSource::Url(arg.to_owned());
        }
        ContextSource::Dir(PathBuf::from(arg))
    }
}

/// Whether `head` (the first bytes of a stream) starts an archive a context
/// can come in: compressed (gzip, zstd, xz, bzip2) or a tar header.
pub fn looks_like_archive(head: &[u8]) -> bool {
    kiln_cache::InputCompression::detect(head) != kiln_cache::InputCompression::None
        || head.get(257..262) == Some(b"ustar".as_slice())
}

/// Unpacks a (possibly compressed) context tar into `dest`. Entries that
/// would land outside `dest` (absolute paths, `..`, through links) are
/// refused by the tar reader; owners are not kept (context files are root's).
pub fn unpack_context_tar(input: impl Read + Send, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(io_err(dest))?;
    let (_, reader) = kiln_cache::decompress_detected(input)
        .map_err(|e| Error::Invalid(format!("the context archive cannot be read: {e}")))?;
    let bad = |e: std::io::Error| {
        Error::Invalid(format!(
            "the context archive cannot be unpacked: {e}; give a tar (optionally gzip, zstd, xz or bzip2 compressed)"
        ))
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(false);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let leaves = name.starts_with('/') || name.split('/').any(|part| part == "..");
        // unpack_in also refuses what would land outside through a link.
        if leaves || !entry.unpack_in(dest).map_err(bad)? {
            return Err(Error::Invalid(format!(
                "the context archive's entry {name:?} points outside the context; remove it from the archive"
            )));
        }
    }
    Ok(())
}

/// What a context URL held: a context tree, or a Dockerfile.
#[derive(Debug)]
pub enum Fetched {
    /// The archive was unpacked into the directory given.
    Context,
    /// The URL held a plain file: the Dockerfile, with an empty context.
    Dockerfile(Vec<u8>),
}

/// Downloads a context URL: a tarball is unpacked into `dest`; anything else
/// is taken as the Dockerfile, as Docker takes it.
pub fn fetch_url_context(url: &str, dest: &Path) -> Result<Fetched> {
    std::fs::create_dir_all(dest).map_err(io_err(dest))?;
    let download = crate::fetch::fetch(url, dest)?;
    let file = std::fs::File::open(&download.path).map_err(io_err(&download.path))?;
    let mut head = Vec::with_capacity(512);
    file.take(512)
        .read_to_end(&mut head)
        .map_err(io_err(&download.path))?;
    let fetched = if looks_like_archive(&head) {
        let file = std::fs::File::open(&download.path).map_err(io_err(&download.path))?;
        let root = dest.join("context");
        unpack_context_tar(file, &root)?;
        Fetched::Context
    } else {
        Fetched::Dockerfile(std::fs::read(&download.path).map_err(io_err(&download.path))?)
    };
    std::fs::remove_file(&download.path).map_err(io_err(&download.path))?;
    Ok(fetched)
}

/// A checked-out git ref.
#[derive(Debug, Clone)]
pub struct Checkout {
    /// The directory asked for (the repository, or its `#REF:DIR`).
    pub root: PathBuf,
    /// The commit the ref resolved to: what a cache key names.
    pub commit: String,
}

/// Whether an ADD source names a git repository, by the same rules as a
/// context argument.
pub(crate) fn is_git_url(source: &str) -> bool {
    matches!(ContextSource::parse(source), ContextSource::Git(_))
}

impl GitSource {
    /// Checks the ref out into `dest` with the real `git` client (shallow
    /// where the remote allows it, submodules included) and returns the
    /// directory asked for (`dest` or its `subdir`) and the commit. The `.git`
    /// directories are removed unless `keep_git_dir` (BuildKit's
    /// BUILDKIT_CONTEXT_KEEP_GIT_DIR, ADD --keep-git-dir).
    pub fn checkout(&self, dest: &Path, keep_git_dir: bool) -> Result<Checkout> {
        std::fs::create_dir_all(dest).map_err(io_err(dest))?;
        self.git(dest, &["init", "-q"])?;
        self.git(dest, &["remote", "add", "origin", &self.url])?;
        let wanted = if self.reference.is_empty() {
            "HEAD"
        } else {
            &self.reference
        };
        if self
            .git(dest, &["fetch", "-q", "--depth", "1", "origin", wanted])
            .is_err()
        {
            // A commit id that the server will not serve shallowly: fetch all.
            self.git(dest, &["fetch", "-q", "--tags", "origin"])?;
            self.git(dest, &["checkout", "-q", wanted])?;
        } else {
            self.git(dest, &["checkout", "-q", "FETCH_HEAD"])?;
        }
        self.git(
            dest,
            &[
                "submodule",
                "update",
                "-q",
                "--init",
                "--recursive",
                "--depth",
                "1",
            ],
        )?;
        let commit = self.git(dest, &["rev-parse", "HEAD"])?.trim().to_string();
        if !keep_git_dir {
            remove_git_dirs(dest)?;
        }
        let root = if self.subdir.is_empty() {
            dest.to_path_buf()
        } else {
            if self.subdir.split('/').any(|part| part == "..") {
                return Err(Error::Invalid(format!(
                    "git context {}: the directory {:?} leaves the repository",
                    self.url, self.subdir
                )));
            }
            dest.join(&self.subdir)
        };
        let inside = root
            .canonicalize()
            .ok()
            .filter(|r| r.starts_with(dest.canonicalize().unwrap_or_default()) && r.is_dir());
        let root = inside.ok_or_else(|| {
            Error::Invalid(format!(
                "git context {}#{}: the repository has no directory {:?}",
                self.url, self.reference, self.subdir
            ))
        })?;
        Ok(Checkout { root, commit })
    }

    /// Runs `git ARGS` in `dir`, never asking for a password on a terminal;
    /// returns what it printed.
    fn git(&self, dir: &Path, args: &[&str]) -> Result<String> {
        let output = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| {
                Error::Invalid(format!(
                    "git context {}: cannot run git ({e}); install git (Debian package git)",
                    self.url
                ))
            })?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(Error::Invalid(format!(
            "git context {}{}: `git {}` failed: {}; check the URL, the ref and that this machine can reach the repository",
            self.url,
            if self.reference.is_empty() {
                String::new()
            } else {
                format!("#{}", self.reference)
            },
            args.first().copied().unwrap_or(""),
            stderr.trim()
        )))
    }
}

/// Removes every `.git` directory or file (submodules have files) below `root`.
fn remove_git_dirs(root: &Path) -> Result<()> {
    let mut found = Vec::new();
    for entry in walkdir::WalkDir::new(root).into_iter().filter_entry(|e| {
        let git = e.file_name() == ".git";
        if git {
            found.push(e.path().to_path_buf());
        }
        !git
    }) {
        entry.map_err(|e| Error::Io {
            path: root.to_path_buf(),
            error: e.into(),
        })?;
    }
    for path in found {
        let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
        if meta.is_dir() {
            std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
        } else {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(url: &str, reference: &str, subdir: &str) -> ContextSource {
        ContextSource::Git(GitSource {
            url: url.into(),
            reference: reference.into(),
            subdir: subdir.into(),
        })
    }

    #[test]
    fn context_arguments_are_classified_as_docker_does() {
        assert_eq!(ContextSource::parse("-"), ContextSource::Stdin);
        assert_eq!(ContextSource::parse("."), ContextSource::Dir(".".into()));
        assert_eq!(
            ContextSource::parse("https://h/repo.git#v1:sub/dir/"),
            git("https://h/repo.git", "v1", "sub/dir")
        );
        assert_eq!(
            ContextSource::parse("git://127.0.0.1:9418/repo#main"),
            git("git://127.0.0.1:9418/repo", "main", "")
        );
        assert_eq!(
            ContextSource::parse("git@host:org/repo.git"),
            git("git@host:org/repo.git", "", "")
        );
        assert_eq!(
            ContextSource::parse("github.com/org/repo#:docs"),
            git("https://github.com/org/repo", "", "docs")
        );
        assert_eq!(
            ContextSource::parse("https://h/ctx.tar.gz"),
            ContextSource::Url("https://h/ctx.tar.gz".into())
        );
    }

    #[test]
    fn archives_are_told_from_dockerfiles() {
        assert!(looks_like_archive(&[0x1f, 0x8b, 8, 0]));
        let mut header = vec![0u8; 512];
        header[257..262].copy_from_slice(b"ustar");
        assert!(looks_like_archive(&header));
        assert!(!looks_like_archive(b"FROM busybox\nRUN true\n"));
    }

    #[test]
    fn context_tars_cannot_write_outside() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        {
            let mut builder = tar::Builder::new(&mut bytes);
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            // Written raw: the tar crate refuses to build such a name.
            header.as_old_mut().name[..9].copy_from_slice(b"../escape");
            header.set_cksum();
            builder.append(&header, &b"x"[..]).unwrap();
            builder.finish().unwrap();
        }
        let dest = dir.path().join("ctx");
        let err = unpack_context_tar(bytes.as_slice(), &dest)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"../escape\" points outside"), "{err}");
        assert!(!dir.path().join("escape").exists());
    }
}
