//! The Dockerfile front end. So far: the shell-style word expansion that
//! Dockerfile instructions use (`shell`), matching the reference
//! implementation's lexer; the instruction parser and the lowering to the
//! spec AST build on it.

pub mod parse;
pub mod shell;
