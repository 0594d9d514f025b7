//! `kiln lock`: resolve the images every stage is built on and pin the
//! downloads the spec gives no checksum, in `kiln.lock`; `--update`
//! resolves them again.

use super::outln;
use super::{Failure, SpecArgs};
use crate::diag::Sources;
use crate::image::set::LockMode;
use crate::pipeline::{self, Request};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct LockArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Resolve again: every image and unpinned download, or those named (repeatable)
    #[arg(long, num_args = 0.., value_name = "REF")]
    pub update: Option<Vec<String>>,
    /// Where the cache lives [default: ~/.cache/kiln, or a .kiln directory beside the spec]
    #[arg(long, env = "KILN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The platform to lock images for [default: this machine's]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Speak to this registry over plain HTTP (repeatable; loopback registries always may)
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
}

pub fn run(args: &LockArgs, sources: &Sources) -> Result<(), Failure> {
    let req = Request {
        state_dir: args.state_dir.clone(),
        platform: args.platform.clone(),
        insecure_registries: args.insecure_registries.clone(),
        lock: match &args.update {
            Some(names) => LockMode::Update(names.clone()),
            None => LockMode::Normal,
        },
        ..Request::new(args.spec.input()?)
    };
    let reporter = crate::progress::reporter(crate::progress::Mode::Plain);
    let progress = crate::progress::Progress::new(reporter.as_ref());
    let report = pipeline::pins::lock(&req, sources, &progress);
    progress.finish();
    let report = report.map_err(|diagnostics| Failure {
        code: super::exit_code(&diagnostics),
        diagnostics,
    })?;
    for line in &report.entries {
        let what = match &line.before {
            None => "locked".to_string(),
            Some(b) if *b == line.after => "unchanged".to_string(),
            Some(b) => format!("updated from {b}"),
        };
        outln!("{} {}: {what}", line.what, line.after);
    }
    for what in &report.dropped {
        outln!("{what}: dropped, no stage uses it");
    }
    if report.entries.is_empty() && report.dropped.is_empty() {
        outln!(
            "no stage is built on a registry image or fetches without a checksum; nothing to lock"
        );
    } else {
        outln!("wrote {}", report.lock_path.display());
    }
    Ok(())
}
