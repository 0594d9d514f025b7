//! Integration tests: the real `kiln` binary on real specs in temp dirs.

mod harness;
