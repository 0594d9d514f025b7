//! The Dockerfile front end: `parse` (text → instructions, the line
//! parser, with the reference AST dump), `instructions` (typed
//! instructions with the reference's checks), `scope` (stages, `ARG` and
//! `ENV` scoping, expanded words) and `shell` (word expansion and
//! splitting). Lowering to the spec AST builds on these.

pub mod instructions;
pub mod lower;
pub mod parse;
pub mod scope;
pub mod shell;
