//! The executor in-process, over an in-memory content store and action
//! cache: cache hits, replay of steps whose trees were not kept, failures
//! and what `when="always"` gets, cancellation, and a damaged cache.

use super::*;
use crate::diag::Sources;
use crate::ir::{CompileOptions, compile};
use crate::model::tree::Kind;
use crate::progress::Reporter;
use crate::store::memory::MemoryStore;
use std::sync::Mutex;

#[derive(Default)]
struct Collect(Mutex<Vec<Event>>);

impl Reporter for Collect {
    fn event(&self, _at_ms: f64, event: &Event) {
        self.0.lock().unwrap().push(event.clone());
    }
    fn println(&self, _text: &str) {}
}

struct World {
    _dir: tempfile::TempDir,
    local: Store,
    mem: MemoryStore,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let local = Store::open(dir.path(), crate::store::Access::Shared).unwrap();
        World {
            _dir: dir,
            local,
            mem: MemoryStore::new(),
        }
    }

    /// Build every stage of `spec`; returns the outcome and the events.
    fn build(&self, spec: &str, cancel: bool) -> (Outcome, Vec<Event>, Graph) {
        let sources = Sources::new();
        let parsed = crate::frontend::kdl::parse_str("kiln.kdl", spec, &sources).unwrap();
        let (graph, _) = compile(&parsed, &CompileOptions::default(), &sources).unwrap();
        let collect = Collect::default();
        let progress = Progress::new(&collect);
        let stores = Stores {
            content: &self.mem,
            actions: &self.mem,
            local: self.local.scratch(),
        };
        let options = Options {
            jobs: 2,
            no_cache: false,
            memo_key: None,
            pins: Default::default(),
            epoch: 0,
            unpack_limit: 1 << 20,
            secrets: Default::default(),
            ssh: Default::default(),
            scope: "test".into(),
            dry_run: false,
        };
        let roots: Vec<StageId> = graph.stages.iter().map(|s| s.id).collect();
        let images = ImageSet::empty(crate::image::platform::Platform::host(), Default::default());
        let outcome = {
            let ex = Executor::new(Setup {
                graph: &graph,
                stores,
                progress: &progress,
                options,
                cancel: Arc::new(AtomicBool::new(cancel)),
                exclude: Vec::new(),
                images: &images,
                prefetched: Default::default(),
            });
            ex.build(&roots)
        };
        let events = collect.0.into_inner().unwrap();
        (outcome, events, graph)
    }

    fn files(&self, outcome: &Outcome, graph: &Graph, stage: &str) -> Vec<String> {
        let id = graph.find_stage(stage).unwrap();
        let StageOutcome::Built(s) = &outcome.stages[&id] else {
            panic!("{stage} did not build");
        };
        let tree = self.mem.get_tree(s.tree).unwrap();
        tree.entries
            .iter()
            .filter(|(_, e)| matches!(e.kind, Kind::File { .. }))
            .map(|(p, _)| p.clone())
            .collect()
    }
}

const THREE: &str = r#"kiln 1
stage a {
    write "/1" "one"
    write "/2" "two"
    write "/3" "three"
}
"#;

#[test]
fn a_second_build_is_answered_from_the_action_cache() {
    let w = World::new();
    let (first, _, _) = w.build(THREE, false);
    assert_eq!((first.steps_run, first.steps_cached), (3, 0));
    let (second, _, graph) = w.build(THREE, false);
    assert_eq!((second.steps_run, second.steps_cached), (0, 3));
    assert_eq!(w.files(&second, &graph, "a"), ["1", "2", "3"]);
    // Only the last step's entry holds a tree; the others hold configs.
    assert_eq!(w.mem.actions(), 3);
}

#[test]
fn cached_steps_are_replayed_when_a_later_step_runs() {
    let w = World::new();
    w.build(THREE, false);
    let changed = THREE.replace("\"three\"", "\"THREE\"");
    let (o, events, graph) = w.build(&changed, false);
    assert_eq!((o.steps_run, o.steps_cached), (1, 2));
    // Steps 1 and 2 kept no tree: their files come from replaying them.
    assert_eq!(w.files(&o, &graph, "a"), ["1", "2", "3"]);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::StepFinished { step: 2, .. }))
    );
}

#[test]
fn a_failure_skips_dependants_and_other_branches_finish() {
    let spec = r#"kiln 1
stage bad {
    write "/kept" "x"
    rm "/missing"
}
stage after {
    from bad
}
stage other {
    write "/o" "o"
}
"#;
    let w = World::new();
    let (o, _, graph) = w.build(spec, false);
    assert_eq!(o.failures.len(), 1);
    assert!(o.failures[0].message.contains("cannot remove"));
    let bad = graph.find_stage("bad").unwrap();
    // `when="always"` gets the tree as it was before the failing step.
    let StageOutcome::Failed {
        last_good: Some(state),
    } = &o.stages[&bad]
    else {
        panic!("bad: {:?}", o.stages[&bad]);
    };
    assert!(w.mem.get_tree(state.tree).unwrap().get("kept").is_some());
    assert!(matches!(
        o.stages[&graph.find_stage("after").unwrap()],
        StageOutcome::Skipped
    ));
    assert_eq!(w.files(&o, &graph, "other"), ["o"]);
}

#[test]
fn an_interrupted_build_runs_nothing() {
    let w = World::new();
    let (o, _, _) = w.build(THREE, true);
    assert!(o.interrupted);
    assert_eq!(o.steps_run, 0);
    assert!(
        o.stages
            .values()
            .all(|s| matches!(s, StageOutcome::Skipped))
    );
    assert_eq!(w.mem.actions(), 0);
}

#[test]
fn a_result_whose_tree_is_gone_is_rebuilt() {
    let w = World::new();
    let (first, _, graph) = w.build(THREE, false);
    let a = graph.find_stage("a").unwrap();
    let StageOutcome::Built(s) = &first.stages[&a] else {
        panic!("a did not build");
    };
    w.mem.lose_tree(s.tree);
    let (second, _, graph) = w.build(THREE, false);
    assert!(second.failures.is_empty(), "{:?}", second.failures);
    assert_eq!(second.steps_run, 3, "the stage ran again without the cache");
    assert_eq!(w.files(&second, &graph, "a"), ["1", "2", "3"]);
}

#[test]
fn stages_built_on_stages_and_copies_between_them() {
    let spec = r#"kiln 1
stage base {
    write "/etc/passwd" "app:x:1000:1000::/home/app:/bin/sh\n"
    write "/lib" "lib"
}
stage app {
    from base
    copy "/lib" "/opt/" from=base chown="app"
}
"#;
    let w = World::new();
    let (o, _, graph) = w.build(spec, false);
    assert!(o.failures.is_empty(), "{:?}", o.failures);
    let app = graph.find_stage("app").unwrap();
    let StageOutcome::Built(s) = &o.stages[&app] else {
        panic!("app did not build");
    };
    let t = w.mem.get_tree(s.tree).unwrap();
    let lib = t.get("opt/lib").unwrap();
    assert_eq!((lib.uid, lib.gid), (1000, 1000));
}

#[test]
fn secrets_are_masked_in_output_whole_and_line_by_line() {
    let mut m = std::collections::HashMap::new();
    m.insert("token".to_string(), b"hunter2-token\n".to_vec());
    m.insert(
        "key".to_string(),
        b"-----BEGIN KEY-----\nAAAABBBBCCCCDDDD\n-----END KEY-----\n".to_vec(),
    );
    m.insert("tiny".to_string(), b"ab".to_vec());
    let s = super::Secrets(std::sync::Arc::new(m));
    assert_eq!(
        s.redact(b"the token is hunter2-token."),
        b"the token is ***."
    );
    assert_eq!(s.redact(b"line: AAAABBBBCCCCDDDD\n"), b"line: ***\n");
    assert_eq!(s.redact(b"ab stays"), b"ab stays");
}
