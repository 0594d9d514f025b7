//! The scheduler: runs every stage of a build once its dependencies have
//! ended, on a rayon pool of at most `jobs` threads, and collects what
//! each stage did. It knows nothing of steps: [`schedule`] is given the
//! stages in dependency order, their dependencies, and a function that
//! runs one stage given how its dependencies ended.

use crate::diag::Code;
use crate::diag::Diagnostic;
use crate::ir::StageId;
use std::collections::HashMap;
use std::sync::Mutex;

/// How the scheduled stages ended, and every failure in the order found.
pub struct Scheduled<O> {
    pub outcomes: HashMap<StageId, O>,
    pub failures: Vec<Diagnostic>,
}

struct State<O> {
    waiting: HashMap<StageId, usize>,
    outcomes: HashMap<StageId, O>,
    failures: Vec<Diagnostic>,
}

/// Run `order` (every stage after its dependencies) with at most `jobs`
/// stages at once. `run` gets a stage and its dependencies' outcomes, and
/// returns its own outcome and maybe a failure. A stage whose dependencies
/// failed still gets called (and decides to skip itself), so independent
/// branches always finish.
pub fn schedule<O, D, R>(order: &[StageId], deps: D, jobs: usize, run: R) -> Scheduled<O>
where
    O: Clone + Send,
    D: Fn(StageId) -> Vec<StageId> + Sync,
    R: Fn(StageId, &HashMap<StageId, O>) -> (O, Option<Diagnostic>) + Sync,
{
    let mut dependants: HashMap<StageId, Vec<StageId>> = HashMap::new();
    let mut waiting = HashMap::new();
    for &id in order {
        let ds = deps(id);
        waiting.insert(id, ds.len());
        for d in ds {
            dependants.entry(d).or_default().push(id);
        }
    }
    let ready: Vec<StageId> = order
        .iter()
        .copied()
        .filter(|id| waiting[id] == 0)
        .collect();
    let state = Mutex::new(State {
        waiting,
        outcomes: HashMap::new(),
        failures: Vec::new(),
    });
    // No more threads than stages that could run.
    let threads = jobs.clamp(1, order.len().max(1));
    let ctx = Ctx {
        state: &state,
        dependants: &dependants,
        deps: &deps,
        run: &run,
    };
    // Stacks of 64 MiB (address space, used only as touched): walks of
    // what commands leave recurse once per directory level.
    match rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .stack_size(64 << 20)
        .build()
    {
        Ok(pool) => pool.scope(|s| {
            for id in ready {
                ctx.spawn(s, id);
            }
        }),
        Err(e) => {
            let mut g = state.lock().unwrap_or_else(|e| e.into_inner());
            g.failures.push(Diagnostic::new(
                Code::EXEC_THREADS,
                format!("cannot start worker threads: {e}"),
            ));
        }
    }
    let state = state.into_inner().unwrap_or_else(|e| e.into_inner());
    Scheduled {
        outcomes: state.outcomes,
        failures: state.failures,
    }
}

struct Ctx<'s, O, D, R> {
    state: &'s Mutex<State<O>>,
    dependants: &'s HashMap<StageId, Vec<StageId>>,
    deps: &'s D,
    run: &'s R,
}

impl<'s, O, D, R> Ctx<'s, O, D, R>
where
    O: Clone + Send,
    D: Fn(StageId) -> Vec<StageId> + Sync,
    R: Fn(StageId, &HashMap<StageId, O>) -> (O, Option<Diagnostic>) + Sync,
{
    fn spawn(&'s self, scope: &rayon::Scope<'s>, id: StageId) {
        scope.spawn(move |s| {
            // A stage that becomes ready here runs on this thread next, so a
            // chain of stages does not hop between threads; any others are
            // spawned for idle threads to take.
            let mut id = id;
            loop {
                let inputs: HashMap<StageId, O> = {
                    let g = self.state.lock().unwrap_or_else(|e| e.into_inner());
                    (self.deps)(id)
                        .into_iter()
                        .filter_map(|d| g.outcomes.get(&d).map(|o| (d, o.clone())))
                        .collect()
                };
                let (outcome, failure) = (self.run)(id, &inputs);
                let ready = {
                    let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
                    g.outcomes.insert(id, outcome);
                    if let Some(f) = failure {
                        g.failures.push(f);
                    }
                    let mut ready = Vec::new();
                    for d in self.dependants.get(&id).into_iter().flatten() {
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
                    self.spawn(s, r);
                }
                match next {
                    Some(n) => id = n,
                    None => break,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A graph: stage i depends on the stages listed.
    fn graph(edges: &[&[u32]]) -> (Vec<StageId>, impl Fn(StageId) -> Vec<StageId> + Sync) {
        let deps: Vec<Vec<StageId>> = edges
            .iter()
            .map(|d| d.iter().map(|i| StageId(*i)).collect())
            .collect();
        let order = (0..edges.len() as u32).map(StageId).collect();
        (order, move |id: StageId| deps[id.0 as usize].clone())
    }

    #[derive(Clone, Debug, PartialEq)]
    enum Fake {
        Built,
        Failed,
        Skipped,
    }

    /// Run fake stages: those in `failing` fail; a stage whose dependency
    /// did not build is skipped.
    fn run_fakes(edges: &[&[u32]], failing: &[u32], jobs: usize) -> Scheduled<Fake> {
        let (order, deps) = graph(edges);
        schedule(&order, deps, jobs, |id, inputs| {
            if inputs.values().any(|o| *o != Fake::Built) {
                return (Fake::Skipped, None);
            }
            if failing.contains(&id.0) {
                (
                    Fake::Failed,
                    Some(Diagnostic::new(Code::RUN_EXIT, format!("{} failed", id.0))),
                )
            } else {
                (Fake::Built, None)
            }
        })
    }

    #[test]
    fn every_stage_runs_after_its_dependencies() {
        let (order, deps) = graph(&[&[], &[0], &[0], &[1, 2], &[3]]);
        let finished = Mutex::new(Vec::new());
        let r = schedule(&order, &deps, 2, |id, inputs| {
            let done = finished.lock().unwrap();
            for d in deps(id) {
                assert!(done.contains(&d), "{id:?} ran before {d:?}");
                assert!(inputs.contains_key(&d));
            }
            drop(done);
            finished.lock().unwrap().push(id);
            ((), None)
        });
        assert_eq!(r.outcomes.len(), 5);
        assert!(r.failures.is_empty());
    }

    #[test]
    fn dependants_of_a_failure_are_skipped_and_other_branches_finish() {
        // 0 → 1 → 2, and 3 → 4 on its own; 1 fails.
        let r = run_fakes(&[&[], &[0], &[1], &[], &[3]], &[1], 2);
        assert_eq!(r.outcomes[&StageId(1)], Fake::Failed);
        assert_eq!(r.outcomes[&StageId(2)], Fake::Skipped);
        assert_eq!(r.outcomes[&StageId(4)], Fake::Built);
        assert_eq!(r.failures.len(), 1);
        // Two independent failures are both reported.
        let r = run_fakes(&[&[], &[], &[0, 1]], &[0, 1], 2);
        assert_eq!(r.failures.len(), 2);
        assert_eq!(r.outcomes[&StageId(2)], Fake::Skipped);
    }

    #[test]
    fn jobs_bound_how_many_stages_run_at_once() {
        for jobs in [1, 2, 3] {
            let (order, deps) = graph(&[&[], &[], &[], &[], &[], &[]]);
            let running = AtomicUsize::new(0);
            let most = AtomicUsize::new(0);
            schedule(&order, deps, jobs, |_, _| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
                ((), None)
            });
            assert!(most.load(Ordering::SeqCst) <= jobs, "jobs {jobs}");
        }
    }

    #[test]
    fn an_empty_build_schedules_nothing() {
        let r = run_fakes(&[], &[], 4);
        assert!(r.outcomes.is_empty() && r.failures.is_empty());
    }
}
