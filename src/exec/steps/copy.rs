//! `copy`: entries from a context or another stage, by Docker's COPY
//! rules (`copy_rules`), extracting archives for `ADD` (`unpack`).
//! Keyed by every context entry it reads (path, digest, mode) and what
//! each source matched, or by what its sources matched in the stage it
//! copies from (a change elsewhere in that stage leaves the key as it was).

use super::copy_rules::{self, Overrides, Picked};
use super::{Prepared, StepCx, StepKind, Work, quote, resolve_owner};
use crate::context::Snapshot;
use crate::diag::Code;
use crate::diag::{Diagnostic, Span, Spanned};
use crate::ir::{ContextId, Copy, CopyFrom, Names};
use crate::model::digest::BlobDigest;
use crate::model::key::{KeyBuilder, KeyInput};
use crate::model::tree::{self, Kind, Links};
use crate::store::ContentStore;
use rayon::prelude::*;
use serde_json::json;

impl StepKind for Copy {
    fn canonical(&self, names: Names<'_>) -> serde_json::Value {
        json!({
            "copy": {
                "sources": self.sources,
                "dest": self.dest,
                "from": super::from_json(self.from, names),
                "chmod": self.chmod,
                "chown": self.chown,
                "exclude": self.exclude,
                "parents": self.parents,
                "unpack": self.unpack,
            }
        })
    }

    fn describe(&self, names: Names<'_>) -> String {
        let from = match self.from {
            CopyFrom::Context(ContextId(0)) => String::new(),
            CopyFrom::Context(id) => format!(" context={}", names.context(id)),
            CopyFrom::Stage(id) => format!(" from={}", names.stage(id)),
        };
        format!("copy {} {:?}{from}", quote(&self.sources), self.dest)
    }

    fn prepare(
        &self,
        cx: &StepCx<'_>,
        key: Option<&mut KeyBuilder>,
    ) -> Result<Prepared, Diagnostic> {
        match self.from {
            CopyFrom::Context(ctx) => {
                let snap = cx.env.context(ctx)?;
                let picked = pick_from_context(&snap, &patterns(self, cx), &self.exclude)?;
                if let Some(key) = key {
                    context_inputs(&picked, key);
                }
                Ok(Prepared::Picked(snap, picked))
            }
            CopyFrom::Stage(src) => {
                let patterns = patterns(self, cx);
                let source = source_tree(cx, src, &patterns)?;
                let stage = cx.graph().stage(src).name.clone();
                let mut picked = copy_rules::pick(
                    &source,
                    &patterns,
                    Links::Rootfs,
                    &format!("stage `{stage}`"),
                )?;
                copy_rules::exclude(&mut picked, &self.exclude)?;
                if let Some(key) = key {
                    key.input(KeyInput::Selected {
                        stage,
                        digest: selection_digest(&picked),
                    });
                }
                Ok(Prepared::Selected(picked))
            }
        }
    }

    fn run(&self, cx: &StepCx<'_>, work: Work<'_>, prepared: Prepared) -> Result<(), Diagnostic> {
        let span = cx.span();
        let owner = match &self.chown {
            Some(o) => Some(resolve_owner(cx.content(), work.tree, o, span)?),
            None => None,
        };
        let ov = Overrides {
            chmod: self.chmod,
            owner,
        };
        let picked = match (prepared, self.from) {
            (Prepared::Picked(snap, picked), _) => {
                ingest(cx.content(), &snap, &picked)?;
                if self.unpack {
                    unpack_archives(cx.content(), picked, span, cx.env.options.unpack_limit)?
                } else {
                    picked
                }
            }
            (Prepared::Selected(picked), _) => picked,
            (Prepared::Nothing, _) => {
                return Err(Diagnostic::internal("a copy ran unprepared"));
            }
        };
        let workdir = work.config.workdir().to_string();
        copy_rules::place(
            work.tree,
            &picked,
            &self.dest,
            &workdir,
            ov,
            self.parents,
            span,
        )
    }
}

/// The tree a copy from stage `src` picks in: only the paths its patterns
/// read when the stage's tree is one a remote cache named and is not here
/// (so a build that takes every step from the remote fetches a few parts
/// of a large tree, not its whole manifest), else the whole tree.
fn source_tree(
    cx: &StepCx<'_>,
    src: crate::ir::StageId,
    patterns: &[Spanned<String>],
) -> Result<std::sync::Arc<tree::Tree>, Diagnostic> {
    let state = cx.input(src)?;
    if cx.env.tree_in_memory(state.tree).is_none()
        && let Some(reads) = copy_rules::reads(patterns, Links::Rootfs)
        && let Some(part) = cx.content().tree_part(state.tree, &reads.ranges())
        && reads.enough(&part)
    {
        return Ok(std::sync::Arc::new(part));
    }
    cx.env.tree(state.tree)
}

/// A digest of what a copy's sources matched in a stage: every path, kind,
/// mode, owner and content, in order (the entries it places).
fn selection_digest(picked: &[Picked]) -> String {
    let mut h = blake3::Hasher::new();
    let mut field = |s: &str| {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    for p in picked {
        field(&p.name);
        field(&p.path);
        field(&p.pivot);
        field(if p.is_dir { "dir" } else { "entry" });
        field(&p.items.len().to_string());
        for (rel, e) in &p.items {
            field(rel);
            let kind = match &e.kind {
                Kind::File { blob, size } => format!("file {} {size}", blob.hex()),
                Kind::Dir => "dir".to_string(),
                Kind::Symlink { target } => format!("symlink {target}"),
                Kind::Device {
                    class,
                    major,
                    minor,
                } => format!("device {class:?} {major}:{minor}"),
                Kind::Fifo => "fifo".to_string(),
            };
            field(&kind);
            field(&format!("{:o} {}:{}", e.mode, e.uid, e.gid));
        }
    }
    h.finalize().to_hex().to_string()
}

/// The sources with their locations, for "matched nothing" errors.
fn patterns(c: &Copy, cx: &StepCx<'_>) -> Vec<Spanned<String>> {
    c.sources
        .iter()
        .enumerate()
        .map(|(i, s)| Spanned::new(cx.loc.part(i), s.clone()))
        .collect()
}

/// Match sources in a context and fill in the digests of the files picked.
pub fn pick_from_context(
    snap: &Snapshot,
    patterns: &[Spanned<String>],
    exclude: &[String],
) -> Result<Vec<Picked>, Diagnostic> {
    let mut picked = copy_rules::pick(&snap.tree, patterns, Links::Confined, "the context")?;
    copy_rules::exclude(&mut picked, exclude)?;
    let paths: Vec<String> = files(&picked).map(|(p, _)| p).collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let digests = snap.digests(&refs)?;
    let mut it = digests.into_iter();
    for p in &mut picked {
        for (_, e) in &mut p.items {
            if let Kind::File { blob, .. } = &mut e.kind
                && let Some(d) = it.next()
            {
                *blob = d;
            }
        }
    }
    Ok(picked)
}

/// Every file picked, by its path in the source, with its digest.
fn files(picked: &[Picked]) -> impl Iterator<Item = (String, BlobDigest)> + '_ {
    picked.iter().flat_map(|p| {
        p.items.iter().filter_map(move |(rel, e)| match e.kind {
            Kind::File { blob, .. } => Some((
                if rel.is_empty() {
                    p.path.clone()
                } else {
                    tree::join(&p.path, rel)
                },
                blob,
            )),
            _ => None,
        })
    })
}

/// Copy the context files picked into the store (each must still have the
/// digest its key was made from).
pub fn ingest(
    content: &dyn ContentStore,
    snap: &Snapshot,
    picked: &[Picked],
) -> Result<(), Diagnostic> {
    let files: Vec<(String, BlobDigest)> = files(picked).collect();
    files
        .par_iter()
        .try_for_each(|(path, blob)| snap.ingest(content, path, *blob))
}

/// Every context entry a copy reads, as key inputs.
pub fn context_inputs(picked: &[Picked], key: &mut KeyBuilder) {
    for p in picked {
        for (rel, e) in &p.items {
            let path = if rel.is_empty() {
                p.path.clone()
            } else {
                tree::join(&p.path, rel)
            };
            let value = match &e.kind {
                Kind::File { blob, .. } => format!("{} {:o}", blob.hex(), e.mode),
                Kind::Dir => format!("dir {:o}", e.mode),
                Kind::Symlink { target } => format!("-> {target}"),
                Kind::Device {
                    class,
                    major,
                    minor,
                } => format!("{class:?} {major}:{minor} {:o}", e.mode),
                Kind::Fifo => format!("fifo {:o}", e.mode),
            };
            key.input(KeyInput::ContextFile {
                path: if path.is_empty() { ".".into() } else { path },
                value,
            });
        }
        key.input(KeyInput::Picked {
            name: p.name.clone(),
            is_dir: p.is_dir,
        });
    }
}

/// Docker's `ADD` of local files: a source file that is a tar archive
/// becomes the directory it holds; other files are copied as they are.
fn unpack_archives(
    content: &dyn ContentStore,
    picked: Vec<Picked>,
    span: Span,
    limit: u64,
) -> Result<Vec<Picked>, Diagnostic> {
    use super::unpack::{UnpackError, unpack};
    let mut out = Vec::with_capacity(picked.len());
    for p in picked {
        let blob = match p.items.first() {
            Some((_, e)) if !p.is_dir => match e.kind {
                Kind::File { blob, .. } => Some(blob),
                _ => None,
            },
            _ => None,
        };
        let Some(blob) = blob else {
            out.push(p);
            continue;
        };
        match unpack(content, blob, limit) {
            Ok(Some(items)) => out.push(Picked {
                is_dir: true,
                items,
                ..p
            }),
            Ok(None) => out.push(p),
            Err(UnpackError::Store(e)) => return Err(e.into()),
            Err(e @ UnpackError::TooLarge(_)) => {
                return Err(Diagnostic::new(
                    Code::COPY_UNPACK_LIMIT,
                    format!("cannot extract `{}`: {e}", p.path),
                )
                .with_label(span, "extracting this archive"));
            }
            Err(e) => {
                return Err(Diagnostic::new(
                    Code::COPY_UNPACK,
                    format!("cannot extract `{}`: {e}", p.path),
                )
                .with_label(span, "extracting this archive"));
            }
        }
    }
    Ok(out)
}
