//! `kiln query`: questions about the stage graph (what a stage needs,
//! what needs it, how one leads to another, which steps read a file, what
//! is exported), in text, JSON or Graphviz.

use super::{Failure, SpecArgs};
use super::{out, outln};
use crate::diag::{Code, Diagnostic, Sources};
use crate::ir::{Graph, StageId};
use crate::pipeline::{query, targets};
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct QueryArgs {
    #[command(subcommand)]
    pub question: Question,
}

#[derive(Subcommand, Debug)]
pub enum Question {
    /// The stages named and every stage they need (bases, copies, mounts, plugins), in build order
    Deps(Stages),
    /// The stages named and every stage that needs them, in build order
    Rdeps(Stages),
    /// A shortest chain from one stage to another, each needing the next (exit 1 when there is none)
    Path(Chain),
    /// The steps that read files: context files (by each copy's patterns and excludes and the context's ignore file, and mounts), spec files, host inputs, plugin modules
    Reads(Files),
    /// The exports: stage, format and destination
    Exports(Common),
}

/// The spec, and how to print.
#[derive(Args, Debug)]
pub struct Common {
    /// The spec file: KDL, or a Dockerfile [default: CONTEXT/kiln.kdl, else CONTEXT/Dockerfile]
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// The build context [default: the directory of the `-f` file, else .]
    #[arg(long, value_name = "DIR")]
    pub context: Option<PathBuf>,
    /// Set an arg declared in the spec (repeatable)
    #[arg(long = "arg", visible_alias = "build-arg", value_name = "NAME=VALUE")]
    pub args: Vec<String>,
    /// The directory spec files may `include` from [default: the version-control checkout around the spec, else its directory]
    #[arg(long, env = "KILN_PROJECT_ROOT", value_name = "DIR")]
    pub project_root: Option<PathBuf>,
    /// The state directory builds of this spec use (its parse cache and stat index are read) [default: ~/.cache/kiln, or a .kiln directory beside the spec]
    #[arg(long, env = "KILN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Output format
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

impl Common {
    /// The state directory builds of the spec use.
    fn state(&self) -> PathBuf {
        crate::pipeline::load::state_dir(&self.state_dir, &self.spec().spec_path())
    }

    fn spec(&self) -> SpecArgs {
        SpecArgs {
            context: self.context.clone(),
            file: self.file.clone(),
            args: self.args.clone(),
            project_root: self.project_root.clone(),
        }
    }
}

#[derive(Args, Debug)]
pub struct Stages {
    /// Stages: names, globs (`'test-*'`) or `NAME/...`
    #[arg(required = true, value_name = "STAGE")]
    pub stages: Vec<String>,
    /// Only the stages one edge away (not the stages named)
    #[arg(long)]
    pub direct: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug)]
pub struct Chain {
    pub from: String,
    pub to: String,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug)]
pub struct Files {
    /// Files, as paths on this machine
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    /// Graphviz (stages only: deps, rdeps, path)
    Dot,
}

pub fn run(args: &QueryArgs, sources: &Sources) -> Result<(), Failure> {
    match &args.question {
        Question::Deps(q) => stages(q, false, sources),
        Question::Rdeps(q) => stages(q, true, sources),
        Question::Path(q) => path(q, sources),
        Question::Reads(q) => reads(q, sources),
        Question::Exports(q) => exports(q, sources),
    }
}

/// `deps`, or with `rdeps`, `rdeps`.
fn stages(q: &Stages, rdeps: bool, sources: &Sources) -> Result<(), Failure> {
    let (graph, format) = load(&q.common, sources)?;
    let named = targets(&graph, &q.stages)?;
    let found = if rdeps {
        graph.dependants_of(&named)
    } else {
        graph.ancestors(&named)
    };
    let found: Vec<StageId> = if q.direct {
        found
            .into_iter()
            .filter(|id| {
                !named.contains(id)
                    && named.iter().any(|n| {
                        if rdeps {
                            graph.stage(*id).deps.contains(n)
                        } else {
                            graph.stage(*n).deps.contains(id)
                        }
                    })
            })
            .collect()
    } else {
        found
    };
    print_stages(&graph, &found, format, sources);
    Ok(())
}

fn path(q: &Chain, sources: &Sources) -> Result<(), Failure> {
    let (graph, format) = load(&q.common, sources)?;
    let one = |name: &str| -> Result<StageId, Failure> {
        match targets(&graph, &[name.to_string()])?.as_slice() {
            [id] => Ok(*id),
            many => Err(Diagnostic::new(
                Code::CLI_TARGET,
                format!(
                    "`{name}` names {} stages; a path goes from one to one",
                    many.len()
                ),
            )
            .into()),
        }
    };
    let (from, to) = (one(&q.from)?, one(&q.to)?);
    match graph.chain(from, to) {
        Some(chain) => {
            print_stages(&graph, &chain, format, sources);
            Ok(())
        }
        None => {
            let mut d = Diagnostic::new(
                Code::CLI_TARGET,
                format!("`{}` does not need `{}`", q.from, q.to),
            );
            if graph.chain(to, from).is_some() {
                d = d.with_help(format!(
                    "`{}` needs `{}`: `kiln query path {} {}`",
                    q.to, q.from, q.to, q.from
                ));
            }
            Err(Failure {
                diagnostics: vec![d],
                code: 1,
            })
        }
    }
}

fn reads(q: &Files, sources: &Sources) -> Result<(), Failure> {
    let (graph, format) = load(&q.common, sources)?;
    no_dot(format, "reads")?;
    let readers = readers(&graph, sources, &q.common);
    let mut rows = Vec::new();
    for f in &q.files {
        for r in readers.of(f)? {
            rows.push((f, r));
        }
    }
    if format == Format::Json {
        let v: Vec<_> = rows
            .iter()
            .map(|(f, r)| {
                json!({
                    "file": f,
                    "stage": graph.stage(r.stage).name,
                    "step": r.step,
                    "how": r.how,
                    "text": r.step.map(|i| crate::exec::steps::describe(&graph.stage(r.stage).steps[i].op, &graph)),
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    for (f, r) in rows {
        let stage = &graph.stage(r.stage).name;
        let file = if q.files.len() > 1 {
            format!("{}: ", f.display())
        } else {
            String::new()
        };
        match r.step {
            Some(i) => outln!(
                "{file}{stage} step {} ({}): {}",
                i + 1,
                r.how,
                crate::exec::steps::describe(&graph.stage(r.stage).steps[i].op, &graph)
            ),
            None => outln!("{file}{stage} (declared in it)"),
        }
    }
    Ok(())
}

fn exports(q: &Common, sources: &Sources) -> Result<(), Failure> {
    let (graph, format) = load(q, sources)?;
    no_dot(format, "exports")?;
    let rows: Vec<_> = graph
        .exports
        .iter()
        .map(|e| {
            (
                graph.stage(e.stage).name.clone(),
                e.format.name(),
                e.tag
                    .clone()
                    .unwrap_or_else(|| e.dest.display().to_string()),
            )
        })
        .collect();
    if format == Format::Json {
        let v: Vec<_> = rows
            .iter()
            .map(|(s, f, d)| json!({"stage": s, "format": f, "to": d}))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        for (s, f, d) in rows {
            outln!("{s}\t{f}\t{d}");
        }
    }
    Ok(())
}

/// What answers which steps read a file, for this spec.
fn readers<'a>(graph: &'a Graph, sources: &'a Sources, common: &Common) -> query::Readers<'a> {
    let spec = common.spec().spec_path();
    let layout = crate::store::layout::Layout::new(&common.state());
    query::Readers::new(graph, sources, layout, &spec)
}

#[derive(Args, Debug)]
pub struct AffectedArgs {
    /// The git commit to compare the checkout with: `HEAD~1`, `main`, a commit id
    #[arg(long, value_name = "REF")]
    pub since: String,
    #[command(flatten)]
    pub common: Common,
}

/// `kiln affected --since REF`: the stages a change may change, one per
/// line; as JSON, with the files changed and the exports.
pub fn affected(args: &AffectedArgs, sources: &Sources) -> Result<(), Failure> {
    let (graph, format) = load(&args.common, sources)?;
    no_dot(format, "affected")?;
    let spec = args.common.spec().spec_path();
    let readers = readers(&graph, sources, &args.common);
    let (changed, stages) = query::affected(&readers, &spec, &args.since)?;
    if format == Format::Json {
        let cwd = std::env::current_dir().unwrap_or_default();
        let cwd = std::fs::canonicalize(&cwd).unwrap_or(cwd);
        let v = json!({
            "since": args.since,
            "changed": changed
                .iter()
                .map(|p| p.strip_prefix(&cwd).unwrap_or(p).display().to_string())
                .collect::<Vec<_>>(),
            "stages": stages.iter().map(|s| &graph.stage(*s).name).collect::<Vec<_>>(),
            "exports": graph
                .exports
                .iter()
                .filter(|e| stages.contains(&e.stage))
                .map(|e| json!({
                    "stage": graph.stage(e.stage).name,
                    "to": e.tag.clone().unwrap_or_else(|| e.dest.display().to_string()),
                }))
                .collect::<Vec<_>>(),
        });
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    for s in stages {
        outln!("{}", graph.stage(s).name);
    }
    Ok(())
}

fn load(common: &Common, sources: &Sources) -> Result<(Graph, Format), Failure> {
    let (_, graph, warnings) = super::commands::load_in(&common.spec(), sources, &common.state())?;
    super::commands::print_warnings(&warnings, sources);
    Ok((graph, common.format))
}

fn no_dot(format: Format, what: &str) -> Result<(), Failure> {
    if format == Format::Dot {
        return Err(Diagnostic::new(
            Code::CLI_QUERY,
            format!("`kiln query {what}` lists steps, which Graphviz does not draw"),
        )
        .with_help(
            "use `--format text` or `--format json`; `--format dot` draws deps, rdeps and path",
        )
        .into());
    }
    Ok(())
}

/// Stages, one per line; as JSON, with where each is declared.
fn print_stages(graph: &Graph, ids: &[StageId], format: Format, sources: &Sources) {
    match format {
        Format::Text => {
            for id in ids {
                outln!("{}", graph.stage(*id).name);
            }
        }
        Format::Dot => out!("{}", super::commands::dot(graph, ids)),
        Format::Json => {
            let v: Vec<_> = ids
                .iter()
                .map(|id| {
                    let s = graph.stage(*id);
                    let file = sources
                        .get(s.span.source)
                        .map(|f| f.name.clone())
                        .unwrap_or_default();
                    let line = sources.line_col(s.span).0;
                    json!({
                        "name": s.name,
                        "file": file,
                        "line": line,
                        "exported": graph.exports.iter().any(|e| e.stage == *id),
                    })
                })
                .collect();
            outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
    }
}
