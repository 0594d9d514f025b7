//! Early cutoff: a step's key comes from the state it starts on, so a step
//! that runs again and makes the same tree leaves the steps after it
//! cached, and a copy from another stage is keyed by what it takes.

use crate::harness::Project;
use crate::images_helper::{busybox, sandbox_ready};

/// The (stage, step) pairs that ran.
fn ran(r: &crate::harness::Run) -> Vec<(String, u64)> {
    let mut v = r.ran();
    v.sort();
    v
}

#[test]
fn a_copy_from_a_stage_is_keyed_by_what_it_takes() {
    let p = Project::new();
    let spec = r#"kiln 1
stage a {
    write "/x" "x"
    write "/y" "Y"
}
stage b {
    copy "/x" "/x" from=a
    write "/z" "z"
}
export {
    b to="out"
}
"#;
    p.spec(spec);
    p.build(&[]).ok();
    // Only `/y` changes: `a` runs again, `b` not at all.
    p.spec(&spec.replace("\"Y\"", "\"YY\""));
    let r = p.build(&[]);
    r.ok();
    assert_eq!(ran(&r), vec![("a".to_string(), 1)], "{}", r.stdout);
    // `/x` changes: `b`'s copy and what follows run again.
    p.spec(&spec.replace("\"x\"", "\"xx\""));
    let r = p.build(&[]);
    r.ok();
    assert!(ran(&r).contains(&("b".to_string(), 0)), "{}", r.stdout);
    assert_eq!(p.read("out/x"), "xx");
}

#[test]
fn a_copy_from_a_stage_sees_modes_and_owners_of_what_it_takes() {
    let p = Project::new();
    let spec = r#"kiln 1
stage a {
    write "/x" "x" mode="644"
}
stage b {
    copy "/x" "/x" from=a
}
export {
    b to="out" format="tar"
}
"#;
    p.spec(spec);
    p.build(&[]).ok();
    p.spec(&spec.replace("mode=\"644\"", "mode=\"755\""));
    let r = p.build(&[]);
    r.ok();
    assert!(ran(&r).contains(&("b".to_string(), 0)), "{}", r.stdout);
}

fn sandbox_project(spec: &str) -> Option<Project> {
    if !sandbox_ready() {
        return None;
    }
    let image = busybox()?;
    let p = Project::new();
    p.spec(&spec.replace("IMAGE", &image));
    Some(p)
}

#[test]
fn a_command_that_makes_the_same_tree_again_keeps_later_steps_cached() {
    let spec = r#"kiln 1
stage s {
    from image="IMAGE"
    copy "a.txt" "/tmp/a.txt"
    run "wc -c < /tmp/a.txt > /n && rm /tmp/a.txt"
    run "cat /n /n > /m"
}
export {
    s to="out"
}
"#;
    let Some(p) = sandbox_project(spec) else {
        return;
    };
    p.file("a.txt", "one");
    p.build(&[]).ok();
    // Same length, other bytes: the copy and the first command run again,
    // the command makes the same tree; the second command is kept.
    p.file("a.txt", "two");
    let r = p.build(&[]);
    r.ok();
    assert_eq!(
        ran(&r),
        vec![("s".to_string(), 0), ("s".to_string(), 1)],
        "{}",
        r.stdout
    );
    let explain = p.kiln(&["explain"]);
    explain.ok();
    assert!(
        explain
            .stdout
            .contains("ran, same result: later steps kept"),
        "{}",
        explain.stdout
    );
    // Another length: both run.
    p.file("a.txt", "three");
    let r = p.build(&[]);
    r.ok();
    assert_eq!(ran(&r).len(), 3, "{}", r.stdout);
    assert!(p.read("out/m").starts_with('5'), "{}", p.read("out/m"));
    let explain = p.kiln(&["explain"]);
    assert!(
        !explain.stdout.contains("same result"),
        "{}",
        explain.stdout
    );
}

#[test]
fn changing_what_a_command_does_not_take_from_a_stage_does_not_run_it() {
    let spec = r#"kiln 1
stage a {
    write "/x" "x"
    write "/y" "Y"
}
stage b {
    from image="IMAGE"
    copy "/x" "/x" from=a
    run "cat /x /x > /xx"
}
export {
    b to="out"
}
"#;
    let Some(p) = sandbox_project(spec) else {
        return;
    };
    p.build(&[]).ok();
    p.spec(
        &std::fs::read_to_string(p.path().join("kiln.kdl"))
            .unwrap()
            .replace("\"Y\"", "\"YY\""),
    );
    let r = p.build(&[]);
    r.ok();
    assert!(
        ran(&r).iter().all(|(stage, _)| stage == "a"),
        "{}",
        r.stdout
    );
    assert_eq!(p.read("out/xx"), "xx");
}
