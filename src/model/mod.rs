//! The shared vocabulary every phase speaks: digests, trees, states and
//! image configs, and the named inputs of a step key. A leaf: it imports
//! nothing from the rest of kiln and does no IO, so the IR, the store, the
//! executor and the exporters can all use it without depending on each
//! other.

pub mod digest;
pub mod key;
pub mod name;
pub mod state;
pub mod timing;
pub mod tree;
pub mod url;
