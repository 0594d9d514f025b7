//! The reference Dockerfile implementation's own test corpus, read where it
//! lies: `$KILN_CONFORMANCE_DIR`, by default `../shared/conformance/` beside
//! the repository. Under `CI=true` a missing corpus is a failure;
//! elsewhere the tests say they were skipped.
//!
//! So far: the shell expansion cases (`shell/envVarTest`, `shell/wordsTest`).

use kiln::frontend::dockerfile::shell::{process_word, process_words};
use std::path::PathBuf;

fn corpus() -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance"))
        .join("buildkit-dockerfile");
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "the conformance corpus is missing at {} (set KILN_CONFORMANCE_DIR)",
            dir.display()
        );
    }
    eprintln!(
        "SKIPPED: no conformance corpus at {} (set KILN_CONFORMANCE_DIR)",
        dir.display()
    );
    None
}

#[test]
fn shell_single_word_expansion() {
    let Some(dir) = corpus() else { return };
    let text = std::fs::read_to_string(dir.join("shell/envVarTest")).unwrap();
    let env: Vec<(String, String)> = [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let (mut passed, mut skipped) = (0, 0);
    let mut failures = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.trim().split('|').map(str::trim).collect();
        assert_eq!(fields.len(), 3, "bad line {line:?}");
        let (platform, input, expected) = (fields[0], fields[1], fields[2]);
        if platform == "W" {
            skipped += 1; // Windows only: case-insensitive names.
            continue;
        }
        let got = process_word(input, &env, '\\');
        let ok = match (&got, expected) {
            (Err(_), "error") => true,
            (Ok(v), e) => e != "error" && v == e,
            _ => false,
        };
        if ok {
            passed += 1;
        } else {
            failures.push(format!("{input:?}: expected {expected:?}, got {got:?}"));
        }
    }
    println!(
        "shell/envVarTest: {passed} passed, {} failed, {skipped} skipped (Windows rows)",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(passed, 228);
}

#[test]
fn shell_word_splitting() {
    let Some(dir) = corpus() else { return };
    let text = std::fs::read_to_string(dir.join("shell/wordsTest")).unwrap();
    let mut env: Vec<(String, String)> = Vec::new();
    let mut passed = 0;
    let mut failures = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("ENV ") {
            let rest = rest.trim_start();
            let (k, v) = rest.split_once('=').expect("NAME=VALUE");
            env.push((k.to_string(), v.to_string()));
            continue;
        }
        let (input, expected) = line.split_once('|').expect("INPUT | EXPECTED");
        let input = input.trim();
        let expected = expected.trim_start();
        let got = process_words(input, &env, '\\');
        let ok = match (&got, expected) {
            (Err(_), "error") => true,
            (Ok(words), e) => e != "error" && words.join(",") == e,
            _ => false,
        };
        if ok {
            passed += 1;
        } else {
            failures.push(format!("{input:?}: expected {expected:?}, got {got:?}"));
        }
    }
    println!(
        "shell/wordsTest: {passed} passed, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(passed, 24);
}

#[test]
fn parser_positive_cases_dump_like_the_reference() {
    let Some(dir) = corpus() else { return };
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir.join("parser/testfiles"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    cases.sort();
    let mut passed = 0;
    let mut failures = Vec::new();
    for case in &cases {
        let bytes = std::fs::read(case.join("Dockerfile")).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let expected = std::fs::read_to_string(case.join("result")).unwrap();
        match kiln::frontend::dockerfile::parse::parse(&text) {
            Ok(d) if d.dump() == expected => passed += 1,
            Ok(d) => failures.push(format!(
                "{}:\n--- expected\n{expected}--- got\n{}",
                case.display(),
                d.dump()
            )),
            Err(e) => failures.push(format!("{}: {e}", case.display())),
        }
    }
    println!(
        "parser/testfiles: {passed} passed, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(passed, cases.len());
    assert!(passed >= 33);
}

#[test]
fn parser_negative_cases_are_rejected_with_a_line() {
    let Some(dir) = corpus() else { return };
    let mut passed = 0;
    let mut failures = Vec::new();
    for e in std::fs::read_dir(dir.join("parser/testfiles-negative"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(e.path().join("Dockerfile")).unwrap();
        match kiln::frontend::dockerfile::parse::parse(&text) {
            Err(err) if err.line >= 1 => passed += 1,
            other => failures.push(format!("{}: {other:?}", e.path().display())),
        }
    }
    println!(
        "parser/testfiles-negative: {passed} passed, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(passed, 4);
}

#[test]
fn parser_line_numbers() {
    let Some(dir) = corpus() else { return };
    let text = std::fs::read_to_string(dir.join("parser/testfile-line/Dockerfile")).unwrap();
    let d = kiln::frontend::dockerfile::parse::parse(&text).unwrap();
    let spans: Vec<(usize, usize)> = d
        .instructions
        .iter()
        .map(|i| (i.start_line, i.end_line))
        .collect();
    assert_eq!(spans, [(5, 5), (11, 12), (17, 31)]);
    println!("parser/testfile-line: 1 passed, 0 failed");
}
