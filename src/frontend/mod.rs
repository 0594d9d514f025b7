//! Front ends: text in, spec AST out.
//!
//! `kdl` reads kiln's own language. Every node keeps its [`Span`], so later
//! phases can point at the source. Front ends read spec files from disk (and
//! follow `include`s) but never look at contexts, the cache or the network.

pub mod ast;
pub mod kdl;
