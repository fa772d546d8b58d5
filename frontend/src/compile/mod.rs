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

mod copy;
mod image_config;
mod run;
mod state;

use crate::path::*;
use copy::*;
use image_config::*;
use run::*;
use state::*;

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
        let first_from = self.read_global_args()?;
        self.read_stage_heads(first_from)?;
        for index in 0..self.heads.len() {
            let head = &self.heads[index];
            let instructions = match head.replaced_by {
                Some(_) => &[][..],
                None => head.instructions,
            };
            self.heads[index].reads = self.stage_reads(instructions)?;
        }
        Ok(())
    }

    /// The ARGs before the first FROM, with their values; returns the index
    /// of the first instruction that is not one.
    fn read_global_args(&mut self) -> Result<usize> {
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
        Ok(i)
    }

    /// One [`StageHead`] per FROM line from `first` on: its base (expanded
    /// with the global ARGs), platform, name and instructions.
    fn read_stage_heads(&mut self, first: usize) -> Result<()> {
        let instructions: &'a [Instruction] = &self.dockerfile.instructions;
        let mut starts: Vec<usize> = (first..instructions.len())
            .filter(|&j| instructions[j].keyword == Keyword::From)
            .collect();
        starts.push(instructions.len());
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (index, window) in starts.windows(2).enumerate() {
            let from = &instructions[window[0]];
            self.expander.begin();
            let (reference, platform) = self.base_reference_and_platform(from)?;
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
        Ok(())
    }

    /// A FROM line's image reference and `--platform` (the target platform
    /// without one), expanded with the global ARGs and checked.
    fn base_reference_and_platform(&self, from: &Instruction) -> Result<(String, String)> {
        let lookup = |n: &str| self.global_lookup(n);
        let written = from.args.first().map_or("", String::as_str);
        let reference = self.expand(written, &from.text_span(), &lookup)?;
        if reference.is_empty() {
            return Err(Error::compile(
                from.text_span(),
                format!(
                    "FROM {written:?} expands to an empty image name; set the ARG it uses (--build-arg)"
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
        Ok((reference, platform))
    }

    /// The stages a stage's instructions read through `--from` and mounts,
    /// with the flag that reads each. ARGs are the only variables known
    /// before running anything, as in BuildKit.
    fn stage_reads(&self, instructions: &[Instruction]) -> Result<Vec<(usize, Span)>> {
        let mut reads = Vec::new();
        let mut args: Vec<(String, Option<String>)> = Vec::new();
        for instruction in instructions {
            self.expander.begin();
            let lookup = |n: &str| find_arg(&args, n);
            let from_words = match instruction.keyword {
                Keyword::Arg => {
                    for pair in instruction.pairs.iter().flatten() {
                        let value = {
                            let lookup = |n: &str| find_arg(&args, n);
                            self.arg_value(pair, &instruction.text_span(), &lookup)?
                        };
                        args.push((pair.key.clone(), value));
                    }
                    continue;
                }
                // `COPY --from=...`, as written.
                Keyword::Copy => instruction
                    .flag("from")
                    .map(|flag| (flag, flag.value.clone().unwrap_or_default()))
                    .into_iter()
                    .collect(),
                // `RUN --mount=...,from=...`, as written.
                Keyword::Run => instruction
                    .flags
                    .iter()
                    .filter(|f| f.name == "mount")
                    .filter_map(|flag| {
                        mount_from(flag.value.as_deref().unwrap_or_default()).map(|v| (flag, v))
                    })
                    .collect(),
                _ => Vec::new(),
            };
            for (flag, raw) in from_words {
                let name = self.expand(&raw, &flag.span, &lookup)?;
                // A named context is read as such, not as a stage.
                if self.named_context(&name).is_some() {
                    continue;
                }
                if let Some(stage) = self.find_stage(&name, &flag.span)? {
                    reads.push((stage, flag.span.clone()));
                }
            }
        }
        Ok(reads)
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
