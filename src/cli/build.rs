//! `kiln build`: arguments into a [`build::Request`], the report rendered.

use super::outln;
use super::{Failure, SpecArgs, exit_code, render_all};
use crate::build::{self, Output, Request};
use crate::diag::{Diagnostic, Sources};
use crate::progress::{self, Progress};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Args, Debug)]
pub struct BuildArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Build this stage (repeatable); replaces the export block
    #[arg(long = "target", short = 't', value_name = "STAGE")]
    pub targets: Vec<String>,
    /// Export the target: `type=local,dest=DIR`, `type=tar,dest=FILE`, or just `DIR` (repeatable)
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub outputs: Vec<String>,
    /// Run every step and hash every context file, ignoring the cache (results are still stored)
    #[arg(long)]
    pub no_cache: bool,
    /// How many stages run at once [default: number of CPUs; at most 256]
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub jobs: Option<usize>,
    /// How to show progress
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: progress::Mode,
    /// Where the cache lives [default: .kiln beside the spec]
    #[arg(long, env = "KILN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The most an archive may expand to when `ADD` extracts it
    #[arg(long, value_name = "SIZE", default_value = "8GiB")]
    pub max_unpack_size: String,
}

fn cancel_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let _ = ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            // Second Ctrl-C: leave now. Every store write is a rename of a
            // finished file, so nothing half-written is ever trusted.
            std::process::exit(130);
        }
    });
    flag
}

/// The request the arguments describe.
fn request(args: &BuildArgs) -> Result<Request, Diagnostic> {
    let outputs = args
        .outputs
        .iter()
        .map(|o| Output::parse(o))
        .collect::<Result<Vec<_>, _>>()?;
    let unpack_limit = crate::units::parse_size(&args.max_unpack_size).ok_or_else(|| {
        Diagnostic::user(
            "kiln::cli::size",
            format!("`--max-unpack-size {}` is not a size", args.max_unpack_size),
        )
        .with_help("write a size like `500MiB` or `16GiB`")
    })?;
    Ok(Request {
        spec: args.spec.input()?,
        targets: args.targets.clone(),
        outputs,
        no_cache: args.no_cache,
        jobs: args.jobs,
        state_dir: args.state_dir.clone(),
        epoch: Request::epoch_from_env(),
        unpack_limit,
    })
}

pub fn run(args: &BuildArgs, sources: &Sources) -> Result<(), Failure> {
    let req = request(args)?;
    let plan = build::plan(&req, sources)?;
    let reporter = progress::reporter(args.progress);
    let progress = Progress::new(reporter.as_ref());
    if !plan.loaded.warnings.is_empty() {
        progress.println(&render_all(&plan.loaded.warnings, sources));
    }
    let report = build::run(
        plan,
        &req,
        sources,
        &progress,
        cancel_flag(),
        &super::waiting,
    );
    let report = match report {
        Ok(r) => r,
        Err(d) => {
            progress.finish();
            return Err(d.into());
        }
    };
    if !report.notices.is_empty() {
        progress.println(&render_all(&report.notices, sources));
    }
    progress.finish();
    let mut failures = report.failures;
    if report.interrupted {
        failures.push(
            Diagnostic::user("kiln::interrupted", "the build was interrupted")
                .with_help("finished steps are cached: run the build again to go on"),
        );
        return Err(Failure {
            diagnostics: failures,
            code: 130,
        });
    }
    if !failures.is_empty() {
        let code = exit_code(&failures);
        return Err(Failure {
            diagnostics: failures,
            code,
        });
    }
    for (stage, digest) in &report.results {
        outln!("{stage}\t{}", digest.hex());
    }
    Ok(())
}
