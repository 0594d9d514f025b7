//! Any text fed to the spec parser and compiler gives a spec or
//! diagnostics, never a panic, and every diagnostic renders.
#![no_main]

use kiln::diag::{RenderOptions, Sources, render};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let sources = Sources::new();
    let result = kiln::frontend::kdl::parse_str("fuzz.kdl", text, &sources).and_then(|spec| {
        let options = kiln::ir::CompileOptions::default();
        kiln::ir::compile(&spec, &options, &sources).map(|_| ())
    });
    if let Err(diags) = result {
        for d in &diags {
            let _ = render(d, &sources, RenderOptions::default());
        }
    }
});
