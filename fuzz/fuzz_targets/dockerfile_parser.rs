//! Any text fed to the Dockerfile parser, the word expander and the
//! importer gives a result or an error, never a panic; and whatever the
//! importer accepts, its KDL reads back and compiles to the same graph.
#![no_main]

use kiln::diag::Sources;
use kiln::frontend::dockerfile::{lower, parse, shell};
use kiln::frontend::kdl::{emit, parse_str};
use kiln::ir::{CompileOptions, compile};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(d) = parse::parse(text) {
        let _ = d.dump();
    }
    let env: Vec<(String, String)> = vec![("A".into(), "a b".into())];
    let _ = shell::process_word(text, &env, '\\');
    let _ = shell::process_words(text, &env, '`');
    let _ = shell::expand_heredoc(text, &env, '\\');

    let sources = Sources::new();
    let id = sources.add("Dockerfile".into(), "Dockerfile".into(), text.into());
    let Ok(imported) = lower::lower_text(text, id, Path::new(""), &[]) else {
        return;
    };
    let options = CompileOptions::default();
    let direct = compile(&imported.spec, &options, &sources);
    let kdl = emit::write(&imported.spec, &emit::Comments::default());
    let spec = match parse_str("kiln.kdl", &kdl, &sources) {
        Ok(s) => s,
        Err(e) => panic!("the import does not read back:\n{kdl}\n{:?}", e.diagnostics),
    };
    let again = compile(&spec, &options, &sources);
    match (direct, again) {
        (Ok((a, _)), Ok((b, _))) => {
            assert_eq!(a.dump(Path::new("")), b.dump(Path::new("")), "{kdl}")
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!(
            "compiles differently: direct ok={} imported ok={}\n{kdl}",
            a.is_ok(),
            b.is_ok()
        ),
    }
});
