//! Golden compiled graphs: each `tests/golden/graph/NAME.kdl` (and each
//! example) is read and compiled, and `Graph::dump` must equal
//! `NAME.graph`. `KILN_BLESS=1` rewrites the expectations.

use kiln::diag::Sources;
use kiln::ir::{CompileOptions, compile};
use std::path::{Path, PathBuf};

fn dump(spec_path: &Path) -> String {
    let sources = Sources::new();
    let spec = kiln::frontend::kdl::load(spec_path, "kiln.kdl", &sources, None)
        .unwrap_or_else(|e| panic!("{}: {:?}", spec_path.display(), e.diagnostics));
    let dir = spec_path.parent().unwrap().to_path_buf();
    let options = CompileOptions {
        args: Vec::new(),
        context_dir: dir.clone(),
        ..Default::default()
    };
    let (graph, _) = compile(&spec, &options, &sources).unwrap_or_else(|e| panic!("{e:?}"));
    graph.dump(&dir)
}

#[test]
fn compiled_graphs_match_their_goldens() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cases: Vec<(PathBuf, PathBuf)> = Vec::new();
    let golden = root.join("tests/golden/graph");
    for e in std::fs::read_dir(&golden).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "kdl") {
            cases.push((p.clone(), p.with_extension("graph")));
        }
    }
    for e in std::fs::read_dir(root.join("examples")).unwrap().flatten() {
        let spec = e.path().join("kiln.kdl");
        if spec.exists() {
            let name = e.file_name().to_string_lossy().into_owned();
            cases.push((spec, golden.join(format!("example-{name}.graph"))));
        }
    }
    cases.sort();
    let bless = std::env::var_os("KILN_BLESS").is_some();
    let mut failures = Vec::new();
    for (spec, expected_path) in &cases {
        let got = dump(spec);
        if bless {
            std::fs::write(expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(expected_path).unwrap_or_default();
        if expected != got {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- got\n{got}",
                spec.display()
            ));
        }
    }
    assert!(cases.len() >= 5, "only {} cases", cases.len());
    assert!(
        failures.is_empty(),
        "graph goldens differ (KILN_BLESS=1 to update):\n{}",
        failures.join("\n")
    );
}
