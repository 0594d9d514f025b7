//! Any text fed to the Dockerfile parser and the word expander gives a
//! result or an error, never a panic.
#![no_main]

use kiln::frontend::dockerfile::{parse, shell};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(d) = parse::parse(text) {
        let _ = d.dump();
    }
    let env: Vec<(String, String)> = vec![("A".into(), "a b".into())];
    let _ = shell::process_word(text, &env, '\\');
    let _ = shell::process_words(text, &env, '`');
});
