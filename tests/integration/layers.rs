//! A step costs what it changes: an edit before a command writes the
//! edit, not the base image again, as root (overlay layers) and without
//! root (a private copy brought up to date), and the trees are the ones
//! a fresh build makes.

use crate::harness::Project;
use crate::images_helper::{busybox, sandbox_ready};
use crate::run::kiln_as_nobody;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const EDIT_LOOP: &str = r#"kiln 1
stage tool {
    from image="IMAGE"
    mkdir "/tool"
}
stage s {
    from tool
    workdir "/src"
    copy "a.c" "./"
    run "cat a.c a.c > a.o"
}
export {
    s to="out"
}
"#;

fn project(body: &str) -> Option<Project> {
    if !sandbox_ready() {
        return None;
    }
    let image = busybox()?;
    let p = Project::new();
    p.spec(&body.replace("IMAGE", &image));
    Some(p)
}

/// Every file below `dir`: its path, identity (inode and change time:
/// moved files keep both, written ones do not) and size.
fn files(dir: &Path) -> Vec<(PathBuf, (u64, i64, i64), u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                todo.push(e.path());
            } else if m.is_file() {
                out.push((e.path(), (m.ino(), m.ctime(), m.ctime_nsec()), m.len()));
            }
        }
    }
    out
}

/// The bytes of the files below `state`'s trees on disk (`rootfs`
/// layers, private copies) written since `before`.
fn written_since(state: &Path, before: &BTreeSet<(u64, i64, i64)>) -> u64 {
    files(&state.join("sandbox"))
        .into_iter()
        .filter(|(_, id, _)| !before.contains(id))
        .filter(|(p, _, _)| {
            let s = p.to_string_lossy();
            s.contains("/rootfs/l/") || s.contains("/copies/")
        })
        .map(|(_, _, n)| n)
        .sum()
}

fn snapshot(state: &Path) -> BTreeSet<(u64, i64, i64)> {
    files(&state.join("sandbox"))
        .into_iter()
        .map(|(_, id, _)| id)
        .collect()
}

/// The tree digest of stage `s` a build printed.
fn digest(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("s\t"))
        .map(String::from)
        .unwrap_or_else(|| panic!("no result in {stdout}"))
}

type Kiln<'a> = &'a dyn Fn(&Project, &[&str]) -> crate::harness::Run;

/// Build, then (after `gc --max-size`, when given) edit `a.c` three times:
/// each edit writes the edit, not the image (after a gc that removed the
/// image's tree on disk, the first edit may write it once), and builds
/// the tree a fresh project builds. `gc` is the budget and whether the
/// image's tree on disk must survive it.
fn edit_loop(kiln: Kiln, gc: Option<(&str, bool)>) {
    let Some(p) = project(EDIT_LOOP) else {
        return;
    };
    let fresh = project(EDIT_LOOP).unwrap();
    let build = |p: &Project| kiln(p, &["build", "--progress", "json"]);
    let state = p.path().join(".kiln");
    p.file("a.c", "int main() { return 0; }\n");
    build(&p).ok();
    let image_bytes: u64 = files(&state.join("sandbox"))
        .iter()
        .map(|(_, _, n)| n)
        .sum();
    assert!(
        image_bytes > 500_000,
        "the image was written once: {image_bytes}"
    );
    let mut may_write_image = false;
    if let Some((budget, image_stays)) = gc {
        kiln(&p, &["gc", "--max-size", budget]).ok();
        let left: u64 = files(&state.join("sandbox"))
            .iter()
            .map(|(_, _, n)| n)
            .sum();
        // (Trees builtin steps made go; they are a few bytes here.)
        may_write_image = left + 4096 < image_bytes;
        assert!(
            !image_stays || !may_write_image,
            "gc to {budget} removed trees on disk the newest build used ({left} of {image_bytes} bytes left)"
        );
    }
    for i in 1..=3 {
        let before = snapshot(&state);
        let text = format!("int main() {{ return {i}; }}\n");
        p.file("a.c", &text);
        let r = build(&p);
        r.ok();
        let written = written_since(&state, &before);
        // The edit (a.c), the command's output (a.o) and directories:
        // nothing of the image, but once after a gc that removed it.
        let allowed = if may_write_image {
            image_bytes + 4096
        } else {
            4096
        };
        may_write_image = false;
        assert!(
            written < allowed,
            "edit {i} wrote {written} bytes of trees on disk (the image is {image_bytes})"
        );
        assert_eq!(p.read("out/src/a.o"), text.repeat(2));
        // The same tree as a fresh build of the same files.
        fresh.file("a.c", &text);
        let again = build(&fresh);
        again.ok();
        assert_eq!(digest(&r.stdout), digest(&again.stdout), "edit {i}");
    }
}

fn as_root(p: &Project, args: &[&str]) -> crate::harness::Run {
    p.kiln(args)
}

#[test]
fn an_edit_before_a_command_writes_the_edit_not_the_image() {
    edit_loop(&as_root, None);
}

#[test]
fn without_root_an_edit_before_a_command_writes_the_edit_not_the_image() {
    edit_loop(&kiln_as_nobody, None);
}

#[test]
fn after_gc_to_a_budget_edits_cost_the_edit_again() {
    // A budget the cache fits in keeps the newest build's trees on disk.
    edit_loop(&as_root, Some(("1G", true)));
    // One nothing fits in: the image is written once, then edits are
    // thin again.
    edit_loop(&as_root, Some(("1", false)));
    edit_loop(&kiln_as_nobody, Some(("1", false)));
}

/// The layers a command runs on are checked against their seals while it
/// runs: a command that ran on a layer changed since it was written
/// (edited in place, as damage or a stray tool would) is not believed; it
/// runs again on a tree written afresh, and the build gives what a fresh
/// one does.
#[test]
fn a_command_on_a_layer_changed_on_disk_runs_again_on_a_sound_one() {
    if !rustix::process::geteuid().is_root() {
        return; // layers are root's; without root, copies are checked alike
    }
    let spec = r#"kiln 1
stage s {
    from image="IMAGE"
    copy "a.c" "/a.c"
    run "cat /etc/passwd /a.c > /out.txt"
}
export {
    s to="out"
}
"#;
    let Some(p) = project(spec) else {
        return;
    };
    let fresh = project(spec).unwrap();
    p.file("a.c", "one\n");
    p.kiln(&["build"]).ok();
    // The image's layer: the one holding `etc/passwd`.
    let state = p.path().join(".kiln");
    let passwd = files(&state.join("sandbox"))
        .into_iter()
        .map(|(path, _, _)| path)
        .find(|path| {
            let s = path.to_string_lossy();
            s.contains("/rootfs/l/") && s.ends_with("/etc/passwd")
        })
        .expect("the image's layer holds etc/passwd");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&passwd)
        .unwrap();
    std::io::Write::write_all(&mut f, b"intruder:x:0:0::/:/bin/sh\n").unwrap();
    drop(f);
    // Without the list of layers to check early, the command starts
    // before the check ends (the check is what it waits for at the end).
    for ids in std::fs::read_dir(state.join("sandbox")).unwrap().flatten() {
        let _ = std::fs::remove_dir_all(ids.path().join("rootfs/used"));
    }
    p.file("a.c", "two\n");
    let r = p.kiln(&["build", "--progress", "json"]);
    r.ok();
    assert!(
        r.stderr.contains("changed since it was written"),
        "{}",
        r.stderr
    );
    let out = p.read("out/out.txt");
    assert!(!out.contains("intruder"), "{out}");
    assert!(out.ends_with("two\n"), "{out}");
    fresh.file("a.c", "two\n");
    fresh.kiln(&["build"]).ok();
    assert_eq!(out, fresh.read("out/out.txt"));
    // Not used again by the next build either.
    p.file("a.c", "three\n");
    p.kiln(&["build"]).ok();
    assert!(!p.read("out/out.txt").contains("intruder"));
}

/// An image export stores the trees of builtin steps (for their layers);
/// the next build's keys do not depend on that: nothing runs again.
#[test]
fn a_tagged_build_then_the_same_build_runs_nothing() {
    let Some(p) = project(EDIT_LOOP) else {
        return;
    };
    let build = || {
        p.kiln(&[
            "build",
            "--progress",
            "json",
            "--target",
            "s",
            "-t",
            "edit:1",
        ])
    };
    for i in 1..=2 {
        p.file("a.c", &format!("int main() {{ return {i}; }}\n"));
        let r = build();
        r.ok();
        assert!(r.stderr.contains("\"step_started\""), "{}", r.stderr);
        // The build memo is no help: the next build's cache is the point.
        let _ = std::fs::remove_dir_all(p.path().join(".kiln/records"));
        let again = build();
        again.ok();
        assert!(
            !again.stderr.contains("\"step_started\""),
            "build {i} again ran steps: {}",
            again.stderr
        );
    }
}

/// Every layer file below a state directory's trees on disk.
fn packed_layers(state: &Path) -> usize {
    files(&state.join("sandbox"))
        .iter()
        .filter(|(p, _, _)| p.ends_with("layer.erofs"))
        .count()
}

#[test]
fn a_large_base_is_packed_and_commands_see_the_same_tree() {
    // As root with erofs-utils, the image's tree is written once as one
    // EROFS image (one `stat` checks its seal); commands must see exactly
    // what they see on a tree written out as files.
    if !sandbox_ready() || !crate::images_helper::tool_in_path("mkfs.erofs") {
        return;
    }
    let Some(images) = crate::images_helper::all_images() else {
        return;
    };
    let spec = format!(
        r#"kiln 1
stage s {{
    from image="oci:{}/debian:12"
    run "find / -mindepth 1 -xdev \\( -path /proc -o -path /dev -o -path '/seen*' \\) -prune -o \\( -type d -printf '%p %y %m %U %G %T@\n' \\) -o -printf '%p %y %m %U %G %s %T@ %l\n' | sort > /seen.list && mv /seen.list /seen"
    run "sha256sum /usr/bin/gcc-12 /etc/passwd >> /seen && ls -ln /usr/bin/passwd >> /seen && stat -c %d / /etc /usr/bin/passwd /seen | sort -u | wc -l >> /seen"
}}
export {{
    s to="out"
}}
"#,
        images.display()
    );
    let packed = Project::new();
    packed.spec(&spec);
    packed.build(&[]).ok();
    assert_eq!(packed_layers(&packed.path().join(".kiln")), 1);
    // The same on a kernel that cannot mount packed layers: the tree as
    // files (after one refused mount).
    let Some((_shim_dir, shim)) = erofs_refusing_shim() else {
        return;
    };
    let files_only = Project::new();
    files_only.spec(&spec);
    let r = files_only.kiln_env(
        &["build", "--progress", "json"],
        &[("LD_PRELOAD", shim.to_str().unwrap())],
    );
    r.ok();
    assert!(
        r.stderr.contains("a packed layer could not be mounted"),
        "{}",
        r.stderr
    );
    let seen = packed.read("out/seen");
    assert!(
        seen.lines().count() > 10_000,
        "{}",
        &seen[..500.min(seen.len())]
    );
    assert!(seen.contains("/usr/bin/gcc-12"));
    let other = files_only.read("out/seen");
    let differ = seen.lines().zip(other.lines()).find(|(a, b)| a != b);
    assert_eq!(differ, None);
    assert_eq!(seen.lines().count(), other.lines().count());
    // A second command on the image (another stage) takes the packed layer
    // as it is.
    packed.build(&["--no-cache"]).ok();
    assert_eq!(packed_layers(&packed.path().join(".kiln")), 1);
    assert!(packed.read("out/seen") == seen);
}

/// On a kernel that mounts no EROFS image from a file (played by a shim
/// that refuses every `erofs` mount), a packed layer's command runs again
/// on the tree written out as files, with a notice, and nothing is packed
/// again on this kernel.
#[test]
fn a_kernel_that_cannot_mount_packed_layers_gets_files() {
    if !sandbox_ready() || !crate::images_helper::tool_in_path("mkfs.erofs") {
        return;
    }
    let Some(images) = crate::images_helper::all_images() else {
        return;
    };
    let Some((_shim_dir, shim)) = erofs_refusing_shim() else {
        return;
    };
    let p = Project::new();
    p.spec(&format!(
        "kiln 1\nstage s {{\n    from image=\"oci:{}/debian:12\"\n    run \"ls -l /usr/bin/passwd | cut -c1-10 > /seen && echo ok >> /seen\"\n}}\nexport {{\n    s to=\"out\"\n}}\n",
        images.display()
    ));
    p.build(&[]).ok();
    let state = p.path().join(".kiln");
    assert_eq!(packed_layers(&state), 1);
    let r = p.kiln_env(
        &["build", "--progress", "json", "--no-cache"],
        &[("LD_PRELOAD", shim.to_str().unwrap())],
    );
    r.ok();
    assert!(
        r.stderr.contains("a packed layer could not be mounted"),
        "{}",
        r.stderr
    );
    assert_eq!(p.read("out/seen"), "-rwsr-xr-x\nok\n");
    // Once said, this kernel gets files: no mount is tried again.
    let again = p.kiln_env(
        &["build", "--progress", "json", "--no-cache"],
        &[("LD_PRELOAD", shim.to_str().unwrap())],
    );
    again.ok();
    assert!(
        !again.stderr.contains("could not be mounted"),
        "{}",
        again.stderr
    );
    assert_eq!(p.read("out/seen"), "-rwsr-xr-x\nok\n");
}

/// A library that, preloaded, refuses every `erofs` mount as a kernel
/// without file-backed EROFS does (ENOTBLK); `None` without a C compiler.
fn erofs_refusing_shim() -> Option<(tempfile::TempDir, PathBuf)> {
    let shim_dir = tempfile::tempdir().unwrap();
    let source = shim_dir.path().join("shim.c");
    std::fs::write(
        &source,
        r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <string.h>
static int (*real)(const char *, const char *, const char *, unsigned long, const void *);
__attribute__((constructor)) static void init(void) { real = dlsym(RTLD_NEXT, "mount"); }
int mount(const char *s, const char *t, const char *type, unsigned long f, const void *d) {
    if (type && strcmp(type, "erofs") == 0) { errno = ENOTBLK; return -1; }
    return real(s, t, type, f, d);
}
"#,
    )
    .unwrap();
    let shim = shim_dir.path().join("shim.so");
    // Its temporary files in the shim's directory, not the host's /tmp.
    let built = std::process::Command::new("cc")
        .env("TMPDIR", shim_dir.path())
        .args(["-shared", "-fPIC", "-o"])
        .arg(&shim)
        .arg(&source)
        .arg("-ldl")
        .status()
        .is_ok_and(|s| s.success());
    if !built {
        eprintln!("skipping: no C compiler for the shim");
        return None;
    }
    Some((shim_dir, shim))
}
