//! Assembling what the DAG made into each platform's image: history,
//! config, layers, the image and index written to the store, attestations.

use super::*;

/// What the DAG made, shared by the images of every graph.
pub(super) struct Solved<'a, 'g> {
    pub(super) store: &'a Store,
    pub(super) context: &'a BuildContext,
    pub(super) options: &'a SolveOptions,
    pub(super) progress: &'a dyn Progress,
    pub(super) vertices: &'a [Vertex<'g>],
    pub(super) made: &'a Made,
    pub(super) started: i64,
}

impl Solved<'_, '_> {
    /// Writes the image of `graph`'s target stage (and its attestations).
    pub(super) fn image(
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
    pub(super) fn vertex_time(&self, v: usize) -> Option<i64> {
        self.options
            .source_date_epoch
            .or_else(|| self.made.made_at.get(&v).copied())
    }

    /// The image's `created` time and its history: a step's entry has the
    /// time its result was made; the image is as old as its newest step (a
    /// build of only metadata steps is made now).
    pub(super) fn history(&self, plan: &StagePlan) -> Result<(String, Vec<History>)> {
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
    pub(super) fn write_image(
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
    pub(super) fn records(
        &self,
        plans: &HashMap<usize, StagePlan>,
        plan: &StagePlan,
    ) -> Vec<BuiltRecord> {
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
    pub(super) fn attest(
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
