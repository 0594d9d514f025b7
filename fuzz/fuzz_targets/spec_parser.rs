//! Any text fed to the spec parser and compiler gives a spec or
//! diagnostics, never a panic, and every diagnostic renders.
#![no_main]

use kiln::diag::{RenderOptions, Sources, render};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let sources = Sources::new();
    let options = kiln::ir::CompileOptions::default();
    let result = match kiln::frontend::kdl::parse_str("fuzz.kdl", text, &sources) {
        Ok(spec) => kiln::ir::compile(&spec, &options, &sources).map(|_| ()),
        Err(e) => {
            let mut diags = e.diagnostics;
            if let Some(partial) = e.partial
                && let Err(more) = kiln::ir::compile(&partial, &options, &sources)
            {
                diags.extend(more);
            }
            Err(diags)
        }
    };
    if let Err(diags) = result {
        for d in &diags {
            let _ = render(d, &sources, RenderOptions::default());
        }
    }
});
