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
    check_paths(args, &plan, sources)?;
    let shown = super::build::Shown::new(&args.building);
    let needs = super::build::needs(&plan.loaded.graph);
    // Every test, none run: what the reports say when the build stops
    // before its first stage.
    let unrun = testing::none_ran(&plan.loaded.graph, &plan.roots, sources);
    let none_ran = |why: &str| testing::stopped(&unrun, why);
    let mut tests = Vec::new();
    let progress = Progress::new(shown.reporter());
    if !plan.loaded.warnings.is_empty() {
        progress.println(&render_all(&plan.loaded.warnings, sources));
    }
    let mut failures = Vec::new();
    let mut interrupted = false;
    if !plan.roots.is_empty() {
        let cancel = super::build::cancel_flag();
        match pipeline::run(plan, &req, sources, &progress, cancel, &super::waiting) {
            Ok(r) => {
                if !r.notices.is_empty() {
                    progress.println(&render_all(&r.notices, sources));
                }
                tests = match r.failures.first() {
                    Some(d) if r.tests.is_empty() => none_ran(&d.message),
                    _ => r.tests,
                };
                failures = r.failures;
                interrupted = r.interrupted;
            }
            Err(d) => {
                tests = none_ran(&d.message);
                failures.push(d);
            }
        }
    }
    let ms = progress.elapsed_ms();
    progress.finish();
    if let Err(d) = shown.write_trace(&args.building, "kiln test", &needs) {
        failures.push(d);
    }
    let junit = testing::junit(&tests, ms).map_err(|e| {
        Diagnostic::new(
            crate::diag::Code::IO,
            format!("cannot write the JUnit report: {e}"),
        )
    });
    let reports = [
        (&args.junit, junit),
        (&args.json, Ok(testing::json(&tests, ms))),
    ];
    for (path, text) in reports {
        let Some(path) = path else { continue };
        if let Err(d) = text.and_then(|t| super::write_whole(path, &t, "the test report")) {
            failures.push(d);
        }
    }
    summary(&tests, req.affected.as_deref());
    finish(failures, interrupted)
}

/// The reports and the trace go to three different files, none of them
/// a spec file or in the state directory (which a build reads).
fn check_paths(args: &TestArgs, plan: &pipeline::Plan, sources: &Sources) -> Result<(), Failure> {
    let given = [
        ("--junit", &args.junit),
        ("--json", &args.json),
        ("--trace", &args.building.trace),
    ];
    let resolve = |p: &std::path::Path| {
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let dir = abs.parent().and_then(|d| d.canonicalize().ok());
        match (dir, abs.file_name()) {
            (Some(d), Some(n)) => d.join(n),
            _ => abs,
        }
    };
    let state = plan
        .state_dir
        .canonicalize()
        .unwrap_or_else(|_| plan.state_dir.clone());
    let specs: Vec<std::path::PathBuf> = sources.all().iter().map(|f| resolve(&f.path)).collect();
    let mut seen: Vec<(&str, std::path::PathBuf)> = Vec::new();
    for (flag, path) in given {
        let Some(path) = path else { continue };
        let at = resolve(path);
        let refuse = |why: String| {
            Failure::from(
                Diagnostic::new(
                    crate::diag::Code::CLI_OUTPUT,
                    format!("`{flag} {}` {why}", path.display()),
                )
                .with_help("write it somewhere else, such as `out/`"),
            )
        };
        if at.starts_with(&state) {
            return Err(refuse("is in the state directory".into()));
        }
        if specs.contains(&at) {
            return Err(refuse("is a spec file".into()));
        }
        if let Some((other, _)) = seen.iter().find(|(_, p)| *p == at) {
            return Err(refuse(format!("is also where `{other}` goes")));
        }
        seen.push((flag, at));
    }
    Ok(())
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
