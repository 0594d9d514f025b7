//! Builtin steps, applied to a tree manifest and an image config in memory.

use super::copy::{self, Overrides, Picked};
use super::key::KeyBuilder;
use crate::context::Snapshot;
use crate::diag::{Diagnostic, Span};
use crate::ir::{Copy, Graph, Meta, Op, Owner};
use crate::store::Store;
use crate::store::state::ImageConfig;
use crate::store::tree::{self, Entry, Kind, Links, Tree};
use rayon::prelude::*;
use std::sync::Arc;

/// Work done while computing a key, reused if the step has to run.
pub enum Prepared {
    Context(Arc<Snapshot>, Vec<Picked>),
}

/// Match a context copy's sources and fill in the digests of the files picked.
pub fn pick_from_context(snap: &Snapshot, c: &Copy) -> Result<Vec<Picked>, Diagnostic> {
    let mut picked = copy::pick(&snap.tree, &c.sources, Links::Confined, "the context")?;
    copy::exclude(&mut picked, &c.exclude)?;
    let mut paths: Vec<String> = Vec::new();
    for p in &picked {
        for (rel, e) in &p.items {
            if matches!(e.kind, Kind::File { .. }) {
                paths.push(if rel.is_empty() {
                    p.path.clone()
                } else {
                    tree::join(&p.path, rel)
                });
            }
        }
    }
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

/// Every file a context copy reads, as named key inputs.
pub fn context_inputs(picked: &[Picked], kb: &mut KeyBuilder) {
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
            };
            kb.input(
                &format!("file:{}", if path.is_empty() { "." } else { &path }),
                &value,
            );
        }
        kb.input("picked", &format!("{} {}", p.name, p.is_dir));
    }
}

fn tree_err(what: &str, span: Span, e: tree::TreeError) -> Diagnostic {
    Diagnostic::build("kiln::step::path", format!("{what}: {e}"))
        .with_label(span, "in this step")
        .with_help("a path in the stage crosses a file where a directory is needed, or replaces a directory")
}

/// What a builtin step runs with, besides the tree and config it changes.
pub struct Cx<'a> {
    pub store: &'a Store,
    pub graph: &'a Graph,
    /// Where the step is written, for errors.
    pub span: Span,
    /// The most an archive may expand to (`ADD` of a local archive).
    pub unpack_limit: u64,
}

/// Run a builtin step on `tree` and `config`.
pub fn apply(
    cx: &Cx<'_>,
    op: &Op,
    tree: &mut Tree,
    config: &mut ImageConfig,
    prepared: Option<Prepared>,
    source_tree: Option<&Tree>,
) -> Result<(), Diagnostic> {
    let Cx {
        store, graph, span, ..
    } = *cx;
    let workdir = config.workdir().to_string();
    let root_dir = Entry::dir(0o755, 0, 0);
    match op {
        Op::Copy(c) => {
            let owner = match &c.chown {
                Some(o) => Some(resolve_owner(store, tree, o, span)?),
                None => None,
            };
            let ov = Overrides {
                chmod: c.chmod,
                owner,
            };
            let picked = match (prepared, source_tree) {
                (Some(Prepared::Context(snap, picked)), _) => {
                    let files: Vec<(String, crate::store::digest::BlobDigest)> = picked
                        .iter()
                        .flat_map(|p| {
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
                        .collect();
                    files
                        .par_iter()
                        .try_for_each(|(path, blob)| snap.ingest(store, path, *blob))?;
                    if c.unpack {
                        unpack_archives(store, picked, span, cx.unpack_limit)?
                    } else {
                        picked
                    }
                }
                (None, Some(src)) => {
                    let name = match c.from {
                        crate::ir::CopyFrom::Stage(id) => {
                            format!("stage `{}`", graph.stage(id).name)
                        }
                        crate::ir::CopyFrom::Context(_) => "the context".to_string(),
                    };
                    let mut picked = copy::pick(src, &c.sources, Links::Rootfs, &name)?;
                    copy::exclude(&mut picked, &c.exclude)?;
                    picked
                }
                (None, None) => return Err(Diagnostic::internal("copy without a source")),
            };
            copy::place(tree, &picked, &c.dest, &workdir, ov, c.parents, span)?;
        }
        Op::Fetch {
            url,
            dest,
            sha256,
            chmod,
            chown,
        } => {
            let owner = match chown {
                Some(o) => Some(resolve_owner(store, tree, o, span)?),
                None => None,
            };
            let name = super::fetch::file_name(url);
            let into_dir = dest.ends_with('/');
            let name = match (name, into_dir) {
                (Some(n), _) => n,
                (None, false) => tree::basename(dest).to_string(),
                (None, true) => {
                    return Err(Diagnostic::user(
                        "kiln::fetch::name",
                        format!("`{url}` has no file name to copy into `{dest}`"),
                    )
                    .with_label(span, "destination is a directory")
                    .with_help("give the destination a file name"));
                }
            };
            let body = super::fetch::fetch(url, sha256, span)?;
            let blob = store.put_blob(&body)?;
            // Docker gives downloaded files mode 0600.
            let entry = Entry {
                kind: Kind::File {
                    blob,
                    size: body.len() as u64,
                },
                mode: 0o600,
                uid: 0,
                gid: 0,
            };
            let picked = [Picked {
                name,
                path: url.clone(),
                is_dir: false,
                items: vec![(String::new(), entry)],
            }];
            let ov = Overrides {
                chmod: *chmod,
                owner,
            };
            copy::place(tree, &picked, dest, &workdir, ov, false, span)?;
        }
        Op::Write {
            path,
            content,
            mode,
        } => {
            let p = tree::normalize(path, &workdir);
            let dir = tree
                .resolve(tree::parent(&p), true, Links::Rootfs)
                .map_err(|e| tree_err("cannot write", span, e))?;
            let at = tree::join(&dir, tree::basename(&p));
            let blob = store.put_blob(content.as_bytes())?;
            tree.mkdir_all(&dir, &root_dir)
                .map_err(|e| tree_err("cannot write", span, e))?;
            let entry = Entry {
                kind: Kind::File {
                    blob,
                    size: content.len() as u64,
                },
                mode: mode.unwrap_or(0o644),
                uid: 0,
                gid: 0,
            };
            tree.put(&at, entry, false)
                .map_err(|e| tree_err("cannot write", span, e))?;
        }
        Op::Mkdir { paths, mode } => {
            for path in paths {
                let p = tree::normalize(path, &workdir);
                let p = tree
                    .resolve(&p, true, Links::Rootfs)
                    .map_err(|e| tree_err("cannot create directory", span, e))?;
                tree.mkdir_all(&p, &root_dir)
                    .map_err(|e| tree_err("cannot create directory", span, e))?;
                if let (Some(m), Some(e)) = (mode, tree.entries.get_mut(&p)) {
                    e.mode = *m;
                }
            }
        }
        Op::Rm { paths, force } => {
            for path in paths {
                let p = tree::normalize(&path.value, &workdir);
                let dir = tree
                    .resolve(tree::parent(&p), true, Links::Rootfs)
                    .map_err(|e| tree_err("cannot remove", span, e))?;
                let at = tree::join(&dir, tree::basename(&p));
                if p.is_empty() {
                    tree.entries.clear();
                } else if !tree.remove_all(&at) && !force {
                    return Err(Diagnostic::build(
                        "kiln::step::rm",
                        format!("cannot remove `{}`: it does not exist", path.value),
                    )
                    .with_label(path.span, "not in the stage")
                    .with_help("add `force=#true` to ignore missing paths"));
                }
            }
        }
        Op::Symlink { target, link } => {
            let p = tree::normalize(link, &workdir);
            let dir = tree
                .resolve(tree::parent(&p), true, Links::Rootfs)
                .map_err(|e| tree_err("cannot create symlink", span, e))?;
            tree.mkdir_all(&dir, &root_dir)
                .map_err(|e| tree_err("cannot create symlink", span, e))?;
            let entry = Entry {
                kind: Kind::Symlink {
                    target: target.clone(),
                },
                mode: 0o777,
                uid: 0,
                gid: 0,
            };
            tree.put(&tree::join(&dir, tree::basename(&p)), entry, false)
                .map_err(|e| tree_err("cannot create symlink", span, e))?;
        }
        Op::Meta(m) => apply_meta(m, tree, config, span)?,
        Op::Wasm { .. } | Op::Run { .. } => {
            return Err(Diagnostic::internal(
                "an external step reached the builtin runner",
            ));
        }
    }
    Ok(())
}

/// Docker's `ADD` of local files: a source file that is a tar archive
/// becomes the directory it holds; other files are copied as they are.
fn unpack_archives(
    store: &Store,
    picked: Vec<Picked>,
    span: Span,
    limit: u64,
) -> Result<Vec<Picked>, Diagnostic> {
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
        match super::unpack::unpack(store, blob, limit) {
            Ok(Some(items)) => out.push(Picked {
                is_dir: true,
                items,
                ..p
            }),
            Ok(None) => out.push(p),
            Err(super::unpack::UnpackError::Store(e)) => return Err(e.into()),
            Err(e @ super::unpack::UnpackError::TooLarge(_)) => {
                return Err(Diagnostic::build(
                    "kiln::copy::unpack-limit",
                    format!("cannot extract `{}`: {e}", p.path),
                )
                .with_label(span, "extracting this archive")
                .with_help(
                    "if the archive is meant to be this large, raise the limit with `kiln build --max-unpack-size SIZE`",
                ));
            }
            Err(e) => {
                return Err(Diagnostic::build(
                    "kiln::copy::unpack",
                    format!("cannot extract `{}`: {e}", p.path),
                )
                .with_label(span, "extracting this archive")
                .with_help(
                    "repair the archive, or copy it without extracting (`copy` instead of `ADD`)",
                ));
            }
        }
    }
    Ok(out)
}

fn apply_meta(
    m: &Meta,
    tree: &mut Tree,
    config: &mut ImageConfig,
    span: Span,
) -> Result<(), Diagnostic> {
    match m {
        Meta::Env(kv) => {
            for (k, v) in kv {
                config.set_env(k, v);
            }
        }
        Meta::Workdir(p) => {
            let dir = format!("/{}", tree::normalize(p, config.workdir()));
            // As Docker does, the working directory exists in the stage.
            let resolved = tree
                .resolve(&dir, true, Links::Rootfs)
                .map_err(|e| tree_err("cannot set workdir", span, e))?;
            tree.mkdir_all(&resolved, &Entry::dir(0o755, 0, 0))
                .map_err(|e| tree_err("cannot set workdir", span, e))?;
            config.workdir = Some(dir);
        }
        Meta::User(u) => config.user = Some(u.clone()),
        Meta::Label(kv) => {
            for (k, v) in kv {
                config.labels.insert(k.clone(), v.clone());
            }
        }
        Meta::Entrypoint(a) => {
            // Docker: a new entrypoint drops a cmd inherited with the base.
            config.entrypoint = Some(a.clone());
            config.cmd = None;
        }
        Meta::Cmd(a) => config.cmd = Some(a.clone()),
        Meta::Expose(ports) => {
            for p in ports {
                let norm = if p.contains('/') {
                    p.to_ascii_lowercase()
                } else {
                    format!("{p}/tcp")
                };
                config.exposed_ports.insert(norm);
            }
        }
        Meta::Volume(v) => {
            for p in v {
                config.volumes.insert(p.clone());
            }
        }
        Meta::Stopsignal(s) => config.stop_signal = Some(s.clone()),
        Meta::Shell(a) => config.shell = Some(a.clone()),
        Meta::Healthcheck(h) => config.healthcheck = Some(h.clone()),
        Meta::Onbuild(i) => config.onbuild.push(i.clone()),
        Meta::Maintainer(m) => config.author = Some(m.clone()),
    }
    Ok(())
}

/// Numeric ids, or names looked up in the stage's `/etc/passwd` and `/etc/group`.
fn resolve_owner(
    store: &Store,
    tree: &Tree,
    owner: &Owner,
    span: Span,
) -> Result<(u32, u32), Diagnostic> {
    let lookup = |file: &str, name: &str, field: usize| -> Result<Option<(u32, u32)>, Diagnostic> {
        let Some(Entry {
            kind: Kind::File { blob, .. },
            ..
        }) = tree.get(file)
        else {
            return Ok(None);
        };
        let bytes = store.read_blob(*blob)?;
        for line in String::from_utf8_lossy(&bytes).lines() {
            let parts: Vec<&str> = line.split(':').collect();
            if parts.first() == Some(&name) && parts.len() > field {
                let id = parts[2].parse().ok();
                let gid = parts.get(3).and_then(|g| g.parse().ok());
                if let Some(id) = id {
                    return Ok(Some((id, gid.unwrap_or(id))));
                }
            }
        }
        Ok(None)
    };
    let unknown = |what: &str, name: &str, file: &str| {
        Diagnostic::build("kiln::copy::owner", format!("unknown {what} `{name}`"))
            .with_label(span, format!("not in the stage's /{file}"))
            .with_help("use numeric ids (`1000:1000`), or add the name to the stage first")
    };
    let (uid, primary_gid) = match owner.user.parse::<u32>() {
        Ok(id) => (id, id),
        Err(_) => lookup("etc/passwd", &owner.user, 3)?
            .ok_or_else(|| unknown("user", &owner.user, "etc/passwd"))?,
    };
    let gid = match &owner.group {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(id) => id,
            Err(_) => {
                lookup("etc/group", g, 2)?
                    .ok_or_else(|| unknown("group", g, "etc/group"))?
                    .0
            }
        },
    };
    Ok((uid, gid))
}
