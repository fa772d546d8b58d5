//! Compile rules, each checked through the public API: variable substitution,
//! ARG scoping, ENV semantics, multi-stage references, ONBUILD, SHELL,
//! ENTRYPOINT/CMD, PATH, heredocs in RUN, and definition digests.

use std::collections::BTreeMap;

use kiln_frontend::{
    compile, parse, Base, BaseImage, BaseImageResolver, BuildGraph, CompileOptions, CopyFrom,
    Error, ImageConfig, NamedContext, NoImages, RunMount, RunStep, Stage, StepKind,
};

/// Knows a few images by name.
struct Images(BTreeMap<String, ImageConfig>);

impl BaseImageResolver for Images {
    fn resolve(&self, reference: &str, platform: &str) -> Result<Option<BaseImage>, String> {
        Ok(self.0.get(reference).map(|config| BaseImage {
            digest: format!("sha256:{:0>64}", reference.len()),
            config: config.clone(),
            os: "linux".into(),
            architecture: platform.split('/').nth(1).unwrap_or("amd64").into(),
            variant: None,
        }))
    }
}

fn images() -> Images {
    let mut map = BTreeMap::new();
    map.insert(
        "debian".to_string(),
        ImageConfig {
            env: Some(vec!["PATH=/usr/bin:/bin".into(), "LANG=C.UTF-8".into()]),
            cmd: Some(vec!["bash".into()]),
            ..ImageConfig::default()
        },
    );
    map.insert(
        "onbuild-base".to_string(),
        ImageConfig {
            on_build: Some(vec![
                "RUN echo triggered $X".into(),
                "ENV FROM_TRIGGER=yes".into(),
            ]),
            ..ImageConfig::default()
        },
    );
    Images(map)
}

fn options() -> CompileOptions {
    CompileOptions {
        target_platform: "linux/arm64/v8".into(),
        build_platform: "linux/amd64".into(),
        ..CompileOptions::default()
    }
}

fn build(text: &str) -> BuildGraph {
    build_with(text, &options())
}

fn build_with(text: &str, options: &CompileOptions) -> BuildGraph {
    let dockerfile = parse(text, "Dockerfile").unwrap();
    compile(&dockerfile, options, &images()).unwrap()
}

fn fails(text: &str) -> String {
    let dockerfile = parse(text, "Dockerfile").unwrap();
    compile(&dockerfile, &options(), &images())
        .unwrap_err()
        .to_string()
}

fn target(graph: &BuildGraph) -> &Stage {
    graph.target_stage().unwrap()
}

fn runs(stage: &Stage) -> Vec<&RunStep> {
    stage
        .steps
        .iter()
        .filter_map(|s| match &s.kind {
            StepKind::Run(run) => Some(&**run),
            _ => None,
        })
        .collect()
}

fn env_of<'a>(run: &'a RunStep, key: &str) -> Option<&'a str> {
    run.env
        .iter()
        .find_map(|e| e.strip_prefix(&format!("{key}=")))
}

#[test]
fn env_line_sees_values_from_before_it() {
    let graph = build("FROM scratch\nENV A=1\nENV A=2 B=$A\nENV C=$A\nRUN true\n");
    let run = runs(target(&graph))[0];
    assert_eq!(env_of(run, "A"), Some("2"));
    assert_eq!(env_of(run, "B"), Some("1"));
    assert_eq!(env_of(run, "C"), Some("2"));
}

#[test]
fn substitution_forms_quotes_and_escapes() {
    let graph = build(concat!(
        "FROM scratch\n",
        "ENV SET=v EMPTY=\n",
        "ENV A=${SET:-w} B=${UNSET:-w} C=${EMPTY-w} D=${SET:+x} E=${UNSET+x} ",
        "F='$SET' G=\"$SET\" H=\\$SET I=\"${SET}s\"\n",
    ));
    let env = &graph.config;
    let get = |k: &str| env.env_get(k).map(str::to_string);
    assert_eq!(get("A").as_deref(), Some("v"));
    assert_eq!(get("B").as_deref(), Some("w"));
    assert_eq!(get("C").as_deref(), Some(""));
    assert_eq!(get("D").as_deref(), Some("x"));
    assert_eq!(get("E").as_deref(), Some(""));
    assert_eq!(get("F").as_deref(), Some("$SET"));
    assert_eq!(get("G").as_deref(), Some("v"));
    assert_eq!(get("H").as_deref(), Some("$SET"));
    assert_eq!(get("I").as_deref(), Some("vs"));
}

#[test]
fn run_commands_are_not_expanded_by_the_frontend() {
    let graph = build("FROM scratch\nENV A=1\nRUN echo $A '$A'\n");
    assert_eq!(
        runs(target(&graph))[0].argv,
        ["/bin/sh", "-c", "echo $A '$A'"]
    );
}

#[test]
fn expansion_applies_to_the_listed_instructions() {
    let graph = build(concat!(
        "FROM scratch\n",
        "ENV D=/srv U=app P=8080 S=SIGINT V=/data L=lbl\n",
        "WORKDIR $D\nUSER $U\nEXPOSE $P\nSTOPSIGNAL $S\nVOLUME $V\nLABEL $L=$U\n",
        "COPY $L /$L/\n",
    ));
    let stage = target(&graph);
    let c = &graph.config;
    assert_eq!(c.working_dir.as_deref(), Some("/srv"));
    assert_eq!(c.user.as_deref(), Some("app"));
    assert!(c.exposed_ports.as_ref().unwrap().contains_key("8080/tcp"));
    assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
    assert!(c.volumes.as_ref().unwrap().contains_key("/data"));
    assert_eq!(c.labels.as_ref().unwrap()["lbl"], "app");
    let StepKind::Copy(copy) = &stage.steps.last().unwrap().kind else {
        panic!("last step is not COPY")
    };
    assert_eq!(copy.sources, ["lbl"]);
    assert_eq!(copy.dest, "/lbl/");
}

#[test]
fn global_args_are_only_for_from_unless_redeclared() {
    let text = concat!(
        "ARG TAG=debian\nARG KEPT=global\n",
        "FROM $TAG\n",
        "RUN echo\n",
        "ARG KEPT\n",
        "RUN echo\n",
    );
    let graph = build(text);
    let stage = target(&graph);
    assert!(matches!(&stage.base, Base::Image { reference, .. } if reference == "debian"));
    let runs = runs(stage);
    assert_eq!(env_of(runs[0], "TAG"), None);
    assert_eq!(env_of(runs[0], "KEPT"), None);
    assert_eq!(env_of(runs[1], "KEPT"), Some("global"));
}

#[test]
fn build_args_override_defaults_and_global_values() {
    let mut options = options();
    options.build_args.insert("TAG".into(), "scratch".into());
    options.build_args.insert("V".into(), "cli".into());
    options.build_args.insert("UNDECLARED".into(), "x".into());
    let graph = build_with(
        "ARG TAG=debian\nFROM $TAG\nARG V=default\nRUN true\n",
        &options,
    );
    let stage = target(&graph);
    assert!(matches!(stage.base, Base::Scratch));
    let run = runs(stage)[0];
    assert_eq!(env_of(run, "V"), Some("cli"));
    assert_eq!(env_of(run, "UNDECLARED"), None);
}

#[test]
fn env_overrides_arg_of_the_same_name() {
    let mut options = options();
    options.build_args.insert("V".into(), "cli".into());
    let graph = build_with(
        "FROM scratch\nARG V\nENV V=env\nRUN true\nENV W=$V\n",
        &options,
    );
    let stage = target(&graph);
    assert_eq!(env_of(runs(stage)[0], "V"), Some("env"));
    assert_eq!(graph.config.env_get("W"), Some("env"));
}

#[test]
fn arg_without_value_is_unset_and_arg_defaults_expand() {
    let graph = build("FROM scratch\nARG NONE\nARG A=1 B=${A}2\nRUN true\n");
    let run = runs(target(&graph))[0];
    assert_eq!(env_of(run, "NONE"), None);
    assert_eq!(env_of(run, "B"), Some("12"));
    // History lists the build args BuildKit style.
    let step = target(&graph).steps.last().unwrap();
    assert_eq!(
        step.created_by,
        "RUN |2 A=1 B=12 /bin/sh -c true # buildkit"
    );
}

#[test]
fn platform_args_are_global_and_redeclarable() {
    let graph = build(concat!(
        "FROM --platform=$BUILDPLATFORM scratch AS b\n",
        "ARG TARGETARCH\nARG TARGETPLATFORM\nARG BUILDOS\nARG TARGETVARIANT\n",
        "RUN echo $BUILDARCH\n",
    ));
    let stage = target(&graph);
    assert_eq!(stage.platform, "linux/amd64");
    let run = runs(stage)[0];
    assert_eq!(env_of(run, "TARGETARCH"), Some("arm64"));
    assert_eq!(env_of(run, "TARGETPLATFORM"), Some("linux/arm64/v8"));
    assert_eq!(env_of(run, "TARGETVARIANT"), Some("v8"));
    assert_eq!(env_of(run, "BUILDOS"), Some("linux"));
    assert_eq!(env_of(run, "BUILDARCH"), None);
}

#[test]
fn proxy_args_reach_run_without_declaration_but_not_history_or_digest() {
    let text = "FROM scratch\nRUN true\n";
    let plain = build(text);
    let mut options = options();
    options
        .build_args
        .insert("HTTP_PROXY".into(), "http://proxy:3128".into());
    let proxied = build_with(text, &options);
    let run = runs(target(&proxied))[0];
    assert_eq!(env_of(run, "HTTP_PROXY"), Some("http://proxy:3128"));
    let (a, b) = (
        target(&plain).steps.last().unwrap(),
        target(&proxied).steps.last().unwrap(),
    );
    assert_eq!(a.created_by, b.created_by);
    assert_eq!(a.digest, b.digest);
}

#[test]
fn default_path_when_the_base_has_none() {
    let graph = build("FROM scratch\nRUN true\n");
    assert_eq!(
        env_of(runs(target(&graph))[0], "PATH"),
        Some("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    );
    let graph = build("FROM debian\nRUN true\n");
    assert_eq!(
        env_of(runs(target(&graph))[0], "PATH"),
        Some("/usr/bin:/bin")
    );
    assert_eq!(env_of(runs(target(&graph))[0], "LANG"), Some("C.UTF-8"));
}

#[test]
fn shell_form_is_wrapped_in_shell() {
    let graph = build(concat!(
        "FROM scratch\nRUN a\nSHELL [\"/bin/bash\", \"-eu\", \"-c\"]\nRUN b\nRUN [\"c\", \"d\"]\n",
        "CMD e\nENTRYPOINT [\"f\"]\n",
    ));
    let stage = target(&graph);
    let runs = runs(stage);
    assert_eq!(runs[0].argv, ["/bin/sh", "-c", "a"]);
    assert_eq!(runs[1].argv, ["/bin/bash", "-eu", "-c", "b"]);
    assert_eq!(runs[2].argv, ["c", "d"]);
    // CMD set in this stage survives a later ENTRYPOINT.
    assert_eq!(
        graph.config.cmd.as_deref().unwrap(),
        ["/bin/bash", "-eu", "-c", "e"]
    );
    assert_eq!(
        graph.config.shell.as_deref().unwrap(),
        ["/bin/bash", "-eu", "-c"]
    );
}

#[test]
fn entrypoint_resets_an_inherited_cmd() {
    let graph = build("FROM debian\nENTRYPOINT [\"/init\"]\n");
    let config = &graph.config;
    assert_eq!(config.cmd, None);
    assert_eq!(config.entrypoint.as_deref().unwrap(), ["/init"]);
    let graph = build("FROM debian\nLABEL a=b\n");
    assert_eq!(graph.config.cmd.as_deref().unwrap(), ["bash"]);
}

#[test]
fn workdir_is_relative_to_the_previous_one_and_makes_paths_absolute() {
    let graph = build(concat!(
        "FROM scratch\nWORKDIR /a\nWORKDIR b/../c\nCOPY x y\nCOPY x z/\nCOPY x /abs\nRUN pwd\n",
        "RUN --mount=type=cache,target=cache true\n",
    ));
    let stage = target(&graph);
    assert_eq!(graph.config.working_dir.as_deref(), Some("/a/c"));
    let copies: Vec<_> = stage
        .steps
        .iter()
        .filter_map(|s| match &s.kind {
            StepKind::Copy(c) => Some((c.dest.as_str(), c.dest_is_dir)),
            _ => None,
        })
        .collect();
    assert_eq!(
        copies,
        [("/a/c/y", false), ("/a/c/z/", true), ("/abs", false)]
    );
    let workdirs: Vec<_> = stage
        .steps
        .iter()
        .filter_map(|s| match &s.kind {
            StepKind::Workdir(workdir) => Some(workdir.path.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(workdirs, ["/a", "/a/c"]);
    let runs = runs(stage);
    assert_eq!(runs[0].workdir, "/a/c");
    assert_eq!(runs[1].mounts[0].target(), Some("/a/c/cache"));
}

#[test]
fn several_sources_need_a_directory_destination() {
    assert!(fails("FROM scratch\nCOPY a b /dst\n").contains("ending in '/'"));
    let graph = build("FROM scratch\nCOPY a b /dst/\n");
    let StepKind::Copy(copy) = &target(&graph).steps[0].kind else {
        panic!()
    };
    assert!(copy.dest_is_dir);
}

#[test]
fn multi_stage_references_and_pruning() {
    let text = concat!(
        "FROM debian AS base\nRUN base\n",
        "FROM base AS build\nRUN build\n",
        "FROM nonexistent-image AS unused\nRUN never\n",
        "FROM scratch AS final\n",
        "COPY --from=build /out /out\n",
        "COPY --from=0 /etc /etc\n",
        "COPY --from=debian /bin/sh /sh\n",
        "RUN --mount=type=bind,from=build,target=/b true\n",
    );
    let graph = build(text);
    let names: Vec<_> = graph.stages.iter().map(|s| s.display_name()).collect();
    assert_eq!(names, ["base", "build", "final"]);
    let order: Vec<_> = graph
        .needed_stages()
        .unwrap()
        .iter()
        .map(|s| s.index)
        .collect();
    assert_eq!(order, [0, 1, 3]);
    let stage = target(&graph);
    let froms: Vec<_> = stage
        .steps
        .iter()
        .filter_map(|s| match &s.kind {
            StepKind::Copy(c) => Some(c.from.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(froms[0], CopyFrom::Stage(1));
    assert_eq!(froms[1], CopyFrom::Stage(0));
    assert!(matches!(&froms[2], CopyFrom::Image { reference, .. } if reference == "debian"));
    assert_eq!(runs(stage)[0].mounts[0].from(), Some(&CopyFrom::Stage(1)));
    assert!(matches!(graph.stage(1).unwrap().base, Base::Stage(0)));
    // Building the unused stage needs its image.
    let mut options = options();
    options.target = Some("unused".into());
    let dockerfile = parse(text, "Dockerfile").unwrap();
    let err = compile(&dockerfile, &options, &images())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("Dockerfile:5:6: no image \"nonexistent-image\""),
        "{err}"
    );
    assert!(err.contains("kiln import"), "{err}");
}

#[test]
fn target_selects_a_stage_by_name_or_index() {
    let text = "FROM scratch AS a\nRUN a\nFROM scratch AS b\nRUN b\n";
    let mut options = options();
    options.target = Some("A".into());
    let graph = build_with(text, &options);
    assert_eq!(graph.target, 0);
    assert_eq!(graph.stages.len(), 1);
    options.target = Some("1".into());
    assert_eq!(build_with(text, &options).target, 1);
    options.target = Some("c".into());
    let dockerfile = parse(text, "Dockerfile").unwrap();
    let err = compile(&dockerfile, &options, &images()).unwrap_err();
    assert!(matches!(err, Error::UnknownTarget { .. }));
    assert!(err.to_string().contains("a, b"));
}

#[test]
fn undefined_stages_and_cycles_are_errors() {
    let e = fails("FROM scratch\nCOPY --from=3 /a /b\n");
    assert!(
        e.starts_with("Dockerfile:2:6: stage 3 is not defined"),
        "{e}"
    );
    let e =
        fails("FROM scratch AS a\nCOPY --from=b /x /x\nFROM scratch AS b\nCOPY --from=a /y /y\n");
    assert!(e.contains("circular dependency"), "{e}");
    let e = fails("FROM scratch AS self\nCOPY --from=self /x /x\n");
    assert!(e.contains("circular dependency"), "{e}");
    let e = fails("FROM scratch\nCOPY --from=missing /x /x\n");
    assert!(e.contains("no image \"missing\""), "{e}");
    let e = fails("FROM scratch AS a\nFROM scratch AS A\n");
    assert!(e.contains("duplicate stage name"), "{e}");
}

#[test]
fn onbuild_triggers_run_first_and_are_not_inherited() {
    let graph = build("FROM onbuild-base\nARG X=late\nRUN after\nONBUILD RUN mine\n");
    let stage = target(&graph);
    let runs = runs(stage);
    assert_eq!(runs[0].argv, ["/bin/sh", "-c", "echo triggered $X"]);
    assert_eq!(runs[1].argv, ["/bin/sh", "-c", "after"]);
    assert_eq!(stage.steps[0].span.line, 1);
    assert_eq!(graph.config.env_get("FROM_TRIGGER"), Some("yes"));
    assert_eq!(graph.config.on_build.as_deref().unwrap(), ["RUN mine"]);
    // A stage built FROM this one runs its trigger.
    let graph = build("FROM scratch AS a\nONBUILD ENV T=1\nFROM a\nRUN true\n");
    assert_eq!(env_of(runs_of(&graph), "T"), Some("1"));
}

fn runs_of(graph: &BuildGraph) -> &RunStep {
    runs(target(graph))[0]
}

#[test]
fn run_heredocs_follow_buildkit() {
    let graph = build(concat!(
        "FROM scratch\n",
        "RUN <<EOF\necho one\necho two\nEOF\n",
        "RUN <<-EOT\n\t#!/usr/bin/env python3\n\tprint(1)\n\tEOT\n",
        "RUN cat <<A > /a && cat <<'B' > /b\n$x\nA\n$y\nB\n",
    ));
    let runs = runs(target(&graph));
    assert_eq!(runs[0].argv, ["/bin/sh", "-c", "echo one\necho two\n"]);
    assert!(runs[0].files.is_empty());
    assert_eq!(runs[1].argv, ["/bin/sh", "-c", "/dev/pipes/EOT"]);
    assert_eq!(runs[1].files[0].path, "/dev/pipes/EOT");
    assert_eq!(
        runs[1].files[0].content,
        "#!/usr/bin/env python3\nprint(1)\n"
    );
    assert_eq!(runs[1].files[0].mode, 0o755);
    assert_eq!(
        runs[2].argv[2],
        "cat <<A > /a && cat <<'B' > /b\n$x\nA\n$y\nB"
    );
}

#[test]
fn copy_heredocs_expand_unless_quoted() {
    let graph = build("FROM scratch\nENV N=1\nCOPY <<a <<\"b\" /dst/\n$N \"q\"\na\n$N\nb\n");
    let StepKind::Copy(copy) = &target(&graph).steps[1].kind else {
        panic!()
    };
    assert_eq!(
        copy.heredocs,
        [
            ("a".to_string(), "1 \"q\"\n".to_string()),
            ("b".to_string(), "$N\n".to_string())
        ]
    );
    assert!(copy.sources.is_empty());
}

/// A syntax tree built or changed by hand skips the parser's flag checks:
/// compile still refuses a network mode it does not know rather than
/// running the step on the default network.
#[test]
fn an_unknown_network_in_a_hand_built_tree_is_an_error() {
    let mut dockerfile = parse("FROM scratch\nRUN --network=none true\n", "Dockerfile").unwrap();
    dockerfile.instructions[1].flags[0].value = Some("bridge".into());
    let e = compile(&dockerfile, &options(), &images())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "Dockerfile:2:5: --network must be default, none or host, not \"bridge\""
    );
}

#[test]
fn mounts_flags_and_network() {
    let graph = build(concat!(
        "FROM scratch\nARG C=/cache\n",
        "RUN --network=none --security=insecure --mount=type=cache,target=$C,id=c ",
        "--mount=type=secret,id=tok,env=TOKEN true\n",
    ));
    let run = runs(target(&graph))[0];
    assert_eq!(run.network, Some(kiln_frontend::Network::None));
    assert_eq!(run.security, kiln_frontend::Security::Insecure);
    assert!(
        matches!(&run.mounts[0], RunMount::Cache { target, id, .. } if target == "/cache" && id == "c")
    );
    assert!(
        matches!(&run.mounts[1], RunMount::Secret { env: Some(e), target: None, .. } if e == "TOKEN")
    );
    // Without target=, a mount covers the working directory; at / that is
    // an error, as in BuildKit.
    let e = fails("FROM scratch\nRUN --mount=type=cache true\n");
    assert!(
        e.starts_with("Dockerfile:2:5: --mount: invalid mount target \"/\""),
        "{e}"
    );
    let graph = build("FROM scratch\nWORKDIR /src\nRUN --mount=type=cache true\n");
    assert!(
        matches!(&runs(target(&graph))[0].mounts[0], RunMount::Cache { target, id, .. } if target == "/src" && id == "."),
        "{:?}",
        runs(target(&graph))[0].mounts
    );
}

#[test]
fn copy_flags_expand() {
    let graph = build(concat!(
        "FROM scratch\nARG U=app\n",
        "COPY --chown=$U:$U --chmod=0755 --link --exclude=*.md --parents a/ /dst/\n",
        "ADD --checksum=sha256:abc --keep-git-dir=true https://example.com/x.tar /x\n",
    ));
    let stage = target(&graph);
    let StepKind::Copy(copy) = &stage.steps[1].kind else {
        panic!()
    };
    assert_eq!(copy.chown.as_deref(), Some("app:app"));
    assert_eq!(copy.chmod.as_deref(), Some("0755"));
    assert!(copy.link && copy.parents && !copy.add);
    assert_eq!(copy.exclude, ["*.md"]);
    let StepKind::Copy(add) = &stage.steps[2].kind else {
        panic!()
    };
    assert!(add.add && add.keep_git_dir);
    assert_eq!(add.checksum.as_deref(), Some("sha256:abc"));
    assert!(fails("FROM scratch\nCOPY --chmod=rwx a /b\n").contains("not a mode"));
}

#[test]
fn config_instructions() {
    let graph = build(concat!(
        "FROM scratch\n",
        "EXPOSE 80 53/udp 8000-8002\n",
        "HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD curl -f http://localhost/\n",
        "LABEL \"a b\"=\"c d\" version=1\n",
        "MAINTAINER someone <a@b.c>\n",
        "VOLUME [\"/v1\", \"/v2\"]\n",
    ));
    let stage = target(&graph);
    let config = &graph.config;
    let ports: Vec<_> = config
        .exposed_ports
        .as_ref()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        ports,
        ["53/udp", "80/tcp", "8000/tcp", "8001/tcp", "8002/tcp"]
    );
    let hc = config.healthcheck.as_ref().unwrap();
    assert_eq!(hc.test, ["CMD-SHELL", "curl -f http://localhost/"]);
    assert_eq!(
        (hc.interval, hc.timeout, hc.retries),
        (30_000_000_000, 5_000_000_000, 3)
    );
    assert_eq!(config.labels.as_ref().unwrap()["a b"], "c d");
    assert_eq!(stage.author.as_deref(), Some("someone <a@b.c>"));
    assert_eq!(config.volumes.as_ref().unwrap().len(), 2);
    assert!(stage.steps.iter().all(|s| s.empty_layer));
    assert!(fails("FROM scratch\nEXPOSE 99999\n").contains("invalid port"));
}

#[test]
fn digests_are_stable_and_sensitive() {
    let digest = |text: &str| target(&build(text)).digest;
    let a = digest("FROM scratch\nRUN echo a\n");
    assert_eq!(a, digest("FROM scratch\nRUN echo a\n"));
    assert_ne!(a, digest("FROM scratch\nRUN echo b\n"));
    assert_ne!(a, digest("FROM debian\nRUN echo a\n"));
    assert_ne!(a, digest("FROM scratch\nENV X=1\nRUN echo a\n"));
    assert_ne!(a, digest("FROM scratch\nWORKDIR /x\nRUN echo a\n"));
    assert_ne!(a, digest("FROM scratch\nRUN --network=none echo a\n"));
    assert_ne!(a, digest("FROM scratch\nUSER app\nRUN echo a\n"));
    // ADD --unpack is part of the definition.
    let add = digest("FROM scratch\nADD a.tar /x/\n");
    let add_true = digest("FROM scratch\nADD --unpack=true a.tar /x/\n");
    let add_false = digest("FROM scratch\nADD --unpack=false a.tar /x/\n");
    assert!(add != add_true && add != add_false && add_true != add_false);
    assert_eq!(add_true, digest("FROM scratch\nADD --unpack a.tar /x/\n"));
    // A --from source's digest is an input of the COPY.
    let c1 = digest("FROM scratch AS s\nRUN one\nFROM scratch\nCOPY --from=s /a /a\n");
    let c2 = digest("FROM scratch AS s\nRUN two\nFROM scratch\nCOPY --from=s /a /a\n");
    assert_ne!(c1, c2);
    // Every step of a stage has its own digest.
    let graph = build("FROM scratch\nRUN a\nRUN a\nENV A=1\nCOPY a /a\n");
    let mut digests: Vec<_> = target(&graph).steps.iter().map(|s| s.digest).collect();
    digests.sort();
    digests.dedup();
    assert_eq!(digests.len(), 4);
}

/// The digest of the last RUN of the target stage.
fn last_run_digest(text: &str) -> kiln_frontend::Key {
    let graph = build(text);
    target(&graph)
        .steps
        .iter()
        .rev()
        .find(|s| matches!(s.kind, StepKind::Run(_)))
        .map(|s| s.digest)
        .expect("the dockerfile has a RUN")
}

#[test]
fn config_only_steps_do_not_change_later_filesystem_digests() {
    let plain = "FROM debian\nRUN make\nCOPY . /src\nRUN make install\n";
    let base = last_run_digest(plain);
    let stage_digest = target(&build(plain)).digest;
    for config in [
        "LABEL a=b",
        "LABEL a=c",
        "EXPOSE 80",
        "CMD [\"x\"]",
        "ENTRYPOINT [\"y\"]",
        "STOPSIGNAL SIGKILL",
        "HEALTHCHECK CMD true",
        "VOLUME /v",
        "ONBUILD RUN z",
        "MAINTAINER me",
        // Declared without a value: nothing reaches RUN's environment.
        "ARG UNSET",
    ] {
        let text = format!(
            "FROM debian\n{config}\nRUN make\n{config}\nCOPY . /src\n{config}\nRUN make install\n"
        );
        assert_eq!(
            last_run_digest(&text),
            base,
            "{config} changed a RUN digest"
        );
        assert_eq!(target(&build(&text)).digest, stage_digest, "{config}");
    }
}

#[test]
fn what_defines_a_filesystem_step_changes_its_digest() {
    let base = last_run_digest("FROM debian\nLABEL x=1\nRUN make\n");
    for change in [
        "ENV A=1",
        "ARG A=1",
        "USER app",
        "WORKDIR /w",
        "SHELL [\"/bin/bash\", \"-c\"]",
    ] {
        let text = format!("FROM debian\n{change}\nLABEL x=1\nRUN make\n");
        assert_ne!(
            last_run_digest(&text),
            base,
            "{change} left RUN's digest alone"
        );
    }
    // The same change with another value is another definition too.
    let env = |v: &str| last_run_digest(&format!("FROM debian\nENV A={v}\nLABEL x=1\nRUN make\n"));
    assert_ne!(env("1"), env("2"));
    let arg = |v: &str| last_run_digest(&format!("FROM debian\nARG A={v}\nRUN make\n"));
    assert_ne!(arg("1"), arg("2"));
    let user = |v: &str| last_run_digest(&format!("FROM debian\nUSER {v}\nRUN make\n"));
    assert_ne!(user("a"), user("b"));
    let workdir = |v: &str| last_run_digest(&format!("FROM debian\nWORKDIR {v}\nRUN make\n"));
    assert_ne!(workdir("/a"), workdir("/b"));
    // A filesystem step before the RUN is its parent.
    assert_ne!(
        last_run_digest("FROM debian\nRUN a\nRUN make\n"),
        last_run_digest("FROM debian\nRUN b\nRUN make\n")
    );
}

#[test]
fn no_two_steps_share_a_digest() {
    let graph = build(
        "FROM debian\nLABEL a=b\nLABEL a=b\nRUN x\nLABEL a=b\nRUN x\nEXPOSE 80\nEXPOSE 80\n\
         WORKDIR /w\nWORKDIR /w\nCOPY a /a\nCOPY a /a\nENV A=1\nENV A=1\nCMD [\"x\"]\n",
    );
    let steps = &target(&graph).steps;
    let mut digests: Vec<_> = steps.iter().map(|s| s.digest).collect();
    digests.sort();
    digests.dedup();
    assert_eq!(digests.len(), steps.len());
}

#[test]
fn many_env_names_keep_docker_order_and_in_place_redefinition() {
    let mut text = String::from("FROM debian\n");
    for i in 0..500_usize {
        text.push_str(&format!("ENV V{i}=${{V{}:-start}}x\n", i.saturating_sub(1)));
    }
    text.push_str("ENV LANG=other V0=again\nRUN true\n");
    let graph = build(&text);
    let run = runs(target(&graph))[0];
    assert_eq!(&*run.env[0], "PATH=/usr/bin:/bin");
    assert_eq!(&*run.env[1], "LANG=other");
    assert_eq!(&*run.env[2], "V0=again");
    assert_eq!(env_of(run, "V1"), Some("startxx"));
    assert_eq!(env_of(run, "V499").map(str::len), Some(5 + 500));
    assert_eq!(run.env.len(), 502);
}

#[test]
fn history_text() {
    let graph = build(
        "FROM scratch\nENV A=1 B=2\nCOPY a b /d/\nCMD [\"x\", \"y\"]\nWORKDIR /w\nRUN [\"ls\"]\n",
    );
    let texts: Vec<_> = target(&graph)
        .steps
        .iter()
        .map(|s| (s.created_by.as_str(), s.empty_layer))
        .collect();
    assert_eq!(
        texts,
        [
            ("ENV A=1 B=2", true),
            ("COPY a b /d/ # buildkit", false),
            ("CMD [\"x\" \"y\"]", true),
            ("WORKDIR /w", false),
            ("RUN ls # buildkit", false),
        ]
    );
    assert_eq!(&*target(&graph).steps[1].text, "COPY a b /d/");
}

#[test]
fn no_images_resolves_anything_for_parse() {
    let dockerfile = parse("FROM whatever/image:tag\nRUN true\n", "Dockerfile").unwrap();
    let graph = compile(&dockerfile, &options(), &NoImages).unwrap();
    assert!(
        matches!(&target(&graph).base, Base::Image { image, .. } if image.digest.starts_with("sha256:000"))
    );
}

#[test]
fn apply_changes_edits_a_config() {
    let config = kiln_frontend::apply_changes(
        ImageConfig::default(),
        &[
            "ENV PATH=/bin".to_string(),
            "ENV GREETING=\"hello $PATH\"".to_string(),
            "CMD [\"/bin/sh\"]".to_string(),
            "EXPOSE 80".to_string(),
            "WORKDIR /app".to_string(),
            "USER nobody".to_string(),
            "LABEL a=b".to_string(),
            "ONBUILD RUN make".to_string(),
        ],
    )
    .unwrap();
    assert_eq!(config.env_get("GREETING"), Some("hello /bin"));
    assert_eq!(config.cmd.as_deref().unwrap(), ["/bin/sh"]);
    assert_eq!(config.working_dir.as_deref(), Some("/app"));
    assert_eq!(config.on_build.as_deref().unwrap(), ["RUN make"]);
    let err = kiln_frontend::apply_changes(ImageConfig::default(), &["RUN make".to_string()])
        .unwrap_err();
    assert!(matches!(err, Error::Change { .. }));
    assert!(
        kiln_frontend::apply_changes(ImageConfig::default(), &["BOGUS x".to_string()]).is_err()
    );
}

#[test]
fn runs_share_their_environment_until_env_or_arg_changes_it() {
    let graph = build(
        "FROM debian\nENV A=1\nRUN a\nLABEL x=y\nUSER app\nRUN b\nENV B=2\nRUN c\nARG C=3\nRUN d\nARG UNSET\nRUN e\n",
    );
    let runs = runs(target(&graph));
    assert!(std::sync::Arc::ptr_eq(&runs[0].env, &runs[1].env));
    assert!(!std::sync::Arc::ptr_eq(&runs[1].env, &runs[2].env));
    assert_eq!(env_of(runs[2], "B"), Some("2"));
    assert_eq!(env_of(runs[3], "C"), Some("3"));
    assert_eq!(runs[3].env, runs[4].env);
}

#[test]
fn the_environment_digest_follows_every_change_in_order() {
    // The same variables set in another order are another environment
    // (Docker keeps Env in order), and a value set and then replaced is
    // not the value set directly only if the lists differ.
    let digest = |lines: &str| last_run_digest(&format!("FROM debian\n{lines}RUN make\n"));
    assert_ne!(digest("ENV A=1\nENV B=2\n"), digest("ENV B=2\nENV A=1\n"));
    assert_ne!(digest("ENV A=1\n"), digest("ENV A=12\n"));
    assert_ne!(digest("ARG A=1\n"), digest("ENV A=1\n"));
    assert_ne!(digest("ENV A=1 B=2\n"), digest("ENV A=1B=2\n"));
    assert_eq!(digest("ENV A=1\nENV B=2\n"), digest("ENV A=1\nENV B=2\n"));
    assert_eq!(
        digest("ENV A=1 B=2\n"),
        digest("ENV A=1\nLABEL x=y\nENV B=2\n")
    );
    // An ARG re-declared without a value drops the value it had.
    assert_ne!(digest("ARG A=1\n"), digest("ARG A=1\nARG A\n"));
}

fn copies(stage: &Stage) -> Vec<&kiln_frontend::CopyStep> {
    stage
        .steps
        .iter()
        .filter_map(|s| match &s.kind {
            StepKind::Copy(copy) => Some(&**copy),
            _ => None,
        })
        .collect()
}

fn with_contexts(contexts: &[(&str, NamedContext)]) -> CompileOptions {
    CompileOptions {
        named_contexts: contexts
            .iter()
            .map(|(name, context)| (name.to_string(), context.clone()))
            .collect(),
        ..options()
    }
}

#[test]
fn named_contexts_stand_in_for_images_and_stages_of_their_name() {
    // `alpine` is no image the resolver knows: the context makes it debian.
    let options = with_contexts(&[("alpine", NamedContext::Image("debian".into()))]);
    let graph = build_with(
        "FROM docker.io/library/alpine:latest AS a\nFROM scratch\nCOPY --from=alpine / /\nCOPY --from=a / /a\n",
        &options,
    );
    let first = graph.stage(0).unwrap();
    assert!(
        matches!(&first.base, Base::Image { reference, .. } if reference == "debian"),
        "{:?}",
        first.base
    );
    // Built as the target, stage `a` has the context image's config.
    let as_target = CompileOptions {
        target: Some("a".into()),
        ..options.clone()
    };
    let graph_a = build_with(
        "FROM docker.io/library/alpine:latest AS a\nFROM scratch\nCOPY --from=alpine / /\nCOPY --from=a / /a\n",
        &as_target,
    );
    assert_eq!(graph_a.config.cmd, Some(vec!["bash".to_string()]));
    let copy = copies(target(&graph))[0];
    assert!(matches!(&copy.from, CopyFrom::Image { reference, .. } if reference == "debian"));

    // A stage of the context's name is replaced: its instructions (which
    // would fail here) are not compiled, and readers get the context.
    let options = with_contexts(&[("src", NamedContext::Directory)]);
    let graph = build_with(
        "FROM nosuchimage AS src\nRUN false\nFROM debian\nCOPY --from=src . /app\nRUN --mount=from=src,target=/m true\nCOPY --from=0 / /zero\n",
        &options,
    );
    let stage = target(&graph);
    assert_eq!(copies(stage)[0].from, CopyFrom::Named("src".into()));
    assert_eq!(
        runs(stage)[0].mounts[0].from(),
        Some(&CopyFrom::Named("src".into()))
    );
    // Stage 0, by index, is the replaced stage: the directory on scratch.
    assert_eq!(copies(stage)[1].from, CopyFrom::Stage(0));
    let replaced = graph.stage(0).unwrap();
    assert!(matches!(replaced.base, Base::Scratch));
    assert_eq!(copies(replaced)[0].from, CopyFrom::Named("src".into()));
    let as_target = CompileOptions {
        target: Some("src".into()),
        ..options.clone()
    };
    let graph_src = build_with("FROM nosuchimage AS src\nRUN false\n", &as_target);
    assert_eq!(graph_src.config.cmd, None);

    // FROM a directory: its files on an empty config, then the stage's own
    // instructions; the digest follows the context's name.
    let graph = build_with("FROM src\nENV A=1\n", &options);
    let stage = target(&graph);
    assert!(matches!(stage.base, Base::Scratch));
    assert_eq!(copies(stage)[0].sources, vec![".".to_string()]);
    assert_eq!(copies(stage)[0].dest, "/");
    let other = build_with(
        "FROM lib\nENV A=1\n",
        &with_contexts(&[("lib", NamedContext::Directory)]),
    );
    assert_ne!(stage.digest, target(&other).digest);
}

#[test]
fn every_stage_built_from_a_stage_inherits_its_config() {
    // Two stages start FROM `base`: the first gets a copy of its config, the
    // last the config itself; neither sees the other's labels.
    let text = "FROM scratch AS base\nLABEL a=1\nFROM base AS x\nLABEL b=2\nFROM base AS y\nCOPY --from=x / /\nLABEL c=3\n";
    let labels = |target: &str| {
        let options = CompileOptions {
            target: Some(target.into()),
            ..options()
        };
        let graph = build_with(text, &options);
        let labels = graph.config.labels.unwrap_or_default();
        labels
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(labels("y"), ["a=1", "c=3"]);
    assert_eq!(labels("x"), ["a=1", "b=2"]);
    assert_eq!(labels("base"), ["a=1"]);
}

#[test]
fn run_steps_carry_the_shell_in_effect_even_in_exec_form() {
    let graph = build("FROM scratch\nRUN a\nSHELL [\"/bin/bash\", \"-c\"]\nRUN [\"b\"]\n");
    let runs = runs(target(&graph));
    assert_eq!(*runs[0].shell, ["/bin/sh", "-c"]);
    assert_eq!(*runs[1].shell, ["/bin/bash", "-c"]);
    assert_eq!(runs[1].argv, ["b"]);
}
