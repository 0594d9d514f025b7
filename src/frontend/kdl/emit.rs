//! Writing a spec back as KDL: what `kiln import` prints. The output reads
//! back (with [`super::load`]) to the same spec, strings and all; spans are
//! not kept.

use crate::frontend::ast::{Spec, StageDecl};
use std::fmt::Write;

pub(super) const INDENT: &str = "    ";

/// Comments to put in the output: lines before everything, and one per stage.
#[derive(Debug, Default)]
pub struct Comments {
    pub header: Vec<String>,
    /// By stage index; `None` for no comment.
    pub stages: Vec<Option<String>>,
}

/// The spec as a formatted KDL v2 document.
pub fn write(spec: &Spec, comments: &Comments) -> String {
    let mut out = String::new();
    for line in &comments.header {
        comment(&mut out, "", line);
    }
    out.push_str("kiln 1\n");
    if !spec.args.is_empty() {
        out.push('\n');
    }
    for a in &spec.args {
        let _ = write!(out, "arg {}", ident(&a.name.value));
        if let Some(d) = &a.default {
            let _ = write!(out, " default={}", string(&d.value, ""));
        }
        out.push('\n');
    }
    if !spec.contexts.is_empty() {
        out.push('\n');
    }
    for c in &spec.contexts {
        let _ = writeln!(
            out,
            "context {} path={}",
            ident(&c.name.value),
            string(&c.path.value, "")
        );
    }
    if !spec.plugins.is_empty() {
        out.push('\n');
    }
    for p in &spec.plugins {
        let _ = write!(out, "plugin {}", ident(&p.name.value));
        for (k, v) in [("path", &p.path), ("url", &p.url)] {
            if let Some(v) = v {
                let _ = write!(out, " {k}={}", string(&v.value, ""));
            }
        }
        if let Some(b) = &p.blake3 {
            let _ = write!(out, " blake3={}", string(&b.value, ""));
        }
        if let Some(f) = &p.from {
            let _ = write!(out, " from={}", string(&f.value, ""));
        }
        out.push('\n');
    }
    for (i, s) in spec.stages.iter().enumerate() {
        out.push('\n');
        if let Some(Some(c)) = comments.stages.get(i) {
            comment(&mut out, "", c);
        }
        stage(&mut out, s);
    }
    if !spec.exports.is_empty() {
        out.push_str("\nexport {\n");
        for e in &spec.exports {
            let _ = write!(out, "{INDENT}{}", ident(&e.stage.value));
            for (k, v) in [("to", &e.to), ("image", &e.image)] {
                if let Some(v) = v {
                    let _ = write!(out, " {k}={}", string(&v.value, INDENT));
                }
            }
            for (k, v) in [
                ("format", &e.format),
                ("when", &e.when),
                ("tag", &e.tag),
                ("compression", &e.compression),
            ] {
                if let Some(v) = v {
                    let _ = write!(out, " {k}={}", string(&v.value, INDENT));
                }
            }
            if e.provenance {
                out.push_str(" provenance=#true");
            }
            if e.squash {
                out.push_str(" squash=#true");
            }
            out.push('\n');
        }
        out.push_str("}\n");
    }
    out
}

fn comment(out: &mut String, indent: &str, text: &str) {
    for line in text.lines() {
        let _ = writeln!(out, "{indent}// {}", line.trim_end());
    }
}

fn stage(out: &mut String, s: &StageDecl) {
    let _ = writeln!(out, "stage {} {{", ident(&s.name.value));
    let i2 = INDENT;
    if let Some(f) = &s.from {
        let _ = writeln!(out, "{i2}from {}", ident(&f.value));
    } else if let Some(img) = &s.image {
        let _ = writeln!(out, "{i2}from image={}", string(&img.value, i2));
    }
    for step in &s.steps {
        out.push_str(i2);
        out.push_str(step.kind.name());
        super::steps::print(out, &step.kind);
        out.push('\n');
    }
    out.push_str("}\n");
}

/// Whether `s` can be written as a bare KDL identifier.
fn is_bare(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !matches!(s, "true" | "false" | "null" | "inf" | "nan")
}

/// A name (stage, arg, context): bare when it can be.
pub(super) fn ident(s: &str) -> String {
    if is_bare(s) { s.to_string() } else { quoted(s) }
}

/// A key in a `KEY VALUE` line: a node name, bare or quoted.
pub(super) fn key(s: &str) -> String {
    ident(s)
}

/// Characters KDL does not allow literally in a document.
fn must_escape(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

fn escape_char(out: &mut String, c: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        '"' => out.push_str("\\\""),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        c if must_escape(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// A one-line quoted string.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        escape_char(&mut out, c);
    }
    out.push('"');
    out
}

/// A string value: multi-line text as a KDL multi-line string indented
/// one level below `indent`, everything else quoted on one line.
pub fn string(s: &str, indent: &str) -> String {
    if let Some(m) = multiline(s, indent)
        && reads_back(&m, s)
    {
        return m;
    }
    quoted(s)
}

fn multiline(s: &str, indent: &str) -> Option<String> {
    // One line with a final newline reads better as `"text\n"`.
    if !s.trim_end_matches('\n').contains('\n') {
        return None;
    }
    let inner = format!("{indent}{INDENT}");
    // Quotes stay as they are unless three in a row would end the string.
    let quotes = s.contains("\"\"\"");
    let mut out = String::from("\"\"\"\n");
    for line in s.split('\n') {
        // A line of only spaces would read back empty.
        if !line.is_empty() && line.trim().is_empty() {
            return None;
        }
        if !line.is_empty() {
            out.push_str(&inner);
            for c in line.chars() {
                match c {
                    '\t' => out.push('\t'),
                    '"' if !quotes => out.push('"'),
                    c => escape_char(&mut out, c),
                }
            }
        }
        out.push('\n');
    }
    out.push_str(&inner);
    out.push_str("\"\"\"");
    Some(out)
}

/// Whether `text` parses as a KDL value equal to `expected`.
fn reads_back(text: &str, expected: &str) -> bool {
    let doc = format!("n {text}\n");
    let Ok(parsed) = doc.parse::<::kdl::KdlDocument>() else {
        return false;
    };
    parsed
        .nodes()
        .first()
        .and_then(|n| n.entries().first())
        .and_then(|e| e.value().as_string())
        == Some(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_read_back() {
        for s in [
            "plain",
            "with \"quotes\" and \\backslash",
            "line one\nline two\n",
            "  indented\n\tand tabbed\n",
            "no final newline\nsecond",
            "\n\nleading blank lines",
            "spaces only line\n   \nafter",
            "control \u{1} and bidi \u{202E} and bom \u{FEFF}",
            "\"\"\" triple quotes \"\"\"\nnext",
            "",
        ] {
            let out = string(s, "    ");
            assert!(reads_back(&out, s), "{s:?} wrote {out}");
        }
    }

    #[test]
    fn multiline_text_is_readable() {
        let out = string("set -e\nmake all\n", "    ");
        assert_eq!(
            out,
            "\"\"\"\n        set -e\n        make all\n\n        \"\"\""
        );
    }

    #[test]
    fn names_are_bare_when_they_can_be() {
        assert_eq!(ident("build"), "build");
        assert_eq!(ident("stage-0"), "stage-0");
        assert_eq!(ident("true"), "\"true\"");
        assert_eq!(ident("1x"), "\"1x\"");
        assert_eq!(ident("a b"), "\"a b\"");
    }
}
