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
        // Build a copy, so the examples folder stays clean; the committed
        // plugin modules sit where the examples expect them.
        let tmp = tempfile::tempdir().unwrap();
        let copy = tmp.path().join("examples").join(dir.file_name().unwrap());
        std::fs::create_dir_all(&copy).unwrap();
        copy_dir(&dir, &copy);
        let plugins = tmp.path().join("plugins/dist");
        std::fs::create_dir_all(&plugins).unwrap();
        copy_dir(&root.join("../plugins/dist"), &plugins);
        let out = std::process::Command::new(kiln_bin())
            .args(["build", "--progress", "plain"])
            .current_dir(&copy)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "example {} failed:\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        built += 1;
    }
    assert!(built >= 5, "only {built} examples found");
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
