//! Plain lines on stderr: one per step that runs or hits the cache.

use super::sink::Sink;
use super::{Event, Reporter, human_ms};

pub struct Plain {
    out: Sink,
}

impl Plain {
    pub fn new() -> Plain {
        Plain {
            out: Sink::default(),
        }
    }
}

impl Default for Plain {
    fn default() -> Self {
        Plain::new()
    }
}

/// A test's line: `#STAGE [N] PASSED NAME (time)` or `FAILED` with how.
fn test_line(event: &Event) -> String {
    let Event::TestFinished {
        stage,
        step,
        name,
        passed,
        status,
        ms,
        cached,
    } = event
    else {
        return String::new();
    };
    let how = match passed {
        true => human_ms(*ms),
        false => format!("{status}, {}", human_ms(*ms)),
    };
    format!(
        "#{stage} [{}] {} {name} ({how}{})",
        step + 1,
        if *passed { "PASSED" } else { "FAILED" },
        if *cached { ", cached" } else { "" }
    )
}

/// The line shown for an event, if any.
pub fn line(event: &Event) -> Option<String> {
    Some(match event {
        Event::BuildStarted { stages, jobs } => format!(
            "building {stages} stage{} with {jobs} job{}",
            plural(*stages),
            plural(*jobs)
        ),
        Event::StageStarted { .. } | Event::StepStarted { .. } => return None,
        Event::StepCached {
            stage,
            step,
            text,
            non_hermetic,
            remote,
            ..
        } => format!(
            "#{stage} [{}] CACHED{} {text}{}",
            step + 1,
            if *remote { " (remote)" } else { "" },
            mark(non_hermetic.as_deref())
        ),
        Event::StepFinished {
            stage,
            step,
            text,
            ms,
            non_hermetic,
            ..
        } => format!(
            "#{stage} [{}] {text} ({}){}",
            step + 1,
            human_ms(*ms),
            mark(non_hermetic.as_deref())
        ),
        Event::StepWaiting { stage, step, text } => format!("#{stage} [{}] {text}…", step + 1),
        Event::StepOutput { stage, step, text } => text
            .lines()
            .map(|l| format!("#{stage} [{}] | {l}", step + 1))
            .collect::<Vec<_>>()
            .join("\n"),
        Event::StepFailed {
            stage,
            step,
            text,
            message,
        } => format!("#{stage} [{}] FAILED {text}: {message}", step + 1),
        Event::TestFinished { .. } => test_line(event),
        Event::StageFinished {
            stage,
            state,
            cached,
            ms,
        } => format!(
            "#{stage} done {}{} ({})",
            &state[..12.min(state.len())],
            if *cached { " (cached)" } else { "" },
            human_ms(*ms)
        ),
        Event::StageFailed { stage } => format!("#{stage} failed"),
        Event::StageSkipped { stage, because } => format!("#{stage} skipped: {because}"),
        Event::ExportWritten {
            stage,
            dest,
            format,
            unchanged: false,
        } => format!("exported `{stage}` to {dest} ({format})"),
        Event::ExportWritten {
            stage,
            dest,
            unchanged: true,
            ..
        } => format!("`{stage}` at {dest} is up to date"),
        Event::Notice { message } => format!("kiln: {message}"),
        Event::RemoteCache {
            found,
            results_uploaded,
            uploaded_blobs,
            uploaded_bytes,
            downloaded_bytes,
        } => format!(
            "remote cache: {found} step{} found there; {results_uploaded} result{} uploaded ({uploaded_blobs} blob{}, {}); {} downloaded",
            plural(*found as usize),
            plural(*results_uploaded as usize),
            plural(*uploaded_blobs as usize),
            crate::units::approx_size(*uploaded_bytes),
            crate::units::approx_size(*downloaded_bytes),
        ),
        Event::ImageTagged {
            stage,
            name,
            digest,
        } => format!("tagged `{stage}` as {name} ({})", short(digest)),
        Event::ImagePushed {
            stage,
            reference,
            digest,
            uploaded,
            uploaded_bytes,
            present,
        } => format!(
            "pushed `{stage}` to {reference} ({}): {uploaded} blob{} uploaded ({}), {present} already there",
            short(digest),
            plural(*uploaded),
            crate::units::approx_size(*uploaded_bytes)
        ),
        Event::ImageResolved {
            reference,
            digest,
            how,
        } => format!("image {reference}: {how} {}", short(digest)),
        Event::ImageUnpacked {
            reference,
            applied,
            reused,
            fetched,
            fetched_bytes,
            ms,
            ..
        } => unpacked(reference, *applied, *reused, *fetched, *fetched_bytes, *ms),
        Event::ExportSkipped {
            stage,
            dest,
            because,
        } => format!("not exported: `{stage}` to {dest}: {because}"),
        // The plan is the command's output.
        Event::StepPlanned { .. } => return None,
        Event::BuildFinished {
            ok,
            ms,
            steps_run,
            steps_cached,
            failures,
            unchanged,
        } => finished(
            *ok && *unchanged,
            *ok,
            *ms,
            *steps_run,
            *steps_cached,
            *failures,
        ),
    })
}

/// How an image's layers were had.
fn unpacked(
    reference: &str,
    applied: usize,
    reused: usize,
    fetched: usize,
    fetched_bytes: u64,
    ms: f64,
) -> String {
    let mut parts = vec![format!("{applied} layer{} applied", plural(applied))];
    if reused > 0 {
        parts.push(format!("{reused} reused"));
    }
    if fetched > 0 {
        parts.push(format!(
            "{fetched} fetched ({})",
            crate::units::approx_size(fetched_bytes)
        ));
    }
    format!("image {reference}: {} ({})", parts.join(", "), human_ms(ms))
}

/// A build's last line.
fn finished(
    unchanged: bool,
    ok: bool,
    ms: f64,
    steps_run: usize,
    steps_cached: usize,
    failures: usize,
) -> String {
    let took = human_ms(ms);
    if unchanged {
        format!(
            "build finished in {took}: nothing changed, {steps_cached} step{} cached",
            plural(steps_cached)
        )
    } else if ok {
        format!(
            "build finished in {took}: {steps_run} step{} run, {steps_cached} cached",
            plural(steps_run)
        )
    } else {
        format!(
            "build failed in {took}: {failures} failure{}, {steps_run} step{} run, {steps_cached} cached",
            plural(failures),
            plural(steps_run)
        )
    }
}

/// A digest as shown: `sha256:` and 12 digits.
fn short(digest: &str) -> &str {
    &digest[..19.min(digest.len())]
}

/// The mark of a step that is not hermetic.
fn mark(why: Option<&str>) -> String {
    why.map(|w| format!(" [not hermetic: {w}]"))
        .unwrap_or_default()
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

impl Reporter for Plain {
    fn event(&self, _at_ms: f64, event: &Event) {
        if let Some(l) = line(event) {
            self.out.line(&l, !event.routine());
        }
    }

    fn println(&self, text: &str) {
        self.out.line(text, true);
    }

    fn finish(&self) {
        self.out.flush();
    }
}
