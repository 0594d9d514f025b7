//! `run SCRIPT | run PROGRAM ARG… exec=#true [network=MODE]
//! [security=MODE] [timeout=D] [sandbox=image|host] { env NAME=VALUE…;
//! mount SPEC…; host-inputs PATH… }`, and `test`, the same with
//! `[name=NAME]`: a test, whose failure is recorded rather than fatal.`

use super::{Out, Syntax, child_string, env_line};
use crate::diag::Code;
use crate::diag::{Diagnostic, Diagnostics};
use crate::frontend::ast::{Pair, RunDecl, StepKind, Str, TestDecl};
use crate::frontend::kdl::node::Node;
use std::fmt::Write;

pub(super) const SYNTAX: Syntax = Syntax {
    name: "run",
    children: true,
    parse,
};

pub(super) const TEST: Syntax = Syntax {
    name: "test",
    children: true,
    parse: parse_test,
};

fn parse(n: &Node, d: &mut Diagnostics) -> Option<StepKind> {
    let usage = "run SCRIPT | run PROGRAM ARG… exec=#true [network=MODE] [security=MODE] [timeout=DURATION] [sandbox=image|host] { env NAME=VALUE…; mount SPEC…; host-inputs PATH… }";
    n.allow_props(&["exec", "network", "security", "timeout", "sandbox"], d);
    parse_command(n, usage, d)
}

fn parse_test(n: &Node, d: &mut Diagnostics) -> Option<StepKind> {
    let usage = "test SCRIPT | test PROGRAM ARG… exec=#true [name=NAME] [network=MODE] [security=MODE] [timeout=DURATION] [sandbox=image|host] { env NAME=VALUE…; mount SPEC…; host-inputs PATH… }";
    n.allow_props(
        &["exec", "network", "security", "timeout", "sandbox", "name"],
        d,
    );
    let name = n.str_prop("name", d);
    match parse_command(n, usage, d)? {
        StepKind::Run(r) => Some(StepKind::Run(RunDecl {
            test: Some(TestDecl { name }),
            ..r
        })),
        other => Some(other),
    }
}

/// What `run` and `test` share: the command, its settings and children.
fn parse_command(n: &Node, usage: &str, d: &mut Diagnostics) -> Option<StepKind> {
    n.arity(1, None, usage, d);
    let command = n.str_args(d);
    let exec = n.bool_prop("exec", d).unwrap_or(false);
    if !exec && command.len() > 1 {
        d.push(
            Diagnostic::new(
                Code::SPEC_RUN,
                format!("a shell-form `{}` takes one script", n.name().value),
            )
            .with_label(n.span(), "several arguments"),
        );
    }
    let mut env = Vec::new();
    let mut mounts = Vec::new();
    let mut host_inputs = Vec::new();
    for c in n.children(&["env", "mount", "host-inputs"], d) {
        if c.node.name().value() == "env" {
            env.extend(c.pairs("env NAME VALUE | env NAME=VALUE…", d));
            continue;
        }
        let (usage, into) = if c.node.name().value() == "mount" {
            ("mount \"type=…,target=…\"…", &mut mounts)
        } else {
            ("host-inputs \"/usr/bin/gcc\"…", &mut host_inputs)
        };
        c.arity(1, None, usage, d);
        c.no_props(d);
        c.no_children(d);
        into.extend(c.str_args(d));
    }
    Some(StepKind::Run(RunDecl {
        command,
        exec,
        env,
        mounts,
        network: n.str_prop("network", d),
        security: n.str_prop("security", d),
        timeout: n.str_prop("timeout", d),
        sandbox: n.str_prop("sandbox", d),
        host_inputs,
        test: None,
    }))
}

pub(super) fn print(out: &mut Out<'_>, r: &RunDecl) {
    out.args(&r.command);
    out.flag("exec", r.exec);
    if let Some(t) = &r.test {
        out.prop("name", &t.name);
    }
    out.prop("network", &r.network);
    out.prop("security", &r.security);
    out.prop("timeout", &r.timeout);
    out.prop("sandbox", &r.sandbox);
    let lines: Vec<Child<'_>> = (r.env.iter().map(Child::Env))
        .chain(r.mounts.iter().map(|m| Child::Line("mount", m)))
        .chain(r.host_inputs.iter().map(|h| Child::Line("host-inputs", h)))
        .collect();
    out.block(&lines, |line, child| match child {
        Child::Env(pair) => env_line(line, pair),
        Child::Line(name, s) => {
            let _ = write!(line, "{name} {}", child_string(&s.value));
        }
    });
}

/// A child line of a `run` step.
enum Child<'a> {
    Env(&'a Pair),
    Line(&'static str, &'a Str),
}
