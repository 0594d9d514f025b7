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

/// A tree of `dir`'s bytes (files' lengths), for "what did a build add".
fn bytes_under(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

pub(crate) const ON_BUSYBOX: &str = r#"kiln 1
stage s {
    from image="IMAGE"
    copy "a.txt" "/a.txt"
    run "cat /a.txt /a.txt > /b.txt"
}
export {
    s to="out"
}
"#;

#[test]
fn projects_without_a_state_directory_share_the_machine_s() {
    if !sandbox_ready() {
        return;
    }
    let Some(image) = busybox() else {
        return;
    };
    let first = Project::bare();
    first.spec(&ON_BUSYBOX.replace("IMAGE", &image));
    first.file("a.txt", "one\n");
    let r = first.build(&[]);
    r.ok();
    assert_eq!(r.events_of("image_unpacked").len(), 1, "{}", r.stdout);
    assert_eq!(first.read("out/b.txt"), "one\none\n");
    let state = first.machine_state();
    assert!(state.join("actions.log").exists());
    assert!(!first.exists(".kiln"), "a project without .kiln gets none");

    // A second folder on the same base: its first build unpacks nothing,
    // writes no copy of the image, and runs only its own steps.
    let second = first.beside();
    second.spec(&ON_BUSYBOX.replace("IMAGE", &image));
    second.file("a.txt", "two\n");
    let rootfs_before = bytes_under(&state.join("sandbox"));
    let r = second.build(&[]);
    r.ok();
    assert!(r.events_of("image_unpacked").is_empty(), "{}", r.stdout);
    let added = bytes_under(&state.join("sandbox")) - rootfs_before;
    assert!(
        added < 64 * 1024,
        "the second project wrote {added} bytes of trees"
    );
    assert_eq!(second.read("out/b.txt"), "two\ntwo\n");
    assert!(!second.exists(".kiln"));

    // Each project keeps its own records: a no-op in each is answered
    // from its own memo, and `explain` tells each one's last build.
    for (p, text) in [(&first, "one"), (&second, "two")] {
        let again = p.build(&[]);
        again.ok();
        assert!(again.ran().is_empty(), "{}", again.stdout);
        let e = p.kiln(&["explain"]);
        e.ok();
        assert!(
            e.stdout.contains(&p.path().display().to_string()),
            "{}",
            e.stdout
        );
        assert_eq!(p.read("out/b.txt"), format!("{text}\n{text}\n"));
    }
}

#[test]
fn an_image_tagged_in_one_folder_is_found_in_another() {
    let first = Project::bare();
    first.spec("kiln 1\nstage app {\n    write \"/hello\" \"hi\\n\"\n}\n");
    first.kiln(&["build", "-t", "kiln-test-app:1"]).ok();
    let second = first.beside();
    second.spec(
        "kiln 1\nstage s {\n    from image=\"kiln-test-app:1\"\n    write \"/more\" \"more\\n\"\n}\nexport {\n    s to=\"out\"\n}\n",
    );
    second.build(&[]).ok();
    assert_eq!(second.read("out/hello"), "hi\n");
    assert_eq!(second.read("out/more"), "more\n");
}

#[test]
fn a_name_not_in_the_image_store_says_where_kiln_looked() {
    let p = Project::bare();
    p.spec("kiln 1\nstage s {\n    from image=\"127.0.0.1:1/kiln-test-nowhere:1\"\n}\n");
    let r = p.build(&[]);
    assert_ne!(r.code, 0);
    let images = p.machine_state().join("images");
    // The message is wrapped to the terminal's width, paths too.
    let said: String = r.stderr.split_whitespace().collect();
    let store = format!("lookedfirstintheimagestore`{}`", images.display());
    assert!(said.contains(&store), "{}", r.stderr);
    assert!(
        said.contains("thenitaskedtheregistry`127.0.0.1:1`"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_project_s_own_state_directory_keeps_being_used() {
    // `Project::new` makes `.kiln`, as kiln before the machine store did.
    let p = Project::new();
    p.spec("kiln 1\nstage s {\n    write \"/a\" \"a\\n\"\n}\nexport {\n    s to=\"out\"\n}\n");
    p.build(&[]).ok();
    assert!(p.exists(".kiln/actions.log"));
    assert!(!p.machine_state().exists());
    // A `.kiln` that is a symlink is not followed: the machine's is used.
    let q = Project::bare();
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), q.path().join(".kiln")).unwrap();
    q.spec("kiln 1\nstage s {\n    write \"/a\" \"a\\n\"\n}\nexport {\n    s to=\"out\"\n}\n");
    q.build(&[]).ok();
    assert!(q.machine_state().join("actions.log").exists());
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

#[test]
fn hash_context_uses_the_state_directory_a_build_would() {
    let p = Project::bare();
    p.file("src/a", "a\n");
    p.kiln(&["hash-context", "."]).ok();
    assert!(
        !p.exists(".kiln"),
        "a `.kiln` would move later builds off the machine store"
    );
    assert!(p.machine_state().join("index").is_dir());
}
