//! The executor: runs the stages a build needs, in parallel, from the cache.
//!
//! [`schedule`] starts every stage whose dependencies are done on a rayon
//! pool of `-j` threads; [`stage::Runner`] runs a stage's steps in order,
//! each keyed first and skipped on a cache hit; each step kind (copy,
//! write, plugin, …) is a module of [`steps`], behind one trait. A failing
//! step fails its stage and skips its dependants; independent stages go
//! on, and every failure is returned. Builtin steps edit tree manifests in
//! memory: no working tree is ever written to disk, so nothing of an
//! intermediate stage outlives the build but its cache entries. The
//! executor reads and writes through the store's traits
//! ([`crate::store::ContentStore`], [`crate::store::ActionCache`]), so a
//! cache backend plugs in without touching it. Progress is reported only
//! as events.

pub mod env;
pub mod memo;
pub mod schedule;
pub mod stage;
pub mod steps;
pub mod workdir;

use crate::diag::Code;
use crate::diag::Diagnostic;
use crate::image::set::ImageSet;
use crate::ir::{Graph, StageId};
use crate::model::digest::StepKey;
use crate::model::state::State;
use crate::progress::{Event, Progress};
use crate::store::{ActionCache, ContentStore, Store};
use env::Env;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use crate::store::records::StepRecord;

#[derive(Clone, Debug)]
pub struct Options {
    pub jobs: usize,
    pub no_cache: bool,
    /// What identifies this build's request (spec text, args, targets), for
    /// the build memo; `None` disables the memo.
    pub memo_key: Option<[u8; 32]>,
    /// Seconds since the epoch that plugins see as the time (`SOURCE_DATE_EPOCH`, or 0).
    pub epoch: u64,
    /// The most an archive may expand to when extracted.
    pub unpack_limit: u64,
    /// Secrets for `run` steps' secret mounts (`--secret`).
    pub secrets: Secrets,
    /// SSH agent sockets for `run` steps' ssh mounts (`--ssh`), by id.
    pub ssh: Arc<HashMap<String, PathBuf>>,
    /// What the lock file pins for sources the spec does not.
    pub pins: Arc<Pins>,
    /// The project, for what the state directory keeps per project (a
    /// digest of the spec's path): the private copies `run` steps without
    /// root leave for the next command (see `sandbox::rootfs`).
    pub scope: String,
    /// Run nothing: steps the cache answers are taken, a stage stops at
    /// the first step that would run, and no memo is written.
    pub dry_run: bool,
}

/// Sources the spec does not pin, pinned for this build (from the lock
/// file, or on first use).
#[derive(Clone, Debug, Default)]
pub struct Pins {
    /// Downloads without a checksum, by URL.
    pub urls: HashMap<String, UrlPin>,
    /// Git refs, by (URL, ref): the commit (lowercase hex).
    pub gits: HashMap<(String, String), String>,
}

#[derive(Clone, Debug)]
pub struct UrlPin {
    /// Lowercase hex.
    pub sha256: String,
    /// The download and its size, when it was fetched during this build
    /// and stored.
    pub blob: Option<(crate::model::digest::BlobDigest, u64)>,
}

/// Secrets given on the command line (`--secret id=…`), by id. Never
/// keyed, stored, logged or exported; never shown by `Debug`.
#[derive(Clone, Default)]
pub struct Secrets(pub Arc<HashMap<String, Vec<u8>>>);

impl Secrets {
    pub fn get(&self, id: &str) -> Option<&Vec<u8>> {
        self.0.get(id)
    }

    /// `text` with every secret's value (without a final newline) replaced
    /// by `***`, so that a command printing a secret does not put it in the
    /// progress output or the logs. Values under 4 bytes are left alone:
    /// masking them would garble output and hide nothing.
    pub fn redact(&self, text: &[u8]) -> Vec<u8> {
        let mut out = text.to_vec();
        // A secret of several lines (a key file) is masked whole and line
        // by line, since output reaches the progress display in lines.
        let mut needles: Vec<&[u8]> = Vec::new();
        for value in self.0.values() {
            let v = value.strip_suffix(b"\n").unwrap_or(value);
            let v = v.strip_suffix(b"\r").unwrap_or(v);
            if v.len() >= 4 {
                needles.push(v);
            }
            if v.contains(&b'\n') {
                needles.extend(v.split(|b| *b == b'\n').filter(|l| l.len() >= 8));
            }
        }
        for v in needles {
            let mut masked = Vec::with_capacity(out.len());
            let mut i = 0;
            while i < out.len() {
                if out[i..].starts_with(v) {
                    masked.extend_from_slice(b"***");
                    i += v.len();
                } else {
                    masked.push(out[i]);
                    i += 1;
                }
            }
            out = masked;
        }
        out
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.0.keys().collect();
        ids.sort();
        write!(f, "Secrets({ids:?})")
    }
}

/// The event for a test that ended (its run, or a passing run cached).
fn test_event(
    stage: &crate::ir::Stage,
    index: usize,
    run: &crate::model::state::TestRun,
    cached: bool,
) -> Event {
    Event::TestFinished {
        stage: stage.name.clone(),
        step: index,
        name: stage.test_name(index).unwrap_or_else(|| stage.name.clone()),
        passed: run.passed,
        status: run.status.clone(),
        ms: run.ms as f64,
        cached,
    }
}

/// How a stage ended.
#[derive(Clone, Debug)]
pub enum StageOutcome {
    Built(State),
    /// A step failed; `last_good` is the state before it (for `when="always"` exports).
    Failed {
        last_good: Option<State>,
    },
    /// A dependency failed or the build was interrupted.
    Skipped,
}

pub struct Outcome {
    pub stages: HashMap<StageId, StageOutcome>,
    pub failures: Vec<Diagnostic>,
    pub records: Vec<StepRecord>,
    pub steps_run: usize,
    pub steps_cached: usize,
    pub interrupted: bool,
    /// The result came whole from the build memo.
    pub from_memo: bool,
    /// When each stage that built (or failed) started and ended (when the
    /// memo answered: when it did, for each).
    pub spans: Vec<crate::model::timing::Span>,
}

/// Where a build reads and writes: its cache backends (the local store,
/// or one that reaches a remote cache) and this machine's own part of
/// the state directory.
#[derive(Clone, Copy)]
pub struct Stores<'a> {
    pub content: &'a dyn ContentStore,
    pub actions: &'a dyn ActionCache,
    /// Scratch space, logs, stat indexes, the memo, the layers `run`
    /// steps' trees are stacked from, the OCI blob store.
    pub local: crate::store::Scratch<'a>,
}

impl<'a> Stores<'a> {
    /// Everything in the local state directory.
    pub fn local(store: &'a Store) -> Stores<'a> {
        Stores {
            content: store,
            actions: store,
            local: store.scratch(),
        }
    }
}

/// What a build's executor works with.
pub struct Setup<'a> {
    pub graph: &'a Graph,
    pub stores: Stores<'a>,
    pub progress: &'a Progress<'a>,
    pub options: Options,
    /// Set on Ctrl-C: stages not started are skipped, running plugins stop.
    pub cancel: Arc<AtomicBool>,
    /// Paths kept out of every context (the state dir, export targets).
    pub exclude: Vec<PathBuf>,
    /// The images stages are built on, resolved.
    pub images: &'a ImageSet,
    /// The memo and context listings read while the spec was compiled.
    pub prefetched: memo::Prefetched,
}

pub struct Executor<'a> {
    env: Env<'a>,
    actions: &'a dyn ActionCache,
}

impl<'a> Executor<'a> {
    pub fn new(setup: Setup<'a>) -> Executor<'a> {
        let actions = setup.stores.actions;
        Executor {
            env: Env::new(setup),
            actions,
        }
    }

    /// Build `roots` and everything they need.
    pub fn build(&self, roots: &[StageId]) -> Outcome {
        let env = &self.env;
        let graph = env.graph;
        let order = graph.ancestors(roots);
        env.progress.emit(Event::BuildStarted {
            stages: order.len(),
            jobs: env.options.jobs,
        });
        if let Some(key) = env.options.memo_key
            && let Some(outcome) = self.answer_from_memo(key, roots)
        {
            return outcome;
        }
        let runner = stage::Runner::new(env, self.actions);
        let scheduled = schedule::schedule(
            &order,
            |id| graph.stage(id).deps.clone(),
            env.options.jobs,
            |id, deps| runner.stage(id, deps),
        );
        for (_, snap) in env.listed() {
            if let Ok(snap) = snap {
                snap.save_index();
            }
        }
        let mut records =
            std::mem::take(&mut *runner.records.lock().unwrap_or_else(|e| e.into_inner()));
        records.sort_by(|a, b| (&a.stage, a.step).cmp(&(&b.stage, b.step)));
        let interrupted = env.cancel.load(Ordering::Relaxed);
        let mut failures = scheduled.failures;
        let tests = std::mem::take(
            &mut *runner
                .failed_tests
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        failures.extend(tests.into_iter().map(|(_, d)| d));
        // A build with a failed test leaves no memo: its test runs again.
        if let Some(key) = env.options.memo_key
            && failures.is_empty()
            && !interrupted
            && !env.options.dry_run
        {
            self.write_memo(key, &order, &scheduled.outcomes, &records);
        }
        Outcome {
            stages: scheduled.outcomes,
            failures,
            records,
            steps_run: runner.steps_run.load(Ordering::Relaxed),
            steps_cached: runner.steps_cached.load(Ordering::Relaxed),
            interrupted,
            from_memo: false,
            spans: std::mem::take(&mut *runner.spans.lock().unwrap_or_else(|e| e.into_inner())),
        }
    }

    /// A tree this build holds in memory (a stage's result, or one
    /// [`Executor::step_trees`] made), without reading the store.
    /// See [`env::Env::leave_trees`].
    pub fn leave_trees(&self) {
        self.env.leave_trees();
    }

    pub fn tree_in_memory(
        &self,
        d: crate::model::digest::TreeDigest,
    ) -> Option<Arc<crate::model::tree::Tree>> {
        self.env.tree_in_memory(d)
    }

    /// The tree after each step of `stage` that changed it, with the
    /// step's index, in order. `keys` are the steps' keys (from this
    /// build's records); the steps up to the first without one (a failed
    /// stage's, for a `when="always"` export) are looked at. Trees the cache stored are taken as they are; the
    /// others (builtin steps between commands, replayed rather than
    /// stored) are replayed once from the tree before them, then stored,
    /// and their cache entries say so, so the replay is not done again.
    pub fn step_trees(
        &self,
        stage: StageId,
        keys: &[Option<crate::model::digest::StepKey>],
        outcomes: &HashMap<StageId, StageOutcome>,
    ) -> Result<Vec<(usize, crate::model::digest::TreeDigest)>, Diagnostic> {
        use crate::model::state::Action;
        use crate::model::tree::Tree;
        let env = &self.env;
        let st = env.graph.stage(stage);
        let missing = |what: &str| {
            Diagnostic::internal(format!("{what}; build again with `--no-cache`"))
                .in_stage(&st.name)
        };
        let inputs: HashMap<StageId, State> = st
            .deps
            .iter()
            .filter_map(|d| match outcomes.get(d) {
                Some(StageOutcome::Built(s)) => Some((*d, s.clone())),
                _ => None,
            })
            .collect();
        let base = match &st.base {
            crate::ir::Base::Scratch => State {
                tree: env.content.put_tree(&Tree::new())?,
                config: Box::default(),
            },
            crate::ir::Base::Stage(s) => inputs
                .get(s)
                .cloned()
                .ok_or_else(|| missing("the stage it is built on has no result"))?,
            crate::ir::Base::Image(i) => env
                .image_state(&i.reference)
                .map_err(|e| missing(&format!("its image cannot be read: {e}")))?,
        };
        let mut current = base.tree;
        let mut config = *base.config;
        if matches!(st.base, crate::ir::Base::Stage(_)) {
            config.onbuild.clear();
        }
        let mut tree: Option<Tree> = None;
        let mut out = Vec::new();
        for (i, step) in st.steps.iter().enumerate() {
            let Some(key) = keys.get(i).copied().flatten() else {
                break;
            };
            let action = self
                .actions
                .get(key)
                .ok_or_else(|| missing("a step's cache entry is gone"))?;
            let kind = steps::kind(&step.op);
            if let Some(t) = action.tree {
                if t != current {
                    out.push((i, t));
                    current = t;
                    tree = None;
                }
            } else if kind.changes_tree() {
                let mut t = match tree.take() {
                    Some(t) => t,
                    None => env.tree_owned(current)?,
                };
                let cx = steps::StepCx {
                    env,
                    stage: st,
                    index: i,
                    loc: env.graph.source_map.step(stage, i),
                    inputs: &inputs,
                    key: None,
                    stored: None,
                    current: None,
                };
                let prepared = kind.prepare(&cx, None)?;
                let mut c = config.clone();
                kind.run(
                    &cx,
                    steps::Work {
                        tree: &mut t,
                        config: &mut c,
                        stored: &mut None,
                        test: &mut None,
                    },
                    prepared,
                )?;
                let base = env.tree(current)?;
                let d = env.content.put_tree_on(&t, current, &base)?;
                let _ = self.actions.put(
                    key,
                    &Action {
                        tree: Some(d),
                        config: action.config.clone(),
                        test: None,
                    },
                );
                if d != current {
                    out.push((i, d));
                    current = d;
                }
                // Image exports make layers from these trees: from memory.
                env.keep_tree(d, t.clone());
                tree = Some(t);
            }
            config = action.config;
        }
        Ok(out)
    }

    /// A stored tree, loaded once per build.
    pub fn tree(
        &self,
        d: crate::model::digest::TreeDigest,
    ) -> Result<Arc<crate::model::tree::Tree>, Diagnostic> {
        self.env.tree(d)
    }

    /// The image at the bottom of a stage's `from` chain, if any: its
    /// reference, its state (tree and config) and its layers, every blob
    /// in the store, for an image export that keeps them.
    pub fn base_image(
        &self,
        stage: StageId,
    ) -> Result<Option<(String, State, crate::image::set::BaseLayers)>, Diagnostic> {
        let mut id = stage;
        // A chain of stages cannot loop (the graph has no cycles), and is
        // no longer than the graph.
        for _ in 0..=self.env.graph.stages.len() {
            match &self.env.graph.stage(id).base {
                crate::ir::Base::Scratch => return Ok(None),
                crate::ir::Base::Stage(s) => id = *s,
                crate::ir::Base::Image(i) => {
                    let fail = |why: String| {
                        Diagnostic::new(
                            Code::EXPORT_BASE,
                            format!("cannot read the image `{}` to build on: {why}", i.reference),
                        )
                    };
                    let state = self.env.image_state(&i.reference).map_err(fail)?;
                    let blobs = crate::store::oci::OciBlobs::new(self.env.local.layout());
                    let layers = self
                        .env
                        .images
                        .layers(&i.reference, &blobs, self.env.actions)
                        .map_err(fail)?;
                    return Ok(Some((i.reference.clone(), state, layers)));
                }
            }
        }
        Err(Diagnostic::internal("a stage's `from` chain does not end"))
    }

    /// Finish at once if the last successful build had the same request
    /// and saw the same contexts.
    fn answer_from_memo(&self, key: [u8; 32], roots: &[StageId]) -> Option<Outcome> {
        let memo = match self.env.prefetched_memo() {
            Some(m) => m,
            None => memo::load(self.env.local.layout(), &self.env.options.scope)?,
        };
        if memo.key != key {
            return None;
        }
        for c in &memo.contexts {
            if c.id as usize >= self.env.graph.contexts.len() {
                return None;
            }
            let snap = self.env.context(crate::ir::ContextId(c.id)).ok()?;
            if snap.fingerprint()? != c.fingerprint {
                return None;
            }
        }
        let states: HashMap<u32, &State> = memo.stages.iter().map(|(id, s, _)| (*id, s)).collect();
        for r in roots {
            if !self.env.content.has_tree(states.get(&r.0)?.tree) {
                return None;
            }
        }
        if memo
            .stages
            .iter()
            .any(|(id, _, _)| *id as usize >= self.env.graph.stages.len())
        {
            return None;
        }
        if memo
            .steps
            .iter()
            .any(|s| s.stage as usize >= self.env.graph.stages.len())
        {
            return None;
        }
        let mut by_stage: Vec<Vec<memo::MemoStep>> = Vec::new();
        by_stage.resize_with(self.env.graph.stages.len(), Vec::new);
        let steps_cached = memo.steps.len();
        for s in memo.steps {
            by_stage[s.stage as usize].push(s);
        }
        let mut records = Vec::with_capacity(steps_cached);
        let mut spans = Vec::with_capacity(memo.stages.len());
        for (id, _, digest) in &memo.stages {
            let name = &self.env.graph.stage(StageId(*id)).name;
            self.env.progress.emit(Event::StageStarted {
                stage: name.clone(),
            });
            for s in std::mem::take(&mut by_stage[*id as usize]) {
                let key = s.key.hex();
                self.env.progress.emit(Event::StepCached {
                    stage: name.clone(),
                    step: s.step as usize,
                    text: s.text.clone(),
                    key: key.clone(),
                    non_hermetic: s.non_hermetic.clone(),
                    remote: false,
                });
                if let Some(run) = &s.test {
                    let st = self.env.graph.stage(StageId(*id));
                    self.env
                        .progress
                        .emit(test_event(st, s.step as usize, run, true));
                }
                // Without their inputs: a build answered from the memo ran
                // nothing, so it has nothing new to tell `kiln explain`.
                records.push(StepRecord {
                    stage: name.clone(),
                    step: s.step as usize,
                    text: s.text,
                    key,
                    cached: true,
                    inputs: Vec::new(),
                    non_hermetic: s.non_hermetic,
                    result: None,
                    remote: false,
                    test: s.test,
                });
            }
            self.env.progress.emit(Event::StageFinished {
                stage: name.clone(),
                state: digest.hex(),
                cached: true,
                ms: 0.0,
            });
            let at = self.env.progress.elapsed_ms();
            let stage = self.env.graph.stage(StageId(*id));
            spans.push(crate::model::timing::Span {
                stage: name.clone(),
                start_ms: at,
                end_ms: at,
                cached: true,
                needs: (stage.deps.iter())
                    .map(|d| self.env.graph.stage(*d).name.clone())
                    .collect(),
            });
        }
        records.sort_by(|a, b| (&a.stage, a.step).cmp(&(&b.stage, b.step)));
        Some(Outcome {
            stages: memo
                .stages
                .into_iter()
                .map(|(id, s, _)| (StageId(id), StageOutcome::Built(s)))
                .collect(),
            failures: Vec::new(),
            records,
            steps_run: 0,
            steps_cached,
            interrupted: false,
            from_memo: true,
            spans,
        })
    }

    /// Remember a successful build, unless a context changed too recently
    /// for its stat to vouch for it.
    fn write_memo(
        &self,
        key: [u8; 32],
        order: &[StageId],
        outcomes: &HashMap<StageId, StageOutcome>,
        records: &[StepRecord],
    ) {
        let mut contexts = Vec::new();
        for (i, c) in self.env.listed() {
            match c {
                Ok(snap) => match snap.fingerprint() {
                    Some(f) => contexts.push(memo::MemoContext {
                        id: i as u32,
                        fingerprint: f,
                        listed: self.env.listing_key(crate::ir::ContextId(i as u32)),
                    }),
                    None => return memo::forget(self.env.local.layout(), &self.env.options.scope),
                },
                Err(_) => return memo::forget(self.env.local.layout(), &self.env.options.scope),
            }
        }
        let stages = order
            .iter()
            .filter_map(|id| match outcomes.get(id) {
                Some(StageOutcome::Built(s)) => Some((id.0, s.clone(), s.digest())),
                _ => None,
            })
            .collect();
        let ids: HashMap<&str, u32> = self
            .env
            .graph
            .stages
            .iter()
            .map(|s| (s.name.as_str(), s.id.0))
            .collect();
        let mut steps = Vec::with_capacity(records.len());
        for r in records {
            let (Some(stage), Some(key)) = (ids.get(r.stage.as_str()), StepKey::parse(&r.key))
            else {
                return memo::forget(self.env.local.layout(), &self.env.options.scope);
            };
            steps.push(memo::MemoStep {
                stage: *stage,
                step: r.step as u32,
                key,
                text: r.text.clone(),
                non_hermetic: r.non_hermetic.clone(),
                test: r.test.clone(),
            });
        }
        memo::save(
            self.env.local.layout(),
            &self.env.options.scope,
            &memo::Memo {
                key,
                contexts,
                stages,
                steps,
            },
        );
    }
}

#[cfg(test)]
mod tests;
