//! The build as a library call: [`plan`] reads the spec and decides what
//! to build and where it goes; [`run`] builds it, writes the exports,
//! records what happened and keys the build memo. The command line only
//! turns arguments into a [`Request`] and renders the [`Report`].
//!
//! A build repairs a damaged store instead of failing on it: when a stage
//! or an export finds an object missing or corrupt (the store quarantines
//! it), the build runs once more without the cache and verifying what it
//! writes, so the damaged objects are written again from their sources.
//! Exports are written in two phases (all staged, then all swapped in), so
//! a build that fails writes no `when="success"` export at all.

pub mod load;
pub mod pins;
pub mod preflight;
pub mod provenance;
pub mod query;
pub mod testing;
pub mod verify;

use crate::diag::Code;
use crate::diag::{Diagnostic, Sources};
use crate::exec::{Executor, Options, Outcome, Setup, StageOutcome};
use crate::export::{self, Failed, Settings, dest};
use crate::image::set::{ImageSet, LockMode};
use crate::ir::{Export, ExportFormat, Graph, StageId, When};
use crate::model::digest::{StateDigest, StepKey};
use crate::progress::{Event, Progress};
use crate::store::records::StepRecord;
use crate::store::{Access, Store, records};
use load::{Loaded, SpecInput};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// More worker threads than this help no build and cost memory.
pub const MAX_JOBS: usize = 256;

/// How much an archive may expand to unless `--max-unpack-size` says:
/// as text (clap's default) and in bytes.
pub const DEFAULT_UNPACK_SIZE: &str = "8GiB";
pub const DEFAULT_UNPACK_LIMIT: u64 = 8 << 30;

/// What to build. [`Request::new`] holds every default; the command line
/// changes what its flags say.
#[derive(Clone, Debug)]
pub struct Request {
    pub spec: SpecInput,
    /// `--target`s; replace the export block.
    pub targets: Vec<String>,
    /// `-o`s; replace the export block for the one target.
    pub outputs: Vec<Output>,
    /// `-t NAME`: the target's image, named in the local image store.
    pub tags: Vec<String>,
    pub no_cache: bool,
    /// Stages at once; `None` is the number of CPUs.
    pub jobs: Option<usize>,
    pub state_dir: Option<PathBuf>,
    /// Seconds since the epoch for every timestamp (SOURCE_DATE_EPOCH, or 0).
    pub epoch: u64,
    /// The most an archive may expand to.
    pub unpack_limit: u64,
    /// `--platform`: the platform of the images stages are built on
    /// (`None`: this machine's).
    pub platform: Option<String>,
    /// `--insecure-registry`: registries spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// How `kiln.lock` is used.
    pub lock: LockMode,
    /// `--secret`s for `run` steps, by id.
    pub secrets: crate::exec::Secrets,
    /// `--ssh` agent sockets, by id.
    pub ssh: std::collections::HashMap<String, PathBuf>,
    /// `--allow-export-outside`: the spec's exports may write outside
    /// the spec's directory.
    pub allow_export_outside: bool,
    /// `--remote-cache`: a REAPI server whose cache is looked in after the
    /// local one and to which results are uploaded.
    pub remote: Option<crate::store::remote::Settings>,
    /// `--dry-run`: say what would run and what is cached, and why;
    /// run, export and record nothing.
    pub dry_run: bool,
    /// `--affected REF`: build and export only the roots a change since
    /// the commit `REF` may change.
    pub affected: Option<String>,
    /// `kiln test`: build the stages holding tests (among the targets)
    /// and export nothing.
    pub tests: bool,
}

impl Request {
    /// A build of `spec`'s exports with every default: the cache, the
    /// state directory kiln picks, `SOURCE_DATE_EPOCH` (or 0), archives up
    /// to [`DEFAULT_UNPACK_LIMIT`], this machine's platform, the lock file
    /// as it is.
    pub fn new(spec: SpecInput) -> Request {
        Request {
            spec,
            targets: Vec::new(),
            outputs: Vec::new(),
            tags: Vec::new(),
            no_cache: false,
            jobs: None,
            state_dir: None,
            epoch: Request::epoch_from_env(),
            unpack_limit: DEFAULT_UNPACK_LIMIT,
            platform: None,
            insecure_registries: Vec::new(),
            lock: LockMode::Normal,
            secrets: Default::default(),
            ssh: Default::default(),
            allow_export_outside: false,
            remote: None,
            dry_run: false,
            affected: None,
            tests: false,
        }
    }

    /// SOURCE_DATE_EPOCH, or 0: read here and nowhere else.
    pub fn epoch_from_env() -> u64 {
        std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// One `-o` value: where to write the target and in what format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// The `--target` given before it (with several, each `-o` exports
    /// the one before it).
    pub target: Option<String>,
    pub format: ExportFormat,
    pub dest: PathBuf,
    /// An image's name (`name=`).
    pub tag: Option<String>,
    pub compression: crate::ir::Compression,
}

/// An export entry with its destination resolved and checked.
pub struct PlannedExport {
    pub export: Export,
    pub resolved: PathBuf,
}

/// A build ready to run.
pub struct Plan {
    pub loaded: Loaded,
    pub roots: Vec<StageId>,
    pub exports: Vec<PlannedExport>,
    pub state_dir: PathBuf,
    pub spec_path: PathBuf,
    /// The build memo and the contexts it lists, read on another thread
    /// while the spec was compiled.
    pub prefetch: crate::exec::memo::Prefetch,
}

/// What a build did.
pub struct Report {
    /// Every error, in the order found.
    pub failures: Vec<Diagnostic>,
    /// Warnings raised while building (a repaired store, a capped `-j`).
    pub notices: Vec<Diagnostic>,
    pub interrupted: bool,
    /// Each requested stage that was built, with its result.
    pub results: Vec<(String, StateDigest)>,
    /// The same, with the result's tree and config.
    pub states: Vec<(String, crate::model::state::State)>,
    /// Every step of the build: its key, whether it was cached.
    pub records: Vec<records::StepRecord>,
    /// A dry run's answer for every step the request needs.
    pub planned: Vec<Planned>,
    /// Every test step of the stages the build needed, and what became
    /// of it.
    pub tests: Vec<testing::TestReport>,
}

/// One step of a dry run: what a build would do with it, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub stage: String,
    pub step: usize,
    pub text: String,
    /// `cached`, `remote` (in the remote cache) or `would run`.
    pub status: &'static str,
    pub why: Vec<String>,
}

impl Report {
    /// A build that stopped before it ran anything.
    fn failed(failures: Vec<Diagnostic>) -> Report {
        Report {
            failures,
            notices: Vec::new(),
            interrupted: false,
            results: Vec::new(),
            states: Vec::new(),
            records: Vec::new(),
            planned: Vec::new(),
            tests: Vec::new(),
        }
    }
}

/// Look up `--target`s: each a stage's name, a glob (`'test-*'`), or
/// `NAME/...` (`NAME` and every stage whose name starts with `NAME/`);
/// each stage once, in the order asked.
pub fn targets(graph: &Graph, names: &[String]) -> Result<Vec<StageId>, Diagnostic> {
    let mut out = Vec::new();
    for n in names {
        for id in select(graph, n)? {
            if !out.contains(&id) {
                out.push(id);
            }
        }
    }
    Ok(out)
}

/// The stages one `--target` names, in the order they are declared.
pub fn select(graph: &Graph, name: &str) -> Result<Vec<StageId>, Diagnostic> {
    if let Some(id) = graph.find_stage(name) {
        return Ok(vec![id]);
    }
    let stage_list = || {
        let mut names: Vec<String> = graph
            .stages
            .iter()
            .take(20)
            .map(|s| format!("`{}`", s.name))
            .collect();
        if graph.stages.len() > 20 {
            names.push(format!("and {} more", graph.stages.len() - 20));
        }
        format!("stages are: {}", names.join(", "))
    };
    let matches: Box<dyn Fn(&str) -> bool> = if let Some(prefix) = name.strip_suffix("/...") {
        let below = format!("{prefix}/");
        let prefix = prefix.to_string();
        Box::new(move |s: &str| s == prefix || s.starts_with(&below))
    } else if name == "..." {
        Box::new(|_: &str| true)
    } else if name.contains(['*', '?', '[']) {
        let glob = globset::GlobBuilder::new(name)
            .literal_separator(true)
            .build()
            .map_err(|e| {
                Diagnostic::new(
                    Code::CLI_TARGET,
                    format!("`--target {name}` is not a valid glob: {}", e.kind()),
                )
                .with_help("use `*`, `?` and `[abc]` within a name, `**` across `/`")
            })?
            .compile_matcher();
        Box::new(move |s: &str| glob.is_match(s))
    } else {
        let d = Diagnostic::new(Code::CLI_TARGET, format!("no stage named `{name}`"));
        return Err(
            match crate::diag::did_you_mean(name, graph.stages.iter().map(|s| s.name.as_str())) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None => d.with_help(stage_list()),
            },
        );
    };
    let found: Vec<StageId> = graph
        .stages
        .iter()
        .filter(|s| matches(&s.name))
        .map(|s| s.id)
        .collect();
    if found.is_empty() {
        return Err(
            Diagnostic::new(Code::CLI_TARGET, format!("no stage matches `{name}`"))
                .with_help(stage_list()),
        );
    }
    Ok(found)
}

/// Read the spec, pick what to build and check every destination.
pub fn plan(req: &Request, sources: &Sources) -> Result<Plan, Vec<Diagnostic>> {
    let state_dir = load::state_dir(&req.state_dir, &req.spec.spec_path());
    // Nothing is read from or written to a state directory another user
    // could change, not even the parse cache.
    crate::store::check_state_dir(&state_dir).map_err(|d| vec![d])?;
    // A no-op build mostly reads the memo and lists the context: done on
    // another core while this one reads and compiles the spec.
    let prefetch = if req.no_cache {
        crate::exec::memo::Prefetch::none()
    } else {
        crate::exec::memo::prefetch(&state_dir, &load::project_scope(&req.spec.spec_path()))
    };
    // The seals of the layers this project's commands ran on last time
    // are checked meanwhile too.
    crate::sandbox::rootfs::prefetch_seals(
        &crate::store::layout::Layout::new(&state_dir),
        &load::project_scope(&req.spec.spec_path()),
    );
    let parse_cache = load::DirParseCache(crate::store::layout::Layout::new(&state_dir));
    let mut plan = plan_with(req, sources, Some(&parse_cache))?;
    plan.prefetch = prefetch;
    Ok(plan)
}

/// [`plan`] without reading or writing the state directory (`kiln check`).
pub fn plan_only(req: &Request, sources: &Sources) -> Result<Plan, Vec<Diagnostic>> {
    plan_with(req, sources, None)
}

fn plan_with(
    req: &Request,
    sources: &Sources,
    parse_cache: Option<&dyn crate::frontend::ParseCache>,
) -> Result<Plan, Vec<Diagnostic>> {
    let spec_path = req.spec.spec_path();
    let state_dir = load::state_dir(&req.state_dir, &spec_path);
    let loaded = load::load(&req.spec, sources, parse_cache)?;
    let (mut roots, mut exports) = pick(&loaded.graph, req).map_err(|d| vec![d])?;
    // `--affected REF`: only what a change since REF may change.
    if let Some(rev) = &req.affected {
        let layout = crate::store::layout::Layout::new(&state_dir);
        let readers = query::Readers::new(&loaded.graph, sources, layout, &spec_path);
        let (_, hit) = query::affected(&readers, &spec_path, rev).map_err(|d| vec![d])?;
        roots.retain(|r| hit.contains(r));
        exports.retain(|e| hit.contains(&e.stage));
    }
    let mut protected = dest::Protected::new();
    protected.add(&loaded.spec.dir, "the project");
    for f in sources.all() {
        protected.add(&f.path, format!("the spec file `{}`", f.name));
    }
    protected.add(&req.spec.context, "the build context");
    for c in &loaded.graph.contexts {
        protected.add(&c.path, format!("the context `{}`", c.path.display()));
    }
    protected.state_dir(&state_dir);
    let mut planned = Vec::new();
    let mut errors = Vec::new();
    for e in exports {
        if matches!(e.format, ExportFormat::Push | ExportFormat::Tagged) || is_stdout(&e) {
            // A registry, not a path: nothing on this machine to protect.
            planned.push(PlannedExport {
                resolved: PathBuf::new(),
                export: e,
            });
            continue;
        }
        let checked = dest::check(&e.dest, &protected).and_then(|resolved| {
            // What a spec exports stays in its project: a spec from
            // anywhere may not write `/root/.ssh` or `~/.config/autostart`.
            // The command line's `-o` may go anywhere.
            if e.span.is_some() && !req.allow_export_outside {
                dest::check_inside(&e.dest, &resolved, &loaded.spec.dir)?;
            }
            dest::check_trusted(&e.dest, &resolved)?;
            Ok(resolved)
        });
        match checked {
            Ok(resolved) => {
                // Refused now rather than after the build: what is there
                // is not the build's to replace.
                let layout = crate::store::layout::Layout::new(&state_dir);
                if let Err(mut d) = export::check_replaceable(&layout, &e.dest, &resolved) {
                    if let Some(span) = e.span {
                        d = d.with_label(span, "this export");
                    }
                    errors.push(d);
                    continue;
                }
                if e.provenance {
                    let statement = provenance::path_for(&e.dest);
                    let refused = match dest::check(&statement, &protected) {
                        Err(d) => Some(d),
                        Ok(at) if !provenance::replaceable(&at) => Some(
                            Diagnostic::new(
                                Code::EXPORT_EXISTS,
                                format!(
                                    "`{}` holds something kiln did not write; the export's provenance would replace it",
                                    statement.display()
                                ),
                            )
                            .with_help("move it away, or export somewhere else"),
                        ),
                        Ok(_) => None,
                    };
                    if let Some(mut d) = refused {
                        if let Some(span) = e.span {
                            d = d.with_label(span, "this export");
                        }
                        errors.push(d);
                        continue;
                    }
                }
                if planned
                    .iter()
                    .any(|p: &PlannedExport| p.resolved == resolved)
                {
                    let mut d = Diagnostic::new(
                        Code::EXPORT_TWICE,
                        format!("two exports write to `{}`", e.dest.display()),
                    );
                    if let Some(span) = e.span {
                        d = d.with_label(span, "the second export here");
                    }
                    errors.push(d);
                    continue;
                }
                planned.push(PlannedExport {
                    export: e,
                    resolved,
                })
            }
            Err(mut d) => {
                if let Some(span) = e.span {
                    d = d.with_label(span, "this export");
                }
                errors.push(d);
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Plan {
        loaded,
        roots,
        exports: planned,
        state_dir,
        spec_path,
        prefetch: crate::exec::memo::Prefetch::none(),
    })
}

/// What to build and what to write: `-o` and `--target` replace the export block.
fn pick(graph: &Graph, req: &Request) -> Result<(Vec<StageId>, Vec<Export>), Diagnostic> {
    if req.tests {
        return Ok((testing::roots(graph, &req.targets)?, Vec::new()));
    }
    let (mut roots, mut exports) = pick_exports(graph, req)?;
    if req.tags.is_empty() {
        return Ok((roots, exports));
    }
    // `-t NAME`: the target's image into the local image store, as
    // `docker build -t` does.
    let target = match targets(graph, &req.targets)?.as_slice() {
        [] => graph
            .default_target()
            .ok_or_else(|| Diagnostic::new(Code::CLI_EMPTY, "the spec defines no stages"))?,
        [one] => *one,
        _ => {
            return Err(Diagnostic::new(
                Code::CLI_TAG,
                "`-t` names the image of one stage, but the `--target`s name several stages",
            )
            .with_help("give one `--target` with `-t`"));
        }
    };
    for t in &req.tags {
        if !crate::ir::valid_tag(t) || t.contains('@') {
            return Err(Diagnostic::new(Code::CLI_TAG, format!("`{t}` is not an image name"))
                .with_help("write a name as Docker does: lower-case `[registry/]name[:tag]`, e.g. `-t app:1.0`"));
        }
        exports.push(Export {
            stage: target,
            dest: PathBuf::new(),
            format: ExportFormat::Tagged,
            when: When::Success,
            tag: Some(crate::store::oci::normalize_tag(t)),
            compression: Default::default(),
            provenance: false,
            squash: false,
            span: None,
        });
    }
    if !roots.contains(&target) {
        roots.push(target);
        roots.sort();
    }
    Ok((roots, exports))
}

fn pick_exports(graph: &Graph, req: &Request) -> Result<(Vec<StageId>, Vec<Export>), Diagnostic> {
    let chosen = targets(graph, &req.targets)?;
    let default = || {
        graph
            .default_target()
            .ok_or_else(|| Diagnostic::new(Code::CLI_EMPTY, "the spec defines no stages"))
    };
    if !req.outputs.is_empty() {
        let mut roots = chosen.clone();
        let mut exports = Vec::new();
        for o in &req.outputs {
            let stage = match &o.target {
                Some(name) => {
                    match select(graph, name)?.as_slice() {
                        [one] => *one,
                        many => {
                            return Err(Diagnostic::new(
                            Code::CLI_OUTPUT,
                            format!(
                                "`-o {}` follows `--target {name}`, which names {} stages",
                                o.dest.display(),
                                many.len()
                            ),
                        )
                        .with_help("an `-o` exports one stage: give it after a `--target` that names one"));
                        }
                    }
                }
                None => match chosen.as_slice() {
                    [] => default()?,
                    [one] => *one,
                    _ => {
                        return Err(Diagnostic::new(
                            Code::CLI_OUTPUT,
                            format!("`-o {}` comes before every `--target`, and they name several stages", o.dest.display()),
                        )
                        .with_help("give each `-o` after the `--target` it exports: `--target a -o out/a --target b -o out/b`"));
                    }
                },
            };
            if !roots.contains(&stage) {
                roots.push(stage);
            }
            exports.push(Export {
                stage,
                dest: o.dest.clone(),
                format: o.format,
                when: When::Success,
                tag: o.tag.clone(),
                compression: o.compression,
                provenance: false,
                squash: false,
                span: None,
            });
        }
        roots.sort();
        return Ok((roots, exports));
    }
    if !chosen.is_empty() {
        return Ok((chosen, Vec::new()));
    }
    if !graph.exports.is_empty() {
        let mut roots: Vec<StageId> = graph.exports.iter().map(|e| e.stage).collect();
        roots.sort();
        roots.dedup();
        return Ok((roots, graph.exports.clone()));
    }
    Ok((vec![default()?], Vec::new()))
}

/// `-o -` (or `dest=-`): a tar on standard output.
pub fn is_stdout(e: &Export) -> bool {
    e.dest.as_os_str() == "-" && e.format == ExportFormat::Tar && e.span.is_none()
}

/// Whether a diagnostic reports damage in the store, which a rebuild
/// without the cache repairs.
fn is_damage(d: &Diagnostic) -> bool {
    d.is_damage()
}

/// Build a plan. `waiting` is told why, when the store is locked.
/// Waits, when dropped, for the old exports being removed: previous
/// exports swapped out are removed while the build records what it did,
/// and a build is over when they are gone.
struct RemovalsJoined;

impl Drop for RemovalsJoined {
    fn drop(&mut self) {
        crate::export::finish_removals();
    }
}

pub fn run(
    plan: Plan,
    req: &Request,
    sources: &Sources,
    progress: &Progress<'_>,
    cancel: Arc<AtomicBool>,
    waiting: &dyn Fn(&str),
) -> Result<Report, Diagnostic> {
    let Plan {
        loaded,
        roots,
        exports,
        state_dir,
        spec_path,
        prefetch,
    } = plan;
    let mut prefetch = Some(prefetch);
    let graph = &loaded.graph;
    let store = Store::open_waiting(&state_dir, Access::Shared, waiting)?;
    // Dropped before the store (locals go in reverse): old exports are
    // gone while this process's temp exports are still announced.
    let _removals = RemovalsJoined;
    let pinned = match pins::resolve(
        graph, &roots, &spec_path, req, sources, &store, progress, false,
    ) {
        Ok(p) => p,
        Err(failures) => return Ok(Report::failed(failures)),
    };
    let pins::Pinned { images, urls } = pinned;
    announce(&images, progress);
    let exclude = outputs(&state_dir, &exports);
    let settings = Settings {
        epoch: req.epoch,
        set_owner: rustix::process::geteuid().is_root(),
    };
    let (mut options, mut notices) =
        options_of(req, sources, &roots, graph, &images, urls, &spec_path);
    store.set_verify_existing(req.no_cache);
    let mut repaired = false;
    let spec_name = spec_name(&spec_path);
    let remote = connect_remote(req)?;
    let tiered = remote
        .as_ref()
        .map(|r| crate::store::remote::tiered::Tiered::new(&store, r));
    let stores = || stores_of(&store, tiered.as_ref());
    // Each build of the loop below (or the dry run) sets out the same way.
    let setup = |options: &Options, prefetched| Setup {
        graph,
        stores: stores(),
        progress,
        options: options.clone(),
        cancel: cancel.clone(),
        exclude: exclude.clone(),
        images: &images,
        prefetched,
    };
    let mut prefetched = || prefetch.take().map(|p| p.join()).unwrap_or_default();
    if req.dry_run {
        let outcome = Executor::new(setup(&options, prefetched())).build(&roots);
        return Ok(dry_run(
            graph, &roots, &store, &options, &spec_name, outcome, notices, progress,
        ));
    }
    let (outcome, failures) = loop {
        let executor = Executor::new(setup(&options, prefetched()));
        let outcome = executor.build(&roots);
        let damaged = outcome.failures.iter().any(is_damage);
        // What the build took from a remote cache that then failed it (went
        // down, or no longer had a tree or file it named) is built here
        // again, with the local cache.
        let remote_lost = || lost_remote(tiered.as_ref(), &images, progress);
        if damaged && !outcome.interrupted && remote_lost() {
            continue;
        }
        if damaged && !repaired && !outcome.interrupted {
            repaired = true;
            repair(&store, &images, progress, &mut options);
            continue;
        }
        let ok = outcome.failures.is_empty() && !outcome.interrupted;
        let phase = ExportPhase {
            store: &store,
            content: stores().content,
            executor: &executor,
            graph,
            outcome: &outcome,
            settings: &settings,
            progress,
            images: &images,
            sources,
            spec_name: &spec_name,
            scope: &options.scope,
        };
        match phase.write(&exports, ok) {
            Ok(export_failures) => {
                // The process ends soon (see below).
                executor.leave_trees();
                let mut failures = outcome.failures.clone();
                failures.extend(export_failures);
                break (outcome, failures);
            }
            Err(_) if remote_lost() => {}
            Err(_) if !repaired => {
                repaired = true;
                repair(&store, &images, progress, &mut options);
            }
            Err(damage) => {
                let mut failures = outcome.failures.clone();
                failures.extend(damage);
                break (outcome, failures);
            }
        }
    };
    let mut failures = failures;
    if let Some(t) = &tiered {
        notices.extend(finish_remote(t, outcome.interrupted, progress));
    }
    notices.extend(repairs_made(&store));
    failures.extend(record(&store, &options, &spec_name, &outcome, &images));
    let ok = failures.is_empty() && !outcome.interrupted;
    progress.emit(finished(ok, progress, &outcome, failures.len()));
    let states = if ok {
        built(graph, &roots, &outcome)
    } else {
        Vec::new()
    };
    let report = Report {
        results: states
            .iter()
            .map(|(n, s)| (n.clone(), s.digest()))
            .collect(),
        failures,
        notices,
        interrupted: outcome.interrupted,
        states,
        records: outcome.records.clone(),
        planned: Vec::new(),
        tests: testing::reports(graph, &roots, &outcome, sources),
    };
    // The process ends soon: freeing large structures one by one would
    // only slow a no-op build down.
    std::mem::forget(outcome);
    std::mem::forget(loaded);
    Ok(report)
}

/// The event that ends a build.
fn finished(ok: bool, progress: &Progress<'_>, outcome: &Outcome, failures: usize) -> Event {
    Event::BuildFinished {
        ok,
        ms: progress.elapsed_ms(),
        steps_run: outcome.steps_run,
        steps_cached: outcome.steps_cached,
        failures,
        unchanged: outcome.from_memo,
    }
}

/// Say how each image was resolved.
fn announce(images: &ImageSet, progress: &Progress<'_>) {
    for (reference, digest, how) in images.resolved() {
        progress.emit(Event::ImageResolved {
            reference,
            digest: digest.to_string(),
            how: how.as_str().to_string(),
        });
    }
}

/// The spec's name in records: its absolute path.
fn spec_name(spec_path: &Path) -> String {
    std::path::absolute(spec_path)
        .unwrap_or(spec_path.to_path_buf())
        .display()
        .to_string()
}

/// A dry run's report: each step the roots need, cached or not and why
/// (as `kiln explain` would say after a build), from the outcome of a
/// build that ran nothing.
#[allow(clippy::too_many_arguments)]
fn dry_run(
    graph: &Graph,
    roots: &[StageId],
    store: &Store,
    options: &Options,
    spec_name: &str,
    outcome: crate::exec::Outcome,
    notices: Vec<Diagnostic>,
    progress: &Progress<'_>,
) -> Report {
    let why = records::would_miss(
        store,
        &options.scope,
        spec_name,
        options.no_cache,
        &outcome.records,
    );
    let found: HashMap<(&str, usize), (&records::StepRecord, Vec<String>)> = outcome
        .records
        .iter()
        .zip(why)
        .map(|(r, w)| ((r.stage.as_str(), r.step), (r, w)))
        .collect();
    let mut planned: Vec<Planned> = Vec::new();
    // Stages with a step that would run.
    let mut running: std::collections::HashSet<StageId> = Default::default();
    for id in graph.ancestors(roots) {
        let stage = graph.stage(id);
        // Why a step without an answer would run: a step before it would,
        // or a stage it needs would.
        let mut after = stage
            .deps
            .iter()
            .find(|d| running.contains(d))
            .map(|d| format!("`{}` would run first", graph.stage(*d).name));
        for (i, step) in stage.steps.iter().enumerate() {
            let text = crate::exec::steps::describe(&step.op, graph);
            let (status, why) = match found.get(&(stage.name.as_str(), i)) {
                Some((r, _)) if r.cached => {
                    (if r.remote { "remote" } else { "cached" }, Vec::new())
                }
                Some((_, why)) => {
                    after = Some(format!("it comes after step {}, which would run", i + 1));
                    ("would run", why.clone())
                }
                None => (
                    "would run",
                    vec![
                        after
                            .clone()
                            .unwrap_or_else(|| "a stage it needs did not build".into()),
                    ],
                ),
            };
            progress.emit(Event::StepPlanned {
                stage: stage.name.clone(),
                step: i,
                text: text.clone(),
                status: status.to_string(),
                why: why.clone(),
            });
            if status == "would run" {
                running.insert(id);
            }
            planned.push(Planned {
                stage: stage.name.clone(),
                step: i,
                text,
                status,
                why,
            });
        }
    }
    progress.emit(Event::BuildFinished {
        ok: outcome.failures.is_empty() && !outcome.interrupted,
        ms: progress.elapsed_ms(),
        steps_run: 0,
        steps_cached: outcome.steps_cached,
        failures: outcome.failures.len(),
        unchanged: false,
    });
    Report {
        failures: outcome.failures.clone(),
        notices,
        interrupted: outcome.interrupted,
        results: Vec::new(),
        states: Vec::new(),
        records: outcome.records.clone(),
        planned,
        tests: Vec::new(),
    }
}

/// The executor's options for this request, and what to tell the user
/// about them (jobs capped).
fn options_of(
    req: &Request,
    sources: &Sources,
    roots: &[StageId],
    graph: &Graph,
    images: &ImageSet,
    urls: crate::exec::Pins,
    spec_path: &Path,
) -> (Options, Vec<Diagnostic>) {
    let (jobs, capped) = jobs(req);
    let options = Options {
        jobs,
        no_cache: req.no_cache,
        memo_key: (!req.no_cache)
            .then(|| memo_key(sources, req, roots, graph, images, &urls))
            .flatten(),
        epoch: req.epoch,
        unpack_limit: req.unpack_limit,
        secrets: req.secrets.clone(),
        ssh: Arc::new(req.ssh.clone()),
        pins: Arc::new(urls),
        scope: load::project_scope(spec_path),
        dry_run: req.dry_run,
    };
    (options, capped.into_iter().collect())
}

/// The remote cache the request names, ready (nothing is asked of it
/// until a step is looked up).
fn connect_remote(req: &Request) -> Result<Option<crate::store::remote::Remote>, Diagnostic> {
    let access = crate::image::Access {
        insecure: req.insecure_registries.clone(),
    };
    req.remote
        .as_ref()
        .map(|s| {
            crate::store::remote::Remote::connect(s.clone(), &|r, _push| {
                crate::image::registry::cache_repository(r, &access)
            })
        })
        .transpose()
        .map_err(|e| Diagnostic::new(Code::REMOTE_CACHE, e))
}

/// The requested stages that were built, by name, with their results.
fn built(
    graph: &Graph,
    roots: &[StageId],
    outcome: &Outcome,
) -> Vec<(String, crate::model::state::State)> {
    roots
        .iter()
        .filter_map(|r| match outcome.stages.get(r) {
            Some(StageOutcome::Built(s)) => Some((graph.stage(*r).name.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

/// The stages run at once: `-j`, else the CPUs; capped at [`MAX_JOBS`],
/// with a warning that says so.
fn jobs(req: &Request) -> (usize, Option<Diagnostic>) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let jobs = req.jobs.unwrap_or(cpus).max(1);
    if jobs <= MAX_JOBS {
        return (jobs, None);
    }
    let warning = Diagnostic::warning(
        Code::CLI_JOBS,
        format!("`-j {jobs}` is more than kiln uses; running at most {MAX_JOBS} stages at once"),
    )
    .with_help(format!("this machine has {cpus} CPUs"));
    (MAX_JOBS, Some(warning))
}

/// What the build writes, which no context may read: the state directory,
/// the export destinations and the provenance statements beside them.
fn outputs(state_dir: &Path, exports: &[PlannedExport]) -> Vec<PathBuf> {
    let mut out = vec![state_dir.to_path_buf()];
    out.extend(
        exports
            .iter()
            .filter(|e| !e.resolved.as_os_str().is_empty())
            .map(|e| e.resolved.clone()),
    );
    out.extend(
        exports
            .iter()
            .filter(|e| e.export.provenance)
            .map(|e| provenance::path_for(&e.resolved)),
    );
    out
}

/// A warning for the objects a build found damaged and moved aside.
fn repairs_made(store: &Store) -> Option<Diagnostic> {
    let repairs = store.take_repairs();
    if repairs.is_empty() {
        return None;
    }
    let d = Diagnostic::warning(
        Code::STORE_REPAIRED,
        "the cache was damaged; kiln moved the damaged objects to `quarantine/` in the state directory and rebuilt what needed them",
    );
    Some(repairs.into_iter().fold(d, |d, r| d.with_note(r)))
}

/// The build's records for `explain`, and the cache entries it used (which
/// `gc --max-size` keeps first); an error if they cannot be written.
fn record(
    store: &Store,
    options: &Options,
    spec_name: &str,
    outcome: &Outcome,
    images: &ImageSet,
) -> Option<Diagnostic> {
    let mut used: Vec<StepKey> = outcome
        .records
        .iter()
        .filter_map(|r| StepKey::parse(&r.key))
        .collect();
    used.extend(images.used_keys());
    records::save_build(
        store,
        &options.scope,
        spec_name,
        options.no_cache,
        &outcome.records,
        &outcome.spans,
    )
    .and_then(|_| store.record_use(&used))
    .err()
    .map(|e| Diagnostic::io("cannot record the build in", store.root(), &e))
}

/// What a build reads and writes: the local store, with the remote cache
/// behind it when there is one.
fn stores_of<'a>(
    store: &'a Store,
    tiered: Option<&'a crate::store::remote::tiered::Tiered<'a>>,
) -> crate::exec::Stores<'a> {
    match tiered {
        Some(t) => crate::exec::Stores {
            content: t,
            actions: t,
            local: store.scratch(),
        },
        None => crate::exec::Stores::local(store),
    }
}

/// Whether the build should start again without the remote cache: what
/// it took from it could not be read (the server went down, or no longer
/// has what it named) and it was not given up on yet. Gives it up.
fn lost_remote(
    tiered: Option<&crate::store::remote::tiered::Tiered<'_>>,
    images: &ImageSet,
    progress: &Progress<'_>,
) -> bool {
    let Some(t) = tiered else {
        return false;
    };
    let r = t.remote();
    if !(t.fetch_failed() || r.is_down()) || r.given_up() {
        return false;
    }
    r.give_up();
    images.forget_states();
    progress.emit(Event::Notice {
        message: "what this build took from the remote cache cannot be read now; building it here"
            .into(),
    });
    true
}

/// Upload what the build made (none after Ctrl-C), say what the remote
/// did, and give its warnings.
fn finish_remote(
    t: &crate::store::remote::tiered::Tiered<'_>,
    interrupted: bool,
    progress: &Progress<'_>,
) -> Vec<Diagnostic> {
    t.finish(interrupted);
    let r = t.remote();
    let tally = r.tally();
    progress.emit(Event::RemoteCache {
        found: tally.hits,
        results_uploaded: tally.results_uploaded,
        uploaded_blobs: tally.uploaded_blobs,
        uploaded_bytes: tally.uploaded_bytes,
        downloaded_bytes: tally.downloaded_bytes,
    });
    r.take_warnings()
        .into_iter()
        .map(|w| Diagnostic::warning(Code::REMOTE_CACHE, w))
        .collect()
}

/// Set up the second attempt of a build that found damage: nothing from
/// the cache, everything written verified, no memo.
fn repair(store: &Store, images: &ImageSet, progress: &Progress<'_>, options: &mut Options) {
    images.forget_states();
    progress.emit(Event::Notice {
        message: "the cache is damaged; building again without it".into(),
    });
    crate::exec::memo::forget(store.layout(), &options.scope);
    store.set_verify_existing(true);
    options.no_cache = true;
    options.memo_key = None;
}

/// What the export phase of a build works with.
struct ExportPhase<'a> {
    store: &'a Store,
    /// What trees and files are read from (the store, or the store with
    /// the remote cache behind it).
    content: &'a dyn crate::store::ContentStore,
    executor: &'a Executor<'a>,
    graph: &'a Graph,
    outcome: &'a Outcome,
    settings: &'a Settings,
    progress: &'a Progress<'a>,
    images: &'a ImageSet,
    sources: &'a Sources,
    /// The spec as the build records name it.
    spec_name: &'a str,
    /// The project in the state directory.
    scope: &'a str,
}

impl ExportPhase<'_> {
    /// Write the statement of an export just put in place.
    fn write_provenance(&self, p: &PlannedExport) -> Result<(), Diagnostic> {
        let e = &p.export;
        let Some(StageOutcome::Built(state)) = self.outcome.stages.get(&e.stage) else {
            return Ok(());
        };
        let subject = provenance::subject(e, &p.resolved, &state.tree.hex())?;
        let statement = self.statement(e, &subject);
        let path = provenance::path_for(&p.resolved);
        let bytes = serde_json::to_vec_pretty(&statement)
            .map_err(|e| Diagnostic::internal(format!("provenance: {e}")))?;
        // A no-op build writes nothing.
        if std::fs::read(&path).is_ok_and(|old| old == bytes) {
            return Ok(());
        }
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(&tmp, &bytes)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|err| {
                let _ = std::fs::remove_file(&tmp);
                Diagnostic::io("cannot write the provenance", &path, &err)
            })
    }

    /// The provenance statement of an export whose subject is `subject`.
    fn statement(&self, e: &Export, subject: &provenance::Subject) -> serde_json::Value {
        // A build answered from the memo keeps its steps without their
        // inputs: they come from the records of the run that made them.
        let steps = records::with_inputs(
            self.store,
            self.scope,
            self.spec_name,
            &self.outcome.records,
        );
        provenance::statement(
            self.graph,
            e,
            subject,
            &steps,
            self.sources,
            self.settings.epoch,
        )
    }

    /// Attach the statement of a pushed image to it in the registry.
    fn attach_provenance(
        &self,
        e: &Export,
        reference: &str,
        manifest: &crate::model::digest::Sha256,
        size: u64,
    ) -> Result<(), Diagnostic> {
        let subject = provenance::Subject {
            name: reference.to_string(),
            digest: std::collections::BTreeMap::from([(
                "sha256".to_string(),
                manifest.hex().to_string(),
            )]),
        };
        let bytes = serde_json::to_vec(&self.statement(e, &subject))
            .map_err(|e| Diagnostic::internal(format!("provenance: {e}")))?;
        let blobs = crate::store::oci::OciBlobs::new(self.store.layout());
        crate::image::attach_statement(
            reference,
            self.images.access(),
            &blobs,
            (manifest, size),
            &bytes,
            provenance::SLSA,
        )
        .map(|_| ())
        .map_err(|err| {
            let mut d = Diagnostic::new(
                Code::EXPORT_PUSH,
                format!("pushed `{reference}`, but cannot attach its provenance: {err}"),
            )
            .with_help(
                "check that the registry accepts OCI 1.1 artifact manifests (with `subject`)",
            );
            if let Some(span) = e.span {
                d = d.with_label(span, "this push");
            }
            d
        })
    }

    /// Where exporters read contents and keep their own files: the one
    /// place a build chooses them.
    fn stores(&self) -> export::Stores<'_> {
        export::Stores {
            content: self.content,
            scratch: self.store.scratch(),
        }
    }

    /// The image of a tree (its layers from the cache when there).
    fn build_image(
        &self,
        tree: &crate::model::tree::Tree,
        tree_digest: crate::model::digest::TreeDigest,
        spec: &export::image::ImageSpec,
    ) -> Result<export::image::Built, Failed> {
        export::image::build(
            self.stores(),
            tree,
            tree_digest,
            spec,
            self.settings,
            &|d| self.executor.tree_in_memory(d),
        )
    }

    /// Make the image and name it in the local image store.
    fn tag(
        &self,
        tree: &crate::model::tree::Tree,
        tree_digest: crate::model::digest::TreeDigest,
        spec: &export::image::ImageSpec,
        name: &str,
    ) -> Result<crate::model::digest::Sha256, Failed> {
        let built = self.build_image(tree, tree_digest, spec)?;
        let blobs = crate::store::oci::OciBlobs::new(self.store.layout());
        blobs
            .set_tag(name, &built.manifest_digest, built.manifest.len() as u64)
            .map_err(|e| Failed::Error(e.diagnostic()))?;
        Ok(built.manifest_digest)
    }

    /// Make the image and push it: its manifest digest and what went up.
    fn push(
        &self,
        tree: &crate::model::tree::Tree,
        tree_digest: crate::model::digest::TreeDigest,
        spec: &export::image::ImageSpec,
        reference: &str,
    ) -> Result<
        (
            crate::model::digest::Sha256,
            crate::image::registry::Pushed,
            u64,
        ),
        Failed,
    > {
        let built = self.build_image(tree, tree_digest, spec)?;
        let blobs = crate::store::oci::OciBlobs::new(self.store.layout());
        let mut list: Vec<(crate::model::digest::Sha256, u64)> = built
            .layers
            .iter()
            .map(|l| (l.digest.clone(), l.size))
            .collect();
        list.push((built.config_digest.clone(), built.config.len() as u64));
        let pushed = crate::image::push(reference, self.images.access(), &blobs, &built.manifest, &list)
            .map_err(|e| {
                Failed::Error(
                    Diagnostic::new(Code::EXPORT_PUSH, format!("cannot push to `{reference}`: {e}"))
                        .with_help("check that the registry can be reached and that the Docker config file has credentials that may push there"),
                )
            })?;
        Ok((built.manifest_digest, pushed, built.manifest.len() as u64))
    }

    /// What an image export of `e` is made of besides the stage's tree:
    /// the base image's layers, the stage's config, the platform, the
    /// name, and what made the stage's own layer.
    fn image_spec(
        &self,
        e: &Export,
        state: &crate::model::state::State,
    ) -> Result<export::image::ImageSpec, Diagnostic> {
        use export::image::{Base, ImageSpec, Layer};
        let graph = self.graph;
        let base = match self.executor.base_image(e.stage)? {
            None => None,
            Some((_, base_state, l)) => Some(Base {
                tree_digest: base_state.tree,
                layers: l
                    .layers
                    .iter()
                    .zip(&l.diff_ids)
                    .map(|(d, diff_id)| Layer {
                        digest: d.digest.clone(),
                        size: d.size,
                        media_type: d.media_type.clone(),
                        diff_id: diff_id.clone(),
                    })
                    .collect(),
                history: l.history,
            }),
        };
        // The steps of the stage and the stages below it, down to the
        // image (or scratch).
        let mut chain = vec![e.stage];
        while let crate::ir::Base::Stage(s) = graph.stage(*chain.last().unwrap_or(&e.stage)).base {
            if chain.contains(&s) {
                break;
            }
            chain.push(s);
        }
        // A layer for every step that changed the tree (Docker's model),
        // with the history naming the steps since the layer below. The
        // trees come from the steps themselves (replayed where the cache
        // kept none), never from what the cache happened to store, so
        // the same spec makes the same layers in any state directory.
        let records: HashMap<(&str, usize), &StepRecord> = self
            .outcome
            .records
            .iter()
            .map(|r| ((r.stage.as_str(), r.step), r))
            .collect();
        let mut own = Vec::new();
        let mut texts = Vec::new();
        let mut last = base.as_ref().map(|b| b.tree_digest);
        for id in chain.iter().rev() {
            let stage = graph.stage(*id);
            let trees: HashMap<usize, crate::model::digest::TreeDigest> = if e.squash {
                HashMap::new()
            } else {
                let keys: Vec<Option<StepKey>> = (0..stage.steps.len())
                    .map(|i| {
                        records
                            .get(&(stage.name.as_str(), i))
                            .and_then(|r| StepKey::parse(&r.key))
                    })
                    .collect();
                self.executor
                    .step_trees(*id, &keys, &self.outcome.stages)?
                    .into_iter()
                    .collect()
            };
            for (i, step) in stage.steps.iter().enumerate() {
                // A failed stage (exported with `when="always"`) ends at
                // the step that failed: the steps after it did not run.
                if !records.contains_key(&(stage.name.as_str(), i)) {
                    break;
                }
                texts.push(crate::exec::steps::describe(&step.op, graph));
                if let Some(t) = trees.get(&i)
                    && Some(*t) != last
                {
                    own.push(export::image::Segment::new(*t, &texts));
                    texts.clear();
                    last = Some(*t);
                }
            }
        }
        // (With `squash=#true`, nothing was pushed: one layer of it all.)
        if Some(state.tree) != last {
            own.push(export::image::Segment::new(state.tree, &texts));
            texts.clear();
        }
        // Steps after the last layer that only changed the config.
        let tail = (!texts.is_empty()).then(|| export::image::Segment::new(state.tree, &texts));
        let platform = &self.images.platform;
        let name = &graph.stage(e.stage).name;
        let tag = e.tag.clone().or_else(|| {
            // `docker load` names what it loads: the stage, by default.
            let n = format!("{}:latest", name.to_ascii_lowercase());
            (e.format == ExportFormat::DockerArchive && crate::ir::valid_tag(&n)).then_some(n)
        });
        Ok(ImageSpec {
            base,
            config: (*state.config).clone(),
            os: platform.os.clone(),
            architecture: platform.architecture.clone(),
            variant: platform.variant.clone(),
            tag,
            compression: e.compression,
            own,
            tail,
        })
    }

    /// Report an export found intact (and write its provenance beside it).
    fn unchanged(
        &self,
        p: &PlannedExport,
        stage: &str,
        shown: String,
        failures: &mut Vec<Diagnostic>,
    ) {
        self.progress.emit(Event::ExportWritten {
            stage: stage.to_string(),
            dest: shown,
            format: p.export.format.name().into(),
            unchanged: true,
        });
        if p.export.provenance
            && let Err(d) = self.write_provenance(p)
        {
            failures.push(d);
        }
    }

    /// Stage every export that is due, then swap them all in (or, when the
    /// build failed, only the `when="always"` ones), write the ones for
    /// standard output, and last name and push images (a push cannot be
    /// taken back). `Err` means an export found the store damaged: nothing
    /// was written, and the caller repairs.
    fn write(
        &self,
        exports: &[PlannedExport],
        ok: bool,
    ) -> Result<Vec<Diagnostic>, Vec<Diagnostic>> {
        let Staging {
            staged,
            stdout,
            pushes,
            mut failures,
            damage,
        } = self.stage_all(exports, ok);
        if !damage.is_empty() {
            for (_, s) in staged {
                s.discard();
            }
            return Err(damage);
        }
        let staged_ok = ok && failures.is_empty();
        self.swap_in(staged, ok, &mut failures);
        self.to_stdout(stdout, staged_ok, &mut failures)?;
        self.name_and_push(pushes, ok, staged_ok, &mut failures)?;
        Ok(failures)
    }

    /// Every export that is due, staged under a temp name (files), or
    /// set aside for standard output or for naming and pushing (images).
    fn stage_all<'p>(&self, exports: &'p [PlannedExport], ok: bool) -> Staging<'p> {
        let ExportPhase {
            executor,
            graph,
            outcome,
            settings,
            progress,
            ..
        } = *self;
        let mut failures = Vec::new();
        let mut damage = Vec::new();
        let mut staged = Vec::new();
        let mut pushes = Vec::new();
        let mut stdout = Vec::new();
        for p in exports {
            let e = &p.export;
            let stage = &graph.stage(e.stage).name;
            let shown = e.dest.display().to_string();
            let state = match outcome.stages.get(&e.stage) {
                Some(StageOutcome::Built(s)) if ok || e.when == When::Always => Some(s),
                Some(StageOutcome::Failed { last_good: Some(s) })
                    if e.when == When::Always && !outcome.interrupted =>
                {
                    Some(s)
                }
                _ => None,
            };
            let Some(state) = state else {
                let mut because = if outcome.interrupted {
                    "the build was interrupted".to_string()
                } else {
                    "the build failed".to_string()
                };
                // An always-export of a stage that has nothing to show
                // (skipped after a dependency failed, or failed before
                // its first tree) must not show the previous run's result
                // as this one's: kiln's previous export there goes.
                if e.when == When::Always
                    && !outcome.interrupted
                    && !p.resolved.as_os_str().is_empty()
                    && !is_stdout(e)
                    && std::fs::symlink_metadata(&p.resolved).is_ok()
                {
                    match export::remove_previous(self.stores(), &e.dest, &p.resolved) {
                        Ok(()) => {
                            because.push_str(
                                " before the stage could be built; the previous export there was removed",
                            );
                            let statement = provenance::path_for(&p.resolved);
                            if e.provenance && provenance::replaceable(&statement) {
                                let _ = std::fs::remove_file(statement);
                            }
                        }
                        Err(d) => failures.push(d),
                    }
                }
                progress.emit(Event::ExportSkipped {
                    stage: stage.clone(),
                    dest: shown,
                    because,
                });
                continue;
            };
            // A file export found as recorded, untouched, is done: its
            // tree need not even be loaded.
            if !e.format.is_image()
                && !is_stdout(e)
                && export::intact(self.stores(), &p.resolved, state.tree, settings, e.format)
            {
                self.unchanged(p, stage, shown, &mut failures);
                continue;
            }
            let tree = match executor.tree(state.tree) {
                Ok(t) => t,
                Err(d) if is_damage(&d) => {
                    damage.push(d);
                    continue;
                }
                Err(d) => {
                    failures.push(d);
                    continue;
                }
            };
            let image = if e.format.is_image() {
                match self.image_spec(e, state) {
                    Ok(i) => Some(i),
                    Err(d) if is_damage(&d) => {
                        damage.push(d);
                        continue;
                    }
                    Err(mut d) => {
                        if let Some(span) = e.span
                            && d.labels.is_empty()
                        {
                            d = d.with_label(span, "this export");
                        }
                        failures.push(d);
                        continue;
                    }
                }
            } else {
                None
            };
            if is_stdout(e) {
                stdout.push((p, tree));
                continue;
            }
            if matches!(e.format, ExportFormat::Push | ExportFormat::Tagged) {
                if let Some(spec) = image {
                    pushes.push((p, tree, state.tree, spec));
                }
                continue;
            }
            let job = export::Job {
                stage,
                tree: &tree,
                tree_digest: state.tree,
                format: e.format,
                shown: &e.dest,
                dest: &p.resolved,
                settings,
                image: image.as_ref(),
                in_memory: &|d| self.executor.tree_in_memory(d),
            };
            match export::stage(self.stores(), &job) {
                Ok(export::Prepared::Intact) => self.unchanged(p, stage, shown, &mut failures),
                Ok(export::Prepared::Staged(s)) => staged.push((p, s)),
                Err(export::Failed::Damaged(d)) => damage.push(d),
                Err(export::Failed::Error(mut d)) => {
                    if let Some(span) = e.span
                        && d.labels.is_empty()
                    {
                        d = d.with_label(span, "this export");
                    }
                    failures.push(d);
                }
            }
        }
        Staging {
            staged,
            stdout,
            pushes,
            failures,
            damage,
        }
    }

    /// The staged file exports swapped in; when the build (or another
    /// export) failed, only the `when="always"` ones.
    fn swap_in(
        &self,
        staged: Vec<(&PlannedExport, Box<export::Staged>)>,
        ok: bool,
        failures: &mut Vec<Diagnostic>,
    ) {
        let (graph, progress) = (self.graph, self.progress);
        // A build that failed (here or while exporting) writes only the
        // `when="always"` exports.
        let all_good = ok && failures.is_empty();
        for (p, s) in staged {
            let e = &p.export;
            let stage = &graph.stage(e.stage).name;
            if !all_good && e.when != When::Always {
                s.discard();
                progress.emit(Event::ExportSkipped {
                    stage: stage.clone(),
                    dest: e.dest.display().to_string(),
                    because: if ok {
                        "another export failed".into()
                    } else {
                        "the build failed".into()
                    },
                });
                continue;
            }
            match s.commit(self.stores()) {
                Ok(()) => {
                    progress.emit(Event::ExportWritten {
                        stage: stage.clone(),
                        dest: e.dest.display().to_string(),
                        format: e.format.name().into(),
                        unchanged: false,
                    });
                    if e.provenance
                        && let Err(d) = self.write_provenance(p)
                    {
                        failures.push(d);
                    }
                }
                Err(d) => failures.push(d),
            }
        }
    }

    /// Exports to standard output, once every file export is in place.
    fn to_stdout(
        &self,
        stdout: Vec<(&PlannedExport, Arc<crate::model::tree::Tree>)>,
        staged_ok: bool,
        failures: &mut Vec<Diagnostic>,
    ) -> Result<(), Vec<Diagnostic>> {
        let (graph, settings, progress) = (self.graph, self.settings, self.progress);
        for (p, tree) in stdout {
            let e = &p.export;
            let stage = &graph.stage(e.stage).name;
            if !(staged_ok && failures.is_empty()) {
                progress.emit(Event::ExportSkipped {
                    stage: stage.clone(),
                    dest: "-".into(),
                    because: "the build failed".into(),
                });
                continue;
            }
            let out = std::io::BufWriter::new(std::io::stdout().lock());
            let written = export::tar_to(self.stores(), &tree, out, settings).and_then(|mut w| {
                std::io::Write::flush(&mut w).map_err(|err| {
                    Failed::Error(Diagnostic::io(
                        "cannot write",
                        std::path::Path::new("standard output"),
                        &err,
                    ))
                })
            });
            match written {
                Ok(()) => progress.emit(Event::ExportWritten {
                    stage: stage.clone(),
                    dest: "-".into(),
                    format: "tar".into(),
                    unchanged: false,
                }),
                Err(Failed::Damaged(d)) => {
                    return Err(vec![d]);
                }
                Err(Failed::Error(d)) => failures.push(d),
            }
        }
        Ok(())
    }

    /// `-t` names and pushes, last.
    fn name_and_push(
        &self,
        pushes: Vec<ToName<'_>>,
        ok: bool,
        staged_ok: bool,
        failures: &mut Vec<Diagnostic>,
    ) -> Result<(), Vec<Diagnostic>> {
        let (graph, progress) = (self.graph, self.progress);
        for (p, tree, tree_digest, spec) in pushes {
            let e = &p.export;
            let stage = &graph.stage(e.stage).name;
            let reference = e.tag.clone().unwrap_or_default();
            if !(staged_ok && failures.is_empty()) && e.when != When::Always {
                progress.emit(Event::ExportSkipped {
                    stage: stage.clone(),
                    dest: reference,
                    because: if ok {
                        "another export failed".into()
                    } else {
                        "the build failed".into()
                    },
                });
                continue;
            }
            if e.format == ExportFormat::Tagged {
                match self.tag(&tree, tree_digest, &spec, &reference) {
                    Ok(digest) => progress.emit(Event::ImageTagged {
                        stage: stage.clone(),
                        name: reference,
                        digest: digest.to_string(),
                    }),
                    Err(Failed::Damaged(d)) => {
                        return Err(vec![d]);
                    }
                    Err(Failed::Error(d)) => failures.push(d),
                }
                continue;
            }
            match self.push(&tree, tree_digest, &spec, &reference) {
                Ok(pushed) => {
                    let attached = if e.provenance {
                        self.attach_provenance(e, &reference, &pushed.0, pushed.2)
                    } else {
                        Ok(())
                    };
                    progress.emit(Event::ImagePushed {
                        stage: stage.clone(),
                        reference,
                        digest: pushed.0.to_string(),
                        uploaded: pushed.1.uploaded,
                        uploaded_bytes: pushed.1.uploaded_bytes,
                        present: pushed.1.present,
                    });
                    if let Err(d) = attached {
                        failures.push(d);
                    }
                }
                Err(Failed::Damaged(d)) => {
                    return Err(vec![d]);
                }
                Err(Failed::Error(mut d)) => {
                    if let Some(span) = e.span
                        && d.labels.is_empty()
                    {
                        d = d.with_label(span, "this push");
                    }
                    failures.push(d);
                }
            }
        }
        Ok(())
    }
}

/// An image export to name (`-t`) or push: its tree, the tree's digest and
/// the image to make of it.
type ToName<'p> = (
    &'p PlannedExport,
    Arc<crate::model::tree::Tree>,
    crate::model::digest::TreeDigest,
    export::image::ImageSpec,
);

/// What staging the exports gave.
struct Staging<'p> {
    /// File exports written under temp names, to swap in.
    staged: Vec<(&'p PlannedExport, Box<export::Staged>)>,
    /// Trees to write to standard output.
    stdout: Vec<(&'p PlannedExport, Arc<crate::model::tree::Tree>)>,
    pushes: Vec<ToName<'p>>,
    failures: Vec<Diagnostic>,
    /// What found the store damaged: nothing is written then.
    damage: Vec<Diagnostic>,
}

/// What identifies a build request for the build memo: kiln's version,
/// every spec file read, the args, the context directory, the stages asked
/// for, the time plugins are shown and the plugin modules (by stat; `None`
/// while one changed less than two seconds ago, as for context files).
fn memo_key(
    sources: &Sources,
    req: &Request,
    roots: &[StageId],
    graph: &Graph,
    images: &ImageSet,
    pins: &crate::exec::Pins,
) -> Option<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    let field = |h: &mut blake3::Hasher, b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(&mut h, env!("CARGO_PKG_VERSION").as_bytes());
    for f in sources.all() {
        field(&mut h, f.path.as_os_str().as_encoded_bytes());
        field(&mut h, f.text.as_bytes());
    }
    for (k, v) in &req.spec.args {
        field(&mut h, k.as_bytes());
        field(&mut h, v.as_bytes());
    }
    let ctx = std::path::absolute(&req.spec.context).unwrap_or_else(|_| req.spec.context.clone());
    field(&mut h, ctx.as_os_str().as_encoded_bytes());
    for r in roots {
        field(&mut h, graph.stage(*r).name.as_bytes());
    }
    field(&mut h, &req.epoch.to_le_bytes());
    field(&mut h, &req.unpack_limit.to_le_bytes());
    // A local image rebuilt under the same tag resolves to a new digest;
    // a download pinned again has a new sha256.
    for (reference, digest, _) in images.resolved() {
        field(&mut h, reference.as_bytes());
        field(&mut h, digest.to_string().as_bytes());
    }
    let mut urls: Vec<_> = pins.urls.iter().collect();
    urls.sort_by(|a, b| a.0.cmp(b.0));
    for (url, pin) in urls {
        field(&mut h, url.as_bytes());
        field(&mut h, pin.sha256.as_bytes());
    }
    field(&mut h, req.platform.as_deref().unwrap_or("").as_bytes());
    let now = crate::context::index::now_ns();
    // Host files a `run` step names as its inputs count like plugins.
    let mut host_inputs = Vec::new();
    for st in graph.stages.iter().flat_map(|s| &s.steps) {
        st.op.reads(&mut |r| {
            if let crate::ir::Read::HostFile(h) = r {
                host_inputs.push(std::path::PathBuf::from(h));
            }
        });
    }
    // (A plugin a stage builds is that stage's result, which the memo's
    // contexts and spec text already decide; a downloaded one is its pin,
    // in the spec text.)
    let plugins = graph
        .plugins
        .iter()
        .filter_map(|p| p.host_path().map(Path::to_path_buf));
    for path in plugins.chain(host_inputs) {
        field(&mut h, path.as_os_str().as_encoded_bytes());
        match std::fs::metadata(&path) {
            Ok(m) => {
                let stat = crate::context::index::FileStat::of(&m);
                if now - stat.changed_ns() < 2_000_000_000 {
                    return None;
                }
                stat.hash_into(&mut h);
            }
            Err(_) => field(&mut h, b"missing"),
        }
    }
    Some(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_unpack_size_is_the_default_limit() {
        assert_eq!(
            crate::units::parse_size(DEFAULT_UNPACK_SIZE),
            Some(DEFAULT_UNPACK_LIMIT)
        );
        let req = Request::new(SpecInput::default());
        assert_eq!(req.unpack_limit, DEFAULT_UNPACK_LIMIT);
    }
}
