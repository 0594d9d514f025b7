//! Tests: which stages `kiln test` builds (those holding `test` steps,
//! among the `--target`s), and what became of every test step a build
//! needed, as `kiln test` reports it (text, JUnit XML, JSON). A test's
//! run comes from the step's record: run in this build, or a passing run
//! taken from the cache (or the build memo) with the time and output of
//! the run that made it.

use crate::diag::{Code, Diagnostic, Sources};
use crate::exec::{Outcome, StageOutcome};
use crate::ir::{Graph, StageId};
use crate::model::state::TestRun;
use serde::Serialize;
use std::collections::HashMap;

/// What became of one test step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TestReport {
    pub stage: String,
    /// Its name in reports (see `ir::Stage::tests`).
    pub name: String,
    /// The step's number in its stage, from 1.
    pub step: usize,
    /// The spec file and line that declare it.
    pub file: String,
    pub line: usize,
    pub verdict: Verdict,
    /// Its run, when it ran (or was cached).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub run: Option<TestRun>,
    /// Its passing run was taken from the cache.
    pub cached: bool,
    /// Why it did not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Passed,
    Failed,
    /// Its stage could not get to it: a step before it, or a stage it
    /// needs, failed (or the build was interrupted).
    NotRun,
}

/// The stages `kiln test` builds: those holding a test, among `targets`
/// (every stage when there are none).
pub fn roots(graph: &Graph, targets: &[String]) -> Result<Vec<StageId>, Diagnostic> {
    let chosen = if targets.is_empty() {
        graph.stages.iter().map(|s| s.id).collect()
    } else {
        super::targets(graph, targets)?
    };
    let mut roots: Vec<StageId> = chosen
        .into_iter()
        .filter(|id| !graph.stage(*id).tests().is_empty())
        .collect();
    if roots.is_empty() {
        let among = if targets.is_empty() {
            "the spec has no tests".to_string()
        } else {
            format!(
                "no stage named by `--target {}` holds a test",
                targets.join("`, `--target ")
            )
        };
        return Err(Diagnostic::new(Code::TEST_NONE, among));
    }
    roots.sort();
    Ok(roots)
}

/// Every test step of the stages a build of `roots` needed, in build
/// order, with what became of it.
pub fn reports(
    graph: &Graph,
    roots: &[StageId],
    outcome: &Outcome,
    sources: &Sources,
) -> Vec<TestReport> {
    let runs: HashMap<(&str, usize), (&TestRun, bool)> = outcome
        .records
        .iter()
        .filter_map(|r| Some(((r.stage.as_str(), r.step), (r.test.as_ref()?, r.cached))))
        .collect();
    let mut out = Vec::new();
    for id in graph.ancestors(roots) {
        let stage = graph.stage(id);
        for (i, name) in stage.tests() {
            let span = graph.source_map.step(id, i).span;
            let file = sources
                .get(span.source)
                .map(|f| f.name.clone())
                .unwrap_or_default();
            let mut report = TestReport {
                stage: stage.name.clone(),
                name,
                step: i + 1,
                file,
                line: sources.line_col(span).0,
                verdict: Verdict::NotRun,
                run: None,
                cached: false,
                why: None,
            };
            match runs.get(&(stage.name.as_str(), i)) {
                Some((run, cached)) => {
                    report.verdict = if run.passed {
                        Verdict::Passed
                    } else {
                        Verdict::Failed
                    };
                    report.run = Some((*run).clone());
                    report.cached = *cached;
                }
                None => report.why = Some(not_run(graph, id, outcome)),
            }
            out.push(report);
        }
    }
    out
}

/// Every test of the stages a build of `roots` needs, as not run, for
/// [`stopped`].
pub fn none_ran(graph: &Graph, roots: &[StageId], sources: &Sources) -> Vec<TestReport> {
    let outcome = Outcome {
        stages: HashMap::new(),
        failures: Vec::new(),
        records: Vec::new(),
        steps_run: 0,
        steps_cached: 0,
        interrupted: false,
        from_memo: false,
        spans: Vec::new(),
    };
    reports(graph, roots, &outcome, sources)
}

/// `tests`, none of which ran: the build stopped before its first stage
/// (`why`).
pub fn stopped(tests: &[TestReport], why: &str) -> Vec<TestReport> {
    let mut out = tests.to_vec();
    for r in &mut out {
        r.why = Some(format!("the build stopped before it: {why}"));
    }
    out
}

/// Why a test of stage `id` did not run.
fn not_run(graph: &Graph, id: StageId, outcome: &Outcome) -> String {
    let stage = graph.stage(id);
    match outcome.stages.get(&id) {
        Some(StageOutcome::Failed { .. }) => {
            format!("a step of `{}` before it failed", stage.name)
        }
        _ if outcome.interrupted => "the build was interrupted".into(),
        Some(StageOutcome::Skipped) => {
            let failed: Vec<String> = stage
                .deps
                .iter()
                .filter(|d| !matches!(outcome.stages.get(d), Some(StageOutcome::Built(_))))
                .map(|d| format!("`{}`", graph.stage(*d).name))
                .collect();
            format!("a stage it needs did not build: {}", failed.join(", "))
        }
        // Built without a record of it: a dry run stopped before it.
        Some(StageOutcome::Built(_)) | None => "it was not run".into(),
    }
}

/// The counts a summary gives: passed (of which cached), failed, not run.
pub fn counts(reports: &[TestReport]) -> (usize, usize, usize, usize) {
    let n = |v: Verdict| reports.iter().filter(|r| r.verdict == v).count();
    let cached = reports
        .iter()
        .filter(|r| r.verdict == Verdict::Passed && r.cached)
        .count();
    (
        n(Verdict::Passed),
        cached,
        n(Verdict::Failed),
        n(Verdict::NotRun),
    )
}

/// The reports as JUnit XML (the Jenkins dialect most CI systems read):
/// a `testsuite` per stage, a `testcase` per test (`classname` its stage,
/// with its spec file and line), a failed test's status and output in a
/// `failure`, a test that did not run as an `error` saying why.
pub fn junit(reports: &[TestReport], total_ms: f64) -> Result<String, String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    // XML 1.0 holds no U+FFFE or U+FFFF (quick-junit drops the control
    // characters it cannot hold, not these).
    let xml = |t: &str| t.replace(['\u{fffe}', '\u{ffff}'], "\u{fffd}");
    let mut report = Report::new("kiln");
    report.set_time(std::time::Duration::from_secs_f64(
        total_ms.max(0.0) / 1000.0,
    ));
    let mut suites: Vec<TestSuite> = Vec::new();
    for r in reports {
        let status = match r.verdict {
            Verdict::Passed => TestCaseStatus::success(),
            Verdict::Failed => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                let run = r.run.as_ref();
                s.set_message(xml(run.map_or("failed", |t| t.status.as_str())));
                s.set_type("test failed");
                s.set_description(xml(run.map_or("", |t| t.tail.as_str())));
                s
            }
            Verdict::NotRun => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
                s.set_message(xml(&format!(
                    "not run: {}",
                    r.why.as_deref().unwrap_or("it was not run")
                )));
                s.set_type("not run");
                s
            }
        };
        let mut case = TestCase::new(xml(&r.name), status);
        case.set_classname(xml(&r.stage));
        if let Some(run) = &r.run {
            case.set_time(std::time::Duration::from_millis(run.ms));
            if !run.tail.is_empty() {
                case.set_system_out(xml(&run.tail));
            }
        }
        case.extra.insert("file".into(), xml(&r.file).into());
        case.extra.insert("line".into(), r.line.to_string().into());
        if r.cached {
            case.extra.insert("cached".into(), "true".into());
        }
        match suites.iter_mut().find(|s| s.name.as_str() == xml(&r.stage)) {
            Some(suite) => {
                suite.add_test_case(case);
            }
            None => {
                let mut suite = TestSuite::new(xml(&r.stage));
                suite.add_test_case(case);
                suites.push(suite);
            }
        }
    }
    report.add_test_suites(suites);
    report.to_string().map_err(|e| e.to_string())
}

/// The reports as JSON: the counts, and every test with its verdict,
/// status, time, output tail and whether it was cached.
pub fn json(reports: &[TestReport], total_ms: f64) -> String {
    let (passed, cached, failed, not_run) = counts(reports);
    let v = serde_json::json!({
        "passed": passed,
        "cached": cached,
        "failed": failed,
        "not_run": not_run,
        "ms": total_ms.round() as u64,
        "tests": reports,
    });
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, verdict: Verdict, run: Option<TestRun>) -> TestReport {
        TestReport {
            stage: "unit".into(),
            name: name.into(),
            step: 2,
            file: "kiln.kdl".into(),
            line: 7,
            verdict,
            run,
            cached: false,
            why: (verdict == Verdict::NotRun).then(|| "a stage it needs did not build".into()),
        }
    }

    fn run(passed: bool, tail: &str) -> TestRun {
        TestRun {
            passed,
            status: if passed { "exit 0" } else { "exit 3" }.into(),
            ms: 1500,
            tail: tail.into(),
        }
    }

    #[test]
    fn junit_holds_every_verdict_escaped() {
        let reports = vec![
            report("ok", Verdict::Passed, Some(run(true, "fine\n"))),
            report(
                "bad",
                Verdict::Failed,
                Some(run(false, "want <1> & got \"2\"\u{1b}[31m \u{fffe}\n")),
            ),
            report("never", Verdict::NotRun, None),
        ];
        let xml = junit(&reports, 2500.0).unwrap();
        assert!(
            xml.contains(
                r#"<testsuites name="kiln" tests="3" skipped="0" failures="1" errors="1""#
            ),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<testcase name="ok" classname="unit" time="1.500""#),
            "{xml}"
        );
        assert!(xml.contains(r#"file="kiln.kdl" line="7""#), "{xml}");
        assert!(
            xml.contains(r#"<failure message="exit 3" type="test failed">"#),
            "{xml}"
        );
        assert!(xml.contains("want &lt;1&gt; &amp; got"), "{xml}");
        // An escape sequence and a noncharacter are not XML.
        assert!(
            !xml.contains('\u{1b}') && !xml.contains('\u{fffe}'),
            "{xml}"
        );
        assert!(
            xml.contains(
                r#"<error message="not run: a stage it needs did not build" type="not run""#
            ),
            "{xml}"
        );
    }

    #[test]
    fn json_counts_and_lists() {
        let mut cached = report("ok", Verdict::Passed, Some(run(true, "")));
        cached.cached = true;
        let reports = vec![
            cached,
            report("bad", Verdict::Failed, Some(run(false, "boom\n"))),
        ];
        let v: serde_json::Value = serde_json::from_str(&json(&reports, 10.0)).unwrap();
        assert_eq!(v["passed"], 1);
        assert_eq!(v["cached"], 1);
        assert_eq!(v["failed"], 1);
        assert_eq!(v["not_run"], 0);
        assert_eq!(v["tests"][1]["verdict"], "failed");
        assert_eq!(v["tests"][1]["status"], "exit 3");
        assert_eq!(v["tests"][1]["tail"], "boom\n");
        assert_eq!(v["tests"][0]["cached"], true);
        assert!(v["tests"][0].get("why").is_none());
    }
}
