//! Build events and the reporters that show them.
//!
//! The executor only emits [`Event`]s through a [`Reporter`]; it never
//! prints. Reporters: [`tty::Tty`] (indicatif, a line per running stage),
//! [`plain::Plain`] (one line per event) and [`json::Json`]
//! (newline-delimited JSON for tools and tests).

pub mod json;
pub mod plain;
mod sink;
pub mod trace;
pub mod tty;

use serde::Serialize;
use std::time::Instant;

/// Something that happened during a build. Times are milliseconds since
/// the build started.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    BuildStarted {
        stages: usize,
        jobs: usize,
    },
    StageStarted {
        stage: String,
    },
    StepStarted {
        stage: String,
        step: usize,
        text: String,
        key: String,
    },
    StepCached {
        stage: String,
        step: usize,
        text: String,
        key: String,
        /// Why the step is not hermetic (network, host files), if it is not.
        #[serde(skip_serializing_if = "Option::is_none")]
        non_hermetic: Option<String>,
        /// Its result came from the remote cache.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        remote: bool,
    },
    StepFinished {
        stage: String,
        step: usize,
        text: String,
        key: String,
        ms: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        non_hermetic: Option<String>,
    },
    /// What a running step is doing for a while (a plugin compiling):
    /// the terminal shows it on the stage's spinner line.
    StepWaiting {
        stage: String,
        step: usize,
        text: String,
    },
    /// What a plugin step printed (the last lines; the whole output is in the log).
    StepOutput {
        stage: String,
        step: usize,
        text: String,
    },
    StepFailed {
        stage: String,
        step: usize,
        text: String,
        message: String,
    },
    /// A test step ended (ran, or its passing run taken from the cache).
    TestFinished {
        stage: String,
        step: usize,
        /// Its name in reports.
        name: String,
        passed: bool,
        /// How its command ended (`exit 0`, `exit 1`, `killed by signal 9`, …).
        status: String,
        /// How long the command ran (for a cached test, when it ran).
        ms: f64,
        cached: bool,
    },
    StageFinished {
        stage: String,
        state: String,
        cached: bool,
        ms: f64,
    },
    StageFailed {
        stage: String,
    },
    StageSkipped {
        stage: String,
        because: String,
    },
    ExportWritten {
        stage: String,
        dest: String,
        format: String,
        /// The destination already held this export, untouched: nothing was written.
        unchanged: bool,
    },
    ExportSkipped {
        stage: String,
        dest: String,
        because: String,
    },
    /// An image reference resolved to a manifest digest: from the lock
    /// file (`how` = "locked"), or by asking its source ("resolved").
    ImageResolved {
        reference: String,
        digest: String,
        how: String,
    },
    /// An image's tree was made from its layers (not reused whole).
    ImageUnpacked {
        reference: String,
        digest: String,
        applied: usize,
        reused: usize,
        fetched: usize,
        fetched_bytes: u64,
        ms: f64,
    },
    /// A stage's image was named in the local image store (`-t`).
    ImageTagged {
        stage: String,
        name: String,
        digest: String,
    },
    /// A stage's image was pushed to a registry.
    ImagePushed {
        stage: String,
        reference: String,
        /// The manifest's digest.
        digest: String,
        /// Blobs uploaded, their bytes, and blobs the registry had.
        uploaded: usize,
        uploaded_bytes: u64,
        present: usize,
    },
    /// What the remote cache did in the build.
    RemoteCache {
        /// Steps whose results were taken from it.
        found: u64,
        /// Results recorded there, and the blobs and bytes sent for them.
        results_uploaded: u64,
        uploaded_blobs: u64,
        uploaded_bytes: u64,
        /// Bytes read from it (trees and files the build needed here).
        downloaded_bytes: u64,
    },
    /// A dry run's answer for one step: `cached`, `remote` (in the
    /// remote cache) or `would run`, and why it would.
    StepPlanned {
        stage: String,
        step: usize,
        text: String,
        status: String,
        why: Vec<String>,
    },
    /// Something the user should know about the build as it goes.
    Notice {
        message: String,
    },
    BuildFinished {
        ok: bool,
        ms: f64,
        steps_run: usize,
        steps_cached: usize,
        failures: usize,
        /// Nothing changed since the last successful build: its result was reused whole.
        unchanged: bool,
    },
}

impl Event {
    /// Routine events that may wait in a buffer (cache hits, starts).
    pub fn routine(&self) -> bool {
        matches!(
            self,
            Event::StepCached { .. }
                | Event::StepStarted { .. }
                | Event::StageStarted { .. }
                | Event::StageFinished { cached: true, .. }
                | Event::TestFinished { cached: true, .. }
        )
    }
}

/// Receives events. Implementations must be cheap and thread-safe: stages
/// report from every worker thread.
pub trait Reporter: Sync {
    fn event(&self, at_ms: f64, event: &Event);
    /// Print a line (a diagnostic, a summary) without garbling live output.
    fn println(&self, text: &str);
    /// Stop drawing; called once at the end.
    fn finish(&self) {}
}

/// A reporter plus the clock events are timed against.
pub struct Progress<'a> {
    start: Instant,
    reporter: &'a dyn Reporter,
}

impl<'a> Progress<'a> {
    pub fn new(reporter: &'a dyn Reporter) -> Progress<'a> {
        Progress {
            start: Instant::now(),
            reporter,
        }
    }

    pub fn elapsed_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }

    pub fn emit(&self, event: Event) {
        self.reporter.event(self.elapsed_ms(), &event);
    }

    pub fn println(&self, text: &str) {
        self.reporter.println(text);
    }

    pub fn finish(&self) {
        self.reporter.finish();
    }
}

/// `--progress` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Auto,
    Tty,
    Plain,
    /// One JSON object per event (`rawjson`, BuildKit's name, is the same).
    #[value(alias = "rawjson")]
    Json,
}

/// Build the reporter for a mode: `auto` picks the terminal display when
/// stderr is a terminal, plain lines otherwise.
pub fn reporter(mode: Mode) -> Box<dyn Reporter> {
    use std::io::IsTerminal;
    match mode {
        Mode::Json => Box::new(json::Json::new()),
        Mode::Plain => Box::new(plain::Plain::new()),
        Mode::Tty => {
            // A terminal display that cannot draw (no terminal, TERM=dumb)
            // would swallow everything: fall back to lines.
            let t = tty::Tty::new();
            if t.is_hidden() {
                Box::new(plain::Plain::new())
            } else {
                Box::new(t)
            }
        }
        Mode::Auto => {
            let dumb = std::env::var("TERM").map(|t| t == "dumb").unwrap_or(true);
            if std::io::stderr().is_terminal() && !dumb {
                Box::new(tty::Tty::new())
            } else {
                Box::new(plain::Plain::new())
            }
        }
    }
}

/// Milliseconds as a short human duration.
pub fn human_ms(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else if ms < 60_000.0 {
        format!("{:.1}s", ms / 1000.0)
    } else {
        format!(
            "{}m{:02}s",
            (ms / 60_000.0) as u64,
            ((ms / 1000.0) as u64) % 60
        )
    }
}
