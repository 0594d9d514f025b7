//! The executor: runs the stages a build needs, in parallel, from the cache.
//!
//! The scheduler starts every stage whose dependencies are done on a rayon
//! pool of `-j` threads. Within a stage, steps run in order; each step's
//! key is computed first (see [`key`]) and a cache hit skips the step. A
//! failing step fails its stage and skips its dependants; independent
//! stages go on, and every failure is returned. Builtin steps edit tree
//! manifests in memory: no working tree is ever written to disk, so nothing
//! of an intermediate stage outlives the build but its cache entries.
//! Progress is reported only as events.

mod builtin;
pub mod copy;
pub mod fetch;
pub mod key;
pub mod memo;
mod plugin_step;
pub mod unpack;
pub mod wasm;
mod workdir;

use crate::context::Snapshot;
use crate::diag::Diagnostic;
use crate::ir::{Base, CopyFrom, Graph, Op, StageId, Step};
use crate::progress::{Event, Progress};
use crate::store::Store;
use crate::store::digest::{StepKey, TreeDigest};
use crate::store::state::{Action, ImageConfig, State};
use crate::store::tree::Tree;
use key::{KeyBuilder, KeyInput};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

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

/// What one step did, for `kiln explain`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepRecord {
    pub stage: String,
    pub step: usize,
    pub text: String,
    pub key: String,
    pub cached: bool,
    pub inputs: Vec<KeyInput>,
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
}

pub struct Executor<'a> {
    graph: &'a Graph,
    store: &'a Store,
    progress: &'a Progress<'a>,
    options: Options,
    cancel: Arc<AtomicBool>,
    /// Paths kept out of every context (the state dir, export targets).
    exclude: Vec<PathBuf>,
    contexts: Vec<OnceLock<Result<Arc<Snapshot>, Diagnostic>>>,
    trees: Mutex<HashMap<TreeDigest, Arc<Tree>>>,
    records: Mutex<Vec<StepRecord>>,
    steps_run: AtomicUsize,
    steps_cached: AtomicUsize,
    /// The `scratch` state, stored once per build.
    empty: OnceLock<State>,
    /// The plugin runtime, started by the first plugin step.
    runtime: OnceLock<Result<wasm::Runtime, String>>,
    /// Empty directories plugin steps work in, reused from step to step.
    scratch: workdir::Scratch,
}

/// Where a stage's tree comes from at the current step.
enum From {
    /// Built by a step of this run.
    Memory(Tree),
    /// In the store.
    Stored(TreeDigest),
}

/// How far a stage's steps have got.
struct Cursor {
    config: ImageConfig,
    /// The digest of the current tree, when it is known.
    known: Option<TreeDigest>,
    from: From,
    /// Cached steps since `from` whose trees were not kept, each with the
    /// config it started from; replayed when their tree is needed.
    pending: Vec<(usize, ImageConfig)>,
    /// The key of the last step (or the base), which the next key extends.
    start: String,
    last: Option<StepKey>,
}

/// Why a stage's steps stopped.
enum Run {
    Interrupted,
    Failed {
        diagnostic: Box<Diagnostic>,
        last_good: Option<Box<State>>,
    },
    /// The cache pointed at a tree that is missing or corrupt.
    Damaged,
}

/// The code of errors about objects the store cannot give back.
use crate::store::DAMAGED;

struct Sched {
    waiting: HashMap<StageId, usize>,
    outcomes: HashMap<StageId, StageOutcome>,
    failures: Vec<Diagnostic>,
}

impl<'a> Executor<'a> {
    pub fn new(
        graph: &'a Graph,
        store: &'a Store,
        progress: &'a Progress<'a>,
        options: Options,
        cancel: Arc<AtomicBool>,
        exclude: Vec<PathBuf>,
    ) -> Executor<'a> {
        Executor {
            graph,
            store,
            progress,
            options,
            cancel,
            exclude,
            contexts: graph.contexts.iter().map(|_| OnceLock::new()).collect(),
            trees: Mutex::new(HashMap::new()),
            records: Mutex::new(Vec::new()),
            steps_run: AtomicUsize::new(0),
            steps_cached: AtomicUsize::new(0),
            empty: OnceLock::new(),
            runtime: OnceLock::new(),
            scratch: workdir::Scratch::default(),
        }
    }

    /// Build `roots` and everything they need.
    pub fn build(&self, roots: &[StageId]) -> Outcome {
        let order = self.graph.ancestors(roots);
        self.progress.emit(Event::BuildStarted {
            stages: order.len(),
            jobs: self.options.jobs,
        });
        if let Some(key) = self.options.memo_key
            && let Some(outcome) = self.answer_from_memo(key, roots)
        {
            return outcome;
        }
        let mut dependants: HashMap<StageId, Vec<StageId>> = HashMap::new();
        let mut waiting = HashMap::new();
        for &id in &order {
            let deps = &self.graph.stage(id).deps;
            waiting.insert(id, deps.len());
            for d in deps {
                dependants.entry(*d).or_default().push(id);
            }
        }
        let ready: Vec<StageId> = order
            .iter()
            .copied()
            .filter(|id| waiting[id] == 0)
            .collect();
        let sched = Mutex::new(Sched {
            waiting,
            outcomes: HashMap::new(),
            failures: Vec::new(),
        });
        // No more threads than stages that could run.
        let threads = self.options.jobs.clamp(1, order.len().max(1));
        match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
            Ok(pool) => pool.scope(|s| {
                for id in ready {
                    self.spawn(s, id, &sched, &dependants);
                }
            }),
            Err(e) => {
                let mut g = sched.lock().unwrap_or_else(|e| e.into_inner());
                g.failures.push(Diagnostic::env(
                    "kiln::exec::threads",
                    format!("cannot start worker threads: {e}"),
                ));
            }
        }
        for snap in self.contexts.iter().filter_map(|c| c.get()).flatten() {
            snap.save_index();
        }
        let sched = sched.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut records =
            std::mem::take(&mut *self.records.lock().unwrap_or_else(|e| e.into_inner()));
        records.sort_by(|a, b| (&a.stage, a.step).cmp(&(&b.stage, b.step)));
        if let Some(key) = self.options.memo_key
            && sched.failures.is_empty()
            && !self.cancel.load(Ordering::Relaxed)
        {
            self.write_memo(key, &order, &sched.outcomes, &records);
        }
        Outcome {
            stages: sched.outcomes,
            failures: sched.failures,
            records,
            steps_run: self.steps_run.load(Ordering::Relaxed),
            steps_cached: self.steps_cached.load(Ordering::Relaxed),
            interrupted: self.cancel.load(Ordering::Relaxed),
            from_memo: false,
        }
    }

    /// Finish at once if the last successful build had the same request
    /// and saw the same contexts.
    fn answer_from_memo(&self, key: [u8; 32], roots: &[StageId]) -> Option<Outcome> {
        let memo = memo::load(self.store)?;
        if memo.key != key {
            return None;
        }
        for (id, fingerprint) in &memo.contexts {
            if *id as usize >= self.contexts.len() {
                return None;
            }
            let snap = self.context(crate::ir::ContextId(*id)).ok()?;
            if snap.fingerprint()? != *fingerprint {
                return None;
            }
        }
        let states: HashMap<u32, &State> = memo.stages.iter().map(|(id, s)| (*id, s)).collect();
        for r in roots {
            if !self.store.has_tree(states.get(&r.0)?.tree) {
                return None;
            }
        }
        if memo
            .stages
            .iter()
            .any(|(id, _)| *id as usize >= self.graph.stages.len())
        {
            return None;
        }
        let mut by_stage: HashMap<&str, Vec<&StepRecord>> = HashMap::new();
        for r in &memo.records {
            by_stage.entry(r.stage.as_str()).or_default().push(r);
        }
        for (id, state) in &memo.stages {
            let name = &self.graph.stage(StageId(*id)).name;
            self.progress.emit(Event::StageStarted {
                stage: name.clone(),
            });
            for r in by_stage.get(name.as_str()).into_iter().flatten() {
                self.progress.emit(Event::StepCached {
                    stage: name.clone(),
                    step: r.step,
                    text: r.text.clone(),
                    key: r.key.clone(),
                });
            }
            self.progress.emit(Event::StageFinished {
                stage: name.clone(),
                state: state.digest().hex(),
                cached: true,
                ms: 0.0,
            });
        }
        let steps_cached = memo.records.len();
        Some(Outcome {
            stages: memo
                .stages
                .into_iter()
                .map(|(id, s)| (StageId(id), StageOutcome::Built(s)))
                .collect(),
            failures: Vec::new(),
            records: memo.records,
            steps_run: 0,
            steps_cached,
            interrupted: false,
            from_memo: true,
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
        for (i, c) in self.contexts.iter().enumerate() {
            match c.get() {
                Some(Ok(snap)) => match snap.fingerprint() {
                    Some(f) => contexts.push((i as u32, f)),
                    None => return memo::forget(self.store),
                },
                Some(Err(_)) => return memo::forget(self.store),
                None => {}
            }
        }
        let stages = order
            .iter()
            .filter_map(|id| match outcomes.get(id) {
                Some(StageOutcome::Built(s)) => Some((id.0, s.clone())),
                _ => None,
            })
            .collect();
        // Without their inputs: a build answered from the memo ran nothing,
        // so it has nothing new to tell `kiln explain`.
        let records = records
            .iter()
            .map(|r| StepRecord {
                stage: r.stage.clone(),
                step: r.step,
                text: r.text.clone(),
                key: r.key.clone(),
                cached: true,
                inputs: Vec::new(),
            })
            .collect();
        memo::save(
            self.store,
            &memo::Memo {
                key,
                contexts,
                stages,
                records,
            },
        );
    }

    fn spawn<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        id: StageId,
        sched: &'s Mutex<Sched>,
        dependants: &'s HashMap<StageId, Vec<StageId>>,
    ) {
        scope.spawn(move |s| {
            // A stage that becomes ready here runs on this thread next, so a
            // chain of stages does not hop between threads; any others are
            // spawned for idle threads to take.
            let mut id = id;
            loop {
                let (outcome, failure) = self.stage(id, sched);
                let ready = {
                    let mut g = sched.lock().unwrap_or_else(|e| e.into_inner());
                    g.outcomes.insert(id, outcome);
                    if let Some(f) = failure {
                        g.failures.push(f);
                    }
                    let mut ready = Vec::new();
                    for d in dependants.get(&id).into_iter().flatten() {
                        if let Some(n) = g.waiting.get_mut(d) {
                            *n -= 1;
                            if *n == 0 {
                                ready.push(*d);
                            }
                        }
                    }
                    ready
                };
                let mut ready = ready.into_iter();
                let next = ready.next();
                for r in ready {
                    self.spawn(s, r, sched, dependants);
                }
                match next {
                    Some(n) => id = n,
                    None => break,
                }
            }
        });
    }

    /// Run one stage whose dependencies have all ended.
    fn stage(&self, id: StageId, sched: &Mutex<Sched>) -> (StageOutcome, Option<Diagnostic>) {
        let stage = self.graph.stage(id);
        let deps: HashMap<StageId, StageOutcome> = {
            let g = sched.lock().unwrap_or_else(|e| e.into_inner());
            stage
                .deps
                .iter()
                .filter_map(|d| g.outcomes.get(d).map(|o| (*d, o.clone())))
                .collect()
        };
        let mut inputs: HashMap<StageId, State> = HashMap::new();
        for d in &stage.deps {
            match deps.get(d) {
                Some(StageOutcome::Built(s)) => {
                    inputs.insert(*d, s.clone());
                }
                _ => {
                    let because = format!("`{}` did not build", self.graph.stage(*d).name);
                    self.progress.emit(Event::StageSkipped {
                        stage: stage.name.clone(),
                        because,
                    });
                    return (StageOutcome::Skipped, None);
                }
            }
        }
        if self.cancel.load(Ordering::Relaxed) {
            self.progress.emit(Event::StageSkipped {
                stage: stage.name.clone(),
                because: "interrupted".into(),
            });
            return (StageOutcome::Skipped, None);
        }
        self.progress.emit(Event::StageStarted {
            stage: stage.name.clone(),
        });
        let t0 = Instant::now();
        let mut attempt = self.run_steps(id, &inputs, !self.options.no_cache);
        if let Err(Run::Damaged) = attempt {
            // A cache entry led to a tree that is gone or corrupt: forget
            // what this stage recorded and build it again without the cache.
            let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
            let before = records.len();
            records.retain(|r| r.stage != stage.name);
            self.steps_cached
                .fetch_sub(before - records.len(), Ordering::Relaxed);
            drop(records);
            attempt = self.run_steps(id, &inputs, false);
        }
        let (state, all_cached, work) = match attempt {
            Ok(done) => done,
            Err(Run::Interrupted) => {
                self.progress.emit(Event::StageSkipped {
                    stage: stage.name.clone(),
                    because: "interrupted".into(),
                });
                return (StageOutcome::Skipped, None);
            }
            Err(Run::Failed {
                diagnostic,
                last_good,
            }) => {
                self.progress.emit(Event::StageFailed {
                    stage: stage.name.clone(),
                });
                return (
                    StageOutcome::Failed {
                        last_good: last_good.map(|s| *s),
                    },
                    Some(*diagnostic),
                );
            }
            Err(Run::Damaged) => {
                let d = Diagnostic::env(
                    DAMAGED,
                    format!(
                        "stage `{}`: the cache is damaged and the stage could not be rebuilt",
                        stage.name
                    ),
                )
                .with_help(
                    "run `kiln gc` to drop damaged entries, or move the state directory away",
                );
                return (StageOutcome::Failed { last_good: None }, Some(d));
            }
        };
        // Keep the result's tree for dependants and exports; the trees of
        // earlier steps are dropped as the stage goes, bounding memory.
        if let Some(tree) = work {
            self.trees
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(state.tree, Arc::new(tree));
        }
        self.progress.emit(Event::StageFinished {
            stage: stage.name.clone(),
            state: state.digest().hex(),
            cached: all_cached,
            ms: t0.elapsed().as_secs_f64() * 1000.0,
        });
        (StageOutcome::Built(state), None)
    }

    /// Run a stage's steps from its base. Returns the final state, whether
    /// every step was cached, and the final tree if it is in memory.
    fn run_steps(
        &self,
        id: StageId,
        inputs: &HashMap<StageId, State>,
        use_cache: bool,
    ) -> Result<(State, bool, Option<Tree>), Run> {
        let stage = self.graph.stage(id);
        let failed = |d: Diagnostic, last_good: Option<State>| Run::Failed {
            diagnostic: Box::new(d),
            last_good: last_good.map(Box::new),
        };
        let (base, start) = match &stage.base {
            Base::Scratch => match self.empty_state() {
                Ok(s) => (s, "scratch".to_string()),
                Err(d) => return Err(failed(d, None)),
            },
            Base::Image(reference) => {
                let d = Diagnostic::build(
                    "kiln::exec::image-base",
                    format!("stage `{}` is built on the image `{reference}`, and this version of kiln cannot fetch images", stage.name),
                )
                .with_label(stage.from_span.unwrap_or(stage.span), "an image base")
                .with_help("build on `scratch` or on a stage of this build; stages that do not need this one still build");
                return Err(failed(d, None));
            }
            Base::Stage(b) => {
                let s = inputs[b].clone();
                let start = format!("stage:{}", s.digest().hex());
                (s, start)
            }
        };
        let mut config = base.config.clone();
        // `onbuild` triggers are for the stage built on this one, which (as
        // a Docker import) runs them as its first steps; they are not passed on.
        if matches!(stage.base, Base::Stage(_)) {
            config.onbuild.clear();
        }
        let mut cur = Cursor {
            config,
            known: Some(base.tree),
            from: From::Stored(base.tree),
            pending: Vec::new(),
            start,
            last: None,
        };
        let mut all_cached = true;
        for (i, step) in stage.steps.iter().enumerate() {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(Run::Interrupted);
            }
            let text = step.op.describe(self.graph);
            let last = i + 1 == stage.steps.len();
            match self.step(stage, i, step, &text, &mut cur, inputs, use_cache, last) {
                Ok(cached) => all_cached &= cached,
                Err(d) if d.code == DAMAGED && use_cache => return Err(Run::Damaged),
                Err(mut d) => {
                    if d.labels.is_empty() {
                        d = d.with_label(step.span, "in this step");
                    }
                    self.progress.emit(Event::StepFailed {
                        stage: stage.name.clone(),
                        step: i,
                        text,
                        message: d.message.clone(),
                    });
                    d.message = format!("stage `{}`: {}", stage.name, d.message);
                    // The state before the failing step, if it is at hand.
                    let last_good = match (&cur.known, cur.pending.is_empty()) {
                        (Some(t), true) => Some(State {
                            tree: *t,
                            config: cur.config.clone(),
                        }),
                        _ => self
                            .finish_tree(&mut cur, stage, inputs)
                            .ok()
                            .map(|(s, _)| s),
                    };
                    return Err(failed(d, last_good));
                }
            }
        }
        let (state, tree) = match self.finish_tree(&mut cur, stage, inputs) {
            Ok(done) => done,
            Err(d) if d.code == DAMAGED && use_cache => return Err(Run::Damaged),
            Err(d) => return Err(failed(d, None)),
        };
        // A result restored from the cache must still have its tree: it is
        // what dependants and exports read.
        if tree.is_none() && !self.store.has_tree(state.tree) {
            return if use_cache {
                Err(Run::Damaged)
            } else {
                Err(failed(
                    Diagnostic::env(DAMAGED, "a tree just written to the store is gone"),
                    None,
                ))
            };
        }
        Ok((state, all_cached, tree))
    }

    /// The stage's final state, storing its tree if no step did. A final
    /// step whose cache entry lacked the tree gets an entry that has it.
    fn finish_tree(
        &self,
        cur: &mut Cursor,
        stage: &crate::ir::Stage,
        inputs: &HashMap<StageId, State>,
    ) -> Result<(State, Option<Tree>), Diagnostic> {
        if let (Some(t), true) = (cur.known, cur.pending.is_empty()) {
            let tree = match std::mem::replace(&mut cur.from, From::Stored(t)) {
                From::Memory(tree) => Some(tree),
                From::Stored(_) => None,
            };
            return Ok((
                State {
                    tree: t,
                    config: cur.config.clone(),
                },
                tree,
            ));
        }
        let tree = self.materialize(cur, stage, inputs)?;
        let digest = self.store.put_tree(&tree)?;
        let state = State {
            tree: digest,
            config: cur.config.clone(),
        };
        if let Some(key) = cur.last {
            let action = Action {
                tree: Some(digest),
                config: state.config.clone(),
            };
            self.store.put_action(key, &action)?;
        }
        cur.known = Some(digest);
        Ok((state, Some(tree)))
    }

    /// The current tree of a stage in memory: the last one built, or the
    /// last one stored, with the cached steps since replayed on it.
    fn materialize(
        &self,
        cur: &mut Cursor,
        stage: &crate::ir::Stage,
        inputs: &HashMap<StageId, State>,
    ) -> Result<Tree, Diagnostic> {
        let mut tree = match std::mem::replace(
            &mut cur.from,
            From::Stored(cur.known.unwrap_or(TreeDigest([0; 32]))),
        ) {
            From::Memory(t) => t,
            From::Stored(d) => (*self.tree(d)?).clone(),
        };
        for (j, mut config) in std::mem::take(&mut cur.pending) {
            let step = &stage.steps[j];
            let prepared = self.prepare(step, None)?;
            self.apply(step, &mut tree, &mut config, prepared, inputs)?;
        }
        Ok(tree)
    }

    fn empty_state(&self) -> Result<State, Diagnostic> {
        if let Some(s) = self.empty.get() {
            return Ok(s.clone());
        }
        let tree = self.store.put_tree(&Tree::new())?;
        let state = State {
            tree,
            config: ImageConfig::default(),
        };
        Ok(self.empty.get_or_init(|| state).clone())
    }

    /// Run or restore one step, moving the cursor past it. Returns whether
    /// it was cached.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        stage_ir: &crate::ir::Stage,
        index: usize,
        step: &Step,
        text: &str,
        cur: &mut Cursor,
        inputs: &HashMap<StageId, State>,
        use_cache: bool,
        last: bool,
    ) -> Result<bool, Diagnostic> {
        let stage = stage_ir.name.as_str();
        let mut kb = KeyBuilder::new(&cur.start, &step.op.canonical(self.graph));
        match &step.op {
            Op::Copy(c) => {
                if let CopyFrom::Stage(src) = c.from {
                    let s = &inputs[&src];
                    kb.input(
                        &format!("stage:{}", self.graph.stage(src).name),
                        &s.tree.hex(),
                    );
                }
            }
            Op::Wasm(w) => self.wasm_inputs(w, step, inputs, &mut kb)?,
            Op::Run { .. } => {
                return Err(Diagnostic::build(
                    "kiln::exec::unsupported",
                    "`run` steps cannot run in this version of kiln",
                )
                .with_label(step.span, "a `run` step")
                .with_help(
                    "remove the step, or build the stage with a kiln that runs sandboxed commands",
                ));
            }
            _ => {}
        }
        let prepared = self.prepare(step, Some(&mut kb))?;
        let (key, key_inputs) = kb.finish();
        let record = |cached: bool| StepRecord {
            stage: stage.to_string(),
            step: index,
            text: text.to_string(),
            key: key.hex(),
            cached,
            inputs: key_inputs.clone(),
        };
        if use_cache && let Some(hit) = self.store.get_action(key) {
            self.steps_cached.fetch_add(1, Ordering::Relaxed);
            self.records
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(record(true));
            self.progress.emit(Event::StepCached {
                stage: stage.into(),
                step: index,
                text: text.into(),
                key: key.hex(),
            });
            match hit.tree {
                Some(t) => {
                    cur.from = From::Stored(t);
                    cur.pending.clear();
                    cur.known = Some(t);
                }
                None => {
                    // The tree after this step was not kept: remember how to redo it.
                    cur.pending.push((
                        index,
                        std::mem::replace(&mut cur.config, hit.config.clone()),
                    ));
                    cur.known = None;
                }
            }
            cur.config = hit.config;
            cur.start = key.hex();
            cur.last = Some(key);
            return Ok(true);
        }
        self.progress.emit(Event::StepStarted {
            stage: stage.into(),
            step: index,
            text: text.into(),
            key: key.hex(),
        });
        let t0 = Instant::now();
        let mut tree = self.materialize(cur, stage_ir, inputs)?;
        let mut config = cur.config.clone();
        if let Op::Wasm(w) = &step.op {
            tree = self.run_wasm(w, step, &tree, &config, inputs, key, stage, index)?;
        } else {
            self.apply(step, &mut tree, &mut config, prepared, inputs)?;
        }
        // Trees are stored at the end of a stage only: the steps between
        // keep their config and are replayed from the last stored tree if a
        // later step needs their tree. So a stage of many steps costs one
        // stored tree, not one per step.
        // A plugin step's tree is always stored: replaying it would mean
        // running the plugin again.
        let digest = if !step.op.changes_tree() {
            cur.known
        } else if last || matches!(step.op, Op::Wasm(_)) {
            Some(self.store.put_tree(&tree)?)
        } else {
            None
        };
        let action = Action {
            tree: digest,
            config: config.clone(),
        };
        self.store.put_action(key, &action)?;
        cur.from = From::Memory(tree);
        cur.pending.clear();
        cur.known = digest;
        cur.config = config;
        cur.start = key.hex();
        cur.last = Some(key);
        self.steps_run.fetch_add(1, Ordering::Relaxed);
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record(false));
        self.progress.emit(Event::StepFinished {
            stage: stage.into(),
            step: index,
            text: text.into(),
            key: key.hex(),
            ms: t0.elapsed().as_secs_f64() * 1000.0,
        });
        Ok(false)
    }

    /// What a step reads before it runs: for a context copy, the files its
    /// sources match, with digests (added to the key when one is given).
    fn prepare(
        &self,
        step: &Step,
        kb: Option<&mut KeyBuilder>,
    ) -> Result<Option<builtin::Prepared>, Diagnostic> {
        if let Op::Copy(c) = &step.op
            && let CopyFrom::Context(ctx) = c.from
        {
            let snap = self.context(ctx)?;
            let picked = builtin::pick_from_context(&snap, c)?;
            if let Some(kb) = kb {
                builtin::context_inputs(&picked, kb);
            }
            return Ok(Some(builtin::Prepared::Context(snap, picked)));
        }
        Ok(None)
    }

    /// Apply a builtin step to a tree and config.
    fn apply(
        &self,
        step: &Step,
        tree: &mut Tree,
        config: &mut ImageConfig,
        prepared: Option<builtin::Prepared>,
        inputs: &HashMap<StageId, State>,
    ) -> Result<(), Diagnostic> {
        let source_tree = match &step.op {
            Op::Copy(c) => match c.from {
                CopyFrom::Stage(src) => Some(self.tree(inputs[&src].tree)?),
                CopyFrom::Context(_) => None,
            },
            _ => None,
        };
        let cx = builtin::Cx {
            store: self.store,
            graph: self.graph,
            span: step.span,
            unpack_limit: self.options.unpack_limit,
        };
        builtin::apply(
            &cx,
            &step.op,
            tree,
            config,
            prepared,
            source_tree.as_deref(),
        )
    }

    fn context(&self, id: crate::ir::ContextId) -> Result<Arc<Snapshot>, Diagnostic> {
        self.contexts[id.0 as usize]
            .get_or_init(|| {
                let ctx = self.graph.context(id);
                let listing = crate::context::Listing {
                    exclude: &self.exclude,
                    ignore_file: ctx.ignore_file.as_deref(),
                    trust_index: !self.options.no_cache,
                };
                Snapshot::open(&ctx.path, listing, self.store).map(Arc::new)
            })
            .clone()
    }

    /// A stored tree, loaded once per build.
    pub fn tree(&self, d: TreeDigest) -> Result<Arc<Tree>, Diagnostic> {
        if let Some(t) = self.trees.lock().unwrap_or_else(|e| e.into_inner()).get(&d) {
            return Ok(t.clone());
        }
        let t = Arc::new(self.store.get_tree(d)?);
        self.trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(d, t.clone());
        Ok(t)
    }
}
