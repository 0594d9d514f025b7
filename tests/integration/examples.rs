//! Every spec in `examples/` builds.

use crate::harness::kiln_bin;
use std::path::Path;

#[test]
fn every_example_builds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut built = 0;
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for dir in dirs {
        if !dir.join("kiln.kdl").exists() && !dir.join("Dockerfile").exists() {
            continue;
        }
        // An example on images builds on the test images (`ci.args`).
        let mut args: Vec<String> = vec!["build".into(), "--progress".into(), "plain".into()];
        if let Ok(ci) = std::fs::read_to_string(dir.join("ci.args")) {
            if !crate::images_helper::sandbox_ready() {
                continue;
            }
            let Some(images) = crate::images_helper::all_images() else {
                continue;
            };
            let images = images.display().to_string();
            for line in ci.lines().filter(|l| !l.trim().is_empty()) {
                args.push("--arg".into());
                args.push(line.replace("${KILN_TEST_IMAGES}", &images));
            }
            // Also as an image, whose bytes must not depend on the machine.
            args.extend(["-o".into(), "out".into()]);
            args.extend(["-o".into(), "type=oci,dest=image.tar".into()]);
        }
        // Built twice, in two checkouts, under another umask, time zone,
        // locale and user: the results (and images) must be the same.
        let mut results = Vec::new();
        let mut kept = Vec::new();
        for (umask, tz, lang, user) in [
            ("0022", "UTC", "C", "a"),
            ("0077", "Asia/Tokyo", "C.UTF-8", "b"),
        ] {
            // Build a copy, so the examples folder stays clean; the
            // committed plugin modules sit where the examples expect them.
            let tmp = tempfile::tempdir().unwrap();
            let copy = tmp.path().join("examples").join(dir.file_name().unwrap());
            std::fs::create_dir_all(&copy).unwrap();
            copy_dir(&dir, &copy);
            let plugins = tmp.path().join("plugins/dist");
            std::fs::create_dir_all(&plugins).unwrap();
            copy_dir(&root.join("../plugins/dist"), &plugins);
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("umask {umask}; exec \"$@\""))
                .arg("sh")
                .arg(kiln_bin())
                .args(&args)
                .current_dir(&copy)
                .env_remove("KILN_STATE_DIR")
                .env("XDG_CACHE_HOME", tmp.path().join("cache"))
                .env_remove("SOURCE_DATE_EPOCH")
                .env("TZ", tz)
                .env("LC_ALL", lang)
                .env("USER", user)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "example {} failed:\n{}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let image = std::fs::read(copy.join("image.tar")).ok();
            results.push((String::from_utf8_lossy(&out.stdout).into_owned(), image));
            kept.push((tmp, copy));
        }
        assert_eq!(
            results[0].0,
            results[1].0,
            "example {} gave other results in another checkout",
            dir.display()
        );
        assert!(
            results[0].1 == results[1].1,
            "example {} gave another image in another checkout",
            dir.display()
        );
        let copy = kept[0].1.clone();
        built += 1;
        // The toolchain example's binary, built in Debian, runs anywhere.
        if dir.ends_with("toolchain") {
            let run = std::process::Command::new(copy.join("out/app"))
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&run.stdout),
                "hello from a static binary built in a toolchain image\n"
            );
            assert_eq!(
                std::fs::read_to_string(copy.join("out/greeting.txt")).unwrap(),
                "hello from a static binary built in a toolchain image\n"
            );
            assert!(!copy.join("out/usr/bin/gcc").exists());
        }
    }
    assert!(built >= 5, "only {built} examples found");
}

/// The monorepo example's tests pass on the test image (`ci.test-args`),
/// and its JUnit report lists them.
#[test]
fn the_monorepo_example_s_tests_pass() {
    if !crate::images_helper::sandbox_ready() {
        return;
    }
    let Some(image) = crate::images_helper::busybox() else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("monorepo");
    std::fs::create_dir_all(&copy).unwrap();
    copy_dir(&root.join("monorepo"), &copy);
    let ci = std::fs::read_to_string(copy.join("ci.test-args")).unwrap();
    assert!(ci.contains("TEST_IMAGE="), "{ci}");
    let out = std::process::Command::new(kiln_bin())
        .args(["test", "--junit", "junit.xml", "--arg"])
        .arg(format!("TEST_IMAGE={image}"))
        .current_dir(&copy)
        .env_remove("KILN_STATE_DIR")
        .env("XDG_CACHE_HOME", tmp.path().join("cache"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.ends_with("2 tests: 2 passed\n"), "{stdout}");
    let xml = std::fs::read_to_string(copy.join("junit.xml")).unwrap();
    assert!(
        xml.contains(r#"<testcase name="core-test" classname="core-test""#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<testcase name="has-a-heading" classname="web-test""#),
        "{xml}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name();
        if name == ".kiln" || name == "out" || name == "dist" {
            continue;
        }
        let target = to.join(&name);
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}
