//! Turning [`Diagnostic`]s into text with miette's graphical handler.

use super::{Diagnostic, SourceId, Sources};
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource};
use std::fmt;
use std::sync::Arc;

/// How to render: colour and width.
#[derive(Clone, Copy, Debug)]
pub struct RenderOptions {
    pub color: bool,
    pub width: usize,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            color: false,
            width: 100,
        }
    }
}

/// The miette view of one diagnostic, bound to one source file.
struct View {
    message: String,
    code: Option<String>,
    help: Option<String>,
    severity: miette::Severity,
    source: Option<NamedSource<Arc<str>>>,
    labels: Vec<LabeledSpan>,
    related: Vec<View>,
}

impl fmt::Debug for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for View {}

impl miette::Diagnostic for View {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.code
            .as_ref()
            .map(|c| Box::new(c) as Box<dyn fmt::Display>)
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(self.severity)
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            None
        } else {
            Some(Box::new(self.labels.iter().cloned()))
        }
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn miette::Diagnostic> + 'a>> {
        if self.related.is_empty() {
            None
        } else {
            Some(Box::new(
                self.related.iter().map(|r| r as &dyn miette::Diagnostic),
            ))
        }
    }
}

fn view(diag: &Diagnostic, sources: &Sources) -> View {
    let severity = if diag.warning {
        miette::Severity::Warning
    } else {
        miette::Severity::Error
    };
    let mut by_source: Vec<(SourceId, Vec<LabeledSpan>)> = Vec::new();
    for label in &diag.labels {
        let text = if label.text.is_empty() {
            None
        } else {
            Some(label.text.clone())
        };
        let ls = LabeledSpan::new(text, label.span.start as usize, label.span.len());
        match by_source
            .iter_mut()
            .find(|(id, _)| *id == label.span.source)
        {
            Some((_, v)) => v.push(ls),
            None => by_source.push((label.span.source, vec![ls])),
        }
    }
    let mut help = diag.help.as_deref().map(str::to_string);
    for note in &diag.notes {
        help = Some(match help {
            Some(h) => format!("{h}\nnote: {note}"),
            None => format!("note: {note}"),
        });
    }
    let named = |id: SourceId| {
        sources
            .get(id)
            .map(|f| NamedSource::new(&f.name, f.text.clone()).with_language("kdl"))
    };
    let mut groups = by_source.into_iter();
    let (source, labels) = match groups.next() {
        Some((id, labels)) => (named(id), labels),
        None => (None, Vec::new()),
    };
    let related = groups
        .map(|(id, labels)| View {
            message: "also here".into(),
            code: None,
            help: None,
            severity: miette::Severity::Advice,
            source: named(id),
            labels,
            related: Vec::new(),
        })
        .collect();
    View {
        message: diag.to_string(),
        code: Some(diag.code.to_string()),
        help,
        severity,
        source,
        labels,
        related,
    }
}

/// Render a diagnostic as text (no trailing newline guarantees).
pub fn render(diag: &Diagnostic, sources: &Sources, options: RenderOptions) -> String {
    let theme = if options.color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(options.width)
        // Paths (logs, destinations) stay whole on one line, so they can
        // be copied.
        .with_break_words(false)
        .with_links(false);
    let mut out = String::new();
    if handler
        .render_report(&mut out, &view(diag, sources))
        .is_err()
    {
        out = format!("error: {}\n", diag.message);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Code;
    use crate::diag::Span;

    #[test]
    fn renders_file_line_and_underline() {
        let sources = Sources::new();
        let id = sources.add(
            "kiln.kdl".into(),
            "kiln.kdl".into(),
            "stage a {\n    frm scratch\n}\n".into(),
        );
        let d = Diagnostic::new(Code::SPEC_UNKNOWN_NODE, "unknown step `frm`")
            .with_label(Span::new(id, 14, 3), "not a step")
            .with_help("did you mean `from`?");
        let text = render(&d, &sources, RenderOptions::default());
        assert!(text.contains("kiln.kdl:2:5"), "{text}");
        assert!(text.contains("───"), "{text}");
        assert!(text.contains("did you mean `from`?"), "{text}");
    }
}
