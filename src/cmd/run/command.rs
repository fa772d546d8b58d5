//! Docker's rules for what a container runs: ENTRYPOINT and CMD of the image
//! against `--entrypoint` and the command line, and the environment from the
//! image, `--env-file` and `-e`.

use anyhow::{bail, Context};

/// The argv a container runs, as Docker makes it:
///
/// - `--entrypoint X` replaces the image's ENTRYPOINT with `[X]` (`""`:
///   none) and drops the image's CMD; the command line is the arguments;
/// - otherwise the image's ENTRYPOINT stays and the command line, when
///   given, replaces its CMD.
pub fn argv(
    image_entrypoint: &[String],
    image_cmd: &[String],
    entrypoint_flag: Option<&str>,
    command: &[String],
) -> anyhow::Result<Vec<String>> {
    let (entrypoint, cmd): (Vec<String>, &[String]) = match entrypoint_flag {
        Some("") => (Vec::new(), command),
        Some(entrypoint) => (vec![entrypoint.to_string()], command),
        None if command.is_empty() => (image_entrypoint.to_vec(), image_cmd),
        None => (image_entrypoint.to_vec(), command),
    };
    let mut argv = entrypoint;
    argv.extend_from_slice(cmd);
    if argv.is_empty() {
        bail!("no command specified: the image has no ENTRYPOINT or CMD; give a command after the image name");
    }
    Ok(argv)
}

/// `--env-file` lines: `NAME=VALUE`, or `NAME` alone for the value kiln
/// has (left out when kiln has none); blank lines and `#` comments skipped.
pub fn read_env_file(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--env-file {}: cannot read it", path.display()))?;
    let mut env = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match env_entry(line) {
            Ok(Some(entry)) => env.push(entry),
            Ok(None) => {}
            Err(e) => bail!("--env-file {}:{}: {e}", path.display(), number + 1),
        }
    }
    Ok(env)
}

/// One `-e` value: `NAME=VALUE` as given; `NAME` takes kiln's own value
/// (`None` when kiln has none, as Docker leaves it out).
pub fn env_entry(text: &str) -> anyhow::Result<Option<String>> {
    let name = text.split('=').next().unwrap_or("");
    if name.is_empty() {
        bail!("{text:?}: the variable has no name (expected NAME=VALUE or NAME)");
    }
    if name.contains(char::is_whitespace) {
        bail!("{text:?}: the variable name {name:?} contains whitespace");
    }
    if text.contains('=') {
        return Ok(Some(text.to_string()));
    }
    Ok(std::env::var_os(name).map(|value| format!("{name}={}", value.to_string_lossy())))
}

/// The container's environment: the image's, then `HOSTNAME`, then the
/// user's (`--env-file` entries before `-e` ones; a later value of a name
/// wins), then `TERM=xterm` with a terminal unless set.
pub fn environment(
    image_env: &[String],
    hostname: &str,
    user_env: &[String],
    tty: bool,
) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: &str| {
        let name = entry.split('=').next().unwrap_or("");
        env.retain(|e| e.split('=').next() != Some(name));
        env.push(entry.to_string());
    };
    for entry in image_env {
        set(entry);
    }
    set(&format!("HOSTNAME={hostname}"));
    for entry in user_env {
        set(entry);
    }
    if tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    /// Docker's documented cases (the ENTRYPOINT/CMD interaction table of
    /// the Dockerfile reference, and `docker run --entrypoint`).
    #[test]
    fn entrypoint_and_cmd_combine_as_docker_combines_them() {
        type Case<'a> = (
            &'a [&'a str],
            &'a [&'a str],
            Option<&'a str>,
            &'a [&'a str],
            &'a [&'a str],
        );
        let cases: &[Case] = &[
            // image ENTRYPOINT, image CMD, --entrypoint, command, runs
            (&[], &["/bin/sh"], None, &[], &["/bin/sh"]),
            (&[], &["/bin/sh"], None, &["echo", "hi"], &["echo", "hi"]),
            (&["/ep"], &[], None, &[], &["/ep"]),
            (
                &["/ep", "a"],
                &["c1", "c2"],
                None,
                &[],
                &["/ep", "a", "c1", "c2"],
            ),
            (&["/ep"], &["c1"], None, &["x"], &["/ep", "x"]),
            (&["/ep"], &["c1"], Some("/other"), &[], &["/other"]),
            (
                &["/ep"],
                &["c1"],
                Some("/other"),
                &["x", "y"],
                &["/other", "x", "y"],
            ),
            (&[], &["c1"], Some("/other"), &[], &["/other"]),
            (&["/ep"], &["c1"], Some(""), &["ls", "-l"], &["ls", "-l"]),
            (
                &["/bin/sh", "-c"],
                &["echo $HOME"],
                None,
                &[],
                &["/bin/sh", "-c", "echo $HOME"],
            ),
        ];
        for (entrypoint, cmd, flag, command, expected) in cases {
            assert_eq!(
                argv(
                    &strings(entrypoint),
                    &strings(cmd),
                    *flag,
                    &strings(command)
                )
                .unwrap(),
                strings(expected),
                "{entrypoint:?} {cmd:?} {flag:?} {command:?}"
            );
        }
        assert!(argv(&[], &[], None, &[]).is_err());
        assert!(argv(&["/ep".into()], &[], Some(""), &[]).is_err());
    }

    #[test]
    fn the_environment_is_the_image_s_then_the_user_s() {
        let env = environment(
            &strings(&["PATH=/bin", "A=image", "B=image"]),
            "abc",
            &strings(&["A=file", "A=flag", "C=new"]),
            true,
        );
        assert_eq!(
            env,
            strings(&[
                "PATH=/bin",
                "B=image",
                "HOSTNAME=abc",
                "A=flag",
                "C=new",
                "TERM=xterm"
            ])
        );
        std::env::set_var("KILN_TEST_FROM_HOST", "host value");
        assert_eq!(
            env_entry("KILN_TEST_FROM_HOST").unwrap(),
            Some("KILN_TEST_FROM_HOST=host value".into())
        );
        assert_eq!(env_entry("KILN_TEST_NOT_SET_ANYWHERE").unwrap(), None);
        assert_eq!(env_entry("E=").unwrap(), Some("E=".into()));
        assert!(env_entry("=x").is_err());
        assert!(env_entry("A B=x").is_err());
    }
}
