//! The KDL syntax of each step kind, one module per kind (as `exec/steps/`
//! holds what each kind does): its parser, from a node to an AST step, and
//! its printer, from the AST step back to KDL (what `kiln import` prints),
//! side by side so that the two cannot drift apart. `from` is not a step
//! (it sets the stage's base) and is read by the stage.

mod copy;
mod fetch;
mod files;
mod git;
mod meta;
mod run;
mod wasm;

use super::emit::{INDENT, ident, key, string};
use super::node::Node;
use crate::diag::Diagnostics;
use crate::frontend::ast::{StepKind, Str};
use std::fmt::Write;

/// One step kind's node.
pub(super) struct Syntax {
    pub name: &'static str,
    /// Whether the node takes a block of children.
    pub children: bool,
    /// The step, or `None` when the node is wrong (the diagnostics say
    /// why).
    pub parse: fn(&Node, &mut Diagnostics) -> Option<StepKind>,
}

/// Every step kind's node, in the order the language reference lists them.
pub(super) const STEPS: &[Syntax] = &[
    copy::SYNTAX,
    fetch::SYNTAX,
    git::SYNTAX,
    files::WRITE,
    files::MKDIR,
    files::RM,
    files::SYMLINK,
    meta::ENV,
    meta::WORKDIR,
    meta::USER,
    meta::LABEL,
    meta::ENTRYPOINT,
    meta::CMD,
    meta::EXPOSE,
    meta::VOLUME,
    meta::STOPSIGNAL,
    meta::SHELL,
    meta::HEALTHCHECK,
    meta::ONBUILD,
    meta::MAINTAINER,
    wasm::SYNTAX,
    run::SYNTAX,
    run::TEST,
];

/// The syntax of the step named `name`, if it is one.
pub(super) fn syntax(name: &str) -> Option<&'static Syntax> {
    STEPS.iter().find(|s| s.name == name)
}

/// The arguments, properties and children of a step, after its name.
pub(super) fn print(out: &mut String, kind: &StepKind) {
    let out = &mut Out(out);
    match kind {
        StepKind::Copy { .. } => copy::print(out, kind),
        StepKind::Fetch { .. } => fetch::print(out, kind),
        StepKind::Git { .. } => git::print(out, kind),
        StepKind::Write {
            path,
            content,
            mode,
        } => files::write(out, path, content, mode),
        StepKind::Mkdir { paths, mode } => files::mkdir(out, paths, mode),
        StepKind::Rm { paths, force } => files::rm(out, paths, *force),
        StepKind::Symlink { target, link } => {
            out.arg(target);
            out.arg(link);
        }
        StepKind::Env(kv) | StepKind::Label(kv) => meta::pairs(out, kv),
        StepKind::Workdir(s)
        | StepKind::User(s)
        | StepKind::Stopsignal(s)
        | StepKind::Onbuild(s)
        | StepKind::Maintainer(s) => out.arg(s),
        StepKind::Entrypoint(v)
        | StepKind::Cmd(v)
        | StepKind::Expose(v)
        | StepKind::Volume(v)
        | StepKind::Shell(v) => out.args(v),
        StepKind::Healthcheck(h) => meta::print_healthcheck(out, h),
        StepKind::Wasm(w) => wasm::print(out, w),
        StepKind::Run(r) => run::print(out, r),
    }
}

/// A step's text being written: what every printer needs.
pub(super) struct Out<'a>(&'a mut String);

impl Out<'_> {
    /// Strings as arguments.
    fn args(&mut self, v: &[Str]) {
        for s in v {
            self.arg(s);
        }
    }

    fn arg(&mut self, s: &Str) {
        self.0.push(' ');
        self.0.push_str(&string(&s.value, INDENT));
    }

    /// `KEY="VALUE"` when there is a value.
    fn prop(&mut self, k: &str, v: &Option<Str>) {
        if let Some(v) = v {
            let _ = write!(self.0, " {k}={}", string(&v.value, INDENT));
        }
    }

    /// `KEY=NAME` (a stage or context name, bare when it can be).
    fn name_prop(&mut self, k: &str, v: &Option<Str>) {
        if let Some(v) = v {
            let _ = write!(self.0, " {k}={}", ident(&v.value));
        }
    }

    /// `KEY=#true` when set.
    fn flag(&mut self, k: &str, v: bool) {
        if v {
            let _ = write!(self.0, " {k}=#true");
        }
    }

    /// A block of child lines, each written by `line` after its indent.
    fn block<T>(&mut self, items: &[T], mut line: impl FnMut(&mut String, &T)) {
        if items.is_empty() {
            return;
        }
        self.0.push_str(" {\n");
        for item in items {
            let _ = write!(self.0, "{INDENT}{INDENT}");
            line(self.0, item);
            self.0.push('\n');
        }
        let _ = write!(self.0, "{INDENT}}}");
    }
}

/// A child line's string argument (indented one level deeper than a step's).
fn child_string(s: &str) -> String {
    string(s, "        ")
}

/// `env NAME=VALUE` child lines' text.
fn env_line(out: &mut String, (k, v): &(Str, Str)) {
    let _ = write!(out, "env {}={}", key(&k.value), child_string(&v.value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_node_has_one_syntax() {
        let names: Vec<&str> = STEPS.iter().map(|s| s.name).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_eq!(
            super::super::STEP_NODES[1..],
            names[..],
            "STEP_NODES lists `from` and then every step"
        );
    }
}
