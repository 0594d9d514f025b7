//! `git URL DEST [ref=REF] [subdir=DIR] [keep-git-dir=#true] [chmod=MODE]
//! [chown=OWNER]`

use super::{Out, Syntax};
use crate::diag::Diagnostics;
use crate::frontend::ast::StepKind;
use crate::frontend::kdl::node::Node;

pub(super) const SYNTAX: Syntax = Syntax {
    name: "git",
    children: false,
    parse,
};

fn parse(n: &Node, d: &mut Diagnostics) -> Option<StepKind> {
    let usage =
        "git URL DEST [ref=REF] [subdir=DIR] [keep-git-dir=#true] [chmod=MODE] [chown=USER:GROUP]";
    n.arity(2, Some(2), usage, d);
    n.allow_props(&["ref", "subdir", "keep-git-dir", "chmod", "chown"], d);
    let (url, dest) = (n.str_arg(0, d), n.str_arg(1, d));
    let (url, dest) = (url?, dest?);
    Some(StepKind::Git {
        url,
        dest,
        reference: n.str_prop("ref", d),
        subdir: n.str_prop("subdir", d),
        keep_git_dir: n.bool_prop("keep-git-dir", d).unwrap_or(false),
        chmod: n.mode_prop("chmod", d),
        chown: n.str_prop("chown", d),
    })
}

pub(super) fn print(out: &mut Out<'_>, kind: &StepKind) {
    let StepKind::Git {
        url,
        dest,
        reference,
        subdir,
        keep_git_dir,
        chmod,
        chown,
    } = kind
    else {
        return;
    };
    out.arg(url);
    out.arg(dest);
    out.prop("ref", reference);
    out.prop("subdir", subdir);
    out.flag("keep-git-dir", *keep_git_dir);
    out.prop("chmod", chmod);
    out.prop("chown", chown);
}
