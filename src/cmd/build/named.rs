//! `--build-context NAME=VALUE`: named contexts, as BuildKit takes them.
//! `FROM NAME`, `COPY --from=NAME` and `RUN --mount=from=NAME` read the
//! context instead of the image or stage called NAME. An image
//! (`docker-image://`, `oci-layout://`) stands in for the image; a directory
//! (a path, a tarball URL, a git URL) is read like the build context, through
//! a `BuildContext` of its own with its own `.dockerignore`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use kiln_cache::{LayoutImage, Platform, Store};
use kiln_frontend::{BaseImage, BaseImageResolver, NamedContext};
use kiln_solver::{BuildContext, ContextSource, Fetched, GitSource, IgnoreRules, StoreResolver};

const FORMS: &str = "a directory, docker-image://REF, oci-layout://DIR[:TAG|@sha256:DIGEST], an http(s) URL of a tarball, or a git URL";

/// What one `--build-context` value names, before anything is read.
#[derive(Debug, PartialEq)]
enum Source {
    Image(String),
    Layout { dir: PathBuf, pick: Pick },
    Dir(PathBuf),
    Url(String),
    Git(GitSource),
}

/// Which image of an OCI layout.
#[derive(Debug, PartialEq)]
enum Pick {
    Default,
    Tag(String),
    Digest(String),
}

/// The named contexts of a build, resolved.
pub(super) struct NamedContexts {
    /// What the frontend needs to know of each, by name.
    pub frontend: BTreeMap<String, NamedContext>,
    /// The directory contexts, for the solver.
    pub directories: BTreeMap<String, Arc<BuildContext>>,
    /// Ids of the images read from OCI layouts: only the store has them.
    layout_images: BTreeSet<String>,
    /// Where fetched contexts live; removed when the build ends.
    _staging: Vec<tempfile::TempDir>,
}

/// Checks every `--build-context` value (names, schemes, that directories
/// exist), then fetches the remote ones and, last, copies OCI layout
/// images into the store: a bad value fails before the store is touched.
pub(super) fn resolve(
    values: &[String],
    store: &Store,
    keep_git_dir: bool,
    platform: &Platform,
) -> anyhow::Result<NamedContexts> {
    let parsed = values
        .iter()
        .map(|value| parse(value))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut contexts = NamedContexts {
        frontend: BTreeMap::new(),
        directories: BTreeMap::new(),
        layout_images: BTreeSet::new(),
        _staging: Vec::new(),
    };
    let mut layouts = Vec::new();
    // The last value given for a name wins, as in buildx.
    for (name, source) in parsed {
        contexts.frontend.remove(&name);
        contexts.directories.remove(&name);
        // A local directory keeps its stat cache between builds, as the
        // build context does; fetched ones are new every build.
        let mut local = false;
        let root = match source {
            Source::Image(reference) => {
                contexts
                    .frontend
                    .insert(name, NamedContext::Image(reference));
                continue;
            }
            Source::Layout { dir, pick } => {
                layouts.push((name, dir, pick));
                continue;
            }
            Source::Dir(dir) => {
                local = true;
                dir
            }
            Source::Url(url) => {
                let staging = super::context::staging(&store.tmp_dir(), "named-context-")?;
                let fetched = kiln_solver::fetch_url_context(&url, staging.path())
                    .with_context(|| format!("--build-context {name}={url}"))?;
                if let Fetched::Dockerfile(_) = fetched {
                    bail!("--build-context {name}={url}: the URL holds a single file, not a tarball; a named context from a URL is a (compressed) tar");
                }
                let root = staging.path().join("context");
                contexts._staging.push(staging);
                root
            }
            Source::Git(git) => {
                let staging = super::context::staging(&store.tmp_dir(), "named-context-")?;
                let root = git
                    .checkout(&staging.path().join("git"), keep_git_dir)
                    .with_context(|| format!("--build-context {name}"))?
                    .root;
                contexts._staging.push(staging);
                root
            }
        };
        let ignore = IgnoreRules::for_build(&root, None)
            .with_context(|| format!("--build-context {name}: reading its .dockerignore"))?;
        let state = match local {
            true => Some(store.state_dir("context")?),
            false => None,
        };
        let context = BuildContext::new(&root, ignore, state.as_deref())
            .with_context(|| format!("--build-context {name}={}", root.display()))?;
        contexts
            .frontend
            .insert(name.clone(), NamedContext::Directory);
        contexts.directories.insert(name, Arc::new(context));
    }
    for (name, dir, pick) in layouts {
        let wanted = match &pick {
            Pick::Default => LayoutImage::Default,
            Pick::Tag(tag) => LayoutImage::Tag(tag),
            Pick::Digest(digest) => LayoutImage::Digest(digest),
        };
        let image =
            kiln_cache::import_oci_layout(store, &dir, wanted, platform).with_context(|| {
                format!(
                    "--build-context {name}=oci-layout://{}: cannot read the image",
                    dir.display()
                )
            })?;
        let id = image.id().to_string();
        contexts.layout_images.insert(id.clone());
        contexts.frontend.insert(name, NamedContext::Image(id));
    }
    Ok(contexts)
}

/// One `NAME=VALUE`, checked without reading anything but the file system's
/// idea of whether a directory exists.
fn parse(value: &str) -> anyhow::Result<(String, Source)> {
    let Some((name, source)) = value.split_once('=') else {
        bail!("--build-context {value}: expected NAME=VALUE, where VALUE is {FORMS}");
    };
    if !valid_name(name) {
        bail!("--build-context {value}: {name:?} is not a context name; a context is named like an image (lowercase letters, digits and . _ - / :), e.g. src or alpine:3.19");
    }
    let name = kiln_frontend::context_name(name);
    let source =
        parse_source(source).with_context(|| format!("--build-context {name}={source}"))?;
    Ok((name, source))
}

fn parse_source(value: &str) -> anyhow::Result<Source> {
    if let Some(reference) = value.strip_prefix("docker-image://") {
        if reference.is_empty() {
            bail!("docker-image:// needs an image reference, e.g. docker-image://alpine:3.19");
        }
        return Ok(Source::Image(reference.to_string()));
    }
    if let Some(rest) = value.strip_prefix("oci-layout://") {
        return parse_layout(rest);
    }
    if let Some((scheme, _)) = value.split_once("://") {
        if !matches!(scheme, "http" | "https" | "git" | "ssh") {
            bail!("unknown scheme {scheme}://; a named context is {FORMS}");
        }
    }
    match ContextSource::parse(value) {
        ContextSource::Dir(dir) if dir.is_dir() => Ok(Source::Dir(dir)),
        ContextSource::Dir(dir) => bail!(
            "{} is not a directory; a named context is {FORMS}",
            dir.display()
        ),
        ContextSource::Stdin => bail!("a named context cannot come from stdin; it is {FORMS}"),
        ContextSource::Url(url) => Ok(Source::Url(url)),
        ContextSource::Git(git) => Ok(Source::Git(git)),
    }
}

/// `DIR`, `DIR:TAG` or `DIR@sha256:DIGEST`.
fn parse_layout(rest: &str) -> anyhow::Result<Source> {
    let (dir, pick) = if let Some((dir, digest)) = rest.rsplit_once('@') {
        (dir, Pick::Digest(digest.to_string()))
    } else {
        match rest.rsplit_once(':') {
            Some((dir, tag)) if !tag.is_empty() && !tag.contains('/') => {
                (dir, Pick::Tag(tag.to_string()))
            }
            _ => (rest, Pick::Default),
        }
    };
    let dir = PathBuf::from(dir);
    if !dir.join("index.json").is_file() {
        bail!(
            "{} is not an OCI image layout (it has no index.json); give a directory written by `skopeo copy ... oci:DIR` or an unpacked `kiln save --format oci`",
            dir.display()
        );
    }
    Ok(Source::Layout { dir, pick })
}

/// A name as BuildKit takes one: an image reference, which is lowercase.
fn valid_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:@".contains(c))
}

/// The build's resolver with the named contexts' OCI layout images: those
/// are found in the store by id, never pulled.
pub(super) struct WithLayouts<'a> {
    pub inner: &'a dyn BaseImageResolver,
    pub store: &'a Store,
    pub contexts: &'a NamedContexts,
}

impl BaseImageResolver for WithLayouts<'_> {
    fn resolve(&self, reference: &str, platform: &str) -> Result<Option<BaseImage>, String> {
        if self.contexts.layout_images.contains(reference) {
            return StoreResolver::new(self.store).resolve(reference, platform);
        }
        self.inner.resolve(reference, platform)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_classified_as_buildx_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().display().to_string();
        assert_eq!(
            parse("alpine=docker-image://busybox:1.36").unwrap(),
            ("alpine".into(), Source::Image("busybox:1.36".into()))
        );
        assert_eq!(
            parse(&format!("docker.io/library/src:latest={path}")).unwrap(),
            ("src".into(), Source::Dir(dir.path().to_path_buf()))
        );
        assert!(matches!(
            parse("x=https://example.com/ctx.tar.gz").unwrap().1,
            Source::Url(_)
        ));
        assert!(matches!(
            parse("x=git://example.com/repo#main").unwrap().1,
            Source::Git(_)
        ));
        std::fs::write(dir.path().join("index.json"), "{}").unwrap();
        assert_eq!(
            parse(&format!("x=oci-layout://{path}:v1")).unwrap().1,
            Source::Layout {
                dir: dir.path().to_path_buf(),
                pick: Pick::Tag("v1".into())
            }
        );
        assert_eq!(
            parse(&format!("x=oci-layout://{path}@sha256:ab"))
                .unwrap()
                .1,
            Source::Layout {
                dir: dir.path().to_path_buf(),
                pick: Pick::Digest("sha256:ab".into())
            }
        );
    }

    #[test]
    fn bad_values_name_the_flag_and_the_forms() {
        for (value, says) in [
            ("nope", "expected NAME=VALUE"),
            ("Src=.", "is not a context name"),
            ("x=target://base", "unknown scheme target://"),
            ("x=/no/such/dir", "is not a directory"),
            ("x=-", "cannot come from stdin"),
            ("x=oci-layout:///no/such/layout", "not an OCI image layout"),
        ] {
            let err = format!("{:#}", parse(value).unwrap_err());
            assert!(
                err.contains("--build-context") && err.contains(says),
                "{value}: {err}"
            );
        }
        let err = format!("{:#}", parse("x=target://base").unwrap_err());
        assert!(
            err.contains("docker-image://REF") && err.contains("oci-layout://"),
            "{err}"
        );
    }
}
