//! `kiln build`: compile a Dockerfile, solve it against the store, tag the
//! image and print its id on stdout. Progress goes to stderr.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use kiln_cache::{Compression, Platform};
use kiln_executor::{CancelToken, Seccomp};
use kiln_frontend::{CompileOptions, Network};
use kiln_solver::{
    AttestOptions, BuildContext, IgnoreRules, Invocation, ProvenanceMode, SbomOptions, SolveOptions,
};

use super::registry::Connection;
use super::{CmdResult, Global};
use pull::{PullPolicy, RegistryResolver};

mod cache;
mod context;
mod debug_shell;
mod named;
mod platforms;
mod pull;
mod push;
mod render;
mod ssh;

/// `kiln build` arguments, as `docker build` takes them.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Name the image NAME[:TAG]; may be repeated.
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    tags: Vec<String>,
    /// After the build, push every -t name (each REGISTRY/REPO[:TAG]).
    #[arg(long)]
    push: bool,
    #[command(flatten)]
    connection: Connection,
    /// The Dockerfile [default: CONTEXT/Dockerfile]; `-` reads it from stdin.
    /// With a context from stdin or a URL, a path inside that context.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<String>,
    /// Set a build argument (`K=V`, or `K` to take it from the environment).
    #[arg(long = "build-arg", value_name = "K=V")]
    build_args: Vec<String>,
    /// A named context: `FROM NAME`, `COPY --from=NAME` and
    /// `RUN --mount=from=NAME` read it instead of the image or stage NAME.
    /// VALUE is a directory, docker-image://REF, oci-layout://DIR[:TAG], an
    /// http(s) URL of a tarball or a git URL; may be repeated.
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    build_contexts: Vec<String>,
    /// Build this stage (name or index) instead of the last.
    #[arg(long, value_name = "STAGE")]
    target: Option<String>,
    /// The platforms to build for, e.g. linux/amd64 or
    /// linux/amd64,linux/mips64le (an OCI image index of one image per
    /// platform); may be repeated. Without it, the host's platform, or the
    /// one platform the store has a stage's base image for.
    #[arg(long, value_name = "OS/ARCH[,...]")]
    platform: Vec<String>,
    /// Annotate the result: KEY=VALUE (the image manifests), or
    /// manifest:, manifest[OS/ARCH]:, index:, manifest-descriptor: or
    /// index-descriptor: KEY=VALUE; may be repeated.
    #[arg(long, value_name = "[TYPE:]KEY=VALUE")]
    annotation: Vec<String>,
    /// Write BuildKit's build result metadata (containerimage.digest,
    /// containerimage.descriptor, image.name) to FILE as JSON.
    #[arg(long = "metadata-file", value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    /// With --push: push the result by digest only, with no tag, and print
    /// REGISTRY/REPO@DIGEST (for `kiln manifest create` to join builds of
    /// several machines).
    #[arg(long = "push-by-digest", requires = "push")]
    push_by_digest: bool,
    /// When to pull FROM and --from images from their registry: always,
    /// missing (not in the store for the platform) or never.
    #[arg(long, value_enum, default_value = "missing", value_name = "WHEN")]
    pull: PullPolicy,
    /// Do not use cached results.
    #[arg(long)]
    no_cache: bool,
    /// Network for RUN steps. default: a network namespace of the build's
    /// own, shared by its steps, with outbound access through slirp4netns
    /// (DNS through its forwarder 10.0.2.3; the host's loopback is not
    /// reachable); none: only a loopback interface; host: the host's network.
    /// Rootless, default is the host's network where the user cannot open
    /// /dev/net/tun (slirp4netns needs it; kiln says so).
    #[arg(long, value_name = "MODE", value_parser = crate::cmd::network_parser())]
    network: Option<Network>,
    /// An ssh agent for RUN --mount=type=ssh: default (or ID) for
    /// $SSH_AUTH_SOCK, ID=SOCKET, or ID=KEY[,KEY...] (loaded into a
    /// short-lived ssh-agent of the build's own).
    #[arg(long, value_name = "default|ID[=SOCKET|KEY[,KEY]]")]
    ssh: Vec<String>,
    /// A secret for RUN --mount=type=secret: id=ID,src=PATH or id=ID,env=VAR.
    #[arg(long, value_name = "id=ID,src=PATH|env=VAR")]
    secret: Vec<String>,
    /// Add a label to the image (`K=V`).
    #[arg(long, value_name = "K=V")]
    label: Vec<String>,
    /// How to show progress: auto, tty, plain, quiet or json.
    #[arg(long, default_value = "auto", value_name = "MODE")]
    progress: String,
    /// Write the image id to this file.
    #[arg(long, value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// Steps to run at once [default: every step whose inputs are ready;
    /// kiln's own hashing and compression use at most one thread per CPU].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    jobs: Option<u64>,
    /// Where the result goes besides the store: type=local,dest=DIR (the
    /// filesystem), type=tar,dest=FILE|- (the filesystem as a tar) or
    /// type=oci|docker,dest=FILE|-[,name=NAME] (an image archive). A bare DIR
    /// is type=local, a bare `-` a tar on stdout.
    #[arg(short = 'o', long, value_name = "type=TYPE,dest=PATH")]
    output: Option<String>,
    /// When a RUN step fails, open an interactive shell (the stage's SHELL)
    /// in its filesystem, environment, working dir and mounts; the build
    /// ends with the step's error when the shell exits. Needs a terminal;
    /// steps run one at a time and progress is plain.
    #[arg(long = "debug-shell")]
    debug_shell: bool,
    /// Print only the image id: no progress (errors still go to stderr).
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Run the build checks (BuildKit's lint rules) and stop: nothing is
    /// built; exit status 1 when any check fails.
    #[arg(long)]
    check: bool,
    /// Accepted for docker's sake: the image is always in kiln's store.
    #[arg(long)]
    load: bool,
    /// Import build cache: type=registry,ref=REG/REPO:TAG or
    /// type=local,src=DIR[,tag=TAG]; may be repeated. A missing one is a warning.
    #[arg(long = "cache-from", value_name = "type=TYPE,...")]
    cache_from: Vec<String>,
    /// Export build cache: type=registry,ref=REG/REPO:TAG or
    /// type=local,dest=DIR[,tag=TAG], with mode=min (the image's steps, the
    /// default) or mode=max (every step), ignore-error=true.
    #[arg(long = "cache-to", value_name = "type=TYPE,...")]
    cache_to: Option<String>,
    /// Attach a SLSA v1 provenance statement (in-toto) to the image as an
    /// OCI referrer: mode=min (the inputs: Dockerfile, build args, base
    /// images, context) or mode=max (each step's command too). Secrets
    /// never appear in it.
    #[arg(long, value_name = "mode=min|max", num_args = 0..=1, require_equals = true,
          default_missing_value = "mode=min")]
    provenance: Option<String>,
    /// Attach an SPDX 2.3 SBOM to the image as an OCI referrer: the packages
    /// of its dpkg and apk databases and the files COPYed from the context;
    /// scan-stages=true lists the other stages' packages too.
    #[arg(long, value_name = "scan-stages=true", num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    sbom: Option<String>,
    /// Compression of new layers: gzip, zstd or none.
    #[arg(long, default_value = "gzip", value_name = "ALGO")]
    compression: String,
    /// Memory limit for RUN steps, e.g. 512m or 2g (swap is limited to the same).
    #[arg(long, value_name = "BYTES", value_parser = parse_memory)]
    memory: Option<u64>,
    /// Relative CPU weight for RUN steps (Docker's default is 1024).
    #[arg(long, value_name = "SHARES", value_parser = clap::value_parser!(u64).range(2..=262144))]
    cpu_shares: Option<u64>,
    /// CPU quota for RUN steps, in CPUs (e.g. 1.5).
    #[arg(long, value_name = "CPUS", value_parser = parse_cpus)]
    cpus: Option<f64>,
    /// Add NAME with ADDRESS to RUN steps' /etc/hosts (NAME:ADDRESS or
    /// NAME=ADDRESS; `host-gateway` is this machine's address on its default
    /// route).
    #[arg(long = "add-host", value_name = "NAME:ADDRESS")]
    add_host: Vec<String>,
    /// A resource limit of RUN steps, as docker takes it: NAME=SOFT[:HARD],
    /// e.g. nofile=1024:2048 (-1 for unlimited).
    #[arg(long, value_name = "NAME=SOFT[:HARD]", value_parser = parse_ulimit)]
    ulimit: Vec<kiln_executor::Ulimit>,
    /// Size of RUN steps' /dev/shm, e.g. 128m [default: 64m].
    #[arg(long = "shm-size", value_name = "BYTES", value_parser = parse_shm_size)]
    shm_size: Option<u64>,
    /// Entitlements: security.insecure lets `RUN --security=insecure` run
    /// with every capability and no seccomp filter or masked paths.
    #[arg(long, value_name = "security.insecure", value_parser = ["security.insecure"])]
    allow: Vec<String>,
    /// Maximum number of processes in a RUN step.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pids_limit: Option<u64>,
    /// Security options for RUN steps: seccomp=unconfined (no filter) or
    /// seccomp=PROFILE.json (a profile in Docker's format) instead of
    /// Docker's default seccomp profile.
    #[arg(long = "security-opt", value_name = "seccomp=unconfined|PROFILE.json")]
    security_opt: Vec<String>,
    /// The build context: a directory; `-` for stdin (a tar is the context,
    /// anything else the Dockerfile with no context); an http(s) URL of a
    /// tarball (or of a Dockerfile); or a git URL (`https://HOST/REPO.git`,
    /// `git://`, `git@HOST:REPO`, `ssh://`) with `#REF[:DIR]`.
    #[arg(value_name = "CONTEXT")]
    context: String,
}

enum Output {
    Image,
    Local(PathBuf),
    /// The final filesystem as a tar (BuildKit's tar exporter).
    Tar(Dest),
    Archive {
        format: kiln_cache::ArchiveFormat,
        dest: Dest,
        name: Option<String>,
    },
}

/// Where an archive goes: a file (written beside and renamed), or stdout.
enum Dest {
    File(PathBuf),
    Stdout,
}

impl Dest {
    fn new(path: PathBuf) -> Dest {
        if path.as_os_str() == "-" {
            Dest::Stdout
        } else {
            Dest::File(path)
        }
    }
}

fn parse_output(text: &str) -> anyhow::Result<Output> {
    // buildx's shorthands: a bare path is the local exporter, `-` a tar on stdout.
    if !text.contains('=') && !text.contains(',') {
        return Ok(match text {
            "-" => Output::Tar(Dest::Stdout),
            "" => bail!("--output: expected a directory, -, or type=TYPE,dest=PATH"),
            dir => Output::Local(PathBuf::from(dir)),
        });
    }
    let mut kind = None;
    let mut dest = None;
    let mut name = None;
    for part in text.split(',') {
        match part.split_once('=') {
            Some(("type", v)) => kind = Some(v.to_string()),
            Some(("dest", v)) => dest = Some(PathBuf::from(v)),
            Some(("name", v)) => name = Some(v.to_string()),
            _ if !part.contains('=') && kind.is_none() => kind = Some(part.to_string()),
            _ => bail!(
                "--output {text}: expected type=image, type=local,dest=DIR, type=tar,dest=FILE or type=oci|docker,dest=FILE[,name=NAME]"
            ),
        }
    }
    let format = match kind.as_deref() {
        Some("image") | None => return Ok(Output::Image),
        Some("local") => {
            let dest = dest.ok_or_else(|| anyhow::anyhow!("--output type=local needs dest=DIR"))?;
            return Ok(Output::Local(dest));
        }
        Some("tar") => {
            let dest = dest.ok_or_else(|| {
                anyhow::anyhow!("--output type=tar needs dest=FILE (or dest=- for stdout)")
            })?;
            return Ok(Output::Tar(Dest::new(dest)));
        }
        Some("oci") => kiln_cache::ArchiveFormat::Oci,
        Some("docker") => kiln_cache::ArchiveFormat::Docker,
        Some(other) => bail!("--output type={other}: expected image, local, tar, oci or docker"),
    };
    let dest = dest.ok_or_else(|| anyhow::anyhow!("--output {text}: say where with dest=FILE"))?;
    Ok(Output::Archive {
        format,
        dest: Dest::new(dest),
        name,
    })
}

fn parse_key_values(values: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for value in values {
        match value.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                map.insert(k.to_string(), v.to_string());
            }
            _ if what == "--build-arg" && !value.is_empty() => {
                // `--build-arg K` takes K from the environment, or is ignored.
                if let Ok(v) = std::env::var(value) {
                    map.insert(value.clone(), v);
                }
            }
            _ => bail!("{what} {value}: expected KEY=VALUE"),
        }
    }
    Ok(map)
}

/// `--provenance[=VALUE]`: `mode=min|max`, or BuildKit's `true`/`false`.
fn parse_provenance(value: Option<&str>) -> anyhow::Result<Option<ProvenanceMode>> {
    let Some(value) = value else {
        return Ok(None);
    };
    let mut mode = Some(ProvenanceMode::Min);
    for part in value.split(',') {
        mode = match part {
            "true" | "1" | "mode=min" | "min" => mode.map(|_| ProvenanceMode::Min),
            "mode=max" | "max" => mode.map(|_| ProvenanceMode::Max),
            "false" | "0" => None,
            _ => bail!("--provenance={value}: expected mode=min, mode=max, true or false"),
        };
    }
    Ok(mode)
}

/// `--sbom[=VALUE]`: `true`/`false`, `scan-stages=true|false`.
fn parse_sbom(value: Option<&str>) -> anyhow::Result<Option<SbomOptions>> {
    let Some(value) = value else {
        return Ok(None);
    };
    let mut sbom = Some(SbomOptions::default());
    for part in value.split(',') {
        match part {
            "true" | "1" => {}
            "false" | "0" => sbom = None,
            "scan-stages=true" | "scan-stages=1" => {
                sbom = sbom.map(|_| SbomOptions { scan_stages: true })
            }
            "scan-stages=false" | "scan-stages=0" => {}
            _ => bail!("--sbom={value}: expected true, false or scan-stages=true"),
        }
    }
    Ok(sbom)
}

/// `--security-opt` values; the last `seccomp=` wins.
fn parse_security_opts(values: &[String]) -> anyhow::Result<Seccomp> {
    let mut seccomp = Seccomp::Default;
    for value in values {
        match value.split_once('=') {
            Some(("seccomp", "unconfined")) => seccomp = Seccomp::Unconfined,
            Some(("seccomp", "")) => {
                bail!("--security-opt {value}: expected seccomp=unconfined or seccomp=PROFILE.json")
            }
            Some(("seccomp", path)) => seccomp = read_seccomp_profile(Path::new(path))?,
            _ => bail!(
                "--security-opt {value}: unknown security option; kiln takes seccomp=unconfined or seccomp=PROFILE.json"
            ),
        }
    }
    Ok(seccomp)
}

fn read_seccomp_profile(path: &Path) -> anyhow::Result<Seccomp> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "--security-opt seccomp={0}: cannot read the seccomp profile {0}",
            path.display()
        )
    })?;
    Seccomp::from_json(&bytes).with_context(|| {
        format!(
            "--security-opt seccomp={0}: the seccomp profile {0} is not valid; it takes Docker's format (defaultAction, archMap, syscalls)",
            path.display()
        )
    })
}

fn parse_secrets(values: &[String]) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut secrets = BTreeMap::new();
    for value in values {
        let mut id = None;
        let mut src = None;
        let mut env = None;
        for part in value.split(',') {
            match part.split_once('=') {
                Some(("id", v)) => id = Some(v.to_string()),
                Some(("src" | "source", v)) => src = Some(PathBuf::from(v)),
                Some(("env", v)) => env = Some(v.to_string()),
                Some(("type", "file" | "env")) => {}
                _ => bail!("--secret {value}: expected id=ID,src=PATH or id=ID,env=VAR"),
            }
        }
        let id = match (id, &env) {
            (Some(id), _) => id,
            (None, Some(env)) => env.clone(),
            (None, None) => bail!("--secret {value}: the id=ID part is missing"),
        };
        let bytes = match (src, env) {
            (Some(path), _) => std::fs::read(&path)
                .with_context(|| format!("--secret id={id}: cannot read {}", path.display()))?,
            (None, Some(var)) => std::env::var(&var)
                .with_context(|| {
                    format!("--secret id={id}: environment variable {var} is not set")
                })?
                .into_bytes(),
            (None, None) => {
                bail!("--secret {value}: say where it comes from with src=PATH or env=VAR")
            }
        };
        secrets.insert(id, bytes);
    }
    Ok(secrets)
}

pub fn run(global: &Global, args: Args) -> CmdResult {
    let flags = Flags::parse(&args)?;
    let store = global.open_store()?;
    let inputs = context::resolve(
        &args.context,
        args.file.as_deref(),
        &flags.build_args,
        &store.tmp_dir(),
    )?;
    let targets = Targets::resolve(&args, &flags, &store)?;
    let (text, file_name) = (&inputs.dockerfile, &inputs.file_name);
    let dockerfile = kiln_frontend::parse(text, file_name)?;
    if let Some(syntax) = &dockerfile.syntax {
        check_syntax(syntax, text, file_name, args.quiet)?;
    }
    let renderer = progress_renderer(&args)?;
    let default_platform = targets
        .platforms
        .is_empty()
        .then(|| Platform::host().to_string());
    let resolver = RegistryResolver::new(
        &store,
        args.pull,
        &args.connection,
        &renderer,
        default_platform,
    );
    let resolver = named::WithLayouts {
        inner: &resolver,
        store: &store,
        contexts: &targets.named,
    };
    let compiled = Compiler {
        args: &args,
        dockerfile: &dockerfile,
        inputs: &inputs,
        targets: &targets,
        resolver: &resolver,
    }
    .compile(&flags.build_args)?;
    let (graphs, invocation) = match compiled {
        Compiled::Checked(code) => return Ok(code),
        Compiled::Graphs(graphs, invocation) => (graphs, *invocation),
    };
    let context = build_context(&inputs, &store)?;
    let source_date_epoch = source_date_epoch()?;
    let ssh_agents = ssh::Agents::from_flags(&args.ssh, &store.tmp_dir())?;
    let solve_options = solve_options(
        &args,
        &flags,
        &targets,
        invocation,
        source_date_epoch,
        &ssh_agents,
    )?;
    let cancel = CancelToken::new();
    cancel_on_interrupt(&cancel);
    let graph_refs: Vec<&kiln_frontend::BuildGraph> = graphs.iter().collect();
    let result = kiln_solver::solve_platforms(
        &store,
        &context,
        &graph_refs,
        &solve_options,
        &renderer,
        &cancel,
    );
    renderer.finish();
    let built = result?;
    Delivery {
        args: &args,
        store: &store,
        built: &built,
        targets: &targets,
        cache_sources: &solve_options.cache_sources,
        renderer: &renderer,
    }
    .deliver(flags)
}

/// The flags that are parsed (and refused) before the store is opened.
struct Flags {
    output: Output,
    compression: Compression,
    push_targets: Vec<kiln_registry::Reference>,
    network: Option<Network>,
    seccomp: Seccomp,
    cache_from: Vec<cache::Location>,
    cache_to: Option<cache::Export>,
    build_args: BTreeMap<String, String>,
    provenance: Option<ProvenanceMode>,
    sbom: Option<SbomOptions>,
}

impl Flags {
    fn parse(args: &Args) -> anyhow::Result<Flags> {
        let output = match &args.output {
            Some(text) => parse_output(text)?,
            None => Output::Image,
        };
        let compression: Compression = args.compression.parse().context("--compression")?;
        let push_targets = if args.push {
            push::targets(&args.tags)?
        } else {
            Vec::new()
        };
        let network = args.network;
        if !matches!(network, Some(Network::None | Network::Host))
            && !kiln_executor::private_network_usable()
        {
            crate::cmd::note_rootless_network();
        }
        let seccomp = parse_security_opts(&args.security_opt)?;
        let cache_from = args
            .cache_from
            .iter()
            .map(|text| cache::parse_from(text))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cache_to = args.cache_to.as_deref().map(cache::parse_to).transpose()?;
        Ok(Flags {
            output,
            compression,
            push_targets,
            network,
            seccomp,
            cache_from,
            cache_to,
            build_args: parse_key_values(&args.build_args, "--build-arg")?,
            provenance: parse_provenance(args.provenance.as_deref())?,
            sbom: parse_sbom(args.sbom.as_deref())?,
        })
    }
}

/// What the build is for: its platforms (the first is the target
/// platform), manifest annotations and named contexts.
struct Targets {
    platforms: Vec<Platform>,
    annotations: platforms::Annotations,
    target_platform: Platform,
    named: named::NamedContexts,
}

impl Targets {
    fn resolve(args: &Args, flags: &Flags, store: &kiln_cache::Store) -> anyhow::Result<Targets> {
        let keep_git_dir = flags
            .build_args
            .get("BUILDKIT_CONTEXT_KEEP_GIT_DIR")
            .is_some_and(|v| matches!(v.as_str(), "1" | "true"));
        let platforms = platforms::parse_platforms(&args.platform)?;
        let annotations = platforms::Annotations::parse(&args.annotation)?;
        annotations.check(platforms.len())?;
        check_output_platforms(&flags.output, platforms.len())?;
        let target_platform = platforms.first().cloned().unwrap_or_else(Platform::host);
        let named = named::resolve(&args.build_contexts, store, keep_git_dir, &target_platform)?;
        Ok(Targets {
            platforms,
            annotations,
            target_platform,
            named,
        })
    }
}

/// The progress display `--progress`, `-q` and `--debug-shell` ask for.
fn progress_renderer(args: &Args) -> anyhow::Result<render::Renderer> {
    if args.debug_shell {
        debug_shell::check_terminal()?;
    }
    let progress = match (args.quiet, args.progress.as_str()) {
        // The shell gets the terminal: no live progress drawn over it.
        (false, "auto") if args.debug_shell => "plain",
        (false, progress) => progress,
        (true, "auto" | "quiet") => "quiet",
        (true, other) => bail!("-q prints only the image id: it cannot go with --progress {other}"),
    };
    if args.load && !args.quiet {
        eprintln!("note: --load does nothing: kiln's images are always in its store");
    }
    render::Renderer::new(progress)
}

/// What compiling (and linting) the Dockerfile ends in.
enum Compiled {
    /// `--check`: the lint's verdict, nothing built.
    Checked(ExitCode),
    /// One graph per platform, and the invocation provenance records
    /// (boxed: the two variants differ much in size).
    Graphs(Vec<kiln_frontend::BuildGraph>, Box<Invocation>),
}

/// Compiles the Dockerfile for every platform and runs the build checks.
struct Compiler<'a> {
    args: &'a Args,
    dockerfile: &'a kiln_frontend::Dockerfile,
    inputs: &'a context::Inputs,
    targets: &'a Targets,
    resolver: &'a dyn kiln_frontend::BaseImageResolver,
}

impl Compiler<'_> {
    fn compile(&self, build_args: &BTreeMap<String, String>) -> anyhow::Result<Compiled> {
        let (args, dockerfile, resolver) = (self.args, self.dockerfile, self.resolver);
        let (text, file_name) = (&self.inputs.dockerfile, &self.inputs.file_name);
        let host = Platform::host().to_string();
        let target_platform = &self.targets.target_platform;
        let invocation = Invocation {
            builder_version: env!("CARGO_PKG_VERSION").to_owned(),
            image_name: args.tags.first().cloned(),
            dockerfile_path: file_name.clone(),
            dockerfile_sha256: kiln_cache::sha256_digest(text.as_bytes())
                .digest()
                .to_owned(),
            build_args: build_args.clone(),
            target: args.target.clone(),
            platform: target_platform.to_string(),
            context: self.inputs.origin.clone(),
        };
        let mut options = CompileOptions {
            build_args: build_args.clone(),
            target: args.target.clone(),
            target_platform: target_platform.to_string(),
            build_platform: host.clone(),
            named_contexts: self.targets.named.frontend.clone(),
        };
        let mut graph = kiln_frontend::compile(dockerfile, &options, resolver);
        // With no --platform, a target stage whose base image the store has
        // for one other platform builds for that one: compiled again so that
        // TARGETPLATFORM and its kin say so.
        if self.targets.platforms.is_empty() {
            if let Some(picked) = graph
                .as_ref()
                .ok()
                .and_then(target_platform_of)
                .filter(|p| *p != host)
            {
                options.target_platform = picked;
                graph = kiln_frontend::compile(dockerfile, &options, resolver);
            }
        }
        let invocation = Invocation {
            platform: options.target_platform.clone(),
            ..invocation
        };
        let checks = super::lint::Checks {
            dockerfile,
            text,
            options: &options,
            graph: graph.as_ref().ok(),
            context: self.inputs.root.as_deref(),
            dockerfile_path: self.inputs.dockerfile_path.as_deref(),
        };
        let lint = checks.run()?;
        super::lint::print(&lint, text);
        let graph = graph?;
        for warning in &graph.warnings {
            eprintln!("warning: {warning}");
        }
        if args.check {
            return super::lint::check_result(&lint).map(Compiled::Checked);
        }
        super::lint::fail_on_error(&lint)?;
        let graphs = self.other_platforms(graph, &options)?;
        Ok(Compiled::Graphs(graphs, Box::new(invocation)))
    }

    /// `graph` and the other platforms' graphs: the same Dockerfile compiled
    /// with their TARGET* arguments (the build platform stays this
    /// machine's).
    fn other_platforms(
        &self,
        graph: kiln_frontend::BuildGraph,
        options: &CompileOptions,
    ) -> anyhow::Result<Vec<kiln_frontend::BuildGraph>> {
        let mut graphs = vec![graph];
        for platform in self.targets.platforms.iter().skip(1) {
            let options = CompileOptions {
                target_platform: platform.to_string(),
                ..options.clone()
            };
            let graph = kiln_frontend::compile(self.dockerfile, &options, self.resolver)
                .with_context(|| format!("building for {platform}"))?;
            graphs.push(graph);
        }
        Ok(graphs)
    }
}

/// The build context the solver reads: none, or the context directory with
/// its ignore rules (and, when it is a local directory, its stat cache).
fn build_context(
    inputs: &context::Inputs,
    store: &kiln_cache::Store,
) -> anyhow::Result<BuildContext> {
    Ok(match &inputs.root {
        None => BuildContext::empty()?,
        Some(root) => {
            let ignore = IgnoreRules::for_build(root, inputs.dockerfile_path.as_deref())?;
            // Fetched contexts are new directories every build: no stat cache.
            let state = match inputs.local {
                true => Some(store.state_dir("context")?),
                false => None,
            };
            BuildContext::new(root, ignore, state.as_deref())?
        }
    })
}

/// `SOURCE_DATE_EPOCH`, when set.
fn source_date_epoch() -> anyhow::Result<Option<i64>> {
    Ok(match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => Some(
            v.parse::<i64>()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v}: expected seconds since 1970"))?,
        ),
        _ => None,
    })
}

/// How the solver builds, from the flags.
fn solve_options(
    args: &Args,
    flags: &Flags,
    targets: &Targets,
    invocation: Invocation,
    source_date_epoch: Option<i64>,
    ssh_agents: &ssh::Agents,
) -> anyhow::Result<SolveOptions> {
    Ok(SolveOptions {
        // With --debug-shell one step at a time: nothing else runs (and
        // prints) while the shell is open.
        jobs: match (args.debug_shell, args.jobs) {
            (true, _) => 1,
            (false, jobs) => jobs.map_or(SolveOptions::UNLIMITED_JOBS, |n| {
                usize::try_from(n).unwrap_or(SolveOptions::UNLIMITED_JOBS)
            }),
        },
        no_cache: args.no_cache,
        cache_sources: if args.no_cache {
            Vec::new()
        } else {
            cache::import(&flags.cache_from, &args.connection)
        },
        compression: flags.compression,
        source_date_epoch,
        network: flags.network,
        secrets: parse_secrets(&args.secret)?,
        ssh: ssh_agents.sockets.clone(),
        extra_hosts: parse_add_hosts(&args.add_host)?,
        ulimits: args.ulimit.clone(),
        shm_size: args.shm_size,
        allow_insecure: args.allow.iter().any(|a| a == "security.insecure"),
        labels: parse_key_values(&args.label, "--label")?,
        limits: kiln_executor::Limits {
            memory: args.memory,
            cpu_shares: args.cpu_shares,
            cpus: args.cpus,
            pids: args.pids_limit,
        },
        seccomp: flags.seccomp.clone(),
        named_contexts: targets.named.directories.clone(),
        attest: AttestOptions {
            provenance: flags.provenance,
            sbom: flags.sbom,
            invocation,
        },
        debug_shell: args.debug_shell.then(|| {
            std::sync::Arc::new(debug_shell::TerminalShell)
                as std::sync::Arc<dyn kiln_solver::DebugShell>
        }),
        annotations: targets.annotations.manifest.clone(),
    })
}

/// What happens to the built images: stored as one image or index, tagged,
/// the cache exported, written out, pushed, described; then the id on
/// stdout.
struct Delivery<'a> {
    args: &'a Args,
    store: &'a kiln_cache::Store,
    built: &'a [kiln_solver::Built],
    targets: &'a Targets,
    cache_sources: &'a [std::sync::Arc<dyn kiln_cache::CacheSource>],
    renderer: &'a render::Renderer,
}

impl Delivery<'_> {
    fn deliver(&self, flags: Flags) -> CmdResult {
        let (args, store, built) = (self.args, self.store, self.built);
        let stored = platforms::assemble(store, built, &self.targets.annotations)?;
        for tag in &args.tags {
            store
                .tag_descriptor(tag, stored.descriptor())
                .with_context(|| format!("cannot tag the image as {tag}"))?;
        }
        if let Some(export) = &flags.cache_to {
            cache::export(store, built, self.cache_sources, export, &args.connection)?;
        }
        let id = stored.id().to_string();
        if let Some(path) = &args.iidfile {
            std::fs::write(path, &id)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        // An archive on stdout is the only thing there: the id is not printed.
        let stdout_is_archive = matches!(
            flags.output,
            Output::Tar(Dest::Stdout)
                | Output::Archive {
                    dest: Dest::Stdout,
                    ..
                }
        );
        self.write_output(flags.output, &stored)?;
        let names = self.push(&stored, &id, &flags.push_targets)?;
        if let Some(path) = &args.metadata_file {
            platforms::write_metadata(path, &platforms::metadata(&stored, &names))?;
        }
        if !stdout_is_archive {
            println!("{id}");
        }
        Ok(ExitCode::SUCCESS)
    }

    /// `--output`: the image only (nothing to do), its files, or an archive.
    fn write_output(&self, output: Output, stored: &kiln_cache::StoredRef) -> anyhow::Result<()> {
        let (store, built) = (self.store, self.built);
        match output {
            Output::Image => {}
            Output::Local(dest) => platforms::export_local(store, built, &dest)?,
            Output::Tar(dest) => write_to(&dest, |out| {
                Ok(kiln_solver::export_filesystem_tar(
                    store,
                    &built[0].layers,
                    out,
                )?)
            })?,
            Output::Archive { format, dest, name } => {
                let name = name
                    .or_else(|| self.args.tags.first().cloned())
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "name the image in the archive with -t NAME or --output ...,name=NAME"
                        )
                    })?;
                write_to(&dest, |out| {
                    Ok(kiln_cache::save_archive_refs(
                        store,
                        &[(name.clone(), stored.clone())],
                        format,
                        out,
                    )?)
                })?;
            }
        }
        Ok(())
    }

    /// `--push` (or `--push-by-digest`): the names the image was pushed as,
    /// for the metadata file.
    fn push(
        &self,
        stored: &kiln_cache::StoredRef,
        id: &str,
        push_targets: &[kiln_registry::Reference],
    ) -> anyhow::Result<Vec<String>> {
        let (args, store, renderer) = (self.args, self.store, self.renderer);
        let mut names = args.tags.clone();
        if args.push_by_digest {
            names.clear();
            for target in push_targets {
                let target = kiln_registry::Reference {
                    tag: None,
                    digest: Some(id.to_owned()),
                    ..target.clone()
                };
                push::push_one(store, stored, &target, &args.connection, renderer).with_context(
                    || format!("the image {id} is built, but pushing it to {target} failed"),
                )?;
                eprintln!("pushed {target}");
                names.push(format!("{}/{}", target.registry, target.repository));
            }
        } else {
            push::push_all(store, stored, push_targets, &args.connection, renderer)?;
        }
        Ok(names)
    }
}

/// Outputs that hold one platform refuse several, before anything is built.
fn check_output_platforms(output: &Output, platforms: usize) -> anyhow::Result<()> {
    if platforms < 2 {
        return Ok(());
    }
    match output {
        Output::Archive {
            format: kiln_cache::ArchiveFormat::Docker,
            ..
        } => bail!(
            "--output type=docker holds one platform (docker load takes one image per name): build one --platform, or use --output type=oci for the whole index"
        ),
        Output::Tar(_) => bail!(
            "--output type=tar writes one filesystem: build one --platform, or use --output type=local,dest=DIR (a directory per platform) or type=oci"
        ),
        _ => Ok(()),
    }
}

/// The platform the graph's target stage builds for: its base image's, or
/// the platform of the stage it is built on.
fn target_platform_of(graph: &kiln_frontend::BuildGraph) -> Option<String> {
    let mut stage = graph.target_stage()?;
    for _ in 0..=graph.stages.len() {
        match &stage.base {
            kiln_frontend::Base::Image { image, .. } => {
                let mut platform = format!("{}/{}", image.os, image.architecture);
                if let Some(variant) = &image.variant {
                    platform = format!("{platform}/{variant}");
                }
                return Some(platform);
            }
            kiln_frontend::Base::Scratch => return Some(stage.platform.clone()),
            kiln_frontend::Base::Stage(index) => stage = graph.stage(*index)?,
        }
    }
    None
}

/// Writes an archive to stdout, or beside its file and renamed into place, so
/// a failure leaves no half-written file.
fn write_to(
    dest: &Dest,
    write: impl FnOnce(&mut dyn std::io::Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let dest = match dest {
        Dest::Stdout => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                bail!("--output ...,dest=- writes an archive to stdout, which is a terminal: redirect it to a file or a pipe");
            }
            let mut out = std::io::BufWriter::new(stdout.lock());
            write(&mut out)?;
            out.flush().context("cannot write the archive to stdout")?;
            return Ok(());
        }
        Dest::File(path) => path,
    };
    let mut temp_name = dest.as_os_str().to_owned();
    temp_name.push(format!(".kiln-{}.tmp", std::process::id()));
    let temp = PathBuf::from(temp_name);
    let written = (|| -> anyhow::Result<()> {
        let file = std::fs::File::create(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        let mut writer = std::io::BufWriter::new(&file);
        write(&mut writer)?;
        writer.flush()?;
        drop(writer);
        file.sync_all()?;
        std::fs::rename(&temp, dest).with_context(|| format!("cannot write {}", dest.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// The `# syntax=` directive: kiln's Dockerfile frontend is built in, so
/// Docker's own frontend images are served by it (with a note) and any other
/// frontend image is an error rather than a build of something else.
fn check_syntax(syntax: &str, text: &str, file_name: &str, quiet: bool) -> anyhow::Result<()> {
    let image = syntax.split('@').next().unwrap_or(syntax);
    let repository = image
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .map_or(image, |(repo, _)| repo);
    let repository = repository
        .strip_prefix("docker.io/")
        .or_else(|| repository.strip_prefix("index.docker.io/"))
        .unwrap_or(repository);
    if matches!(
        repository,
        "docker/dockerfile" | "docker/dockerfile-upstream"
    ) {
        if !quiet {
            eprintln!("note: # syntax={syntax}: using kiln's built-in Dockerfile frontend");
        }
        return Ok(());
    }
    let line = text
        .lines()
        .position(|l| {
            let l = l.trim_start();
            l.starts_with('#')
                && l[1..]
                    .trim_start()
                    .to_ascii_lowercase()
                    .starts_with("syntax")
        })
        .map_or(1, |i| i + 1);
    bail!(
        "{file_name}:{line}: # syntax={syntax} asks for another frontend image, which kiln cannot run (its Dockerfile frontend is built in); remove the line or name docker/dockerfile:1"
    )
}

/// Ctrl-C (or SIGTERM) cancels the build: running steps are killed, queued ones
/// never start, and nothing half-done enters the store or the cache. A second
/// signal exits at once.
fn cancel_on_interrupt(cancel: &CancelToken) {
    let cancel = cancel.clone();
    // Only one handler can exist per process; failing to install it leaves the
    // default behaviour (the process dies, which the store also survives).
    let _ = ctrlc::set_handler(move || {
        if cancel.is_cancelled() {
            std::process::exit(130);
        }
        eprintln!("interrupted: cancelling the build (again to exit at once)");
        cancel.cancel();
    });
}

/// A memory size as `docker run --memory` takes it: a number with an optional
/// binary unit b, k, m or g (case-insensitive).
pub(crate) fn parse_memory(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text, "512m or 2g")?;
    // Docker refuses limits this small: the step could not even start.
    if bytes < 6 << 20 {
        return Err(format!("{text:?}: the minimum memory limit is 6m"));
    }
    Ok(bytes)
}

/// A size as docker takes them: a number with an optional binary unit b, k,
/// m or g (case-insensitive); `example` names good values in the error.
pub(crate) fn parse_size(text: &str, example: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => lower.split_at(at),
        None => (lower.as_str(), ""),
    };
    let bad = || format!("{text:?}: expected a size such as {example}");
    let multiplier: u64 = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(bad()),
    };
    let value: u64 = digits.parse().map_err(|_| bad())?;
    value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?}: too large"))
}

fn parse_ulimit(text: &str) -> Result<kiln_executor::Ulimit, String> {
    text.parse()
}

/// `--shm-size`: a size as `--memory` takes it, at least 4 KiB.
fn parse_shm_size(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text, "128m or 1g")?;
    if bytes < 4096 {
        return Err(format!("{text:?}: /dev/shm needs at least 4k"));
    }
    Ok(bytes)
}

/// `--add-host NAME:ADDRESS` (or `NAME=ADDRESS`); `host-gateway` becomes this
/// machine's address on its default route, which RUN steps reach on every
/// network but `none`.
fn parse_add_hosts(values: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut hosts = Vec::new();
    for value in values {
        let (name, address) = value
            .split_once('=')
            .or_else(|| value.split_once(':'))
            .filter(|(name, address)| !name.is_empty() && !address.is_empty())
            .ok_or_else(|| anyhow::anyhow!("--add-host {value}: expected NAME:ADDRESS"))?;
        if name.contains(char::is_whitespace) {
            bail!("--add-host {value}: a host name cannot contain spaces");
        }
        let address = if address == "host-gateway" {
            host_gateway().with_context(|| format!("--add-host {value}"))?
        } else {
            address
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .with_context(|| format!("--add-host {value}: {address:?} is not an IP address"))?
                .to_string()
        };
        hosts.push((name.to_string(), address));
    }
    Ok(hosts)
}

/// This machine's IPv4 address on its default route: the source address the
/// kernel picks for a UDP socket "connected" to a documentation address (a
/// connect sends nothing).
fn host_gateway() -> anyhow::Result<String> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").context("cannot open a UDP socket")?;
    socket
        .connect("192.0.2.1:9")
        .context("this machine has no default route: give the address instead of host-gateway")?;
    Ok(socket.local_addr()?.ip().to_string())
}

/// A CPU quota such as 0.5 or 2.
pub(crate) fn parse_cpus(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(cpus) if cpus.is_finite() && cpus > 0.0 => Ok(cpus),
        _ => Err(format!(
            "{text:?}: expected a positive number of CPUs such as 1.5"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_as_docker_takes_them() {
        assert_eq!(parse_memory("512m"), Ok(512 << 20));
        assert_eq!(parse_memory("2G"), Ok(2 << 30));
        assert_eq!(parse_memory("8192k"), Ok(8 << 20));
        assert_eq!(parse_memory("67108864"), Ok(64 << 20));
        assert_eq!(parse_memory("64mb"), Ok(64 << 20));
        assert!(parse_memory("1k").is_err());
        assert!(parse_memory("12x").is_err());
        assert!(parse_memory("m").is_err());
        assert!(parse_memory("99999999999999g").is_err());
    }

    #[test]
    fn output_shorthands_as_buildx_takes_them() {
        assert!(
            matches!(parse_output("out/dir").unwrap(), Output::Local(p) if p == Path::new("out/dir"))
        );
        assert!(matches!(
            parse_output("-").unwrap(),
            Output::Tar(Dest::Stdout)
        ));
        assert!(matches!(
            parse_output("type=tar,dest=fs.tar").unwrap(),
            Output::Tar(Dest::File(p)) if p == Path::new("fs.tar")
        ));
        assert!(matches!(
            parse_output("type=docker,dest=-").unwrap(),
            Output::Archive {
                dest: Dest::Stdout,
                ..
            }
        ));
        assert!(parse_output("type=tar").is_err());
        assert!(parse_output("type=nope,dest=x").is_err());
    }

    #[test]
    fn syntax_directives_for_docker_frontends_are_served_and_others_refused() {
        for ok in [
            "docker/dockerfile:1",
            "docker/dockerfile:1.7-labs",
            "docker.io/docker/dockerfile:1@sha256:abc",
            "docker/dockerfile-upstream:master",
            "docker/dockerfile",
        ] {
            check_syntax(ok, "", "Dockerfile", true).unwrap();
        }
        let text = "# escape=\\\n#  syntax = example.com/frontend:2\nFROM scratch\n";
        let err = check_syntax("example.com/frontend:2", text, "Dockerfile", true)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("Dockerfile:2: # syntax=example.com/frontend:2")
                && err.contains("remove the line"),
            "{err}"
        );
        assert!(check_syntax("localhost:5000/docker/dockerfile:1", "", "D", true).is_err());
    }

    #[test]
    fn add_hosts_ulimits_and_shm_sizes_as_docker_takes_them() {
        let hosts = parse_add_hosts(&["db:10.1.2.3".into(), "v6=[::1]".into()]).unwrap();
        assert_eq!(
            hosts,
            [
                ("db".into(), "10.1.2.3".into()),
                ("v6".into(), "::1".into())
            ]
        );
        assert!(parse_add_hosts(&["db:notanip".into()]).is_err());
        assert!(parse_add_hosts(&["db".into()]).is_err());
        let limit = parse_ulimit("nofile=1024:2048").unwrap();
        assert_eq!((limit.soft, limit.hard), (1024, 2048));
        assert!(parse_ulimit("nofile=2048:1024").is_err());
        assert!(parse_ulimit("files=1").unwrap_err().contains("nofile"));
        assert_eq!(parse_shm_size("128m"), Ok(128 << 20));
        assert!(parse_shm_size("1").is_err());
    }

    #[test]
    fn attestation_flags_as_buildx_takes_them() {
        assert_eq!(parse_provenance(None).unwrap(), None);
        assert_eq!(
            parse_provenance(Some("mode=min")).unwrap(),
            Some(ProvenanceMode::Min)
        );
        assert_eq!(
            parse_provenance(Some("mode=max")).unwrap(),
            Some(ProvenanceMode::Max)
        );
        assert_eq!(parse_provenance(Some("false")).unwrap(), None);
        assert!(parse_provenance(Some("mode=all")).is_err());
        assert!(parse_sbom(None).unwrap().is_none());
        assert!(!parse_sbom(Some("true")).unwrap().unwrap().scan_stages);
        assert!(
            parse_sbom(Some("scan-stages=true"))
                .unwrap()
                .unwrap()
                .scan_stages
        );
        assert!(parse_sbom(Some("false")).unwrap().is_none());
        assert!(parse_sbom(Some("generator=x")).is_err());
    }

    #[test]
    fn cpus_are_positive() {
        assert_eq!(parse_cpus("1.5"), Ok(1.5));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("-1").is_err());
        assert!(parse_cpus("NaN").is_err());
    }
}
