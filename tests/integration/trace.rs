//! `--trace FILE` (a Chrome trace of the build) and `kiln explain
//! --critical-path`, on stages from scratch.

use crate::harness::Project;

const SPEC: &str = r#"kiln 1
stage base {
    write "/base" "b\n"
}
stage left {
    from base
    copy "a.txt" "/left/"
}
stage right {
    from base
    write "/right" "r\n"
}
stage app {
    from scratch
    copy "/" "/l/" from=left
    copy "/" "/r/" from=right
}
export {
    app to="out"
}
"#;

#[test]
fn a_trace_holds_every_stage_and_step_and_the_critical_path() {
    let p = Project::new();
    p.spec(SPEC).file("a.txt", "a\n");
    let r = p.build(&["--trace", "trace/build.json"]);
    r.ok();
    let doc: serde_json::Value = serde_json::from_str(&p.read("trace/build.json")).unwrap();
    let events = doc["traceEvents"].as_array().unwrap();
    let named = |name: &str, cat: &str| {
        events
            .iter()
            .filter(|e| e["name"] == name && e["cat"] == cat)
            .count()
    };
    for stage in ["base", "left", "right", "app"] {
        assert_eq!(named(stage, "stage"), 1, "{stage}: {doc}");
    }
    assert_eq!(named("copy \"a.txt\" \"/left/\"", "step"), 1, "{doc}");
    // Every slice is a complete event with a start and a length.
    for e in events.iter().filter(|e| e["ph"] == "X") {
        assert!(
            e["ts"].is_u64() && e["dur"].is_u64() && e["tid"].is_u64(),
            "{e}"
        );
    }
    let path = doc["otherData"]["critical_path"].as_array().unwrap();
    assert_eq!(path.first().unwrap(), "base", "{doc}");
    assert_eq!(path.last().unwrap(), "app", "{doc}");
    assert_eq!(path.len(), 3, "{doc}");

    // Again: every stage is cached, and the trace says so.
    p.file("a.txt", "changed\n");
    let again = p.build(&["--trace", "trace/build.json"]);
    again.ok();
    let doc: serde_json::Value = serde_json::from_str(&p.read("trace/build.json")).unwrap();
    let events = doc["traceEvents"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["cat"] == "stage,cached" && e["name"] == "right"),
        "{doc}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["cat"] == "step,cached" && e["ph"] == "i"),
        "{doc}"
    );

    // `explain --critical-path` prints the chain of the last build.
    let explain = p.kiln(&["explain", "--critical-path"]);
    explain.ok();
    let lines: Vec<&str> = explain.stdout.lines().collect();
    assert!(
        lines[0].starts_with("critical path of the last build of ")
            && lines[0].contains("kiln.kdl: 3 stages, "),
        "{}",
        explain.stdout
    );
    assert!(
        lines[1].trim_start().starts_with("base "),
        "{}",
        explain.stdout
    );
    assert!(
        lines[3].trim_start().starts_with("app "),
        "{}",
        explain.stdout
    );
    assert!(lines[1].ends_with("cached"), "{}", explain.stdout);
}

#[test]
fn a_trace_that_cannot_be_written_fails_the_command() {
    let p = Project::new();
    p.spec(SPEC).file("a.txt", "a\n").file("blocker", "x");
    let r = p.build(&["--trace", "blocker/trace.json"]);
    r.code(3);
    assert!(r.stderr.contains("cannot write the trace"), "{}", r.stderr);
}
