//! `fetch URL DEST [checksum="sha256:HEX"] [chmod=MODE] [chown=OWNER]`

use super::{Out, Syntax};
use crate::diag::Diagnostics;
use crate::frontend::ast::StepKind;
use crate::frontend::kdl::node::Node;

pub(super) const SYNTAX: Syntax = Syntax {
    name: "fetch",
    children: false,
    parse,
};

fn parse(n: &Node, d: &mut Diagnostics) -> Option<StepKind> {
    let usage = "fetch URL DEST checksum=\"sha256:HEX\" [chmod=MODE] [chown=USER:GROUP]";
    n.arity(2, Some(2), usage, d);
    n.allow_props(&["checksum", "chmod", "chown"], d);
    let (url, dest) = (n.str_arg(0, d), n.str_arg(1, d));
    let (url, dest) = (url?, dest?);
    Some(StepKind::Fetch {
        url,
        dest,
        checksum: n.str_prop("checksum", d),
        chmod: n.mode_prop("chmod", d),
        chown: n.str_prop("chown", d),
    })
}

pub(super) fn print(out: &mut Out<'_>, kind: &StepKind) {
    let StepKind::Fetch {
        url,
        dest,
        checksum,
        chmod,
        chown,
    } = kind
    else {
        return;
    };
    out.arg(url);
    out.arg(dest);
    out.prop("checksum", checksum);
    out.prop("chmod", chmod);
    out.prop("chown", chown);
}
