//! Front ends: text in, spec AST out.
//!
//! `kdl` reads kiln's own language. Every node keeps its [`Span`], so later
//! phases can point at the source. Front ends read spec files from disk (and
//! follow `include`s) but never look at contexts, the cache or the network.

pub mod ast;
pub mod dockerfile;
pub mod kdl;

/// A store for lowered spec files, keyed by a digest of everything that
/// went into them (path, source id, text, kiln version). Lets a no-op build
/// skip KDL parsing. The front end only asks and offers; where the bytes
/// live is the caller's business.
pub trait ParseCache {
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    fn put(&self, key: &str, bytes: &[u8]);
}
