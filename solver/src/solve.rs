//! Solving a build graph: cache keys for every step, one vertex per distinct
//! key, the misses run in parallel through the executor, and the target
//! stage's image written to the store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kiln_cache::{
    chain_id, CacheRecord, CacheSource, Compression, Descriptor, History, HistoryBuilder,
    LayerBlob, NewImage, Platform, Store, StoredImage, StoredRef,
};
use kiln_executor::{CancelToken, DiffOptions, Mount, RootfsView, RunSpec, Snapshotter};
use kiln_frontend::{
    Base, BaseImage, BaseImageResolver, BuildGraph, CacheSharing, CopyFrom, ImageConfig, Key,
    KeyEncoder, RunMount, Stage, Step, StepKind, WorkdirStep,
};

use crate::attest::{AttestOptions, Finished};
use crate::copy::{build_tree, NoParent};
use crate::error::{io_err, poisoned, Error, Result};
use crate::fetch::{is_url, Downloads};
use crate::pattern::clean_relative;
use crate::progress::{Event, Progress};
use crate::scheduler::run_dag;
use crate::source::{content_digest, BuildContext};
use crate::views::{export_tree, exported_top, ExportOwner, ViewDest, ViewSource};

/// How to build, beyond the graph itself.
#[derive(Debug, Clone)]
pub struct SolveOptions {
    /// Steps run at once; [`SolveOptions::UNLIMITED_JOBS`] (the default)
    /// runs every step whose inputs are ready, as BuildKit does: steps that
    /// wait (sleep, network, disk) overlap, while kiln's own CPU work
    /// (context hashing, layer compression) runs on pools of one thread per
    /// CPU however many steps run.
    pub jobs: usize,
    /// Ignore cache records, local and imported (new results are still
    /// recorded).
    pub no_cache: bool,
    /// Build caches of other machines (`--cache-from`), asked in order when
    /// the store has no record for a key. Their blobs are fetched only when
    /// a layer is read: a step runs on it, a COPY --from reads it, or the
    /// image contains it.
    pub cache_sources: Vec<Arc<dyn CacheSource>>,
    /// Compression of new layers.
    pub compression: Compression,
    /// `SOURCE_DATE_EPOCH`: the image's `created` time and the clamp for file
    /// mtimes in new layers, for reproducible images.
    pub source_date_epoch: Option<i64>,
    /// `--network` for RUN steps that do not say.
    pub network: Option<kiln_frontend::Network>,
    /// `--secret` values by id.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// `--label`s added to the image's labels.
    pub labels: BTreeMap<String, String>,
    /// cgroup limits for every RUN step (`--memory`, `--cpus`, ...). Not part
    /// of cache keys: they bound a step, they do not define its result.
    pub limits: kiln_executor::Limits,
    /// The seccomp filter of every RUN step (`--security-opt seccomp=...`).
    /// Not part of cache keys either, as in Docker and BuildKit: a filter
    /// decides whether a step can succeed, not what a successful step makes.
    pub seccomp: kiln_executor::Seccomp,
    /// `--ssh`: the host's ssh agent socket for each id that
    /// `RUN --mount=type=ssh,id=ID` may name. Not part of cache keys: an agent
    /// lends keys to a step, it is not an input of its result.
    pub ssh: BTreeMap<String, PathBuf>,
    /// `--add-host` entries every RUN step's /etc/hosts gets, `(name, address)`.
    pub extra_hosts: Vec<(String, String)>,
    /// `--ulimit`s of every RUN step.
    pub ulimits: Vec<kiln_executor::Ulimit>,
    /// `--shm-size` of every RUN step's /dev/shm, in bytes.
    pub shm_size: Option<u64>,
    /// `--allow security.insecure`: `RUN --security=insecure` may run
    /// privileged; without it such a step is an error.
    pub allow_insecure: bool,
    /// `--build-context NAME=DIR` directories by name, which
    /// `CopyFrom::Named` reads as `CopyFrom::Context` reads the build
    /// context: through the same scoped reader, keyed by content.
    pub named_contexts: BTreeMap<String, Arc<BuildContext>>,
    /// SBOM and provenance to attach to the image as OCI referrers; none by
    /// default, and then the build writes nothing more than the image.
    pub attest: AttestOptions,
    /// Annotations of the image manifest (`--annotation manifest:K=V`), each
    /// for every platform or for one.
    pub annotations: Vec<ManifestAnnotation>,
    /// `kiln build --debug-shell`: called when a RUN step fails, before its
    /// error ends the build.
    pub debug_shell: Option<Arc<dyn DebugShell>>,
}

/// Where a failed RUN step can be looked into (`kiln build --debug-shell`).
pub trait DebugShell: Send + Sync + std::fmt::Debug {
    /// Called on the failed step's thread while its filesystem, mounts and
    /// network still exist; the build goes on (ends with the step's error)
    /// when it returns.
    fn open(&self, step: &FailedStep<'_>);
}

/// A RUN step that failed, as [`DebugShell::open`] gets it.
#[derive(Debug)]
pub struct FailedStep<'a> {
    /// `Dockerfile:LINE:COL: INSTRUCTION`.
    pub location: String,
    /// The step as it ran: its lowers, environment, working dir, user,
    /// network and mounts; `argv` is the step's command.
    pub spec: &'a RunSpec,
    /// The changes the step made before it failed (an overlay upper dir).
    pub upper: PathBuf,
    /// An empty directory for a sandbox of the caller's own (removed later).
    pub scratch: PathBuf,
    /// The SHELL in effect at the step (`["/bin/sh", "-c"]` unless set).
    pub shell: Vec<String>,
    /// Why the step failed.
    pub error: &'a kiln_executor::Error,
}

/// An annotation of the image manifests a build writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestAnnotation {
    /// Only the image of this platform gets it (`manifest[linux/arm64]:K=V`).
    pub platform: Option<Platform>,
    /// The annotation's key.
    pub key: String,
    /// Its value.
    pub value: String,
}

impl SolveOptions {
    /// `jobs` without a limit.
    pub const UNLIMITED_JOBS: usize = usize::MAX;
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions {
            jobs: SolveOptions::UNLIMITED_JOBS,
            no_cache: false,
            cache_sources: Vec::new(),
            compression: Compression::Gzip,
            source_date_epoch: None,
            network: None,
            secrets: BTreeMap::new(),
            labels: BTreeMap::new(),
            limits: kiln_executor::Limits::default(),
            seccomp: kiln_executor::Seccomp::Default,
            ssh: BTreeMap::new(),
            extra_hosts: Vec::new(),
            ulimits: Vec::new(),
            shm_size: None,
            allow_insecure: false,
            named_contexts: BTreeMap::new(),
            attest: AttestOptions::default(),
            debug_shell: None,
            annotations: Vec::new(),
        }
    }
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct Built {
    /// The image, in the store (not yet tagged).
    pub image: StoredImage,
    /// Its layers, bottom first.
    pub layers: Vec<LayerBlob>,
    /// Steps run, steps taken from the cache.
    pub ran: usize,
    /// Steps whose result came from the cache.
    pub cached: usize,
    /// The cache record of every step, for `--cache-to`.
    pub records: Vec<BuiltRecord>,
    /// The attestations attached to the image (stored as its referrers).
    pub attestations: Vec<Descriptor>,
}

/// A step's cache record, as a build cache export takes it.
#[derive(Debug, Clone)]
pub struct BuiltRecord {
    /// The step's cache key.
    pub key: [u8; 32],
    /// What the step made.
    pub record: CacheRecord,
    /// Whether the step is one of the target stage's (its layer, if any, is
    /// in the image): what `mode=min` exports.
    pub in_image: bool,
}

/// Finds FROM images in the store.
#[derive(Debug)]
pub struct StoreResolver<'a> {
    store: &'a Store,
}

impl<'a> StoreResolver<'a> {
    /// A resolver over `store`.
    pub fn new(store: &'a Store) -> Self {
        StoreResolver { store }
    }
}

impl StoreResolver<'_> {
    /// A stored image as the frontend sees a base image.
    pub fn describe(
        image: &StoredImage,
        reference: &str,
    ) -> std::result::Result<BaseImage, String> {
        let config = match image.raw_config.get("config") {
            Some(value) if !value.is_null() => serde_json::from_value::<ImageConfig>(value.clone())
                .map_err(|e| format!("image {reference}: its config does not parse: {e}"))?,
            _ => ImageConfig::default(),
        };
        let platform = image.platform();
        Ok(BaseImage {
            digest: image.id().to_string(),
            config,
            os: platform.os,
            architecture: platform.architecture,
            variant: platform.variant,
        })
    }
}

impl BaseImageResolver for StoreResolver<'_> {
    /// A single image whatever its platform (the caller judges it); of a
    /// multi-platform index, the entry for `platform`.
    fn resolve(
        &self,
        reference: &str,
        platform: &str,
    ) -> std::result::Result<Option<BaseImage>, String> {
        let Some(stored) = self
            .store
            .resolve_ref(reference)
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let image = match stored {
            StoredRef::Image(image) => image,
            index @ StoredRef::Index(_) => {
                let wanted = parse_platform(platform).map_err(|e| e.to_string())?;
                match self
                    .store
                    .image_for(&index, &wanted)
                    .map_err(|e| e.to_string())?
                {
                    Some(image) => image,
                    None => return Ok(None),
                }
            }
        };
        Self::describe(&image, reference).map(Some)
    }
}

/// A layer of a stage: known from the start (a base image's) or made by a
/// vertex (which may make none).
#[derive(Debug, Clone)]
enum LayerRef {
    Fixed(Box<LayerBlob>),
    Vertex(usize),
}

#[derive(Debug, Clone)]
enum HistoryRef {
    Fixed(History),
    Vertex { created_by: String, vertex: usize },
    Empty { created_by: String },
}

/// What is known about a stage before anything runs.
#[derive(Debug, Clone)]
struct StagePlan {
    key: Key,
    layers: Vec<LayerRef>,
    history: Vec<HistoryRef>,
    last_vertex: Option<usize>,
    platform: Platform,
}

/// One distinct piece of work.
struct Vertex<'g> {
    key: Key,
    step: &'g Step,
    stage: &'g Stage,
    parent_layers: Vec<LayerRef>,
    /// Layers of the stage or image COPY --from reads, per Dockerfile stage
    /// index or image digest.
    from_layers: HashMap<String, Vec<LayerRef>>,
    /// Content digests of the context sources RUN binds, as the key has them.
    context_mounts: HashMap<String, Key>,
    platform: Platform,
    deps: Vec<usize>,
}

/// Runs `graph` and writes the target stage's image to `store`.
pub fn solve(
    store: &Store,
    context: &BuildContext,
    graph: &BuildGraph,
    options: &SolveOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<Built> {
    solve_platforms(store, context, &[graph], options, progress, cancel)?
        .pop()
        .ok_or_else(|| Error::Invalid("the build made no image".into()))
}

/// Runs several graphs of one Dockerfile, one per target platform, as one
/// DAG and writes each target stage's image, in the graphs' order. What the
/// graphs share is done once: a step with the same cache key in several
/// graphs (every step of a `FROM --platform=$BUILDPLATFORM` stage that does
/// not read a TARGET* argument) is one vertex, and each set of context files
/// is hashed once. Platforms run concurrently as far as the DAG allows; the
/// first failure cancels the rest and, with several graphs, names the
/// platform of the step that failed.
pub fn solve_platforms(
    store: &Store,
    context: &BuildContext,
    graphs: &[&BuildGraph],
    options: &SolveOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<Vec<Built>> {
    let started = now_epoch();
    let stage_lists = graphs
        .iter()
        .map(|graph| graph.needed_stages())
        .collect::<std::result::Result<Vec<_>, _>>()?;
    prepare_seccomp_early(&stage_lists, options);
    let downloads = Downloads::new(&store.tmp_dir())?;
    // Plan the vertices: one per distinct cache key, over every graph.
    let mut planner = Planner {
        store,
        context,
        options,
        downloads: &downloads,
        vertices: Vec::new(),
        by_key: HashMap::new(),
        digests: HashMap::new(),
    };
    let plans = stage_lists
        .iter()
        .map(|stages| planner.plan(stages))
        .collect::<Result<Vec<_>>>()?;
    let vertices = planner.vertices;
    let multi = graphs.len() > 1;
    announce_steps(progress, &vertices, multi);
    check_emulation(store, options, &vertices)?;
    // Run them: from the cache or through the executor.
    let made = Runs {
        store,
        context,
        options,
        progress,
        cancel,
        downloads: &downloads,
        multi,
    }
    .run(&vertices)?;
    // Assemble and write each target image.
    let solved = Solved {
        store,
        context,
        options,
        progress,
        vertices: &vertices,
        made: &made,
        started,
    };
    graphs
        .iter()
        .zip(&stage_lists)
        .zip(&plans)
        .map(|((graph, stages), plans)| solved.image(graph, stages, plans))
        .collect()
}

/// Compiles the seccomp filter while the base images and the context are
/// read, when some RUN step will need it: the first one need not wait.
fn prepare_seccomp_early(stage_lists: &[Vec<&Stage>], options: &SolveOptions) {
    let runs_steps = stage_lists.iter().flatten().any(|stage| {
        stage
            .steps
            .iter()
            .any(|s| matches!(s.kind, StepKind::Run(_)))
    });
    if runs_steps {
        let seccomp = options.seccomp.clone();
        std::thread::spawn(move || kiln_executor::prepare_seccomp(&seccomp));
    }
}

/// Tells the progress display about every vertex before anything runs.
fn announce_steps(progress: &dyn Progress, vertices: &[Vertex<'_>], multi: bool) {
    for (id, vertex) in vertices.iter().enumerate() {
        let count = vertex.stage.steps.len();
        let index = vertex
            .stage
            .steps
            .iter()
            .position(|s| std::ptr::eq(s, vertex.step))
            .map_or(0, |i| i + 1);
        let name = vertex
            .stage
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{}", vertex.stage.index));
        progress.event(Event::Step {
            id: id + 1,
            stage: if multi {
                format!("{} {name}", vertex.platform)
            } else {
                name
            },
            index,
            count,
            text: vertex.step.text.to_string(),
            line: vertex.step.span.line as usize,
        });
    }
}

/// What the vertices made, by vertex id.
#[derive(Debug, Default)]
struct Made {
    /// Each vertex's layer (`None`: the step changed no file).
    layers: HashMap<usize, Option<LayerBlob>>,
    /// When each vertex's result was first made (seconds): a cached result
    /// keeps its time, so a fully cached build gives the same image id.
    made_at: HashMap<usize, i64>,
    /// Each vertex's cache record.
    records: HashMap<usize, CacheRecord>,
    /// Steps run.
    ran: usize,
    /// Steps whose result came from the cache.
    cached: usize,
}

/// One vertex's result, from the cache or just made.
struct Outcome {
    layer: Option<LayerBlob>,
    made_at: i64,
    record: CacheRecord,
    from_cache: bool,
}

/// [`Made`] while the build's threads fill it: one lock for all of it.
#[derive(Debug, Default)]
struct Outcomes(Mutex<Made>);

impl Outcomes {
    fn add(&self, id: usize, outcome: Outcome) -> Result<()> {
        let mut made = self.0.lock().map_err(poisoned("list of step results"))?;
        made.layers.insert(id, outcome.layer);
        made.made_at.insert(id, outcome.made_at);
        made.records.insert(id, outcome.record);
        if outcome.from_cache {
            made.cached += 1;
        } else {
            made.ran += 1;
        }
        Ok(())
    }

    /// The layers `refs` name; every vertex among them must be done.
    fn layers(&self, refs: &[LayerRef]) -> Result<Vec<LayerBlob>> {
        let made = self.0.lock().map_err(poisoned("list of step results"))?;
        resolve_layers(refs, &made.layers)
    }

    fn into_made(self) -> Result<Made> {
        self.0
            .into_inner()
            .map_err(poisoned("list of step results"))
    }
}

/// Runs the planned vertices as one DAG.
struct Runs<'a> {
    store: &'a Store,
    context: &'a BuildContext,
    options: &'a SolveOptions,
    progress: &'a dyn Progress,
    cancel: &'a CancelToken,
    downloads: &'a Downloads,
    /// Whether the build makes several platforms (errors name theirs).
    multi: bool,
}

impl Runs<'_> {
    /// Takes each vertex from the cache or runs it, independent ones at
    /// once; the first failure cancels the others.
    fn run(&self, vertices: &[Vertex<'_>]) -> Result<Made> {
        let (store, context, options) = (self.store, self.context, self.options);
        let snapshotter = Snapshotter::new(store.snapshots_dir())?;
        let outcomes = Outcomes::default();
        // Declared before the runner so it outlives every step: dropping it at
        // the end of the build (also on errors and cancellation) stops the
        // network.
        let network = BuildNetwork::default();
        let runner = Runner {
            store,
            context,
            options,
            progress: self.progress,
            cancel: self.cancel,
            network: &network,
            snapshotter: &snapshotter,
            outcomes: &outcomes,
            downloads: self.downloads,
            sources: &options.cache_sources,
            mounted_later: &mounted_later(vertices),
        };
        let deps: Vec<Vec<usize>> = vertices.iter().map(|v| v.deps.clone()).collect();
        let outcome = run_dag(&deps, options.jobs, self.cancel, |id| {
            let vertex = &vertices[id];
            let outcome = match self.cached(vertex)? {
                Some(outcome) => {
                    self.progress.event(Event::Cached { id: id + 1 });
                    outcome
                }
                None => self.run_fresh(&runner, id, vertex)?,
            };
            outcomes.add(id, outcome)
        });
        context.save_stat_cache()?;
        for named in options.named_contexts.values() {
            named.save_stat_cache()?;
        }
        outcome?;
        outcomes.into_made()
    }

    /// The vertex's result from a cache record, local or imported, unless
    /// the build ignores the cache.
    fn cached(&self, vertex: &Vertex<'_>) -> Result<Option<Outcome>> {
        if self.options.no_cache {
            return Ok(None);
        }
        let record = match self.store.cache_get(&vertex.key.0)? {
            Some(record) => Some(record),
            None => imported_record(self.store, &self.options.cache_sources, &vertex.key.0)?,
        };
        Ok(record.and_then(|record| {
            Some(Outcome {
                layer: layer_of_record(&record)?,
                made_at: created_of_record(&record),
                record,
                from_cache: true,
            })
        }))
    }

    /// Runs the vertex and records its result in the store's cache. A
    /// failure is located at the vertex's instruction (and platform).
    fn run_fresh(&self, runner: &Runner<'_>, id: usize, vertex: &Vertex<'_>) -> Result<Outcome> {
        self.progress.event(Event::Started { id: id + 1 });
        let started = Instant::now();
        let layer = match runner.run_vertex(id, vertex) {
            Ok(layer) => layer,
            Err(err) => {
                let mut err = Error::at(vertex.step, err);
                if self.multi {
                    err = err.on_platform(&vertex.platform);
                }
                if !err.is_cancelled() {
                    self.progress.event(Event::Failed {
                        id: id + 1,
                        error: err.chain_text(),
                    });
                }
                return Err(err);
            }
        };
        let made_at = self.options.source_date_epoch.unwrap_or_else(now_epoch);
        let mut payload = record_payload(&layer);
        payload["created"] = serde_json::json!(made_at);
        let record = CacheRecord {
            blobs: layer.iter().map(|l| l.descriptor.clone()).collect(),
            payload,
        };
        self.store.cache_put(&vertex.key.0, &record)?;
        self.progress.event(Event::Done {
            id: id + 1,
            seconds: started.elapsed().as_secs_f64(),
        });
        Ok(Outcome {
            layer,
            made_at,
            record,
            from_cache: false,
        })
    }
}

/// Plans graphs into one list of vertices: one per distinct cache key.
struct Planner<'a, 'g> {
    store: &'a Store,
    context: &'a BuildContext,
    options: &'a SolveOptions,
    downloads: &'a Downloads,
    vertices: Vec<Vertex<'g>>,
    by_key: HashMap<Key, usize>,
    /// Content digests of context sources by (context, sources): several
    /// graphs of one build hash each set of files once.
    digests: HashMap<(usize, Vec<String>), Key>,
}

impl<'g> Planner<'_, 'g> {
    /// The content digest of `sources` in `context`, computed once.
    fn content_digest(&mut self, context: &BuildContext, sources: &[String]) -> Result<Key> {
        let memo = (std::ptr::from_ref(context) as usize, sources.to_vec());
        if let Some(digest) = self.digests.get(&memo) {
            return Ok(*digest);
        }
        let digest = content_digest(context, sources)?;
        self.digests.insert(memo, digest);
        Ok(digest)
    }

    /// Plans one graph's needed stages: their keys, layers and history, and
    /// a vertex for every step whose key is new.
    fn plan(&mut self, stages: &[&'g Stage]) -> Result<HashMap<usize, StagePlan>> {
        let mut plans: HashMap<usize, StagePlan> = HashMap::new();
        for stage in stages {
            let mut plan = self.base_plan(stage, &plans)?;
            for step in &stage.steps {
                let inputs = self.step_inputs(step, &plan, &plans)?;
                self.add_step(stage, step, &mut plan, inputs);
            }
            plans.insert(stage.index, plan);
        }
        Ok(plans)
    }

    /// What a stage starts from: nothing, a stored image, or an earlier
    /// stage's plan.
    fn base_plan(&self, stage: &Stage, plans: &HashMap<usize, StagePlan>) -> Result<StagePlan> {
        Ok(match &stage.base {
            Base::Scratch => StagePlan {
                key: KeyEncoder::new("kiln.base.v1").str("scratch", "").finish(),
                layers: Vec::new(),
                history: Vec::new(),
                last_vertex: None,
                platform: parse_platform(&stage.platform)?,
            },
            Base::Image { reference, image } => {
                let stored = resolve_image(self.store, reference, &image.digest)?;
                StagePlan {
                    key: KeyEncoder::new("kiln.base.v1")
                        .str("image", &image.digest)
                        .finish(),
                    layers: fixed_layers(&stored)?,
                    history: stored
                        .history()
                        .iter()
                        .cloned()
                        .map(HistoryRef::Fixed)
                        .collect(),
                    last_vertex: None,
                    platform: Platform {
                        os: image.os.clone(),
                        architecture: image.architecture.clone(),
                        variant: image.variant.clone(),
                    },
                }
            }
            Base::Stage(index) => plans.get(index).cloned().ok_or_else(|| {
                Error::Invalid(format!("stage {index} is used before it is built"))
            })?,
        })
    }

    /// A step's cache key and what it reads besides its parent: the content
    /// of context files, downloads and checkouts, other stages and images.
    fn step_inputs(
        &mut self,
        step: &'g Step,
        plan: &StagePlan,
        plans: &HashMap<usize, StagePlan>,
    ) -> Result<StepInputs> {
        let mut inputs = StepInputs {
            key: KeyEncoder::new("kiln.step.v1"),
            deps: plan.last_vertex.into_iter().collect(),
            from_layers: HashMap::new(),
            context_mounts: HashMap::new(),
        };
        inputs
            .key
            .key("definition", &step.digest)
            .key("parent", &plan.key)
            .str("platform", &plan.platform.to_string());
        match &step.kind {
            StepKind::Copy(copy) => {
                if let Some(context) = directory_of(self.context, self.options, &copy.from)? {
                    self.key_copy_sources(copy, context, &mut inputs.key)
                        .map_err(|e| Error::at(step, e))?;
                }
                inputs.read_from(self.store, step, &copy.from, plans)?;
            }
            StepKind::Run(run) => {
                for mount in &run.mounts {
                    let Some(from) = mount.from() else {
                        continue;
                    };
                    if let (Some(context), RunMount::Bind { source, .. }) =
                        (directory_of(self.context, self.options, from)?, mount)
                    {
                        let digest = self
                            .content_digest(context, std::slice::from_ref(source))
                            .map_err(|e| Error::at(step, e))?;
                        inputs.key.key("mount-content", &digest);
                        inputs
                            .context_mounts
                            .insert(mount_key(from, source), digest);
                    }
                    inputs.read_from(self.store, step, from, plans)?;
                }
                inputs.key.opt_str(
                    "network-default",
                    self.options.network.map(kiln_frontend::Network::as_str),
                );
            }
            _ => {}
        }
        Ok(inputs)
    }

    /// Keys what a COPY/ADD reads from a directory context: the files'
    /// content, a git source's commit, a URL's pinned checksum or
    /// downloaded content.
    fn key_copy_sources(
        &mut self,
        copy: &kiln_frontend::CopyStep,
        context: &BuildContext,
        key: &mut KeyEncoder,
    ) -> Result<()> {
        let is_git = |s: &str| copy.add && crate::remote_context::is_git_url(s);
        let (urls, paths): (Vec<String>, Vec<String>) = copy
            .sources
            .iter()
            .cloned()
            .partition(|s| is_git(s) || is_url(s));
        let digest = self.content_digest(context, &paths)?;
        key.key("content", &digest);
        for url in &urls {
            if is_git(url) {
                // A repository is keyed by the commit its ref resolves to: an
                // unchanged commit is a hit.
                let checkout = self.downloads.git(url, copy.keep_git_dir)?;
                key.str("git", url).str("git-commit", &checkout.commit);
                continue;
            }
            // The content is what counts: a pinned checksum names it without
            // downloading, else the download.
            let content = match (&copy.checksum, copy.add) {
                (Some(sum), _) => sum.clone(),
                (None, true) => self.downloads.get(url, None)?.digest,
                (None, false) => String::new(),
            };
            key.str("url", url).str("url-content", &content);
        }
        Ok(())
    }

    /// Adds a step to its stage's plan: a config-only step to the history,
    /// any other as a vertex (the existing one for a key seen before).
    fn add_step(
        &mut self,
        stage: &'g Stage,
        step: &'g Step,
        plan: &mut StagePlan,
        inputs: StepInputs,
    ) {
        let key = inputs.key.finish();
        if matches!(step.kind, StepKind::Config) {
            // Config-only steps (LABEL, EXPOSE, CMD, ...) change the image
            // config, not the filesystem: they stay out of the key chain so
            // editing one does not re-run the steps after it. What a later
            // step does see (ENV, USER, WORKDIR, SHELL) is in its own
            // definition digest.
            if step.in_history {
                plan.history.push(HistoryRef::Empty {
                    created_by: step.created_by.clone(),
                });
            }
            return;
        }
        plan.key = key;
        let mut deps = inputs.deps;
        deps.sort_unstable();
        deps.dedup();
        let vertex = match self.by_key.get(&key) {
            Some(&existing) => existing,
            None => {
                self.vertices.push(Vertex {
                    key,
                    step,
                    stage,
                    parent_layers: plan.layers.clone(),
                    from_layers: inputs.from_layers,
                    context_mounts: inputs.context_mounts,
                    platform: plan.platform.clone(),
                    deps,
                });
                self.by_key.insert(key, self.vertices.len() - 1);
                self.vertices.len() - 1
            }
        };
        plan.layers.push(LayerRef::Vertex(vertex));
        plan.history.push(HistoryRef::Vertex {
            created_by: step.created_by.clone(),
            vertex,
        });
        plan.last_vertex = Some(vertex);
    }
}

/// What a step reads, as its vertex records it.
struct StepInputs {
    /// The cache key, being built.
    key: KeyEncoder,
    /// The vertices it waits for.
    deps: Vec<usize>,
    /// Layers of the stages and images it reads (see [`Vertex::from_layers`]).
    from_layers: HashMap<String, Vec<LayerRef>>,
    /// Content digests of the context sources it binds.
    context_mounts: HashMap<String, Key>,
}

impl StepInputs {
    /// Adds a stage or image the step reads (COPY --from, RUN --mount
    /// from=) to its key, dependencies and layers.
    fn read_from(
        &mut self,
        store: &Store,
        step: &Step,
        from: &CopyFrom,
        plans: &HashMap<usize, StagePlan>,
    ) -> Result<()> {
        match from {
            CopyFrom::Context | CopyFrom::Named(_) => {}
            CopyFrom::Stage(index) => {
                let source = plans.get(index).ok_or_else(|| {
                    Error::at(
                        step,
                        Error::Invalid(format!("stage {index} is not built before this step")),
                    )
                })?;
                self.key.key("from-stage", &source.key);
                self.deps.extend(source.last_vertex);
                self.from_layers
                    .insert(format!("stage:{index}"), source.layers.clone());
            }
            CopyFrom::Image { reference, image } => {
                self.key.str("from-image", &image.digest);
                let stored = resolve_image(store, reference, &image.digest)?;
                self.from_layers
                    .insert(format!("image:{}", image.digest), fixed_layers(&stored)?);
            }
        }
        Ok(())
    }
}

/// A stored image's layers, as a plan refers to them.
fn fixed_layers(image: &StoredImage) -> Result<Vec<LayerRef>> {
    Ok(image
        .layers()?
        .into_iter()
        .map(|l| LayerRef::Fixed(Box::new(l)))
        .collect())
}

/// What the DAG made, shared by the images of every graph.
struct Solved<'a, 'g> {
    store: &'a Store,
    context: &'a BuildContext,
    options: &'a SolveOptions,
    progress: &'a dyn Progress,
    vertices: &'a [Vertex<'g>],
    made: &'a Made,
    started: i64,
}

impl Solved<'_, '_> {
    /// Writes the image of `graph`'s target stage (and its attestations).
    fn image(
        &self,
        graph: &BuildGraph,
        stages: &[&Stage],
        plans: &HashMap<usize, StagePlan>,
    ) -> Result<Built> {
        let target = graph
            .target_stage()
            .ok_or_else(|| Error::Invalid("the build graph has no target stage".into()))?;
        let plan = plans
            .get(&target.index)
            .ok_or_else(|| Error::Invalid("the target stage was not planned".into()))?;
        self.progress.event(Event::Exporting {
            what: "writing image".into(),
        });
        let layers = resolve_layers(&plan.layers, &self.made.layers)?;
        for layer in &layers {
            kiln_cache::ensure_blob(self.store, &self.options.cache_sources, &layer.descriptor)?;
        }
        let image = self.write_image(graph, target, plan, &layers)?;
        let attestations = if self.options.attest.any() {
            self.attest(stages, target, plans, plan, &image, &layers)?
        } else {
            Vec::new()
        };
        Ok(Built {
            image,
            layers,
            ran: self.made.ran,
            cached: self.made.cached,
            records: self.records(plans, plan),
            attestations,
        })
    }

    /// When vertex `v`'s result was made, as the image records it.
    fn vertex_time(&self, v: usize) -> Option<i64> {
        self.options
            .source_date_epoch
            .or_else(|| self.made.made_at.get(&v).copied())
    }

    /// The image's `created` time and its history: a step's entry has the
    /// time its result was made; the image is as old as its newest step (a
    /// build of only metadata steps is made now).
    fn history(&self, plan: &StagePlan) -> Result<(String, Vec<History>)> {
        let newest = plan
            .history
            .iter()
            .filter_map(|h| match h {
                HistoryRef::Vertex { vertex, .. } => self.vertex_time(*vertex),
                _ => None,
            })
            .max();
        let created_now = rfc3339(
            self.options
                .source_date_epoch
                .or(newest)
                .unwrap_or_else(now_epoch),
        );
        let mut history = Vec::new();
        for entry in &plan.history {
            history.push(match entry {
                HistoryRef::Fixed(h) => h.clone(),
                HistoryRef::Empty { created_by } => history_entry(created_by, true, &created_now)?,
                HistoryRef::Vertex { created_by, vertex } => {
                    let empty = self.made.layers.get(vertex).is_none_or(|l| l.is_none());
                    let when = self
                        .vertex_time(*vertex)
                        .map(rfc3339)
                        .unwrap_or_else(|| created_now.clone());
                    history_entry(created_by, empty, &when)?
                }
            });
        }
        Ok((created_now, history))
    }

    /// Writes the image (config with the build's labels, layers, history)
    /// and its manifest annotations to the store.
    fn write_image(
        &self,
        graph: &BuildGraph,
        target: &Stage,
        plan: &StagePlan,
        layers: &[LayerBlob],
    ) -> Result<StoredImage> {
        let (created, history) = self.history(plan)?;
        let mut config = graph.config.clone();
        if !self.options.labels.is_empty() {
            let labels = config.labels.get_or_insert_with(BTreeMap::new);
            for (k, v) in &self.options.labels {
                labels.insert(k.clone(), v.clone());
            }
        }
        let config = serde_json::to_value(&config).map_err(|e| Error::Invalid(e.to_string()))?;
        let image = self.store.write_image(NewImage {
            platform: plan.platform.clone(),
            created: Some(created),
            author: target.author.clone(),
            config,
            layers: layers.to_vec(),
            history,
        })?;
        let annotations: BTreeMap<String, String> = self
            .options
            .annotations
            .iter()
            .filter(|a| {
                a.platform
                    .as_ref()
                    .is_none_or(|p| p.matches(&plan.platform))
            })
            .map(|a| (a.key.clone(), a.value.clone()))
            .collect();
        Ok(self.store.annotate_manifest(&image, &annotations)?)
    }

    /// The cache records of this graph's vertices (every vertex is in the
    /// history of its stage), in vertex order, each saying whether its
    /// layer is in the image.
    fn records(&self, plans: &HashMap<usize, StagePlan>, plan: &StagePlan) -> Vec<BuiltRecord> {
        let vertices_of = |history: &[HistoryRef]| -> HashSet<usize> {
            history
                .iter()
                .filter_map(|h| match h {
                    HistoryRef::Vertex { vertex, .. } => Some(*vertex),
                    _ => None,
                })
                .collect()
        };
        let in_image = vertices_of(&plan.history);
        let mine: HashSet<usize> = plans
            .values()
            .flat_map(|plan| vertices_of(&plan.history))
            .collect();
        let mut records: Vec<(usize, &CacheRecord)> = self
            .made
            .records
            .iter()
            .filter(|(id, _)| mine.contains(id))
            .map(|(id, record)| (*id, record))
            .collect();
        records.sort_by_key(|(id, _)| *id);
        records
            .into_iter()
            .filter_map(|(id, record)| {
                Some(BuiltRecord {
                    key: self.vertices.get(id)?.key.0,
                    record: record.clone(),
                    in_image: in_image.contains(&id),
                })
            })
            .collect()
    }

    /// Makes the SBOM and provenance the build asks for and attaches them
    /// to `image`.
    fn attest(
        &self,
        stages: &[&Stage],
        target: &Stage,
        plans: &HashMap<usize, StagePlan>,
        plan: &StagePlan,
        image: &StoredImage,
        layers: &[LayerBlob],
    ) -> Result<Vec<Descriptor>> {
        let results = &self.made.layers;
        let finished = Finished {
            stages,
            image,
            layers,
            copied: copied_layers(&plan.history, self.vertices, results),
            other_stages: stages
                .iter()
                .filter(|stage| stage.index != target.index)
                .filter_map(|stage| {
                    let plan = plans.get(&stage.index)?;
                    let layers = resolve_layers(&plan.layers, results).ok()?;
                    Some((stage.display_name(), layers))
                })
                .collect(),
            context: self.context,
            started: self.started,
            source_date_epoch: self.options.source_date_epoch,
        };
        self.progress.event(Event::Exporting {
            what: "attaching attestations".into(),
        });
        // Each platform's provenance names its own platform.
        let mut attest = self.options.attest.clone();
        attest.invocation.platform = plan.platform.to_string();
        crate::attest::attach(self.store, &finished, &attest)
    }
}

/// Every platform whose RUN steps must run here (no cache record has
/// them) can: natively or through qemu-user's binfmt_misc handler. Checked
/// before anything runs, so a missing handler costs nothing.
fn check_emulation(store: &Store, options: &SolveOptions, vertices: &[Vertex<'_>]) -> Result<()> {
    let mut checked: Vec<&Platform> = Vec::new();
    for vertex in vertices {
        if !matches!(vertex.step.kind, StepKind::Run(_)) || checked.contains(&&vertex.platform) {
            continue;
        }
        let cached = !options.no_cache
            && (store.cache_get(&vertex.key.0)?.is_some()
                || options
                    .cache_sources
                    .iter()
                    .any(|source| source.lookup(&vertex.key.0).is_some()));
        if cached {
            continue;
        }
        kiln_executor::check_binfmt(&vertex.platform.architecture).map_err(|source| {
            Error::Emulation {
                platform: Box::new(vertex.platform.clone()),
                source,
            }
        })?;
        checked.push(&vertex.platform);
    }
    Ok(())
}

/// The layers the image's COPY and ADD steps made from a context (the
/// files an SBOM lists).
fn copied_layers(
    history: &[HistoryRef],
    vertices: &[Vertex<'_>],
    results: &HashMap<usize, Option<LayerBlob>>,
) -> Vec<LayerBlob> {
    history
        .iter()
        .filter_map(|entry| match entry {
            HistoryRef::Vertex { vertex, .. } => Some(*vertex),
            _ => None,
        })
        .filter(|vertex| {
            vertices.get(*vertex).is_some_and(|v| {
                matches!(&v.step.kind, StepKind::Copy(copy)
                    if matches!(copy.from, CopyFrom::Context | CopyFrom::Named(_)))
            })
        })
        .filter_map(|vertex| results.get(&vertex).cloned().flatten())
        .collect()
}

fn parse_platform(text: &str) -> Result<Platform> {
    Platform::from_str(text).map_err(|e| Error::Invalid(format!("platform {text}: {e}")))
}

fn resolve_image(store: &Store, reference: &str, digest: &str) -> Result<StoredImage> {
    store.resolve(digest)?.ok_or_else(|| {
        Error::Invalid(format!(
            "image {reference} ({digest}) is not in the store; make one with `kiln import` or `kiln load`"
        ))
    })
}

/// The first imported record under `key` that kiln can use, kept as a
/// local record too (a miss again until its blobs are fetched, since they
/// are fetched only when needed).
fn imported_record(
    store: &Store,
    sources: &[Arc<dyn CacheSource>],
    key: &[u8; 32],
) -> Result<Option<CacheRecord>> {
    let Some(record) = sources
        .iter()
        .filter_map(|source| source.lookup(key))
        .find(|record| layer_of_record(record).is_some())
    else {
        return Ok(None);
    };
    store.cache_put(key, &record)?;
    Ok(Some(record))
}

fn layer_of_record(record: &CacheRecord) -> Option<Option<LayerBlob>> {
    let layer = record.payload.get("layer")?;
    if layer.is_null() {
        return Some(None);
    }
    let descriptor: Descriptor = serde_json::from_value(layer.get("descriptor")?.clone()).ok()?;
    let diff_id = layer.get("diff_id")?.as_str()?;
    let diff_id = kiln_cache::parse_sha256(diff_id).ok()?;
    Some(Some(LayerBlob {
        descriptor,
        diff_id,
    }))
}

/// When a cached result was made; records from before this field existed
/// count as made at the epoch.
fn created_of_record(record: &CacheRecord) -> i64 {
    record
        .payload
        .get("created")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0)
}

fn record_payload(layer: &Option<LayerBlob>) -> serde_json::Value {
    match layer {
        None => serde_json::json!({ "layer": null }),
        Some(layer) => serde_json::json!({
            "layer": {
                "descriptor": layer.descriptor,
                "diff_id": layer.diff_id.to_string(),
            }
        }),
    }
}

fn resolve_layers(
    refs: &[LayerRef],
    results: &HashMap<usize, Option<LayerBlob>>,
) -> Result<Vec<LayerBlob>> {
    let mut layers = Vec::new();
    for r in refs {
        match r {
            LayerRef::Fixed(layer) => layers.push((**layer).clone()),
            LayerRef::Vertex(v) => match results.get(v) {
                Some(Some(layer)) => layers.push(layer.clone()),
                Some(None) => {}
                None => return Err(Error::Invalid(format!("step {} has no result yet", v + 1))),
            },
        }
    }
    Ok(layers)
}

fn history_entry(created_by: &str, empty: bool, created: &str) -> Result<History> {
    let mut builder = HistoryBuilder::default()
        .created_by(created_by.to_string())
        .created(created.to_string())
        .comment("buildkit.dockerfile.v0".to_string());
    if empty {
        builder = builder.empty_layer(true);
    }
    builder.build().map_err(|e| Error::Invalid(e.to_string()))
}

fn now_epoch() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A Unix time as RFC 3339 UTC, the way the store writes times (one
/// implementation: `kiln_cache::rfc3339_utc`); times before 1970 read as 1970.
pub(crate) fn rfc3339(epoch: i64) -> String {
    kiln_cache::rfc3339_utc(u64::try_from(epoch).unwrap_or(0))
}

/// Heredoc scripts (`RUN <<EOF` with a `#!` line) as files: one read-only
/// directory per target directory, made in `scratch`.
fn heredoc_file_mounts(run: &kiln_frontend::RunStep, scratch: &Path) -> Result<Vec<Mount>> {
    let mut mounts = Vec::new();
    let mut file_dirs: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in &run.files {
        let (dir, name) = file.path.rsplit_once('/').unwrap_or(("/", &file.path));
        let dir = if dir.is_empty() { "/" } else { dir };
        let host_dir = match file_dirs.get(dir) {
            Some(existing) => existing.clone(),
            None => {
                let host = scratch.join(format!("files-{}", file_dirs.len()));
                fs::create_dir(&host).map_err(io_err(&host))?;
                file_dirs.insert(dir.to_string(), host.clone());
                host
            }
        };
        let path = host_dir.join(name);
        fs::write(&path, &file.content).map_err(io_err(&path))?;
        set_mode(&path, file.mode)?;
    }
    for (target, source) in &file_dirs {
        mounts.push(Mount::Bind {
            source: source.clone(),
            target: target.clone(),
            readonly: true,
        });
    }
    Ok(mounts)
}

/// What a RUN step holds while it runs: locks of `sharing=locked` and
/// `private` caches, and the proxies of its ssh agents.
#[derive(Default)]
struct HeldForStep {
    locks: Vec<fs::File>,
    ssh_proxies: Vec<crate::ssh::SshProxy>,
}

/// A `RUN --mount=type=cache`, its fields as the compiler resolved them.
struct CacheMount<'a> {
    id: &'a str,
    target: &'a str,
    sharing: CacheSharing,
    readonly: bool,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// A `RUN --mount=type=secret`.
struct SecretMount<'a> {
    id: &'a str,
    target: Option<&'a str>,
    env_name: Option<&'a str>,
    required: bool,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// A `RUN --mount=type=ssh`.
struct SshMount<'a> {
    id: &'a str,
    target: &'a str,
    required: bool,
    mode: u32,
    uid: u32,
    gid: u32,
}

struct Runner<'a> {
    store: &'a Store,
    context: &'a BuildContext,
    options: &'a SolveOptions,
    progress: &'a dyn Progress,
    cancel: &'a CancelToken,
    network: &'a BuildNetwork,
    snapshotter: &'a Snapshotter,
    outcomes: &'a Outcomes,
    downloads: &'a Downloads,
    sources: &'a [Arc<dyn CacheSource>],
    /// Vertices whose result a later step mounts (see [`mounted_later`]).
    mounted_later: &'a HashSet<usize>,
}

/// A layer being written, and the snapshot it also fills (until a write to
/// the snapshot fails: the layer never depends on it).
struct LayerTee<'w> {
    layer: &'w mut kiln_cache::LayerWriter,
    snapshot: Option<&'w mut kiln_executor::SnapshotStream>,
}

impl std::io::Write for LayerTee<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.layer.write_all(buf)?;
        if let Some(snapshot) = &mut self.snapshot {
            if snapshot.write_all(buf).is_err() {
                self.snapshot = None;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The vertices whose results some later step reads through snapshots: a
/// RUN, WORKDIR or (non `--link`) COPY on top of them, or a `COPY --from` or
/// `RUN --mount=from=` of their stage.
fn mounted_later(vertices: &[Vertex<'_>]) -> HashSet<usize> {
    let mut wanted = HashSet::new();
    for vertex in vertices {
        let reads_parent = match &vertex.step.kind {
            StepKind::Run(_) | StepKind::Workdir { .. } => true,
            StepKind::Copy(copy) => !copy.link,
            StepKind::Config => false,
        };
        let parents = reads_parent.then_some(&vertex.parent_layers);
        for layer in parents
            .into_iter()
            .chain(vertex.from_layers.values())
            .flatten()
        {
            if let LayerRef::Vertex(made_by) = layer {
                wanted.insert(*made_by);
            }
        }
    }
    wanted
}

/// The build's private RUN network: started by the first step on the default
/// network, shared by the others, stopped when the build ends (dropped).
#[derive(Default)]
struct BuildNetwork(Mutex<Option<kiln_executor::PrivateNetwork>>);

impl BuildNetwork {
    fn get(&self) -> Result<kiln_executor::PrivateNetwork> {
        let mut slot = self.0.lock().map_err(poisoned("private network"))?;
        if let Some(network) = slot.as_ref() {
            return Ok(network.clone());
        }
        let network = kiln_executor::PrivateNetwork::start()?;
        *slot = Some(network.clone());
        Ok(network)
    }
}

/// The directory `from` reads: the build context, a named context, or
/// `None` for a stage or an image. A named context the build was not given
/// is an error.
fn directory_of<'c>(
    context: &'c BuildContext,
    options: &'c SolveOptions,
    from: &CopyFrom,
) -> Result<Option<&'c BuildContext>> {
    match from {
        CopyFrom::Context => Ok(Some(context)),
        CopyFrom::Named(name) => match options.named_contexts.get(name) {
            Some(named) => Ok(Some(named)),
            None => Err(Error::Invalid(format!(
                "the build context {name:?} was not given; pass it with --build-context {name}=DIR"
            ))),
        },
        CopyFrom::Stage(_) | CopyFrom::Image { .. } => Ok(None),
    }
}

/// How messages name a directory context.
fn context_label(from: &CopyFrom) -> String {
    match from {
        CopyFrom::Named(name) => format!("build context {name}"),
        _ => "build context".to_string(),
    }
}

/// Which bind a context mount's content digest belongs to: the source in
/// the build context, or in a named one.
fn mount_key(from: &CopyFrom, source: &str) -> String {
    match from {
        CopyFrom::Named(name) => format!("{name}\0{source}"),
        _ => source.to_string(),
    }
}

/// A scratch directory in the store, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = kiln_executor::remove_tree(&self.0);
    }
}

impl Runner<'_> {
    /// `source` of the context as a read-only bind shows it, exported once
    /// per content (a tree snapshot named by the content digest in the
    /// step's key) and shared
    /// by every step and build that mounts the same files.
    fn context_tree(&self, vertex: &Vertex<'_>, from: &CopyFrom, source: &str) -> Result<PathBuf> {
        let ctx: &dyn crate::source::SourceFs = self.directory(from)?;
        let rel = clean_relative(source);
        let Some(top) = ctx.entry(&rel, true)? else {
            return Err(Error::Invalid(format!(
                "{rel}: not found in the {}",
                context_label(from)
            )));
        };
        // Planning digested every context source a step binds, for its key.
        let digest = vertex
            .context_mounts
            .get(&mount_key(from, source))
            .ok_or_else(|| {
                Error::Invalid(format!("{source}: no content digest for this bind mount"))
            })?;
        let tree = self
            .snapshotter
            .prepare_tree(&format!("context:{}", digest.to_hex()), |dir| {
                export_tree(ctx, &rel, dir, ExportOwner::Root).map(drop)
            })?;
        Ok(exported_top(&tree, &top))
    }

    /// The directory `from` reads (the build context or a named one).
    fn directory(&self, from: &CopyFrom) -> Result<&BuildContext> {
        directory_of(self.context, self.options, from)?
            .ok_or_else(|| Error::Invalid("a stage or image is not a directory context".into()))
    }

    fn scratch(&self) -> Result<Scratch> {
        let dir = tempfile::Builder::new()
            .prefix("step-")
            .tempdir_in(self.store.tmp_dir())
            .map_err(io_err(self.store.tmp_dir()))?;
        Ok(Scratch(dir.keep()))
    }

    /// Snapshot directories (bottom first) of a list of layers.
    fn lowers(&self, refs: &[LayerRef]) -> Result<Vec<PathBuf>> {
        let layers = self.outcomes.layers(refs)?;
        let mut lowers = Vec::new();
        let mut diff_ids = Vec::new();
        for layer in &layers {
            diff_ids.push(layer.diff_id.clone());
            let chain = chain_id(&diff_ids).ok_or_else(|| Error::Invalid("empty chain".into()))?;
            let store = self.store;
            let sources = self.sources;
            let descriptor = layer.descriptor.clone();
            // A layer of an imported record is fetched here, when first read.
            let dir = self.snapshotter.prepare(chain.as_ref(), move || {
                kiln_cache::ensure_blob(store, sources, &descriptor)?;
                store.open_layer(&descriptor)
            })?;
            lowers.push(dir);
        }
        Ok(lowers)
    }

    fn source_view(&self, vertex: &Vertex<'_>, from: &CopyFrom) -> Result<RootfsView> {
        let key = match from {
            CopyFrom::Stage(index) => format!("stage:{index}"),
            CopyFrom::Image { image, .. } => format!("image:{}", image.digest),
            CopyFrom::Context | CopyFrom::Named(_) => {
                return Err(Error::Invalid(format!(
                    "the {} is not a stage",
                    context_label(from)
                )))
            }
        };
        let refs = vertex
            .from_layers
            .get(&key)
            .ok_or_else(|| Error::Invalid(format!("{key} was not planned")))?;
        Ok(RootfsView::new(&self.lowers(refs)?))
    }

    /// Writes the layer of `vertex` with `write`; when a later step mounts
    /// its result, the same tar also fills its snapshot as it is written (see
    /// [`kiln_executor::SnapshotStream`]), so that step does not unpack the
    /// blob. The snapshot is best effort: one that fails is unpacked from the
    /// blob when first needed, as any other.
    fn write_layer_from<F>(
        &self,
        id: usize,
        vertex: &Vertex<'_>,
        write: F,
    ) -> Result<Option<LayerBlob>>
    where
        F: FnOnce(&mut LayerTee<'_>) -> kiln_executor::Result<kiln_executor::LayerSummary>,
    {
        let mut writer = self.store.layer_writer(self.options.compression)?;
        let mut snapshot = if self.mounted_later.contains(&id) {
            self.snapshotter.stream().ok()
        } else {
            None
        };
        let (summary, teed) = {
            let mut tee = LayerTee {
                layer: &mut writer,
                snapshot: snapshot.as_mut(),
            };
            let summary = write(&mut tee)?;
            (summary, tee.snapshot.is_some())
        };
        if summary.empty {
            return Ok(None);
        }
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let layer = writer.finish()?;
        if let Some(snapshot) = snapshot.filter(|_| teed) {
            let mut diff_ids: Vec<_> = self
                .outcomes
                .layers(&vertex.parent_layers)?
                .into_iter()
                .map(|l| l.diff_id)
                .collect();
            diff_ids.push(layer.diff_id.clone());
            if let Some(chain) = chain_id(&diff_ids) {
                let _ = snapshot.finish(chain.as_ref());
            }
        }
        Ok(Some(layer))
    }

    fn diff_options(&self) -> DiffOptions {
        DiffOptions {
            source_date_epoch: self.options.source_date_epoch,
        }
    }

    fn run_vertex(&self, id: usize, vertex: &Vertex<'_>) -> Result<Option<LayerBlob>> {
        match &vertex.step.kind {
            StepKind::Config => Ok(None),
            StepKind::Copy(copy) => {
                let scratch = self.scratch()?;
                let tree = scratch.0.join("tree");
                fs::create_dir(&tree).map_err(io_err(&tree))?;
                let parent_view = if copy.link || vertex.parent_layers.is_empty() {
                    None
                } else {
                    Some(ViewDest(RootfsView::new(
                        &self.lowers(&vertex.parent_layers)?,
                    )))
                };
                let dest: &dyn crate::copy::DestFs = match &parent_view {
                    Some(view) => view,
                    None => &NoParent,
                };
                let extra = match &copy.from {
                    CopyFrom::Context | CopyFrom::Named(_) => build_tree(
                        copy,
                        self.directory(&copy.from)?,
                        dest,
                        false,
                        Some(self.downloads),
                        &tree,
                    )?,
                    from => {
                        let source = ViewSource(self.source_view(vertex, from)?);
                        build_tree(copy, &source, dest, true, None, &tree)?
                    }
                };
                let options = self.diff_options();
                self.write_layer_from(id, vertex, |w| {
                    kiln_executor::write_dir_layer_with(&tree, &extra, w, &options)
                })
            }
            StepKind::Workdir(workdir) => {
                let WorkdirStep { path, user } = &**workdir;
                let lowers = self.lowers(&vertex.parent_layers)?;
                let view = RootfsView::new(&lowers);
                if view
                    .lookup(path, true)?
                    .is_some_and(|e| e.metadata.is_dir())
                {
                    return Ok(None);
                }
                let owner = match user.as_deref() {
                    Some(user) if !user.is_empty() => {
                        let u = kiln_executor::resolve_user(&view, user)?;
                        (u.uid, u.gid)
                    }
                    _ => (0, 0),
                };
                let scratch = self.scratch()?;
                let tree = scratch.0.join("tree");
                fs::create_dir(&tree).map_err(io_err(&tree))?;
                let (resolved, missing) = view.resolve_for_create(path)?;
                // Like BuildKit's `mkdir -p` as the USER: every directory made
                // belongs to the user; the existing ones on the way keep what
                // they have in the image.
                let resolved = clean_relative(&resolved);
                let components: Vec<&str> = resolved.split('/').collect();
                let first_missing = components.len().saturating_sub(missing);
                let mut made = Vec::new();
                let mut host = tree.clone();
                let mut image_path = String::new();
                for (index, component) in components.iter().enumerate() {
                    host.push(component);
                    image_path.push('/');
                    image_path.push_str(component);
                    fs::create_dir(&host).map_err(io_err(&host))?;
                    let (mode, uid, gid) = match view.lookup(&image_path, false) {
                        Ok(Some(existing)) if index < first_missing => (
                            existing.metadata.mode() & 0o7777,
                            existing.metadata.uid(),
                            existing.metadata.gid(),
                        ),
                        _ => (0o755, owner.0, owner.1),
                    };
                    made.push((host.clone(), mode, uid, gid));
                }
                // Modes last: a read-only directory must not stop its child.
                for (dir, mode, uid, gid) in made.iter().rev() {
                    std::os::unix::fs::chown(dir, Some(*uid), Some(*gid)).map_err(io_err(dir))?;
                    set_mode(dir, *mode)?;
                }
                let options = self.diff_options();
                self.write_layer_from(id, vertex, |w| {
                    kiln_executor::write_dir_layer(&tree, w, &options)
                })
            }
            StepKind::Run(run) => self.run_step(id, vertex, run),
        }
    }

    fn run_step(
        &self,
        id: usize,
        vertex: &Vertex<'_>,
        run: &kiln_frontend::RunStep,
    ) -> Result<Option<LayerBlob>> {
        let lowers = self.lowers(&vertex.parent_layers)?;
        let scratch = self.scratch()?;
        let mut env: Vec<String> = run.env.iter().map(|entry| entry.to_string()).collect();
        let mut mounts = heredoc_file_mounts(run, &scratch.0)?;
        let mut held = HeldForStep::default();
        for (index, mount) in run.mounts.iter().enumerate() {
            if let Some(mount) =
                self.step_mount(vertex, index, mount, &scratch.0, &mut env, &mut held)?
            {
                mounts.push(mount);
            }
        }
        let network = self.step_network(run)?;
        let privileged = run.security == kiln_frontend::Security::Insecure;
        if privileged && !self.options.allow_insecure {
            return Err(Error::Invalid(
                "RUN --security=insecure runs the step with every capability and no sandbox filters: allow it with --allow security.insecure".into(),
            ));
        }
        let spec = RunSpec {
            lowers: lowers.clone(),
            argv: run.argv.clone(),
            env,
            cwd: run.workdir.clone(),
            user: run.user.clone().unwrap_or_default(),
            hostname: "kiln".to_string(),
            network,
            mounts,
            arch: Some(vertex.platform.architecture.clone()),
            limits: self.options.limits,
            seccomp: self.options.seccomp.clone(),
            extra_hosts: self.options.extra_hosts.clone(),
            ulimits: self.options.ulimits.clone(),
            shm_size: self.options.shm_size,
            privileged,
            stdin: None,
            ..Default::default()
        };
        let work = scratch.0.join("run");
        fs::create_dir(&work).map_err(io_err(&work))?;
        let progress = self.progress;
        let mut on_output = |line: kiln_executor::OutputLine| {
            progress.event(Event::Output {
                id: id + 1,
                line: line.text().into_owned(),
            });
        };
        let upper = match kiln_executor::run(&spec, &work, self.cancel, &mut on_output) {
            Ok(upper) => upper,
            Err(error) => {
                self.open_debug_shell(vertex, &spec, &scratch.0, &work, &error);
                return Err(error.into());
            }
        };
        // The agents' sockets and the cache locks last as long as the step.
        drop(held);
        let options = self.diff_options();
        self.write_layer_from(id, vertex, |w| upper.write_layer(w, &options))
    }

    /// One `RUN --mount` as the sandbox mounts it; `None` for an optional
    /// secret or ssh agent that was not given. Cache locks and ssh agents
    /// the step holds go into `held`.
    fn step_mount(
        &self,
        vertex: &Vertex<'_>,
        index: usize,
        mount: &RunMount,
        scratch: &Path,
        env: &mut Vec<String>,
        held: &mut HeldForStep,
    ) -> Result<Option<Mount>> {
        Ok(match mount {
            RunMount::Bind {
                target,
                from,
                source,
                rw,
            } => Some(self.bind_mount(vertex, index, target, from, source, *rw, scratch)?),
            RunMount::Cache {
                id,
                target,
                sharing,
                readonly,
                mode,
                uid,
                gid,
                ..
            } => Some(self.cache_mount(
                CacheMount {
                    id,
                    target,
                    sharing: *sharing,
                    readonly: *readonly,
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                },
                index,
                scratch,
                &mut held.locks,
            )?),
            RunMount::Tmpfs { target, size } => Some(Mount::Tmpfs {
                target: target.clone(),
                size: *size,
            }),
            RunMount::Secret {
                id,
                target,
                env: env_name,
                required,
                mode,
                uid,
                gid,
            } => self.secret_mount(
                SecretMount {
                    id,
                    target: target.as_deref(),
                    env_name: env_name.as_deref(),
                    required: *required,
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                },
                index,
                scratch,
                env,
            )?,
            RunMount::Ssh {
                id,
                target,
                required,
                mode,
                uid,
                gid,
            } => self.ssh_mount(
                SshMount {
                    id,
                    target,
                    required: *required,
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                },
                index,
                scratch,
                env,
                &mut held.ssh_proxies,
            )?,
        })
    }

    /// `type=bind`: never the source itself. A context bind shows what
    /// Docker's builder sees (no .dockerignore'd files, root's files), and
    /// no step may change its source.
    #[allow(clippy::too_many_arguments)]
    fn bind_mount(
        &self,
        vertex: &Vertex<'_>,
        index: usize,
        target: &str,
        from: &CopyFrom,
        source: &str,
        rw: bool,
        scratch: &Path,
    ) -> Result<Mount> {
        let copy = scratch.join(format!("bind-{index}"));
        let host = match from {
            CopyFrom::Context | CopyFrom::Named(_) if !rw => {
                self.context_tree(vertex, from, source)?
            }
            CopyFrom::Context | CopyFrom::Named(_) => {
                let ctx: &dyn crate::source::SourceFs = self.directory(from)?;
                export_tree(ctx, &clean_relative(source), &copy, ExportOwner::Root)?
            }
            other => {
                let view = ViewSource(self.source_view(vertex, other)?);
                export_tree(&view, source, &copy, ExportOwner::Keep)?
            }
        };
        Ok(Mount::Bind {
            source: host,
            target: target.to_string(),
            readonly: !rw,
        })
    }

    /// `type=cache`: a directory of the store's, shared, locked or private.
    fn cache_mount(
        &self,
        cache: CacheMount<'_>,
        index: usize,
        scratch: &Path,
        locks: &mut Vec<fs::File>,
    ) -> Result<Mount> {
        let CacheMount {
            id: cache_id,
            target,
            sharing,
            readonly,
            mode,
            uid,
            gid,
        } = cache;
        let name = blake3::hash(cache_id.as_bytes()).to_hex();
        let dir = self.store.cache_mounts_dir().join(&name[..32]);
        // Before the directory exists (rootless with only root mapped).
        kiln_executor::check_owner_mapped(uid, gid, "RUN --mount=type=cache")?;
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(io_err(&dir))?;
            set_mode(&dir, mode)?;
        }
        let dir = match sharing {
            CacheSharing::Shared => dir,
            CacheSharing::Locked => {
                let lock_path = dir.with_extension("lock");
                let lock = fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
                lock.lock().map_err(io_err(&lock_path))?;
                locks.push(lock);
                dir
            }
            CacheSharing::Private => {
                // Private: this step alone uses the directory; a
                // concurrent user gets a fresh one of its own.
                let lock_path = dir.with_extension("lock");
                let lock = fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
                if lock.try_lock().is_ok() {
                    locks.push(lock);
                    dir
                } else {
                    let own = scratch.join(format!("cache-{index}"));
                    fs::create_dir(&own).map_err(io_err(&own))?;
                    own
                }
            }
        };
        Ok(Mount::Bind {
            source: dir,
            target: target.to_string(),
            readonly,
        })
    }

    /// `type=secret`: a file of its own (and/or an environment variable).
    fn secret_mount(
        &self,
        secret: SecretMount<'_>,
        index: usize,
        scratch: &Path,
        env: &mut Vec<String>,
    ) -> Result<Option<Mount>> {
        let SecretMount {
            id: secret_id,
            target,
            env_name,
            required,
            mode,
            uid,
            gid,
        } = secret;
        let Some(value) = self.options.secrets.get(secret_id) else {
            if required {
                return Err(Error::Invalid(format!(
                    "secret {secret_id} is required; pass it with --secret id={secret_id},src=FILE or --secret id={secret_id},env=VAR"
                )));
            }
            return Ok(None);
        };
        if let Some(name) = env_name {
            env.push(format!("{name}={}", String::from_utf8_lossy(value)));
        }
        let target = match (target, env_name) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(format!("/run/secrets/{secret_id}")),
        };
        let Some(target) = target else {
            return Ok(None);
        };
        kiln_executor::check_owner_mapped(uid, gid, "RUN --mount=type=secret")?;
        let dir = scratch.join(format!("secret-{index}"));
        fs::create_dir(&dir).map_err(io_err(&dir))?;
        set_mode(&dir, 0o700)?;
        let path = dir.join("secret");
        fs::write(&path, value).map_err(io_err(&path))?;
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(io_err(&path))?;
        set_mode(&path, mode)?;
        Ok(Some(Mount::Bind {
            source: path,
            target,
            readonly: true,
        }))
    }

    /// `type=ssh`: a socket that proxies to the agent the build was given.
    fn ssh_mount(
        &self,
        ssh: SshMount<'_>,
        index: usize,
        scratch: &Path,
        env: &mut Vec<String>,
        ssh_proxies: &mut Vec<crate::ssh::SshProxy>,
    ) -> Result<Option<Mount>> {
        let SshMount {
            id: ssh_id,
            target,
            required,
            mode,
            uid,
            gid,
        } = ssh;
        let Some(agent) = self.options.ssh.get(ssh_id) else {
            if required {
                return Err(Error::Invalid(format!(
                    "ssh agent {ssh_id} is required: forward one with --ssh {ssh_id}=SOCKET_OR_KEY (--ssh {ssh_id} takes $SSH_AUTH_SOCK)"
                )));
            }
            return Ok(None);
        };
        let socket = scratch.join(format!("ssh-{index}"));
        let proxy = crate::ssh::SshProxy::start(agent, &socket, uid, gid, mode)?;
        // As BuildKit: the first agent is the step's SSH_AUTH_SOCK.
        if ssh_proxies.is_empty() && !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
            env.push(format!("SSH_AUTH_SOCK={target}"));
        }
        let mount = Mount::Bind {
            source: proxy.socket().to_path_buf(),
            target: target.to_string(),
            readonly: false,
        };
        ssh_proxies.push(proxy);
        Ok(Some(mount))
    }

    /// The step's network: its own `--network`, else the build's.
    fn step_network(&self, run: &kiln_frontend::RunStep) -> Result<kiln_executor::Network> {
        Ok(match run.network.or(self.options.network) {
            Some(kiln_frontend::Network::None) => kiln_executor::Network::None,
            Some(kiln_frontend::Network::Host) => kiln_executor::Network::Host,
            // Rootless without /dev/net/tun: the host's (the binary says so).
            _ if !kiln_executor::private_network_usable() => kiln_executor::Network::Host,
            _ => kiln_executor::Network::Private(self.network.get()?),
        })
    }
}

impl Runner<'_> {
    /// Hands a failed step to the `--debug-shell` hook (not a cancelled one).
    fn open_debug_shell(
        &self,
        vertex: &Vertex<'_>,
        spec: &RunSpec,
        scratch: &Path,
        work: &Path,
        error: &kiln_executor::Error,
    ) {
        let Some(hook) = &self.options.debug_shell else {
            return;
        };
        if matches!(error, kiln_executor::Error::Cancelled) || self.cancel.is_cancelled() {
            return;
        }
        let debug = scratch.join("debug");
        if fs::create_dir(&debug).is_err() {
            return;
        }
        hook.open(&FailedStep {
            location: format!("{}: {}", vertex.step.span, vertex.step.text),
            spec,
            upper: work.join("upper"),
            scratch: debug,
            shell: match &vertex.step.kind {
                StepKind::Run(run) => run.shell.to_vec(),
                _ => vec!["/bin/sh".into(), "-c".into()],
            },
            error,
        });
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

/// Writes the merged filesystem of `layers` into `dest` (for
/// `--output type=local`).
pub fn export_filesystem(store: &Store, layers: &[LayerBlob], dest: &Path) -> Result<()> {
    match filesystem_view(store, layers)? {
        None => fs::create_dir_all(dest).map_err(io_err(dest)),
        // Rootless, the files become the user's (root of kiln's namespace),
        // as an unprivileged `tar -x` or BuildKit's client-side export makes them.
        Some(view) => {
            let owner = match kiln_executor::is_rootless() {
                true => ExportOwner::Root,
                false => ExportOwner::Keep,
            };
            export_tree(&view, ".", dest, owner).map(drop)
        }
    }
}

/// The merged filesystem of `layers` as a source, their snapshots prepared;
/// `None` when there are no layers (an empty filesystem).
pub(crate) fn filesystem_view(store: &Store, layers: &[LayerBlob]) -> Result<Option<ViewSource>> {
    let lowers = image_lowers(store, layers)?;
    Ok((!lowers.is_empty()).then(|| ViewSource(RootfsView::new(&lowers))))
}

/// The snapshot directories of `layers` (bottom first), unpacked where
/// missing: the lower dirs of a sandbox on an image (`kiln run`).
pub fn image_lowers(store: &Store, layers: &[LayerBlob]) -> Result<Vec<PathBuf>> {
    let snapshotter = Snapshotter::new(store.snapshots_dir())?;
    let mut lowers = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        diff_ids.push(layer.diff_id.clone());
        let chain = chain_id(&diff_ids).ok_or_else(|| Error::Invalid("empty chain".into()))?;
        let descriptor = layer.descriptor.clone();
        lowers.push(snapshotter.prepare(chain.as_ref(), || store.open_layer(&descriptor))?);
    }
    Ok(lowers)
}

/// Copies what `path` (absolute, in the image) holds in the filesystem of
/// `lowers` into the directory `dest`, owners and modes kept, as Docker
/// fills a new volume; `false` when the image has nothing there.
pub fn export_image_path(lowers: &[PathBuf], path: &str, dest: &Path) -> Result<bool> {
    let view = ViewSource(RootfsView::new(lowers));
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    match crate::source::SourceFs::entry(&view, rel, true)? {
        Some(entry) if entry.meta.is_dir() => {
            export_tree(&view, rel, dest, ExportOwner::Keep)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
