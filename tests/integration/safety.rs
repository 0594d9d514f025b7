//! Data safety: what an attack on kiln found, each kept from coming back.
//! kiln must never destroy the user's files, never export a wrong byte,
//! never read outside what the user named, and stay within bounds on
//! hostile input. (The slow rounds — kills, concurrency, every kind of
//! damage, many times over — are in `tests/reliability/`.)

use crate::harness::{Project, StoredBlob, kiln_bin, stored_blob};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const SPEC: &str = r#"kiln 1
context ctx path="ctx"
stage s {
    copy "src/" "/x/" context=ctx
    write "/x/same" "hi\n"
}
export {
    s to="dist/a"
    s to="dist/b.tar" format="tar"
}
"#;

fn project() -> Project {
    let p = Project::new();
    p.spec(SPEC)
        .file("ctx/src/a", "hi\n")
        .file("ctx/src/b", "other\n");
    p
}

/// Every file below `dir` with a digest of its content, for before/after
/// comparisons (the parse cache, which any build may add to, left out).
fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.ends_with(".kiln/parse") {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                let digest = blake3::hash(&std::fs::read(&p).unwrap())
                    .to_hex()
                    .to_string();
                out.push((p.clone(), digest));
            }
        }
    }
    out.sort();
    out
}

fn stored(p: &Project, content: &[u8]) -> StoredBlob {
    stored_blob(&p.path().join(".kiln"), content).expect("the blob is stored")
}

/// Change bytes of a file behind kiln's back, keeping its mode and mtime.
fn tamper(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let meta = std::fs::metadata(path).unwrap();
    let mtime = meta.modified().unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, &bytes).unwrap();
    std::fs::set_permissions(path, meta.permissions()).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

#[test]
fn destinations_that_would_destroy_the_project_are_refused() {
    let p = project();
    p.build(&[]).ok();
    let before = snapshot(p.path());
    let name = p.path().file_name().unwrap().to_str().unwrap().to_string();
    for dest in [
        "nx/../ctx".to_string(),
        format!("nx/../../{name}"),
        "nx/../../..".to_string(),
        ".kiln".to_string(),
        ".kiln/blobs".to_string(),
        ".kiln/actions.log".to_string(),
        ".kiln/lock".to_string(),
        "kiln.kdl".to_string(),
        "ctx/src".to_string(),
        "ctx/src/a".to_string(),
        "ctx".to_string(),
        ".".to_string(),
    ] {
        for o in [dest.clone(), format!("type=tar,dest={dest}")] {
            let r = p.build(&["-o", &o]);
            r.code(2);
            assert!(r.stderr.contains("refusing to export"), "{o}: {}", r.stderr);
        }
    }
    // The same through the spec's own export block, with its location.
    p.spec(&SPEC.replace("to=\"dist/a\"", "to=\"nx/../ctx\""));
    let r = p.build(&[]);
    r.code(2);
    assert!(r.stderr.contains("kiln.kdl:"), "{}", r.stderr);
    p.spec(SPEC);
    assert_eq!(snapshot(p.path()), before, "a refused export changed files");
}

#[test]
fn exported_files_share_no_bytes_and_edits_are_undone() {
    let p = project();
    p.spec(&SPEC.replace("s to=\"dist/b.tar\" format=\"tar\"", "s to=\"dist/b\""));
    p.build(&[]).ok();
    let a = p.path().join("dist/a/x");
    for f in ["a", "same", "b"] {
        assert_eq!(std::fs::metadata(a.join(f)).unwrap().nlink(), 1, "{f}");
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(a.join("a"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"edited\n").unwrap();
    drop(f);
    assert_eq!(p.read("dist/a/x/same"), "hi\n");
    assert_eq!(p.read("dist/b/x/a"), "hi\n");
    assert_eq!(p.read("dist/b/x/same"), "hi\n");
    let b_inode = std::fs::metadata(p.path().join("dist/b/x/a"))
        .unwrap()
        .ino();
    let r = p.build(&[]);
    r.ok();
    // The edited export is written again; the untouched one is left alone.
    assert_eq!(p.read("dist/a/x/a"), "hi\n");
    assert_eq!(
        std::fs::metadata(p.path().join("dist/b/x/a"))
            .unwrap()
            .ino(),
        b_inode
    );
    let mut unchanged: Vec<(String, bool)> = r
        .events_of("export_written")
        .iter()
        .map(|e| {
            (
                e["dest"].as_str().unwrap().to_string(),
                e["unchanged"].as_bool().unwrap(),
            )
        })
        .collect();
    unchanged.sort();
    assert_eq!(
        unchanged,
        vec![
            ("./dist/a".to_string(), false),
            ("./dist/b".to_string(), true)
        ]
    );
    // What the store holds was never changed.
    assert_eq!(stored(&p, b"hi\n").read(), b"hi\n");
}

#[test]
fn a_no_op_build_writes_no_export() {
    let p = project();
    p.build(&[]).ok();
    let stat = |rel: &str| {
        let m = std::fs::symlink_metadata(p.path().join(rel)).unwrap();
        (m.ino(), m.ctime(), m.ctime_nsec())
    };
    let before = (stat("dist/a/x/a"), stat("dist/b.tar"));
    let r = p.build(&[]);
    r.ok();
    assert_eq!((stat("dist/a/x/a"), stat("dist/b.tar")), before);
    assert!(
        r.events_of("export_written")
            .iter()
            .all(|e| e["unchanged"] == true)
    );
    // A file added inside a dir export is noticed: the export is rewritten.
    p.file("dist/a/x/intruder", "x");
    p.build(&[]).ok();
    assert!(!p.exists("dist/a/x/intruder"));
}

#[test]
fn an_export_replaced_by_a_symlink_to_a_copy_is_not_taken_as_intact() {
    let p = project();
    p.build(&[]).ok();
    // The same files, moved aside and linked back: every stamp below the
    // link would still hold if the link were followed.
    std::fs::rename(p.path().join("dist/a"), p.path().join("moved")).unwrap();
    std::os::unix::fs::symlink("../moved", p.path().join("dist/a")).unwrap();
    let r = p.build(&[]);
    assert!(
        r.events_of("export_written")
            .iter()
            .all(|e| e["dest"] != "./dist/a" || e["unchanged"] == false),
        "{}",
        r.stderr
    );
    // Whatever kiln did with the link, what it pointed to is untouched.
    assert_eq!(p.read("moved/x/a"), "hi\n");
}

/// Mount a small tmpfs at `dir` (root only); `None` where that cannot be done.
fn small_disk(dir: &Path) -> Option<SmallDisk> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return None;
    }
    std::fs::create_dir_all(dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here");
        return None;
    }
    Some(SmallDisk(dir.to_path_buf()))
}

struct SmallDisk(PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_failing_export_keeps_every_other_export_as_it_was() {
    let p = project();
    p.build(&[]).ok();
    let tar_before = std::fs::read(p.path().join("dist/b.tar")).unwrap();
    let Some(_disk) = small_disk(&p.path().join("small")) else {
        return;
    };
    // A third export that cannot be written: its disk is too small.
    p.spec(&SPEC.replace("export {", "export {\n    s to=\"small/out\""));
    p.file("ctx/src/a", &"new\n".repeat(1 << 19));
    let r = p.build(&[]);
    r.code(3);
    assert!(r.stderr.contains("disk is full"), "{}", r.stderr);
    assert_eq!(
        p.read("dist/a/x/a"),
        "hi\n",
        "a failed build changed an export"
    );
    assert_eq!(
        std::fs::read(p.path().join("dist/b.tar")).unwrap(),
        tar_before
    );
    assert!(r.stderr.contains("another export failed"), "{}", r.stderr);
    let left: Vec<_> = std::fs::read_dir(p.path().join("dist"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 2, "staged exports were left: {left:?}");
}

#[test]
fn leftovers_of_a_killed_build_are_swept_by_the_next() {
    let p = project();
    p.build(&[]).ok();
    let token = "999999-deadbeef";
    let owners = p.path().join(".kiln/owners");
    std::fs::write(owners.join(token), "").unwrap();
    let tmp_export = p.path().join(format!("dist/.a.kiln-tmp-{token}"));
    std::fs::create_dir_all(tmp_export.join("x")).unwrap();
    std::fs::write(tmp_export.join("x/big"), vec![0u8; 100_000]).unwrap();
    // Read-only, as a half-written dir export can be.
    std::fs::set_permissions(tmp_export.join("x"), std::fs::Permissions::from_mode(0o555)).unwrap();
    let precious = p.path().join("precious");
    std::fs::write(&precious, "mine").unwrap();
    let mut list = tmp_export.as_os_str().as_bytes().to_vec();
    list.push(b'\n');
    list.extend_from_slice(precious.as_os_str().as_bytes());
    list.push(b'\n');
    std::fs::write(owners.join(format!("{token}.exports")), list).unwrap();
    let tmp_file = p.path().join(format!(".kiln/tmp/{token}-0-blob"));
    std::fs::write(&tmp_file, "half a blob").unwrap();

    p.build(&[]).ok();
    assert!(!tmp_export.exists(), "a temp export was left behind");
    assert!(!tmp_file.exists(), "a temp file was left behind");
    assert!(
        precious.exists(),
        "a listed path that is no temp export was removed"
    );
    assert!(!owners.join(token).exists());
    // A clean exit leaves no owner behind either.
    assert_eq!(std::fs::read_dir(&owners).unwrap().count(), 0);
}

#[test]
fn a_tampered_parse_cache_is_not_trusted() {
    let p = Project::new();
    p.spec(
        "kiln 1\narg X default=\"1\"\nstage s {\n    write \"/out\" \"good ${X}\"\n}\nexport {\n    s to=\"dist\"\n}\n",
    );
    p.build(&[]).ok();
    let parse = p.path().join(".kiln/parse");
    let mut n = 0;
    for e in std::fs::read_dir(&parse).unwrap().flatten() {
        let bytes = std::fs::read(e.path()).unwrap();
        let at = bytes
            .windows(4)
            .position(|w| w == b"good")
            .expect("cached text");
        let mut evil = bytes.clone();
        evil[at..at + 4].copy_from_slice(b"evil");
        std::fs::write(e.path(), evil).unwrap();
        n += 1;
    }
    assert_eq!(n, 1);
    p.build(&["--arg", "X=2"]).ok();
    assert_eq!(p.read("dist/out"), "good 2");
    p.kiln(&["gc"]).ok();
    p.build(&[]).ok();
    assert_eq!(p.read("dist/out"), "good 1");
}

#[test]
fn bit_rot_in_a_blob_is_repaired_not_exported() {
    for no_cache in [false, true] {
        let p = project();
        p.build(&[]).ok();
        let blob = stored(&p, b"hi\n");
        tamper(&blob.path, |b| b[blob.offset as usize] ^= 1);
        std::fs::remove_dir_all(p.path().join("dist")).unwrap();
        let r = if no_cache {
            p.build(&["--no-cache"])
        } else {
            p.build(&[])
        };
        r.ok();
        assert_eq!(p.read("dist/a/x/a"), "hi\n");
        assert_eq!(p.read("dist/a/x/same"), "hi\n");
        assert_eq!(stored(&p, b"hi\n").read(), b"hi\n");
        if !no_cache {
            assert!(r.stderr.contains("damaged"), "{}", r.stderr);
            assert!(r.stderr.contains("quarantine"), "{}", r.stderr);
        }
        // And the next build is quiet again.
        let again = p.build(&[]);
        again.ok();
        assert!(!again.stderr.contains("damaged"), "{}", again.stderr);
    }
}

#[test]
fn a_missing_blob_is_written_again() {
    let p = project();
    p.build(&[]).ok();
    // Small blobs share a pack: removing it loses both.
    for content in [&b"other\n"[..], b"hi\n"] {
        if let Some(b) = stored_blob(&p.path().join(".kiln"), content) {
            std::fs::remove_file(b.path).unwrap();
        }
    }
    assert!(stored_blob(&p.path().join(".kiln"), b"hi\n").is_none());
    std::fs::remove_dir_all(p.path().join("dist")).unwrap();
    p.build(&[]).ok();
    assert_eq!(p.read("dist/a/x/b"), "other\n");
    assert_eq!(p.read("dist/a/x/a"), "hi\n");
}

#[test]
fn a_damaged_stat_index_is_not_trusted() {
    let p = project();
    // Files younger than two seconds are not indexed.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    p.build(&[]).ok();
    let index_dir = p.path().join(".kiln/index");
    let index = std::fs::read_dir(&index_dir)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    // Swap the digests of `a` and `b`.
    let (ha, hb) = (blake3::hash(b"hi\n"), blake3::hash(b"other\n"));
    tamper(&index, |bytes| {
        let pa = bytes.windows(32).position(|w| w == ha.as_bytes()).unwrap();
        let pb = bytes.windows(32).position(|w| w == hb.as_bytes()).unwrap();
        bytes[pa..pa + 32].copy_from_slice(hb.as_bytes());
        bytes[pb..pb + 32].copy_from_slice(ha.as_bytes());
    });
    // Make the copy run again (a new step before it), reading the index.
    p.spec(&SPEC.replace("stage s {", "stage s {\n    write \"/first\" \"1\""));
    p.build(&[]).ok();
    assert_eq!(p.read("dist/a/x/a"), "hi\n");
    assert_eq!(p.read("dist/a/x/b"), "other\n");
    // One damaged digest does not fail every build either.
    tamper(&index, |bytes| {
        let n = bytes.len();
        bytes[n - 5] ^= 0x40;
    });
    p.spec(SPEC);
    p.build(&["--no-cache"]).ok();
    p.build(&[]).ok();
    assert_eq!(p.read("dist/a/x/b"), "other\n");
}

#[test]
fn concurrent_builds_on_an_empty_store_export_the_same_directory() {
    for round in 0..4 {
        let p = project();
        let spawn = || {
            Command::new(kiln_bin())
                .args(["build", "--progress", "plain"])
                .current_dir(p.path())
                .env_remove("KILN_STATE_DIR")
                .output()
                .unwrap()
        };
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(spawn);
            let b = s.spawn(spawn);
            (a.join().unwrap(), b.join().unwrap())
        });
        for o in [a, b] {
            assert!(
                o.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        assert_eq!(p.read("dist/a/x/a"), "hi\n");
        let leftovers: Vec<_> = std::fs::read_dir(p.path().join("dist"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("kiln-tmp"))
            .collect();
        assert!(leftovers.is_empty(), "round {round}: {leftovers:?}");
    }
}

#[test]
fn symlink_targets_that_are_not_utf8_are_refused() {
    let p = project();
    let target = std::ffi::OsStr::from_bytes(b"caf\xe9");
    std::os::unix::fs::symlink(target, p.path().join("ctx/src/link")).unwrap();
    let r = p.build(&[]);
    r.code(2);
    assert!(r.stderr.contains("not UTF-8"), "{}", r.stderr);
    // Excluded, it is no problem; nor is a name that is not UTF-8.
    p.file("ctx/.kilnignore", "link\n*.bin\n");
    std::fs::write(
        p.path()
            .join("ctx/src")
            .join(std::ffi::OsStr::from_bytes(b"\xff.bin")),
        "x",
    )
    .unwrap();
    p.build(&[]).ok();
}

/// Run kiln with a time limit: a hang is a failure, not a stuck test.
fn kiln_within(p: &Project, args: &[&str], env: &[(&str, &str)]) -> crate::harness::Run {
    let mut cmd = Command::new("timeout");
    cmd.arg("60").arg(kiln_bin()).args(args);
    cmd.current_dir(p.path())
        .env_remove("KILN_STATE_DIR")
        .env("NO_COLOR", "1")
        .env("COLUMNS", "80");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert_ne!(out.status.code(), Some(124), "kiln hung: {args:?}");
    out.into()
}

#[test]
fn includes_read_only_spec_files_inside_the_project() {
    let p = Project::new();
    let secret = "kiln-test-secret-7f3a9";
    for target in ["/proc/self/environ", "/dev/zero", "/etc/passwd"] {
        p.spec(&format!("kiln 1\ninclude \"{target}\"\nstage s {{\n}}\n"));
        let r = kiln_within(&p, &["check"], &[("KILN_TEST_SECRET", secret)]);
        r.code(2);
        assert!(r.stderr.contains("outside the project"), "{}", r.stderr);
        assert!(!r.stderr.contains(secret), "{}", r.stderr);
        assert!(!r.stderr.contains("root:"), "{}", r.stderr);
    }
    // Inside the project, a FIFO or a device is refused without waiting.
    let fifo = p.path().join("pipe.kdl");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    p.spec("kiln 1\ninclude \"pipe.kdl\"\nstage s {\n}\n");
    let r = kiln_within(&p, &["check"], &[]);
    r.code(2);
    assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
    // Named explicitly, a wider project is fine.
    p.file(
        "../shared-for-kiln-test.kdl",
        "arg FROM_SHARED default=\"1\"\n",
    );
    p.spec("kiln 1\ninclude \"../shared-for-kiln-test.kdl\"\nstage s {\n}\n");
    kiln_within(&p, &["check"], &[]).code(2);
    let parent = p.path().parent().unwrap().to_str().unwrap().to_string();
    kiln_within(&p, &["check", "--project-root", &parent], &[]).ok();
    let _ = std::fs::remove_file(p.path().join("../shared-for-kiln-test.kdl"));
    // A spec named on the command line must be a regular file too.
    let r = kiln_within(&p, &["check", "-f", "/dev/zero"], &[]);
    r.code(2);
}

#[test]
fn ignore_files_are_read_as_context_files() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "[TOPSECRET\n").unwrap();
    let p = project();
    std::os::unix::fs::symlink(
        outside.path().join("secret"),
        p.path().join("ctx/.dockerignore"),
    )
    .unwrap();
    let r = kiln_within(&p, &["build"], &[]);
    r.code(2);
    assert!(r.stderr.contains("outside the context"), "{}", r.stderr);
    assert!(!r.stderr.contains("TOPSECRET"), "{}", r.stderr);
    std::fs::remove_file(p.path().join("ctx/.dockerignore")).unwrap();
    // A FIFO is refused, not waited on.
    assert!(
        Command::new("mkfifo")
            .arg(p.path().join("ctx/.kilnignore"))
            .status()
            .unwrap()
            .success()
    );
    let r = kiln_within(&p, &["build"], &[]);
    r.code(2);
    assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
    std::fs::remove_file(p.path().join("ctx/.kilnignore")).unwrap();
    // A symlink inside the context is followed, as for any context file.
    p.file("ctx/rules", "src/b\n");
    std::os::unix::fs::symlink("rules", p.path().join("ctx/.kilnignore")).unwrap();
    kiln_within(&p, &["build"], &[]).ok();
    assert!(!p.exists("dist/a/x/b"));
}

#[test]
fn an_archive_bomb_is_stopped_with_a_located_error() {
    let p = Project::new();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(8 << 20);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(
        &mut h,
        "zeros",
        std::io::Read::take(std::io::repeat(0), 8 << 20),
    )
    .unwrap();
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    std::fs::write(p.path().join("bomb.tar.gz"), gz.finish().unwrap()).unwrap();
    p.spec("kiln 1\nstage s {\n    copy \"bomb.tar.gz\" \"/x/\" unpack=#true\n}\nexport {\n    s to=\"dist\"\n}\n");
    let r = p.build(&["--max-unpack-size", "1MiB"]);
    r.code(1);
    assert!(r.stderr.contains("archive bomb"), "{}", r.stderr);
    assert!(r.stderr.contains("kiln.kdl:3"), "{}", r.stderr);
    p.build(&[]).ok();
    assert_eq!(
        std::fs::metadata(p.path().join("dist/x/zeros"))
            .unwrap()
            .len(),
        8 << 20
    );
}

#[test]
fn doubling_args_and_deep_nesting_are_located_errors() {
    let p = Project::new();
    let mut df = String::from("ARG A0=xxxxxxxxxxxxxxxx\n");
    for i in 1..40 {
        df.push_str(&format!("ARG A{i}=${{A{}}}${{A{}}}\n", i - 1, i - 1));
    }
    df.push_str("FROM scratch\nARG A39\nLABEL x=$A39\n");
    p.file("Dockerfile", &df);
    for args in [
        vec!["check", "-f", "Dockerfile"],
        vec!["import", "Dockerfile"],
    ] {
        let r = kiln_within(&p, &args, &[]);
        r.code(2);
        assert!(r.stderr.contains("expand to more than"), "{}", r.stderr);
        assert!(r.stderr.contains("Dockerfile:"), "{}", r.stderr);
    }
    let deep = format!(
        "kiln 1\nstage s {}{}\n",
        "{ x ".repeat(1500),
        "}".repeat(1500)
    );
    p.spec(&deep);
    let r = kiln_within(&p, &["check"], &[]);
    r.code(2);
    assert!(r.stderr.contains("nest more than"), "{}", r.stderr);
    assert!(r.stderr.contains("kiln.kdl:2:"), "{}", r.stderr);
}

#[test]
fn jobs_are_capped() {
    let p = project();
    let r = p.build(&["-j", "5000"]);
    r.ok();
    assert!(r.stderr.contains("at most 256"), "{}", r.stderr);
}

#[test]
fn a_full_disk_is_named_as_such() {
    let p = project();
    let Some(_disk) = small_disk(&p.path().join("small")) else {
        return;
    };
    p.file("ctx/src/big", &"x".repeat(3 << 20));
    let r = p.build(&["--state-dir", "small/state"]);
    r.code(3);
    assert!(r.stderr.contains("disk is full"), "{}", r.stderr);
    assert!(r.stderr.contains("small/state"), "{}", r.stderr);
    assert!(!r.stderr.contains("corrupt"), "{}", r.stderr);
}

#[test]
fn small_command_line_mistakes_say_what_is_wrong() {
    let p = project();
    let r = p.build(&["-o", ""]);
    r.code(2);
    assert!(r.stderr.contains("empty destination"), "{}", r.stderr);
    let r = p.build(&["-o", "type=tar,dest=x,dest=y"]);
    r.code(2);
    assert!(r.stderr.contains("twice"), "{}", r.stderr);
    let r = p.kiln(&["hash-context", "kiln.kdl"]);
    r.code(2);
    assert!(r.stderr.contains("not a directory"), "{}", r.stderr);
}

#[test]
fn two_exports_cannot_share_a_destination() {
    let p = project();
    p.spec(&SPEC.replace("to=\"dist/b.tar\"", "to=\"dist/x/../a\""));
    let r = p.build(&[]);
    r.code(2);
    assert!(r.stderr.contains("two exports write to"), "{}", r.stderr);
}
