//! RUN: the command (exec form, shell form, heredocs), its mounts, network
//! and security, its environment, and its definition digest.

use super::*;

impl Compiler<'_> {
    /// A RUN step: its command, mounts, network, security and environment;
    /// its definition digest; and its history text.
    pub(super) fn run_step(
        &mut self,
        state: &mut StageState,
        instruction: &Instruction,
        platform: &str,
        done: &BTreeMap<usize, Stage>,
    ) -> Result<(RunStep, Key, String)> {
        let (argv, files) = run_command(state, instruction)?;
        let network = run_network(instruction)?;
        let security = match instruction
            .flag("security")
            .and_then(|f| f.value.as_deref())
        {
            Some("insecure") => Security::Insecure,
            _ => Security::Sandbox,
        };
        let workdir = state.workdir().to_string();
        let (mounts, inputs) = self.run_mounts(state, instruction, &workdir, platform, done)?;
        let user = state.config.user.clone().filter(|u| !u.is_empty());
        let env_key = state.env_key();
        let shell = state.shell();
        let run_env = state.run_env(&self.options.build_args);
        let created_by = run_history(&run_env.history_args, &argv);
        let run = RunStep {
            argv,
            shell,
            env: run_env.env.clone(),
            user,
            workdir,
            network,
            security,
            mounts,
            files,
        };
        let digest = digest_run(&state.digest, &run, &env_key, &inputs);
        Ok((run, digest, created_by))
    }

    /// The `--mount`s, expanded, and the keys of the stages and images they
    /// read.
    fn run_mounts(
        &mut self,
        state: &StageState,
        instruction: &Instruction,
        workdir: &str,
        platform: &str,
        done: &BTreeMap<usize, Stage>,
    ) -> Result<(Vec<RunMount>, Vec<Key>)> {
        // Exactly as many as there are flags: a mount is large, and a long
        // Dockerfile has many RUN steps with one.
        let mount_flags = instruction.flags.iter().filter(|f| f.name == "mount");
        let mut mounts = Vec::with_capacity(mount_flags.clone().count());
        let mut inputs = Vec::new();
        let mut ssh_count = 0;
        for flag in mount_flags {
            let lookup = |n: &str| state.lookup(n);
            let value = flag.value.as_deref().unwrap_or_default();
            let spec = parse_mount(value, workdir, &mut ssh_count, &|raw: &str| {
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
        Ok((mounts, inputs))
    }
}

/// RUN's argv and the files it needs: exec form as written; shell form
/// wrapped in SHELL, with its heredocs (see [`shell_script`]).
fn run_command(
    state: &StageState,
    instruction: &Instruction,
) -> Result<(Vec<String>, Vec<RunFile>)> {
    if instruction.exec {
        if !instruction.heredocs.is_empty() {
            return Err(Error::compile(
                instruction.text_span(),
                "heredocs need the shell form of RUN, not a JSON array".to_string(),
            ));
        }
        return Ok((instruction.args.to_vec(), Vec::new()));
    }
    let mut files = Vec::new();
    let script = shell_script(instruction, &mut files)?;
    Ok((state.shell_with(script), files))
}

/// The script a shell-form RUN hands its shell. A command that is one
/// heredoc is the heredoc's content, or, with a `#!` line, a file in
/// `/dev/pipes` (pushed to `files`) that runs, as BuildKit does; otherwise
/// the shell reads the heredocs itself (stdin, several, `<<-`).
fn shell_script(instruction: &Instruction, files: &mut Vec<RunFile>) -> Result<String> {
    let command = instruction.args.first().cloned().unwrap_or_default();
    let single = instruction.heredocs.len() == 1
        && is_heredoc_marker(&command, &instruction.heredocs[0].name);
    if !single {
        let mut full = command;
        for heredoc in &instruction.heredocs {
            full.push('\n');
            full.push_str(&heredoc.content);
            full.push_str(&heredoc.name);
        }
        return Ok(full);
    }
    let heredoc = &instruction.heredocs[0];
    let content = heredoc.effective_content();
    if !content.starts_with("#!") {
        return Ok(content);
    }
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
    Ok(path)
}

/// `--network`, if given (the parser has checked its value).
fn run_network(instruction: &Instruction) -> Result<Option<Network>> {
    instruction
        .flag("network")
        .map(|flag| {
            let value = flag.value.as_deref().unwrap_or_default();
            value
                .parse::<Network>()
                .map_err(|unknown| Error::compile(flag.span.clone(), unknown.to_string()))
        })
        .transpose()
}

/// BuildKit's history text: `RUN`, the ARGs RUN sees (`history_args`,
/// `|2 A=1 B=2 `), the argv and `# buildkit`.
fn run_history(history_args: &str, argv: &[String]) -> String {
    let argv_len: usize = argv.iter().map(|a| a.len() + 1).sum();
    let mut created_by = String::with_capacity(4 + history_args.len() + argv_len + 11);
    created_by.push_str("RUN ");
    created_by.push_str(history_args);
    push_joined(&mut created_by, argv, " ");
    created_by.push_str(" # buildkit");
    created_by
}

/// A RUN step's definition digest: its parent's, the command, environment
/// (by `env_key`), user, workdir, network, security, mounts, the keys of
/// what the mounts read, and the files.
fn digest_run(parent: &Key, run: &RunStep, env_key: &Key, inputs: &[Key]) -> Key {
    let mut enc = KeyEncoder::chained("kiln.run.v3", parent);
    enc.list("argv", &run.argv)
        .key("env", env_key)
        .opt_str("user", run.user.as_deref())
        .str("workdir", &run.workdir)
        .opt_str("network", run.network.map(Network::as_str))
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
    enc.finish()
}

/// Adds a RUN mount's definition to a key. Where a mount reads from is
/// only its kind here: the source's own digest is among the step's inputs.
pub(super) fn encode_mount(enc: &mut KeyEncoder, mount: &RunMount) {
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

/// Whether `word` is a heredoc marker (`<<EOF`, `<<-"EOF"`, `3<<EOF`) for
/// the heredoc called `name`.
pub(super) fn is_heredoc_marker(word: &str, name: &str) -> bool {
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

/// The `from=` value of a `--mount` spec, unexpanded, if any.
pub(super) fn mount_from(spec: &str) -> Option<String> {
    crate::mount::csv_fields(spec)
        .into_iter()
        .find_map(|field| field.strip_prefix("from=").map(str::to_string))
}
