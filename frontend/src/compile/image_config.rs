//! Instructions that change only the image config (ENV, LABEL, EXPOSE,
//! CMD, ENTRYPOINT, USER, VOLUME, STOPSIGNAL, SHELL, HEALTHCHECK,
//! ONBUILD), as BuildKit writes them.

use super::*;

/// Go's `%q` of a string list, as BuildKit writes CMD/ENTRYPOINT in history.
pub(super) fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
    format!("[{}]", quoted.join(" "))
}

/// A duration in nanoseconds as Go's `time.Duration` prints it (`1m30s`,
/// `1.5s`, `500ms`, `0s`).
pub(super) fn go_duration(nanos: u64) -> String {
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
pub(super) fn expose_ports(spec: &str) -> std::result::Result<Vec<String>, String> {
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
pub(super) fn port_range(text: &str) -> std::result::Result<(u32, u32), String> {
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
pub(super) fn apply_config(
    state: &mut StageState,
    instruction: &Instruction,
    expander: &Expander,
) -> Result<String> {
    let cx = ConfigInstruction {
        instruction,
        expander,
        span: instruction.text_span(),
    };
    match instruction.keyword {
        Keyword::Env => cx.env(state),
        Keyword::Label => cx.label(state),
        Keyword::Expose => cx.expose(state),
        Keyword::User => cx.user(state),
        Keyword::Workdir => cx.workdir(state),
        Keyword::Volume => cx.volume(state),
        Keyword::Stopsignal => cx.stopsignal(state),
        Keyword::Cmd => Ok(cx.cmd(state)),
        Keyword::Entrypoint => Ok(cx.entrypoint(state)),
        Keyword::Shell => Ok(cx.shell(state)),
        Keyword::Healthcheck => cx.healthcheck(state),
        Keyword::Onbuild => Ok(cx.onbuild(state)),
        other => Err(Error::compile(
            instruction.span.clone(),
            format!("{other} does not change the image config"),
        )),
    }
}

/// A config instruction being applied: one method per keyword, each
/// changing the stage's config and returning the history text.
struct ConfigInstruction<'a> {
    instruction: &'a Instruction,
    expander: &'a Expander,
    /// Where the instruction's arguments start: expansion errors point here.
    span: Span,
}

impl ConfigInstruction<'_> {
    /// `raw` with the stage's variables expanded.
    fn expand(&self, state: &StageState, raw: &str) -> Result<String> {
        let lookup = |n: &str| state.lookup(n);
        self.expander.word(raw, &self.span, &lookup)
    }

    /// `K=V` pairs with both sides expanded, each key passed to `check`
    /// before the next pair; every pair sees the values from before this
    /// line.
    fn expanded_pairs(
        &self,
        state: &StageState,
        check: impl Fn(&str) -> Result<()>,
    ) -> Result<Vec<(String, String)>> {
        let mut expanded = Vec::new();
        for pair in self.instruction.pairs.iter().flatten() {
            let key = self.expand(state, &pair.raw_key)?;
            let value = self.expand(state, pair.raw_value.as_deref().unwrap_or_default())?;
            check(&key)?;
            expanded.push((key, value));
        }
        Ok(expanded)
    }

    /// CMD's or ENTRYPOINT's argv: exec form as written, shell form wrapped
    /// in SHELL.
    fn command_args(&self, state: &StageState) -> Vec<String> {
        let instruction = self.instruction;
        if instruction.exec {
            instruction.args.to_vec()
        } else if instruction.args.is_empty() {
            Vec::new()
        } else {
            state.shell_with(instruction.args.join(" "))
        }
    }

    fn env(&self, state: &mut StageState) -> Result<String> {
        let expanded = self.expanded_pairs(state, |key| {
            if key.is_empty() || key.contains('=') {
                return Err(Error::compile(
                    self.span.clone(),
                    format!("invalid ENV name {key:?}"),
                ));
            }
            Ok(())
        })?;
        let mut text = history_with_pairs("ENV", &expanded);
        for (key, value) in expanded {
            push_pair(&mut text, &key, &value);
            state.env_set(&key, &value);
        }
        Ok(text)
    }

    fn label(&self, state: &mut StageState) -> Result<String> {
        let expanded = self.expanded_pairs(state, |_| Ok(()))?;
        let mut text = history_with_pairs("LABEL", &expanded);
        let labels = state.config.labels.get_or_insert_with(BTreeMap::new);
        for (key, value) in expanded {
            push_pair(&mut text, &key, &value);
            labels.insert(key, value);
        }
        Ok(text)
    }

    fn expose(&self, state: &mut StageState) -> Result<String> {
        let mut ports = Vec::new();
        for arg in &self.instruction.args {
            let value = self.expand(state, arg)?;
            for word in value.split_whitespace() {
                ports.extend(expose_ports(word).map_err(|m| Error::compile(self.span.clone(), m))?);
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
        Ok(text)
    }

    fn user(&self, state: &mut StageState) -> Result<String> {
        // A USER that expands to nothing is root, as in BuildKit (which
        // then leaves User out of the config).
        let user = self.expand(state, self.instruction.text())?;
        let text = history("USER", &user);
        state.config.user = (!user.is_empty()).then_some(user);
        Ok(text)
    }

    fn workdir(&self, state: &mut StageState) -> Result<String> {
        // A WORKDIR that expands to nothing keeps the directory, as in
        // BuildKit.
        let dir = self.expand(state, self.instruction.text())?;
        let path = join_path(state.workdir(), &dir);
        state.config.working_dir = Some(path.clone());
        Ok(history("WORKDIR", &path))
    }

    fn volume(&self, state: &mut StageState) -> Result<String> {
        let mut volumes = Vec::new();
        for arg in &self.instruction.args {
            let value = self.expand(state, arg)?;
            if value.trim().is_empty() {
                return Err(Error::compile(
                    self.span.clone(),
                    "VOLUME paths cannot be empty".to_string(),
                ));
            }
            volumes.push(value);
        }
        let map = state.config.volumes.get_or_insert_with(BTreeMap::new);
        for volume in &volumes {
            map.insert(volume.clone(), Empty {});
        }
        Ok(format!("VOLUME [{}]", volumes.join(" ")))
    }

    fn stopsignal(&self, state: &mut StageState) -> Result<String> {
        let signal = self.expand(state, self.instruction.text())?;
        if !valid_signal(&signal) {
            return Err(Error::compile(
                self.span.clone(),
                format!("invalid signal {signal:?}: use a name like SIGTERM or a number"),
            ));
        }
        // Kept as written (`sigterm` stays `sigterm`), as BuildKit does.
        state.config.stop_signal = Some(signal.clone());
        Ok(history("STOPSIGNAL", &signal))
    }

    fn cmd(&self, state: &mut StageState) -> String {
        let argv = self.command_args(state);
        let text = format!("CMD {}", go_quote_list(&argv));
        state.config.cmd = Some(argv);
        // BuildKit sets it on every CMD (its meaning is Windows-only).
        state.config.args_escaped = Some(true);
        state.cmd_set = true;
        text
    }

    fn entrypoint(&self, state: &mut StageState) -> String {
        let argv = self.command_args(state);
        let text = format!("ENTRYPOINT {}", go_quote_list(&argv));
        state.config.entrypoint = Some(argv);
        if !state.cmd_set {
            state.config.cmd = None;
        }
        text
    }

    fn shell(&self, state: &mut StageState) -> String {
        let args = &self.instruction.args;
        state.config.shell = Some(args.to_vec());
        state.shell = None;
        format!("SHELL [{}]", args.join(" "))
    }

    fn healthcheck(&self, state: &mut StageState) -> Result<String> {
        let check = self.healthcheck_config()?;
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
        Ok(text)
    }

    /// HEALTHCHECK's test and flags; `NONE` ignores the flags.
    fn healthcheck_config(&self) -> Result<Healthcheck> {
        let instruction = self.instruction;
        let kind = instruction.args.first().map(|k| k.to_ascii_uppercase());
        let mut check = Healthcheck::default();
        if kind.as_deref() == Some("NONE") {
            check.test = vec!["NONE".to_string()];
            return Ok(check);
        }
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
                    let ns = parse_duration(value).map_err(|m| fail(format!("--{name}: {m}")))?;
                    match name {
                        "interval" => check.interval = ns,
                        "timeout" => check.timeout = ns,
                        "start-period" => check.start_period = ns,
                        _ => check.start_interval = ns,
                    }
                }
            }
        }
        Ok(check)
    }

    fn onbuild(&self, state: &mut StageState) -> String {
        let mut trigger = self.instruction.text().to_string();
        if let Some(inner) = &self.instruction.onbuild {
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
}

/// Linux's signal names, as BuildKit's signal table has them.
pub(super) const SIGNALS: [&str; 35] = [
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
    "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP",
    "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ", "RTMIN",
];

/// Whether STOPSIGNAL names a signal as BuildKit reads one: a whole number
/// other than 0, or a name from the table (`SIG` optional, any case),
/// `RTMIN+1` to `RTMIN+15` and `RTMAX-14` to `RTMAX` included.
pub(super) fn valid_signal(signal: &str) -> bool {
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
