use super::*;
use crate::frontend::ast::StepKind;

fn lower(text: &str, args: &[(&str, &str)]) -> Imported {
    let sources = Sources::new();
    let id = sources.add("Dockerfile".into(), "Dockerfile".into(), text.into());
    let args: Vec<(String, String)> = args
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    lower_text(text, id, Path::new(""), &args).expect("lowers")
}

#[test]
fn dollar_signs_survive_kiln_substitution() {
    assert_eq!(escape_subst("${A} $$ $B $"), "$${A} $$$ $B $");
    let args = Default::default();
    for s in ["${A} $$ $B $", "$$$", "x${", "plain"] {
        let back = crate::ir::subst::substitute(&escape_subst(s), &args);
        assert_eq!(back.as_deref(), Ok(s));
    }
}

#[test]
fn stages_get_names_and_bases() {
    let i = lower(
        "FROM scratch\nFROM 0 AS stage-0\nFROM stage-0\nFROM nginx\n",
        &[],
    );
    let names: Vec<&str> = i
        .spec
        .stages
        .iter()
        .map(|s| s.name.value.as_str())
        .collect();
    // An unnamed stage does not take a name a later `AS` uses.
    assert_eq!(names, ["stage-0_", "stage-0", "stage-2", "stage-3"]);
    let froms: Vec<Option<&str>> = i
        .spec
        .stages
        .iter()
        .map(|s| s.from.as_ref().map(|f| f.value.as_str()))
        .collect();
    assert_eq!(
        froms,
        [Some("scratch"), Some("stage-0_"), Some("stage-0"), None]
    );
    assert_eq!(
        i.spec.stages[3].image.as_ref().map(|s| s.value.as_str()),
        Some("nginx")
    );
}

#[test]
fn a_later_stage_name_is_an_image() {
    let i = lower(
        "FROM scratch\nCOPY --from=later /a /a\nFROM scratch AS later\n",
        &[],
    );
    // The image stage comes first, so the Dockerfile's last stage stays
    // the import's last (its default target).
    assert_eq!(i.spec.stages.len(), 3);
    assert_eq!(i.spec.stages[0].name.value, "image-0");
    let StepKind::Copy { from, .. } = &i.spec.stages[1].steps[0].kind else {
        panic!("not a copy");
    };
    assert_eq!(from.as_ref().map(|f| f.value.as_str()), Some("image-0"));
}

#[test]
fn entrypoint_keeps_a_cmd_of_the_same_stage_only() {
    let i = lower(
        "FROM scratch AS a\nCMD [\"x\"]\nFROM a\nENTRYPOINT [\"e\"]\n",
        &[],
    );
    assert_eq!(i.spec.stages[1].steps.len(), 1);
    let i = lower("FROM scratch\nCMD [\"x\"]\nENTRYPOINT [\"e\"]\n", &[]);
    let kinds: Vec<&str> = i.spec.stages[0]
        .steps
        .iter()
        .map(|s| s.kind.name())
        .collect();
    assert_eq!(kinds, ["cmd", "entrypoint", "cmd"]);
}

#[test]
fn shell_form_uses_the_shell_in_effect() {
    let i = lower(
        "FROM scratch AS a\nSHELL [\"/bin/bash\", \"-c\"]\nFROM a\nCMD echo hi\n",
        &[],
    );
    let StepKind::Cmd(c) = &i.spec.stages[1].steps[0].kind else {
        panic!("not a cmd");
    };
    let c: Vec<&str> = c.iter().map(|s| s.value.as_str()).collect();
    assert_eq!(c, ["/bin/bash", "-c", "echo hi"]);
}

#[test]
fn run_gets_the_args_in_scope_but_not_those_env_hides() {
    let i = lower(
        "FROM scratch\nARG A=1\nARG B=2\nENV B=env\nRUN make\n",
        &[("A", "9")],
    );
    let StepKind::Run(r) = &i.spec.stages[0].steps[1].kind else {
        panic!("not a run");
    };
    let env: Vec<(&str, &str)> = r
        .env
        .iter()
        .map(|(k, v)| (k.value.as_str(), v.value.as_str()))
        .collect();
    // The arg stays one, its default the build arg given.
    assert_eq!(env, [("A", "${A}")]);
    assert_eq!(i.spec.args.len(), 2);
    assert_eq!(i.spec.args[0].default.as_ref().unwrap().value, "9");
}

#[test]
fn spans_point_at_dockerfile_lines() {
    let i = lower("FROM scratch\n\nWORKDIR /a\n", &[]);
    let span = i.spec.stages[0].steps[0].span;
    assert_eq!((span.start, span.end), (14, 24));
}

#[test]
fn unsupported_sources_are_located_errors() {
    let sources = Sources::new();
    let text = "FROM scratch\nADD --checksum=sha256:00 local.txt /x\n";
    let id = sources.add("Dockerfile".into(), "Dockerfile".into(), text.into());
    let e = lower_text(text, id, Path::new(""), &[]).unwrap_err();
    assert_eq!(e.len(), 1);
    assert!(
        e[0].message.contains("remote sources only"),
        "{}",
        e[0].message
    );
}

#[test]
fn dockerfile_names() {
    for yes in [
        "Dockerfile",
        "x/Containerfile",
        "app.Dockerfile",
        "Dockerfile.dev",
    ] {
        assert!(is_dockerfile(Path::new(yes)), "{yes}");
    }
    for no in ["kiln.kdl", "Dockerfiles.kdl", "docker.kdl"] {
        assert!(!is_dockerfile(Path::new(no)), "{no}");
    }
}

#[test]
fn unknown_mount_types_are_errors() {
    let sources = Sources::new();
    let text = "FROM scratch\nRUN --mount=type=nfs,target=/x make\n";
    let id = sources.add("Dockerfile".into(), "Dockerfile".into(), text.into());
    let e = lower_text(text, id, Path::new(""), &[]).unwrap_err();
    assert!(
        e[0].message.contains("unknown type `nfs`"),
        "{}",
        e[0].message
    );
}

#[test]
fn parents_pivots_are_carried_over() {
    let i = lower("FROM scratch\nCOPY --parents ./a/./b/c.txt /d/\n", &[]);
    match &i.spec.stages[0].steps[0].kind {
        StepKind::Copy {
            sources, parents, ..
        } => {
            assert_eq!(sources[0].value, "./a/./b/c.txt");
            assert!(*parents);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn docker_forms_of_git_sources() {
    let p = |s: &str| git_source(s);
    assert_eq!(
        p("https://github.com/o/r.git#v1.2.3"),
        (
            "https://github.com/o/r.git".into(),
            Some("v1.2.3".into()),
            None,
            false
        )
    );
    assert_eq!(
        p("https://github.com/o/r.git#main:docs"),
        (
            "https://github.com/o/r.git".into(),
            Some("main".into()),
            Some("docs".into()),
            false
        )
    );
    assert_eq!(
        p("https://github.com/o/r.git?ref=v2&keep-git-dir=1&subdir=x"),
        (
            "https://github.com/o/r.git".into(),
            Some("v2".into()),
            Some("x".into()),
            true
        )
    );
    assert_eq!(
        p("git@github.com:o/r.git"),
        ("git@github.com:o/r.git".into(), None, None, false)
    );
    assert!(is_git("https://example.com/r.git?ref=main"));
    assert!(!is_git("https://example.com/r.tar.gz"));
}

#[test]
fn add_git_becomes_a_git_step() {
    let i = lower(
        "FROM scratch\nADD --keep-git-dir=true --chmod=0755 https://example.com/r.git#v1:src /app/\n",
        &[],
    );
    match &i.spec.stages[0].steps[0].kind {
        StepKind::Git {
            url,
            dest,
            reference,
            subdir,
            keep_git_dir,
            chmod,
            ..
        } => {
            assert_eq!(url.value, "https://example.com/r.git");
            assert_eq!(dest.value, "/app/");
            assert_eq!(reference.as_ref().unwrap().value, "v1");
            assert_eq!(subdir.as_ref().unwrap().value, "src");
            assert!(*keep_git_dir);
            assert_eq!(chmod.as_ref().unwrap().value, "0755");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_arg_used_by_value_anywhere_is_a_value_everywhere() {
    let i = lower(
        "ARG V=1.2\nARG W=x\nFROM scratch\nARG V\nARG W\nENV A=$V B=${V%.*} C=$W\nWORKDIR /$W\n",
        &[],
    );
    let names: Vec<&str> = i.spec.args.iter().map(|a| a.name.value.as_str()).collect();
    assert_eq!(names, ["W"]);
    let StepKind::Env(env) = &i.spec.stages[0].steps[0].kind else {
        panic!("not an env");
    };
    let values: Vec<&str> = env.iter().map(|(_, v)| v.value.as_str()).collect();
    assert_eq!(values, ["1.2", "1", "${W}"]);
    assert!(
        i.notes.iter().any(|n| n
            .message
            .contains("`ARG V` is written into the spec as its value")),
        "{:?}",
        i.notes
    );
}
