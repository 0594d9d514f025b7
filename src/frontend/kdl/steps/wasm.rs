//! `wasm PLUGIN ARG… [timeout=D] [memory=SIZE] { env NAME=VALUE…; mount
//! GUEST [from=STAGE|context=NAME] [source=PATH] }`

use super::{Out, Syntax, child_string, env_line};
use crate::diag::Code;
use crate::diag::{Diagnostic, Diagnostics};
use crate::frontend::ast::{MountDecl, StepKind, WasmDecl};
use crate::frontend::kdl::emit::ident;
use crate::frontend::kdl::node::Node;
use std::fmt::Write;

pub(super) const SYNTAX: Syntax = Syntax {
    name: "wasm",
    children: true,
    parse,
};

fn parse(n: &Node, d: &mut Diagnostics) -> Option<StepKind> {
    let usage = "wasm PLUGIN ARG… [timeout=DURATION] [memory=SIZE] { env NAME=VALUE…; mount GUEST [from=STAGE|context=NAME] [source=PATH] }";
    n.arity(1, None, usage, d);
    n.allow_props(&["timeout", "memory"], d);
    let mut args = n.str_args(d);
    if args.is_empty() {
        return None;
    }
    let plugin = args.remove(0);
    let mut env = Vec::new();
    let mut mounts = Vec::new();
    for c in n.children(&["env", "mount"], d) {
        if c.node.name().value() == "env" {
            env.extend(c.pairs("env NAME VALUE | env NAME=VALUE…", d));
        } else if let Some(m) = mount(&c, d) {
            mounts.push(m);
        }
    }
    Some(StepKind::Wasm(WasmDecl {
        plugin,
        args,
        env,
        mounts,
        timeout: n.str_prop("timeout", d),
        memory: n.str_prop("memory", d),
    }))
}

/// `mount GUEST [from=STAGE | context=NAME] [source=PATH]`
fn mount(c: &Node, d: &mut Diagnostics) -> Option<MountDecl> {
    let usage = "mount GUEST [from=STAGE | context=NAME] [source=PATH]";
    c.arity(1, Some(1), usage, d);
    c.allow_props(&["from", "context", "source"], d);
    c.no_children(d);
    let guest = c.str_arg(0, d)?;
    let from = c.str_prop("from", d);
    let context = c.str_prop("context", d);
    if let (Some(f), Some(x)) = (&from, &context) {
        d.push(
            Diagnostic::new(
                Code::SPEC_MOUNT_SOURCE,
                "a mount takes `from=` or `context=`, not both",
            )
            .with_label(f.span, "from a stage")
            .with_label(x.span, "from a context"),
        );
    }
    Some(MountDecl {
        span: c.span(),
        guest,
        from,
        context,
        source: c.str_prop("source", d),
    })
}

pub(super) fn print(out: &mut Out<'_>, w: &WasmDecl) {
    let _ = write!(out.0, " {}", ident(&w.plugin.value));
    out.args(&w.args);
    out.prop("timeout", &w.timeout);
    out.prop("memory", &w.memory);
    let lines: Vec<Child<'_>> = (w.env.iter().map(Child::Env))
        .chain(w.mounts.iter().map(Child::Mount))
        .collect();
    out.block(&lines, |line, child| match child {
        Child::Env(pair) => env_line(line, pair),
        Child::Mount(m) => {
            let _ = write!(line, "mount {}", child_string(&m.guest.value));
            if let Some(f) = &m.from {
                let _ = write!(line, " from={}", ident(&f.value));
            }
            if let Some(c) = &m.context {
                let _ = write!(line, " context={}", ident(&c.value));
            }
            if let Some(s) = &m.source {
                let _ = write!(line, " source={}", child_string(&s.value));
            }
        }
    });
}

/// A child line of a `wasm` step.
enum Child<'a> {
    Env(&'a crate::frontend::ast::Pair),
    Mount(&'a MountDecl),
}
