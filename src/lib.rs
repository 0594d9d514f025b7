//! kiln: a hermetic, parallel, content-addressed build tool.
//!
//! The pipeline, one module per phase:
//! [`frontend`] (KDL text → spec AST) → [`ir`] (checked stage graph) →
//! [`exec`] (scheduler and steps) → [`store`] (cache) and [`export`]
//! (outputs), with [`progress`] turning executor events into output.
//! [`build`] runs that pipeline as one library call; [`cli`] turns
//! arguments into its request and is the only place that prints.

pub mod ambient;
pub mod cli;
pub mod context;
pub mod diag;
pub mod exec;
pub mod export;
pub mod frontend;
pub mod fsutil;
pub mod git;
pub mod image;
pub mod ir;
pub mod model;
pub mod pipeline;
pub mod plugin;
pub mod progress;
pub mod sandbox;
pub mod store;
pub mod units;
