//! `kiln query` and target selection on a small monorepo: libraries,
//! apps built on them, tests, an ignore file, a mount, an included spec.
//! The answers are compared with `tests/golden/query/monorepo.txt`
//! (`KILN_BLESS=1` rewrites it).

use crate::harness::Project;
use std::path::Path;

const SPEC: &str = r#"kiln 1
include "tests.kdl"
stage base {
    write "/etc/os" "x"
}
stage lib-a {
    from base
    copy "libs/a/" "/src/a/"
}
stage lib-b {
    from base
    copy "libs/b/*.c" "/src/b/" {
        exclude "skip.c"
    }
}
stage app {
    from base
    copy from=lib-a "/src/a" "/a"
    copy from=lib-b "/src/b" "/b"
    copy "apps/main.c" "/main.c"
}
stage docs {
    write "/doc" "d"
}
export {
    app to="out/app"
    docs to="out/docs"
}
"#;

const TESTS: &str = r#"kiln 1
stage test-a {
    copy from=lib-a "/src/a" "/a"
}
stage test-app {
    from app
    run "true" {
        mount "type=bind,source=fixtures,target=/fixtures"
    }
}
"#;

fn monorepo() -> Project {
    let p = Project::new();
    p.spec(SPEC)
        .file("tests.kdl", TESTS)
        .file("libs/a/x.c", "a\n")
        .file("libs/b/y.c", "b\n")
        .file("libs/b/skip.c", "s\n")
        .file("apps/main.c", "m\n")
        .file("fixtures/one.txt", "1\n")
        .file("notes.txt", "n\n")
        .file(".kilnignore", "notes.txt\n");
    p
}

/// Every question, its answer and exit code, in one transcript.
#[test]
fn queries_answer_as_the_golden_says() {
    let p = monorepo();
    let questions: &[&[&str]] = &[
        &["deps", "app"],
        &["deps", "app", "--direct"],
        &["rdeps", "lib-a"],
        &["rdeps", "lib-a", "--direct"],
        &["rdeps", "base", "lib-b", "--direct"],
        &["deps", "test-*"],
        &["path", "test-app", "base"],
        &["path", "base", "app"],
        &["path", "docs", "base"],
        &["reads", "libs/a/x.c"],
        &["reads", "libs/b/y.c", "libs/b/skip.c", "notes.txt"],
        &["reads", "fixtures/one.txt"],
        &["reads", "tests.kdl"],
        &["reads", "apps/main.c", "--format", "json"],
        &["exports"],
        &["exports", "--format", "json"],
        &["deps", "test-app", "--format", "json"],
        &["rdeps", "lib-b", "--format", "dot"],
        &["deps", "nope"],
        &["deps", "lib-*-x"],
        &["reads", "libs/a/x.c", "--format", "dot"],
    ];
    let mut transcript = String::new();
    for q in questions {
        let mut args = vec!["query"];
        args.extend_from_slice(q);
        let r = p.kiln_env(&args, &[("NO_COLOR", "1"), ("COLUMNS", "80")]);
        transcript.push_str(&format!("$ kiln {}\n", args.join(" ")));
        transcript.push_str(&r.stdout);
        for line in r.stderr.lines().filter(|l| !l.trim().is_empty()) {
            transcript.push_str(&format!("! {line}\n"));
        }
        transcript.push_str(&format!("exit {}\n\n", r.code));
    }
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/query/monorepo.txt");
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::write(&golden, &transcript).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap_or_default();
    assert!(
        want == transcript,
        "the answers changed (KILN_BLESS=1 to accept):\n{transcript}"
    );
}

/// A dry run says which steps would run and why, and which are cached;
/// it runs, exports and records nothing.
#[test]
fn a_dry_run_says_what_would_run_and_why() {
    let p = monorepo();
    let r = p.kiln(&["build", "--dry-run"]);
    r.ok();
    assert!(
        r.stdout.contains("would run  base [1] write \"/etc/os\""),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("dry run: 7 steps would run, 0 cached"),
        "{}",
        r.stdout
    );
    assert!(!p.exists("out"), "nothing exported");
    p.build(&[]).ok();

    p.file("apps/main.c", "m2\n");
    let r = p.kiln(&[
        "build",
        "--dry-run",
        "--target",
        "test-*",
        "--progress",
        "json",
    ]);
    r.ok();
    assert!(
        r.stdout.contains(
            "would run  app [3] copy \"apps/main.c\" \"/main.c\"\n           context file `apps/main.c` changed"
        ),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("would run  test-app [1] run \"true\"\n           `app` would run first"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("cached     app [2]"), "{}", r.stdout);
    assert!(
        r.stdout.contains("dry run: 3 steps would run, 5 cached"),
        "{}",
        r.stdout
    );
    let planned = r.events_of("step_planned");
    assert_eq!(planned.len(), 8, "{planned:?}");
    assert!(planned.iter().any(|e| e["stage"] == "app"
        && e["step"] == 2
        && e["status"] == "would run"
        && e["why"][0] == "context file `apps/main.c` changed"));
    assert_eq!(p.read("out/app/main.c"), "m\n", "nothing exported");

    // Nothing was recorded: the build after it runs the step, and
    // `explain` says why as the dry run did.
    let r = p.build(&[]);
    r.ok();
    assert_eq!(r.ran(), vec![("app".to_string(), 2)], "{}", r.stderr);
    let explained = p.kiln(&["explain"]);
    assert!(
        explained
            .stdout
            .contains("context file `apps/main.c` changed"),
        "{}",
        explained.stdout
    );
    let r = p.kiln(&["build", "--dry-run", "--no-cache"]);
    r.ok();
    assert!(r.stdout.contains("`--no-cache` was given"), "{}", r.stdout);
}

/// Several `--target`s, globs and `NAME/...` select stages; an `-o`
/// exports the `--target` before it.
#[test]
fn targets_are_selected_by_glob_and_each_exported_by_its_own_o() {
    if !crate::images_helper::sandbox_ready() {
        return;
    }
    let p = monorepo();
    // A glob builds every stage it matches (and what they need), and no
    // other.
    let r = p.build(&["--target", "lib-*"]);
    r.ok();
    let mut stages: Vec<String> = r.ran().into_iter().map(|(s, _)| s).collect();
    stages.sort();
    stages.dedup();
    assert_eq!(stages, ["base", "lib-a", "lib-b"], "{}", r.stderr);

    let r = p.build(&[
        "--target", "lib-a", "-o", "out/a", "--target", "docs/...", "-o", "out/d",
    ]);
    r.ok();
    assert_eq!(p.read("out/a/src/a/x.c"), "a\n");
    assert_eq!(p.read("out/d/doc"), "d");
    assert!(!p.exists("out/a/doc"), "each -o has its own target");

    // An `-o` after a glob that names several stages is refused, as is one
    // before several targets; a glob that matches nothing names the stages.
    let r = p.build(&["--target", "lib-*", "-o", "out/x"]);
    r.code(2);
    assert!(r.stderr.contains("which names 2 stages"), "{}", r.stderr);
    let r = p.build(&["-o", "out/x", "--target", "lib-a", "--target", "app"]);
    r.code(2);
    assert!(
        r.stderr.contains("comes before every `--target`"),
        "{}",
        r.stderr
    );
    let r = p.build(&["--target", "tset-*"]);
    r.code(2);
    assert!(
        r.stderr.contains("no stage matches `tset-*`"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("stages are: `test-a`"), "{}", r.stderr);
}

/// `kiln affected --since REF` names the stages a change since a commit
/// may change, from what each step reads: an edit, a new file a glob
/// picks, a deleted one, an ignored one, a spec file; `kiln build
/// --affected REF` builds and exports only those.
#[test]
fn affected_follows_what_steps_read() {
    let p = monorepo();
    let git = |args: &[&str]| crate::git::git(p.path(), args);
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "one"]);
    let affected = |args: &[&str]| {
        let mut all = vec!["affected", "--since", "HEAD"];
        all.extend_from_slice(args);
        let r = p.kiln(&all);
        r.ok();
        r.stdout.lines().map(String::from).collect::<Vec<_>>()
    };
    assert!(affected(&[]).is_empty(), "nothing changed");

    p.file("libs/a/x.c", "a2\n");
    assert_eq!(affected(&[]), ["lib-a", "test-a", "app", "test-app"]);
    git(&["checkout", "-q", "--", "libs/a/x.c"]);

    // A new file a glob picks; one its exclude drops; one the ignore
    // file hides; one no step reads.
    p.file("libs/b/z.c", "z\n");
    p.file("libs/b/skip.c", "s2\n");
    p.file("notes.txt", "n2\n");
    p.file("README", "r\n");
    let r = p.kiln(&["affected", "--since", "HEAD", "--format", "json"]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        v["stages"],
        serde_json::json!(["lib-b", "app", "test-app"]),
        "{v}"
    );
    assert_eq!(v["exports"][0]["stage"], "app", "{v}");
    let changed: Vec<&str> = v["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        changed.iter().any(|c| c.ends_with("libs/b/z.c")),
        "{changed:?}"
    );
    std::fs::remove_file(p.path().join("libs/b/z.c")).unwrap();
    git(&["checkout", "-q", "--", "libs/b/skip.c", "notes.txt"]);
    assert!(affected(&[]).is_empty(), "README is read by no step");

    // A mode changed; the ignore file changed (what every reader of the
    // context sees); the root spec changed (its args reach every stage).
    use std::os::unix::fs::PermissionsExt;
    let x = p.path().join("libs/a/x.c");
    std::fs::set_permissions(&x, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(affected(&[]), ["lib-a", "test-a", "app", "test-app"]);
    std::fs::set_permissions(&x, std::fs::Permissions::from_mode(0o644)).unwrap();
    p.file(".kilnignore", "notes.txt\nREADME\n");
    assert_eq!(
        affected(&[]),
        ["lib-a", "test-a", "lib-b", "app", "test-app"]
    );
    git(&["checkout", "-q", "--", ".kilnignore"]);
    p.spec(&SPEC.replace("\"/doc\" \"d\"", "\"/doc\" \"d2\""));
    assert_eq!(affected(&[]).len(), 7, "every stage");
    p.spec(SPEC);
    // A link is the file read, not its target.
    std::os::unix::fs::symlink("x.c", p.path().join("libs/a/link.c")).unwrap();
    git(&["add", "libs/a/link.c"]);
    git(&["commit", "-qm", "link"]);
    std::fs::remove_file(p.path().join("libs/a/link.c")).unwrap();
    std::os::unix::fs::symlink("y.c", p.path().join("libs/a/link.c")).unwrap();
    let r = p.kiln(&["query", "reads", "libs/a/link.c"]);
    assert!(r.stdout.starts_with("lib-a step 1 (copy)"), "{}", r.stdout);
    assert_eq!(affected(&[]), ["lib-a", "test-a", "app", "test-app"]);
    git(&["checkout", "-q", "--", "libs/a/link.c"]);

    // A deleted file is read by the steps that picked it.
    std::fs::remove_file(p.path().join("libs/b/y.c")).unwrap();
    assert_eq!(affected(&[]), ["lib-b", "app", "test-app"]);
    git(&["checkout", "-q", "--", "libs/b/y.c"]);
    // An included spec: the stages declared in it.
    p.file(
        "tests.kdl",
        &TESTS.replace("/src/a\" \"/a\"", "/src/a\" \"/a2\""),
    );
    assert_eq!(affected(&[]), ["test-a", "test-app"]);
    git(&["checkout", "-q", "--", "tests.kdl"]);

    // A build of what a change affects: only that export is written.
    p.file("libs/a/x.c", "a3\n");
    git(&["commit", "-qam", "two"]);
    let r = p.build(&["--affected", "HEAD~1"]);
    r.ok();
    assert_eq!(p.read("out/app/a/x.c"), "a3\n");
    assert!(!p.exists("out/docs"), "docs is not affected");
    let r = p.kiln(&["affected", "--since", "no-such-ref"]);
    r.code(2);
    assert!(r.stderr.contains("names no commit here"), "{}", r.stderr);
}
