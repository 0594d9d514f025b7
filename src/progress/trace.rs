//! `--trace FILE`: the build as a Chrome trace event file (the JSON
//! format Perfetto and `chrome://tracing` open). [`Trace`] is a reporter
//! that passes every event on to the display and keeps those of stages,
//! steps and tests with the thread that sent them (a stage runs on one
//! worker thread, so its steps are nested in it there); [`Trace::chrome`]
//! turns them into slices: a stage or a step that ran is a complete event
//! from its start to its end, a cached step an instant event, a cached
//! stage's slice says so (`cat` `stage,cached`), and the critical path
//! (see [`critical_path`]) is repeated on a track of its own.

use super::{Event, Reporter};
use crate::model::timing::{Span, critical_path};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Mutex;
use std::thread::ThreadId;

/// A reporter that also keeps what the trace file needs.
pub struct Trace {
    inner: Box<dyn Reporter>,
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    /// Each event with its time and its thread's number (the main
    /// thread's is 0).
    events: Vec<(f64, usize, Event)>,
    threads: HashMap<ThreadId, usize>,
}

impl Trace {
    /// A trace of a build whose main thread is this one (numbered 0; the
    /// workers from 1, in the order they are first seen).
    pub fn new(inner: Box<dyn Reporter>) -> Trace {
        let mut kept = Kept::default();
        kept.threads.insert(std::thread::current().id(), 0);
        Trace {
            inner,
            kept: Mutex::new(kept),
        }
    }

    /// Each stage's span, in the order stages started. `needs` names the
    /// stages each stage needs.
    pub fn spans(&self, needs: &HashMap<String, Vec<String>>) -> Vec<Span> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let mut open: HashMap<&str, f64> = HashMap::new();
        let mut spans = Vec::new();
        for (at, _, e) in &kept.events {
            match e {
                Event::StageStarted { stage } => {
                    open.insert(stage, *at);
                }
                Event::StageFinished { stage, .. } | Event::StageFailed { stage } => {
                    let start = open.remove(stage.as_str()).unwrap_or(*at);
                    spans.push(Span {
                        stage: stage.clone(),
                        start_ms: start,
                        end_ms: *at,
                        cached: matches!(e, Event::StageFinished { cached: true, .. }),
                        needs: needs.get(stage).cloned().unwrap_or_default(),
                    });
                }
                _ => {}
            }
        }
        spans
    }

    /// The trace file's text: slices for stages and steps on their
    /// threads, and the critical path on a track of its own.
    pub fn chrome(&self, title: &str, needs: &HashMap<String, Vec<String>>) -> String {
        let spans = self.spans(needs);
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let us = |ms: f64| (ms * 1000.0).round() as u64;
        let mut out: Vec<Value> = vec![json!({
            "name": "process_name", "ph": "M", "pid": 1, "tid": 0,
            "args": {"name": title},
        })];
        for &n in kept.threads.values() {
            let name = if n == 0 {
                "main".to_string()
            } else {
                format!("worker {n}")
            };
            out.push(json!({
                "name": "thread_name", "ph": "M", "pid": 1, "tid": n,
                "args": {"name": name},
            }));
            out.push(json!({
                "name": "thread_sort_index", "ph": "M", "pid": 1, "tid": n,
                "args": {"sort_index": n},
            }));
        }
        // Stages and steps that ran: begun, then ended on the same thread.
        let mut begun: HashMap<(usize, String), (f64, Value)> = HashMap::new();
        for (at, tid, e) in &kept.events {
            let (at, tid) = (*at, *tid);
            let slice = |name: &str, cat: &str, start: f64, args: Value| {
                json!({
                    "name": name, "cat": cat, "ph": "X", "pid": 1, "tid": tid,
                    "ts": us(start), "dur": us(at).saturating_sub(us(start)), "args": args,
                })
            };
            match e {
                Event::StageStarted { stage } => {
                    begun.insert((tid, format!("stage {stage}")), (at, json!({})));
                }
                Event::StepStarted {
                    stage, step, key, ..
                } => {
                    let args = json!({"stage": stage, "step": step + 1, "key": key});
                    begun.insert((tid, format!("step {stage} {step}")), (at, args));
                }
                Event::StepFinished {
                    stage, step, text, ..
                }
                | Event::StepFailed {
                    stage, step, text, ..
                } => {
                    if let Some((start, mut args)) = begun.remove(&(tid, format!("step {stage} {step}")))
                    {
                        if let Event::StepFailed { message, .. } = e {
                            args["failed"] = json!(message);
                        }
                        out.push(slice(text, "step", start, args));
                    }
                }
                Event::StepCached {
                    stage,
                    step,
                    text,
                    key,
                    remote,
                    ..
                } => out.push(json!({
                    "name": text, "cat": "step,cached", "ph": "i", "s": "t", "pid": 1,
                    "tid": tid, "ts": us(at),
                    "args": {"stage": stage, "step": step + 1, "key": key, "cached": true, "remote": remote},
                })),
                Event::TestFinished {
                    stage,
                    name,
                    passed,
                    status,
                    cached,
                    ..
                } => out.push(json!({
                    "name": format!("test {name}: {}", if *passed { "passed" } else { "FAILED" }),
                    "cat": "test", "ph": "i", "s": "t", "pid": 1, "tid": tid, "ts": us(at),
                    "args": {"stage": stage, "passed": passed, "status": status, "cached": cached},
                })),
                Event::StageFinished { stage, .. } | Event::StageFailed { stage } => {
                    if let Some((start, _)) = begun.remove(&(tid, format!("stage {stage}"))) {
                        let cached = matches!(e, Event::StageFinished { cached: true, .. });
                        let failed = matches!(e, Event::StageFailed { .. });
                        let cat = if cached { "stage,cached" } else { "stage" };
                        out.push(slice(
                            stage,
                            cat,
                            start,
                            json!({"cached": cached, "failed": failed}),
                        ));
                    }
                }
                _ => {}
            }
        }
        // The critical path, on a track of its own after the workers.
        let track = kept.threads.len();
        out.push(json!({
            "name": "thread_name", "ph": "M", "pid": 1, "tid": track,
            "args": {"name": "critical path"},
        }));
        out.push(json!({
            "name": "thread_sort_index", "ph": "M", "pid": 1, "tid": track,
            "args": {"sort_index": track},
        }));
        let path = critical_path(&spans);
        for s in &path {
            out.push(json!({
                "name": s.stage, "cat": "critical path", "ph": "X", "pid": 1, "tid": track,
                "ts": us(s.start_ms), "dur": us(s.end_ms).saturating_sub(us(s.start_ms)),
                "args": {"cached": s.cached},
            }));
        }
        let doc = json!({
            "traceEvents": out,
            "displayTimeUnit": "ms",
            "otherData": {
                "critical_path": path.iter().map(|s| s.stage.as_str()).collect::<Vec<_>>(),
            },
        });
        doc.to_string()
    }
}

impl Reporter for Trace {
    fn event(&self, at_ms: f64, event: &Event) {
        let kept_kind = matches!(
            event,
            Event::StageStarted { .. }
                | Event::StageFinished { .. }
                | Event::StageFailed { .. }
                | Event::StepStarted { .. }
                | Event::StepFinished { .. }
                | Event::StepFailed { .. }
                | Event::StepCached { .. }
                | Event::TestFinished { .. }
        );
        if kept_kind {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            let n = kept.threads.len();
            let tid = *kept.threads.entry(std::thread::current().id()).or_insert(n);
            kept.events.push((at_ms, tid, event.clone()));
        }
        self.inner.event(at_ms, event);
    }

    fn println(&self, text: &str) {
        self.inner.println(text);
    }

    fn finish(&self) {
        self.inner.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Nothing;
    impl Reporter for Nothing {
        fn event(&self, _: f64, _: &Event) {}
        fn println(&self, _: &str) {}
    }

    #[test]
    fn stages_and_steps_become_slices_on_their_threads() {
        let t = Trace::new(Box::new(Nothing));
        t.event(0.0, &Event::StageStarted { stage: "a".into() });
        t.event(
            1.0,
            &Event::StepStarted {
                stage: "a".into(),
                step: 0,
                text: "run \"make\"".into(),
                key: "k".into(),
            },
        );
        t.event(
            5.5,
            &Event::StepFinished {
                stage: "a".into(),
                step: 0,
                text: "run \"make\"".into(),
                key: "k".into(),
                ms: 4.5,
                non_hermetic: None,
            },
        );
        let worker = std::thread::scope(|s| {
            s.spawn(|| {
                t.event(6.0, &Event::StageStarted { stage: "b".into() });
                t.event(
                    6.5,
                    &Event::StepCached {
                        stage: "b".into(),
                        step: 0,
                        text: "copy".into(),
                        key: "k2".into(),
                        non_hermetic: None,
                        remote: false,
                    },
                );
                t.event(
                    7.0,
                    &Event::StageFinished {
                        stage: "b".into(),
                        state: "s".into(),
                        cached: true,
                        ms: 1.0,
                    },
                );
            })
            .join()
        });
        assert!(worker.is_ok());
        t.event(
            6.0,
            &Event::StageFinished {
                stage: "a".into(),
                state: "s".into(),
                cached: false,
                ms: 6.0,
            },
        );
        let needs = HashMap::from([("b".to_string(), vec!["a".to_string()])]);
        let doc: Value = serde_json::from_str(&t.chrome("kiln build", &needs)).unwrap();
        let events = doc["traceEvents"].as_array().unwrap();
        let slice = |name: &str, cat: &str| {
            events
                .iter()
                .find(|e| e["name"] == name && e["cat"] == cat)
                .cloned()
                .unwrap_or_default()
        };
        let step = slice("run \"make\"", "step");
        assert_eq!(
            (step["ts"].as_u64(), step["dur"].as_u64()),
            (Some(1000), Some(4500))
        );
        assert_eq!(step["tid"], 0);
        let b = slice("b", "stage,cached");
        assert_eq!(b["tid"], 1, "a stage on the thread that ran it");
        assert_eq!(slice("copy", "step,cached")["ph"], "i");
        assert_eq!(doc["otherData"]["critical_path"], json!(["a", "b"]));
        assert_eq!(slice("a", "critical path")["dur"], 6000);
    }
}
