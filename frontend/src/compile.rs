//! [`Dockerfile`] -> [`BuildGraph`]: ARG scoping, variable substitution,
//! multi-stage references, the image config of every stage, RUN and COPY
//! steps with everything resolved, and definition digests.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::ast::{Dockerfile, Instruction, Keyword};
use crate::config::{Empty, Healthcheck, ImageConfig};
use crate::error::{Error, Result, Span, Warning};
use crate::graph::{
    context_name, Base, BaseImage, BaseImageResolver, BuildGraph, CacheSharing, CompileOptions,
    CopyFrom, CopyStep, NamedContext, Network, RunFile, RunMount, RunStep, Security, Stage, Step,
    StepKind, WorkdirStep,
};
use crate::key::{Key, KeyEncoder};
use crate::mount::parse_mount;
use crate::parse::{parse_duration, parse_instruction};
use crate::shell::{expand_heredoc, process_word, Vars};

/// The most one instruction's expansions may add to its words, in all
/// (each word is bounded by `shell::MAX_WORD` too): an instruction of many
/// words that each name a large variable would otherwise multiply it.
const MAX_INSTRUCTION_GROWTH: usize = 16 << 20;

/// Expands words one instruction at a time, counting what the expansions
/// add, so that no instruction grows past `MAX_INSTRUCTION_GROWTH`.
struct Expander {
    escape: char,
    /// Bytes the current instruction's expansions added so far.
    grown: Cell<usize>,
}

impl Expander {
    fn new(escape: char) -> Self {
        Expander {
            escape,
            grown: Cell::new(0),
        }
    }

    /// Starts counting for the next instruction.
    fn begin(&self) {
        self.grown.set(0);
    }

    /// Counts an expansion of `raw_len` bytes into `expanded_len`.
    fn account(&self, raw_len: usize, expanded_len: usize) -> std::result::Result<(), String> {
        let grown = self.grown.get() + expanded_len.saturating_sub(raw_len);
        self.grown.set(grown);
        if grown > MAX_INSTRUCTION_GROWTH {
            return Err(format!(
                "the instruction's expansions are larger than {} MiB in all; is a variable built from itself (A=$A$A)?",
                MAX_INSTRUCTION_GROWTH >> 20
            ));
        }
        Ok(())
    }

    /// `raw` with quotes removed and variables from `vars` expanded; errors
    /// are messages without a position.
    fn bounded(&self, raw: &str, vars: &dyn Vars<'_>) -> std::result::Result<String, String> {
        let value = process_word(raw, self.escape, Some(vars))?;
        self.account(raw.len(), value.len())?;
        Ok(value)
    }

    /// `bounded`, with errors at `span`.
    fn word(&self, raw: &str, span: &Span, vars: &dyn Vars<'_>) -> Result<String> {
        self.bounded(raw, vars)
            .map_err(|e| Error::compile(span.clone(), format!("cannot expand {raw:?}: {e}")))
    }
}

/// BuildKit's PATH for RUN when the base image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The shell that wraps shell-form commands unless SHELL says otherwise.
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// Build args that reach RUN without being declared, and stay out of
/// history and cache keys (as in Docker).
const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Compiles the stages `options.target` needs into a build graph, resolving
/// base images with `resolver`.
///
/// Stages the target does not need are left out (and their base images are
/// never looked up). Errors name the instruction (or flag) at fault.
pub fn compile(
    dockerfile: &Dockerfile,
    options: &CompileOptions,
    resolver: &dyn BaseImageResolver,
) -> Result<BuildGraph> {
    let mut compiler = Compiler::new(dockerfile, options, resolver)?;
    let target = compiler.target()?;
    let order = compiler.order(target)?;
    let mut inherited = Inherited::new(&compiler.heads, &order);
    let mut stages = BTreeMap::new();
    let mut warnings = BTreeMap::new();
    let mut target_config = ImageConfig::default();
    for index in order {
        let (stage, config, stage_warnings) =
            compiler.compile_stage(index, &stages, &mut inherited)?;
        if index == target {
            target_config = config;
        } else {
            inherited.keep(index, config);
        }
        stages.insert(index, stage);
        warnings.insert(index, stage_warnings);
    }
    Ok(BuildGraph {
        stages: stages.into_values().collect(),
        target,
        config: target_config,
        warnings: warnings.into_values().flatten().collect(),
    })
}

/// The final configs of compiled stages that later stages start FROM, each
/// kept only until the last of those has taken it: a chain of stages holds
/// one config at a time, however many labels each inherits.
struct Inherited {
    /// How many stages still to compile name each stage as their base (an
    /// upper bound: a named context may win over the stage).
    heirs: Vec<usize>,
    configs: BTreeMap<usize, ImageConfig>,
}

impl Inherited {
    fn new(heads: &[StageHead<'_>], order: &[usize]) -> Self {
        let mut heirs = vec![0; heads.len()];
        for &index in order {
            if let Some(base) = heads[index].base_stage {
                heirs[base] += 1;
            }
        }
        Inherited {
            heirs,
            configs: BTreeMap::new(),
        }
    }

    /// Keeps a compiled stage's config if a later stage starts from it.
    fn keep(&mut self, index: usize, config: ImageConfig) {
        if self.heirs[index] > 0 {
            self.configs.insert(index, config);
        }
    }

    /// The config of `base` for a stage that starts FROM it: moved out to
    /// the last such stage, cloned for the others.
    fn take(&mut self, base: usize) -> Option<ImageConfig> {
        self.heirs[base] = self.heirs[base].saturating_sub(1);
        if self.heirs[base] == 0 {
            self.configs.remove(&base)
        } else {
            self.configs.get(&base).cloned()
        }
    }
}

/// Applies `kiln import --change` instructions (CMD, ENTRYPOINT, ENV, EXPOSE,
/// LABEL, USER, VOLUME, WORKDIR, STOPSIGNAL, SHELL, HEALTHCHECK, ONBUILD) to
/// `config`; any other instruction is an error. Variables expand from the
/// config's own Env, as they would in a Dockerfile built on that image.
pub fn apply_changes(config: ImageConfig, changes: &[String]) -> Result<ImageConfig> {
    let mut state = StageState::new(config, Key([0; 32]));
    let expander = Expander::new('\\');
    for change in changes {
        expander.begin();
        let fail = |message: String| Error::Change {
            change: change.clone(),
            message,
        };
        let instruction = parse_instruction(change, "--change").map_err(|e| fail(e.to_string()))?;
        let allowed = matches!(
            instruction.keyword,
            Keyword::Cmd
                | Keyword::Entrypoint
                | Keyword::Env
                | Keyword::Expose
                | Keyword::Label
                | Keyword::User
                | Keyword::Volume
                | Keyword::Workdir
                | Keyword::Stopsignal
                | Keyword::Shell
                | Keyword::Healthcheck
                | Keyword::Onbuild
        );
        if !allowed {
            return Err(fail(format!(
                "{} cannot be applied to an image config; use CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, VOLUME, WORKDIR, STOPSIGNAL, SHELL, HEALTHCHECK or ONBUILD",
                instruction.keyword
            )));
        }
        apply_config(&mut state, &instruction, &expander).map_err(|e| fail(e.to_string()))?;
    }
    state.finish_config();
    Ok(state.config)
}

/// What a stage is, before it is compiled.
struct StageHead<'a> {
    name: Option<String>,
    from: &'a Instruction,
    /// The FROM reference, expanded.
    reference: String,
    platform: String,
    /// An earlier stage named by FROM.
    base_stage: Option<usize>,
    /// A named context FROM names (by its name), which wins over a stage or
    /// image of that name.
    base_context: Option<(String, NamedContext)>,
    /// A named context of the stage's own name: it replaces the stage, whose
    /// instructions are not compiled, as BuildKit does.
    replaced_by: Option<(String, NamedContext)>,
    instructions: &'a [Instruction],
    /// Stages read through `--from` and mounts, with the flag that reads them.
    reads: Vec<(usize, Span)>,
}

struct Compiler<'a> {
    dockerfile: &'a Dockerfile,
    options: &'a CompileOptions,
    resolver: &'a dyn BaseImageResolver,
    escape: char,
    /// Expands words, bounding what one instruction's expansions may add.
    expander: Expander,
    /// The platform ARGs, always defined in the global scope.
    platform_args: Vec<(String, String)>,
    /// ARGs before the first FROM, with their values (None = no value).
    global_args: Vec<(String, Option<String>)>,
    heads: Vec<StageHead<'a>>,
    /// Resolved images, shared by every step that reads them.
    images: BTreeMap<(String, String), Arc<BaseImage>>,
}

fn platform_parts(platform: &str) -> (String, String, String) {
    let mut parts = platform.split('/');
    let os = parts.next().unwrap_or_default().to_string();
    let arch = parts.next().unwrap_or_default().to_string();
    let variant = parts.next().unwrap_or_default().to_string();
    (os, arch, variant)
}

impl<'a> Compiler<'a> {
    fn new(
        dockerfile: &'a Dockerfile,
        options: &'a CompileOptions,
        resolver: &'a dyn BaseImageResolver,
    ) -> Result<Self> {
        let target_platform = if options.target_platform.is_empty() {
            "linux/amd64"
        } else {
            options.target_platform.as_str()
        };
        let build_platform = if options.build_platform.is_empty() {
            target_platform
        } else {
            options.build_platform.as_str()
        };
        let (tos, tarch, tvariant) = platform_parts(target_platform);
        let (bos, barch, bvariant) = platform_parts(build_platform);
        let platform_args = vec![
            ("TARGETPLATFORM".into(), target_platform.to_string()),
            ("TARGETOS".into(), tos),
            ("TARGETARCH".into(), tarch),
            ("TARGETVARIANT".into(), tvariant),
            ("BUILDPLATFORM".into(), build_platform.to_string()),
            ("BUILDOS".into(), bos),
            ("BUILDARCH".into(), barch),
            ("BUILDVARIANT".into(), bvariant),
        ];
        let mut compiler = Compiler {
            dockerfile,
            options,
            resolver,
            escape: dockerfile.escape,
            expander: Expander::new(dockerfile.escape),
            platform_args,
            global_args: Vec::new(),
            heads: Vec::new(),
            images: BTreeMap::new(),
        };
        compiler.read_stages()?;
        Ok(compiler)
    }

    fn global_lookup(&self, name: &str) -> Option<&str> {
        if let Some((_, value)) = self.global_args.iter().rev().find(|(n, _)| n == name) {
            return value.as_deref();
        }
        self.platform_args
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn expand(&self, raw: &str, span: &Span, vars: &dyn Vars<'_>) -> Result<String> {
        self.expander.word(raw, span, vars)
    }

    /// Splits the file into global ARGs and stage heads, and finds the stages
    /// each stage reads.
    fn read_stages(&mut self) -> Result<()> {
        let instructions = &self.dockerfile.instructions;
        let mut i = 0;
        while let Some(instruction) = instructions.get(i) {
            if instruction.keyword != Keyword::Arg {
                break;
            }
            self.expander.begin();
            for pair in instruction.pairs.iter().flatten() {
                let value = match self.options.build_args.get(&pair.key) {
                    Some(v) => Some(v.clone()),
                    None => match &pair.raw_value {
                        Some(raw) => {
                            let lookup = |n: &str| self.global_lookup(n);
                            Some(self.expand(raw, &instruction.text_span(), &lookup)?)
                        }
                        // `ARG TARGETARCH` with no default keeps the
                        // automatic platform value, as in BuildKit.
                        None => self
                            .platform_args
                            .iter()
                            .find(|(n, _)| *n == pair.key)
                            .map(|(_, v)| v.clone()),
                    },
                };
                self.global_args.push((pair.key.clone(), value));
            }
            i += 1;
        }
        let mut starts: Vec<usize> = (i..instructions.len())
            .filter(|&j| instructions[j].keyword == Keyword::From)
            .collect();
        starts.push(instructions.len());
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (index, window) in starts.windows(2).enumerate() {
            let from = &instructions[window[0]];
            self.expander.begin();
            let lookup = |n: &str| self.global_lookup(n);
            let reference = self.expand(
                from.args.first().map_or("", String::as_str),
                &from.text_span(),
                &lookup,
            )?;
            if reference.is_empty() {
                return Err(Error::compile(
                    from.text_span(),
                    format!(
                        "FROM {:?} expands to an empty image name; set the ARG it uses (--build-arg)",
                        from.args.first().map_or("", String::as_str)
                    ),
                ));
            }
            let platform = match from.flag("platform") {
                Some(flag) => {
                    let value = self.expand(
                        flag.value.as_deref().unwrap_or_default(),
                        &flag.span,
                        &lookup,
                    )?;
                    if value.split('/').count() < 2 || value.split('/').any(str::is_empty) {
                        return Err(Error::compile(
                            flag.span.clone(),
                            format!("--platform={value:?} is not a platform; write os/arch[/variant], e.g. linux/arm64"),
                        ));
                    }
                    value
                }
                None => self.platform_args[0].1.clone(),
            };
            let name = from.args.get(2).map(|n| n.to_lowercase());
            let base_context = self.named_context(&reference);
            let base_stage = match base_context {
                Some(_) => None,
                None => names.get(&reference.to_lowercase()).copied(),
            };
            let replaced_by = name.as_deref().and_then(|n| self.named_context(n));
            if let Some(name) = &name {
                if names.insert(name.clone(), index).is_some() {
                    return Err(Error::compile(
                        from.args
                            .get(2)
                            .map_or(from.span.clone(), |_| from.text_span()),
                        format!("duplicate stage name {name:?}; give each stage its own name"),
                    ));
                }
            }
            self.heads.push(StageHead {
                name,
                from,
                reference,
                platform,
                base_stage: base_stage.filter(|_| replaced_by.is_none()),
                base_context,
                replaced_by,
                instructions: &instructions[window[0] + 1..window[1]],
                reads: Vec::new(),
            });
        }
        // Which stages each stage reads through --from and mounts. ARGs are
        // the only variables known before running anything, as in BuildKit.
        for index in 0..self.heads.len() {
            let mut reads = Vec::new();
            let mut args: Vec<(String, Option<String>)> = Vec::new();
            let instructions = match self.heads[index].replaced_by {
                Some(_) => &[][..],
                None => self.heads[index].instructions,
            };
            for instruction in instructions {
                self.expander.begin();
                let lookup = |n: &str| find_arg(&args, n);
                match instruction.keyword {
                    Keyword::Arg => {
                        for pair in instruction.pairs.iter().flatten() {
                            let value = {
                                let lookup = |n: &str| find_arg(&args, n);
                                self.arg_value(pair, &instruction.text_span(), &lookup)?
                            };
                            args.push((pair.key.clone(), value));
                        }
                    }
                    Keyword::Copy => {
                        if let Some(flag) = instruction.flag("from") {
                            let value = self.expand(
                                flag.value.as_deref().unwrap_or_default(),
                                &flag.span,
                                &lookup,
                            )?;
                            if self.named_context(&value).is_some() {
                                continue;
                            }
                            if let Some(stage) = self.find_stage(&value, &flag.span)? {
                                reads.push((stage, flag.span.clone()));
                            }
                        }
                    }
                    Keyword::Run => {
                        for flag in instruction.flags.iter().filter(|f| f.name == "mount") {
                            let value = flag.value.as_deref().unwrap_or_default();
                            if let Some(from) = mount_from(value) {
                                let from = self.expand(&from, &flag.span, &lookup)?;
                                if self.named_context(&from).is_some() {
                                    continue;
                                }
                                if let Some(stage) = self.find_stage(&from, &flag.span)? {
                                    reads.push((stage, flag.span.clone()));
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            self.heads[index].reads = reads;
        }
        Ok(())
    }

    /// The value an ARG takes: a build arg, else its default (expanded), else
    /// the value of the global ARG of that name, else a platform ARG's value.
    fn arg_value(
        &self,
        pair: &crate::ast::Pair,
        span: &Span,
        vars: &dyn Vars<'_>,
    ) -> Result<Option<String>> {
        if let Some(value) = self.options.build_args.get(&pair.key) {
            return Ok(Some(value.clone()));
        }
        if let Some(raw) = &pair.raw_value {
            return self.expand(raw, span, vars).map(Some);
        }
        Ok(self.global_lookup(&pair.key).map(str::to_string))
    }

    /// The named context (`--build-context`) `reference` names, if any. A
    /// stage index is never a context name.
    fn named_context(&self, reference: &str) -> Option<(String, NamedContext)> {
        if self.options.named_contexts.is_empty() || reference.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let name = context_name(reference);
        let context = self.options.named_contexts.get(&name)?.clone();
        Some((name, context))
    }

    /// A stage called (or numbered) `name`; `Ok(None)` when `name` is no
    /// stage (so it is an image).
    fn find_stage(&self, name: &str, span: &Span) -> Result<Option<usize>> {
        let lower = name.to_lowercase();
        if let Some(index) = self
            .heads
            .iter()
            .position(|h| h.name.as_deref() == Some(lower.as_str()))
        {
            return Ok(Some(index));
        }
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_digit()) {
            return match name.parse::<usize>() {
                Ok(index) if index < self.heads.len() => Ok(Some(index)),
                _ => Err(Error::compile(
                    span.clone(),
                    format!(
                        "stage {name} is not defined: the Dockerfile has stages 0 to {}",
                        self.heads.len().saturating_sub(1)
                    ),
                )),
            };
        }
        Ok(None)
    }

    fn stage_list(&self) -> String {
        self.heads
            .iter()
            .enumerate()
            .map(|(i, h)| h.name.clone().unwrap_or_else(|| i.to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn target(&self) -> Result<usize> {
        let Some(name) = &self.options.target else {
            return Ok(self.heads.len().saturating_sub(1));
        };
        let lower = name.to_lowercase();
        if let Some(index) = self
            .heads
            .iter()
            .position(|h| h.name.as_deref() == Some(lower.as_str()))
        {
            return Ok(index);
        }
        match name.parse::<usize>() {
            Ok(index) if index < self.heads.len() => Ok(index),
            _ => Err(Error::UnknownTarget {
                name: name.clone(),
                available: self.stage_list(),
            }),
        }
    }

    /// The stages `target` needs, dependencies first; a cycle is an error at
    /// the reference that closes it.
    fn order(&self, target: usize) -> Result<Vec<usize>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Active,
            Done,
        }
        let mut marks = vec![Mark::New; self.heads.len()];
        let mut order = Vec::new();
        // (stage, next dependency to visit)
        let mut stack: Vec<(usize, usize)> = vec![(target, 0)];
        marks[target] = Mark::Active;
        while let Some(&mut (stage, ref mut next)) = stack.last_mut() {
            let head = &self.heads[stage];
            let deps: Vec<(usize, Span)> = head
                .base_stage
                .map(|b| (b, head.from.span.clone()))
                .into_iter()
                .chain(head.reads.iter().cloned())
                .collect();
            if let Some((dep, span)) = deps.get(*next).cloned() {
                *next += 1;
                match marks[dep] {
                    Mark::Done => {}
                    Mark::Active => {
                        let name = self.heads[dep]
                            .name
                            .clone()
                            .unwrap_or_else(|| dep.to_string());
                        return Err(Error::compile(
                            span,
                            format!(
                                "circular dependency: stage {name} needs itself through this reference"
                            ),
                        ));
                    }
                    Mark::New => {
                        marks[dep] = Mark::Active;
                        stack.push((dep, 0));
                    }
                }
            } else {
                marks[stage] = Mark::Done;
                order.push(stage);
                stack.pop();
            }
        }
        Ok(order)
    }

    fn resolve_image(
        &mut self,
        reference: &str,
        platform: &str,
        span: &Span,
    ) -> Result<Arc<BaseImage>> {
        let key = (reference.to_string(), platform.to_string());
        if let Some(image) = self.images.get(&key) {
            return Ok(image.clone());
        }
        match self.resolver.resolve(reference, platform) {
            Ok(Some(image)) => {
                let image = Arc::new(image);
                self.images.insert(key, Arc::clone(&image));
                Ok(image)
            }
            Ok(None) => Err(Error::compile(
                span.clone(),
                format!(
                    "no image {reference:?} for {platform} in the store, and no stage of that name (stages: {}); get the image with `kiln pull` (from a registry; `kiln build --pull missing` does it), `kiln import` (from a rootfs) or `kiln load` (from an archive)",
                    self.stage_list()
                ),
            )),
            Err(message) => Err(Error::compile(
                span.clone(),
                format!("cannot look up image {reference:?}: {message}"),
            )),
        }
    }

    /// `--from` / mount `from=`: a stage already compiled, or an image.
    fn copy_source(
        &mut self,
        name: &str,
        span: &Span,
        platform: &str,
        done: &BTreeMap<usize, Stage>,
    ) -> Result<(CopyFrom, Key)> {
        match self.named_context(name) {
            Some((name, NamedContext::Directory)) => {
                let digest = KeyEncoder::new("kiln.context.v1")
                    .str("name", &name)
                    .finish();
                return Ok((CopyFrom::Named(name), digest));
            }
            Some((name, NamedContext::Image(reference))) => {
                return self
                    .image_source(&reference, span, platform)
                    .map_err(|e| from_context(e, &name, &reference));
            }
            None => {}
        }
        match self.find_stage(name, span)? {
            Some(index) => match done.get(&index) {
                Some(stage) => Ok((CopyFrom::Stage(index), stage.digest)),
                None => Err(Error::compile(
                    span.clone(),
                    format!(
                        "stage {name} is not built before this step; a stage cannot read from itself"
                    ),
                )),
            },
            None => self.image_source(name, span, platform),
        }
    }

    /// `--from` / mount `from=` an image.
    fn image_source(
        &mut self,
        reference: &str,
        span: &Span,
        platform: &str,
    ) -> Result<(CopyFrom, Key)> {
        let image = self.resolve_image(reference, platform, span)?;
        let digest = KeyEncoder::new("kiln.image.v1")
            .str("digest", &image.digest)
            .finish();
        Ok((
            CopyFrom::Image {
                reference: reference.to_string(),
                image,
            },
            digest,
        ))
    }

    /// Compiles one stage: the stage, its final config and its warnings.
    fn compile_stage(
        &mut self,
        index: usize,
        done: &BTreeMap<usize, Stage>,
        inherited: &mut Inherited,
    ) -> Result<(Stage, ImageConfig, Vec<Warning>)> {
        let head = &self.heads[index];
        let from = head.from;
        let mut reference = head.reference.clone();
        let platform = head.platform.clone();
        let name = head.name.clone();
        let base_stage = head.base_stage;
        // A stage replaced by a context is the context (no instructions); a
        // FROM naming a context reads it instead of the image or stage.
        let (instructions, context) = match (&head.replaced_by, &head.base_context) {
            (Some(replaced), _) => (&[][..], Some(replaced.clone())),
            (None, context) => (head.instructions, context.clone()),
        };
        let mut context_dir = None;
        let mut context_image = None;
        match context {
            Some((name, NamedContext::Image(image))) => {
                reference = image.clone();
                context_image = Some((name, image));
            }
            Some((name, NamedContext::Directory)) => {
                reference = "scratch".to_string();
                context_dir = Some(name);
            }
            None => {}
        }
        let (base, config, base_digest) = if let Some(parent) = base_stage {
            let not_built =
                || Error::compile(from.span.clone(), "base stage is not built yet".to_string());
            let stage = done.get(&parent).ok_or_else(not_built)?;
            let config = inherited.take(parent).ok_or_else(not_built)?;
            (Base::Stage(parent), config, stage.digest)
        } else if reference == "scratch" {
            let digest = KeyEncoder::new("kiln.base.v1")
                .str("scratch", &platform)
                .finish();
            (Base::Scratch, ImageConfig::default(), digest)
        } else {
            let image = self
                .resolve_image(&reference, &platform, &from.text_span())
                .map_err(|e| match &context_image {
                    Some((name, image)) => from_context(e, name, image),
                    None => e,
                })?;
            let digest = KeyEncoder::new("kiln.base.v1")
                .str("image", &image.digest)
                .str("platform", &platform)
                .finish();
            let config = image.config.clone();
            let image = Arc::unwrap_or_clone(image);
            (Base::Image { reference, image }, config, digest)
        };
        let mut state = StageState::new(config, base_digest);
        state.steps.reserve(instructions.len() + 1);
        if state.env_get("PATH").is_none() {
            state.env_set("PATH", DEFAULT_PATH);
        }
        if let Some(name) = &context_dir {
            // A directory as a stage: its files, as `COPY --from=NAME . /`
            // copies them, on an empty config.
            let mut instruction =
                parse_instruction(&format!("COPY --from={name} . /"), &from.span.file)?;
            relocate(&mut instruction, &from.span);
            self.dispatch(&mut state, &instruction, &platform, done)?;
        }
        // The base's ONBUILD triggers run first, and are not inherited.
        let triggers = state.config.on_build.take().unwrap_or_default();
        for trigger in &triggers {
            let instruction = parse_instruction(trigger, &from.span.file).map_err(|e| {
                Error::compile(
                    from.span.clone(),
                    format!("ONBUILD trigger {trigger:?} of the base image is invalid: {e}"),
                )
            })?;
            if matches!(
                instruction.keyword,
                Keyword::From | Keyword::Maintainer | Keyword::Onbuild
            ) {
                return Err(Error::compile(
                    from.span.clone(),
                    format!("ONBUILD trigger {trigger:?} of the base image is not allowed"),
                ));
            }
            let mut instruction = instruction;
            relocate(&mut instruction, &from.span);
            self.dispatch(&mut state, &instruction, &platform, done)?;
        }
        for instruction in instructions {
            self.dispatch(&mut state, instruction, &platform, done)?;
        }
        state.finish_config();
        let stage = Stage {
            index,
            name,
            span: from.span.clone(),
            base,
            platform,
            steps: state.steps,
            author: state.author,
            digest: state.digest,
        };
        Ok((stage, state.config, state.warnings))
    }

    fn dispatch(
        &mut self,
        state: &mut StageState,
        instruction: &Instruction,
        platform: &str,
        done: &BTreeMap<usize, Stage>,
    ) -> Result<()> {
        self.expander.begin();
        match instruction.keyword {
            Keyword::Arg => {
                let mut created_by = String::from("ARG");
                for pair in instruction.pairs.iter().flatten() {
                    let value = {
                        let lookup = |n: &str| state.lookup(n);
                        self.arg_value(pair, &instruction.text_span(), &lookup)?
                    };
                    match &value {
                        Some(v) => push_pair(&mut created_by, &pair.key, v),
                        None => {
                            created_by.push(' ');
                            created_by.push_str(&pair.key);
                        }
                    }
                    state.arg_set(&pair.key, value);
                }
                state.config_step(instruction, created_by);
                Ok(())
            }
            Keyword::Run => {
                let (run, digest, created_by) =
                    self.run_step(state, instruction, platform, done)?;
                state.push_with_digest(
                    instruction,
                    created_by,
                    false,
                    StepKind::Run(Box::new(run)),
                    digest,
                );
                Ok(())
            }
            Keyword::Copy | Keyword::Add => {
                let (copy, inputs, created_by) =
                    self.copy_step(state, instruction, platform, done)?;
                let digest = digest_copy(&state.digest, &copy, &inputs);
                state.push_with_digest(
                    instruction,
                    created_by,
                    false,
                    StepKind::Copy(Box::new(copy)),
                    digest,
                );
                Ok(())
            }
            Keyword::Workdir => {
                let created_by = apply_config(state, instruction, &self.expander)?;
                let path = state.workdir().to_string();
                let user = state.config.user.clone().filter(|u| !u.is_empty());
                let mut enc = KeyEncoder::chained("kiln.workdir.v2", &state.digest);
                enc.str("path", &path).opt_str("user", user.as_deref());
                let digest = enc.finish();
                state.push_with_digest(
                    instruction,
                    created_by,
                    false,
                    StepKind::Workdir(Box::new(WorkdirStep { path, user })),
                    digest,
                );
                Ok(())
            }
            Keyword::Maintainer => {
                state.author = Some(instruction.text().to_string());
                state.config_step(instruction, history("MAINTAINER", instruction.text()));
                Ok(())
            }
            Keyword::From => Err(Error::compile(
                instruction.span.clone(),
                "FROM cannot appear here".to_string(),
            )),
            _ => {
                let created_by = apply_config(state, instruction, &self.expander)?;
                state.config_step(instruction, created_by);
                Ok(())
            }
        }
    }

    fn run_step(
        &mut self,
        state: &mut StageState,
        instruction: &Instruction,
        platform: &str,
        done: &BTreeMap<usize, Stage>,
    ) -> Result<(RunStep, Key, String)> {
        let mut files = Vec::new();
        let argv = if instruction.exec {
            if !instruction.heredocs.is_empty() {
                return Err(Error::compile(
                    instruction.text_span(),
                    "heredocs need the shell form of RUN, not a JSON array".to_string(),
                ));
            }
            instruction.args.clone()
        } else {
            let command = instruction.args.first().cloned().unwrap_or_default();
            let single = instruction.heredocs.len() == 1
                && is_heredoc_marker(&command, &instruction.heredocs[0].name);
            let script = if single {
                let heredoc = &instruction.heredocs[0];
                let content = heredoc.effective_content();
                if content.starts_with("#!") {
                    // BuildKit writes a script with a shebang to a file and
                    // runs the file.
                    if heredoc.name.contains('/') {
                        return Err(Error::compile(
                            instruction.text_span(),
                            format!("heredoc name {:?} cannot contain '/'", heredoc.name),
                        ));
                    }
                    let path = format!("/dev/pipes/{}", heredoc.name);
                    files.push(RunFile {
                        path: path.clone(),
                        content,
                        mode: 0o755,
                    });
                    path
                } else {
                    content
                }
            } else {
                // The shell reads the heredocs itself (stdin, several, `<<-`).
                let mut full = command;
                for heredoc in &instruction.heredocs {
                    full.push('\n');
                    full.push_str(&heredoc.content);
                    full.push_str(&heredoc.name);
                }
                full
            };
            state.shell_with(script)
        };
        let network = match instruction.flag("network").and_then(|f| f.value.as_deref()) {
            Some("none") => Some(Network::None),
            Some("host") => Some(Network::Host),
            Some(_) => Some(Network::Default),
            None => None,
        };
        let security = match instruction
            .flag("security")
            .and_then(|f| f.value.as_deref())
        {
            Some("insecure") => Security::Insecure,
            _ => Security::Sandbox,
        };
        let workdir = state.workdir().to_string();
        // Exactly as many as there are flags: a mount is large, and a long
        // Dockerfile has many RUN steps with one.
        let mount_flags = instruction.flags.iter().filter(|f| f.name == "mount");
        let mut mounts = Vec::with_capacity(mount_flags.clone().count());
        let mut inputs = Vec::new();
        let mut ssh_count = 0;
        for flag in mount_flags {
            let lookup = |n: &str| state.lookup(n);
            let value = flag.value.as_deref().unwrap_or_default();
            let spec = parse_mount(value, &workdir, &mut ssh_count, &|raw: &str| {
                self.expander.bounded(raw, &lookup)
            })
            .map_err(|m| Error::compile(flag.span.clone(), format!("--mount: {m}")))?;
            let from = match &spec.from {
                Some(name) => {
                    let (from, key) = self.copy_source(name, &flag.span, platform, done)?;
                    inputs.push(key);
                    Some(from)
                }
                None => None,
            };
            mounts.push(spec.into_mount(from));
        }
        let user = state.config.user.clone().filter(|u| !u.is_empty());
        let env_key = state.env_key();
        let run_env = state.run_env(&self.options.build_args);
        let argv_len: usize = argv.iter().map(|a| a.len() + 1).sum();
        let mut created_by = String::with_capacity(4 + run_env.history_args.len() + argv_len + 11);
        created_by.push_str("RUN ");
        created_by.push_str(&run_env.history_args);
        push_joined(&mut created_by, &argv, " ");
        created_by.push_str(" # buildkit");
        let run = RunStep {
            argv,
            env: run_env.env.clone(),
            user,
            workdir,
            network,
            security,
            mounts,
            files,
        };
        let mut enc = KeyEncoder::chained("kiln.run.v3", &state.digest);
        enc.list("argv", &run.argv)
            .key("env", &env_key)
            .opt_str("user", run.user.as_deref())
            .str("workdir", &run.workdir)
            .opt_str(
                "network",
                run.network.map(|network| match network {
                    Network::Default => "default",
                    Network::None => "none",
                    Network::Host => "host",
                }),
            )
            .str(
                "security",
                match run.security {
                    Security::Sandbox => "sandbox",
                    Security::Insecure => "insecure",
                },
            )
            .u64("mounts", run.mounts.len() as u64);
        for mount in &run.mounts {
            encode_mount(&mut enc, mount);
        }
        enc.list("inputs", inputs.iter().map(|k| k.0));
        enc.u64("files", run.files.len() as u64);
        for file in &run.files {
            enc.str("path", &file.path)
                .str("content", &file.content)
                .u64("mode", u64::from(file.mode));
        }
        let digest = enc.finish();
        Ok((run, digest, created_by))
    }

    fn copy_step(
        &mut self,
        state: &StageState,
        instruction: &Instruction,
        platform: &str,
        done: &BTreeMap<usize, Stage>,
    ) -> Result<(CopyStep, Vec<Key>, String)> {
        let lookup = |n: &str| state.lookup(n);
        let span = &instruction.text_span();
        let add = instruction.keyword == Keyword::Add;
        let Some((dest_raw, source_words)) = instruction.args.split_last() else {
            return Err(Error::compile(
                span.clone(),
                format!("{} needs sources and a destination", instruction.keyword),
            ));
        };
        let mut sources = Vec::new();
        let mut heredocs = Vec::new();
        for word in source_words {
            if let Some(heredoc) = instruction
                .heredocs
                .iter()
                .find(|h| is_heredoc_marker(word, &h.name))
            {
                let content = heredoc.effective_content();
                let content = if heredoc.expand {
                    let expanded =
                        expand_heredoc(&content, self.escape, &lookup).and_then(|expanded| {
                            self.expander.account(content.len(), expanded.len())?;
                            Ok(expanded)
                        });
                    expanded.map_err(|e| {
                        Error::compile(span.clone(), format!("heredoc {}: {e}", heredoc.name))
                    })?
                } else {
                    content
                };
                heredocs.push((heredoc.name.clone(), content));
                continue;
            }
            let source = self.expand(word, span, &lookup)?;
            if source.is_empty() {
                return Err(Error::compile(
                    span.clone(),
                    format!("source {word:?} expands to an empty path"),
                ));
            }
            sources.push(source);
        }
        let dest_expanded = self.expand(dest_raw, span, &lookup)?;
        let workdir = state.workdir().to_string();
        let dest = if dest_expanded.starts_with('/') {
            dest_expanded.clone()
        } else {
            let mut joined = join_path(&workdir, &dest_expanded);
            if (dest_expanded.ends_with('/')
                || dest_expanded == "."
                || dest_expanded.ends_with("/."))
                && !joined.ends_with('/')
            {
                joined.push('/');
            }
            joined
        };
        let count = sources.len() + heredocs.len();
        let dest_is_dir = dest.ends_with('/');
        if count > 1 && !dest_is_dir {
            return Err(Error::compile(
                span.clone(),
                format!(
                    "{} with more than one source needs a directory destination ending in '/': write {dest}/",
                    instruction.keyword
                ),
            ));
        }
        let flag_value = |name: &str| -> Result<Option<String>> {
            match instruction.flag(name) {
                Some(flag) => self
                    .expand(
                        flag.value.as_deref().unwrap_or_default(),
                        &flag.span,
                        &lookup,
                    )
                    .map(Some),
                None => Ok(None),
            }
        };
        let bool_flag = |name: &str| {
            instruction
                .flag(name)
                .is_some_and(|f| f.value.as_deref() != Some("false"))
        };
        let chown = flag_value("chown")?;
        let chmod = flag_value("chmod")?;
        if let (Some(chmod), Some(flag)) = (&chmod, instruction.flag("chmod")) {
            if !valid_chmod(chmod) {
                return Err(Error::compile(
                    flag.span.clone(),
                    format!("--chmod={chmod:?} is not a mode; use octal like 755 or symbolic like u+x,g-w"),
                ));
            }
        }
        let checksum = flag_value("checksum")?;
        let mut exclude = Vec::new();
        for flag in instruction.flags.iter().filter(|f| f.name == "exclude") {
            exclude.push(self.expand(
                flag.value.as_deref().unwrap_or_default(),
                &flag.span,
                &lookup,
            )?);
        }
        let mut inputs = Vec::new();
        let from = match instruction.flag("from") {
            Some(flag) => {
                let name = self.expand(
                    flag.value.as_deref().unwrap_or_default(),
                    &flag.span,
                    &lookup,
                )?;
                let (from, key) = self.copy_source(&name, &flag.span, platform, done)?;
                inputs.push(key);
                from
            }
            None => CopyFrom::Context,
        };
        // BuildKit's history text: the keyword, --parents, --chown and
        // --chmod (not --from), the sources, heredoc names and the
        // destination as written, after expansion.
        let parents = bool_flag("parents");
        let shown_flags = [
            ("--chown=", chown.as_deref().unwrap_or_default()),
            ("--chmod=", chmod.as_deref().unwrap_or_default()),
        ];
        let keyword = instruction.keyword.as_str();
        let words: usize = sources.iter().map(|s| s.len() + 1).sum::<usize>()
            + heredocs.iter().map(|(n, _)| n.len() + 3).sum::<usize>()
            + shown_flags
                .iter()
                .map(|(f, v)| f.len() + v.len() + 1)
                .sum::<usize>();
        let mut created_by =
            String::with_capacity(keyword.len() + 10 + words + dest_expanded.len() + 12);
        created_by.push_str(keyword);
        if parents {
            created_by.push_str(" --parents");
        }
        for (flag, value) in shown_flags {
            if !value.is_empty() {
                created_by.push(' ');
                created_by.push_str(flag);
                created_by.push_str(value);
            }
        }
        for source in &sources {
            created_by.push(' ');
            created_by.push_str(source);
        }
        for (name, _) in &heredocs {
            created_by.push_str(" <<");
            created_by.push_str(name);
        }
        created_by.push(' ');
        created_by.push_str(&dest_expanded);
        created_by.push_str(" # buildkit");
        let copy = CopyStep {
            add,
            sources,
            heredocs,
            dest,
            dest_is_dir,
            from,
            chown,
            chmod,
            link: bool_flag("link"),
            exclude,
            parents,
            checksum,
            keep_git_dir: bool_flag("keep-git-dir"),
            unpack: instruction
                .flag("unpack")
                .map(|f| f.value.as_deref() != Some("false")),
            workdir,
        };
        Ok((copy, inputs, created_by))
    }
}

/// Adds a RUN mount's definition to a key. Where a mount reads from is
/// only its kind here: the source's own digest is among the step's inputs.
fn encode_mount(enc: &mut KeyEncoder, mount: &RunMount) {
    let from_kind = |from: &CopyFrom| match from {
        CopyFrom::Context => "context",
        CopyFrom::Named(_) => "named-context",
        CopyFrom::Stage(_) => "stage",
        CopyFrom::Image { .. } => "image",
    };
    match mount {
        RunMount::Bind {
            target,
            from,
            source,
            rw,
        } => {
            enc.str("mount", "bind")
                .str("target", target)
                .str("from", from_kind(from))
                .str("source", source)
                .bool("rw", *rw);
        }
        RunMount::Cache {
            id,
            target,
            sharing,
            readonly,
            from,
            source,
            mode,
            uid,
            gid,
        } => {
            enc.str("mount", "cache")
                .str("id", id)
                .str("target", target)
                .str(
                    "sharing",
                    match sharing {
                        CacheSharing::Shared => "shared",
                        CacheSharing::Private => "private",
                        CacheSharing::Locked => "locked",
                    },
                )
                .bool("readonly", *readonly)
                .opt_str("from", from.as_ref().map(from_kind))
                .str("source", source)
                .u64("mode", u64::from(*mode))
                .u64("uid", u64::from(*uid))
                .u64("gid", u64::from(*gid));
        }
        RunMount::Tmpfs { target, size } => {
            enc.str("mount", "tmpfs")
                .str("target", target)
                .bool("sized", size.is_some())
                .u64("size", size.unwrap_or_default());
        }
        RunMount::Secret {
            id,
            target,
            env,
            required,
            mode,
            uid,
            gid,
        } => {
            enc.str("mount", "secret")
                .str("id", id)
                .opt_str("target", target.as_deref())
                .opt_str("env", env.as_deref())
                .bool("required", *required)
                .u64("mode", u64::from(*mode))
                .u64("uid", u64::from(*uid))
                .u64("gid", u64::from(*gid));
        }
        RunMount::Ssh {
            id,
            target,
            required,
            mode,
            uid,
            gid,
        } => {
            enc.str("mount", "ssh")
                .str("id", id)
                .str("target", target)
                .bool("required", *required)
                .u64("mode", u64::from(*mode))
                .u64("uid", u64::from(*uid))
                .u64("gid", u64::from(*gid));
        }
    }
}

/// Appends ` key=value` to a history text.
fn push_pair(text: &mut String, key: &str, value: &str) {
    text.reserve(key.len() + value.len() + 2);
    text.push(' ');
    text.push_str(key);
    text.push('=');
    text.push_str(value);
}

/// `KEYWORD`, sized for `pairs` to be added with `push_pair`.
fn history_with_pairs(keyword: &str, pairs: &[(String, String)]) -> String {
    let len: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut text = String::with_capacity(keyword.len() + len);
    text.push_str(keyword);
    text
}

/// `KEYWORD text`, a history entry.
fn history(keyword: &str, text: &str) -> String {
    let mut out = String::with_capacity(keyword.len() + 1 + text.len());
    out.push_str(keyword);
    out.push(' ');
    out.push_str(text);
    out
}

/// Appends `items` to `out` with `separator` between them.
fn push_joined(out: &mut String, items: &[String], separator: &str) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(separator);
        }
        out.push_str(item);
    }
}

fn find_arg<'a>(args: &'a [(String, Option<String>)], name: &str) -> Option<&'a str> {
    args.iter()
        .rev()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref())
}

fn digest_copy(parent: &Key, copy: &CopyStep, inputs: &[Key]) -> Key {
    let mut enc = KeyEncoder::chained("kiln.copy.v2", parent);
    enc.bool("add", copy.add)
        .list("sources", &copy.sources)
        .u64("heredocs", copy.heredocs.len() as u64);
    for (name, content) in &copy.heredocs {
        enc.str("name", name).str("content", content);
    }
    enc.str("dest", &copy.dest)
        .bool("dest_is_dir", copy.dest_is_dir)
        .str(
            "from",
            match copy.from {
                CopyFrom::Context => "context",
                CopyFrom::Named(_) => "named-context",
                CopyFrom::Stage(_) => "stage",
                CopyFrom::Image { .. } => "image",
            },
        )
        .list("inputs", inputs.iter().map(|k| k.0))
        .opt_str("chown", copy.chown.as_deref())
        .opt_str("chmod", copy.chmod.as_deref())
        .bool("link", copy.link)
        .list("exclude", &copy.exclude)
        .bool("parents", copy.parents)
        .opt_str("checksum", copy.checksum.as_deref())
        .bool("keep_git_dir", copy.keep_git_dir)
        .str("workdir", &copy.workdir);
    // Only when given, so that the digests of steps without it stay as
    // they were (fields are tagged: its presence cannot be confused).
    if let Some(unpack) = copy.unpack {
        enc.bool("unpack", unpack);
    }
    enc.finish()
}

/// Whether `word` is a heredoc marker (`<<EOF`, `<<-"EOF"`, `3<<EOF`) for
/// the heredoc called `name`.
fn is_heredoc_marker(word: &str, name: &str) -> bool {
    let Some(at) = word.find("<<") else {
        return false;
    };
    if !word[..at].chars().all(|c| c.is_ascii_digit()) {
        return false;
    }
    let rest = &word[at + 2..];
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    // Without quotes or escapes the delimiter is the word as written.
    if !rest.contains(['\'', '"', '\\']) {
        return rest == name;
    }
    process_word(rest, '\\', None).is_ok_and(|n| n == name)
}

/// Points an ONBUILD trigger's spans at the FROM line that ran it.
/// An image lookup for a named context says which context asked for it.
fn from_context(error: Error, name: &str, reference: &str) -> Error {
    match error {
        Error::Compile { span, message } => Error::Compile {
            span,
            message: format!("{message} (the image comes from the named context {name}, {reference}; check --build-context {name}=...)"),
        },
        other => other,
    }
}

fn relocate(instruction: &mut Instruction, span: &Span) {
    instruction.span = span.clone();
    instruction.text_start = span.position();
    for flag in &mut instruction.flags {
        flag.span = span.clone();
    }
}

fn valid_chmod(mode: &str) -> bool {
    if !mode.is_empty() && mode.len() <= 4 && mode.chars().all(|c| ('0'..='7').contains(&c)) {
        return true;
    }
    !mode.is_empty()
        && mode.split(',').all(|clause| {
            let ops_at = clause.find(['+', '-', '=']);
            match ops_at {
                Some(i) => {
                    clause[..i].chars().all(|c| "ugoa".contains(c))
                        && clause[i..].chars().all(|c| "+-=rwxXst".contains(c))
                }
                None => false,
            }
        })
}

/// Joins `path` to the directory `base` and cleans the result like Go's
/// `path.Clean`.
pub(crate) fn join_path(base: &str, path: &str) -> String {
    // Already clean (the common case): nothing to resolve.
    if is_clean_absolute(path) {
        return path.to_string();
    }
    // `./a/b/` names what `a/b` does (a trailing slash is the caller's to keep).
    let relative = path.strip_suffix('/').unwrap_or(path);
    let relative = relative.strip_prefix("./").unwrap_or(relative);
    if !relative.starts_with('/') && clean_components(relative) && is_clean_absolute(base) {
        let path = relative;
        // Room for the trailing slash a directory destination gets back.
        let mut out = String::with_capacity(base.len() + path.len() + 2);
        out.push_str(base);
        if base != "/" {
            out.push('/');
        }
        out.push_str(path);
        return out;
    }
    clean_join(base, path)
}

/// `join_path` without the shortcuts.
fn clean_join(base: &str, path: &str) -> String {
    let parts = if path.starts_with('/') {
        path.split('/').chain("".split('/'))
    } else {
        base.split('/').chain(path.split('/'))
    };
    let mut kept: Vec<&str> = Vec::new();
    for part in parts {
        match part {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            other => kept.push(other),
        }
    }
    let mut out = String::with_capacity(base.len() + path.len() + 1);
    if kept.is_empty() {
        out.push('/');
    }
    for part in kept {
        out.push('/');
        out.push_str(part);
    }
    out
}

/// `name=value` as an environment entry.
fn env_entry(name: &str, value: &str) -> Arc<str> {
    // An Arc<str> copies its text into an allocation of its own: short
    // entries are put together on the stack rather than in a String.
    let mut stack = [0u8; 256];
    let len = name.len() + 1 + value.len();
    if let Some(buf) = stack.get_mut(..len) {
        let (name_part, rest) = buf.split_at_mut(name.len());
        name_part.copy_from_slice(name.as_bytes());
        if let Some((equals, value_part)) = rest.split_first_mut() {
            *equals = b'=';
            value_part.copy_from_slice(value.as_bytes());
        }
        if let Ok(entry) = std::str::from_utf8(buf) {
            return Arc::from(entry);
        }
    }
    let mut entry = String::with_capacity(len);
    entry.push_str(name);
    entry.push('=');
    entry.push_str(value);
    Arc::from(entry)
}

/// Whether `path` is absolute and what Go's `path.Clean` returns for it.
fn is_clean_absolute(path: &str) -> bool {
    match path.strip_prefix('/') {
        Some("") => true,
        Some(rest) => clean_components(rest),
        None => false,
    }
}

/// Whether `path` is `/`-separated names that are neither empty, `.` nor `..`.
fn clean_components(path: &str) -> bool {
    // A byte scan ('/' and '.' are ASCII, so never part of a wider
    // character): paths are checked for every WORKDIR, COPY and mount.
    path.as_bytes()
        .split(|&b| b == b'/')
        .all(|c| !matches!(c, b"" | b"." | b".."))
}

/// A stage as it is being compiled.
struct StageState {
    /// The config; its `env` is kept in `env` while the stage compiles and
    /// written back by `finish_config`.
    config: ImageConfig,
    /// The image's Env entries (`K=V`), shared with every RUN that sees them.
    env: Vec<Arc<str>>,
    /// Whether the config has an Env list at all (absent and empty differ in
    /// the config JSON).
    env_present: bool,
    /// Where each name's first entry is in `env`: variables are looked up for
    /// every expansion, and a scan of the list would make a file with many
    /// ENVs quadratic. Kept in step by `env_set`.
    env_at: HashMap<String, usize>,
    /// ARGs declared in the stage, in order, with their values.
    args: Vec<StageArg>,
    /// Digest of everything RUN's environment is made of: the stage's first
    /// Env list, then every ENV and ARG change in order. Chained over the
    /// changes rather than hashed over the whole list for every RUN, which
    /// made a long Dockerfile's compile time quadratic in practice; equal
    /// keys still mean equal environments. Up to date only with
    /// `env_changes` folded in (`env_key()`).
    env_key: Key,
    /// The changes since `env_key`, on top of it; hashed when a RUN needs the
    /// key, so a run of ENV lines costs one hash, not one per variable.
    env_changes: Option<KeyEncoder>,
    /// RUN's environment and history prefix, built at the first RUN after a
    /// change and shared by the RUNs up to the next ENV or ARG.
    run_env: Option<RunEnv>,
    /// Whether CMD was set in this stage (ENTRYPOINT then keeps it).
    cmd_set: bool,
    /// The length of the last RUN history prefix built, to size the next.
    history_len_hint: usize,
    /// The last filesystem step's digest (the base's at first): the parent of
    /// the next RUN, COPY/ADD or WORKDIR. Config-only steps never change it,
    /// so editing a LABEL or CMD does not invalidate the RUNs after it; what
    /// a config change does to a filesystem step (env, user, workdir, shell)
    /// is in that step's own definition.
    digest: Key,
    /// The last step's digest, whatever its kind: the parent of a config
    /// step's own digest, so that no two steps of a stage share a digest.
    last_step: Key,
    steps: Vec<Step>,
    author: Option<String>,
    /// What the stage's instructions do that deserves a warning.
    warnings: Vec<Warning>,
}

/// An ARG in a stage's scope.
struct StageArg {
    name: String,
    value: Option<String>,
    /// `name=value` when there is a value: RUN's environment entry.
    entry: Option<Arc<str>>,
}

/// What RUN steps between two ENV/ARG changes share.
struct RunEnv {
    /// The environment: Env, then ARGs no ENV overrides, then proxy build
    /// args.
    env: Arc<[Arc<str>]>,
    /// BuildKit's history prefix of ARGs in scope, `|N K=V ... ` (empty
    /// without ARGs).
    history_args: String,
}

impl StageState {
    fn new(mut config: ImageConfig, digest: Key) -> Self {
        let env_present = config.env.is_some();
        let env: Vec<Arc<str>> = config
            .env
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(Arc::from)
            .collect();
        let mut env_at = HashMap::new();
        for (i, entry) in env.iter().enumerate() {
            let name = entry.split_once('=').map_or(&**entry, |(k, _)| k);
            env_at.entry(name.to_string()).or_insert(i);
        }
        let env_key = KeyEncoder::new("kiln.env.base.v1")
            .bool("present", env_present)
            .list("env", env.iter().map(|e| e.as_bytes()))
            .finish();
        StageState {
            config,
            env,
            env_present,
            env_at,
            args: Vec::new(),
            env_key,
            env_changes: None,
            run_env: None,
            cmd_set: false,
            history_len_hint: 0,
            digest,
            last_step: digest,
            steps: Vec::new(),
            author: None,
            warnings: Vec::new(),
        }
    }

    /// Writes the Env list back into the config.
    fn finish_config(&mut self) {
        self.config.env = self
            .env_present
            .then(|| self.env.iter().map(|e| e.to_string()).collect());
    }

    /// `ImageConfig::env_get` through the index.
    fn env_get(&self, name: &str) -> Option<&str> {
        let entry = self.env.get(*self.env_at.get(name)?)?;
        Some(entry.split_once('=').map_or("", |(_, v)| v))
    }

    /// `ImageConfig::env_set` through the index.
    fn env_set(&mut self, name: &str, value: &str) {
        self.env_present = true;
        self.env_changed("env", name, Some(value));
        let entry = env_entry(name, value);
        match self.env_at.get(name).and_then(|&i| self.env.get_mut(i)) {
            Some(existing) => *existing = entry,
            None => {
                self.env_at.insert(name.to_string(), self.env.len());
                self.env.push(entry);
            }
        }
    }

    /// Declares an ARG (a re-declared one moves to the end, as in BuildKit).
    fn arg_set(&mut self, name: &str, value: Option<String>) {
        let previous = self.args.iter().position(|arg| arg.name == name);
        let had_value = previous
            .and_then(|i| self.args.get(i))
            .is_some_and(|arg| arg.value.is_some());
        if value.is_some() || had_value {
            self.env_changed("arg", name, value.as_deref());
        } else {
            // Only the history text can change: an ARG without a value
            // never reaches RUN's environment.
            self.run_env = None;
        }
        // Names are unique in the list, so the earlier declaration is the
        // only one to drop.
        if let Some(i) = previous {
            self.args.remove(i);
        }
        let entry = value.as_deref().map(|v| env_entry(name, v));
        self.args.push(StageArg {
            name: name.to_string(),
            value,
            entry,
        });
    }

    /// Records one change for `env_key` and drops the shared RUN environment.
    fn env_changed(&mut self, kind: &str, name: &str, value: Option<&str>) {
        let previous = self.env_key;
        self.env_changes
            .get_or_insert_with(|| KeyEncoder::chained("kiln.env.changes.v2", &previous))
            .str("kind", kind)
            .str("name", name)
            .opt_str("value", value);
        self.run_env = None;
    }

    /// The digest of RUN's environment as it is now.
    fn env_key(&mut self) -> Key {
        if let Some(changes) = self.env_changes.take() {
            self.env_key = changes.finish();
        }
        self.env_key
    }

    /// A variable as instructions see it: ENV wins over ARG.
    fn lookup(&self, name: &str) -> Option<&str> {
        if let Some(value) = self.env_get(name) {
            return Some(value);
        }
        self.args
            .iter()
            .rev()
            .find(|arg| arg.name == name)
            .and_then(|arg| arg.value.as_deref())
    }

    fn workdir(&self) -> &str {
        match self.config.working_dir.as_deref() {
            Some(dir) if !dir.is_empty() => dir,
            _ => "/",
        }
    }

    /// The shell (SHELL, else `/bin/sh -c`) with `command` after it.
    fn shell_with(&self, command: String) -> Vec<String> {
        let shell: &[String] = match &self.config.shell {
            Some(shell) if !shell.is_empty() => shell,
            _ => &[],
        };
        let mut argv = Vec::with_capacity(shell.len().max(DEFAULT_SHELL.len()) + 1);
        if shell.is_empty() {
            argv.extend(DEFAULT_SHELL.iter().map(|s| s.to_string()));
        } else {
            argv.extend(shell.iter().cloned());
        }
        argv.push(command);
        argv
    }

    /// RUN's environment and history prefix, built once per ENV/ARG change.
    fn run_env(&mut self, build_args: &BTreeMap<String, String>) -> &RunEnv {
        let run_env = match self.run_env.take() {
            Some(run_env) => run_env,
            None => self.build_run_env(build_args),
        };
        self.run_env.insert(run_env)
    }

    fn build_run_env(&mut self, build_args: &BTreeMap<String, String>) -> RunEnv {
        let mut env = Vec::with_capacity(self.env.len() + self.args.len());
        env.extend(self.env.iter().cloned());
        // Sized like the last prefix: consecutive ones differ by a variable.
        let mut pairs = String::with_capacity(self.history_len_hint);
        let mut shown: usize = 0;
        for arg in &self.args {
            let overridden = self.env_get(&arg.name);
            if overridden.is_none() {
                env.extend(arg.entry.clone());
            }
            // History shows the value the command sees.
            if let Some(value) = overridden.or(arg.value.as_deref()) {
                shown += 1;
                push_pair(&mut pairs, &arg.name, value);
            }
        }
        self.history_len_hint = pairs.len();
        let history_args = if shown > 0 {
            let count = shown.to_string();
            let mut text = String::with_capacity(2 + count.len() + pairs.len());
            text.push('|');
            text.push_str(&count);
            text.push_str(&pairs);
            text.push(' ');
            text
        } else {
            String::new()
        };
        for name in PROXY_ARGS {
            if let Some(value) = build_args.get(name) {
                let declared = self.args.iter().any(|arg| arg.name == name);
                if !declared && self.env_get(name).is_none() {
                    env.push(Arc::from(format!("{name}={value}")));
                }
            }
        }
        RunEnv {
            env: Arc::from(env),
            history_args,
        }
    }

    fn push_with_digest(
        &mut self,
        instruction: &Instruction,
        created_by: String,
        empty_layer: bool,
        kind: StepKind,
        digest: Key,
    ) {
        if !empty_layer {
            self.digest = digest;
        }
        self.last_step = digest;
        self.steps.push(Step {
            span: instruction.span.clone(),
            text: instruction.original(),
            created_by,
            in_history: instruction.keyword != Keyword::Onbuild,
            empty_layer,
            kind,
            digest,
        });
    }

    /// A step that changes only the config.
    fn config_step(&mut self, instruction: &Instruction, created_by: String) {
        let digest = KeyEncoder::chained("kiln.config.v3", &self.last_step)
            .str("change", &created_by)
            .finish();
        self.push_with_digest(instruction, created_by, true, StepKind::Config, digest);
    }
}

/// Go's `%q` of a string list, as BuildKit writes CMD/ENTRYPOINT in history.
fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
    format!("[{}]", quoted.join(" "))
}

/// A duration in nanoseconds as Go's `time.Duration` prints it (`1m30s`,
/// `1.5s`, `500ms`, `0s`).
fn go_duration(nanos: u64) -> String {
    // The fraction of `value / 10^digits`, without trailing zeros or a lone '.'.
    let fraction = |value: u64, digits: u32| -> String {
        let remainder = value % 10u64.pow(digits);
        if remainder == 0 {
            return String::new();
        }
        let text = format!(".{remainder:0width$}", width = digits as usize);
        text.trim_end_matches('0').to_string()
    };
    if nanos < 1_000_000_000 {
        let (unit, digits) = match nanos {
            0 => return "0s".to_string(),
            1..=999 => ("ns", 0),
            1_000..=999_999 => ("µs", 3),
            _ => ("ms", 6),
        };
        let whole = nanos / 10u64.pow(digits);
        return format!("{whole}{}{unit}", fraction(nanos, digits));
    }
    let frac = fraction(nanos, 9);
    let seconds = nanos / 1_000_000_000;
    match (seconds / 3600, seconds / 60 % 60, seconds % 60) {
        (0, 0, s) => format!("{s}{frac}s"),
        (0, m, s) => format!("{m}m{s}{frac}s"),
        (h, m, s) => format!("{h}h{m}m{s}{frac}s"),
    }
}

/// One EXPOSE value as BuildKit reads it (`[[ip:]host_port:]port[-end][/proto]`):
/// its `port/proto` keys (ranges expanded, protocol lower-cased). The
/// container port may be 0; an IP address or a host port is accepted (the
/// lint module's ExposeInvalidFormat and ExposeProtoCasing checks warn
/// about them), and only the container port is exposed.
fn expose_ports(spec: &str) -> std::result::Result<Vec<String>, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let n = parts.len();
    let (ip, host, container) = match n {
        1 => (String::new(), "", parts[0]),
        2 => (String::new(), parts[0], parts[1]),
        _ => (parts[..n - 2].join(":"), parts[n - 2], parts[n - 1]),
    };
    let (port, written_proto) = container.split_once('/').unwrap_or((container, ""));
    if port.is_empty() {
        return Err(format!(
            "invalid port {spec:?}: no port given; write a number like 80, 80/udp or a range like 8000-8010"
        ));
    }
    let lower = written_proto.to_ascii_lowercase();
    let proto = match lower.as_str() {
        "" => "tcp",
        "tcp" | "udp" | "sctp" => lower.as_str(),
        _ => {
            return Err(format!(
                "invalid protocol {written_proto:?} in {spec:?}: use tcp, udp or sctp"
            ))
        }
    };
    if !ip.is_empty() {
        let bare = match ip.strip_prefix('[') {
            Some(rest) => rest.strip_suffix(']').unwrap_or(rest),
            None => ip.as_str(),
        };
        if bare.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("invalid IP address {ip:?} in {spec:?}"));
        }
    }
    let (low, high) = port_range(port).map_err(|m| format!("invalid port {spec:?}: {m}"))?;
    if !host.is_empty() {
        let (host_low, host_high) =
            port_range(host).map_err(|m| format!("invalid host port {host:?} in {spec:?}: {m}"))?;
        // A host range is allowed with a single container port.
        if high - low != host_high - host_low && high != low {
            return Err(format!(
                "invalid ranges in {spec:?}: the container ports {port} and host ports {host} differ in length"
            ));
        }
    }
    let ports = (low..=high)
        .map(|port| {
            let port = port.to_string();
            let mut key = String::with_capacity(port.len() + 1 + proto.len());
            key.push_str(&port);
            key.push('/');
            key.push_str(proto);
            key
        })
        .collect();
    Ok(ports)
}

/// `80` or `8000-8010` (each 0 to 65535) as a range.
fn port_range(text: &str) -> std::result::Result<(u32, u32), String> {
    let number = |t: &str| -> std::result::Result<u32, String> {
        match t.parse::<i64>() {
            Ok(n) if (0..=65535).contains(&n) => Ok(n as u32),
            Ok(_) => Err("a port is a number from 0 to 65535".to_string()),
            Err(_) => Err(format!(
                "{t:?} is not a number; write a port like 80 or a range like 8000-8010"
            )),
        }
    };
    match text.split_once('-') {
        Some((start, end)) if start != end => {
            let (low, high) = (number(start)?, number(end)?);
            if high < low {
                return Err("the range ends before it starts".to_string());
            }
            Ok((low, high))
        }
        Some((start, _)) => number(start).map(|p| (p, p)),
        None => number(text).map(|p| (p, p)),
    }
}

/// Applies an instruction that only changes the config; returns its history
/// text.
fn apply_config(
    state: &mut StageState,
    instruction: &Instruction,
    expander: &Expander,
) -> Result<String> {
    let span = &instruction.text_span();
    let expand = |state: &StageState, raw: &str| -> Result<String> {
        let lookup = |n: &str| state.lookup(n);
        expander.word(raw, span, &lookup)
    };
    let config_args = |state: &StageState| -> Vec<String> {
        if instruction.exec {
            instruction.args.clone()
        } else if instruction.args.is_empty() {
            Vec::new()
        } else {
            state.shell_with(instruction.args.join(" "))
        }
    };
    let text = match instruction.keyword {
        Keyword::Env => {
            // Every pair sees the values from before this line.
            let mut expanded = Vec::new();
            for pair in instruction.pairs.iter().flatten() {
                let key = expand(state, &pair.raw_key)?;
                let value = expand(state, pair.raw_value.as_deref().unwrap_or_default())?;
                if key.is_empty() || key.contains('=') {
                    return Err(Error::compile(
                        span.clone(),
                        format!("invalid ENV name {key:?}"),
                    ));
                }
                expanded.push((key, value));
            }
            let mut text = history_with_pairs("ENV", &expanded);
            for (key, value) in expanded {
                push_pair(&mut text, &key, &value);
                state.env_set(&key, &value);
            }
            text
        }
        Keyword::Label => {
            let mut expanded = Vec::new();
            for pair in instruction.pairs.iter().flatten() {
                let key = expand(state, &pair.raw_key)?;
                let value = expand(state, pair.raw_value.as_deref().unwrap_or_default())?;
                expanded.push((key, value));
            }
            let mut text = history_with_pairs("LABEL", &expanded);
            let labels = state.config.labels.get_or_insert_with(BTreeMap::new);
            for (key, value) in expanded {
                push_pair(&mut text, &key, &value);
                labels.insert(key, value);
            }
            text
        }
        Keyword::Expose => {
            let mut ports = Vec::new();
            for arg in &instruction.args {
                let value = expand(state, arg)?;
                for word in value.split_whitespace() {
                    ports.extend(expose_ports(word).map_err(|m| Error::compile(span.clone(), m))?);
                }
            }
            // BuildKit prints the list as Go does: `EXPOSE [80/tcp 53/udp]`.
            let mut text = String::from("EXPOSE [");
            for (index, port) in ports.iter().enumerate() {
                if index > 0 {
                    text.push(' ');
                }
                text.push_str(port);
            }
            text.push(']');
            let exposed = state.config.exposed_ports.get_or_insert_with(BTreeMap::new);
            for port in ports {
                exposed.insert(port, Empty {});
            }
            text
        }
        Keyword::User => {
            // A USER that expands to nothing is root, as in BuildKit (which
            // then leaves User out of the config).
            let user = expand(state, instruction.text())?;
            let text = history("USER", &user);
            state.config.user = (!user.is_empty()).then_some(user);
            text
        }
        Keyword::Workdir => {
            // A WORKDIR that expands to nothing keeps the directory, as in
            // BuildKit.
            let dir = expand(state, instruction.text())?;
            let path = join_path(state.workdir(), &dir);
            state.config.working_dir = Some(path.clone());
            history("WORKDIR", &path)
        }
        Keyword::Volume => {
            let mut volumes = Vec::new();
            for arg in &instruction.args {
                let value = expand(state, arg)?;
                if value.trim().is_empty() {
                    return Err(Error::compile(
                        span.clone(),
                        "VOLUME paths cannot be empty".to_string(),
                    ));
                }
                volumes.push(value);
            }
            let map = state.config.volumes.get_or_insert_with(BTreeMap::new);
            for volume in &volumes {
                map.insert(volume.clone(), Empty {});
            }
            format!("VOLUME [{}]", volumes.join(" "))
        }
        Keyword::Stopsignal => {
            let signal = expand(state, instruction.text())?;
            if !valid_signal(&signal) {
                return Err(Error::compile(
                    span.clone(),
                    format!("invalid signal {signal:?}: use a name like SIGTERM or a number"),
                ));
            }
            // Kept as written (`sigterm` stays `sigterm`), as BuildKit does.
            state.config.stop_signal = Some(signal.clone());
            history("STOPSIGNAL", &signal)
        }
        Keyword::Cmd => {
            let argv = config_args(state);
            let text = format!("CMD {}", go_quote_list(&argv));
            state.config.cmd = Some(argv);
            // BuildKit sets it on every CMD (its meaning is Windows-only).
            state.config.args_escaped = Some(true);
            state.cmd_set = true;
            text
        }
        Keyword::Entrypoint => {
            let argv = config_args(state);
            let text = format!("ENTRYPOINT {}", go_quote_list(&argv));
            state.config.entrypoint = Some(argv);
            if !state.cmd_set {
                state.config.cmd = None;
            }
            text
        }
        Keyword::Shell => {
            state.config.shell = Some(instruction.args.clone());
            format!("SHELL [{}]", instruction.args.join(" "))
        }
        Keyword::Healthcheck => {
            let kind = instruction.args.first().map(|k| k.to_ascii_uppercase());
            let mut check = Healthcheck::default();
            if kind.as_deref() == Some("NONE") {
                check.test = vec!["NONE".to_string()];
            } else {
                let command = instruction.args.get(1..).unwrap_or_default();
                check.test = if instruction.exec {
                    std::iter::once("CMD".to_string())
                        .chain(command.iter().cloned())
                        .collect()
                } else {
                    vec!["CMD-SHELL".to_string(), command.join(" ")]
                };
                for flag in &instruction.flags {
                    let value = flag.value.as_deref().unwrap_or_default();
                    let fail = |m: String| Error::compile(flag.span.clone(), m);
                    match flag.name.as_str() {
                        "retries" => {
                            check.retries = value.parse().map_err(|_| {
                                fail(format!("--retries must be a whole number, not {value:?}"))
                            })?
                        }
                        name => {
                            let ns = parse_duration(value)
                                .map_err(|m| fail(format!("--{name}: {m}")))?;
                            match name {
                                "interval" => check.interval = ns,
                                "timeout" => check.timeout = ns,
                                "start-period" => check.start_period = ns,
                                _ => check.start_interval = ns,
                            }
                        }
                    }
                }
            }
            // BuildKit prints the config struct with Go's `%+v`.
            let text = format!(
                "HEALTHCHECK {{Test:[{}] Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
                check.test.join(" "),
                go_duration(check.interval),
                go_duration(check.timeout),
                go_duration(check.start_period),
                go_duration(check.start_interval),
                check.retries
            );
            state.config.healthcheck = Some(check);
            text
        }
        Keyword::Onbuild => {
            let mut trigger = instruction.text().to_string();
            if let Some(inner) = &instruction.onbuild {
                for heredoc in &inner.heredocs {
                    trigger.push('\n');
                    trigger.push_str(&heredoc.content);
                    trigger.push_str(&heredoc.name);
                }
            }
            state
                .config
                .on_build
                .get_or_insert_with(Vec::new)
                .push(trigger.clone());
            format!("ONBUILD {trigger}")
        }
        other => {
            return Err(Error::compile(
                instruction.span.clone(),
                format!("{other} does not change the image config"),
            ))
        }
    };
    Ok(text)
}

/// Linux's signal names, as BuildKit's signal table has them.
const SIGNALS: [&str; 35] = [
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
    "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP",
    "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ", "RTMIN",
];

/// Whether STOPSIGNAL names a signal as BuildKit reads one: a whole number
/// other than 0, or a name from the table (`SIG` optional, any case),
/// `RTMIN+1` to `RTMIN+15` and `RTMAX-14` to `RTMAX` included.
fn valid_signal(signal: &str) -> bool {
    if let Ok(number) = signal.parse::<i64>() {
        return number != 0;
    }
    let upper = signal.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let offset = |prefix: &str, sign: char, max: u32| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix(sign))
            .and_then(|text| text.parse::<u32>().ok().filter(|n| n.to_string() == text))
            .is_some_and(|n| (1..=max).contains(&n))
    };
    SIGNALS.contains(&name)
        || name == "RTMAX"
        || offset("RTMIN", '+', 15)
        || offset("RTMAX", '-', 14)
}

/// The `from=` value of a `--mount` spec, unexpanded, if any.
fn mount_from(spec: &str) -> Option<String> {
    crate::mount::csv_fields(spec)
        .into_iter()
        .find_map(|field| field.strip_prefix("from=").map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_go_prints_them() {
        for (nanos, go) in [
            (0, "0s"),
            (1, "1ns"),
            (1_100, "1.1µs"),
            (2_200_000, "2.2ms"),
            (1_000_000, "1ms"),
            (999_999_999, "999.999999ms"),
            (3_300_000_000, "3.3s"),
            (5_000_000_000, "5s"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h0m0s"),
            (4_000_005_000_000, "1h6m40.005s"),
        ] {
            assert_eq!(go_duration(nanos), go, "{nanos} ns");
        }
    }

    fn compiled(text: &str) -> Result<BuildGraph> {
        let dockerfile = crate::parse(text, "Dockerfile")?;
        compile(&dockerfile, &CompileOptions::default(), &crate::NoImages)
    }

    #[test]
    fn stop_signals_as_buildkit_reads_them() {
        for signal in [
            "SIGTERM",
            "sigterm",
            "Term",
            "9",
            "-5",
            "SIGRTMIN+15",
            "rtmax-14",
            "RTMAX",
        ] {
            let graph = compiled(&format!("FROM scratch\nSTOPSIGNAL {signal}\n")).unwrap();
            assert_eq!(
                graph.config.stop_signal.as_deref(),
                Some(signal),
                "{signal}"
            );
        }
        for signal in ["0", "SIGNOPE", "RTMIN+16", "RTMIN+01", "RTMAX-15", "SIG"] {
            let error = compiled(&format!("FROM scratch\nSTOPSIGNAL {signal}\n")).unwrap_err();
            assert!(
                error.to_string().contains("invalid signal"),
                "{signal}: {error}"
            );
        }
    }

    #[test]
    fn one_instruction_cannot_grow_past_its_limit() {
        let mut text = format!("FROM scratch\nENV A={}\nLABEL", "x".repeat(900_000));
        for i in 0..20 {
            text.push_str(&format!(" l{i}=$A"));
        }
        text.push('\n');
        let error = compiled(&text).unwrap_err().to_string();
        assert!(
            error.starts_with("Dockerfile:3:7: cannot expand \"$A\": the instruction's expansions are larger than 16 MiB"),
            "{error}"
        );
        // The same words over several instructions are fine.
        let mut text = format!("FROM scratch\nENV A={}\n", "x".repeat(900_000));
        for i in 0..20 {
            text.push_str(&format!("LABEL l{i}=$A\n"));
        }
        assert!(compiled(&text).is_ok());
    }

    #[test]
    fn join_shortcuts_match_the_general_join() {
        const PIECES: &[&str] = &["/", "a", "b", ".", "..", "//", "é"];
        let mut state: u64 = 0x0DDB_1A5E_5BAD_5EED;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut random =
            |len: usize| -> String { (0..len).map(|_| PIECES[next(PIECES.len())]).collect() };
        for _ in 0..20_000 {
            let base = random(4);
            let path = random(5);
            for base in [base.clone(), format!("/{base}"), clean_join("/", &base)] {
                assert_eq!(
                    join_path(&base, &path),
                    clean_join(&base, &path),
                    "{base:?} {path:?}"
                );
            }
        }
        assert_eq!(join_path("/work", "a/b"), "/work/a/b");
        assert_eq!(join_path("/", "a"), "/a");
        assert_eq!(join_path("/work", "/abs/x"), "/abs/x");
        assert_eq!(join_path("/work", "../x/./y/"), "/x/y");
    }
}
