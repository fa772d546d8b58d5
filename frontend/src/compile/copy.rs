//! COPY and ADD: sources (context, stages, images, named contexts, URLs,
//! git, heredocs), destinations, ownership and modes, and their digest.

use super::*;

impl Compiler<'_> {
    /// A COPY or ADD step: its sources, destination, flags and where it
    /// reads from, all expanded; the keys of the stages or images it reads;
    /// and its history text.
    pub(super) fn copy_step(
        &mut self,
        state: &StageState,
        instruction: &Instruction,
        platform: &str,
        done: &BTreeMap<usize, Stage>,
    ) -> Result<(CopyStep, Vec<Key>, String)> {
        let lookup = |n: &str| state.lookup(n);
        let span = &instruction.text_span();
        let Some((dest_raw, source_words)) = instruction.args.split_last() else {
            return Err(Error::compile(
                span.clone(),
                format!("{} needs sources and a destination", instruction.keyword),
            ));
        };
        let (sources, heredocs) = self.copy_sources(instruction, source_words, span, &lookup)?;
        let dest_expanded = self.expand(dest_raw, span, &lookup)?;
        let workdir = state.workdir().to_string();
        let dest = copy_destination(&workdir, &dest_expanded);
        let dest_is_dir = dest.ends_with('/');
        if sources.len() + heredocs.len() > 1 && !dest_is_dir {
            return Err(Error::compile(
                span.clone(),
                format!(
                    "{} with more than one source needs a directory destination ending in '/': write {dest}/",
                    instruction.keyword
                ),
            ));
        }
        let flags = self.copy_flags(instruction, &lookup)?;
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
        let bool_flag = |name: &str| {
            instruction
                .flag(name)
                .is_some_and(|f| f.value.as_deref() != Some("false"))
        };
        let copy = CopyStep {
            add: instruction.keyword == Keyword::Add,
            sources,
            heredocs,
            dest,
            dest_is_dir,
            from,
            chown: flags.chown,
            chmod: flags.chmod,
            link: bool_flag("link"),
            exclude: flags.exclude,
            parents: bool_flag("parents"),
            checksum: flags.checksum,
            keep_git_dir: bool_flag("keep-git-dir"),
            unpack: instruction
                .flag("unpack")
                .map(|f| f.value.as_deref() != Some("false")),
            workdir,
        };
        let created_by = copy_history(instruction.keyword, &copy, &dest_expanded);
        Ok((copy, inputs, created_by))
    }

    /// The source words, expanded: paths (or URLs), and heredocs as
    /// (name, content) with their content expanded unless quoted.
    fn copy_sources(
        &self,
        instruction: &Instruction,
        words: &[String],
        span: &Span,
        lookup: &dyn Vars<'_>,
    ) -> Result<(Vec<String>, HeredocSources)> {
        let mut sources = Vec::new();
        let mut heredocs = Vec::new();
        for word in words {
            if let Some(heredoc) = instruction
                .heredocs
                .iter()
                .find(|h| is_heredoc_marker(word, &h.name))
            {
                let content = heredoc.effective_content();
                let content = if heredoc.expand {
                    let expanded =
                        expand_heredoc(&content, self.escape, lookup).and_then(|expanded| {
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
            let source = self.expand(word, span, lookup)?;
            if source.is_empty() {
                return Err(Error::compile(
                    span.clone(),
                    format!("source {word:?} expands to an empty path"),
                ));
            }
            sources.push(source);
        }
        Ok((sources, heredocs))
    }

    /// `--chown`, `--chmod` (checked), `--checksum` and `--exclude`, expanded.
    fn copy_flags(&self, instruction: &Instruction, lookup: &dyn Vars<'_>) -> Result<CopyFlags> {
        let flag_value = |name: &str| -> Result<Option<String>> {
            match instruction.flag(name) {
                Some(flag) => self
                    .expand(
                        flag.value.as_deref().unwrap_or_default(),
                        &flag.span,
                        lookup,
                    )
                    .map(Some),
                None => Ok(None),
            }
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
                lookup,
            )?);
        }
        Ok(CopyFlags {
            chown,
            chmod,
            checksum,
            exclude,
        })
    }
}

/// Heredoc sources as [`CopyStep::heredocs`] holds them: (name, content).
type HeredocSources = Vec<(String, String)>;

/// COPY's and ADD's flags that take an expanded value.
struct CopyFlags {
    chown: Option<String>,
    chmod: Option<String>,
    checksum: Option<String>,
    exclude: Vec<String>,
}

/// The absolute destination: a relative one is joined to WORKDIR, keeping
/// the trailing `/` (or `.`) that makes it a directory.
fn copy_destination(workdir: &str, expanded: &str) -> String {
    if expanded.starts_with('/') {
        return expanded.to_string();
    }
    let mut joined = join_path(workdir, expanded);
    if (expanded.ends_with('/') || expanded == "." || expanded.ends_with("/."))
        && !joined.ends_with('/')
    {
        joined.push('/');
    }
    joined
}

/// BuildKit's history text: the keyword, --parents, --chown and --chmod
/// (not --from), the sources, heredoc names and the destination as written,
/// after expansion.
fn copy_history(keyword: Keyword, copy: &CopyStep, dest_expanded: &str) -> String {
    let shown_flags = [
        ("--chown=", copy.chown.as_deref().unwrap_or_default()),
        ("--chmod=", copy.chmod.as_deref().unwrap_or_default()),
    ];
    let keyword = keyword.as_str();
    let words: usize = copy.sources.iter().map(|s| s.len() + 1).sum::<usize>()
        + copy
            .heredocs
            .iter()
            .map(|(n, _)| n.len() + 3)
            .sum::<usize>()
        + shown_flags
            .iter()
            .map(|(f, v)| f.len() + v.len() + 1)
            .sum::<usize>();
    let mut created_by =
        String::with_capacity(keyword.len() + 10 + words + dest_expanded.len() + 12);
    created_by.push_str(keyword);
    if copy.parents {
        created_by.push_str(" --parents");
    }
    for (flag, value) in shown_flags {
        if !value.is_empty() {
            created_by.push(' ');
            created_by.push_str(flag);
            created_by.push_str(value);
        }
    }
    for source in &copy.sources {
        created_by.push(' ');
        created_by.push_str(source);
    }
    for (name, _) in &copy.heredocs {
        created_by.push_str(" <<");
        created_by.push_str(name);
    }
    created_by.push(' ');
    created_by.push_str(dest_expanded);
    created_by.push_str(" # buildkit");
    created_by
}

pub(super) fn digest_copy(parent: &Key, copy: &CopyStep, inputs: &[Key]) -> Key {
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

pub(super) fn valid_chmod(mode: &str) -> bool {
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
