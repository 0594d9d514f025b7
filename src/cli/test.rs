//! `kiln test`: build every stage that holds a test (those among the
//! `--target`s, or affected by a change), go on past failing tests, print
//! a line per test and write the reports CI reads (JUnit XML, JSON).

use super::build::Building;
use super::{Failure, exit_code, outln, render_all};
use crate::diag::{Diagnostic, Sources};
use crate::pipeline::testing::{self, TestReport, Verdict};
use crate::pipeline::{self};
use crate::progress::{Progress, human_ms};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TestArgs {
    #[command(flatten)]
    pub building: Building,
    /// Write every test's result here as JUnit XML (what CI systems read), passed or not
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write every test's result here as JSON: verdict, status, time, output tail, cached
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

pub fn run(args: &TestArgs, sources: &Sources) -> Result<(), Failure> {
    super::build::fixed_umask();
    let mut req = args.building.request()?;
    req.tests = true;
    req.remote = super::build::remote(&args.building, sources)?;
    let plan = pipeline::plan(&req, sources)?;
    let shown = super::build::Shown::new(&args.building);
    let needs = super::build::needs(&plan.loaded.graph);
    let progress = Progress::new(shown.reporter());
    if !plan.loaded.warnings.is_empty() {
        progress.println(&render_all(&plan.loaded.warnings, sources));
    }
    let report = if plan.roots.is_empty() {
        // `--affected`: no test reads what changed.
        None
    } else {
        let cancel = super::build::cancel_flag();
        match pipeline::run(plan, &req, sources, &progress, cancel, &super::waiting) {
            Ok(r) => Some(r),
            Err(d) => {
                progress.finish();
                return Err(d.into());
            }
        }
    };
    let ms = progress.elapsed_ms();
    if let Some(r) = report.as_ref().filter(|r| !r.notices.is_empty()) {
        progress.println(&render_all(&r.notices, sources));
    }
    progress.finish();
    let tests = report.as_ref().map_or(&[][..], |r| &r.tests[..]);
    let mut failures = Vec::new();
    if let Err(d) = shown.write_trace(&args.building, "kiln test", &needs) {
        failures.push(d);
    }
    for (path, text) in [
        (&args.junit, testing::junit(tests, ms)),
        (&args.json, testing::json(tests, ms)),
    ] {
        if let Some(path) = path
            && let Err(d) = super::write_whole(path, &text, "the test report")
        {
            failures.push(d);
        }
    }
    summary(tests, req.affected.as_deref());
    let Some(report) = report else {
        return finish(failures, false);
    };
    let mut all = report.failures;
    all.extend(failures);
    finish(all, report.interrupted)
}

/// The exit: 0 when every test passed, 130 when interrupted, else the
/// failures' code (1 for a failed test).
fn finish(mut failures: Vec<Diagnostic>, interrupted: bool) -> Result<(), Failure> {
    if interrupted {
        failures.push(Diagnostic::interrupted());
        return Err(Failure {
            diagnostics: failures,
            code: 130,
        });
    }
    if failures.is_empty() {
        return Ok(());
    }
    let code = exit_code(&failures);
    Err(Failure {
        diagnostics: failures,
        code,
    })
}

/// A line per test, as Bazel prints them, then the counts.
fn summary(tests: &[TestReport], affected: Option<&str>) {
    if tests.is_empty() {
        match affected {
            Some(rev) => outln!("no test is affected by a change since {rev}"),
            None => outln!("no tests ran"),
        }
        return;
    }
    let label = |t: &TestReport| match t.name == t.stage {
        true => t.stage.clone(),
        false => format!("{} ({})", t.stage, t.name),
    };
    let width = tests
        .iter()
        .map(|t| label(t).chars().count())
        .max()
        .unwrap_or(0);
    for t in tests {
        let took = |t: &TestReport| {
            t.run
                .as_ref()
                .map_or(String::new(), |r| human_ms(r.ms as f64))
        };
        let verdict = match t.verdict {
            Verdict::Passed if t.cached => format!("(cached) PASSED in {}", took(t)),
            Verdict::Passed => format!("PASSED in {}", took(t)),
            Verdict::Failed => format!(
                "FAILED in {} ({})",
                took(t),
                t.run.as_ref().map_or("", |r| r.status.as_str())
            ),
            Verdict::NotRun => format!("NOT RUN ({})", t.why.as_deref().unwrap_or("")),
        };
        outln!("{:<width$}  {verdict}", label(t));
    }
    let (passed, cached, failed, not_run) = testing::counts(tests);
    let mut parts = vec![match cached {
        0 => format!("{passed} passed"),
        c => format!("{passed} passed ({c} cached)"),
    }];
    if failed > 0 {
        parts.push(format!("{failed} failed"));
    }
    if not_run > 0 {
        parts.push(format!("{not_run} not run"));
    }
    outln!(
        "{} test{}: {}",
        tests.len(),
        if tests.len() == 1 { "" } else { "s" },
        parts.join(", ")
    );
}
