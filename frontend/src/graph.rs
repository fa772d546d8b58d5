//! The build graph: what the solver runs. Every value in it is resolved the way
//! Docker resolves it (variables expanded, paths absolute, RUN's environment
//! complete), and every step carries a definition digest.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::ImageConfig;
use crate::error::{Error, Result, Span, Warning};
use crate::key::Key;

/// What [`crate::compile`] needs besides the Dockerfile.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// `--build-arg K=V` values; they override ARG defaults, and proxy ARGs
    /// (`HTTP_PROXY`, ...) given here reach RUN without being declared.
    pub build_args: BTreeMap<String, String>,
    /// The stage to build (a name or a decimal index); `None` is the last.
    pub target: Option<String>,
    /// The platform the image is for, `os/arch[/variant]`, e.g. `linux/amd64`.
    pub target_platform: String,
    /// The platform the build runs on, e.g. `linux/amd64`.
    pub build_platform: String,
    /// `--build-context NAME=...`, by [`context_name`]: `FROM NAME`,
    /// `COPY --from=NAME` and `RUN --mount=from=NAME` read them instead of
    /// the image or stage of that name, and a stage named NAME is replaced
    /// by the context, as in BuildKit.
    pub named_contexts: BTreeMap<String, NamedContext>,
}

/// What a named build context is, as the frontend needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamedContext {
    /// An image: this reference is resolved through the
    /// [`BaseImageResolver`] in place of the name.
    Image(String),
    /// A directory the solver reads like the build context
    /// ([`CopyFrom::Named`]); as a stage, its files on an empty config.
    Directory,
}

/// The name a context (or an image reference that may name one) is known
/// by, as BuildKit normalizes both: Docker Hub's `docker.io/library/` (or
/// `docker.io/`) prefix and a `:latest` tag are dropped.
pub fn context_name(reference: &str) -> String {
    let short = ["docker.io/library/", "index.docker.io/library/"]
        .iter()
        .find_map(|p| reference.strip_prefix(p))
        .or_else(|| {
            ["docker.io/", "index.docker.io/"]
                .iter()
                .find_map(|p| reference.strip_prefix(p))
        })
        .unwrap_or(reference);
    short.strip_suffix(":latest").unwrap_or(short).to_string()
}

/// A base image as the store knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct BaseImage {
    /// The image's manifest (or config) digest, `sha256:...`; part of cache keys.
    pub digest: String,
    /// The image's runtime config.
    pub config: ImageConfig,
    /// `linux`.
    pub os: String,
    /// OCI architecture name (`amd64`, `mips64le`, ...).
    pub architecture: String,
    /// Architecture variant (`v7`), if any.
    pub variant: Option<String>,
}

/// Finds base images for FROM lines and `--from=<image>`. `scratch` never
/// reaches a resolver.
pub trait BaseImageResolver: Sync {
    /// The image called `reference` for `platform` (`os/arch[/variant]`);
    /// `Ok(None)` when there is no such image, `Err` with a message when the
    /// lookup itself failed.
    fn resolve(
        &self,
        reference: &str,
        platform: &str,
    ) -> std::result::Result<Option<BaseImage>, String>;
}

/// A resolver that has no images but pretends every name exists with an
/// empty config, for `kiln parse`, which shows a graph without a store.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoImages;

/// The digest [`NoImages`] gives every image: 64 zeros.
pub const PLACEHOLDER_DIGEST: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

impl BaseImageResolver for NoImages {
    fn resolve(
        &self,
        _reference: &str,
        platform: &str,
    ) -> std::result::Result<Option<BaseImage>, String> {
        let mut parts = platform.split('/');
        let os = parts.next().unwrap_or("linux").to_string();
        let architecture = parts.next().unwrap_or("amd64").to_string();
        let variant = parts.next().map(str::to_string);
        Ok(Some(BaseImage {
            digest: PLACEHOLDER_DIGEST.to_string(),
            config: ImageConfig::default(),
            os,
            architecture,
            variant,
        }))
    }
}

/// A compiled Dockerfile.
///
/// `stages` holds every stage the target needs, in Dockerfile order; stages
/// the target does not need are pruned (they are never compiled, so an unknown
/// base image there is no error). Stage references (`Base::Stage`,
/// `CopyFrom::Stage`, a mount's `from`) are Dockerfile stage indices, looked up
/// with [`BuildGraph::stage`].
#[derive(Clone, Debug)]
pub struct BuildGraph {
    /// The needed stages, in Dockerfile order.
    pub stages: Vec<Stage>,
    /// The Dockerfile index of the target stage.
    pub target: usize,
    /// The target stage's final config: its base's config plus the effect
    /// of every instruction (triggers included). Only the target's is kept:
    /// an earlier stage's config lives only until the stages built FROM it
    /// have inherited it, so a long chain of stages, each inheriting the
    /// labels of all before it, holds one config at a time, not one per
    /// stage.
    pub config: ImageConfig,
    /// What the compiled stages do that is accepted but probably not meant,
    /// in Dockerfile order within each stage; the caller shows them.
    pub warnings: Vec<Warning>,
}

impl BuildGraph {
    /// The stage with Dockerfile index `index`, if it is in the graph.
    pub fn stage(&self, index: usize) -> Option<&Stage> {
        self.stages.iter().find(|s| s.index == index)
    }

    /// The target stage.
    pub fn target_stage(&self) -> Option<&Stage> {
        self.stage(self.target)
    }

    /// The stages the target needs, each after every stage it depends on, the
    /// target last. Compile already rejected cycles; this re-checks and errors
    /// rather than looping if a hand-built graph has one.
    pub fn needed_stages(&self) -> Result<Vec<&Stage>> {
        let mut order = Vec::new();
        // 0 = unvisited, 1 = on the current path, 2 = done.
        let mut state: BTreeMap<usize, u8> = BTreeMap::new();
        let mut stack: Vec<(usize, bool)> = vec![(self.target, false)];
        while let Some((index, expanded)) = stack.pop() {
            let stage = self.stage(index).ok_or_else(|| Error::UnknownTarget {
                name: index.to_string(),
                available: self
                    .stages
                    .iter()
                    .map(|s| s.display_name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
            if expanded {
                state.insert(index, 2);
                order.push(stage);
                continue;
            }
            match state.get(&index) {
                Some(2) => continue,
                Some(_) => {
                    return Err(Error::compile(
                        stage.span.clone(),
                        format!("circular dependency through stage {}", stage.display_name()),
                    ))
                }
                None => {}
            }
            state.insert(index, 1);
            stack.push((index, true));
            for dep in stage.dependencies().into_iter().rev() {
                match state.get(&dep) {
                    Some(2) => {}
                    Some(_) => {
                        return Err(Error::compile(
                            stage.span.clone(),
                            format!("circular dependency through stage {}", stage.display_name()),
                        ))
                    }
                    None => stack.push((dep, false)),
                }
            }
        }
        Ok(order)
    }
}

/// One stage: a FROM line and the instructions after it.
#[derive(Clone, Debug)]
pub struct Stage {
    /// Position among the Dockerfile's stages, from 0.
    pub index: usize,
    /// The `AS name`, lower-cased as Docker does.
    pub name: Option<String>,
    /// The FROM line.
    pub span: Span,
    /// What the stage starts from.
    pub base: Base,
    /// The platform the stage's steps run as (`--platform` or the target).
    pub platform: String,
    /// The steps, ONBUILD triggers of the base image first.
    pub steps: Vec<Step>,
    /// `MAINTAINER`, the last one.
    pub author: Option<String>,
    /// Digest of the last step, or of the base when there are no steps.
    pub digest: Key,
}

impl Stage {
    /// The name, or the index for an unnamed stage.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.index.to_string())
    }

    /// Indices of the stages this one reads from (base, `--from`, mounts),
    /// without duplicates, in first-use order.
    pub fn dependencies(&self) -> Vec<usize> {
        let mut deps = Vec::new();
        let mut add = |i: usize| {
            if !deps.contains(&i) {
                deps.push(i);
            }
        };
        if let Base::Stage(i) = self.base {
            add(i);
        }
        for step in &self.steps {
            match &step.kind {
                StepKind::Copy(copy) => {
                    if let CopyFrom::Stage(i) = copy.from {
                        add(i);
                    }
                }
                StepKind::Run(run) => {
                    for mount in &run.mounts {
                        if let Some(CopyFrom::Stage(i)) = mount.from() {
                            add(*i);
                        }
                    }
                }
                _ => {}
            }
        }
        deps
    }
}

/// What a stage starts from.
// A graph holds a few of these; plain values keep matching on them simple.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Base {
    /// `FROM scratch`: an empty filesystem and config.
    Scratch,
    /// A base image from the store.
    Image {
        /// The reference after variable expansion, as written in FROM.
        reference: String,
        /// What the resolver found.
        image: BaseImage,
    },
    /// An earlier stage (Dockerfile index).
    Stage(usize),
}

/// One instruction as the solver runs it.
#[derive(Clone, Debug)]
pub struct Step {
    /// The instruction's position.
    pub span: Span,
    /// The instruction as written, on one line, for progress output (shared
    /// with the instruction).
    pub text: Arc<str>,
    /// The history entry, BuildKit style (`RUN /bin/sh -c make # buildkit`).
    pub created_by: String,
    /// Whether the image's history records the step: BuildKit records every
    /// instruction but ONBUILD.
    pub in_history: bool,
    /// Whether the step leaves the filesystem alone (no layer in history).
    pub empty_layer: bool,
    /// What to do.
    pub kind: StepKind,
    /// Definition digest: this step's definition and its inputs' digests.
    pub digest: Key,
}

/// What a step does.
// A graph holds a few of these; plain values keep matching on them simple.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum StepKind {
    /// RUN (boxed, as COPY is: a step is as large as its largest kind, and
    /// most steps of a long Dockerfile are neither).
    Run(Box<RunStep>),
    /// COPY or ADD (boxed: the largest kind, and one step in several; every
    /// step is as large as its largest kind).
    Copy(Box<CopyStep>),
    /// WORKDIR (boxed like RUN and COPY, so a config step stays small).
    Workdir(Box<WorkdirStep>),
    /// ENV, LABEL, CMD, ... : changes the config only, no layer.
    Config,
}

/// A WORKDIR step: the directory is created (owned by the current USER, mode
/// 0755) if missing, as BuildKit does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkdirStep {
    /// Absolute path.
    pub path: String,
    /// The USER in effect, for the directory's owner.
    pub user: Option<String>,
}

/// A RUN step.
#[derive(Clone, Debug, PartialEq)]
pub struct RunStep {
    /// The command: exec form as written, shell form wrapped in SHELL.
    pub argv: Vec<String>,
    /// The SHELL in effect (`/bin/sh -c` unless set), shared by the steps
    /// between two SHELL instructions: what a debug shell opens.
    pub shell: Arc<[String]>,
    /// `K=V`: the image's Env (after ENV instructions), then the ARGs in scope
    /// that no ENV overrides, then proxy build args. Shared by the RUN steps
    /// between two ENV/ARG changes (and its entries by every list that has
    /// them), so a long Dockerfile does not copy its environment per step.
    pub env: Arc<[Arc<str>]>,
    /// USER in effect (`user[:group]`), `None` for root.
    pub user: Option<String>,
    /// WORKDIR in effect, absolute (`/` by default).
    pub workdir: String,
    /// `--network`; `None` means the default sandbox network.
    pub network: Option<Network>,
    /// `--security`.
    pub security: Security,
    /// `--mount`s.
    pub mounts: Vec<RunMount>,
    /// Files to materialize before running (heredoc scripts): each goes in a
    /// read-only directory mounted at `/dev/pipes`.
    pub files: Vec<RunFile>,
}

/// A file a RUN step needs (a heredoc with a `#!` line, run as a script, the
/// way BuildKit does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunFile {
    /// Absolute path inside the container (`/dev/pipes/EOF`).
    pub path: String,
    /// Contents.
    pub content: String,
    /// Permission bits (0o755).
    pub mode: u32,
}

/// A network mode: `RUN --network`, and `--network` of `kiln build` and
/// `kiln run`. The one place its names are spelled: parse them with
/// [`str::parse`], print them with [`Network::as_str`] (or `Display`); cache
/// keys encode [`Network::as_str`]. Serialized (a container's record) as the
/// same names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// `default`: the sandbox network.
    #[default]
    Default,
    /// `none`: loopback only.
    None,
    /// `host`: the host's network.
    Host,
}

impl Network {
    /// Every mode, in the order help and errors list them.
    pub const ALL: [Network; 3] = [Network::Default, Network::None, Network::Host];

    /// The mode's name as written in a Dockerfile or on the command line
    /// (`default`, `none`, `host`).
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Default => "default",
            Network::None => "none",
            Network::Host => "host",
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Network {
    type Err = UnknownNetwork;

    /// The mode named exactly (case matters, as in BuildKit).
    fn from_str(name: &str) -> std::result::Result<Network, UnknownNetwork> {
        Network::ALL
            .into_iter()
            .find(|network| network.as_str() == name)
            .ok_or_else(|| UnknownNetwork(name.to_string()))
    }
}

/// A network mode name that is none of [`Network::ALL`]; the message lists
/// the valid ones.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--network must be {names}, not {0:?}", names = network_names())]
pub struct UnknownNetwork(
    /// The name as given.
    pub String,
);

/// `default, none or host`.
fn network_names() -> String {
    let names: Vec<&str> = Network::ALL.iter().map(|n| n.as_str()).collect();
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// `RUN --security`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Security {
    /// `sandbox` (default).
    #[default]
    Sandbox,
    /// `insecure`: all capabilities.
    Insecure,
}

/// `--mount=type=cache,sharing=...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CacheSharing {
    /// Several builds use the cache at once.
    #[default]
    Shared,
    /// Each concurrent user gets its own copy.
    Private,
    /// Users wait for each other.
    Locked,
}

/// One `RUN --mount`.
#[derive(Clone, Debug, PartialEq)]
pub enum RunMount {
    /// `type=bind` (the default type).
    Bind {
        /// Absolute path in the container.
        target: String,
        /// Where the files come from; the build context when `from` is absent.
        from: CopyFrom,
        /// Path inside the source (`/` by default).
        source: String,
        /// `rw`: writes are allowed (and thrown away).
        rw: bool,
    },
    /// `type=cache`.
    Cache {
        /// Cache id (the target by default).
        id: String,
        /// Absolute path in the container.
        target: String,
        /// Concurrency mode.
        sharing: CacheSharing,
        /// `ro`.
        readonly: bool,
        /// A stage or image to seed an empty cache from.
        from: Option<CopyFrom>,
        /// Path inside `from`.
        source: String,
        /// Mode of the cache directory (0o755).
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// `type=tmpfs`.
    Tmpfs {
        /// Absolute path in the container.
        target: String,
        /// Size limit in bytes.
        size: Option<u64>,
    },
    /// `type=secret`.
    Secret {
        /// Secret id (the target's file name by default).
        id: String,
        /// Where the file goes; `/run/secrets/<id>` unless only `env` is set.
        target: Option<String>,
        /// An environment variable to set to the secret's value.
        env: Option<String>,
        /// Fail when the secret is not provided.
        required: bool,
        /// File mode (0o400).
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// `type=ssh`.
    Ssh {
        /// Agent id (`default`).
        id: String,
        /// Socket path (`/run/buildkit/ssh_agent.N`).
        target: String,
        /// Fail when no agent is provided.
        required: bool,
        /// Socket mode (0o600).
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
}

impl RunMount {
    /// The mount's path in the container, if it has one.
    pub fn target(&self) -> Option<&str> {
        match self {
            RunMount::Bind { target, .. }
            | RunMount::Cache { target, .. }
            | RunMount::Tmpfs { target, .. }
            | RunMount::Ssh { target, .. } => Some(target),
            RunMount::Secret { target, .. } => target.as_deref(),
        }
    }

    /// Where the mount reads from, for bind and cache mounts.
    pub fn from(&self) -> Option<&CopyFrom> {
        match self {
            RunMount::Bind { from, .. } => Some(from),
            RunMount::Cache { from, .. } => from.as_ref(),
            _ => None,
        }
    }
}

/// Where COPY (or a mount) takes files from.
// A graph holds a few of these; plain values keep matching on them simple.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum CopyFrom {
    /// The build context.
    Context,
    /// An earlier (or any other) stage, by Dockerfile index.
    Stage(usize),
    /// A directory named context (`--build-context NAME=DIR`), by name.
    Named(String),
    /// An image from the store.
    Image {
        /// The reference as written (expanded).
        reference: String,
        /// What the resolver found, shared by every step that reads the
        /// image (a config is large, and steps are many).
        image: Arc<BaseImage>,
    },
}

/// A COPY or ADD step.
#[derive(Clone, Debug, PartialEq)]
pub struct CopyStep {
    /// ADD (URLs, archive extraction) rather than COPY.
    pub add: bool,
    /// Source paths (or URLs), variables expanded, relative to the source
    /// root; heredoc sources are in `heredocs` instead.
    pub sources: Vec<String>,
    /// Heredoc sources: (file name, content after tab stripping and expansion).
    pub heredocs: Vec<(String, String)>,
    /// Absolute destination; a relative one is joined to WORKDIR. Keeps a
    /// trailing slash when written with one.
    pub dest: String,
    /// The destination is a directory: it ends in `/` or there are several
    /// sources.
    pub dest_is_dir: bool,
    /// Where the sources come from.
    pub from: CopyFrom,
    /// `--chown`, expanded.
    pub chown: Option<String>,
    /// `--chmod`, expanded (octal like `755`, or symbolic like `u+x`).
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--exclude` patterns.
    pub exclude: Vec<String>,
    /// `--parents`.
    pub parents: bool,
    /// ADD `--checksum`.
    pub checksum: Option<String>,
    /// ADD `--keep-git-dir`.
    pub keep_git_dir: bool,
    /// ADD `--unpack=true|false` (Dockerfile 1.17); `None` without the flag.
    /// See [`CopyStep::unpacks`].
    pub unpack: Option<bool>,
    /// WORKDIR in effect.
    pub workdir: String,
}

impl CopyStep {
    /// Whether a source that is an archive is unpacked into the destination
    /// rather than copied: `--unpack` says so for ADD; without it, ADD
    /// unpacks local archives and not downloads (`from_url`), as BuildKit
    /// does; COPY never unpacks.
    pub fn unpacks(&self, from_url: bool) -> bool {
        self.add && self.unpack.unwrap_or(!from_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_names_round_trip() {
        for network in Network::ALL {
            assert_eq!(network.as_str().parse::<Network>(), Ok(network));
            assert_eq!(network.to_string(), network.as_str());
        }
        assert_eq!(
            Network::ALL.map(Network::as_str),
            ["default", "none", "host"]
        );
    }

    #[test]
    fn unknown_network_lists_the_valid_names() {
        let err = "bridge".parse::<Network>().unwrap_err();
        assert_eq!(err, UnknownNetwork("bridge".to_string()));
        assert_eq!(
            err.to_string(),
            "--network must be default, none or host, not \"bridge\""
        );
        // Names are exact: no case folding, no surrounding space.
        assert!("Host".parse::<Network>().is_err());
        assert!(" none".parse::<Network>().is_err());
        assert!("".parse::<Network>().is_err());
    }

    #[test]
    fn network_serializes_as_its_name() {
        let json = serde_json::to_string(&Network::ALL).unwrap();
        assert_eq!(json, r#"["default","none","host"]"#);
        let back: Vec<Network> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Network::ALL);
    }
}
