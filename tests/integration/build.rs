//! Building: caching, pruning, parallelism, failures, exports.

use crate::harness::{Project, stored_blob};
use std::os::unix::fs::PermissionsExt;

const TWO_STAGES: &str = r#"kiln 1
stage a {
    copy "a.txt" "/a.txt"
    write "/marker" "a"
}
stage b {
    copy "b.txt" "/b.txt"
}
stage final {
    copy "/a.txt" "/" from=a
    copy "/b.txt" "/" from=b
}
export {
    final to="out"
}
"#;

fn two_stages() -> Project {
    let p = Project::new();
    p.spec(TWO_STAGES).file("a.txt", "A\n").file("b.txt", "B\n");
    p
}

#[test]
fn second_build_is_fully_cached() {
    let p = two_stages();
    let first = p.build(&[]);
    first.ok();
    assert_eq!(first.ran().len(), 5);
    let second = p.build(&[]);
    second.ok();
    assert!(second.ran().is_empty(), "ran: {:?}", second.ran());
    assert_eq!(second.cached(), 5);
    assert_eq!(p.read("out/a.txt"), "A\n");
    assert_eq!(p.read("out/b.txt"), "B\n");
}

#[test]
fn changing_one_file_reruns_only_its_readers() {
    let p = two_stages();
    p.build(&[]).ok();
    p.file("b.txt", "B2\n");
    let r = p.build(&[]);
    r.ok();
    // Stage b's copy and final's copy from b; a and final's copy from a stay cached.
    assert_eq!(
        r.ran(),
        vec![("b".to_string(), 0), ("final".to_string(), 1)]
    );
    assert_eq!(p.read("out/b.txt"), "B2\n");
    let explain = p.kiln(&["explain"]);
    explain.ok();
    assert!(
        explain.stdout.contains("context file `b.txt` changed"),
        "{}",
        explain.stdout
    );
    assert!(
        explain
            .stdout
            .contains("what it copies from stage `b` changed"),
        "{}",
        explain.stdout
    );
}

#[test]
fn editing_a_comment_keeps_the_cache() {
    let p = two_stages();
    p.build(&[]).ok();
    p.spec(&format!(
        "// a new comment\n{}",
        TWO_STAGES.replace("stage b {", "stage b { // hi")
    ));
    let r = p.build(&[]);
    r.ok();
    assert!(r.ran().is_empty(), "{:?}", r.ran());
}

#[test]
fn target_prunes_and_broken_unneeded_stages_do_not_fail() {
    let p = Project::new();
    p.spec(
        r#"kiln 1
stage broken {
    copy "does-not-exist" "/"
}
stage good {
    write "/x" "1"
}
export {
    broken to="out"
}
"#,
    );
    let r = p.build(&["--target", "good"]);
    r.ok();
    let started: Vec<String> = r
        .events_of("stage_started")
        .iter()
        .map(|e| e["stage"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(started, ["good"]);
    assert!(!p.exists("out"));
}

#[test]
fn failures_stop_dependants_and_independent_branches_finish() {
    let p = Project::new();
    p.spec(
        r#"kiln 1
stage bad1 {
    copy "missing-1" "/"
}
stage bad2 {
    copy "missing-*.c" "/"
}
stage good {
    write "/ok" "1"
}
stage after {
    from bad1
    write "/never" "1"
}
stage all {
    copy "/" "/g/" from=good
    copy "/" "/a/" from=after
    copy "/" "/b/" from=bad2
}
"#,
    );
    let r = p.build(&[]);
    r.code(1);
    assert!(
        r.stderr
            .contains("`missing-1` does not exist in the context"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("`missing-*.c` matched nothing in the context"),
        "{}",
        r.stderr
    );
    let finished: Vec<String> = r
        .events_of("stage_finished")
        .iter()
        .map(|e| e["stage"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(finished, ["good"]);
    let skipped: Vec<String> = r
        .events_of("stage_skipped")
        .iter()
        .map(|e| e["stage"].as_str().unwrap().to_string())
        .collect();
    assert!(
        skipped.contains(&"after".to_string()) && skipped.contains(&"all".to_string()),
        "{skipped:?}"
    );
    let done = &r.events_of("build_finished")[0];
    assert_eq!(done["failures"], 2);
}

#[test]
fn independent_stages_overlap() {
    let p = Project::new();
    let big = "x".repeat(48 << 20);
    p.file("one.bin", &big).file("two.bin", &format!("{big}y"));
    p.spec(
        r#"kiln 1
stage one {
    copy "one.bin" "/"
}
stage two {
    copy "two.bin" "/"
}
stage both {
    copy "/one.bin" "/" from=one
    copy "/two.bin" "/" from=two
}
"#,
    );
    let r = p.build(&["-j", "2"]);
    r.ok();
    let time = |kind: &str, stage: &str| {
        r.events_of(kind)
            .iter()
            .find(|e| e["stage"] == stage)
            .map(|e| e["t_ms"].as_f64().unwrap())
            .unwrap()
    };
    let (s1, f1) = (time("stage_started", "one"), time("stage_finished", "one"));
    let (s2, f2) = (time("stage_started", "two"), time("stage_finished", "two"));
    assert!(s1 < f2 && s2 < f1, "one {s1}..{f1}, two {s2}..{f2}");
    // And `both` starts only when both are done.
    assert!(time("stage_started", "both") >= f1.max(f2));
}

#[test]
fn tar_exports_are_byte_identical_across_folders() {
    let make = || {
        let p = Project::new();
        p.spec(
            r#"kiln 1
stage s {
    workdir "/app"
    copy "src/" "src/"
    write "v" "1" mode="0600"
    symlink "src/main.c" "main"
}
export {
    s to="out.tar" format="tar"
}
"#,
        )
        .file("src/main.c", "int main(){}\n")
        .file("src/lib/util.c", "\n");
        p
    };
    let (a, b) = (make(), make());
    let sa = tempfile::tempdir().unwrap();
    a.build(&["--state-dir", sa.path().to_str().unwrap()]).ok();
    // Different mtimes and modes on the host must not matter, except the x bit.
    std::thread::sleep(std::time::Duration::from_millis(20));
    b.file("src/main.c", "int main(){}\n");
    b.build(&[]).ok();
    let ta = std::fs::read(a.path().join("out.tar")).unwrap();
    let tb = std::fs::read(b.path().join("out.tar")).unwrap();
    assert!(ta == tb, "tar exports differ");
    let mut ar = tar::Archive::new(&ta[..]);
    let names: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "app/",
            "app/main",
            "app/src/",
            "app/src/lib/",
            "app/src/lib/util.c",
            "app/src/main.c",
            "app/v"
        ]
    );
    let mut ar = tar::Archive::new(&ta[..]);
    for e in ar.entries().unwrap() {
        let h = e.unwrap().header().clone();
        assert_eq!(h.mtime().unwrap(), 0);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
    }
}

#[test]
fn source_date_epoch_sets_timestamps() {
    let p = Project::new();
    p.spec("kiln 1\nstage s {\n  write \"/f\" \"x\"\n}\n");
    let out = std::process::Command::new(crate::harness::kiln_bin())
        .args(["build", "--progress", "plain", "-o", "type=tar,dest=o.tar"])
        .current_dir(p.path())
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(out.status.success());
    let bytes = std::fs::read(p.path().join("o.tar")).unwrap();
    let mut ar = tar::Archive::new(&bytes[..]);
    let e = ar.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(e.header().mtime().unwrap(), 1_700_000_000);
}

#[test]
fn no_intermediate_trees_remain() {
    let p = two_stages();
    p.build(&[]).ok();
    let mut found = Vec::new();
    for e in walk(p.path()) {
        let rel = e.strip_prefix(p.path()).unwrap().display().to_string();
        if !rel.starts_with(".kiln") {
            found.push(rel);
        }
    }
    found.sort();
    assert_eq!(
        found,
        [
            "a.txt",
            "b.txt",
            "kiln.kdl",
            "out",
            "out/a.txt",
            "out/b.txt"
        ]
    );
    assert_eq!(
        std::fs::read_dir(p.path().join(".kiln/tmp"))
            .unwrap()
            .count(),
        0
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        out.push(e.path());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

#[test]
fn a_failed_build_keeps_the_previous_export() {
    let p = two_stages();
    p.build(&[]).ok();
    std::fs::remove_file(p.path().join("b.txt")).unwrap();
    p.build(&[]).code(1);
    assert_eq!(p.read("out/b.txt"), "B\n");
    assert_eq!(p.read("out/a.txt"), "A\n");
}

#[test]
fn when_always_exports_even_if_the_build_fails() {
    let p = Project::new();
    p.spec(
        r#"kiln 1
stage report {
    write "/report.txt" "3 tests\n"
}
stage broken {
    copy "nope" "/"
}
export {
    report to="reports" when="always"
    broken to="out"
}
"#,
    );
    let r = p.build(&[]);
    r.code(1);
    assert_eq!(p.read("reports/report.txt"), "3 tests\n");
    assert!(!p.exists("out"));
    assert_eq!(r.events_of("export_skipped").len(), 1);
}

#[test]
fn outputs_and_args_override_the_spec() {
    let p = Project::new();
    p.spec(
        r#"kiln 1
arg V default="1"
stage s {
    write "/v" "${V}"
    write "/w" "${UNSET:-d}${V:+-set}"
}
export {
    s to="from-spec"
}
arg UNSET
"#,
    );
    p.build(&[
        "--build-arg",
        "V=2",
        "-o",
        "custom",
        "-o",
        "type=tar,dest=t.tar",
    ])
    .ok();
    assert_eq!(p.read("custom/v"), "2");
    assert_eq!(p.read("custom/w"), "d-set");
    assert!(p.exists("t.tar"));
    assert!(!p.exists("from-spec"));
}

#[test]
fn copy_rules_modes_and_owners() {
    let p = Project::new();
    p.file("bin/tool", "#!/bin/sh\n")
        .file("conf/a.conf", "a")
        .file("conf/sub/b.conf", "b");
    std::fs::set_permissions(
        p.path().join("bin/tool"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    p.spec(
        r#"kiln 1
stage base {
    write "/etc/passwd" "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"
    write "/etc/group" "root:x:0:\nstaff:x:50:\n"
}
stage s {
    from base
    copy "bin/tool" "/usr/bin/renamed"
    copy "conf" "/etc/app/" chmod="0640" chown="app:staff"
    copy "conf/*.conf" "/flat/"
    mkdir "/data" "/var/log" mode=0o700
    symlink "/usr/bin/renamed" "/usr/bin/link"
    rm "/etc/group"
    rm "/nope" force=#true
}
export {
    s to="out"
}
"#,
    );
    p.build(&[]).ok();
    let mode = |rel: &str| {
        std::fs::symlink_metadata(p.path().join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(p.read("out/usr/bin/renamed"), "#!/bin/sh\n");
    assert_eq!(mode("out/usr/bin/renamed"), 0o755);
    assert_eq!(mode("out/etc/app/a.conf"), 0o640);
    assert_eq!(mode("out/etc/app/sub"), 0o640);
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p.path().join("out/etc/app/sub/b.conf")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1000, 50));
    assert_eq!(p.read("out/flat/a.conf"), "a");
    assert_eq!(mode("out/data"), 0o700);
    assert_eq!(
        std::fs::read_link(p.path().join("out/usr/bin/link"))
            .unwrap()
            .to_str(),
        Some("/usr/bin/renamed")
    );
    assert!(!p.exists("out/etc/group"));
}

#[test]
fn copy_cannot_escape_the_context() {
    let p = Project::new();
    std::os::unix::fs::symlink("/etc", p.path().join("hostetc")).unwrap();
    p.spec("kiln 1\nstage s {\n  copy \"hostetc/passwd\" \"/\"\n}\n");
    let r = p.build(&[]);
    r.code(2);
    assert!(
        r.stderr.contains("points outside the context"),
        "{}",
        r.stderr
    );
    p.spec("kiln 1\nstage s {\n  copy \"../x\" \"/\"\n}\n");
    let r = p.build(&[]);
    r.code(2);
    assert!(
        r.stderr.contains("leads outside the context"),
        "{}",
        r.stderr
    );
    // A leading slash means the context root.
    p.file("f", "x")
        .spec("kiln 1\nstage s {\n  copy \"/f\" \"/g\"\n}\n");
    p.build(&["-o", "out"]).ok();
    assert_eq!(p.read("out/g"), "x");
}

#[test]
fn ignore_files_exclude_context_entries() {
    let p = Project::new();
    p.file("keep.txt", "k")
        .file("skip.log", "s")
        .file("logs/a.log", "a")
        .file(".kilnignore", "*.log\n!keep.log\n");
    p.file("keep.log", "kept");
    p.spec("kiln 1\nstage s {\n  copy \".\" \"/\"\n}\n");
    p.build(&["-o", "out"]).ok();
    assert!(p.exists("out/keep.txt"));
    assert!(p.exists("out/keep.log"));
    assert!(!p.exists("out/skip.log"));
    assert!(!p.exists("out/logs/a.log"));
    assert!(!p.exists("out/.kiln"));
}

#[test]
fn refuses_to_replace_the_project() {
    let p = two_stages();
    let r = p.build(&["-o", "."]);
    r.code(2);
    assert!(r.stderr.contains("refusing to export"), "{}", r.stderr);
    assert!(p.exists("kiln.kdl"));
}

#[test]
fn a_killed_build_leaves_a_usable_store() {
    let p = Project::new();
    for i in 0..8 {
        p.file(&format!("f{i}.bin"), &format!("{i}").repeat(8 << 20));
    }
    let mut spec = String::from("kiln 1\n");
    for i in 0..8 {
        spec.push_str(&format!("stage s{i} {{\n  copy \"f{i}.bin\" \"/\"\n}}\n"));
    }
    spec.push_str("stage all {\n");
    for i in 0..8 {
        spec.push_str(&format!("  copy \"/f{i}.bin\" \"/\" from=s{i}\n"));
    }
    spec.push_str("}\nexport {\n  all to=\"out\"\n}\n");
    p.spec(&spec);
    let mut child = std::process::Command::new(crate::harness::kiln_bin())
        .args(["build", "--progress", "plain", "-j", "2"])
        .current_dir(p.path())
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(60));
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    p.build(&[]).ok();
    for i in 0..8 {
        assert_eq!(
            std::fs::metadata(p.path().join(format!("out/f{i}.bin")))
                .unwrap()
                .len(),
            8 << 20
        );
    }
    let again = p.build(&[]);
    again.ok();
    assert!(again.ran().is_empty());
}

#[test]
fn gc_keeps_what_exports_use() {
    let p = two_stages();
    p.build(&[]).ok();
    p.file("a.txt", "A2\n");
    p.build(&["--target", "a"]).ok();
    // The exported file's blob (the first build's), by its content address.
    let state = p.path().join(".kiln");
    assert!(stored_blob(&state, b"A\n").is_some());
    let r = p.kiln(&["gc", "--max-size", "1"]);
    r.ok();
    assert!(r.stdout.contains("removed"), "{}", r.stdout);
    // Whatever the budget, the tree the export holds is kept, with its blobs...
    assert!(
        stored_blob(&state, b"A\n").is_some_and(|b| b.read() == b"A\n"),
        "gc removed the exported tree"
    );
    let trees = walkdir_files(&p.path().join(".kiln/trees"));
    assert_eq!(trees, 1, "only the exported tree is left");
    // ...while the cache entries went, so the next build runs its steps again.
    let again = p.build(&[]);
    again.ok();
    assert!(!again.ran().is_empty());
    assert_eq!(p.read("out/a.txt"), "A2\n");
    // A plain gc keeps everything that is still reachable.
    let r = p.kiln(&["gc"]);
    r.ok();
    assert!(p.build(&[]).ran().is_empty());
}

#[test]
fn a_damaged_cache_is_rebuilt_not_trusted() {
    let p = two_stages();
    p.build(&[]).ok();
    // Remove every stored tree behind kiln's back.
    for shard in std::fs::read_dir(p.path().join(".kiln/trees"))
        .unwrap()
        .flatten()
    {
        std::fs::remove_dir_all(shard.path()).unwrap();
    }
    std::fs::remove_dir_all(p.path().join("out")).unwrap();
    let r = p.build(&[]);
    r.ok();
    assert_eq!(p.read("out/a.txt"), "A\n");
    assert_eq!(p.read("out/b.txt"), "B\n");
    // And the rebuilt entries are trusted again.
    let again = p.build(&[]);
    again.ok();
    assert!(again.ran().is_empty(), "{:?}", again.ran());
}

#[test]
fn concurrent_builds_share_the_store() {
    let p = two_stages();
    let spawn = || {
        std::process::Command::new(crate::harness::kiln_bin())
            .args(["build", "--progress", "plain", "--target", "final"])
            .current_dir(p.path())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    assert!(a.wait_with_output().unwrap().status.success());
    assert!(b.wait_with_output().unwrap().status.success());
    let r = p.build(&[]);
    r.ok();
    assert!(r.ran().is_empty(), "{:?}", r.ran());
}

#[test]
fn steps_between_stored_trees_are_replayed_when_needed() {
    let p = Project::new();
    p.file("one", "1").file("two", "2").file("three", "3");
    let spec = |last: bool| {
        format!(
            "kiln 1\nstage s {{\n  workdir \"/w\"\n  copy \"one\" \"a\"\n  write \"b\" \"bee\"\n  copy \"two\" \"c\"\n{}}}\n",
            if last { "  copy \"three\" \"d\"\n" } else { "" }
        )
    };
    p.spec(&spec(true));
    p.build(&["-o", "out"]).ok();
    // A later step changes: the steps before it are cached, and their tree
    // (never stored) is rebuilt for it.
    p.file("two", "2!");
    let r = p.build(&["-o", "out"]);
    r.ok();
    assert_eq!(r.ran(), vec![("s".to_string(), 3), ("s".to_string(), 4)]);
    assert_eq!(p.read("out/w/a"), "1");
    assert_eq!(p.read("out/w/b"), "bee");
    assert_eq!(p.read("out/w/c"), "2!");
    assert_eq!(p.read("out/w/d"), "3");
    // The stage now ends at a step whose tree was not stored.
    p.spec(&spec(false));
    let r = p.build(&["-o", "out2"]);
    r.ok();
    assert!(r.ran().is_empty(), "{:?}", r.ran());
    assert_eq!(p.read("out2/w/c"), "2!");
    assert!(!p.exists("out2/w/d"));
    let again = p.build(&["-o", "out3"]);
    again.ok();
    assert!(again.ran().is_empty());
    assert_eq!(p.read("out3/w/a"), "1");
}

#[test]
fn ctrl_c_stops_cleanly_and_the_next_build_goes_on() {
    let p = Project::new();
    for i in 0..6 {
        p.file(&format!("f{i}.bin"), &format!("{i}").repeat(16 << 20));
    }
    let mut spec = String::from("kiln 1\nstage all {\n");
    for i in 0..6 {
        spec.push_str(&format!("  copy \"f{i}.bin\" \"/\"\n"));
    }
    spec.push_str("}\nexport {\n  all to=\"out\"\n}\n");
    p.spec(&spec);
    let child = std::process::Command::new(crate::harness::kiln_bin())
        .args(["build", "--progress", "json", "-j", "1"])
        .current_dir(p.path())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    // Either the build was interrupted (130), or it had already finished.
    assert!(
        code == 130 || code == 0,
        "exit {code}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if code == 130 {
        assert!(!p.exists("out"), "an interrupted build must not export");
    }
    p.build(&[]).ok();
    assert_eq!(
        std::fs::metadata(p.path().join("out/f5.bin"))
            .unwrap()
            .len(),
        16 << 20
    );
}

/// Files younger than two seconds are not trusted by their stat; wait
/// until the project's files are old enough for the memo and stat index.
fn age_files() {
    std::thread::sleep(std::time::Duration::from_millis(2100));
}

fn unchanged(r: &crate::harness::Run) -> bool {
    r.events_of("build_finished")[0]["unchanged"] == true
}

#[test]
fn an_unchanged_build_is_answered_from_the_memo_and_any_change_is_seen() {
    let p = Project::new();
    p.spec(
        r#"kiln 1
arg V default="1"
stage a {
    copy "src/*.txt" "/src/"
    write "/v" "${V}"
}
stage b {
    copy "/" "/" from=a
}
export {
    b to="out"
}
"#,
    )
    .file("src/one.txt", "one")
    .file("src/two.txt", "two");
    p.build(&[]).ok();
    age_files();
    // The first build after the files settle writes the memo...
    let r = p.build(&[]);
    r.ok();
    assert!(!unchanged(&r));
    // ...and the next is answered from it, with the same events and output.
    let r = p.build(&[]);
    r.ok();
    assert!(unchanged(&r));
    assert_eq!(r.cached(), 3);
    assert!(r.ran().is_empty());
    std::fs::remove_dir_all(p.path().join("out")).unwrap();
    let r = p.build(&[]);
    assert!(unchanged(&r));
    assert_eq!(p.read("out/src/one.txt"), "one");

    // Same size, new content: the memo must not hide it.
    p.file("src/one.txt", "ONE");
    let r = p.build(&[]);
    r.ok();
    assert!(!unchanged(&r));
    let ran = r.ran();
    assert_eq!(
        ran,
        [
            ("a".to_string(), 0),
            ("a".to_string(), 1),
            ("b".to_string(), 0)
        ]
    );
    assert_eq!(p.read("out/src/one.txt"), "ONE");

    // A new file that a glob matches.
    p.file("src/three.txt", "three");
    let r = p.build(&[]);
    assert!(!unchanged(&r));
    assert_eq!(p.read("out/src/three.txt"), "three");

    // Another arg value.
    age_files();
    p.build(&[]).ok();
    assert!(unchanged(&p.build(&[])));
    let r = p.build(&["--arg", "V=2"]);
    assert!(!unchanged(&r));
    assert_eq!(p.read("out/v"), "2");

    // A touched file changes no content: not unchanged, but all cached.
    age_files();
    p.build(&[]).ok();
    assert!(unchanged(&p.build(&[])));
    let f = std::fs::File::options()
        .write(true)
        .open(p.path().join("src/two.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now()).unwrap();
    let r = p.build(&[]);
    r.ok();
    assert!(!unchanged(&r));
    assert!(r.ran().is_empty(), "{:?}", r.ran());
}

#[test]
fn a_context_listed_ahead_is_used_only_when_the_build_lists_it_the_same_way() {
    // The memo's context is listed while the spec compiles, with the
    // exclusions of the memo's build; a build that excludes other paths
    // (another export destination) must list it again.
    let p = Project::new();
    p.spec("kiln 1\nstage a {\n    copy \".\" \"/ctx/\"\n}\nexport {\n    a to=\"first\"\n}\n")
        .file("src/one.txt", "one");
    p.build(&[]).ok();
    age_files();
    p.build(&[]).ok();
    let r = p.build(&[]);
    assert!(unchanged(&r));
    // `first/` is excluded from the context while it is an export...
    assert!(!p.exists("first/ctx/first"));
    // ...and part of it when the build exports elsewhere.
    let r = p.build(&["-o", "second"]);
    r.ok();
    assert!(!unchanged(&r));
    assert_eq!(p.read("second/ctx/first/ctx/src/one.txt"), "one");
    assert!(!p.exists("second/ctx/second"));
}

#[test]
fn the_memo_is_not_trusted_when_the_store_lost_the_result() {
    let p = two_stages();
    p.build(&[]).ok();
    age_files();
    p.build(&[]).ok();
    assert!(unchanged(&p.build(&[])));
    for shard in std::fs::read_dir(p.path().join(".kiln/trees"))
        .unwrap()
        .flatten()
    {
        std::fs::remove_dir_all(shard.path()).unwrap();
    }
    let r = p.build(&[]);
    r.ok();
    assert!(!unchanged(&r));
    assert_eq!(p.read("out/a.txt"), "A\n");
}

#[test]
fn when_always_exports_a_failed_stage_as_it_was_before_the_failing_step() {
    let p = Project::new();
    p.spec(
        r#"kiln 1
stage tests {
    write "/report/summary.txt" "2 passed, 1 failed\n"
    write "/report/junit.xml" "<testsuite/>\n"
    copy "missing-artifact" "/"
}
export {
    tests to="report" when="always"
}
"#,
    );
    let r = p.build(&[]);
    r.code(1);
    assert_eq!(p.read("report/report/summary.txt"), "2 passed, 1 failed\n");
    assert_eq!(p.read("report/report/junit.xml"), "<testsuite/>\n");
}

#[test]
fn long_and_unicode_paths_survive_both_export_formats() {
    let p = Project::new();
    let deep = format!(
        "{}/ünïcødé fïlé.txt",
        ["segment-with-a-long-name"; 8].join("/")
    );
    p.file(&format!("src/{deep}"), "deep\n");
    p.spec("kiln 1\nstage s {\n  copy \"src/\" \"/\"\n}\nexport {\n  s to=\"out\"\n  s to=\"out.tar\" format=\"tar\"\n}\n");
    p.build(&[]).ok();
    assert_eq!(p.read(&format!("out/{deep}")), "deep\n");
    let bytes = std::fs::read(p.path().join("out.tar")).unwrap();
    let mut ar = tar::Archive::new(&bytes[..]);
    let names: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.contains(&deep), "{names:?}");
}

/// How many files are below `dir`.
fn walkdir_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            n += walkdir_files(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

#[test]
fn an_always_export_of_a_stage_that_could_not_build_never_shows_the_last_run() {
    let p = Project::new();
    p.spec(
        r#"kiln 1
stage tests {
    write "/r/summary.txt" "ran\n"
    copy "artifact" "/"
}
stage report {
    copy "/r/" "/" from=tests
}
export {
    report to="report" when="always"
}
"#,
    );
    p.file("artifact", "a");
    p.build(&[]).ok();
    assert_eq!(p.read("report/summary.txt"), "ran\n");
    // `tests` fails: `report` cannot be built, and yesterday's report
    // must not pass for today's.
    std::fs::remove_file(p.path().join("artifact")).unwrap();
    let r = p.build(&[]);
    r.code(1);
    assert!(!p.exists("report"), "the previous report is still there");
    let skipped = r.events_of("export_skipped");
    assert_eq!(skipped.len(), 1, "{}", r.stderr);
    assert!(
        skipped[0]["because"]
            .as_str()
            .unwrap()
            .contains("the previous export there was removed"),
        "{}",
        skipped[0]
    );
    // What kiln did not write is not removed.
    std::fs::create_dir(p.path().join("report")).unwrap();
    p.file("report/mine.txt", "mine");
    let r = p.build(&[]);
    assert_ne!(r.code, 0);
    assert_eq!(p.read("report/mine.txt"), "mine");
}
