//! Right outputs whatever the cache held and however a Dockerfile is
//! written: the default target of a Dockerfile that copies from an image,
//! `SOURCE_DATE_EPOCH` in `run` steps, relative and absent mount targets,
//! bases with device nodes, and zstd archives.

use crate::harness::Project;
use crate::images_helper::{all_images, busybox, sandbox_ready};

#[test]
fn copy_from_an_image_does_not_change_the_default_target() {
    if !sandbox_ready() {
        return;
    }
    let Some(image) = busybox() else { return };
    let p = Project::new();
    p.file(
        "Dockerfile",
        &format!(
            "FROM scratch AS first\nCOPY a.txt /a.txt\n\nFROM scratch\nCOPY --from={image} /bin/busybox /bin/\nCOPY a.txt /last.txt\n"
        ),
    )
    .file("a.txt", "a\n");
    let r = p.kiln(&[
        "build",
        "-f",
        "Dockerfile",
        ".",
        "-o",
        "out",
        "-t",
        "last:1",
        "--progress",
        "json",
    ]);
    r.ok();
    // The last stage, not the image's: it has both its files, and only them.
    assert_eq!(p.read("out/last.txt"), "a\n");
    assert!(p.exists("out/bin/busybox"));
    assert!(!p.exists("out/etc"), "the image itself was exported");
    let tagged = r.events_of("image_tagged");
    assert_eq!(tagged.len(), 1, "{}", r.stderr);
    // Its import builds the same stage, through `-o` too.
    p.kiln(&["import", "Dockerfile", "-o", "imported.kdl"]).ok();
    p.kiln(&["build", "-f", "imported.kdl", "-o", "out2"]).ok();
    assert_eq!(p.read("out2/last.txt"), "a\n");
    assert!(!p.exists("out2/etc"), "the import exported the image");
    // The graph lists the image's stage first, the default target last.
    let g = p.kiln(&["graph", "-f", "Dockerfile"]);
    g.ok();
    let last = g.stdout.lines().rfind(|l| !l.starts_with(' ')).unwrap();
    assert!(last.starts_with("stage-1"), "{}", g.stdout);
}

#[test]
fn source_date_epoch_is_keyed_and_seen_by_run_steps() {
    if !sandbox_ready() {
        return;
    }
    let Some(image) = busybox() else { return };
    let p = Project::new();
    p.spec(&format!(
        "kiln 1\nstage s {{\n    from image=\"{image}\"\n    run \"stat -c %Y /bin/sh > /mtime; echo \\\"[$SOURCE_DATE_EPOCH]\\\" > /env\"\n}}\nexport {{\n    s to=\"out\"\n}}\n"
    ));
    let build = |epoch: Option<&str>| {
        let mut c = std::process::Command::new(crate::harness::kiln_bin());
        c.args(["build", "--progress", "json"])
            .current_dir(p.path())
            .env_remove("KILN_STATE_DIR");
        match epoch {
            Some(e) => c.env("SOURCE_DATE_EPOCH", e),
            None => c.env_remove("SOURCE_DATE_EPOCH"),
        };
        crate::harness::Run::from(c.output().unwrap())
    };
    build(None).ok();
    assert_eq!(p.read("out/mtime"), "0\n");
    assert_eq!(p.read("out/env"), "[]\n");
    // A changed epoch runs the step again: the cache's answer is the one
    // a fresh state directory gives.
    let r = build(Some("1700000000"));
    r.ok();
    assert_eq!(
        r.ran().len(),
        1,
        "the step came from the cache: {:?}",
        r.ran()
    );
    assert_eq!(p.read("out/mtime"), "1700000000\n");
    assert_eq!(p.read("out/env"), "[1700000000]\n");
    let fresh = Project::new();
    fresh.spec(&std::fs::read_to_string(p.path().join("kiln.kdl")).unwrap());
    let mut c = std::process::Command::new(crate::harness::kiln_bin());
    c.args(["build"])
        .current_dir(fresh.path())
        .env_remove("KILN_STATE_DIR")
        .env("SOURCE_DATE_EPOCH", "1700000000");
    assert!(c.output().unwrap().status.success());
    assert_eq!(fresh.read("out/mtime"), p.read("out/mtime"));
    assert_eq!(fresh.read("out/env"), p.read("out/env"));
}

#[test]
fn relative_and_absent_mount_targets_are_below_the_working_directory() {
    if !sandbox_ready() {
        return;
    }
    let Some(image) = busybox() else { return };
    let p = Project::new();
    p.file("src/main.c", "int main;\n").file(
        "Dockerfile",
        &format!(
            r#"FROM {image} AS tools
RUN mkdir -p /opt/kit && echo kit > /opt/kit/version

FROM {image}
WORKDIR /work
RUN --mount=target=. cat src/main.c > /seen-dot
RUN --mount=type=bind,target=github.com/x,source=src cat github.com/x/main.c > /seen-rel
RUN --mount=from=tools,source=/opt/kit cat version > /seen-from
RUN --mount=type=cache,target=.cache echo cached > .cache/c && cat .cache/c > /seen-cache
RUN ls -A /work > /left
WORKDIR /other
RUN --mount=type=cache,target=.cache ls -A .cache > /other-cache
"#
        ),
    );
    p.kiln(&["import", "Dockerfile", "-o", "imported.kdl"]).ok();
    let r = p.kiln(&["build", "-f", "Dockerfile", ".", "-o", "out"]);
    r.ok();
    // The import, built, makes the same tree (KDL `mount` targets follow
    // the same rule).
    p.kiln(&["build", "-f", "imported.kdl", "-o", "out-imported"])
        .ok();
    for f in [
        "seen-dot",
        "seen-rel",
        "seen-from",
        "seen-cache",
        "left",
        "other-cache",
    ] {
        assert_eq!(
            p.read(&format!("out-imported/{f}")),
            p.read(&format!("out/{f}")),
            "{f}"
        );
    }
    // BuildKit's rule: joined to the working directory; the mount points
    // it made there are not left in the tree.
    assert_eq!(p.read("out/seen-dot"), "int main;\n");
    assert_eq!(p.read("out/seen-rel"), "int main;\n");
    assert_eq!(p.read("out/seen-from"), "kit\n");
    assert_eq!(p.read("out/seen-cache"), "cached\n");
    assert_eq!(p.read("out/left"), "");
    // Without an id, a cache is its target's: another working directory
    // has another cache (BuildKit's rule).
    assert_eq!(p.read("out/other-cache"), "");
    // A target that is the root itself is refused, located.
    p.file(
        "Dockerfile.root",
        &format!("FROM {image}\nRUN --mount=target=/ true\n"),
    );
    let r = p.kiln(&["build", "-f", "Dockerfile.root", "."]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("is the root"), "{}", r.stderr);
    assert!(r.stderr.contains("Dockerfile.root:2"), "{}", r.stderr);
}

#[test]
fn a_base_with_device_nodes_builds_runs_and_keeps_them_in_tars() {
    if !sandbox_ready() {
        return;
    }
    let Some(images) = all_images() else { return };
    let p = Project::new();
    p.spec(&format!(
        r#"kiln 1
stage s {{
    from image="oci:{}/debian-devices:12"
    run "echo ran > /ran"
}}
export {{
    s to="out.tar" format="tar"
    s to="out"
}}
"#,
        images.display()
    ));
    p.build(&[]).ok();
    assert_eq!(p.read("out/ran"), "ran\n");
    // The tar keeps the image's devices; the directory leaves them out.
    let listing = std::process::Command::new("tar")
        .args(["tvf", "out.tar", "dev/console", "dev/null"])
        .current_dir(p.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        text.contains("crw-rw-rw- 0/0") && text.contains("5,1"),
        "{text}"
    );
    assert!(!p.exists("out/dev/console"));
    assert!(p.path().join("out/dev").is_dir());
}

#[test]
fn add_unpacks_zstd_archives() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "inside.txt", &b"hi\n"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    let p = Project::new();
    std::fs::write(p.path().join("a.tar.zst"), zst).unwrap();
    p.file("Dockerfile", "FROM scratch\nADD a.tar.zst /x/\n");
    p.kiln(&["build", "-f", "Dockerfile", ".", "-o", "out"])
        .ok();
    assert_eq!(p.read("out/x/inside.txt"), "hi\n");
}

#[test]
fn a_tar_of_many_files_holds_each_one_in_order_with_its_bytes() {
    // More entries than one read-ahead batch, files read ahead and one
    // streamed (larger than read ahead takes), a symlink among them.
    let p = Project::new();
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..1300 {
        let rel = format!("src/d{}/f{i:04}", i % 3);
        let text = format!("file {i}\n").repeat(i % 5 + 1);
        p.file(&rel, &text);
        expected.insert(rel, text.into_bytes());
    }
    let big: String = (0..20_000).map(|i| format!("{i}\n")).collect();
    p.file("src/big", &big);
    expected.insert("src/big".to_string(), big.into_bytes());
    std::os::unix::fs::symlink("big", p.path().join("src/link")).unwrap();
    p.spec("kiln 1\nstage s {\n    copy \"src\" \"/src\"\n}\nexport {\n    s to=\"out.tar\" format=\"tar\"\n}\n");
    p.build(&[]).ok();
    let bytes = std::fs::read(p.path().join("out.tar")).unwrap();
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut files = std::collections::BTreeMap::new();
    let mut order = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        order.push(path.clone());
        match entry.header().entry_type() {
            tar::EntryType::Regular => {
                let mut content = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
                files.insert(path, content);
            }
            tar::EntryType::Symlink => {
                assert_eq!(path, "src/link");
                assert_eq!(entry.link_name().unwrap().unwrap().to_str(), Some("big"));
            }
            _ => {}
        }
    }
    assert_eq!(files, expected);
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "entries are in path order");
}
