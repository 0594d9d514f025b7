//! Running one stage: its steps in order from its base, each keyed
//! (start, canonical form, inputs) and restored from the action cache on
//! a hit, run through its [`StepKind`] on a miss.
//!
//! A stage stores one tree, at its end (and after steps that run a
//! program): the cache entries of the steps between keep only their
//! config, and when a later step misses, the cached steps since the last
//! stored tree are replayed in memory to rebuild its input. A stage whose
//! cached result leads to a missing or damaged object is run again without
//! the cache.

use super::env::Env;
use super::steps::{self, StepCx, StepKind, Work};
use super::{StageOutcome, StepRecord};
use crate::diag::Code;
use crate::diag::Diagnostic;
use crate::ir::{Base, StageId};
use crate::model::digest::{StateDigest, StepKey, TreeDigest};

use crate::model::key::{KeyBuilder, Start};
use crate::model::state::{Action, ImageConfig, State, TestRun};
use crate::model::timing::Span;
use crate::model::tree::Tree;
use crate::progress::Event;
use crate::store::ActionCache;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Runs stages; shared by every worker thread of a build.
pub struct Runner<'a> {
    pub env: &'a Env<'a>,
    pub actions: &'a dyn ActionCache,
    pub records: Mutex<Vec<StepRecord>>,
    pub steps_run: AtomicUsize,
    pub steps_cached: AtomicUsize,
    /// Every test that failed, with its stage, as the build reports it.
    pub failed_tests: Mutex<Vec<(StageId, Diagnostic)>>,
    /// When each stage that built started and ended.
    pub spans: Mutex<Vec<Span>>,
    /// The `scratch` state, stored once per build.
    empty: OnceLock<State>,
}

/// This build's claim on a step (other builds on the store wait for it),
/// held until the step's result is recorded.
type Claim = Box<dyn Send>;

/// How far a stage's steps have got. The current tree is `stored` with
/// the steps of `since` applied; `memory` may hold it, or a tree part of
/// the way there, so that it need not be rebuilt.
struct Cursor {
    config: ImageConfig,
    /// The last tree known to be in the store.
    stored: TreeDigest,
    /// The steps since `stored` (run or cached, none of which keeps its
    /// tree), each with the config it started from. Replaying them on
    /// `stored` gives the current tree.
    since: Vec<(usize, ImageConfig)>,
    /// A tree in memory and how many steps of `since` it includes.
    memory: Option<(Tree, usize)>,
    /// What the next step starts from.
    start: Start,
    /// The key of the last step.
    last: Option<StepKey>,
    /// Whether the next step is keyed by the steps before it (a builtin
    /// step's tree is not stored by rule: its key chains on), whatever
    /// the cache happens to hold of its tree. A step's key never depends
    /// on whether an earlier step's tree was stored since (an image
    /// export stores the trees of builtin steps for their layers).
    by_key: bool,
}

impl Cursor {
    /// The digest of the current tree, when it is in the store.
    fn known(&self) -> Option<TreeDigest> {
        self.since.is_empty().then_some(self.stored)
    }

    /// Move past the step keyed `key`: the next step starts from the state
    /// it left when its tree is stored (so a step that ran again and made
    /// the same tree and config leaves the next keys as they were), else
    /// from its key. Returns that state's digest, when there is one.
    fn advance(&mut self, key: StepKey) -> Option<StateDigest> {
        self.last = Some(key);
        match self.known().filter(|_| !self.by_key) {
            Some(tree) => {
                let d = State {
                    tree,
                    config: Box::new(self.config.clone()),
                }
                .digest();
                self.start = Start::State(d);
                Some(d)
            }
            None => {
                self.start = Start::Step(key);
                None
            }
        }
    }
}

/// Why a stage's steps stopped.
enum Stop {
    Interrupted,
    Failed {
        diagnostic: Box<Diagnostic>,
        last_good: Option<Box<State>>,
    },
    /// The cache pointed at an object that is missing or damaged.
    Damaged(Box<Diagnostic>),
    /// A dry run reached a step that would run.
    WouldRun,
}

/// How a step went.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Done {
    Cached,
    Ran,
    /// Not run: a dry run.
    WouldRun,
}

impl<'a> Runner<'a> {
    pub fn new(env: &'a Env<'a>, actions: &'a dyn ActionCache) -> Runner<'a> {
        Runner {
            env,
            actions,
            records: Mutex::new(Vec::new()),
            steps_run: AtomicUsize::new(0),
            steps_cached: AtomicUsize::new(0),
            failed_tests: Mutex::new(Vec::new()),
            spans: Mutex::new(Vec::new()),
            empty: OnceLock::new(),
        }
    }

    /// Run one stage whose dependencies have all ended.
    pub fn stage(
        &self,
        id: StageId,
        deps: &HashMap<StageId, StageOutcome>,
    ) -> (StageOutcome, Option<Diagnostic>) {
        let env = self.env;
        let stage = env.graph.stage(id);
        let mut inputs: HashMap<StageId, State> = HashMap::new();
        for d in &stage.deps {
            match deps.get(d) {
                Some(StageOutcome::Built(s)) => {
                    inputs.insert(*d, s.clone());
                }
                _ => {
                    let because = if env.options.dry_run {
                        format!("`{}` would run first", env.graph.stage(*d).name)
                    } else {
                        format!("`{}` did not build", env.graph.stage(*d).name)
                    };
                    env.progress.emit(Event::StageSkipped {
                        stage: stage.name.clone(),
                        because,
                    });
                    return (StageOutcome::Skipped, None);
                }
            }
        }
        if env.cancel.load(Ordering::Relaxed) {
            env.progress.emit(Event::StageSkipped {
                stage: stage.name.clone(),
                because: "interrupted".into(),
            });
            return (StageOutcome::Skipped, None);
        }
        env.progress.emit(Event::StageStarted {
            stage: stage.name.clone(),
        });
        let start_ms = env.progress.elapsed_ms();
        let t0 = Instant::now();
        let use_cache = !env.options.no_cache;
        let mut attempt = self.run_steps(id, &inputs, use_cache);
        if use_cache && let Err(Stop::Damaged(_)) = attempt {
            // A cache entry led to an object that is gone or damaged (and now
            // quarantined): forget what this stage recorded and build it
            // again without the cache.
            let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
            let before = records.len();
            records.retain(|r| r.stage != stage.name);
            self.steps_cached
                .fetch_sub(before - records.len(), Ordering::Relaxed);
            drop(records);
            self.failed_tests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|(s, _)| *s != id);
            attempt = self.run_steps(id, &inputs, false);
        }
        let (state, all_cached, work) = match attempt {
            Ok(done) => done,
            Err(Stop::Interrupted) => {
                env.progress.emit(Event::StageSkipped {
                    stage: stage.name.clone(),
                    because: "interrupted".into(),
                });
                return (StageOutcome::Skipped, None);
            }
            Err(Stop::WouldRun) => {
                env.progress.emit(Event::StageSkipped {
                    stage: stage.name.clone(),
                    because: "a step would run (a dry run)".into(),
                });
                return (StageOutcome::Skipped, None);
            }
            Err(Stop::Failed {
                diagnostic,
                last_good,
            }) => {
                env.progress.emit(Event::StageFailed {
                    stage: stage.name.clone(),
                });
                self.span(stage, start_ms, false);
                return (
                    StageOutcome::Failed {
                        last_good: last_good.map(|s| *s),
                    },
                    Some(*diagnostic),
                );
            }
            Err(Stop::Damaged(d)) => {
                env.progress.emit(Event::StageFailed {
                    stage: stage.name.clone(),
                });
                self.span(stage, start_ms, false);
                let mut d = d.in_stage(&stage.name);
                d.message
                    .push_str(" (and the stage could not be rebuilt without the cache)");
                return (StageOutcome::Failed { last_good: None }, Some(d));
            }
        };
        // Keep the result's tree for dependants and exports; the trees of
        // earlier steps are dropped as the stage goes, bounding memory.
        if let Some(tree) = work {
            env.keep_tree(state.tree, tree);
        }
        env.progress.emit(Event::StageFinished {
            stage: stage.name.clone(),
            state: state.digest().hex(),
            cached: all_cached,
            ms: t0.elapsed().as_secs_f64() * 1000.0,
        });
        self.span(stage, start_ms, all_cached);
        (StageOutcome::Built(state), None)
    }

    /// Run a stage's steps from its base. Returns the final state, whether
    /// every step was cached, and the final tree if it is in memory.
    fn run_steps(
        &self,
        id: StageId,
        inputs: &HashMap<StageId, State>,
        use_cache: bool,
    ) -> Result<(State, bool, Option<Tree>), Stop> {
        let env = self.env;
        let stage = env.graph.stage(id);
        let failed = |d: Diagnostic, last_good: Option<State>| Stop::Failed {
            diagnostic: Box::new(d),
            last_good: last_good.map(Box::new),
        };
        let (base, start) = match &stage.base {
            Base::Scratch => match self.empty_state() {
                Ok(s) => (s, Start::Scratch),
                Err(d) => return Err(failed(d, None)),
            },
            Base::Image(image) => {
                let Some(digest) = env.images.digest(&image.reference).cloned() else {
                    return Err(failed(
                        Diagnostic::internal(format!(
                            "the image `{}` was not resolved before the build",
                            image.reference
                        )),
                        None,
                    ));
                };
                match env.image_state(&image.reference) {
                    Ok(s) => (
                        s,
                        Start::Image {
                            reference: image.reference.clone(),
                            digest,
                        },
                    ),
                    Err(e) => {
                        let d = Diagnostic::new(
                            Code::IMAGE_UNPACK,
                            format!("cannot use the image `{}`: {e}", image.reference),
                        )
                        .in_stage(&stage.name)
                        .with_label(stage.from_span.unwrap_or(stage.span), "built on this image");
                        return Err(failed(d, None));
                    }
                }
            }
            Base::Stage(b) => {
                let Some(s) = inputs.get(b).cloned() else {
                    return Err(failed(
                        Diagnostic::internal("a stage ran before its base"),
                        None,
                    ));
                };
                let start = Start::Stage(s.digest());
                (s, start)
            }
        };
        let mut config = (*base.config).clone();
        // `onbuild` triggers are for the stage built on this one, which (as
        // a Docker import) runs them as its first steps; they are not passed on.
        if matches!(stage.base, Base::Stage(_)) {
            config.onbuild.clear();
        }
        let mut cur = Cursor {
            config,
            stored: base.tree,
            since: Vec::new(),
            memory: None,
            start,
            last: None,
            by_key: false,
        };
        let mut all_cached = true;
        for i in 0..stage.steps.len() {
            if env.cancel.load(Ordering::Relaxed) {
                return Err(Stop::Interrupted);
            }
            let cx = StepCx {
                env,
                stage,
                index: i,
                loc: env.graph.source_map.step(id, i),
                inputs,
                key: None,
                stored: Some(cur.stored),
                current: cur.known(),
            };
            let last = i + 1 == stage.steps.len();
            match self.step(&cx, &mut cur, use_cache, last) {
                Ok(Done::Cached) => {}
                Ok(Done::Ran) => all_cached = false,
                Ok(Done::WouldRun) => return Err(Stop::WouldRun),
                Err(d) if d.is_damage() && use_cache => return Err(Stop::Damaged(Box::new(d))),
                Err(mut d) => {
                    let text = steps::describe(&stage.steps[i].op, env.graph);
                    if d.labels.is_empty() {
                        d = d.with_label(cx.span(), "in this step");
                    }
                    env.progress.emit(Event::StepFailed {
                        stage: stage.name.clone(),
                        step: i,
                        text,
                        message: d.message.clone(),
                    });
                    d = d.in_stage(&stage.name);
                    // The state before the failing step (for `when="always"`
                    // exports): rebuilt from the last stored tree if the
                    // failing step took the one in memory.
                    let last_good = self.finish_tree(&mut cur, id, inputs).ok().map(|(s, _)| s);
                    return Err(failed(d, last_good));
                }
            }
        }
        let (state, tree) = match self.finish_tree(&mut cur, id, inputs) {
            Ok(done) => done,
            Err(d) if d.is_damage() && use_cache => return Err(Stop::Damaged(Box::new(d))),
            Err(d) => return Err(failed(d, None)),
        };
        // A result restored from the cache must still have its tree: it is
        // what dependants and exports read.
        if tree.is_none() && !env.content.has_tree(state.tree) {
            let d = Diagnostic::new(
                Code::STORE_DAMAGED,
                format!("tree {} is missing from the cache", state.tree),
            );
            return if use_cache {
                Err(Stop::Damaged(Box::new(d)))
            } else {
                Err(failed(d, None))
            };
        }
        Ok((state, all_cached, tree))
    }

    /// The stage's current state, storing its tree if no step did. A last
    /// step whose cache entry lacked the tree gets an entry that has it.
    fn finish_tree(
        &self,
        cur: &mut Cursor,
        id: StageId,
        inputs: &HashMap<StageId, State>,
    ) -> Result<(State, Option<Tree>), Diagnostic> {
        if let Some(t) = cur.known() {
            let tree = cur.memory.take().map(|(tree, _)| tree);
            return Ok((
                State {
                    tree: t,
                    config: Box::new(cur.config.clone()),
                },
                tree,
            ));
        }
        let tree = self.materialize(cur, id, inputs)?;
        let base = self.env.tree(cur.stored)?;
        let digest = self.env.content.put_tree_on(&tree, cur.stored, &base)?;
        let state = State {
            tree: digest,
            config: Box::new(cur.config.clone()),
        };
        if let Some(key) = cur.last {
            let action = Action {
                tree: Some(digest),
                config: (*state.config).clone(),
                test: None,
            };
            self.actions.put(key, &action)?;
        }
        self.env.derived(digest, cur.stored);
        cur.stored = digest;
        cur.since.clear();
        Ok((state, Some(tree)))
    }

    /// The current tree of a stage, in memory: the one kept there, or the
    /// last one stored, with the steps since replayed on it. The cursor
    /// keeps its place: a step that fails after taking the tree leaves the
    /// steps before it replayable.
    fn materialize(
        &self,
        cur: &mut Cursor,
        id: StageId,
        inputs: &HashMap<StageId, State>,
    ) -> Result<Tree, Diagnostic> {
        let env = self.env;
        let stage = env.graph.stage(id);
        let (mut tree, done) = match cur.memory.take() {
            Some(kept) => kept,
            None => (env.tree_owned(cur.stored)?, 0),
        };
        for (j, config) in &cur.since[done..] {
            // A replayed step is one that ran or was cached with this very
            // key (and keeps no tree: it runs no program): it gives the
            // tree it gave then.
            let cx = StepCx {
                env,
                stage,
                index: *j,
                loc: env.graph.source_map.step(id, *j),
                inputs,
                key: None,
                stored: None,
                current: None,
            };
            let kind = steps::kind(&stage.steps[*j].op);
            let prepared = kind.prepare(&cx, None)?;
            let mut config = config.clone();
            kind.run(
                &cx,
                Work {
                    tree: &mut tree,
                    config: &mut config,
                    stored: &mut None,
                    test: &mut None,
                },
                prepared,
            )?;
        }
        Ok(tree)
    }

    fn note(&self, record: StepRecord) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
    }

    /// A test that ran: said, and its failure kept for the build's.
    fn test_ran(&self, cx: &StepCx<'_>, end: steps::TestEnd) -> TestRun {
        self.env
            .progress
            .emit(super::test_event(cx.stage, cx.index, &end.run, false));
        if let Some(failure) = end.failure {
            self.failed_tests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((cx.stage.id, failure.in_stage(&cx.stage.name)));
        }
        end.run
    }

    /// Note when a stage that started at `start_ms` ended.
    fn span(&self, stage: &crate::ir::Stage, start_ms: f64, cached: bool) {
        let graph = self.env.graph;
        self.spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Span {
                stage: stage.name.clone(),
                start_ms,
                end_ms: self.env.progress.elapsed_ms(),
                cached,
                needs: (stage.deps.iter())
                    .map(|d| graph.stage(*d).name.clone())
                    .collect(),
            });
    }

    fn empty_state(&self) -> Result<State, Diagnostic> {
        if let Some(s) = self.empty.get() {
            return Ok(s.clone());
        }
        let tree = self.env.content.put_tree(&Tree::new())?;
        let state = State {
            tree,
            config: Box::default(),
        };
        Ok(self.empty.get_or_init(|| state).clone())
    }

    /// What the cache holds for `key`. Another build on this store may be
    /// running the same step (or have run it since this build read the
    /// cache): wait for it and take its result rather than run it twice.
    /// The claim (when taken) is held until this step's result is
    /// recorded.
    fn look_up(
        &self,
        key: StepKey,
        stage: &str,
        index: usize,
        text: &str,
    ) -> Result<(Option<Action>, Option<Claim>), Diagnostic> {
        let env = self.env;
        if let Some(hit) = self.actions.get(key) {
            return Ok((Some(hit), None));
        }
        let waited = std::cell::Cell::new(false);
        let waiting = || {
            if !waited.replace(true) {
                env.progress.emit(Event::StepWaiting {
                    stage: stage.into(),
                    step: index,
                    text: format!("{text} (waiting for another build running this step)"),
                });
            }
            env.cancel.load(Ordering::Relaxed)
        };
        let claim = self.actions.claim(key, &waiting)?;
        if claim.is_none() && env.cancel.load(Ordering::Relaxed) {
            return Err(Diagnostic::new(
                Code::STEP_INTERRUPTED,
                "the build was interrupted while another build ran this step",
            ));
        }
        // It may have finished just before: read what other builds
        // recorded since this one read the cache.
        Ok((self.actions.get_fresh(key), claim))
    }

    /// Move the cursor past a step the cache answered.
    fn take_hit(
        &self,
        cur: &mut Cursor,
        index: usize,
        hit: Action,
        kind: &dyn StepKind,
        last: bool,
    ) {
        match hit.tree {
            Some(t) => {
                self.env.derived(t, cur.stored);
                cur.stored = t;
                cur.since.clear();
                cur.memory = None;
            }
            // The tree after this step was not kept: remember how to redo it.
            None => cur.since.push((index, cur.config.clone())),
        }
        if kind.changes_tree() {
            cur.by_key = !(last || kind.stores_tree());
        }
        cur.config = hit.config;
    }

    /// Store the tree a step that runs a program starts on (as its
    /// differences from the last stored one), and say so in the step
    /// before's record, so the tree is not replayed for an image's layers
    /// and is the base the step's own result is stored on.
    fn store_start(&self, cur: &mut Cursor, tree: &Tree) -> Result<TreeDigest, Diagnostic> {
        let env = self.env;
        let base = env.tree(cur.stored)?;
        let d = env.content.put_tree_on(tree, cur.stored, &base)?;
        if let Some(before) = cur.last {
            self.actions.put(
                before,
                &Action {
                    tree: Some(d),
                    config: cur.config.clone(),
                    test: None,
                },
            )?;
        }
        env.derived(d, cur.stored);
        cur.stored = d;
        cur.since.clear();
        Ok(d)
    }

    /// Run or restore one step, moving the cursor past it (in a dry run,
    /// only restore it).
    fn step(
        &self,
        cx: &StepCx<'_>,
        cur: &mut Cursor,
        use_cache: bool,
        last: bool,
    ) -> Result<Done, Diagnostic> {
        let env = self.env;
        let stage = cx.stage.name.as_str();
        let index = cx.index;
        let op = &cx.stage.steps[index].op;
        let kind: &dyn StepKind = steps::kind(op);
        let text = kind.describe(env.graph.names());
        let mut kb = KeyBuilder::new(cur.start.clone(), &steps::canonical(op, env.graph));
        let prepared = kind.prepare(cx, Some(&mut kb))?;
        let (key, key_inputs) = kb.finish();
        let record =
            |cached: bool, result: Option<StateDigest>, test: Option<TestRun>| StepRecord {
                stage: stage.to_string(),
                step: index,
                text: text.clone(),
                key: key.hex(),
                cached,
                remote: cached && self.actions.found_remotely(key),
                inputs: key_inputs.clone(),
                non_hermetic: kind.non_hermetic().map(str::to_string),
                result: result.map(|d| d.hex()),
                test,
            };
        let dry_run = env.options.dry_run;
        let (hit, _claim) = match (use_cache, dry_run) {
            (false, _) => (None, None),
            // A dry run only asks: it waits for no other build.
            (true, true) => (self.actions.get(key), None),
            (true, false) => self.look_up(key, stage, index, &text)?,
        };
        if let Some(hit) = hit {
            self.steps_cached.fetch_add(1, Ordering::Relaxed);
            let remote = self.actions.found_remotely(key);
            env.progress.emit(Event::StepCached {
                stage: stage.into(),
                step: index,
                text: text.clone(),
                key: key.hex(),
                non_hermetic: kind.non_hermetic().map(str::to_string),
                remote,
            });
            let test = hit.test.clone();
            if let Some(run) = &test {
                env.progress
                    .emit(super::test_event(cx.stage, index, run, true));
            }
            self.take_hit(cur, index, hit, kind, last);
            let result = cur.advance(key);
            self.note(record(true, result, test));
            return Ok(Done::Cached);
        }
        if dry_run {
            self.note(record(false, None, None));
            return Ok(Done::WouldRun);
        }
        env.progress.emit(Event::StepStarted {
            stage: stage.into(),
            step: index,
            text: text.clone(),
            key: key.hex(),
        });
        let t0 = Instant::now();
        let mut tree = self.materialize(cur, cx.stage.id, cx.inputs)?;
        let mut current = cx.current;
        // A step that runs a program starts on a stored tree: stored now
        // (as its differences from the last stored one), and the step
        // before it says so, so the tree is not replayed for an image's
        // layers and is the base the step's own result is stored on.
        if kind.stores_tree() && current.is_none() {
            current = Some(self.store_start(cur, &tree)?);
        }
        let mut config = cur.config.clone();
        let run_cx = StepCx {
            key: Some(key),
            current,
            ..*cx
        };
        let mut stored_by_step = None;
        let mut test = None;
        kind.run(
            &run_cx,
            Work {
                tree: &mut tree,
                config: &mut config,
                stored: &mut stored_by_step,
                test: &mut test,
            },
            prepared,
        )?;
        // Trees are stored at the end of a stage only: the steps between
        // keep their config and are replayed from the last stored tree if a
        // later step needs their tree. So a stage of many steps costs one
        // stored tree, not one per step. A step that runs a program always
        // stores its tree: replaying it would mean running it again.
        let before = std::mem::replace(&mut cur.config, config.clone());
        let digest = if !kind.changes_tree() {
            cur.known()
        } else if stored_by_step.is_some() {
            stored_by_step
        } else if last || kind.stores_tree() {
            Some(env.content.put_tree(&tree)?)
        } else {
            None
        };
        let test = test.map(|end| self.test_ran(cx, end));
        // A failed test is not cached (as Bazel does): the next build runs
        // it again. The stage goes on with what it left.
        if test.as_ref().is_none_or(|t| t.passed) {
            let action = Action {
                tree: digest,
                config: config.clone(),
                test: test.clone(),
            };
            self.actions.put(key, &action)?;
        }
        match digest {
            Some(d) => {
                env.derived(d, cur.stored);
                cur.stored = d;
                cur.since.clear();
            }
            None => cur.since.push((index, before)),
        }
        if kind.changes_tree() {
            cur.by_key = !(last || kind.stores_tree() || stored_by_step.is_some());
        }
        cur.memory = Some((tree, cur.since.len()));
        let result = cur.advance(key);
        self.steps_run.fetch_add(1, Ordering::Relaxed);
        self.note(record(false, result, test));
        env.progress.emit(Event::StepFinished {
            stage: stage.into(),
            step: index,
            text,
            key: key.hex(),
            ms: t0.elapsed().as_secs_f64() * 1000.0,
            non_hermetic: kind.non_hermetic().map(str::to_string),
        });
        Ok(Done::Ran)
    }
}
