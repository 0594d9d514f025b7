//! The terminal display: a spinner line per running stage showing its
//! current step, replaced by a ✓ (ran) or ∙ (cached) line when it ends.

use super::{Event, Reporter, human_ms, plain};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

pub struct Tty {
    mp: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Tty {
    pub fn new() -> Tty {
        Tty {
            mp: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(HashMap::new()),
        }
    }

    /// Whether indicatif will draw nothing (stderr is not a terminal).
    pub fn is_hidden(&self) -> bool {
        self.mp.is_hidden()
    }

    fn bar(&self, stage: &str) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        bars.entry(stage.to_string())
            .or_insert_with(|| {
                let style = ProgressStyle::with_template(
                    "{spinner:.cyan} {prefix:.bold} {wide_msg} {elapsed:.dim}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
                let pb = self.mp.add(ProgressBar::new_spinner().with_style(style));
                pb.set_prefix(stage.to_string());
                pb.enable_steady_tick(Duration::from_millis(100));
                pb
            })
            .clone()
    }

    fn end(&self, stage: &str, line: String) {
        let bar = self
            .bars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(stage);
        if let Some(pb) = bar {
            pb.finish_and_clear();
            self.mp.remove(&pb);
        }
        let _ = self.mp.println(line);
    }
}

impl Default for Tty {
    fn default() -> Self {
        Tty::new()
    }
}

impl Reporter for Tty {
    fn event(&self, _at_ms: f64, event: &Event) {
        match event {
            Event::StageStarted { stage } => {
                self.bar(stage).set_message("starting");
            }
            Event::StepStarted {
                stage, step, text, ..
            } => {
                self.bar(stage)
                    .set_message(format!("[{}] {text}", step + 1));
            }
            Event::StepWaiting { stage, step, text } => {
                self.bar(stage)
                    .set_message(format!("[{}] {text}…", step + 1));
            }
            Event::StepCached {
                stage, step, text, ..
            } => {
                self.bar(stage)
                    .set_message(format!("[{}] cached {text}", step + 1));
            }
            Event::StageFinished {
                stage, cached, ms, ..
            } => {
                let mark = if *cached { "∙" } else { "✓" };
                let what = if *cached { "cached" } else { "built" };
                self.end(stage, format!("{mark} {stage} {what} ({})", human_ms(*ms)));
            }
            Event::StageFailed { stage } => self.end(stage, format!("✗ {stage} failed")),
            Event::StageSkipped { stage, because } => {
                self.end(stage, format!("- {stage} skipped: {because}"))
            }
            Event::StepFailed { .. } => {}
            other => {
                if let Some(l) = plain::line(other) {
                    let _ = self.mp.println(l);
                }
            }
        }
    }

    fn println(&self, text: &str) {
        self.mp
            .suspend(|| eprint!("{}{}", text, if text.ends_with('\n') { "" } else { "\n" }));
    }

    fn finish(&self) {
        let bars: Vec<ProgressBar> = self
            .bars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, b)| b)
            .collect();
        for b in bars {
            b.finish_and_clear();
        }
        let _ = self.mp.clear();
    }
}
