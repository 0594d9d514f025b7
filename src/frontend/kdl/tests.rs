use super::*;
use crate::diag::Code;
use crate::frontend::ast::StepKind;

fn parse(text: &str) -> Result<Spec, Diagnostics> {
    parse_str("kiln.kdl", text, &Sources::new()).map_err(|e| e.diagnostics)
}

#[test]
fn parses_a_full_stage() {
    let spec = parse(
        r#"kiln 1
arg V default="1"
stage build {
    from scratch
    copy "src/" "a" "/dst/" chmod="0755" chown="1:2"
    write "/f" "x" mode=0o600
    env A="1" B="2"
    label "k" "v"
    expose 80 "53/udp"
}
export {
    build to="out" format="tar"
}
"#,
    )
    .unwrap();
    assert_eq!(spec.stages.len(), 1);
    let s = &spec.stages[0];
    assert_eq!(s.from.as_ref().unwrap().value, "scratch");
    assert_eq!(s.steps.len(), 5);
    match &s.steps[0].kind {
        StepKind::Copy {
            sources,
            dest,
            chmod,
            ..
        } => {
            assert_eq!(sources.len(), 2);
            assert_eq!(dest.value, "/dst/");
            assert_eq!(chmod.as_ref().unwrap().value, "0755");
        }
        other => panic!("{other:?}"),
    }
    match &s.steps[1].kind {
        StepKind::Write { mode, .. } => assert_eq!(mode.as_ref().unwrap().value, "600"),
        other => panic!("{other:?}"),
    }
    assert_eq!(spec.exports.len(), 1);
}

#[test]
fn reports_all_errors_at_once() {
    let errs = parse("stage a {\n  copyy \"x\" \"y\"\n  write \"p\"\n}\nstgae b {}\n").unwrap_err();
    let codes: Vec<Code> = errs.iter().map(|d| d.code).collect();
    assert_eq!(
        codes,
        [
            Code::SPEC_UNKNOWN_STEP,
            Code::SPEC_ARGUMENTS,
            Code::SPEC_UNKNOWN_NODE
        ]
    );
    assert_eq!(errs[0].help.as_deref(), Some("did you mean `copy`?"));
}

#[test]
fn decimal_modes_are_refused() {
    let errs = parse("stage a {\n  write \"p\" \"c\" mode=755\n}\n").unwrap_err();
    assert_eq!(errs[0].code, Code::SPEC_MODE);
}

#[test]
fn kdl_v1_is_read_with_a_warning() {
    let spec = parse("stage \"a\" {\n  rm \"x\" force=true\n}\n").unwrap();
    assert_eq!(spec.warnings.len(), 1);
    assert!(matches!(
        spec.stages[0].steps[0].kind,
        StepKind::Rm { force: true, .. }
    ));
}

#[test]
fn syntax_errors_are_located() {
    let errs = parse("stage a {\n  copy \"x\n}\n").unwrap_err();
    assert_eq!(errs[0].code, Code::SPEC_SYNTAX);
    assert!(!errs[0].labels.is_empty());
}
