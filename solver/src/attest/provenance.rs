//! The provenance: an in-toto Statement v1 whose predicate is SLSA
//! provenance v1 (`buildDefinition`, `runDetails`). It takes its parameters
//! from [`Invocation`], which has no field for secrets or ssh agents: they
//! cannot leak into it. Object keys are sorted and times clamped to
//! SOURCE_DATE_EPOCH, so the same build gives the same bytes.

use serde_json::{json, Map, Value};

use super::{Invocation, ProvenanceMode};

pub(crate) const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub(crate) const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// What kind of build this is: a Dockerfile built by kiln.
const BUILD_TYPE: &str = "urn:kiln:build-type:dockerfile:v1";
const BUILDER_ID: &str = "urn:kiln:builder";

/// Something the build read that is named by content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dependency {
    pub uri: String,
    /// (algorithm, hex): `sha256`, `gitCommit`, ...
    pub digest: Option<(String, String)>,
}

/// One step of the build, for `mode=max`.
#[derive(Debug, Clone)]
pub(crate) struct StepRecord {
    pub stage: String,
    pub line: usize,
    pub command: String,
}

#[derive(Debug)]
pub(crate) struct ProvenanceInput<'a> {
    pub mode: ProvenanceMode,
    pub image_digest: &'a str,
    pub image_name: &'a str,
    pub invocation: &'a Invocation,
    pub dependencies: &'a [Dependency],
    pub steps: &'a [StepRecord],
    /// kiln's content key of the whole context (hex), when there is one.
    pub context_key: Option<String>,
    pub started_on: String,
    pub finished_on: String,
    pub invocation_id: String,
    pub source_date_epoch: Option<i64>,
}

fn digest_set(algorithm: &str, hex: &str) -> Value {
    let mut set = Map::new();
    set.insert(algorithm.to_owned(), Value::String(hex.to_owned()));
    Value::Object(set)
}

/// The statement as JSON bytes.
pub(crate) fn statement(input: &ProvenanceInput<'_>) -> serde_json::Result<Vec<u8>> {
    let invocation = input.invocation;
    let hex = input
        .image_digest
        .strip_prefix("sha256:")
        .unwrap_or(input.image_digest);
    let mut args = Map::new();
    for (key, value) in &invocation.build_args {
        args.insert(format!("build-arg:{key}"), Value::String(value.clone()));
    }
    if let Some(target) = &invocation.target {
        args.insert("target".into(), Value::String(target.clone()));
    }
    args.insert(
        "platform".into(),
        Value::String(invocation.platform.clone()),
    );
    let mut context = Map::new();
    if let Some(uri) = &invocation.context.uri {
        context.insert("uri".into(), Value::String(uri.clone()));
    }
    if let Some(key) = &input.context_key {
        context.insert("digest".into(), digest_set("kiln-context-v1", key));
    }
    if let Some(commit) = &invocation.context.git_commit {
        context.insert("gitCommit".into(), Value::String(commit.clone()));
    }
    let mut internal = Map::new();
    internal.insert(
        "builderPlatform".into(),
        Value::String(kiln_cache::Platform::host().to_string()),
    );
    if let Some(epoch) = input.source_date_epoch {
        internal.insert("sourceDateEpoch".into(), Value::String(epoch.to_string()));
    }
    internal.insert(
        "provenanceMode".into(),
        Value::String(
            match input.mode {
                ProvenanceMode::Min => "min",
                ProvenanceMode::Max => "max",
            }
            .into(),
        ),
    );
    if input.mode == ProvenanceMode::Max {
        internal.insert(
            "steps".into(),
            Value::Array(
                input
                    .steps
                    .iter()
                    .map(|s| json!({ "stage": s.stage, "line": s.line, "command": s.command }))
                    .collect(),
            ),
        );
    }
    let dependencies: Vec<Value> = input
        .dependencies
        .iter()
        .map(|d| {
            let mut entry = Map::new();
            entry.insert("uri".into(), Value::String(d.uri.clone()));
            if let Some((algorithm, hex)) = &d.digest {
                entry.insert("digest".into(), digest_set(algorithm, hex));
            }
            Value::Object(entry)
        })
        .collect();
    let statement = json!({
        "_type": STATEMENT_TYPE,
        "subject": [{ "name": input.image_name, "digest": { "sha256": hex } }],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "configSource": {
                        "path": invocation.dockerfile_path,
                        "digest": { "sha256": invocation.dockerfile_sha256 },
                    },
                    "context": context,
                    "request": { "frontend": "dockerfile.v0", "args": args },
                },
                "internalParameters": internal,
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {
                    "id": BUILDER_ID,
                    "version": { "kiln": invocation.builder_version },
                },
                "metadata": {
                    "invocationId": input.invocation_id,
                    "startedOn": input.started_on,
                    "finishedOn": input.finished_on,
                },
            },
        },
    });
    serde_json::to_vec_pretty(&statement)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::ContextOrigin;

    #[test]
    fn statements_carry_build_args_and_steps_only_in_max_mode() {
        let invocation = Invocation {
            builder_version: "0.1.0".into(),
            image_name: None,
            dockerfile_path: "Dockerfile".into(),
            dockerfile_sha256: "d".repeat(64),
            build_args: [("VERSION".to_owned(), "1.2".to_owned())].into(),
            target: None,
            platform: "linux/amd64".into(),
            context: ContextOrigin {
                uri: Some("git+https://example.com/app.git#main".into()),
                git_commit: Some("e".repeat(40)),
            },
        };
        let digest = format!("sha256:{}", "a".repeat(64));
        let dependencies = [Dependency {
            uri: "pkg:docker/debian:12?platform=linux%2Famd64".into(),
            digest: Some(("sha256".into(), "b".repeat(64))),
        }];
        let steps = [StepRecord {
            stage: "0".into(),
            line: 2,
            command: "RUN make".into(),
        }];
        let mut input = ProvenanceInput {
            mode: ProvenanceMode::Max,
            image_digest: &digest,
            image_name: "app",
            invocation: &invocation,
            dependencies: &dependencies,
            steps: &steps,
            context_key: Some("c".repeat(64)),
            started_on: "2024-01-01T00:00:00Z".into(),
            finished_on: "2024-01-01T00:00:00Z".into(),
            invocation_id: "x".into(),
            source_date_epoch: Some(1_704_067_200),
        };
        let max: Value = serde_json::from_slice(&statement(&input).unwrap()).unwrap();
        assert_eq!(max["_type"], STATEMENT_TYPE);
        assert_eq!(max["predicateType"], PREDICATE_TYPE);
        assert_eq!(max["subject"][0]["digest"]["sha256"], "a".repeat(64));
        let definition = &max["predicate"]["buildDefinition"];
        assert_eq!(
            definition["externalParameters"]["request"]["args"]["build-arg:VERSION"],
            "1.2"
        );
        assert_eq!(
            definition["externalParameters"]["configSource"]["digest"]["sha256"],
            "d".repeat(64)
        );
        assert_eq!(
            definition["resolvedDependencies"][0]["digest"]["sha256"],
            "b".repeat(64)
        );
        assert_eq!(
            definition["internalParameters"]["steps"][0]["command"],
            "RUN make"
        );
        assert_eq!(
            max["predicate"]["runDetails"]["builder"]["version"]["kiln"],
            "0.1.0"
        );
        input.mode = ProvenanceMode::Min;
        let min: Value = serde_json::from_slice(&statement(&input).unwrap()).unwrap();
        let internal = &min["predicate"]["buildDefinition"]["internalParameters"];
        assert!(internal.get("steps").is_none());
        assert_eq!(internal["provenanceMode"], "min");
    }
}
