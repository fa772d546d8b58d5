//! Planning: every step's cache key, the layers and history each stage
//! will have, and one vertex per distinct key over all the graphs of a
//! build. Nothing runs here; files are read only to digest COPY sources.

use super::*;

/// A layer of a stage: known from the start (a base image's) or made by a
/// vertex (which may make none).
#[derive(Debug, Clone)]
pub(super) enum LayerRef {
    Fixed(Box<LayerBlob>),
    Vertex(usize),
}

#[derive(Debug, Clone)]
pub(super) enum HistoryRef {
    Fixed(History),
    Vertex { created_by: String, vertex: usize },
    Empty { created_by: String },
}

/// What is known about a stage before anything runs.
#[derive(Debug, Clone)]
pub(super) struct StagePlan {
    pub(super) key: Key,
    /// Whether `key` is provisional (see [`Vertex::provisional`]).
    pub(super) provisional: bool,
    pub(super) layers: Vec<LayerRef>,
    pub(super) history: Vec<HistoryRef>,
    pub(super) last_vertex: Option<usize>,
    pub(super) platform: Platform,
}

/// One distinct piece of work.
pub(super) struct Vertex<'g> {
    pub(super) key: Key,
    pub(super) step: &'g Step,
    pub(super) stage: &'g Stage,
    pub(super) parent_layers: Vec<LayerRef>,
    /// Layers of the stage or image COPY --from reads, per Dockerfile stage
    /// index or image digest.
    pub(super) from_layers: HashMap<String, Vec<LayerRef>>,
    /// Content digests of the context sources RUN binds, as the key has them.
    pub(super) context_mounts: HashMap<String, Key>,
    pub(super) platform: Platform,
    pub(super) deps: Vec<usize>,
    /// Whether `key` is provisional: it stands for the content digest of
    /// COPY sources that is only known once the COPY has read them (this
    /// vertex's or an earlier one's, see [`Planner::digest_after_copy`]). A
    /// provisional key is never looked up nor recorded under: the vertex's
    /// record is written under its real key once the build knows it.
    pub(super) provisional: bool,
    /// Whether this COPY digests its context sources as it reads them (its
    /// own key is provisional for want of that digest).
    pub(super) digests_sources: bool,
}

/// Content digests of context sources, by [`digest_memo`].
pub(super) type Digests = HashMap<(usize, Vec<String>), Key>;

/// What [`Digests`] are keyed by: the context (its address: one object per
/// context for the whole build) and the sources.
pub(super) fn digest_memo(context: &BuildContext, sources: &[String]) -> (usize, Vec<String>) {
    (std::ptr::from_ref(context) as usize, sources.to_vec())
}

/// The sources of a COPY/ADD from a directory context: the URLs and git
/// repositories it fetches, and the paths it reads from the context.
pub(super) fn split_copy_sources(copy: &kiln_frontend::CopyStep) -> (Vec<String>, Vec<String>) {
    let is_git = |s: &str| copy.add && crate::remote_context::is_git_url(s);
    copy.sources
        .iter()
        .cloned()
        .partition(|s| is_git(s) || is_url(s))
}

/// What planning found: the vertices, each graph's stage plans, and the
/// content digests it computed.
pub(super) struct Planned<'g> {
    pub(super) vertices: Vec<Vertex<'g>>,
    pub(super) plans: Vec<HashMap<usize, StagePlan>>,
    pub(super) digests: Digests,
}

/// Plans graphs into one list of vertices: one per distinct cache key.
pub(super) struct Planner<'a, 'g> {
    pub(super) store: &'a Store,
    pub(super) context: &'a BuildContext,
    pub(super) options: &'a SolveOptions,
    pub(super) downloads: &'a Downloads,
    pub(super) vertices: Vec<Vertex<'g>>,
    pub(super) by_key: HashMap<Key, usize>,
    /// Content digests of context sources: several graphs of one build hash
    /// each set of files once.
    pub(super) digests: Digests,
    /// Whether the digest of COPY sources not in `digests` is left to the
    /// COPY (see [`Self::digest_after_copy`]).
    pub(super) after_copy: bool,
}

impl<'g> Planner<'_, 'g> {
    /// The content digest of `sources` in `context`, computed once.
    fn content_digest(&mut self, context: &BuildContext, sources: &[String]) -> Result<Key> {
        let memo = digest_memo(context, sources);
        if let Some(digest) = self.digests.get(&memo) {
            return Ok(*digest);
        }
        let digest = content_digest(context, sources)?;
        self.digests.insert(memo, digest);
        Ok(digest)
    }

    /// Whether the content digest of a COPY's `sources` is left to the COPY
    /// itself: when no lookup can hit anyway (a store without cache records
    /// and no `--cache-from`, or `--no-cache`), reading every file before
    /// the build to key it, then again to copy it, is wasted. The COPY's
    /// layer writer digests the files it copies instead, and the key (the
    /// same one planning would have computed) is known once it has run.
    fn digest_after_copy(&self, context: &BuildContext, sources: &[String]) -> bool {
        self.after_copy
            && !sources.is_empty()
            && !self.digests.contains_key(&digest_memo(context, sources))
    }

    /// Plans one graph's needed stages: their keys, layers and history, and
    /// a vertex for every step whose key is new.
    pub(super) fn plan(&mut self, stages: &[&'g Stage]) -> Result<HashMap<usize, StagePlan>> {
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
                provisional: false,
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
                    provisional: false,
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
            provisional: plan.provisional,
            digests_sources: false,
        };
        inputs
            .key
            .key("definition", &step.digest)
            .key("parent", &plan.key)
            .str("platform", &plan.platform.to_string());
        match &step.kind {
            StepKind::Copy(copy) => {
                if let Some(context) = directory_of(self.context, self.options, &copy.from)? {
                    self.key_copy_sources(copy, context, &mut inputs)
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
        inputs: &mut StepInputs,
    ) -> Result<()> {
        let (urls, paths) = split_copy_sources(copy);
        if self.digest_after_copy(context, &paths) {
            // Stands for the digest: the same context and sources give the
            // same one within a build. Never stored, so never confused with
            // a real key (whose encoding differs).
            let (context_id, _) = digest_memo(context, &paths);
            inputs.key.u64("content-after-copy", context_id as u64);
            inputs.provisional = true;
            inputs.digests_sources = true;
        } else {
            let digest = self.content_digest(context, &paths)?;
            inputs.key.key("content", &digest);
        }
        let key = &mut inputs.key;
        for url in &urls {
            if copy.add && crate::remote_context::is_git_url(url) {
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
        plan.provisional = inputs.provisional;
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
                    provisional: inputs.provisional,
                    digests_sources: inputs.digests_sources,
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
pub(super) struct StepInputs {
    /// The cache key, being built.
    pub(super) key: KeyEncoder,
    /// The vertices it waits for.
    pub(super) deps: Vec<usize>,
    /// Layers of the stages and images it reads (see [`Vertex::from_layers`]).
    pub(super) from_layers: HashMap<String, Vec<LayerRef>>,
    /// Content digests of the context sources it binds.
    pub(super) context_mounts: HashMap<String, Key>,
    /// Whether the key is provisional (see [`Vertex::provisional`]).
    pub(super) provisional: bool,
    /// See [`Vertex::digests_sources`].
    pub(super) digests_sources: bool,
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
                self.provisional |= source.provisional;
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
pub(super) fn fixed_layers(image: &StoredImage) -> Result<Vec<LayerRef>> {
    Ok(image
        .layers()?
        .into_iter()
        .map(|l| LayerRef::Fixed(Box::new(l)))
        .collect())
}

/// What planning reads: once before the steps run, and again after them to
/// turn provisional keys into real ones.
pub(super) struct PlanInputs<'a, 'g> {
    pub(super) store: &'a Store,
    pub(super) context: &'a BuildContext,
    pub(super) options: &'a SolveOptions,
    pub(super) downloads: &'a Downloads,
    /// Each graph's needed stages, in order.
    pub(super) stage_lists: &'a [Vec<&'g Stage>],
}

impl<'g> PlanInputs<'_, 'g> {
    /// Plans every graph into one list of vertices. `digests` are content
    /// digests already known; with `after_copy`, COPY sources whose digest
    /// is not among them are digested by the COPY (see
    /// [`Planner::digest_after_copy`]).
    pub(super) fn plan(&self, digests: Digests, after_copy: bool) -> Result<Planned<'g>> {
        let mut planner = Planner {
            store: self.store,
            context: self.context,
            options: self.options,
            downloads: self.downloads,
            vertices: Vec::new(),
            by_key: HashMap::new(),
            digests,
            after_copy,
        };
        let plans = self
            .stage_lists
            .iter()
            .map(|stages| planner.plan(stages))
            .collect::<Result<Vec<_>>>()?;
        Ok(Planned {
            vertices: planner.vertices,
            plans,
            digests: planner.digests,
        })
    }

    /// Gives the vertices with a provisional key their real one, and writes
    /// the record of each that ran under it. Planning again with the content
    /// digests the COPYs found (`digests`, with those planning computed)
    /// gives each vertex the key it would have had if planning had read the
    /// files: the same vertices in the same order, since a provisional key
    /// stands for exactly one digest. A vertex whose digest was not found
    /// (its COPY did not run) keeps its provisional key and gets no record.
    pub(super) fn record_provisional(
        &self,
        vertices: &mut [Vertex<'g>],
        made: &Made,
        digests: Digests,
    ) -> Result<()> {
        if !vertices.iter().any(|v| v.provisional) {
            return Ok(());
        }
        let again = self.plan(digests, true)?;
        let same = again.vertices.len() == vertices.len()
            && (again.vertices.iter().zip(vertices.iter()))
                .all(|(a, b)| std::ptr::eq(a.step, b.step) && a.platform == b.platform);
        if !same {
            return Err(Error::Invalid(
                "planning with the content digests found by COPY steps gave other steps; \
                 the results of the steps after them were not recorded in the cache"
                    .into(),
            ));
        }
        for (id, (vertex, real)) in vertices.iter_mut().zip(again.vertices).enumerate() {
            if !vertex.provisional || real.provisional {
                continue;
            }
            vertex.key = real.key;
            vertex.provisional = false;
            // A provisional vertex is never taken from the cache: its record
            // is one it made.
            if let Some(record) = made.records.get(&id) {
                self.store.cache_put(&vertex.key.0, record)?;
            }
        }
        Ok(())
    }
}
