//! Any text read as a settings file gives settings or located
//! diagnostics that render, never a panic.
#![no_main]

use kiln::diag::{RenderOptions, Sources, render};
use kiln::frontend::kdl::config::parse_str;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let sources = Sources::new();
    if let Err(ds) = parse_str("config.kdl", text, &sources) {
        assert!(!ds.is_empty());
        for d in &ds {
            let _ = render(d, &sources, RenderOptions::default());
        }
    }
});
