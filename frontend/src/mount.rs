//! `RUN --mount=type=...,key=value,...` (a CSV record, as BuildKit reads it).

use std::borrow::Cow;

use crate::graph::{CacheSharing, CopyFrom, RunMount};
use crate::path::join_path;

/// Splits a CSV record into fields: commas separate, a field may be quoted
/// with `"` (and `""` inside quotes is one quote). Fields of a record without
/// quotes are borrowed from it (the common case).
pub(crate) fn csv_fields(record: &str) -> Vec<Cow<'_, str>> {
    if !record.contains('"') {
        return record.split(',').map(Cow::Borrowed).collect();
    }
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = record.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(Cow::Owned(std::mem::take(&mut field))),
            other => field.push(other),
        }
    }
    fields.push(Cow::Owned(field));
    fields
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

/// A parsed mount whose `from` is not yet resolved to a stage or image.
#[derive(Debug)]
pub(crate) struct MountSpec {
    kind: MountType,
    target: Option<String>,
    source: Option<String>,
    pub(crate) from: Option<String>,
    readonly: Option<bool>,
    id: Option<String>,
    sharing: CacheSharing,
    required: bool,
    mode: Option<u32>,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    env: Option<String>,
}

fn parse_bool(key: &str, value: Option<&str>) -> Result<bool, String> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(other) => Err(format!("{key} takes true or false, not {other:?}")),
    }
}

/// `100m`, `1g`, `512k`, `4096` -> bytes (powers of 1024, as Docker's
/// `RAMInBytes`).
fn parse_size(text: &str) -> Result<u64, String> {
    let lower = text.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let number: f64 = lower[..digits_end]
        .parse()
        .map_err(|_| format!("invalid size {text:?}: use bytes or a number with k, m, g"))?;
    let unit = lower[digits_end..].trim();
    let unit = unit
        .strip_suffix("ib")
        .or(unit.strip_suffix('b'))
        .unwrap_or(unit);
    let factor: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return Err(format!("invalid size {text:?}: unknown unit {unit:?}")),
    };
    let bytes = number * factor;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("invalid size {text:?}"));
    }
    Ok(bytes as u64)
}

fn parse_mode(value: &str) -> Result<u32, String> {
    u32::from_str_radix(value, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("mode {value:?} is not an octal file mode like 0755"))
}

/// Parses one `--mount` value; `expand` expands variables in each value,
/// relative targets are joined to `workdir`, `ssh_count` numbers ssh sockets.
pub(crate) fn parse_mount(
    spec: &str,
    workdir: &str,
    ssh_count: &mut usize,
    expand: &dyn Fn(&str) -> Result<String, String>,
) -> Result<MountSpec, String> {
    let mut mount = MountSpec::new();
    for field in csv_fields(spec) {
        let field = field.trim();
        if field.is_empty() {
            continue;
        }
        mount.set_field(field, expand)?;
    }
    mount.check_keys_fit_type()?;
    mount.resolve_target(workdir)?;
    mount.fill_defaults(ssh_count)?;
    Ok(mount)
}

impl MountSpec {
    /// A bind mount with nothing set.
    fn new() -> MountSpec {
        MountSpec {
            kind: MountType::Bind,
            target: None,
            source: None,
            from: None,
            readonly: None,
            id: None,
            sharing: CacheSharing::Shared,
            required: false,
            mode: None,
            uid: 0,
            gid: 0,
            size: None,
            env: None,
        }
    }

    /// Sets what one `key[=value]` field says (keys in any case, the value
    /// expanded).
    fn set_field(
        &mut self,
        field: &str,
        expand: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<(), String> {
        let (key, raw_value) = match field.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v)),
            None => (field, None),
        };
        let key: Cow<'_, str> = if key.contains(|c: char| c.is_ascii_uppercase()) {
            Cow::Owned(key.to_ascii_lowercase())
        } else {
            Cow::Borrowed(key)
        };
        let value = raw_value.map(expand).transpose()?;
        let need = || {
            value
                .clone()
                .ok_or_else(|| format!("{key} needs a value: {key}=<value>"))
        };
        match &*key {
            "type" => self.kind = mount_type(&need()?)?,
            "target" | "dst" | "destination" => self.target = Some(need()?),
            "source" | "src" => self.source = Some(need()?),
            "from" => self.from = Some(need()?),
            "id" => self.id = Some(need()?),
            "readonly" | "ro" => self.readonly = Some(parse_bool(&key, value.as_deref())?),
            "readwrite" | "rw" => self.readonly = Some(!parse_bool(&key, value.as_deref())?),
            "required" => self.required = parse_bool(&key, value.as_deref())?,
            "sharing" => self.sharing = cache_sharing(&need()?)?,
            "mode" => self.mode = Some(parse_mode(&need()?)?),
            "uid" => {
                let text = need()?;
                self.uid = text
                    .parse()
                    .map_err(|_| format!("uid must be a number, not {text:?}"))?
            }
            "gid" => {
                let text = need()?;
                self.gid = text
                    .parse()
                    .map_err(|_| format!("gid must be a number, not {text:?}"))?
            }
            "size" => self.size = Some(parse_size(&need()?)?),
            "env" => self.env = Some(need()?),
            other => {
                return Err(format!(
                    "unknown key {other:?} in {field:?}; mounts take type, target, source, from, id, ro, rw, sharing, mode, uid, gid, size, env, required"
                ))
            }
        }
        Ok(())
    }

    /// `from`, `size` and `env` only where the mount type has them.
    fn check_keys_fit_type(&self) -> Result<(), String> {
        let allowed_here = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(format!("{what} is not allowed for a {:?} mount", self.kind).to_lowercase())
            }
        };
        allowed_here(
            self.from.is_none() || matches!(self.kind, MountType::Bind | MountType::Cache),
            "from",
        )?;
        allowed_here(self.size.is_none() || self.kind == MountType::Tmpfs, "size")?;
        allowed_here(self.env.is_none() || self.kind == MountType::Secret, "env")
    }

    /// Makes the target absolute, as BuildKit does: for bind, cache and
    /// tmpfs a missing, empty or relative target is joined to the working
    /// directory (and a cache's id defaults to the target as written,
    /// cleaned); only a mount over `/` is refused. A secret's or ssh
    /// socket's target, when given, must not be empty.
    fn resolve_target(&mut self, workdir: &str) -> Result<(), String> {
        match self.kind {
            MountType::Bind | MountType::Cache | MountType::Tmpfs => {
                let written = self.target.take().unwrap_or_default();
                if self.kind == MountType::Cache && self.id.is_none() {
                    self.id = Some(clean_path(&written));
                }
                let target = join_path(workdir, &written);
                if target == "/" {
                    return Err(format!(
                        "invalid mount target {target:?}{}: a mount cannot cover the root directory; set target= to another directory",
                        if written.is_empty() {
                            " (no target= given, so the working directory)"
                        } else {
                            ""
                        }
                    ));
                }
                self.target = Some(target);
            }
            MountType::Secret | MountType::Ssh => {
                if let Some(target) = &self.target {
                    if target.is_empty() {
                        return Err("target cannot be empty".into());
                    }
                    self.target = Some(join_path(workdir, target));
                }
            }
        }
        Ok(())
    }

    /// A secret's id (from its target's file name) and target
    /// (`/run/secrets/<id>` unless it is only for `env`); an ssh socket's
    /// target (`/run/buildkit/ssh_agent.N`, numbered by `ssh_count`).
    fn fill_defaults(&mut self, ssh_count: &mut usize) -> Result<(), String> {
        match self.kind {
            MountType::Bind | MountType::Cache | MountType::Tmpfs => {}
            MountType::Secret => {
                if self.id.is_none() {
                    let from_target = self
                        .target
                        .as_deref()
                        .and_then(|t| t.rsplit('/').next())
                        .filter(|s| !s.is_empty());
                    match from_target {
                        Some(name) => self.id = Some(name.to_string()),
                        None => return Err("a secret mount needs id=<id> or target=<path>".into()),
                    }
                }
                if self.target.is_none() && self.env.is_none() {
                    self.target = Some(format!(
                        "/run/secrets/{}",
                        self.id.as_deref().unwrap_or_default()
                    ));
                }
            }
            MountType::Ssh => {
                if self.target.is_none() {
                    *ssh_count += 1;
                    self.target = Some(format!("/run/buildkit/ssh_agent.{}", *ssh_count - 1));
                }
            }
        }
        Ok(())
    }
}

/// `type=`'s value.
fn mount_type(value: &str) -> Result<MountType, String> {
    Ok(match value {
        "bind" => MountType::Bind,
        "cache" => MountType::Cache,
        "tmpfs" => MountType::Tmpfs,
        "secret" => MountType::Secret,
        "ssh" => MountType::Ssh,
        other => {
            return Err(format!(
                "unknown mount type {other:?}: use bind, cache, tmpfs, secret or ssh"
            ))
        }
    })
}

/// `sharing=`'s value.
fn cache_sharing(value: &str) -> Result<CacheSharing, String> {
    Ok(match value {
        "shared" => CacheSharing::Shared,
        "private" => CacheSharing::Private,
        "locked" => CacheSharing::Locked,
        other => {
            return Err(format!(
                "unknown sharing {other:?}: use shared, private or locked"
            ))
        }
    })
}

/// Go's `path.Clean`: `.` for nothing, `..` and `.` resolved, no repeated or
/// trailing slashes; a relative path stays relative.
fn clean_path(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut kept: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match kept.last() {
                Some(&last) if last != ".." => {
                    kept.pop();
                }
                _ if absolute => {}
                _ => kept.push(".."),
            },
            other => kept.push(other),
        }
    }
    let joined = kept.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

impl MountSpec {
    /// The finished mount, with `from` resolved by the compiler.
    pub(crate) fn into_mount(self, from: Option<CopyFrom>) -> RunMount {
        let target = self.target.unwrap_or_default();
        match self.kind {
            MountType::Bind => RunMount::Bind {
                target,
                from: from.unwrap_or(CopyFrom::Context),
                source: self.source.unwrap_or_else(|| "/".to_string()),
                rw: self.readonly == Some(false),
            },
            MountType::Cache => RunMount::Cache {
                id: self.id.unwrap_or_else(|| target.clone()),
                target,
                sharing: self.sharing,
                readonly: self.readonly.unwrap_or(false),
                from,
                source: self.source.unwrap_or_else(|| "/".to_string()),
                mode: self.mode.unwrap_or(0o755),
                uid: self.uid,
                gid: self.gid,
            },
            MountType::Tmpfs => RunMount::Tmpfs {
                target,
                size: self.size,
            },
            MountType::Secret => RunMount::Secret {
                id: self.id.unwrap_or_default(),
                target: (!target.is_empty()).then_some(target),
                env: self.env,
                required: self.required,
                mode: self.mode.unwrap_or(0o400),
                uid: self.uid,
                gid: self.gid,
            },
            MountType::Ssh => RunMount::Ssh {
                id: self.id.unwrap_or_else(|| "default".to_string()),
                target,
                required: self.required,
                mode: self.mode.unwrap_or(0o600),
                uid: self.uid,
                gid: self.gid,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(spec: &str) -> Result<RunMount, String> {
        let mut ssh = 0;
        let vars = |s: &str| Ok(s.replace("$DIR", "/expanded"));
        parse_mount(spec, "/work", &mut ssh, &vars).map(|m| m.into_mount(None))
    }

    #[test]
    fn cache_defaults() {
        let m = mount("type=cache,target=/root/.cache").unwrap();
        assert_eq!(
            m,
            RunMount::Cache {
                id: "/root/.cache".into(),
                target: "/root/.cache".into(),
                sharing: CacheSharing::Shared,
                readonly: false,
                from: None,
                source: "/".into(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            }
        );
        let m =
            mount("type=cache,id=x,dst=rel,sharing=locked,mode=0700,uid=1000,gid=1000,ro").unwrap();
        let RunMount::Cache {
            id,
            target,
            sharing,
            readonly,
            mode,
            uid,
            ..
        } = m
        else {
            panic!("not a cache mount")
        };
        assert_eq!((id.as_str(), target.as_str()), ("x", "/work/rel"));
        assert_eq!(
            (sharing, readonly, mode, uid),
            (CacheSharing::Locked, true, 0o700, 1000)
        );
    }

    #[test]
    fn a_uid_or_gid_that_is_not_a_number_is_named_as_written() {
        assert_eq!(
            mount("type=cache,target=/c,uid=x").unwrap_err(),
            "uid must be a number, not \"x\""
        );
        assert_eq!(
            mount("type=secret,id=s,gid=staff").unwrap_err(),
            "gid must be a number, not \"staff\""
        );
    }

    #[test]
    fn bind_secret_ssh_tmpfs() {
        assert_eq!(
            mount("target=$DIR,source=src,rw").unwrap(),
            RunMount::Bind {
                target: "/expanded".into(),
                from: CopyFrom::Context,
                source: "src".into(),
                rw: true
            }
        );
        let RunMount::Secret {
            id, target, mode, ..
        } = mount("type=secret,id=npmrc").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (id.as_str(), target.as_deref(), mode),
            ("npmrc", Some("/run/secrets/npmrc"), 0o400)
        );
        let RunMount::Secret {
            id, target, env, ..
        } = mount("type=secret,id=tok,env=TOKEN").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (id.as_str(), target, env.as_deref()),
            ("tok", None, Some("TOKEN"))
        );
        let RunMount::Secret { id, .. } = mount("type=secret,target=/etc/key.pem").unwrap() else {
            panic!()
        };
        assert_eq!(id, "key.pem");
        let RunMount::Ssh { id, target, .. } = mount("type=ssh").unwrap() else {
            panic!()
        };
        assert_eq!(
            (id.as_str(), target.as_str()),
            ("default", "/run/buildkit/ssh_agent.0")
        );
        assert_eq!(
            mount("type=tmpfs,target=/tmp,size=64m").unwrap(),
            RunMount::Tmpfs {
                target: "/tmp".into(),
                size: Some(64 << 20)
            }
        );
    }

    #[test]
    fn missing_or_relative_targets_are_in_the_working_directory() {
        let RunMount::Cache { id, target, .. } = mount("type=cache").unwrap() else {
            panic!("not a cache mount")
        };
        assert_eq!((id.as_str(), target.as_str()), (".", "/work"));
        let RunMount::Cache { id, target, .. } = mount("type=cache,target=./a/../b/").unwrap()
        else {
            panic!("not a cache mount")
        };
        assert_eq!((id.as_str(), target.as_str()), ("b", "/work/b"));
        assert_eq!(mount("target=").unwrap().target(), Some("/work"));
        assert_eq!(mount("type=tmpfs").unwrap().target(), Some("/work"));
        let mut ssh = 0;
        let vars = |s: &str| Ok(s.to_string());
        let at_root = parse_mount("type=bind", "/", &mut ssh, &vars).unwrap_err();
        assert!(at_root.contains("invalid mount target \"/\""), "{at_root}");
        assert!(mount("type=cache,target=/").is_err());
        assert!(mount("type=tmpfs,target=..").is_err());
    }

    #[test]
    fn go_path_clean() {
        for (path, clean) in [
            ("", "."),
            ("a//b/./c/", "a/b/c"),
            ("../a/..", ".."),
            ("a/../../b", "../b"),
            ("/../a/", "/a"),
            ("/", "/"),
        ] {
            assert_eq!(clean_path(path), clean, "{path:?}");
        }
    }

    #[test]
    fn errors() {
        assert!(mount("type=nfs,target=/x")
            .unwrap_err()
            .contains("unknown mount type"));
        assert!(mount("type=cache,target=/x,bogus=1")
            .unwrap_err()
            .contains("unknown key"));
        assert!(mount("type=cache,target=/x,sharing=sometimes")
            .unwrap_err()
            .contains("sharing"));
        assert!(mount("type=cache,target=/x,mode=999")
            .unwrap_err()
            .contains("octal"));
        assert!(mount("type=tmpfs,target=/x,size=lots")
            .unwrap_err()
            .contains("size"));
        assert!(mount("type=secret").unwrap_err().contains("id"));
        assert!(mount("type=tmpfs,target=/x,from=a")
            .unwrap_err()
            .contains("from"));
    }

    #[test]
    fn csv_without_quotes_splits_at_every_comma() {
        assert_eq!(csv_fields("a=1,,b"), ["a=1", "", "b"]);
        assert_eq!(csv_fields(""), [""]);
        // The same record through the quoted path splits alike.
        assert_eq!(csv_fields("a=1,,b,\"\""), ["a=1", "", "b", ""]);
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(
            csv_fields(r#"a=1,"b=x,y",c="""q""""#),
            ["a=1", "b=x,y", "c=\"q\""]
        );
    }
}
