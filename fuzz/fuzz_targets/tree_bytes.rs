//! Any bytes read as a stored tree, a delta, or a tree from a remote
//! cache give a tree or `None`, never a panic; a tree taken from
//! elsewhere has only paths a step could make (whether its bytes were
//! the canonical ones is the caller's check, by digest).
#![no_main]

use kiln::model::digest::TreeDigest;
use kiln::model::tree::{Stored, Tree};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Tree::from_bytes(data);
    let _ = Stored::read(data, TreeDigest([0; 32]));
    if let Some(t) = Tree::from_untrusted(data) {
        for path in t.entries.keys() {
            assert!(!path.is_empty() && !path.starts_with('/'));
            assert!(path.split('/').all(|p| !p.is_empty() && p != "." && p != ".."));
        }
    }
});
