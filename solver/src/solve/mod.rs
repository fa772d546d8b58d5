//! Solving a build graph: cache keys for every step, one vertex per distinct
//! key, the misses run in parallel through the executor, and the target
//! stage's image written to the store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
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
use crate::source::{content_digest, content_digest_after_copy, BuildContext, ReadDigests};
use crate::views::{export_tree, exported_top, ExportOwner, ViewDest, ViewSource};

mod assemble;
mod export;
mod plan;
mod priority;
mod runner;

use assemble::Solved;
pub(crate) use export::filesystem_view;
pub use export::{export_filesystem, export_image_path, image_lowers};
use plan::*;
use runner::*;

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
    // Plan the vertices: one per distinct cache key, over every graph. When
    // no lookup can hit, COPY sources are digested as the COPY reads them.
    let after_copy =
        options.no_cache || (options.cache_sources.is_empty() && !store.has_cache_records()?);
    let inputs = PlanInputs {
        store,
        context,
        options,
        downloads: &downloads,
        stage_lists: &stage_lists,
    };
    let Planned {
        mut vertices,
        plans,
        digests,
    } = inputs.plan(Digests::new(), after_copy)?;
    let multi = graphs.len() > 1;
    announce_steps(progress, &vertices, multi);
    check_emulation(store, options, &vertices)?;
    // Run them: from the cache or through the executor.
    let found = Mutex::new(Digests::new());
    let (made, ran) = Runs {
        store,
        context,
        options,
        progress,
        cancel,
        downloads: &downloads,
        multi,
        found_digests: &found,
    }
    .run(&vertices)?;
    // What ran under a provisional key is recorded under its real one, also
    // when a later step failed (the next build reuses it).
    let mut known = digests;
    known.extend(found.into_inner().map_err(poisoned("content digests"))?);
    let recorded = inputs.record_provisional(&mut vertices, &made, known);
    ran?;
    recorded?;
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
/// read, when some RUN step will need it: the first one need not wait. The
/// thread runs nicer: on a busy machine it takes what the planning and the
/// first steps leave idle rather than slowing them (a RUN that needs the
/// filter first waits for it, and then nothing else competes).
fn prepare_seccomp_early(stage_lists: &[Vec<&Stage>], options: &SolveOptions) {
    let runs_steps = stage_lists.iter().flatten().any(|stage| {
        stage
            .steps
            .iter()
            .any(|s| matches!(s.kind, StepKind::Run(_)))
    });
    if runs_steps {
        let seccomp = options.seccomp.clone();
        std::thread::spawn(move || {
            // Best effort: at kiln's own priority it is still right.
            let _ = kiln_executor::make_this_thread_nicer(priority::YIELD_NICE);
            kiln_executor::prepare_seccomp(&seccomp)
        });
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

/// The vertices that run nicer (see [`priority`]).
fn yielding(vertices: &[Vertex<'_>]) -> HashSet<usize> {
    let nodes: Vec<priority::Node<'_>> = vertices
        .iter()
        .map(|vertex| {
            let runs = matches!(vertex.step.kind, StepKind::Run(_));
            let native = kiln_executor::is_native(&vertex.platform.architecture);
            priority::Node {
                deps: &vertex.deps,
                emulated: runs && !native,
                native,
            }
        })
        .collect();
    priority::yielding(&nodes)
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
    /// Content digests of COPY sources found by the COPYs that read them.
    found_digests: &'a Mutex<Digests>,
}

impl Runs<'_> {
    /// Takes each vertex from the cache or runs it, independent ones at
    /// once; the first failure cancels the others. What was made, and
    /// whether every step was (the first failure).
    fn run(&self, vertices: &[Vertex<'_>]) -> Result<(Made, Result<()>)> {
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
            found_digests: self.found_digests,
        };
        // Vertices off the critical path, which run nicer.
        let yielding = yielding(vertices);
        let deps: Vec<Vec<usize>> = vertices.iter().map(|v| v.deps.clone()).collect();
        // Planning hashed the context's files: what it learned is written
        // while the steps run (and again after, if they learned more).
        let save_stat_caches = || -> Result<()> {
            context.save_stat_cache()?;
            for named in options.named_contexts.values() {
                named.save_stat_cache()?;
            }
            Ok(())
        };
        let (outcome, saved) = std::thread::scope(|scope| {
            let saving = scope.spawn(save_stat_caches);
            let outcome = self.run_steps(&deps, vertices, &runner, &yielding, &outcomes);
            let saved = saving
                .join()
                .unwrap_or_else(|_| Err(Error::Invalid("saving the stat cache panicked".into())));
            (outcome, saved)
        });
        saved?;
        save_stat_caches()?;
        Ok((outcomes.into_made()?, outcome))
    }

    /// Runs the DAG of `vertices`: each from the cache or through `runner`.
    fn run_steps(
        &self,
        deps: &[Vec<usize>],
        vertices: &[Vertex<'_>],
        runner: &Runner<'_>,
        yielding: &HashSet<usize>,
        outcomes: &Outcomes,
    ) -> Result<()> {
        run_dag(deps, self.options.jobs, self.cancel, |id| {
            let vertex = &vertices[id];
            let outcome = match self.cached(vertex)? {
                Some(outcome) => {
                    self.progress.event(Event::Cached { id: id + 1 });
                    outcome
                }
                None if yielding.contains(&id) => {
                    priority::on_nicer_thread(|| self.run_fresh(runner, id, vertex))?
                }
                None => self.run_fresh(runner, id, vertex)?,
            };
            outcomes.add(id, outcome)
        })
    }

    /// The vertex's result from a cache record, local or imported, unless
    /// the build ignores the cache.
    fn cached(&self, vertex: &Vertex<'_>) -> Result<Option<Outcome>> {
        if self.options.no_cache || vertex.provisional {
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
        if !vertex.provisional {
            self.store.cache_put(&vertex.key.0, &record)?;
        }
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
