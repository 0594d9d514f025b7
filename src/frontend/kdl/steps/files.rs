//! `write PATH CONTENT [mode=MODE]`, `mkdir PATH… [mode=MODE]`,
//! `rm PATH… [force=#true]` and `symlink TARGET LINK`.

use super::{Out, Syntax};
use crate::diag::Diagnostics;
use crate::frontend::ast::{StepKind, Str};
use crate::frontend::kdl::node::Node;

pub(super) const WRITE: Syntax = Syntax {
    name: "write",
    children: false,
    parse: |n, d| {
        n.arity(2, Some(2), "write PATH CONTENT [mode=MODE]", d);
        n.allow_props(&["mode"], d);
        let (path, content) = (n.str_arg(0, d), n.str_arg(1, d));
        let (path, content) = (path?, content?);
        Some(StepKind::Write {
            path,
            content,
            mode: n.mode_prop("mode", d),
        })
    },
};

pub(super) const MKDIR: Syntax = Syntax {
    name: "mkdir",
    children: false,
    parse: |n, d| {
        n.arity(1, None, "mkdir PATH… [mode=MODE]", d);
        n.allow_props(&["mode"], d);
        Some(StepKind::Mkdir {
            paths: n.str_args(d),
            mode: n.mode_prop("mode", d),
        })
    },
};

pub(super) const RM: Syntax = Syntax {
    name: "rm",
    children: false,
    parse: |n, d| {
        n.arity(1, None, "rm PATH… [force=#true]", d);
        n.allow_props(&["force"], d);
        Some(StepKind::Rm {
            paths: n.str_args(d),
            force: n.bool_prop("force", d).unwrap_or(false),
        })
    },
};

pub(super) const SYMLINK: Syntax = Syntax {
    name: "symlink",
    children: false,
    parse: symlink,
};

fn symlink(n: &Node, d: &mut Diagnostics) -> Option<StepKind> {
    n.arity(2, Some(2), "symlink TARGET LINK", d);
    n.no_props(d);
    let (target, link) = (n.str_arg(0, d), n.str_arg(1, d));
    let (target, link) = (target?, link?);
    Some(StepKind::Symlink { target, link })
}

pub(super) fn write(out: &mut Out<'_>, path: &Str, content: &Str, mode: &Option<Str>) {
    out.arg(path);
    out.arg(content);
    out.prop("mode", mode);
}

pub(super) fn mkdir(out: &mut Out<'_>, paths: &[Str], mode: &Option<Str>) {
    out.args(paths);
    out.prop("mode", mode);
}

pub(super) fn rm(out: &mut Out<'_>, paths: &[Str], force: bool) {
    out.args(paths);
    out.flag("force", force);
}
