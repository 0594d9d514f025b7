//! What moves, pinned before any step runs: the images stages are built
//! on (manifest digests), the downloads a spec gives no checksum (sha256
//! on first use) and the git refs it checks out (commits on first use), through the lock file beside the spec. A build
//! reads the lock, resolves what it lacks (unless `--locked`), and writes
//! the lock back when something was added; `kiln lock` does the same for
//! every stage and drops what no stage uses.

use super::{Request, load};
use crate::diag::Code;
use crate::diag::{Diagnostic, Sources, Span};
use crate::exec::{Pins, UrlPin};
use crate::image::lock::{self, Lock};
use crate::image::set::{ImageSet, LockMode};
use crate::ir::{Graph, Op, StageId};
use crate::model::digest::Sha256;
use crate::progress::{Event, Progress};
use crate::store::{Access, ContentStore, Store};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a build's sources are pinned to.
pub struct Pinned {
    pub images: ImageSet,
    pub urls: Pins,
}

/// An image reference or unpinned URL the roots need, and where.
struct Needs<'g> {
    images: Vec<(String, &'g Path, Span)>,
    urls: Vec<(String, Span)>,
    /// Git sources named by a ref, not a commit: (URL, ref).
    gits: Vec<((String, String), Span)>,
}

fn needs<'g>(graph: &'g Graph, roots: &[StageId]) -> Needs<'g> {
    let mut n = Needs {
        images: Vec::new(),
        urls: Vec::new(),
        gits: Vec::new(),
    };
    for id in graph.ancestors(roots) {
        let s = graph.stage(id);
        if let crate::ir::Base::Image(i) = &s.base {
            n.images
                .push((i.reference.clone(), &i.dir, s.from_span.unwrap_or(s.span)));
        }
        for (i, step) in s.steps.iter().enumerate() {
            if let Op::Fetch(f) = &step.op
                && f.sha256.is_none()
                && !n.urls.iter().any(|(u, _)| *u == f.url)
            {
                n.urls
                    .push((f.url.clone(), graph.source_map.step(id, i).span));
            }
            if let Op::Git(g) = &step.op
                && !crate::git::is_commit(&g.reference)
            {
                let k = (g.url.clone(), g.reference.clone());
                if !n.gits.iter().any(|(x, _)| *x == k) {
                    n.gits.push((k, graph.source_map.step(id, i).span));
                }
            }
        }
    }
    n
}

fn platform(req: &Request) -> Result<crate::image::platform::Platform, Vec<Diagnostic>> {
    use crate::image::platform::Platform;
    match &req.platform {
        None => Ok(Platform::host()),
        Some(p) => Platform::parse(p).ok_or_else(|| {
            vec![Diagnostic::new(
                Code::CLI_PLATFORM,
                format!("`{p}` is not a platform"),
            )]
        }),
    }
}

/// Pin what the roots need. With `prune`, lock entries no root needs are
/// dropped (`kiln lock`, whose roots are every stage).
#[allow(clippy::too_many_arguments)]
pub fn resolve(
    graph: &Graph,
    roots: &[StageId],
    spec_path: &Path,
    req: &Request,
    sources: &Sources,
    store: &Store,
    progress: &Progress<'_>,
    prune: bool,
) -> Result<Pinned, Vec<Diagnostic>> {
    let platform = platform(req)?;
    let access = crate::image::Access {
        insecure: req.insecure_registries.clone(),
    };
    let needs = needs(graph, roots);
    let lock_path = lock::path_for(spec_path);
    if needs.images.is_empty()
        && needs.urls.is_empty()
        && needs.gits.is_empty()
        && !(prune && lock_path.exists())
    {
        return Ok(Pinned {
            images: ImageSet::empty(platform, access),
            urls: Pins::default(),
        });
    }
    let mut lock = lock::read(&lock_path, sources)?.unwrap_or_default();
    // A lock file that named URLs with their credentials is written again
    // without them.
    let mut changed = lock.scrubbed;
    if prune {
        let before = (lock.images.len(), lock.urls.len(), lock.gits.len());
        lock.images
            .retain(|(r, _), _| needs.images.iter().any(|(n, _, _)| n == r));
        lock.urls.retain(|u, _| {
            needs
                .urls
                .iter()
                .any(|(n, _)| crate::model::url::without_credentials(n) == *u)
        });
        lock.gits.retain(|k, _| {
            needs
                .gits
                .iter()
                .any(|((u, r), _)| crate::git::without_credentials(u) == k.0 && *r == k.1)
        });
        changed |= (lock.images.len(), lock.urls.len(), lock.gits.len()) != before;
    }
    let refs: Vec<(String, &Path)> = needs
        .images
        .iter()
        .map(|(r, d, _)| (r.clone(), *d))
        .collect();
    let blobs = crate::store::oci::OciBlobs::new(store.layout());
    let mut errors = Vec::new();
    let images = match ImageSet::resolve(
        &refs,
        &mut lock,
        &req.lock,
        platform.clone(),
        access.clone(),
        &blobs,
    ) {
        Ok((set, c)) => {
            changed |= c;
            Some(set)
        }
        Err(failures) => {
            errors.extend(failures.into_iter().map(|f| image_failure(f, &needs)));
            None
        }
    };
    let urls = pin_urls(
        &needs.urls,
        &mut lock,
        &req.lock,
        store,
        progress,
        &mut changed,
    );
    let urls = match urls {
        Ok(mut u) => {
            let gits = pin_gits(
                &needs.gits,
                &mut lock,
                &req.lock,
                store,
                progress,
                &mut changed,
            );
            match gits {
                Ok(g) => {
                    u.gits = g;
                    Some(u)
                }
                Err(e) => {
                    errors.extend(e);
                    None
                }
            }
        }
        Err(e) => {
            errors.extend(e);
            None
        }
    };
    // What was resolved is kept even when something else failed; a dry
    // run resolves as the build would, and writes nothing.
    if changed && !req.dry_run {
        let name = spec_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Err(e) = lock::write(&lock_path, &lock, &name) {
            errors.push(Diagnostic::io("cannot write the lock file", &lock_path, &e));
        }
    }
    match (images, urls) {
        (Some(images), Some(urls)) if errors.is_empty() => Ok(Pinned { images, urls }),
        _ => Err(errors),
    }
}

fn image_failure(f: crate::image::set::Failure, needs: &Needs<'_>) -> Diagnostic {
    use crate::image::set::FailureKind;
    let span = needs
        .images
        .iter()
        .find(|(r, _, _)| *r == f.reference)
        .map(|(_, _, s)| *s);
    // Not locked, or not a reference: the user's to fix; else the source's.
    let code = if matches!(f.kind, FailureKind::NotLocked | FailureKind::Reference) {
        Code::IMAGE_RESOLVE
    } else {
        Code::IMAGE_RESOLVE_ENV
    };
    let mut d = Diagnostic::new(
        code,
        format!("cannot resolve the image `{}`: {}", f.reference, f.why),
    )
    .with_help(match f.kind {
        FailureKind::NotLocked => "run a build without `--locked` (or `kiln lock`) to resolve it and write the lock file",
        FailureKind::Platform => "build for one of the image's platforms with `--platform OS/ARCH`, or use an image made for this one",
        FailureKind::Reference => "write a registry reference (`registry.example/ns/app:tag`, `app@sha256:…`) or a local one (`oci-layout://DIR:TAG`, `oci:DIR:TAG`, `oci-archive:FILE`, `docker-archive:FILE`)",
        FailureKind::Source => "check the reference and that its registry or file can be reached",
    });
    if let Some(dir) = &f.looked_in {
        let registry = crate::model::name::parse(&f.reference)
            .map(|n| format!("the registry `{}`", n.registry))
            .unwrap_or_else(|_| "its registry".to_string());
        d = d.with_note(format!(
            "kiln looked first in the image store `{}` (the names `kiln build -t` gave), which names no `{}`; then it asked {registry}",
            dir.display(),
            f.reference
        ));
    }
    if let Some(s) = span {
        d = d.with_label(s, "built on this image");
    }
    d
}

/// Downloads without a checksum: the lock's sha256, or fetched now (trust
/// on first use, said in a notice) and kept in the store for the step.
fn pin_urls(
    urls: &[(String, Span)],
    lock: &mut Lock,
    mode: &LockMode,
    store: &Store,
    progress: &Progress<'_>,
    changed: &mut bool,
) -> Result<Pins, Vec<Diagnostic>> {
    let mut pins = Pins::default();
    let mut errors = Vec::new();
    for (url, span) in urls {
        // The lock file names a download without its credentials: a
        // committed lock file holds no token, and a rotated one keeps the
        // pin.
        let named = crate::model::url::without_credentials(url);
        let renew = match mode {
            LockMode::Update(names) => {
                names.is_empty()
                    || names
                        .iter()
                        .any(|n| crate::model::url::without_credentials(n) == named)
            }
            _ => false,
        };
        let locked = (!renew).then(|| lock.urls.get(&named).cloned()).flatten();
        if let Some(d) = locked {
            pins.urls.insert(
                url.clone(),
                UrlPin {
                    sha256: d.hex().to_string(),
                    blob: None,
                },
            );
            continue;
        }
        if *mode == LockMode::Locked {
            errors.push(
                Diagnostic::new(
                    Code::FETCH_UNLOCKED,
                    format!("`{named}` has no checksum and is not in the lock file, and `--locked` forbids pinning it"),
                )
                .with_label(*span, "an unpinned download"),
            );
            continue;
        }
        let body = match crate::exec::steps::download::fetch(url, None, *span) {
            Ok(b) => b,
            Err(d) => {
                errors.push(d);
                continue;
            }
        };
        let sha = Sha256::of(&body);
        let blob = match store.put_blob(&body) {
            Ok(b) => b,
            Err(e) => {
                errors.push(e.into());
                continue;
            }
        };
        let before = lock.urls.insert(named.clone(), sha.clone());
        *changed = true;
        progress.emit(Event::Notice {
            message: match before {
                Some(old) if old != sha => format!("`{named}` is pinned again: {sha} (was {old}), in the lock file"),
                Some(_) => format!("`{named}` fetched again: still {sha}"),
                None => format!("`{named}` pinned on first use: {sha}, in the lock file; later builds check against it"),
            },
        });
        pins.urls.insert(
            url.clone(),
            UrlPin {
                sha256: sha.hex().to_string(),
                blob: Some((blob, body.len() as u64)),
            },
        );
    }
    if errors.is_empty() {
        Ok(pins)
    } else {
        Err(errors)
    }
}

/// Git refs: the lock's commit, or the ref's commit now (fetched into
/// the state directory, said in a notice).
fn pin_gits(
    gits: &[((String, String), Span)],
    lock: &mut Lock,
    mode: &LockMode,
    store: &Store,
    progress: &Progress<'_>,
    changed: &mut bool,
) -> Result<std::collections::HashMap<(String, String), String>, Vec<Diagnostic>> {
    let mut pins = std::collections::HashMap::new();
    let mut errors = Vec::new();
    let root = store.layout().git();
    for ((url, reference), span) in gits {
        // The lock file names a repository without credentials.
        let named = crate::git::without_credentials(url);
        let renew = match mode {
            LockMode::Update(names) => {
                names.is_empty()
                    || names.iter().any(|n| {
                        let n = crate::git::without_credentials(n);
                        n == named || n == format!("{named}#{reference}")
                    })
            }
            _ => false,
        };
        let key = (url.clone(), reference.clone());
        let locked_key = (named.clone(), reference.clone());
        if let Some(c) = (!renew)
            .then(|| lock.gits.get(&locked_key).cloned())
            .flatten()
        {
            pins.insert(key, c);
            continue;
        }
        if *mode == LockMode::Locked {
            let url = crate::git::without_credentials(url);
            errors.push(
                Diagnostic::new(
                    Code::GIT_UNLOCKED,
                    format!("`{url}` at `{reference}` is not in the lock file, and `--locked` forbids pinning it"),
                )
                .with_label(*span, "a git ref, not a commit"),
            );
            continue;
        }
        let fetched = crate::git::Repo::open(&root, url).and_then(|repo| {
            repo.fetch(&std::sync::atomic::AtomicBool::new(false))?;
            repo.resolve(reference).ok_or(crate::git::GitError::NoRef {
                url: crate::git::without_credentials(url),
                reference: reference.clone(),
            })
        });
        let commit = match fetched {
            Ok(c) => c,
            Err(e) => {
                let help = match e {
                    crate::git::GitError::NoRef { .. } => {
                        "name a branch or tag the repository has, `HEAD`, or a full commit id"
                    }
                    _ => {
                        "check the URL, the network and credentials (a `USER@HOST:PATH` URL uses ssh and its keys)"
                    }
                };
                errors.push(
                    Diagnostic::new(Code::GIT_RESOLVE, e.to_string())
                        .with_label(*span, "this git source")
                        .with_help(help),
                );
                continue;
            }
        };
        let before = lock.gits.insert(locked_key, commit.clone());
        *changed = true;
        let url = &crate::git::without_credentials(url);
        progress.emit(Event::Notice {
            message: match before {
                Some(old) if old != commit => format!("`{url}` at `{reference}` is pinned again: {commit} (was {old}), in the lock file"),
                Some(_) => format!("`{url}` at `{reference}` fetched again: still {commit}"),
                None => format!("`{url}` at `{reference}` pinned on first use: {commit}, in the lock file; `kiln lock --update {url}` moves it"),
            },
        });
        pins.insert(key, commit);
    }
    if errors.is_empty() {
        Ok(pins)
    } else {
        Err(errors)
    }
}

/// One line of what `kiln lock` did.
pub struct LockLine {
    /// `IMAGE (PLATFORM)` or `URL`.
    pub what: String,
    pub before: Option<String>,
    pub after: String,
}

/// What `kiln lock` did.
pub struct LockReport {
    pub lock_path: PathBuf,
    pub entries: Vec<LockLine>,
    /// Entries dropped because no stage names them any more.
    pub dropped: Vec<String>,
}

/// `kiln lock`: pin what every stage needs (again, for what `--update`
/// names), write the lock file, and drop what no stage uses.
pub fn lock(
    req: &Request,
    sources: &Sources,
    progress: &Progress<'_>,
) -> Result<LockReport, Vec<Diagnostic>> {
    let spec_path = req.spec.spec_path();
    let state_dir = load::state_dir(&req.state_dir, &spec_path);
    crate::store::check_state_dir(&state_dir).map_err(|d| vec![d])?;
    let parse_cache = load::DirParseCache(crate::store::layout::Layout::new(&state_dir));
    let loaded = load::load(&req.spec, sources, Some(&parse_cache))?;
    let graph = &loaded.graph;
    let roots: Vec<StageId> = graph.stages.iter().map(|s| s.id).collect();
    let lock_path = lock::path_for(&spec_path);
    let before = lock::read(&lock_path, sources)?.unwrap_or_default();
    if let LockMode::Update(names) = &req.lock {
        let n = needs(graph, &roots);
        let known: Vec<&str> = n
            .images
            .iter()
            .map(|(r, _, _)| r.as_str())
            .chain(n.urls.iter().map(|(u, _)| u.as_str()))
            .chain(n.gits.iter().map(|((u, _), _)| u.as_str()))
            .collect();
        let git_refs: Vec<String> = n
            .gits
            .iter()
            .map(|((u, r), _)| format!("{u}#{r}"))
            .collect();
        let unknown: Vec<Diagnostic> = names
            .iter()
            .filter(|x| !known.contains(&x.as_str()) && !git_refs.contains(x))
            .map(|x| {
                Diagnostic::new(
                    Code::LOCK_UNKNOWN,
                    format!("no stage is built on the image `{x}`, fetches it unpinned or checks it out by a git ref"),
                )
                .with_help(if known.is_empty() {
                    "this spec has nothing to lock".to_string()
                } else {
                    format!("what the spec locks: {}", known.join(", "))
                })
            })
            .collect();
        if !unknown.is_empty() {
            return Err(unknown);
        }
    }
    let store = Store::open_waiting(&state_dir, Access::Shared, &|_| {}).map_err(|d| vec![d])?;
    let pinned = resolve(
        graph, &roots, &spec_path, req, sources, &store, progress, true,
    )?;
    let after = lock::read(&lock_path, sources)?.unwrap_or_default();
    let platform = pinned.images.platform.to_string();
    let mut entries: Vec<LockLine> = pinned
        .images
        .resolved()
        .into_iter()
        .map(|(r, d, _)| LockLine {
            what: format!("{r} ({platform})"),
            before: before.image(&r, &platform).map(|d| d.to_string()),
            after: d.to_string(),
        })
        .collect();
    let urls: BTreeMap<_, _> = pinned.urls.urls.iter().collect();
    for (url, pin) in urls {
        entries.push(LockLine {
            what: url.clone(),
            before: before.urls.get(url).map(|d| d.to_string()),
            after: format!("sha256:{}", pin.sha256),
        });
    }
    let gits: BTreeMap<_, _> = pinned.urls.gits.iter().collect();
    for ((url, reference), commit) in gits {
        entries.push(LockLine {
            what: format!("{url}#{reference}"),
            before: before.gits.get(&(url.clone(), reference.clone())).cloned(),
            after: commit.clone(),
        });
    }
    let mut dropped: Vec<String> = before
        .images
        .keys()
        .filter(|k| !after.images.contains_key(*k))
        .map(|(r, p)| format!("{r} ({p})"))
        .collect();
    dropped.extend(
        before
            .urls
            .keys()
            .filter(|u| !after.urls.contains_key(*u))
            .cloned(),
    );
    dropped.extend(
        before
            .gits
            .keys()
            .filter(|k| !after.gits.contains_key(*k))
            .map(|(u, r)| format!("{u}#{r}")),
    );
    Ok(LockReport {
        lock_path,
        entries,
        dropped,
    })
}
