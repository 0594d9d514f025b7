//! Integration tests: the real `kiln` binary on real specs in temp dirs.

mod build;
mod cli;
mod examples;
mod golden;
mod harness;
