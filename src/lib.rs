//! kiln: a hermetic, parallel, content-addressed build tool.
//!
//! The pipeline, one module per phase:
//! [`frontend`] (KDL text → spec AST) → [`ir`] (checked stage graph) →
//! [`exec`] (scheduler and steps) → [`store`] (cache) and [`export`]
//! (outputs), with [`progress`] turning executor events into output and
//! [`cli`] the only place that prints diagnostics.

pub mod ambient;
pub mod cli;
pub mod context;
pub mod diag;
pub mod exec;
pub mod export;
pub mod frontend;
pub mod ir;
pub mod progress;
pub mod store;
pub mod units;
