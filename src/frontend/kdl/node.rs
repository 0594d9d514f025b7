//! Reading one KDL node against what it may contain: argument counts,
//! value types, known properties. Problems become diagnostics.

use crate::diag::Code;
use crate::diag::{Diagnostic, Diagnostics, SourceId, Sources, Span, Spanned, did_you_mean};
use crate::frontend::ast::{Pair, Str};
use ::kdl::{KdlEntry, KdlNode, KdlValue};

pub struct Node<'a> {
    pub node: &'a KdlNode,
    pub source: SourceId,
    text: std::sync::Arc<str>,
}

impl<'a> Node<'a> {
    pub fn new(node: &'a KdlNode, source: SourceId, sources: &Sources) -> Node<'a> {
        let text = sources
            .get(source)
            .map(|f| f.text.clone())
            .unwrap_or_else(|| "".into());
        Node { node, source, text }
    }

    fn span_of(&self, s: miette::SourceSpan) -> Span {
        Span::new(self.source, s.offset(), s.len())
    }

    /// The node's span, trimmed to its first line (children blocks are not underlined).
    pub fn span(&self) -> Span {
        let full = self.span_of(self.node.span());
        let body = self
            .text
            .get(full.start as usize..full.end as usize)
            .unwrap_or("");
        let first_line = body
            .split('\n')
            .next()
            .unwrap_or("")
            .trim_end_matches(['{', ' ', '\t', '\r']);
        Span::new(self.source, full.start as usize, first_line.len().max(1))
    }

    pub fn name_span(&self) -> Span {
        self.span_of(self.node.name().span())
    }

    pub fn name(&self) -> Str {
        Spanned::new(self.name_span(), self.node.name().value().to_string())
    }

    fn args(&self) -> impl Iterator<Item = &'a KdlEntry> {
        self.node.entries().iter().filter(|e| e.name().is_none())
    }

    fn props(&self) -> impl Iterator<Item = &'a KdlEntry> {
        self.node.entries().iter().filter(|e| e.name().is_some())
    }

    fn prop(&self, key: &str) -> Option<&'a KdlEntry> {
        // The last occurrence wins, as in KDL; duplicates are reported by `allow_props`.
        self.props()
            .filter(|e| e.name().is_some_and(|n| n.value() == key))
            .last()
    }

    /// Span of an entry's value (without `key=`).
    fn value_span(&self, e: &KdlEntry) -> Span {
        let s = self.span_of(e.span());
        if e.name().is_none() {
            return s;
        }
        let body = self
            .text
            .get(s.start as usize..s.end as usize)
            .unwrap_or("");
        match body.find('=') {
            Some(i) => {
                let rest = &body[i + 1..];
                let skip = rest.len() - rest.trim_start().len();
                s.sub(i + 1 + skip, s.len())
            }
            None => s,
        }
    }

    pub fn prop_value_span(&self, key: &str) -> Option<Span> {
        self.prop(key).map(|e| self.value_span(e))
    }

    pub fn arity(&self, min: usize, max: Option<usize>, usage: &str, d: &mut Diagnostics) {
        let n = self.args().count();
        let name = self.node.name().value();
        if n < min {
            let want = match max {
                Some(m) if m == min => format!("{min}"),
                _ => format!("at least {min}"),
            };
            d.push(
                Diagnostic::new(
                    Code::SPEC_ARGUMENTS,
                    format!(
                        "`{name}` takes {want} argument{}, found {n}",
                        if min == 1 && max == Some(1) { "" } else { "s" }
                    ),
                )
                .with_label(self.span(), "missing arguments")
                .with_help(format!("usage: `{usage}`")),
            );
        } else if let Some(max) = max
            && n > max
        {
            let extra = self
                .args()
                .nth(max)
                .map(|e| self.value_span(e))
                .unwrap_or(self.span());
            let want = if max == 0 {
                "no arguments".to_string()
            } else if max == min {
                format!("{max} argument{}", if max == 1 { "" } else { "s" })
            } else {
                format!("at most {max} arguments")
            };
            d.push(
                Diagnostic::new(
                    Code::SPEC_ARGUMENTS,
                    format!("`{name}` takes {want}, found {n}"),
                )
                .with_label(extra, "unexpected argument")
                .with_help(format!(
                    "usage: `{usage}`; quote a value that contains spaces"
                )),
            );
        }
    }

    pub fn no_props(&self, d: &mut Diagnostics) {
        self.allow_props(&[], d);
    }

    pub fn allow_props(&self, allowed: &[&str], d: &mut Diagnostics) {
        let mut seen: Vec<&str> = Vec::new();
        let name = self.node.name().value();
        for e in self.props() {
            let Some(key) = e.name().map(|k| k.value()) else {
                continue;
            };
            let span = self.span_of(e.name().map_or(e.span(), |k| k.span()));
            if !allowed.contains(&key) {
                let mut diag = Diagnostic::new(
                    Code::SPEC_UNKNOWN_PROPERTY,
                    format!("`{name}` has no property `{key}`"),
                )
                .with_label(span, "unknown property");
                diag = match did_you_mean(key, allowed.iter().copied()) {
                    Some(s) => diag.with_help(format!("did you mean `{s}`?")),
                    None if allowed.is_empty() => {
                        diag.with_help(format!("`{name}` takes no properties"))
                    }
                    None => diag.with_help(format!(
                        "`{name}` accepts: {}",
                        allowed
                            .iter()
                            .map(|a| format!("`{a}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                };
                d.push(diag);
            } else if seen.contains(&key) {
                d.push(
                    Diagnostic::new(
                        Code::SPEC_DUPLICATE_PROPERTY,
                        format!("`{key}` is given twice"),
                    )
                    .with_label(span, "given again here"),
                );
            }
            seen.push(key);
        }
    }

    /// The nodes of the children block, each checked against `allowed` names.
    pub fn children(&self, allowed: &[&str], d: &mut Diagnostics) -> Vec<Node<'a>> {
        let Some(children) = self.node.children() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for child in children.nodes() {
            let c = Node {
                node: child,
                source: self.source,
                text: self.text.clone(),
            };
            let name = child.name().value();
            if allowed.contains(&name) {
                out.push(c);
                continue;
            }
            let mut diag = Diagnostic::new(
                Code::SPEC_CHILDREN,
                format!(
                    "`{name}` is not allowed inside `{}`",
                    self.node.name().value()
                ),
            )
            .with_label(c.name_span(), "unknown here");
            diag = match did_you_mean(name, allowed.iter().copied()) {
                Some(s) => diag.with_help(format!("did you mean `{s}`?")),
                None => diag.with_help(format!("allowed here: {}", allowed.join(", "))),
            };
            d.push(diag);
        }
        out
    }

    pub fn no_children(&self, d: &mut Diagnostics) {
        if let Some(children) = self.node.children() {
            let name = self.node.name().value();
            d.push(
                Diagnostic::new(
                    Code::SPEC_CHILDREN,
                    format!("`{name}` takes no children block"),
                )
                .with_label(self.span_of(children.span()), "unexpected block")
                .with_help("remove the `{ … }` block"),
            );
        }
    }

    fn string(&self, e: &KdlEntry, d: &mut Diagnostics) -> Option<Str> {
        let span = self.value_span(e);
        match e.value() {
            KdlValue::String(s) => Some(Spanned::new(span, s.clone())),
            KdlValue::Integer(i) => Some(Spanned::new(span, i.to_string())),
            other => {
                d.push(
                    Diagnostic::new(
                        Code::SPEC_TYPE,
                        format!("expected a string, found `{other}`"),
                    )
                    .with_label(span, "not a string")
                    .with_help("write the value in double quotes"),
                );
                None
            }
        }
    }

    pub fn str_arg(&self, i: usize, d: &mut Diagnostics) -> Option<Str> {
        let e = self.args().nth(i)?;
        self.string(e, d)
    }

    pub fn str_args(&self, d: &mut Diagnostics) -> Vec<Str> {
        self.args().filter_map(|e| self.string(e, d)).collect()
    }

    pub fn int_arg(&self, i: usize, d: &mut Diagnostics) -> Option<Spanned<i128>> {
        let e = self.args().nth(i)?;
        self.integer(e, "write a whole number without quotes, like `1`".into(), d)
    }

    pub fn int_prop(&self, key: &str, d: &mut Diagnostics) -> Option<Spanned<i128>> {
        let e = self.prop(key)?;
        self.integer(
            e,
            format!("write a whole number without quotes, like `{key}=10`"),
            d,
        )
    }

    fn integer(&self, e: &KdlEntry, help: String, d: &mut Diagnostics) -> Option<Spanned<i128>> {
        let span = self.value_span(e);
        match e.value() {
            KdlValue::Integer(v) => Some(Spanned::new(span, *v)),
            other => {
                d.push(
                    Diagnostic::new(
                        Code::SPEC_TYPE,
                        format!("expected a number, found `{other}`"),
                    )
                    .with_label(span, "not a number")
                    .with_help(help),
                );
                None
            }
        }
    }

    pub fn str_prop(&self, key: &str, d: &mut Diagnostics) -> Option<Str> {
        let e = self.prop(key)?;
        self.string(e, d)
    }

    pub fn required_str_prop(&self, key: &str, usage: &str, d: &mut Diagnostics) -> Option<Str> {
        let v = self.str_prop(key, d);
        if v.is_none() && self.prop(key).is_none() {
            let name = self.node.name().value();
            d.push(
                Diagnostic::new(
                    Code::SPEC_MISSING_PROPERTY,
                    format!("`{name}` needs `{key}=`"),
                )
                .with_label(self.span(), format!("no `{key}=` here"))
                .with_help(format!("usage: `{usage}`")),
            );
        }
        v
    }

    pub fn bool_prop(&self, key: &str, d: &mut Diagnostics) -> Option<bool> {
        let e = self.prop(key)?;
        match e.value() {
            KdlValue::Bool(b) => Some(*b),
            other => {
                d.push(
                    Diagnostic::new(
                        Code::SPEC_TYPE,
                        format!("expected `#true` or `#false`, found `{other}`"),
                    )
                    .with_label(self.value_span(e), "not a boolean")
                    .with_help(format!("write `{key}=#true`")),
                );
                None
            }
        }
    }

    /// A file mode: an octal string (`"0755"`) or an octal literal (`0o755`).
    /// A decimal number is refused: `755` would not mean what it looks like.
    pub fn mode_prop(&self, key: &str, d: &mut Diagnostics) -> Option<Str> {
        let e = self.prop(key)?;
        let span = self.value_span(e);
        match e.value() {
            KdlValue::String(s) => Some(Spanned::new(span, s.clone())),
            KdlValue::Integer(i) => {
                let repr = e.format().map(|f| f.value_repr.clone()).unwrap_or_default();
                if repr.starts_with("0o") {
                    Some(Spanned::new(span, format!("{i:o}")))
                } else {
                    d.push(
                        Diagnostic::new(
                            Code::SPEC_MODE,
                            format!("`{key}` must be written in octal"),
                        )
                        .with_label(span, "a decimal number")
                        .with_help(format!("write `{key}=0o{repr}` or `{key}=\"{repr}\"`")),
                    );
                    None
                }
            }
            other => {
                d.push(
                    Diagnostic::new(
                        Code::SPEC_TYPE,
                        format!("expected a file mode, found `{other}`"),
                    )
                    .with_label(span, "not a mode")
                    .with_help(format!("write `{key}=\"0644\"` or `{key}=0o644`")),
                );
                None
            }
        }
    }

    /// `KEY VALUE` as two arguments, or `KEY=VALUE` properties (several),
    /// or `KEY VALUE` children lines.
    pub fn pairs(&self, usage: &str, d: &mut Diagnostics) -> Vec<Pair> {
        let mut out = Vec::new();
        let args: Vec<&KdlEntry> = self.args().collect();
        match args.len() {
            0 => {}
            2 => {
                if let (Some(k), Some(v)) = (self.string(args[0], d), self.string(args[1], d)) {
                    out.push((k, v));
                }
            }
            n => {
                d.push(
                    Diagnostic::new(
                        Code::SPEC_ARGUMENTS,
                        format!(
                            "`{}` takes a key and a value, found {n} arguments",
                            self.node.name().value()
                        ),
                    )
                    .with_label(self.span(), "expected KEY VALUE")
                    .with_help(format!("usage: `{usage}`")),
                );
            }
        }
        for e in self.props() {
            let Some(k) = e.name() else { continue };
            if let Some(v) = self.string(e, d) {
                out.push((
                    Spanned::new(self.span_of(k.span()), k.value().to_string()),
                    v,
                ));
            }
        }
        if let Some(children) = self.node.children() {
            for child in children.nodes() {
                let c = Node {
                    node: child,
                    source: self.source,
                    text: self.text.clone(),
                };
                c.arity(1, Some(1), usage, d);
                c.no_props(d);
                c.no_children(d);
                if let Some(v) = c.str_arg(0, d) {
                    out.push((c.name(), v));
                }
            }
        }
        if out.is_empty() && args.is_empty() {
            d.push(
                Diagnostic::new(
                    Code::SPEC_ARGUMENTS,
                    format!(
                        "`{}` needs at least one KEY VALUE",
                        self.node.name().value()
                    ),
                )
                .with_label(self.span(), "nothing to set")
                .with_help(format!("usage: `{usage}`")),
            );
        }
        out
    }
}
