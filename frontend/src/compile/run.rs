//! RUN: the command (exec form, shell form, heredocs), its mounts, network
//! and security, its environment, and its definition digest.

use super::*;

impl Compiler<'_> {
    pub(super) fn run_step(
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
            instruction.args.to_vec()
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
        let network = instruction
            .flag("network")
            .map(|flag| {
                let value = flag.value.as_deref().unwrap_or_default();
                value
                    .parse::<Network>()
                    .map_err(|unknown| Error::compile(flag.span.clone(), unknown.to_string()))
            })
            .transpose()?;
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
        let shell = state.shell();
        let run_env = state.run_env(&self.options.build_args);
        let argv_len: usize = argv.iter().map(|a| a.len() + 1).sum();
        let mut created_by = String::with_capacity(4 + run_env.history_args.len() + argv_len + 11);
        created_by.push_str("RUN ");
        created_by.push_str(&run_env.history_args);
        push_joined(&mut created_by, &argv, " ");
        created_by.push_str(" # buildkit");
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
        let mut enc = KeyEncoder::chained("kiln.run.v3", &state.digest);
        enc.list("argv", &run.argv)
            .key("env", &env_key)
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
        let digest = enc.finish();
        Ok((run, digest, created_by))
    }
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
