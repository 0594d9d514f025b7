//! Integration tests: the real `kiln` binary on real specs in temp dirs.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

mod bounded;
mod build;
mod buildah;
mod cli;
mod conformance;
mod cutoff;
mod examples;
mod fetch;
mod git;
mod golden;
mod graph;
mod harness;
mod hostile;
mod image_out;
mod images;
mod images_helper;
mod import;
mod keys;
mod layers;
mod outputs;
mod plugins;
mod query;
mod registry_cache;
mod reliability;
mod remote;
mod run;
mod safety;
mod shared;
mod testing;
mod trace;
