//! Builds sharing one store: work in flight is shared (two builds that
//! need the same step run it once between them).

use crate::harness::{Project, Run, kiln_bin};
use crate::images_helper::{busybox, sandbox_ready};
use std::path::Path;
use std::process::Command;

/// `kiln build --progress json` in `p`, on the store at `state`.
fn build_on(p: &Project, state: &Path) -> std::process::Child {
    Command::new(kiln_bin())
        .args(["build", "--progress", "json"])
        .current_dir(p.path())
        .env("KILN_STATE_DIR", state)
        .env_remove("SOURCE_DATE_EPOCH")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kiln")
}

#[test]
fn two_concurrent_identical_builds_run_each_step_once_in_total() {
    if !sandbox_ready() {
        return;
    }
    let Some(image) = busybox() else {
        return;
    };
    let spec = format!(
        r#"kiln 1
stage s {{
    from image="{image}"
    copy "a.txt" "/a.txt"
    run "sleep 1; cat /a.txt /a.txt > /b.txt"
    run "sleep 1; cat /b.txt /b.txt > /c.txt"
}}
export {{
    s to="out"
}}
"#
    );
    let state = tempfile::tempdir().unwrap();
    let projects: Vec<Project> = (0..2)
        .map(|_| {
            let p = Project::new();
            p.spec(&spec);
            p.file("a.txt", "a\n");
            p
        })
        .collect();
    let children: Vec<_> = projects.iter().map(|p| build_on(p, state.path())).collect();
    let runs: Vec<Run> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait for kiln").into())
        .collect();
    let mut ran = Vec::new();
    for (p, r) in projects.iter().zip(&runs) {
        r.ok();
        ran.extend(r.ran());
        assert_eq!(p.read("out/c.txt"), "a\na\na\na\n");
    }
    ran.sort();
    // Each of the three steps ran in exactly one of the builds.
    assert_eq!(
        ran,
        vec![
            ("s".to_string(), 0),
            ("s".to_string(), 1),
            ("s".to_string(), 2)
        ],
        "{}\n{}",
        runs[0].stdout,
        runs[1].stdout
    );
    // Nothing is left claimed.
    let left = std::fs::read_dir(state.path().join("inflight"))
        .map(|rd| rd.count())
        .unwrap_or(0);
    assert_eq!(left, 0);
}
