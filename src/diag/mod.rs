//! Source files, spans and diagnostics.
//!
//! Every front end records where each piece of a spec came from as a [`Span`]
//! (a source id plus a byte range). Errors anywhere in kiln are
//! [`Diagnostic`]s: a message, labelled spans, a help line and a class that
//! decides the exit code. Rendering happens only in `cli`, through miette.
//! This module never prints.

mod codes;
mod render;

pub use codes::Code;

pub use render::{RenderOptions, render};

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Index of a source file in [`Sources`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceId(pub u32);

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Span {
    pub source: SourceId,
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(source: SourceId, start: usize, len: usize) -> Span {
        Span {
            source,
            start: start as u32,
            end: (start + len) as u32,
        }
    }

    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// A span inside this one, `offset` bytes from its start.
    pub fn sub(&self, offset: usize, len: usize) -> Span {
        let start = (self.start as usize + offset).min(self.end as usize);
        let end = (start + len).min(self.end as usize);
        Span {
            source: self.source,
            start: start as u32,
            end: end as u32,
        }
    }
}

/// A value and where it was written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spanned<T> {
    pub span: Span,
    pub value: T,
}

impl<T> Spanned<T> {
    pub fn new(span: Span, value: T) -> Spanned<T> {
        Spanned { span, value }
    }
}

/// One loaded source file.
#[derive(Debug)]
pub struct SourceFile {
    /// The name shown in diagnostics (relative to the working directory when possible).
    pub name: String,
    /// The path the file was read from.
    pub path: PathBuf,
    pub text: Arc<str>,
}

/// All source files of a build, shared by every layer.
#[derive(Debug, Default)]
pub struct Sources {
    files: RwLock<Vec<Arc<SourceFile>>>,
}

impl Sources {
    pub fn new() -> Sources {
        Sources::default()
    }

    pub fn add(&self, name: String, path: PathBuf, text: String) -> SourceId {
        let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
        files.push(Arc::new(SourceFile {
            name,
            path,
            text: text.into(),
        }));
        SourceId((files.len() - 1) as u32)
    }

    pub fn get(&self, id: SourceId) -> Option<Arc<SourceFile>> {
        let files = self.files.read().unwrap_or_else(|e| e.into_inner());
        files.get(id.0 as usize).cloned()
    }

    /// Every file, in the order they were added.
    pub fn all(&self) -> Vec<Arc<SourceFile>> {
        self.files.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn find(&self, path: &Path) -> Option<SourceId> {
        let files = self.files.read().unwrap_or_else(|e| e.into_inner());
        files
            .iter()
            .position(|f| f.path == path)
            .map(|i| SourceId(i as u32))
    }

    /// The text a span covers, or an empty string for an unknown span.
    pub fn text(&self, span: Span) -> String {
        self.get(span.source)
            .and_then(|f| {
                f.text
                    .get(span.start as usize..span.end as usize)
                    .map(String::from)
            })
            .unwrap_or_default()
    }

    /// 1-based line and column of a span's start.
    pub fn line_col(&self, span: Span) -> (usize, usize) {
        let Some(file) = self.get(span.source) else {
            return (0, 0);
        };
        let before = &file.text[..(span.start as usize).min(file.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    /// `file:line:col` of a span, for plain messages.
    pub fn location(&self, span: Span) -> String {
        let name = self
            .get(span.source)
            .map(|f| f.name.clone())
            .unwrap_or_default();
        let (line, col) = self.line_col(span);
        format!("{name}:{line}:{col}")
    }
}

/// What kind of failure a diagnostic reports; decides wording and exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// The user's input is wrong: a spec, a command-line argument, a context path.
    User,
    /// A step failed while building (a copy that matched nothing, a failing plugin).
    Build,
    /// The environment failed: disk, permissions, a lock, a missing tool.
    Environment,
    /// A bug in kiln.
    Internal,
}

impl Class {
    /// The process exit code for this class.
    pub fn exit_code(self) -> u8 {
        match self {
            Class::Build => 1,
            Class::User => 2,
            Class::Environment => 3,
            Class::Internal => 70,
        }
    }
}

/// A labelled span of a diagnostic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub span: Span,
    pub text: String,
}

/// An error or warning, with everything needed to show it well.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// What it is, and so its class (see [`Diagnostic::class`]).
    pub code: Code,
    pub message: String,
    pub labels: Vec<Label>,
    pub help: Option<Box<str>>,
    /// The stage it happened in, shown once before the message.
    pub stage: Option<Box<str>>,
    pub notes: Vec<String>,
    pub warning: bool,
}

impl Diagnostic {
    /// An error of this code (whose class it takes).
    pub fn new(code: Code, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            message: message.into(),
            labels: Vec::new(),
            help: code.help().map(Box::from),
            stage: None,
            notes: Vec::new(),
            warning: false,
        }
    }

    pub fn internal(message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(Code::INTERNAL, message)
    }

    pub fn warning(code: Code, message: impl Into<String>) -> Diagnostic {
        let mut d = Diagnostic::new(code, message);
        d.warning = true;
        d
    }

    /// A build stopped by the user (Ctrl-C): what every command that
    /// builds says.
    pub fn interrupted() -> Diagnostic {
        Diagnostic::new(Code::INTERRUPTED, "the build was interrupted")
    }

    /// What kind of failure this is; decides the exit code.
    pub fn class(&self) -> Class {
        self.code.class()
    }

    /// Whether this reports damage to the store (a missing or corrupt
    /// object), which rebuilding without the cache repairs.
    pub fn is_damage(&self) -> bool {
        self.code == Code::STORE_DAMAGED
    }

    pub fn with_label(mut self, span: Span, text: impl Into<String>) -> Diagnostic {
        self.labels.push(Label {
            span,
            text: text.into(),
        });
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into().into_boxed_str());
        self
    }

    /// The stage it happened in (kept if one is named already: the
    /// innermost stage is where it happened).
    pub fn in_stage(mut self, stage: &str) -> Diagnostic {
        if self.stage.is_none() {
            self.stage = Some(stage.into());
        }
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    /// An I/O failure on `path`, classed as an environment error. A full
    /// disk says so, with the path, and what to do.
    pub fn io(what: &str, path: &Path, err: &std::io::Error) -> Diagnostic {
        let d = Diagnostic::new(Code::IO, io_message(what, path, err));
        if crate::fsutil::is_disk_full(err) {
            d.with_help(
                "free some space on that disk (`kiln gc --max-size SIZE` shrinks the cache), then run the build again; nothing kiln had stored is damaged",
            )
        } else {
            d
        }
    }
}

/// `what `path`: error`, or for a full disk `what `path`: the disk is full (…)`.
pub fn io_message(what: &str, path: &Path, err: &std::io::Error) -> String {
    if crate::fsutil::is_disk_full(err) {
        format!("{what} `{}`: the disk is full ({err})", path.display())
    } else {
        format!("{what} `{}`: {err}", path.display())
    }
}

impl std::fmt::Display for Diagnostic {
    /// The message, after the stage it happened in.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(stage) = &self.stage {
            write!(f, "stage `{stage}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diagnostic {}

/// Several diagnostics, as returned by parsers and the compiler.
pub type Diagnostics = Vec<Diagnostic>;

/// The closest candidate to `name` by edit distance, if it is close enough
/// to be a plausible typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    for candidate in candidates {
        let score = strsim::jaro_winkler(name, candidate);
        if score > 0.8 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, candidate));
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let sources = Sources::new();
        let id = sources.add("a.kdl".into(), "a.kdl".into(), "ab\ncd\n".into());
        assert_eq!(sources.line_col(Span::new(id, 0, 1)), (1, 1));
        assert_eq!(sources.line_col(Span::new(id, 4, 1)), (2, 2));
        assert_eq!(sources.location(Span::new(id, 3, 1)), "a.kdl:2:1");
    }

    #[test]
    fn a_code_s_help_is_the_default_and_a_diagnostic_s_own_replaces_it() {
        let d = Diagnostic::new(Code::EXPLAIN_NONE, "no build is recorded yet");
        assert_eq!(d.help.as_deref(), Some("run `kiln build` first"));
        let d = d.with_help("build it");
        assert_eq!(d.help.as_deref(), Some("build it"));
        assert_eq!(Diagnostic::new(Code::IO, "x").help, None);
    }

    #[test]
    fn the_stage_is_shown_once_the_innermost() {
        let d = Diagnostic::new(Code::COPY_NO_MATCH, "nothing matched")
            .in_stage("inner")
            .in_stage("outer");
        assert_eq!(d.to_string(), "stage `inner`: nothing matched");
        assert_eq!(d.message, "nothing matched");
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        let names = ["stage", "export", "include"];
        assert_eq!(did_you_mean("stgae", names), Some("stage"));
        assert_eq!(did_you_mean("exprot", names), Some("export"));
        assert_eq!(did_you_mean("zebra", names), None);
    }

    #[test]
    fn sub_span_is_clamped() {
        let s = Span::new(SourceId(0), 10, 5);
        assert_eq!(
            s.sub(2, 10),
            Span {
                source: SourceId(0),
                start: 12,
                end: 15
            }
        );
    }
}
