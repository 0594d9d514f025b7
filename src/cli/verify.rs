//! `kiln verify`: is the build reproducible? Every exported stage is built
//! twice: as usual (from the cache), and from nothing in a fresh state
//! directory, without the cache. Their results (trees and configs) must
//! be equal; an image's bytes follow from them. The comparison is the
//! library's (`pipeline::verify`); this renders it.

use super::{Failure, SpecArgs, outln};
use crate::diag::Code;
use crate::diag::{Diagnostic, Sources};
use crate::pipeline::verify::{self, TreeDifference, Verdict};
use crate::pipeline::{self, Request};
use crate::progress::{self, Progress};
use crate::store::{Access, Store};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Verify these stages instead of the exported ones (repeatable)
    #[arg(long = "target", value_name = "STAGE")]
    pub targets: Vec<String>,
    /// Where the cache lives [default: ~/.cache/kiln, or a .kiln directory beside the spec]
    #[arg(long, env = "KILN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How to show the two builds' progress
    #[arg(long, value_enum, default_value = "plain")]
    pub progress: progress::Mode,
}

/// One build of the stages, in a state directory; nothing is exported.
fn build_once(
    req: &Request,
    sources: &Sources,
    mode: progress::Mode,
) -> Result<pipeline::Report, Failure> {
    let plan = pipeline::plan(req, sources)?;
    let reporter = progress::reporter(mode);
    let progress = Progress::new(reporter.as_ref());
    let report = pipeline::run(
        plan,
        req,
        sources,
        &progress,
        super::build::cancel_flag(),
        &super::waiting,
    );
    progress.finish();
    let report = report.map_err(Failure::from)?;
    if !report.failures.is_empty() || report.interrupted {
        let mut failures = report.failures;
        if failures.is_empty() {
            failures.push(Diagnostic::interrupted());
        }
        let code = super::exit_code(&failures);
        return Err(Failure {
            diagnostics: failures,
            code,
        });
    }
    Ok(report)
}

pub fn run(args: &VerifyArgs, sources: &Sources) -> Result<(), Failure> {
    super::build::fixed_umask();
    let spec = args.spec.input()?;
    // The stages to verify: the exported ones, or the targets.
    let mut targets = args.targets.clone();
    if targets.is_empty() {
        let probe = Request {
            state_dir: args.state_dir.clone(),
            ..Request::new(spec.clone())
        };
        let plan = pipeline::plan(&probe, sources)?;
        let graph = &plan.loaded.graph;
        for e in &graph.exports {
            let name = graph.stage(e.stage).name.clone();
            if !targets.contains(&name) {
                targets.push(name);
            }
        }
    }
    let base = Request {
        targets: targets.clone(),
        ..Request::new(spec)
    };
    let usual = Request {
        state_dir: args.state_dir.clone(),
        ..base.clone()
    };
    outln!("verify: building {} as usual", describe(&targets));
    let first = build_once(&usual, sources, args.progress)?;
    let fresh_dir = tempfile::Builder::new()
        .prefix("kiln-verify-")
        .tempdir()
        .map_err(|e| {
            Diagnostic::io(
                "cannot make a fresh state directory in",
                &std::env::temp_dir(),
                &e,
            )
        })?;
    let fresh = Request {
        state_dir: Some(fresh_dir.path().to_path_buf()),
        no_cache: true,
        ..base
    };
    outln!("verify: building them again from nothing, in a fresh state directory");
    let second = build_once(&fresh, sources, args.progress)?;

    let usual_state = crate::pipeline::load::state_dir(&args.state_dir, &usual.spec.spec_path());
    let a = Store::open_waiting(&usual_state, Access::Shared, &super::waiting)?;
    let b = Store::open_waiting(fresh_dir.path(), Access::Shared, &super::waiting)?;
    let mut differ = Vec::new();
    for (name, verdict) in verify::compare(&first, &second, &a, &b) {
        let (config_differs, tree, culprit) = match verdict {
            Verdict::Same(digest) => {
                outln!("  {name}: same ({})", &digest.hex()[..16]);
                continue;
            }
            Verdict::Different {
                config_differs,
                tree,
                culprit,
            } => (config_differs, tree, culprit),
        };
        outln!("  {name}: DIFFERENT");
        if config_differs {
            outln!("    the image config differs");
        }
        match tree {
            Some(TreeDifference::At { path, how }) => {
                outln!("    first difference: /{path}: {how}")
            }
            Some(TreeDifference::Somewhere) => outln!("    the trees differ"),
            Some(TreeDifference::Unreadable) => {
                outln!("    the trees differ (one could not be read)")
            }
            None => {}
        }
        if let Some(step) = culprit {
            outln!(
                "    made by step {} of `{}`: {}",
                step.step + 1,
                step.stage,
                step.text
            );
        }
        differ.push(name);
    }
    if differ.is_empty() {
        outln!("verify: reproducible: every result is the same when built from nothing");
        return Ok(());
    }
    Err(Failure {
        diagnostics: vec![Diagnostic::new(
            Code::VERIFY_DIFFERS,
            format!(
                "{} not reproducible: built from nothing, {} a different result",
                describe(&differ),
                if differ.len() == 1 {
                    "it gives"
                } else {
                    "they give"
                }
            ),
        )],
        code: 1,
    })
}

fn describe(stages: &[String]) -> String {
    match stages {
        [one] => format!("stage `{one}`"),
        many => format!(
            "stages {}",
            many.iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
