//! The state of a stage as it compiles: config, ENV and ARG scope, RUN's
//! shared environment and shell, and the steps made so far.

use super::*;

/// `name=value` as an environment entry.
pub(super) fn env_entry(name: &str, value: &str) -> Arc<str> {
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

/// A stage as it is being compiled.
pub(super) struct StageState {
    /// The config; its `env` is kept in `env` while the stage compiles and
    /// written back by `finish_config`.
    pub(super) config: ImageConfig,
    /// The image's Env entries (`K=V`), shared with every RUN that sees them.
    pub(super) env: Vec<Arc<str>>,
    /// Whether the config has an Env list at all (absent and empty differ in
    /// the config JSON).
    pub(super) env_present: bool,
    /// Where each name's first entry is in `env`: variables are looked up for
    /// every expansion, and a scan of the list would make a file with many
    /// ENVs quadratic. Kept in step by `env_set`.
    pub(super) env_at: HashMap<String, usize>,
    /// ARGs declared in the stage, in order, with their values.
    pub(super) args: Vec<StageArg>,
    /// Digest of everything RUN's environment is made of: the stage's first
    /// Env list, then every ENV and ARG change in order. Chained over the
    /// changes rather than hashed over the whole list for every RUN, which
    /// made a long Dockerfile's compile time quadratic in practice; equal
    /// keys still mean equal environments. Up to date only with
    /// `env_changes` folded in (`env_key()`).
    pub(super) env_key: Key,
    /// The changes since `env_key`, on top of it; hashed when a RUN needs the
    /// key, so a run of ENV lines costs one hash, not one per variable.
    pub(super) env_changes: Option<KeyEncoder>,
    /// RUN's environment and history prefix, built at the first RUN after a
    /// change and shared by the RUNs up to the next ENV or ARG.
    pub(super) run_env: Option<RunEnv>,
    /// The SHELL in effect as RUN steps share it, made again after a SHELL.
    pub(super) shell: Option<Arc<[String]>>,
    /// Whether CMD was set in this stage (ENTRYPOINT then keeps it).
    pub(super) cmd_set: bool,
    /// The length of the last RUN history prefix built, to size the next.
    pub(super) history_len_hint: usize,
    /// The last filesystem step's digest (the base's at first): the parent of
    /// the next RUN, COPY/ADD or WORKDIR. Config-only steps never change it,
    /// so editing a LABEL or CMD does not invalidate the RUNs after it; what
    /// a config change does to a filesystem step (env, user, workdir, shell)
    /// is in that step's own definition.
    pub(super) digest: Key,
    /// The last step's digest, whatever its kind: the parent of a config
    /// step's own digest, so that no two steps of a stage share a digest.
    pub(super) last_step: Key,
    pub(super) steps: Vec<Step>,
    pub(super) author: Option<String>,
    /// What the stage's instructions do that deserves a warning.
    pub(super) warnings: Vec<Warning>,
}

/// An ARG in a stage's scope.
pub(super) struct StageArg {
    pub(super) name: String,
    pub(super) value: Option<String>,
    /// `name=value` when there is a value: RUN's environment entry.
    pub(super) entry: Option<Arc<str>>,
}

/// What RUN steps between two ENV/ARG changes share.
pub(super) struct RunEnv {
    /// The environment: Env, then ARGs no ENV overrides, then proxy build
    /// args.
    pub(super) env: Arc<[Arc<str>]>,
    /// BuildKit's history prefix of ARGs in scope, `|N K=V ... ` (empty
    /// without ARGs).
    pub(super) history_args: String,
}

impl StageState {
    pub(super) fn new(mut config: ImageConfig, digest: Key) -> Self {
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
            shell: None,
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
    pub(super) fn finish_config(&mut self) {
        self.config.env = self
            .env_present
            .then(|| self.env.iter().map(|e| e.to_string()).collect());
    }

    /// `ImageConfig::env_get` through the index.
    pub(super) fn env_get(&self, name: &str) -> Option<&str> {
        let entry = self.env.get(*self.env_at.get(name)?)?;
        Some(entry.split_once('=').map_or("", |(_, v)| v))
    }

    /// `ImageConfig::env_set` through the index.
    pub(super) fn env_set(&mut self, name: &str, value: &str) {
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
    pub(super) fn arg_set(&mut self, name: &str, value: Option<String>) {
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
    pub(super) fn env_changed(&mut self, kind: &str, name: &str, value: Option<&str>) {
        let previous = self.env_key;
        self.env_changes
            .get_or_insert_with(|| KeyEncoder::chained("kiln.env.changes.v2", &previous))
            .str("kind", kind)
            .str("name", name)
            .opt_str("value", value);
        self.run_env = None;
    }

    /// The digest of RUN's environment as it is now.
    pub(super) fn env_key(&mut self) -> Key {
        if let Some(changes) = self.env_changes.take() {
            self.env_key = changes.finish();
        }
        self.env_key
    }

    /// A variable as instructions see it: ENV wins over ARG.
    pub(super) fn lookup(&self, name: &str) -> Option<&str> {
        if let Some(value) = self.env_get(name) {
            return Some(value);
        }
        self.args
            .iter()
            .rev()
            .find(|arg| arg.name == name)
            .and_then(|arg| arg.value.as_deref())
    }

    pub(super) fn workdir(&self) -> &str {
        match self.config.working_dir.as_deref() {
            Some(dir) if !dir.is_empty() => dir,
            _ => "/",
        }
    }

    /// The shell in effect (SHELL, else `/bin/sh -c`), shared by the RUN
    /// steps until the next SHELL.
    pub(super) fn shell(&mut self) -> Arc<[String]> {
        let config = &self.config;
        self.shell
            .get_or_insert_with(|| match &config.shell {
                Some(shell) if !shell.is_empty() => shell.as_slice().into(),
                _ => DEFAULT_SHELL.iter().map(|s| s.to_string()).collect(),
            })
            .clone()
    }

    /// The shell (SHELL, else `/bin/sh -c`) with `command` after it.
    pub(super) fn shell_with(&self, command: String) -> Vec<String> {
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
    pub(super) fn run_env(&mut self, build_args: &BTreeMap<String, String>) -> &RunEnv {
        let run_env = match self.run_env.take() {
            Some(run_env) => run_env,
            None => self.build_run_env(build_args),
        };
        self.run_env.insert(run_env)
    }

    pub(super) fn build_run_env(&mut self, build_args: &BTreeMap<String, String>) -> RunEnv {
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

    pub(super) fn push_with_digest(
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
    pub(super) fn config_step(&mut self, instruction: &Instruction, created_by: String) {
        let digest = KeyEncoder::chained("kiln.config.v3", &self.last_step)
            .str("change", &created_by)
            .finish();
        self.push_with_digest(instruction, created_by, true, StepKind::Config, digest);
    }
}
