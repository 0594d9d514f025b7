//! `kiln query reads FILE`: which steps read a file, found as a build
//! finds what a step reads: the context is listed with its ignore file,
//! each `copy` picks with its own patterns and excludes, each mount
//! reads its source directory. A spec file is read by every stage
//! declared in it.

use crate::context::{Listing, Snapshot};
use crate::diag::{Diagnostic, Sources, Spanned};
use crate::exec::steps::copy_rules;
use crate::ir::{ContextId, CopyFrom, Graph, MountKind, Op, PluginSource, StageId};
use crate::model::tree::{self, Links};
use crate::store::layout::Layout;
use std::path::{Path, PathBuf};

/// A step that reads the file, or a stage whose spec file it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reader {
    pub stage: StageId,
    /// `None`: the stage is declared in the file.
    pub step: Option<usize>,
    /// How: `copy`, `mount`, `host input`, `plugin`, `spec`.
    pub how: &'static str,
}

/// The steps of `graph` that read `file` (a path on this machine).
pub fn readers(
    graph: &Graph,
    sources: &Sources,
    file: &Path,
    layout: &Layout,
) -> Result<Vec<Reader>, Diagnostic> {
    let file = absolute(file);
    let mut out = Vec::new();
    // Spec files: every stage declared in one reads it.
    for s in &graph.stages {
        if sources
            .get(s.span.source)
            .is_some_and(|f| absolute(&f.path) == file)
        {
            out.push(Reader {
                stage: s.id,
                step: None,
                how: "spec",
            });
        }
    }
    for c in &graph.contexts {
        let root = absolute(&c.path);
        let Ok(rel) = file.strip_prefix(&root) else {
            continue;
        };
        let Some(rel) = rel.to_str() else {
            continue;
        };
        let listing = Listing {
            exclude: &[],
            ignore_file: c.ignore_file.as_deref(),
            trust_index: true,
        };
        let snap = Snapshot::open(&c.path, listing, layout)?;
        context_readers(graph, c.id, &snap, rel, &mut out);
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
                _ => continue,
            };
            out.push(Reader {
                stage: s.id,
                step: Some(i),
                how,
            });
        }
    }
    out.sort_by_key(|r| (r.stage, r.step));
    out.dedup();
    Ok(out)
}

/// The steps that read `rel` of context `ctx`, listed as `snap` (a path
/// the listing leaves out, ignored or not there, is read by none).
fn context_readers(
    graph: &Graph,
    ctx: ContextId,
    snap: &Snapshot,
    rel: &str,
    out: &mut Vec<Reader>,
) {
    let listed = rel.is_empty() || snap.tree.get(rel).is_some();
    if !listed {
        return;
    }
    let below = |source: &str| {
        let dir = tree::components(source, Links::Rootfs)
            .unwrap_or_default()
            .join("/");
        dir.is_empty() || rel == dir || rel.starts_with(&format!("{dir}/"))
    };
    for s in &graph.stages {
        for (i, step) in s.steps.iter().enumerate() {
            let from_here = |f: &CopyFrom| *f == CopyFrom::Context(ctx);
            let how = match &step.op {
                Op::Copy(c) if from_here(&c.from) => {
                    if !copies(snap, &c.sources, &c.exclude, rel) {
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
fn copies(snap: &Snapshot, sources: &[String], exclude: &[String], rel: &str) -> bool {
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
        let Ok(mut picked) =
            copy_rules::pick(&snap.tree, std::slice::from_ref(p), Links::Confined, "")
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
fn absolute(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    // A file that is not there (deleted): its directory, resolved.
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
