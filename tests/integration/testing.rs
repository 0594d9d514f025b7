//! `test` steps and `kiln test` on the busybox test image: a failing test
//! is recorded and its stage goes on, dependants still build, every test
//! is reported (text, JUnit XML, JSON) whether it passed, failed or could
//! not run, a passing test is cached and a failing one runs again.

use crate::harness::Project;
use crate::images_helper::{busybox, sandbox_ready};

/// Three tests: `unit` passes, `lint` fails (and its stage goes on),
/// `broken`'s stage fails before its test; `reports` reads two of them.
const SPEC: &str = r#"kiln 1
arg LINT default="3"
stage unit {
    from image="IMAGE"
    test "echo unit ok; mkdir -p /report; echo pass > /report/unit"
}
stage lint {
    from image="IMAGE"
    test "echo 'lint: 2 problems'; mkdir -p /report; echo done > /report/lint; exit ${LINT}" name="style"
    run "echo after > /after"
}
stage broken {
    from image="IMAGE"
    run "exit 7"
    test "true"
}
stage reports {
    from scratch
    copy "/report/" "/" from=unit
    copy "/report/" "/" from=lint
}
stage app {
    from scratch
    write "/app" "app\n"
}
export {
    reports to="reports" when="always"
    app to="app"
}
"#;

fn project() -> Option<Project> {
    if !sandbox_ready() {
        return None;
    }
    let image = busybox()?;
    let p = Project::new();
    p.spec(&SPEC.replace("IMAGE", &image));
    Some(p)
}

#[test]
fn failing_tests_are_reported_and_the_build_goes_on() {
    let Some(p) = project() else {
        return;
    };
    let r = p.kiln(&[
        "test",
        "--progress",
        "json",
        "--junit",
        "out/junit.xml",
        "--json",
        "out/tests.json",
    ]);
    r.code(1);
    // A line per test, then the counts.
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(
        lines[0].starts_with("unit ") && lines[0].contains("PASSED in"),
        "{}",
        r.stdout
    );
    assert!(
        lines.iter().any(|l| l.starts_with("lint (style)")
            && l.contains("FAILED in")
            && l.ends_with("(exit 3)")),
        "{}",
        r.stdout
    );
    assert!(
        lines.iter().any(|l| l.starts_with("broken ")
            && l.contains("NOT RUN (a step of `broken` before it failed)")),
        "{}",
        r.stdout
    );
    assert_eq!(
        lines.last(),
        Some(&"3 tests: 1 passed, 1 failed, 1 not run")
    );
    // The failure, with the test's output and where it is declared.
    assert!(r.stderr.contains("kiln::test::failed"), "{}", r.stderr);
    assert!(r.stderr.contains("test failed: exit 3"), "{}", r.stderr);
    assert!(r.stderr.contains("lint: 2 problems"), "{}", r.stderr);
    assert!(
        r.stderr.contains("kiln::run::exit"),
        "the stage that failed says so"
    );
    // The stage went on after its failing test.
    assert!(r.ran().contains(&("lint".into(), 1)), "{:?}", r.ran());
    let ended = r.events_of("test_finished");
    assert_eq!(ended.len(), 2, "{}", r.stderr);
    let style = ended.iter().find(|e| e["name"] == "style").unwrap();
    assert_eq!(style["passed"], false);
    assert_eq!(style["status"], "exit 3");
    // The reports hold every test, passed or not.
    let xml = p.read("out/junit.xml");
    assert!(
        xml.contains(r#"<testsuites name="kiln" tests="3" skipped="0" failures="1" errors="1""#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<testcase name="style" classname="lint""#),
        "{xml}"
    );
    assert!(xml.contains(r#"<failure message="exit 3""#), "{xml}");
    assert!(xml.contains("lint: 2 problems"), "{xml}");
    assert!(
        xml.contains(r#"<testcase name="unit" classname="unit""#),
        "{xml}"
    );
    let json: serde_json::Value = serde_json::from_str(&p.read("out/tests.json")).unwrap();
    assert_eq!(
        (json["passed"].as_u64(), json["failed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(json["not_run"], 1);
    let unit = &json["tests"].as_array().unwrap()[0];
    assert_eq!(unit["verdict"], "passed");
    assert_eq!(unit["tail"], "unit ok\n");
    assert_eq!(unit["file"], "kiln.kdl");
    assert_eq!(unit["line"], 5);
    // `kiln test` exports nothing.
    assert!(!p.exists("reports") && !p.exists("app"));

    // Again: the passing test is cached; the failing one runs again (a
    // failed test is not cached), leaves the same tree, and the step
    // after it stays cached.
    let again = p.kiln(&["test", "--progress", "json"]);
    again.code(1);
    assert!(again.stdout.contains("(cached) PASSED"), "{}", again.stdout);
    assert_eq!(
        again.ran(),
        vec![("lint".to_string(), 0)],
        "{}",
        again.stderr
    );
    let explain = p.kiln(&["explain"]);
    explain.ok();
    assert!(
        explain
            .stdout
            .contains("the test failed last time, and a failed test is not cached"),
        "{}",
        explain.stdout
    );
}

#[test]
fn a_build_with_a_failing_test_fails_but_writes_its_reports() {
    let Some(p) = project() else {
        return;
    };
    let r = p.build(&[]);
    r.code(1);
    assert!(r.stderr.contains("test failed: exit 3"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("tests: 1 passed (0 cached), 1 failed, 0 not run"),
        "{}",
        r.stderr
    );
    // `when="always"`: the reports stage built on what the failing test
    // left; the image-like export waits for a build without failures.
    assert_eq!(p.read("reports/unit"), "pass\n");
    assert_eq!(p.read("reports/lint"), "done\n");
    assert!(
        !p.exists("app"),
        "a failed test stops `when=\"success\"` exports"
    );

    // Fixed: every test passes, and a later `kiln test` that changes
    // nothing is answered from the cache, every test reported passed.
    let fixed = p.kiln(&[
        "test", "--target", "unit", "--target", "lint", "--arg", "LINT=0",
    ]);
    fixed.ok();
    assert!(
        fixed.stdout.ends_with("2 tests: 2 passed (1 cached)\n"),
        "{}",
        fixed.stdout
    );
    let noop = p.kiln(&[
        "test",
        "--target",
        "unit",
        "--target",
        "lint",
        "--arg",
        "LINT=0",
        "--progress",
        "json",
        "--json",
        "t.json",
    ]);
    noop.ok();
    assert!(noop.ran().is_empty(), "{:?}", noop.ran());
    assert!(
        noop.stdout.ends_with("2 tests: 2 passed (2 cached)\n"),
        "{}",
        noop.stdout
    );
    let json: serde_json::Value = serde_json::from_str(&p.read("t.json")).unwrap();
    assert_eq!(json["cached"], 2);
    assert_eq!(
        json["tests"][1]["tail"], "lint: 2 problems\n",
        "a cached test keeps its output"
    );
    assert!(json["tests"][1]["ms"].as_u64().is_some());
}

#[test]
fn selection_and_timeouts() {
    if !sandbox_ready() {
        return;
    }
    let Some(image) = busybox() else {
        return;
    };
    let p = Project::new();
    p.spec(&format!(
        r#"kiln 1
stage slow {{
    from image="{image}"
    test "touch /made; sleep 20" timeout="1s"
    run "test ! -e /made"
}}
stage badname {{
    from image="{image}"
    test "touch \"/x$(printf '\\377')\"; echo failing-output"
}}
stage unresolved {{
    from image="oci:/nonexistent/image:1"
    test "true"
}}
stage quick-a {{
    from image="{image}"
    test "true" name="a"
    test "test 1 = 1" name="b"
    test ":"
}}
stage plain {{
    from scratch
    write "/x" "x"
}}
"#
    ));
    let r = p.kiln(&["test", "--target", "quick-*"]);
    r.ok();
    assert!(r.stdout.contains("quick-a (step 3)"), "{}", r.stdout);
    assert!(r.stdout.ends_with("3 tests: 3 passed\n"), "{}", r.stdout);
    let slow = p.kiln(&["test", "--target", "slow"]);
    slow.code(1);
    assert!(
        slow.stdout.contains("FAILED in")
            && slow
                .stdout
                .contains("(ran longer than its time limit of 1s)"),
        "{}",
        slow.stdout
    );
    // A test stopped at its time limit keeps nothing it made.
    assert!(
        slow.stdout.ends_with("1 test: 0 passed, 1 failed\n"),
        "{}",
        slow.stdout
    );
    // A test that leaves what a tree cannot hold failed, with its output.
    let bad = p.kiln(&["test", "--target", "badname"]);
    bad.code(1);
    assert!(bad.stdout.contains("badname  FAILED in"), "{}", bad.stdout);
    assert!(
        bad.stderr.contains("test failed: exit 0, and"),
        "{}",
        bad.stderr
    );
    assert!(bad.stderr.contains("failing-output"), "{}", bad.stderr);
    // A build that stops before its first stage still reports its tests.
    let stopped = p.kiln(&["test", "--target", "unresolved", "--json", "t.json"]);
    assert_ne!(stopped.code, 0);
    let json: serde_json::Value = serde_json::from_str(&p.read("t.json")).unwrap();
    assert_eq!(json["not_run"], 1, "{json}");
    let why = json["tests"][0]["why"].as_str().unwrap();
    assert!(
        why.starts_with("the build stopped before it: cannot resolve the image"),
        "{why}"
    );
    // Reports go where nothing of the build is.
    let spec = p.kiln(&["test", "--target", "quick-*", "--json", "kiln.kdl"]);
    spec.code(2);
    assert!(
        spec.stderr.contains("`--json kiln.kdl` is a spec file"),
        "{}",
        spec.stderr
    );
    let twice = p.kiln(&["test", "--target", "quick-*", "--json", "r", "--junit", "r"]);
    twice.code(2);
    assert!(
        twice.stderr.contains("is also where `--junit` goes"),
        "{}",
        twice.stderr
    );
    let none = p.kiln(&["test", "--target", "plain"]);
    none.code(2);
    assert!(none.stderr.contains("kiln::test::none"), "{}", none.stderr);
    assert!(
        none.stderr
            .contains("no stage named by `--target plain` holds a test")
    );
}
