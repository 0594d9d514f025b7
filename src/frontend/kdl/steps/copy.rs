//! `copy SRC… DEST [from=STAGE|context=NAME] [chmod=MODE] [chown=OWNER]
//! [parents=#true] [unpack=#true] { exclude PATTERN… }`

use super::{Out, Syntax, child_string};
use crate::diag::Code;
use crate::diag::{Diagnostic, Diagnostics};
use crate::frontend::ast::StepKind;
use crate::frontend::kdl::node::Node;
use std::fmt::Write;

pub(super) const SYNTAX: Syntax = Syntax {
    name: "copy",
    children: true,
    parse,
};

fn parse(n: &Node, d: &mut Diagnostics) -> Option<StepKind> {
    let usage = "copy SRC… DEST [from=STAGE|context=NAME] [chmod=MODE] [chown=USER:GROUP] [parents=#true] [unpack=#true] { exclude PATTERN… }";
    n.arity(2, None, usage, d);
    n.allow_props(
        &["from", "context", "chmod", "chown", "parents", "unpack"],
        d,
    );
    let mut exclude = Vec::new();
    for c in n.children(&["exclude"], d) {
        c.arity(1, None, "exclude PATTERN…", d);
        c.no_props(d);
        c.no_children(d);
        exclude.extend(c.str_args(d));
    }
    let mut all = n.str_args(d);
    if all.len() < 2 {
        return None;
    }
    let dest = all.pop()?;
    let from = n.str_prop("from", d);
    let context = n.str_prop("context", d);
    if let (Some(f), Some(c)) = (&from, &context) {
        d.push(
            Diagnostic::new(
                Code::SPEC_COPY_SOURCE,
                "`copy` takes `from=` or `context=`, not both",
            )
            .with_label(f.span, "from a stage")
            .with_label(c.span, "from a context"),
        );
    }
    Some(StepKind::Copy {
        sources: all,
        dest,
        from,
        context,
        chmod: n.mode_prop("chmod", d),
        chown: n.str_prop("chown", d),
        exclude,
        parents: n.bool_prop("parents", d).unwrap_or(false),
        unpack: n.bool_prop("unpack", d).unwrap_or(false),
    })
}

pub(super) fn print(out: &mut Out<'_>, kind: &StepKind) {
    let StepKind::Copy {
        sources,
        dest,
        from,
        context,
        chmod,
        chown,
        exclude,
        parents,
        unpack,
    } = kind
    else {
        return;
    };
    out.args(sources);
    out.arg(dest);
    out.name_prop("from", from);
    out.name_prop("context", context);
    out.prop("chmod", chmod);
    out.prop("chown", chown);
    out.flag("parents", *parents);
    out.flag("unpack", *unpack);
    // One `exclude` line with every pattern.
    if !exclude.is_empty() {
        out.block(&[exclude], |line, patterns| {
            line.push_str("exclude");
            for e in patterns.iter() {
                let _ = write!(line, " {}", child_string(&e.value));
            }
        });
    }
}
