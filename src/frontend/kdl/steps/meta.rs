//! Image metadata: `env`, `workdir`, `user`, `label`, `entrypoint`, `cmd`,
//! `expose`, `volume`, `stopsignal`, `shell`, `healthcheck`, `onbuild`
//! and `maintainer`.

use super::{Out, Syntax, child_string};
use crate::diag::Code;
use crate::diag::{Diagnostic, Diagnostics};
use crate::frontend::ast::{HealthcheckDecl, Pair, StepKind, Str};
use crate::frontend::kdl::emit::{INDENT, key, string};
use crate::frontend::kdl::node::Node;
use std::fmt::Write;

/// A step of `min` or more strings and no properties.
fn list(n: &Node, min: usize, usage: &str, d: &mut Diagnostics) -> Vec<Str> {
    n.arity(min, None, usage, d);
    n.no_props(d);
    n.str_args(d)
}

/// A step of one string and no properties.
fn one(n: &Node, usage: &str, d: &mut Diagnostics) -> Option<Str> {
    n.arity(1, Some(1), usage, d);
    n.no_props(d);
    n.str_arg(0, d)
}

pub(super) const ENV: Syntax = Syntax {
    name: "env",
    children: true,
    parse: |n, d| {
        Some(StepKind::Env(
            n.pairs("env NAME VALUE | env NAME=VALUE…", d),
        ))
    },
};

pub(super) const LABEL: Syntax = Syntax {
    name: "label",
    children: true,
    parse: |n, d| {
        Some(StepKind::Label(
            n.pairs("label KEY VALUE | label KEY=VALUE…", d),
        ))
    },
};

pub(super) const WORKDIR: Syntax = Syntax {
    name: "workdir",
    children: false,
    parse: |n, d| one(n, "workdir PATH", d).map(StepKind::Workdir),
};

pub(super) const USER: Syntax = Syntax {
    name: "user",
    children: false,
    parse: |n, d| one(n, "user USER[:GROUP]", d).map(StepKind::User),
};

pub(super) const STOPSIGNAL: Syntax = Syntax {
    name: "stopsignal",
    children: false,
    parse: |n, d| one(n, "stopsignal SIGNAL", d).map(StepKind::Stopsignal),
};

pub(super) const ONBUILD: Syntax = Syntax {
    name: "onbuild",
    children: false,
    parse: |n, d| one(n, "onbuild \"INSTRUCTION\"", d).map(StepKind::Onbuild),
};

pub(super) const MAINTAINER: Syntax = Syntax {
    name: "maintainer",
    children: false,
    parse: |n, d| one(n, "maintainer NAME", d).map(StepKind::Maintainer),
};

pub(super) const ENTRYPOINT: Syntax = Syntax {
    name: "entrypoint",
    children: false,
    parse: |n, d| Some(StepKind::Entrypoint(list(n, 0, "entrypoint ARG…", d))),
};

pub(super) const CMD: Syntax = Syntax {
    name: "cmd",
    children: false,
    parse: |n, d| Some(StepKind::Cmd(list(n, 0, "cmd ARG…", d))),
};

pub(super) const EXPOSE: Syntax = Syntax {
    name: "expose",
    children: false,
    parse: |n, d| Some(StepKind::Expose(list(n, 1, "expose PORT[/PROTO]…", d))),
};

pub(super) const VOLUME: Syntax = Syntax {
    name: "volume",
    children: false,
    parse: |n, d| Some(StepKind::Volume(list(n, 1, "volume PATH…", d))),
};

pub(super) const SHELL: Syntax = Syntax {
    name: "shell",
    children: false,
    parse: |n, d| Some(StepKind::Shell(list(n, 1, "shell PROGRAM ARG…", d))),
};

pub(super) const HEALTHCHECK: Syntax = Syntax {
    name: "healthcheck",
    children: false,
    parse: healthcheck,
};

fn healthcheck(n: &Node, d: &mut Diagnostics) -> Option<StepKind> {
    let usage = "healthcheck NONE | healthcheck CMD|CMD-SHELL ARG… [interval=D] [timeout=D] [start-period=D] [start-interval=D] [retries=N]";
    n.arity(1, None, usage, d);
    n.allow_props(
        &[
            "interval",
            "timeout",
            "start-period",
            "start-interval",
            "retries",
        ],
        d,
    );
    let test = n.str_args(d);
    let kind = test.first()?;
    let ok = match kind.value.as_str() {
        "NONE" => test.len() == 1 && n.node.entries().len() == 1,
        "CMD" | "CMD-SHELL" => test.len() > 1,
        _ => false,
    };
    if !ok {
        d.push(
            Diagnostic::new(
                Code::SPEC_HEALTHCHECK,
                "a healthcheck is `NONE`, or `CMD`/`CMD-SHELL` with a command",
            )
            .with_label(kind.span, "expected NONE, CMD or CMD-SHELL")
            .with_help(format!("usage: `{usage}`")),
        );
        return None;
    }
    Some(StepKind::Healthcheck(HealthcheckDecl {
        test,
        interval: n.str_prop("interval", d),
        timeout: n.str_prop("timeout", d),
        start_period: n.str_prop("start-period", d),
        start_interval: n.str_prop("start-interval", d),
        retries: n.str_prop("retries", d),
    }))
}

/// `env` and `label`: one pair on the step's line, more as `KEY VALUE`
/// child lines (any key reads back that way).
pub(super) fn pairs(out: &mut Out<'_>, kv: &[Pair]) {
    if let [(k, v)] = kv {
        let _ = write!(out.0, " {} {}", key(&k.value), string(&v.value, INDENT));
        return;
    }
    out.block(kv, |line, (k, v)| {
        let _ = write!(line, "{} {}", key(&k.value), child_string(&v.value));
    });
}

pub(super) fn print_healthcheck(out: &mut Out<'_>, h: &HealthcheckDecl) {
    out.args(&h.test);
    out.prop("interval", &h.interval);
    out.prop("timeout", &h.timeout);
    out.prop("start-period", &h.start_period);
    out.prop("start-interval", &h.start_interval);
    out.prop("retries", &h.retries);
}
