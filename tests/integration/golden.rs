//! Golden diagnostics: each `tests/golden/errors/NAME.kdl` is checked (or
//! built, when its first line is `// build`) and the rendered stderr must
//! equal `NAME.stderr`. `KILN_BLESS=1` rewrites the expectations.
//!
//! Also: every example in `spec/` parses.

use crate::harness::kiln_bin;
use std::path::Path;

#[test]
fn diagnostics_match_their_goldens() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/errors");
    let bless = std::env::var_os("KILN_BLESS").is_some();
    let mut failures = Vec::new();
    let mut count = 0;
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "kdl"))
    {
        count += 1;
        let name = path.file_name().unwrap().to_str().unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(path, tmp.path().join(name)).unwrap();
        let ctx = root.join(path.file_stem().unwrap());
        if ctx.is_dir() {
            for e in std::fs::read_dir(&ctx).unwrap().flatten() {
                std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
            }
        }
        let cmd = if text.starts_with("// build") {
            "build"
        } else {
            "check"
        };
        let mut args = vec![cmd, "-f", name];
        if cmd == "build" {
            args.extend(["--progress", "plain"]);
        }
        let cache = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(kiln_bin())
            .args(&args)
            .current_dir(tmp.path())
            .env_remove("KILN_STATE_DIR")
            .env("XDG_CACHE_HOME", cache.path())
            .env("NO_COLOR", "1")
            .env("COLUMNS", "80")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Keep only the diagnostics (plain progress lines start with `#` or a word we know).
        let rendered: String = stderr
            .lines()
            .filter(|l| {
                !(l.starts_with('#') || l.starts_with("building ") || l.starts_with("build failed"))
            })
            .map(|l| format!("{}\n", l.trim_end()))
            .collect();
        let expected_path = path.with_extension("stderr");
        if bless {
            std::fs::write(&expected_path, &rendered).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != rendered {
            failures.push(format!(
                "{name}:\n--- expected\n{expected}\n--- got\n{rendered}"
            ));
        }
    }
    assert!(count >= 10, "only {count} golden files");
    assert!(
        failures.is_empty(),
        "{} golden mismatches (KILN_BLESS=1 to update):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_example_in_the_spec_reference_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("spec");
    let mut checked = 0;
    for e in std::fs::read_dir(&root).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        let mut in_block = false;
        let mut block = String::new();
        let mut settings = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```kdl") {
                in_block = true;
                settings = line.contains("settings");
                block.clear();
            } else if in_block && line.trim_start().starts_with("```") && settings {
                // A settings file: a build reads it (its server need not
                // answer), and finds no mistake in it.
                in_block = false;
                let tmp = tempfile::tempdir().unwrap();
                std::fs::write(tmp.path().join("config.kdl"), &block).unwrap();
                std::fs::write(
                    tmp.path().join("kiln.kdl"),
                    "kiln 1\nstage s {\n    write \"/a\" \"a\"\n}\n",
                )
                .unwrap();
                std::fs::create_dir(tmp.path().join(".kiln")).unwrap();
                let out = std::process::Command::new(kiln_bin())
                    .args(["build", "--remote-timeout", "1"])
                    .current_dir(tmp.path())
                    .env("KILN_CONFIG", tmp.path().join("config.kdl"))
                    .env("KILN_CACHE_TOKEN", "t")
                    .env_remove("KILN_REMOTE_CACHE")
                    .env("NO_COLOR", "1")
                    .output()
                    .unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(
                    out.status.success() && !stderr.contains("kiln::config"),
                    "settings example in {} does not read:\n{block}\n{stderr}",
                    e.path().display()
                );
                checked += 1;
            } else if in_block && line.trim_start().starts_with("```") {
                in_block = false;
                let tmp = tempfile::tempdir().unwrap();
                std::fs::write(tmp.path().join("kiln.kdl"), &block).unwrap();
                let out = std::process::Command::new(kiln_bin())
                    .args(["check"])
                    .current_dir(tmp.path())
                    .env("NO_COLOR", "1")
                    .output()
                    .unwrap();
                // An example stands alone: only what it names outside
                // itself (a plugin module, a context directory, a local
                // image) may be missing where it is checked.
                let stderr = String::from_utf8_lossy(&out.stderr);
                let codes: Vec<&str> = stderr
                    .lines()
                    .map(str::trim)
                    .filter(|l| l.starts_with("kiln::") && !l.contains(' '))
                    .collect();
                let elsewhere = [
                    "kiln::wasm::module",
                    "kiln::context::missing",
                    "kiln::image::resolve",
                ];
                assert!(
                    out.status.success()
                        || (!codes.is_empty() && codes.iter().all(|c| elsewhere.contains(c))),
                    "example in {} does not check:\n{block}\n{stderr}",
                    e.path().display(),
                );
                checked += 1;
            } else if in_block {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    assert!(checked >= 5, "only {checked} examples in spec/");
}
