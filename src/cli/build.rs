//! `kiln build`.

use super::outln;
use super::{Failure, SpecArgs, exit_code, render_all};
use crate::diag::{Diagnostic, Sources};
use crate::exec::{Executor, Options, StageOutcome};
use crate::export::{self, Settings};
use crate::ir::{Export, ExportFormat, Graph, StageId, When};
use crate::progress::{self, Event, Progress};
use crate::store::digest::StepKey;
use crate::store::records::{self, ExportRecord};
use crate::store::state::State;
use crate::store::{Access, Store};
use clap::Args;
use std::path::{Path, PathBuf};
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
    /// Run every step, ignoring the cache (results are still stored)
    #[arg(long)]
    pub no_cache: bool,
    /// How many stages run at once [default: number of CPUs]
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub jobs: Option<usize>,
    /// How to show progress
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: progress::Mode,
    /// Where the cache lives [default: .kiln beside the spec]
    #[arg(long, env = "KILN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// The state dir: given, or `.kiln` beside the spec.
pub fn state_dir(given: &Option<PathBuf>, spec_path: &Path) -> PathBuf {
    given.clone().unwrap_or_else(|| {
        spec_path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .join(".kiln")
    })
}

/// Parse one `-o` value.
fn parse_output(s: &str) -> Result<(ExportFormat, PathBuf), Diagnostic> {
    if !s.contains('=') {
        return Ok((ExportFormat::Dir, PathBuf::from(s)));
    }
    let mut format = ExportFormat::Dir;
    let mut dest = None;
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("type", "local" | "dir")) => format = ExportFormat::Dir,
            Some(("type", "tar")) => format = ExportFormat::Tar,
            Some(("dest", d)) if !d.is_empty() => dest = Some(PathBuf::from(d)),
            _ => {
                return Err(Diagnostic::user(
                    "kiln::cli::output",
                    format!("cannot read `-o {s}`: `{part}` is not understood"),
                )
                .with_help(
                    "write `-o DIR`, `-o type=local,dest=DIR` or `-o type=tar,dest=FILE.tar`",
                ));
            }
        }
    }
    let dest = dest.ok_or_else(|| {
        Diagnostic::user("kiln::cli::output", format!("`-o {s}` has no `dest=`"))
            .with_help("write `-o type=tar,dest=out.tar`")
    })?;
    Ok((format, dest))
}

/// Look up `--target` names.
pub fn targets(graph: &Graph, names: &[String]) -> Result<Vec<StageId>, Diagnostic> {
    names
        .iter()
        .map(|n| {
            graph.find_stage(n).ok_or_else(|| {
                let d = Diagnostic::user("kiln::cli::target", format!("no stage named `{n}`"));
                match crate::diag::did_you_mean(n, graph.stages.iter().map(|s| s.name.as_str())) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d.with_help(format!(
                        "stages are: {}",
                        graph
                            .stages
                            .iter()
                            .map(|s| format!("`{}`", s.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                }
            })
        })
        .collect()
}

/// What to build and what to write: `-o` and `--target` replace the export block.
fn plan(graph: &Graph, args: &BuildArgs) -> Result<(Vec<StageId>, Vec<Export>), Diagnostic> {
    let chosen = targets(graph, &args.targets)?;
    let default = || {
        graph.default_target().ok_or_else(|| {
            Diagnostic::user("kiln::cli::empty", "the spec defines no stages")
                .with_help("add a `stage NAME { … }` block")
        })
    };
    if !args.outputs.is_empty() {
        let target = match chosen.as_slice() {
            [] => default()?,
            [one] => *one,
            _ => {
                return Err(Diagnostic::user("kiln::cli::output", "`-o` exports one stage, but several `--target`s are given")
                    .with_help("give one `--target` with `-o`, or use the spec's export block for several stages"));
            }
        };
        let mut exports = Vec::new();
        for o in &args.outputs {
            let (format, dest) = parse_output(o)?;
            exports.push(Export {
                stage: target,
                dest,
                format,
                when: When::Success,
                span: None,
            });
        }
        return Ok((vec![target], exports));
    }
    if !chosen.is_empty() {
        return Ok((chosen, Vec::new()));
    }
    if !graph.exports.is_empty() {
        let mut roots: Vec<StageId> = graph.exports.iter().map(|e| e.stage).collect();
        roots.sort();
        roots.dedup();
        return Ok((roots, graph.exports.clone()));
    }
    Ok((vec![default()?], Vec::new()))
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

pub fn run(args: &BuildArgs, sources: &Sources) -> Result<(), Failure> {
    let spec_path = args.spec.spec_path();
    let state = state_dir(&args.state_dir, &spec_path);
    let parse_cache = super::commands::DirParseCache(state.join("parse"));
    let (spec, graph, warnings) = super::commands::load(&args.spec, sources, Some(&parse_cache))?;
    let (roots, exports) = plan(&graph, args)?;
    let protected: Vec<PathBuf> = vec![
        args.spec.context.clone(),
        spec.dir.clone(),
        state.clone(),
        std::env::current_dir().unwrap_or_default(),
    ];
    for e in &exports {
        export::check_destination(&e.dest, &protected)?;
    }
    let store = Store::open_waiting(&state, Access::Shared, &super::waiting)?;
    let reporter = progress::reporter(args.progress);
    let progress = Progress::new(reporter.as_ref());
    if !warnings.is_empty() {
        progress.println(&render_all(&warnings, sources));
    }
    let cancel = cancel_flag();
    let jobs = args
        .jobs
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    let mut exclude = vec![state.clone()];
    exclude.extend(exports.iter().map(|e| e.dest.clone()));
    let executor = Executor::new(
        &graph,
        &store,
        &progress,
        Options {
            jobs,
            no_cache: args.no_cache,
            memo_key: if args.no_cache {
                None
            } else {
                memo_key(sources, &args.spec, &roots, &graph)
            },
            epoch: source_date_epoch(),
        },
        cancel.clone(),
        exclude,
    );
    let outcome = executor.build(&roots);
    let mut failures = outcome.failures;
    let ok = failures.is_empty() && !outcome.interrupted;

    let settings = Settings {
        epoch: source_date_epoch(),
        set_owner: rustix::process::geteuid().is_root(),
    };
    for e in &exports {
        let stage = &graph.stage(e.stage).name;
        let dest = e.dest.display().to_string();
        let state: Option<&State> = match outcome.stages.get(&e.stage) {
            Some(StageOutcome::Built(s)) if ok || e.when == When::Always => Some(s),
            Some(StageOutcome::Failed { last_good: Some(s) })
                if e.when == When::Always && !outcome.interrupted =>
            {
                Some(s)
            }
            _ => None,
        };
        let Some(state) = state else {
            let because = if outcome.interrupted {
                "the build was interrupted"
            } else {
                "the build failed"
            };
            progress.emit(Event::ExportSkipped {
                stage: stage.clone(),
                dest,
                because: because.into(),
            });
            continue;
        };
        let written = executor
            .tree(state.tree)
            .and_then(|tree| export::export(&store, &tree, e.format, &e.dest, &settings));
        match written {
            Ok(()) => {
                let format = match e.format {
                    ExportFormat::Dir => "dir",
                    ExportFormat::Tar => "tar",
                };
                progress.emit(Event::ExportWritten {
                    stage: stage.clone(),
                    dest: dest.clone(),
                    format: format.into(),
                });
                let abs = std::path::absolute(&e.dest).unwrap_or_else(|_| e.dest.clone());
                let at_unix = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let _ = records::save_export(
                    &store,
                    &abs.display().to_string(),
                    ExportRecord {
                        stage: stage.clone(),
                        tree: state.tree,
                        at_unix,
                    },
                );
            }
            Err(d) => failures.push(d),
        }
    }
    let spec_name = std::path::absolute(&spec_path)
        .unwrap_or(spec_path.clone())
        .display()
        .to_string();
    let used: Vec<StepKey> = outcome
        .records
        .iter()
        .filter_map(|r| StepKey::parse(&r.key))
        .collect();
    let recorded = records::save_build(&store, &spec_name, args.no_cache, &outcome.records)
        .and_then(|_| store.record_use(&used));
    if let Err(e) = recorded {
        failures.push(Diagnostic::io(
            "cannot record the build in",
            store.root(),
            &e,
        ));
    }
    progress.emit(Event::BuildFinished {
        ok: failures.is_empty() && !outcome.interrupted,
        ms: progress.elapsed_ms(),
        steps_run: outcome.steps_run,
        steps_cached: outcome.steps_cached,
        failures: failures.len(),
        unchanged: outcome.from_memo,
    });
    progress.finish();
    if outcome.interrupted {
        failures.push(
            Diagnostic::user("kiln::interrupted", "the build was interrupted")
                .with_help("finished steps are cached: run the build again to go on"),
        );
        return Err(Failure {
            diagnostics: failures,
            code: 130,
        });
    }
    if failures.is_empty() {
        for r in &roots {
            if let Some(StageOutcome::Built(s)) = outcome.stages.get(r) {
                outln!("{}\t{}", graph.stage(*r).name, s.digest().hex());
            }
        }
        // The process ends next: freeing large structures one by one would
        // only slow a no-op build down.
        std::mem::forget(outcome.stages);
        std::mem::forget(outcome.records);
        std::mem::forget(executor);
        std::mem::forget(graph);
        std::mem::forget(spec);
        Ok(())
    } else {
        let code = exit_code(&failures);
        Err(Failure {
            diagnostics: failures,
            code,
        })
    }
}

/// What identifies a build request for the build memo: kiln's version,
/// every spec file read, the args, the context directory, the stages asked
/// for, the time plugins are shown and the plugin modules (by stat; `None`
/// while one changed less than two seconds ago, as for context files).
fn memo_key(
    sources: &Sources,
    spec: &SpecArgs,
    roots: &[StageId],
    graph: &Graph,
) -> Option<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    let field = |h: &mut blake3::Hasher, b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(&mut h, env!("CARGO_PKG_VERSION").as_bytes());
    for f in sources.all() {
        field(&mut h, f.path.as_os_str().as_encoded_bytes());
        field(&mut h, f.text.as_bytes());
    }
    for a in &spec.args {
        field(&mut h, a.as_bytes());
    }
    let ctx = std::path::absolute(&spec.context).unwrap_or_else(|_| spec.context.clone());
    field(&mut h, ctx.as_os_str().as_encoded_bytes());
    for r in roots {
        field(&mut h, graph.stage(*r).name.as_bytes());
    }
    field(&mut h, &source_date_epoch().to_le_bytes());
    let now = crate::context::index::now_ns();
    for p in &graph.plugins {
        field(&mut h, p.path.as_os_str().as_encoded_bytes());
        match std::fs::metadata(&p.path) {
            Ok(m) => {
                let stat = crate::context::index::FileStat::of(&m);
                if now - stat.changed_ns() < 2_000_000_000 {
                    return None;
                }
                stat.hash_into(&mut h);
            }
            Err(_) => field(&mut h, b"missing"),
        }
    }
    Some(*h.finalize().as_bytes())
}

/// SOURCE_DATE_EPOCH, or 0.
pub fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_specs() {
        assert_eq!(
            parse_output("out").unwrap(),
            (ExportFormat::Dir, PathBuf::from("out"))
        );
        assert_eq!(
            parse_output("type=tar,dest=a.tar").unwrap(),
            (ExportFormat::Tar, PathBuf::from("a.tar"))
        );
        assert_eq!(
            parse_output("type=local,dest=d").unwrap(),
            (ExportFormat::Dir, PathBuf::from("d"))
        );
        assert!(parse_output("type=oci,dest=x").is_err());
        assert!(parse_output("type=tar").is_err());
    }
}
