//! Running one vertex that missed the cache: a RUN in the executor's
//! sandbox with its mounts, network and held locks, a COPY/ADD or WORKDIR as
//! a tree written into a layer.

use super::*;
use crate::workdir::set_mode;

/// Heredoc scripts (`RUN <<EOF` with a `#!` line) as files: one read-only
/// directory per target directory, made in `scratch`.
pub(super) fn heredoc_file_mounts(
    run: &kiln_frontend::RunStep,
    scratch: &Path,
) -> Result<Vec<Mount>> {
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
pub(super) struct HeldForStep {
    pub(super) locks: Vec<fs::File>,
    pub(super) ssh_proxies: Vec<crate::ssh::SshProxy>,
}

/// A `RUN --mount=type=cache`, its fields as the compiler resolved them.
pub(super) struct CacheMount<'a> {
    pub(super) id: &'a str,
    pub(super) target: &'a str,
    pub(super) sharing: CacheSharing,
    pub(super) readonly: bool,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
}

/// A `RUN --mount=type=secret`.
pub(super) struct SecretMount<'a> {
    pub(super) id: &'a str,
    pub(super) target: Option<&'a str>,
    pub(super) env_name: Option<&'a str>,
    pub(super) required: bool,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
}

/// A `RUN --mount=type=ssh`.
pub(super) struct SshMount<'a> {
    pub(super) id: &'a str,
    pub(super) target: &'a str,
    pub(super) required: bool,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
}

pub(super) struct Runner<'a> {
    pub(super) store: &'a Store,
    pub(super) context: &'a BuildContext,
    pub(super) options: &'a SolveOptions,
    pub(super) progress: &'a dyn Progress,
    pub(super) cancel: &'a CancelToken,
    pub(super) network: &'a BuildNetwork,
    pub(super) snapshotter: &'a Snapshotter,
    pub(super) outcomes: &'a Outcomes,
    pub(super) downloads: &'a Downloads,
    pub(super) sources: &'a [Arc<dyn CacheSource>],
    /// Vertices whose result a later step mounts (see [`mounted_later`]).
    pub(super) mounted_later: &'a HashSet<usize>,
    /// Content digests of COPY sources found by the COPYs that read them
    /// (see [`Vertex::digests_sources`]).
    pub(super) found_digests: &'a Mutex<Digests>,
}

/// A layer being written, and the snapshot it also fills (until a write to
/// the snapshot fails: the layer never depends on it).
pub(super) struct LayerTee<'w> {
    pub(super) layer: &'w mut kiln_cache::LayerWriter,
    pub(super) snapshot: Option<&'w mut kiln_executor::SnapshotStream>,
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
pub(super) fn mounted_later(vertices: &[Vertex<'_>]) -> HashSet<usize> {
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
pub(super) struct BuildNetwork(Mutex<Option<kiln_executor::PrivateNetwork>>);

impl BuildNetwork {
    pub(super) fn get(&self) -> Result<kiln_executor::PrivateNetwork> {
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
pub(super) fn directory_of<'c>(
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
pub(super) fn context_label(from: &CopyFrom) -> String {
    match from {
        CopyFrom::Named(name) => format!("build context {name}"),
        _ => "build context".to_string(),
    }
}

/// Which bind a context mount's content digest belongs to: the source in
/// the build context, or in a named one.
pub(super) fn mount_key(from: &CopyFrom, source: &str) -> String {
    match from {
        CopyFrom::Named(name) => format!("{name}\0{source}"),
        _ => source.to_string(),
    }
}

/// A scratch directory in the store, removed when dropped.
pub(super) struct Scratch(PathBuf);

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
    pub(super) fn context_tree(
        &self,
        vertex: &Vertex<'_>,
        from: &CopyFrom,
        source: &str,
    ) -> Result<PathBuf> {
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
    pub(super) fn directory(&self, from: &CopyFrom) -> Result<&BuildContext> {
        directory_of(self.context, self.options, from)?
            .ok_or_else(|| Error::Invalid("a stage or image is not a directory context".into()))
    }

    pub(super) fn scratch(&self) -> Result<Scratch> {
        let dir = tempfile::Builder::new()
            .prefix("step-")
            .tempdir_in(self.store.tmp_dir())
            .map_err(io_err(self.store.tmp_dir()))?;
        Ok(Scratch(dir.keep()))
    }

    /// Snapshot directories (bottom first) of a list of layers.
    pub(super) fn lowers(&self, refs: &[LayerRef]) -> Result<Vec<PathBuf>> {
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
            let size = descriptor.size();
            let dir = self
                .snapshotter
                .prepare_sized(chain.as_ref(), size, move || {
                    kiln_cache::ensure_blob(store, sources, &descriptor)?;
                    store.open_layer(&descriptor)
                })?;
            lowers.push(dir);
        }
        Ok(lowers)
    }

    pub(super) fn source_view(&self, vertex: &Vertex<'_>, from: &CopyFrom) -> Result<RootfsView> {
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
    pub(super) fn write_layer_from<F>(
        &self,
        id: usize,
        vertex: &Vertex<'_>,
        write: F,
    ) -> Result<Option<LayerBlob>>
    where
        F: FnOnce(&mut LayerTee<'_>) -> kiln_executor::Result<kiln_executor::LayerSummary>,
    {
        let mut writer = self.store.layer_writer(self.options.compression)?;
        let mut snapshot = self
            .mounted_later
            .contains(&id)
            .then(|| self.snapshotter.stream());
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

    pub(super) fn diff_options(&self) -> DiffOptions {
        DiffOptions {
            source_date_epoch: self.options.source_date_epoch,
            digest_extra_files: false,
        }
    }

    pub(super) fn run_vertex(&self, id: usize, vertex: &Vertex<'_>) -> Result<Option<LayerBlob>> {
        match &vertex.step.kind {
            StepKind::Config => Ok(None),
            StepKind::Copy(copy) => self.run_copy(id, vertex, copy),
            StepKind::Workdir(workdir) => {
                let WorkdirStep { path, user } = &**workdir;
                let lowers = self.lowers(&vertex.parent_layers)?;
                let view = RootfsView::new(&lowers);
                if crate::workdir::is_directory(&view, path)? {
                    return Ok(None);
                }
                let scratch = self.scratch()?;
                let tree = scratch.0.join("tree");
                crate::workdir::workdir_tree(&view, path, user.as_deref(), &tree)?;
                let options = self.diff_options();
                self.write_layer_from(id, vertex, |w| {
                    kiln_executor::write_dir_layer(&tree, w, &options)
                })
            }
            StepKind::Run(run) => self.run_step(id, vertex, run),
        }
    }

    /// A COPY/ADD: its tree built under a scratch directory (files that
    /// keep their owner and mode are read straight from the source) and
    /// written as a layer. A COPY that digests its sources (see
    /// [`Vertex::digests_sources`]) has the layer writer digest the files
    /// it reads, and records the sources' digest.
    fn run_copy(
        &self,
        id: usize,
        vertex: &Vertex<'_>,
        copy: &kiln_frontend::CopyStep,
    ) -> Result<Option<LayerBlob>> {
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
        let digests_sources = vertex.digests_sources;
        let extra = match &copy.from {
            CopyFrom::Context | CopyFrom::Named(_) => build_tree(
                copy,
                self.directory(&copy.from)?,
                dest,
                false,
                Some(self.downloads),
                &tree,
                digests_sources,
            )?,
            from => {
                let source = ViewSource(self.source_view(vertex, from)?);
                build_tree(copy, &source, dest, true, None, &tree, false)?
            }
        };
        let options = DiffOptions {
            digest_extra_files: digests_sources,
            ..self.diff_options()
        };
        let mut read = Vec::new();
        let layer = self.write_layer_from(id, vertex, |w| {
            let mut summary = kiln_executor::write_dir_layer_with(&tree, extra, w, &options)?;
            read = std::mem::take(&mut summary.extra_digests);
            Ok(summary)
        })?;
        if digests_sources {
            self.found_digest(copy, read)?;
        }
        Ok(layer)
    }

    /// Records the content digest of a COPY's context sources, from the
    /// walks it kept and the digests of the files its layer writer `read`.
    fn found_digest(
        &self,
        copy: &kiln_frontend::CopyStep,
        read: Vec<(PathBuf, [u8; 32])>,
    ) -> Result<()> {
        let context = self.directory(&copy.from)?;
        let (_, paths) = split_copy_sources(copy);
        let read: ReadDigests = read
            .into_iter()
            .map(|(path, digest)| (path.into_os_string(), digest))
            .collect();
        let digest = content_digest_after_copy(context, &paths, &read)?;
        self.found_digests
            .lock()
            .map_err(poisoned("content digests"))?
            .entry(digest_memo(context, &paths))
            .or_insert(digest);
        Ok(())
    }

    pub(super) fn run_step(
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
    pub(super) fn step_mount(
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
    pub(super) fn bind_mount(
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
    pub(super) fn cache_mount(
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
    pub(super) fn secret_mount(
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
    pub(super) fn ssh_mount(
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
    pub(super) fn step_network(
        &self,
        run: &kiln_frontend::RunStep,
    ) -> Result<kiln_executor::Network> {
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
    pub(super) fn open_debug_shell(
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
