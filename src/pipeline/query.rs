//! `kiln query reads FILE`: which steps read a file, found as a build
//! finds what a step reads: the context is listed with its ignore file,
//! each `copy` picks with its own patterns and excludes, each mount
//! reads its source directory. A spec file is read by every stage
//! declared in it. A file that is gone (deleted since a commit) is read
//! by the steps whose patterns would pick it.
//!
//! `kiln affected --since REF`: the stages whose keys a change since a
//! commit may change: those with a step that reads a changed file, and
//! every stage that needs one of them.

use crate::context::{Listing, Snapshot};
use crate::diag::{Diagnostic, Sources, Spanned};
use crate::exec::steps::copy_rules;
use crate::ir::{ContextId, CopyFrom, Graph, MountKind, Op, PluginSource, StageId};
use crate::model::tree::{self, Entry, Kind, Links, Tree};
use crate::store::layout::Layout;
use std::path::{Path, PathBuf};

/// A step that reads the file, or a stage whose spec file it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reader {
    pub stage: StageId,
    /// `None`: the stage is declared in the file.
    pub step: Option<usize>,
    /// How: `copy`, `mount`, `host input`, `plugin`, `spec`, `lock`,
    /// `ignore file`, `context outside the checkout`.
    pub how: &'static str,
}

/// Answers which steps read a file, listing each context once.
pub struct Readers<'a> {
    graph: &'a Graph,
    layout: Layout,
    listed: Vec<std::sync::OnceLock<Result<std::sync::Arc<Snapshot>, Diagnostic>>>,
    /// The lock file beside the spec: read by every stage built on an
    /// image, and every `fetch` and `git` step.
    lock: Option<PathBuf>,
    /// The spec files, by source id (as they are resolved once).
    specs: Vec<PathBuf>,
    /// The spec file named on the command line and the files that declare
    /// a context or a plugin: what they declare reaches every stage.
    everywhere: Vec<PathBuf>,
    /// Each context's directory, resolved.
    roots: Vec<PathBuf>,
}

impl<'a> Readers<'a> {
    pub fn new(graph: &'a Graph, sources: &'a Sources, layout: Layout, spec: &Path) -> Readers<'a> {
        Readers {
            graph,
            layout,
            listed: graph.contexts.iter().map(|_| Default::default()).collect(),
            lock: absolute(spec).parent().map(|d| d.join("kiln.lock")),
            specs: sources.all().iter().map(|f| absolute(&f.path)).collect(),
            everywhere: std::iter::once(absolute(spec))
                .chain(
                    graph
                        .contexts
                        .iter()
                        .filter_map(|c| c.span)
                        .chain(graph.plugins.iter().map(|p| p.span))
                        .filter_map(|span| sources.get(span.source))
                        .map(|f| absolute(&f.path)),
                )
                .collect(),
            roots: graph.contexts.iter().map(|c| directory(&c.path)).collect(),
        }
    }

    /// Context `id`, listed as a build lists it (once).
    fn context(&self, id: ContextId) -> Result<std::sync::Arc<Snapshot>, Diagnostic> {
        self.listed[id.0 as usize]
            .get_or_init(|| {
                let c = self.graph.context(id);
                let listing = Listing {
                    exclude: &[],
                    ignore_file: c.ignore_file.as_deref(),
                    trust_index: true,
                };
                Snapshot::open(&c.path, listing, &self.layout).map(std::sync::Arc::new)
            })
            .clone()
    }

    /// Every file the contexts hold, as absolute paths.
    pub fn context_files(&self) -> Result<Vec<PathBuf>, Diagnostic> {
        let mut out = Vec::new();
        for c in &self.graph.contexts {
            let snap = self.context(c.id)?;
            let root = &self.roots[c.id.0 as usize];
            out.extend(
                snap.tree
                    .entries
                    .iter()
                    .filter(|(_, e)| !e.is_dir())
                    .map(|(p, _)| root.join(p)),
            );
        }
        Ok(out)
    }

    /// The steps that read `file` (a path on this machine).
    pub fn of(&self, file: &Path) -> Result<Vec<Reader>, Diagnostic> {
        let graph = self.graph;
        let file = absolute(file);
        let mut out = Vec::new();
        // Spec files: every stage declared in one reads it; the root spec
        // (args, contexts, plugins, exports) and a file declaring a context
        // or a plugin, every stage.
        let everything = self.everywhere.contains(&file);
        for s in &graph.stages {
            if everything || self.specs.get(s.span.source.0 as usize) == Some(&file) {
                out.push(Reader {
                    stage: s.id,
                    step: None,
                    how: "spec",
                });
            }
        }
        for c in &graph.contexts {
            let Ok(rel) = file.strip_prefix(&self.roots[c.id.0 as usize]) else {
                continue;
            };
            let Some(rel) = rel.to_str() else {
                continue;
            };
            let snap = self.context(c.id)?;
            // An ignore file decides what every reader of the context sees.
            let ignore = match &c.ignore_file {
                Some(f) => absolute(f) == file,
                None => crate::context::IGNORE_FILES.contains(&rel),
            };
            if ignore {
                all_readers(graph, c.id, "ignore file", &mut out);
            }
            context_readers(graph, c.id, &snap.tree, &file, rel, &mut out);
        }
        for s in &graph.stages {
            for (i, step) in s.steps.iter().enumerate() {
                let how = match &step.op {
                    Op::Run(r) if r.host_inputs.iter().any(|h| absolute(Path::new(h)) == file) => {
                        "host input"
                    }
                    Op::Wasm(w) => match &graph.plugins[w.plugin.0 as usize].source {
                        PluginSource::Host(p) if absolute(p) == file => "plugin",
                        _ => continue,
                    },
                    Op::Fetch(_) | Op::Git(_) if self.lock.as_ref() == Some(&file) => "lock",
                    _ => continue,
                };
                out.push(Reader {
                    stage: s.id,
                    step: Some(i),
                    how,
                });
            }
        }
        if self.lock.as_ref() == Some(&file) {
            out.extend(
                graph
                    .stages
                    .iter()
                    .filter(|s| matches!(s.base, crate::ir::Base::Image(_)))
                    .map(|s| Reader {
                        stage: s.id,
                        step: None,
                        how: "lock",
                    }),
            );
        }
        out.sort_by_key(|r| (r.stage, r.step));
        out.dedup();
        Ok(out)
    }
}

/// The stages a change since `rev` may change: the changed files (as
/// `git diff --name-only` and `git status` name them, with the contexts'
/// new files), the stages with a step that reads one, and every stage
/// that needs one of those (a `run` step's output is unknown until it
/// runs, so all of its dependants count), in build order.
pub fn affected(
    readers: &Readers<'_>,
    spec: &Path,
    rev: &str,
) -> Result<(Vec<PathBuf>, Vec<StageId>), Diagnostic> {
    let dir = absolute(spec)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let files = readers.context_files()?;
    let (root, changed) = crate::git::changes::changed_since(&dir, rev, &files).map_err(|e| {
        Diagnostic::new(crate::diag::Code::CLI_QUERY, e).with_help(
            "run it inside a git checkout, naming a commit it has (`HEAD~1`, `main`, a commit id)",
        )
    })?;
    let mut hit = Vec::new();
    let mut found = Vec::new();
    for f in &changed {
        found.extend(readers.of(f)?);
    }
    // A context outside the checkout: git cannot say what changed in it.
    for c in &readers.graph.contexts {
        if !readers.roots[c.id.0 as usize].starts_with(&root) {
            all_readers(
                readers.graph,
                c.id,
                "context outside the checkout",
                &mut found,
            );
        }
    }
    for r in found {
        if !hit.contains(&r.stage) {
            hit.push(r.stage);
        }
    }
    Ok((changed, readers.graph.dependants_of(&hit)))
}

/// Every step that reads context `ctx` (a copy from it, a mount of it).
fn all_readers(graph: &Graph, ctx: ContextId, how: &'static str, out: &mut Vec<Reader>) {
    for s in &graph.stages {
        for (i, step) in s.steps.iter().enumerate() {
            let mut reads = false;
            step.op
                .reads(&mut |r| reads |= r == crate::ir::Read::Context(ctx));
            if reads {
                out.push(Reader {
                    stage: s.id,
                    step: Some(i),
                    how,
                });
            }
        }
    }
}

/// The steps that read `rel` (`file`) of context `ctx`, listed as
/// `listed`: a file the listing leaves out (ignored) is read by none; one
/// that is gone is read by the steps whose patterns would pick it.
fn context_readers(
    graph: &Graph,
    ctx: ContextId,
    listed: &Tree,
    file: &Path,
    rel: &str,
    out: &mut Vec<Reader>,
) {
    let gone;
    let listed = if rel.is_empty() || listed.get(rel).is_some() {
        listed
    } else if std::fs::symlink_metadata(file).is_ok() {
        return;
    } else {
        // Gone: picked as if it were the context's only file.
        let mut t = Tree::new();
        let _ = t.mkdir_all(tree::parent(rel), &Entry::dir(0o755, 0, 0));
        let file = Entry {
            kind: Kind::Fifo,
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        let _ = t.put(rel, file, false);
        gone = t;
        &gone
    };
    // A mount's source as written, and through the links of the context.
    let below = |source: &str| {
        let dir = tree::components(source, Links::Rootfs)
            .unwrap_or_default()
            .join("/");
        let resolved = listed
            .resolve(&dir, true, Links::Confined)
            .unwrap_or_else(|_| dir.clone());
        [dir, resolved]
            .iter()
            .any(|d| d.is_empty() || rel == d || rel.starts_with(&format!("{d}/")))
    };
    for s in &graph.stages {
        for (i, step) in s.steps.iter().enumerate() {
            let from_here = |f: &CopyFrom| *f == CopyFrom::Context(ctx);
            let how = match &step.op {
                Op::Copy(c) if from_here(&c.from) => {
                    if !copies(listed, &c.sources, &c.exclude, rel) {
                        continue;
                    }
                    "copy"
                }
                Op::Run(r) => {
                    let mounted = r.mounts.iter().any(|m| match &m.kind {
                        MountKind::Bind { from, source, .. } => from_here(from) && below(source),
                        MountKind::Cache {
                            from: Some(from),
                            source,
                            ..
                        } => from_here(from) && below(source),
                        _ => false,
                    });
                    if !mounted {
                        continue;
                    }
                    "mount"
                }
                Op::Wasm(w) => {
                    if !w
                        .mounts
                        .iter()
                        .any(|m| from_here(&m.from) && below(&m.source))
                    {
                        continue;
                    }
                    "mount"
                }
                _ => continue,
            };
            out.push(Reader {
                stage: s.id,
                step: Some(i),
                how,
            });
        }
    }
}

/// Whether a copy of `sources` (less `exclude`) from the context picks
/// `rel`, by the rules it copies with.
fn copies(listed: &Tree, sources: &[String], exclude: &[String], rel: &str) -> bool {
    let patterns: Vec<Spanned<String>> = sources
        .iter()
        .map(|s| {
            Spanned::new(
                crate::diag::Span::new(crate::diag::SourceId(0), 0, 0),
                s.clone(),
            )
        })
        .collect();
    // A pattern that matches nothing fails the whole copy: each is asked
    // alone.
    patterns.iter().any(|p| {
        let Ok(mut picked) = copy_rules::pick(listed, std::slice::from_ref(p), Links::Confined, "")
        else {
            return false;
        };
        if copy_rules::exclude(&mut picked, exclude).is_err() {
            return false;
        }
        picked.iter().any(|p| {
            p.items.iter().any(|(item, _)| {
                let path = if item.is_empty() {
                    p.path.clone()
                } else if p.path.is_empty() {
                    item.clone()
                } else {
                    tree::join(&p.path, item)
                };
                path == rel
            })
        })
    })
}

/// `p` made absolute and normal, through links where it exists.
/// A directory, resolved through links.
fn directory(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| absolute(p))
}

/// `p` made absolute, its directory resolved through links, never its
/// last part: a link is the file a step reads, not its target (and a file
/// that is gone keeps its name).
fn absolute(p: &Path) -> PathBuf {
    let last_is_name = p.file_name().is_some_and(|n| n != "." && n != "..");
    if !last_is_name {
        return std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    }
    let joined = std::env::current_dir()
        .map(|d| d.join(p))
        .unwrap_or_else(|_| p.to_path_buf());
    match (
        joined.parent().map(std::fs::canonicalize),
        joined.file_name(),
    ) {
        (Some(Ok(dir)), Some(name)) => dir.join(name),
        _ => joined,
    }
}
