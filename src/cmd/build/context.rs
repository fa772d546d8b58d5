//! The build's inputs as `docker build` takes them: the context argument (a
//! directory, `-`, a tarball URL or a git URL) and `-f`, resolved to a
//! context directory (if any) and the Dockerfile's text.

use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use kiln_solver::{ContextSource, Fetched};

/// The Dockerfile and the context directory a build uses.
pub(super) struct Inputs {
    /// The context directory; `None` when there is no context (a Dockerfile
    /// on stdin, or a URL that held a Dockerfile).
    pub root: Option<PathBuf>,
    /// The Dockerfile's text, its name for messages and, when it is a file,
    /// its path (for `<Dockerfile>.dockerignore`).
    pub dockerfile: String,
    pub file_name: String,
    pub dockerfile_path: Option<PathBuf>,
    /// A local directory, whose stat cache is worth keeping between builds.
    pub local: bool,
    /// Where the context came from, for provenance.
    pub origin: kiln_solver::ContextOrigin,
    /// Where a fetched context lives; removed when the build ends.
    _staging: Option<tempfile::TempDir>,
}

/// Resolves the context argument and `-f` into a context and a Dockerfile,
/// fetching what is remote into the store's temporary area.
pub(super) fn resolve(
    context_arg: &str,
    file: Option<&str>,
    build_args: &BTreeMap<String, String>,
    tmp_dir: &Path,
) -> anyhow::Result<Inputs> {
    match ContextSource::parse(context_arg) {
        ContextSource::Dir(root) => local(root, file),
        ContextSource::Stdin => from_stdin(file, tmp_dir),
        ContextSource::Url(url) => {
            let staging = staging(tmp_dir, "context-")?;
            match kiln_solver::fetch_url_context(&url, staging.path())? {
                Fetched::Context => {
                    let root = staging.path().join("context");
                    inside(root, file, staging)
                }
                Fetched::Dockerfile(bytes) => {
                    no_file_flag(file, "the URL holds a Dockerfile, not a context archive")?;
                    Ok(dockerfile_only(bytes, url.clone()))
                }
            }
            .map(|inputs| Inputs {
                origin: kiln_solver::ContextOrigin {
                    uri: Some(without_credentials(&url)),
                    git_commit: None,
                },
                ..inputs
            })
        }
        ContextSource::Git(git) => {
            let staging = staging(tmp_dir, "context-")?;
            let keep_git_dir = build_args
                .get("BUILDKIT_CONTEXT_KEEP_GIT_DIR")
                .is_some_and(|v| matches!(v.as_str(), "1" | "true"));
            let checkout = git.checkout(&staging.path().join("git"), keep_git_dir)?;
            let mut inputs = inside(checkout.root, file, staging)?;
            inputs.origin = kiln_solver::ContextOrigin {
                uri: Some(without_credentials(context_arg)),
                git_commit: Some(checkout.commit),
            };
            Ok(inputs)
        }
    }
}

/// A context directory on this machine; `-f` is a path as given (or `-`).
fn local(root: PathBuf, file: Option<&str>) -> anyhow::Result<Inputs> {
    if !root.is_dir() {
        bail!(
            "the build context {} is not a directory (a context is a directory, -, an http(s) URL or a git URL)",
            root.display()
        );
    }
    let (dockerfile, file_name, dockerfile_path) = match file {
        Some("-") => (
            super::super::read_dockerfile(None)?,
            "Dockerfile".to_string(),
            None,
        ),
        Some(path) => {
            let path = PathBuf::from(path);
            (
                super::super::read_dockerfile(Some(&path))?,
                path.display().to_string(),
                Some(path),
            )
        }
        None => {
            let path = root.join("Dockerfile");
            (
                super::super::read_dockerfile(Some(&path))?,
                "Dockerfile".to_string(),
                Some(path),
            )
        }
    };
    Ok(Inputs {
        origin: local_git_origin(&root),
        root: Some(root),
        dockerfile,
        file_name,
        dockerfile_path,
        local: true,
        _staging: None,
    })
}

/// The commit and remote of a local context that is a git checkout (best
/// effort: no git, no repository or no remote leaves them out).
fn local_git_origin(root: &Path) -> kiln_solver::ContextOrigin {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .filter(|text| !text.is_empty())
    };
    if !root.join(".git").exists() {
        return kiln_solver::ContextOrigin::default();
    }
    kiln_solver::ContextOrigin {
        uri: git(&["config", "--get", "remote.origin.url"]).map(|u| without_credentials(&u)),
        git_commit: git(&["rev-parse", "HEAD"]),
    }
}

/// A URL without the user and password it may carry
/// (`https://TOKEN@host/repo.git`): provenance must not leak them.
pub(super) fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// `-`: stdin that starts like an archive is the context (its Dockerfile
/// inside it), anything else is the Dockerfile with no context, as Docker
/// decides.
fn from_stdin(file: Option<&str>, tmp_dir: &Path) -> anyhow::Result<Inputs> {
    if file == Some("-") {
        bail!("-f - and the context - both want stdin: give the Dockerfile's path with -f, or the context as a directory");
    }
    let mut input = std::io::BufReader::with_capacity(1 << 20, std::io::stdin());
    let head = input.fill_buf().context("cannot read stdin")?;
    if kiln_solver::looks_like_archive(head) {
        let staging = staging(tmp_dir, "context-")?;
        let root = staging.path().join("context");
        kiln_solver::unpack_context_tar(input, &root)
            .context("reading the build context from stdin")?;
        return inside(root, file, staging);
    }
    no_file_flag(file, "stdin holds the Dockerfile")?;
    let mut bytes = Vec::new();
    input
        .read_to_end(&mut bytes)
        .context("cannot read the Dockerfile from stdin")?;
    Ok(dockerfile_only(bytes, "Dockerfile".into()))
}

/// A fetched context: `-f` names a file inside it.
fn inside(root: PathBuf, file: Option<&str>, staging: tempfile::TempDir) -> anyhow::Result<Inputs> {
    let name = file.unwrap_or("Dockerfile");
    if name.starts_with('/') || name.split('/').any(|part| part == "..") {
        bail!("-f {name}: with a context from stdin or a URL, -f names a file inside the context");
    }
    let path = root.join(name);
    let dockerfile = std::fs::read(&path)
        .map(kiln_frontend::dockerfile_text)
        .with_context(|| {
            format!("the context has no {name}; name the Dockerfile inside it with -f PATH")
        })?;
    Ok(Inputs {
        root: Some(root),
        dockerfile,
        file_name: name.to_string(),
        dockerfile_path: Some(path),
        local: false,
        origin: Default::default(),
        _staging: Some(staging),
    })
}

fn dockerfile_only(bytes: Vec<u8>, file_name: String) -> Inputs {
    Inputs {
        root: None,
        dockerfile: kiln_frontend::dockerfile_text(bytes),
        file_name,
        dockerfile_path: None,
        local: false,
        origin: Default::default(),
        _staging: None,
    }
}

/// `-f` has nothing to name when the Dockerfile itself came as the input.
fn no_file_flag(file: Option<&str>, why: &str) -> anyhow::Result<()> {
    match file {
        Some(name) => bail!("-f {name}: {why}, so there is no context to name a file in"),
        None => Ok(()),
    }
}

/// A new directory `PREFIX…` in the store's temporary area `tmp_dir`,
/// removed when dropped (and by the next kiln, should this one be killed).
pub(super) fn staging(tmp_dir: &Path, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    std::fs::create_dir_all(tmp_dir)
        .with_context(|| format!("cannot create {}", tmp_dir.display()))?;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(tmp_dir)
        .with_context(|| format!("cannot create a directory in {}", tmp_dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_taken_out_of_context_urls() {
        assert_eq!(
            without_credentials("https://user:token@example.com/app.git#main"),
            "https://example.com/app.git#main"
        );
        assert_eq!(
            without_credentials("https://example.com/a@b"),
            "https://example.com/a@b"
        );
        assert_eq!(
            without_credentials("git@github.com:org/app.git"),
            "git@github.com:org/app.git"
        );
    }
}
