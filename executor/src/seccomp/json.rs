//! Docker's JSON profile format (what `docker run --security-opt
//! seccomp=FILE` takes), read into a [`Profile`].
//!
//! Read as Docker reads it: unknown fields are ignored, `name` is the old
//! spelling of `names`, a profile with neither a default action nor rules
//! means no filter, and `architectures` and `archMap` exclude each other.
//! What runc would refuse when applying it is refused here, when reading.

use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::{
    Action, Arch, Arches, ArgCondition, CompareOp, Excludes, Includes, Profile, ProfileError, Rule,
    Seccomp,
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonProfile {
    #[serde(default)]
    default_action: Option<ActionName>,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Option<Vec<Arch>>,
    #[serde(default)]
    arch_map: Option<Vec<JsonArchGroup>>,
    #[serde(default)]
    flags: Option<Vec<FilterFlag>>,
    #[serde(default)]
    syscalls: Option<Vec<JsonSyscall>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonArchGroup {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Option<Vec<Arch>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonSyscall {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    names: Option<Vec<String>>,
    action: ActionName,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<JsonArg>>,
    #[serde(default)]
    includes: Option<JsonFilter>,
    #[serde(default)]
    excludes: Option<JsonFilter>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonArg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: CompareOp,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct JsonFilter {
    #[serde(default)]
    caps: Option<Vec<String>>,
    #[serde(default)]
    arches: Option<Vec<String>>,
    #[serde(default, deserialize_with = "kernel_version")]
    min_kernel: Option<(u32, u32)>,
}

/// An action as the JSON names it, before its errno is known.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
enum ActionName {
    #[serde(rename = "SCMP_ACT_ALLOW")]
    Allow,
    #[serde(rename = "SCMP_ACT_ERRNO")]
    Errno,
    #[serde(rename = "SCMP_ACT_KILL", alias = "SCMP_ACT_KILL_THREAD")]
    KillThread,
    #[serde(rename = "SCMP_ACT_KILL_PROCESS")]
    KillProcess,
    #[serde(rename = "SCMP_ACT_TRAP")]
    Trap,
    #[serde(rename = "SCMP_ACT_TRACE")]
    Trace,
    #[serde(rename = "SCMP_ACT_LOG")]
    Log,
    #[serde(rename = "SCMP_ACT_NOTIFY")]
    Notify,
}

#[derive(Deserialize, Clone, Copy)]
enum FilterFlag {
    #[serde(rename = "SECCOMP_FILTER_FLAG_TSYNC")]
    Tsync,
    #[serde(rename = "SECCOMP_FILTER_FLAG_LOG")]
    Log,
    #[serde(rename = "SECCOMP_FILTER_FLAG_SPEC_ALLOW")]
    SpecAllow,
}

impl FilterFlag {
    fn bits(self) -> u32 {
        match self {
            FilterFlag::Tsync => 1,
            FilterFlag::Log => 2,
            FilterFlag::SpecAllow => 4,
        }
    }
}

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Arch::from_name(&name).ok_or_else(|| {
            de::Error::custom(format!(
                "unknown architecture {name:?}: expected an SCMP_ARCH_* name such as SCMP_ARCH_X86_64"
            ))
        })
    }
}

impl<'de> Deserialize<'de> for CompareOp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(match name.as_str() {
            "SCMP_CMP_NE" => CompareOp::NotEqual,
            "SCMP_CMP_LT" => CompareOp::Less,
            "SCMP_CMP_LE" => CompareOp::LessOrEqual,
            "SCMP_CMP_EQ" => CompareOp::Equal,
            "SCMP_CMP_GE" => CompareOp::GreaterOrEqual,
            "SCMP_CMP_GT" => CompareOp::Greater,
            "SCMP_CMP_MASKED_EQ" => CompareOp::MaskedEqual,
            _ => {
                return Err(de::Error::custom(format!(
                    "unknown comparison {name:?}: expected SCMP_CMP_NE, SCMP_CMP_LT, SCMP_CMP_LE, SCMP_CMP_EQ, SCMP_CMP_GE, SCMP_CMP_GT or SCMP_CMP_MASKED_EQ"
                )))
            }
        })
    }
}

/// `"<kernel>.<major>"` as Docker reads it (each part 0..=255, not both 0);
/// an empty string is no version.
fn kernel_version<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<(u32, u32)>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.is_empty() {
        return Ok(None);
    }
    let bad = || {
        de::Error::custom(format!(
            "invalid kernel version {text:?}: expected \"<kernel>.<major>\" such as \"4.8\""
        ))
    };
    let (kernel, major) = text.split_once('.').ok_or_else(bad)?;
    let kernel: u8 = kernel.parse().map_err(|_| bad())?;
    let major: u8 = major.parse().map_err(|_| bad())?;
    if kernel == 0 && major == 0 {
        return Err(bad());
    }
    Ok(Some((kernel.into(), major.into())))
}

impl Seccomp {
    /// Reads a profile in Docker's JSON format. A profile with neither a
    /// default action nor rules means no filter, as it does for Docker.
    pub fn from_json(bytes: &[u8]) -> Result<Seccomp, ProfileError> {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let json: JsonProfile =
            serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
                let path = e.path().to_string();
                ProfileError::Json {
                    // Syntax errors are not at a field: their line and column say where.
                    at: if path == "." || path == "?" {
                        String::new()
                    } else {
                        format!("at {path}: ")
                    },
                    message: e.inner().to_string(),
                }
            })?;
        deserializer.end().map_err(|e| ProfileError::Json {
            at: String::new(),
            message: e.to_string(),
        })?;
        let syscalls = json.syscalls.unwrap_or_default();
        let Some(default_action) = json.default_action else {
            if syscalls.is_empty() {
                return Ok(Seccomp::Unconfined);
            }
            return Err(ProfileError::Invalid(
                "defaultAction is missing: say what happens to system calls no rule names, e.g. \"SCMP_ACT_ERRNO\"".into(),
            ));
        };
        let arches = match (json.architectures, json.arch_map) {
            (Some(list), Some(map)) if !list.is_empty() && !map.is_empty() => {
                return Err(ProfileError::Invalid(
                    "both architectures and archMap are given: use one of them".into(),
                ))
            }
            (_, Some(map)) if !map.is_empty() => Arches::Map(
                map.into_iter()
                    .map(|g| (g.architecture, g.sub_architectures.unwrap_or_default()))
                    .collect(),
            ),
            (list, _) => Arches::List(list.unwrap_or_default()),
        };
        let default_action = action(default_action, json.default_errno_ret, "defaultAction")?;
        let rules = syscalls
            .into_iter()
            .enumerate()
            .map(|(i, syscall)| rule(syscall, &format!("syscalls[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Seccomp::Profile(std::sync::Arc::new(Profile {
            default_action,
            arches,
            flags: json
                .flags
                .unwrap_or_default()
                .iter()
                .fold(0, |acc, f| acc | f.bits()),
            rules,
        })))
    }
}

/// An action with its errno or trace value: EPERM when not given, as runc does.
fn action(name: ActionName, errno_ret: Option<u32>, at: &str) -> Result<Action, ProfileError> {
    let value = |errno: Option<u32>| -> Result<u16, ProfileError> {
        let errno = errno.unwrap_or(libc::EPERM as u32);
        u16::try_from(errno).map_err(|_| {
            ProfileError::Invalid(format!(
                "{at}: errnoRet {errno} is out of range (at most 65535)"
            ))
        })
    };
    let no_value = |action: Action| match errno_ret {
        Some(_) => Err(ProfileError::Invalid(format!(
            "{at}: errnoRet is only meaningful with SCMP_ACT_ERRNO or SCMP_ACT_TRACE"
        ))),
        None => Ok(action),
    };
    match name {
        ActionName::Allow => no_value(Action::Allow),
        ActionName::Errno => Ok(Action::Errno(value(errno_ret)?)),
        ActionName::KillThread => no_value(Action::KillThread),
        ActionName::KillProcess => no_value(Action::KillProcess),
        ActionName::Trap => no_value(Action::Trap),
        ActionName::Trace => Ok(Action::Trace(value(errno_ret)?)),
        ActionName::Log => no_value(Action::Log),
        ActionName::Notify => Err(ProfileError::Invalid(format!(
            "{at}: SCMP_ACT_NOTIFY needs a seccomp agent, which kiln does not run; use SCMP_ACT_ERRNO"
        ))),
    }
}

fn rule(syscall: JsonSyscall, at: &str) -> Result<Rule, ProfileError> {
    let names = match (syscall.name, syscall.names) {
        (Some(name), Some(names)) if !name.is_empty() && !names.is_empty() => {
            return Err(ProfileError::Invalid(format!(
                "{at}: both name and names are given: use names"
            )))
        }
        (Some(name), _) if !name.is_empty() => vec![name],
        (_, names) => names.unwrap_or_default(),
    };
    let action = action(syscall.action, syscall.errno_ret, &format!("{at}.action"))?;
    let args = syscall
        .args
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, arg)| {
            if arg.index > 5 {
                return Err(ProfileError::Invalid(format!(
                    "{at}.args[{i}].index: {} is not an argument (system calls have arguments 0 to 5)",
                    arg.index
                )));
            }
            Ok(ArgCondition {
                index: arg.index,
                value: arg.value,
                value_two: arg.value_two,
                op: arg.op,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let includes = syscall.includes.unwrap_or_default();
    let excludes = syscall.excludes.unwrap_or_default();
    Ok(Rule {
        names,
        action,
        args,
        includes: Includes {
            caps: includes.caps.unwrap_or_default(),
            arches: includes.arches.unwrap_or_default(),
            min_kernel: includes.min_kernel,
        },
        excludes: Excludes {
            caps: excludes.caps.unwrap_or_default(),
            arches: excludes.arches.unwrap_or_default(),
            min_kernel: excludes.min_kernel,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(text: &str) -> Profile {
        match Seccomp::from_json(text.as_bytes()).unwrap() {
            Seccomp::Profile(p) => (*p).clone(),
            other => panic!("expected a profile, got {other:?}"),
        }
    }

    fn error(text: &str) -> String {
        Seccomp::from_json(text.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn reads_dockers_format() {
        let p = profile(
            r#"{
              "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
              "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
              "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "comment": "io"},
                {"name": "mkdir", "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}],
                 "includes": {"minKernel": "4.8", "arches": ["amd64"]},
                 "excludes": {"caps": ["CAP_SYS_ADMIN"]}}
              ],
              "unknownField": true
            }"#,
        );
        assert_eq!(p.default_action, Action::Errno(1));
        assert_eq!(
            p.arches,
            Arches::Map(vec![(Arch::X8664, vec![Arch::X86, Arch::X32])])
        );
        assert_eq!(p.rules.len(), 3);
        assert_eq!(p.rules[1].names, vec!["mkdir"]);
        assert_eq!(p.rules[1].action, Action::Errno(13));
        let clone = &p.rules[2];
        assert_eq!(
            clone.args,
            vec![ArgCondition {
                index: 0,
                value: 0x7e02_0000,
                value_two: 0,
                op: CompareOp::MaskedEqual
            }]
        );
        assert_eq!(clone.includes.min_kernel, Some((4, 8)));
        assert_eq!(clone.excludes.caps, vec!["CAP_SYS_ADMIN"]);
    }

    #[test]
    fn errno_defaults_to_eperm() {
        let p = profile(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ERRNO"}]}"#,
        );
        assert_eq!(p.default_action, Action::Errno(1));
        assert_eq!(p.rules[0].action, Action::Errno(1));
    }

    #[test]
    fn empty_profile_is_unconfined() {
        assert!(matches!(
            Seccomp::from_json(b"{}").unwrap(),
            Seccomp::Unconfined
        ));
    }

    #[test]
    fn errors_say_where() {
        assert_eq!(
            error(r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"], "action": "SCMP_ACT_DENY"}]}"#),
            "at syscalls[0].action: unknown variant `SCMP_ACT_DENY`, expected one of `SCMP_ACT_ALLOW`, `SCMP_ACT_ERRNO`, `SCMP_ACT_KILL`, `SCMP_ACT_KILL_THREAD`, `SCMP_ACT_KILL_PROCESS`, `SCMP_ACT_TRAP`, `SCMP_ACT_TRACE`, `SCMP_ACT_LOG`, `SCMP_ACT_NOTIFY` at line 1 column 91"
        );
        assert!(error(r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "EQ"}]}]}"#)
            .starts_with("at syscalls[0].args[0].op: unknown comparison \"EQ\""));
        assert!(error(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "archMap": [{"architecture": "x86_64"}]}"#
        )
        .starts_with("at archMap[0].architecture: unknown architecture \"x86_64\""));
        assert!(error(r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4"}}]}"#)
            .starts_with("at syscalls[0].includes.minKernel: invalid kernel version \"4\""));
        let message = error(r#"{"defaultAction": 1}"#);
        assert!(message.starts_with("at defaultAction: "), "{message}");
        assert!(
            error("{").starts_with("EOF while parsing an object at line 1 column 1"),
            "{}",
            error("{")
        );
        assert_eq!(
            error(
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#
            ),
            "syscalls[0].args[0].index: 6 is not an argument (system calls have arguments 0 to 5)"
        );
        assert_eq!(
            error(
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"name": "a", "names": ["b"], "action": "SCMP_ACT_ALLOW"}]}"#
            ),
            "syscalls[0]: both name and names are given: use names"
        );
        assert_eq!(
            error(
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86"], "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}"#
            ),
            "both architectures and archMap are given: use one of them"
        );
        assert!(error(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#).contains("seccomp agent"));
        assert!(
            error(r#"{"syscalls": [{"names": ["a"], "action": "SCMP_ACT_ALLOW"}]}"#)
                .starts_with("defaultAction is missing")
        );
        assert!(
            error(r#"{"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 5}"#)
                .contains("errnoRet is only meaningful")
        );
    }
}
