//! `kiln check`, `kiln graph`, `kiln explain`, `kiln gc`, and loading a spec.

use super::{Failure, SpecArgs, render_all};
use super::{out, outln};
use crate::diag::Code;
use crate::diag::{Diagnostic, Sources};
use crate::frontend::ast::Spec;
use crate::frontend::kdl::display_path;
use crate::ir::{Base, Graph, Read, compile};
use crate::pipeline::load::state_dir;
use crate::pipeline::targets;
use crate::store::{Access, Store, gc, records};
use clap::Args;
use std::path::{Path, PathBuf};

/// The state directory a build of `spec` uses when no `--state-dir` is
/// given (`KILN_STATE_DIR`, else the machine's or the project's).
fn state_of(spec: &Path) -> PathBuf {
    let given = std::env::var_os("KILN_STATE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    state_dir(&given, spec)
}

/// Read and compile a spec; warnings are returned for the caller to show.
/// The parse cache of the state directory a build uses is read (and
/// filled) when that directory is already there and trusted: a question
/// about a workspace of a thousand spec files costs what a no-op build
/// does, and makes no state directory.
pub fn load(args: &SpecArgs, sources: &Sources) -> Result<(Spec, Graph, Vec<Diagnostic>), Failure> {
    load_in(args, sources, &state_of(&args.spec_path()))
}

/// [`load`] with the state directory `state`.
pub fn load_in(
    args: &SpecArgs,
    sources: &Sources,
    state: &Path,
) -> Result<(Spec, Graph, Vec<Diagnostic>), Failure> {
    let cache = (std::fs::symlink_metadata(state).is_ok()
        && crate::store::check_state_dir(state).is_ok())
    .then(|| crate::pipeline::load::DirParseCache(crate::store::layout::Layout::new(state)));
    let cache = cache
        .as_ref()
        .map(|c| c as &dyn crate::frontend::ParseCache);
    let loaded = crate::pipeline::load::load(&args.input()?, sources, cache)?;
    Ok((loaded.spec, loaded.graph, loaded.warnings))
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The Dockerfile to import
    #[arg(default_value = "Dockerfile")]
    pub dockerfile: PathBuf,
    /// Write the spec to this file instead of standard output
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Replace the output file if it exists
    #[arg(long)]
    pub force: bool,
    /// Set a build arg the Dockerfile declares with `ARG` (repeatable)
    #[arg(long = "build-arg", visible_alias = "arg", value_name = "NAME=VALUE")]
    pub args: Vec<String>,
    /// Leave out the notes on what the import could not carry over
    #[arg(short, long)]
    pub quiet: bool,
}

/// The export a Docker build of the default target makes, written out:
/// an image (an OCI layout beside the spec) when the stage is built on an
/// image, its files (`out/`) when it is built from `scratch` (Docker's
/// `-o out`).
fn default_export(imported: &mut crate::frontend::dockerfile::lower::Imported, path: &Path) {
    use crate::frontend::ast::ExportDecl;
    let stages = &imported.spec.stages;
    let Some(target) = stages.get(imported.default_target) else {
        return;
    };
    // Follow `from` to the first stage: built on an image, or on scratch.
    let by_name: std::collections::HashMap<&str, &crate::frontend::ast::StageDecl> =
        stages.iter().map(|s| (s.name.value.as_str(), s)).collect();
    let mut on_image = false;
    let mut at = target;
    for _ in 0..stages.len() {
        if at.image.is_some() {
            on_image = true;
            break;
        }
        match at
            .from
            .as_ref()
            .and_then(|f| by_name.get(f.value.as_str()).copied())
        {
            Some(parent) => at = parent,
            None => break,
        }
    }
    let span = target.span;
    let name = target.name.value.clone();
    let s = |v: String| crate::diag::Spanned::new(span, v);
    let (to, format, tag) = if on_image {
        (
            format!("{name}.oci"),
            Some(s("oci".into())),
            Some(s(format!("{name}:latest"))),
        )
    } else {
        ("out".to_string(), None, None)
    };
    imported.spec.exports.push(ExportDecl {
        span,
        stage: s(name),
        to: Some(s(to)),
        image: None,
        format,
        when: None,
        tag,
        compression: None,
        provenance: false,
        squash: false,
        dir: path.parent().map(PathBuf::from).unwrap_or_default(),
    });
}

/// `kiln import`: the Dockerfile as a KDL spec, with notes on anything
/// kiln cannot carry over exactly.
pub fn import(args: &ImportArgs, sources: &Sources) -> Result<(), Failure> {
    use crate::frontend::dockerfile::lower;
    use crate::frontend::kdl::emit;
    let spec_args = SpecArgs {
        context: Some(PathBuf::from(".")),
        file: None,
        args: args.args.clone(),
        project_root: None,
    };
    let build_args = spec_args.arg_pairs()?;
    let path = &args.dockerfile;
    let shown = display_path(path);
    let mut imported = lower::load(path, &shown, sources, &build_args)?;
    default_export(&mut imported, path);
    // What is written must compile; a failure here is a kiln bug, not the user's.
    let options = crate::ir::CompileOptions {
        args: Vec::new(),
        context_dir: path.parent().map(PathBuf::from).unwrap_or_default(),
        ignore_file: None,
    };
    compile(&imported.spec, &options, sources)?;
    let mut header = vec![format!(
        "Imported from {} by `kiln import`.",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| shown.clone())
    )];
    if !imported.spec.args.is_empty() {
        header.push("Dockerfile ARGs are `arg`s: `kiln build --arg NAME=VALUE` sets them.".into());
    }
    if !build_args.is_empty() {
        let given: Vec<String> = build_args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        header.push(format!(
            "Imported with --build-arg {} (their values are the defaults here).",
            given.join(" ")
        ));
    }
    let comments = emit::Comments {
        header,
        stages: imported
            .origins
            .iter()
            .map(|(line, text)| Some(format!("Dockerfile line {line}: {}", text.trim())))
            .collect(),
    };
    let text = emit::write(&imported.spec, &comments);
    let mut notes = imported.notes;
    let own = PathBuf::from(format!("{}.dockerignore", path.display()));
    if own.is_file() {
        notes.push(
            Diagnostic::warning(
                Code::DOCKERFILE_IMPORT,
                format!("`{}` applies to builds of the Dockerfile, not of the KDL spec", own.display()),
            )
            .with_help("a spec reads `.kilnignore` (or `.dockerignore`) at the context root: copy the file there"),
        );
    }
    if !args.quiet && !notes.is_empty() {
        eprint!("{}", render_all(&notes, sources));
    }
    match &args.output {
        None => {
            out!("{text}");
            Ok(())
        }
        Some(out) => {
            if out.exists() && !args.force {
                return Err(Diagnostic::new(
                    Code::IMPORT_EXISTS,
                    format!("`{}` already exists", out.display()),
                )
                .into());
            }
            let tmp = out.with_file_name(format!(
                ".{}.{}.tmp",
                out.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default(),
                std::process::id()
            ));
            std::fs::write(&tmp, &text)
                .and_then(|_| std::fs::rename(&tmp, out))
                .map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    Diagnostic::io("cannot write the spec", out, &e)
                })?;
            eprintln!("kiln: wrote {}", out.display());
            Ok(())
        }
    }
}

pub fn print_warnings(ws: &[Diagnostic], sources: &Sources) {
    if !ws.is_empty() {
        eprint!("{}", render_all(ws, sources));
    }
}

pub fn check(args: &SpecArgs, sources: &Sources) -> Result<(), Failure> {
    // Planned as a build would be (export destinations checked too), then
    // everything the build would refuse that can be seen without building.
    let req = crate::pipeline::Request::new(args.input()?);
    let plan = crate::pipeline::plan_only(&req, sources)?;
    let graph = plan.loaded.graph;
    print_warnings(&plan.loaded.warnings, sources);
    let refused = crate::pipeline::preflight::check(&graph);
    if !refused.is_empty() {
        let code = super::exit_code(&refused);
        return Err(Failure {
            diagnostics: refused,
            code,
        });
    }
    let steps: usize = graph.stages.iter().map(|s| s.steps.len()).sum();
    outln!(
        "ok: {} stage{}, {steps} step{}, {} export{}",
        graph.stages.len(),
        if graph.stages.len() == 1 { "" } else { "s" },
        if steps == 1 { "" } else { "s" },
        graph.exports.len(),
        if graph.exports.len() == 1 { "" } else { "s" },
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct GraphArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Output format
    #[arg(long, value_enum, default_value = "text")]
    pub format: GraphFormat,
    /// Show only these stages and what they need
    #[arg(long = "target", value_name = "STAGE")]
    pub targets: Vec<String>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum GraphFormat {
    Text,
    Dot,
}

/// Edges of a stage: (dependency, how it is used).
fn edges(graph: &Graph, id: crate::ir::StageId) -> Vec<(crate::ir::StageId, &'static str)> {
    let s = graph.stage(id);
    let mut out = Vec::new();
    if let Base::Stage(b) = s.base {
        out.push((b, "from"));
    }
    // Copies first, each stage once (a stage may also be the base); then
    // every other stage read (mounts, a plugin a stage builds), once.
    let mut reads = Vec::new();
    for step in &s.steps {
        step.op.reads(&mut |r| match r {
            Read::Stage(src, via) => reads.push((src, via.label())),
            Read::Plugin(p) => reads.extend(
                graph.plugins[p.0 as usize]
                    .from_stage()
                    .map(|src| (src, "plugin")),
            ),
            Read::Context(_) | Read::HostFile(_) | Read::Remote(_) => {}
        });
    }
    for (src, kind) in reads.iter().filter(|(_, k)| *k == "copy") {
        if !out.contains(&(*src, *kind)) {
            out.push((*src, *kind));
        }
    }
    for (src, kind) in reads.iter().filter(|(_, k)| *k != "copy") {
        if !out.iter().any(|(d, _)| d == src) {
            out.push((*src, *kind));
        }
    }
    out
}

/// Graphviz for the stages `ids` and the edges among them (exported
/// stages bold; copies dashed, mounts and plugins dotted).
pub fn dot(graph: &Graph, ids: &[crate::ir::StageId]) -> String {
    let exported: Vec<crate::ir::StageId> = graph.exports.iter().map(|e| e.stage).collect();
    let mut out = String::from(
        "digraph kiln {\n  rankdir=LR;\n  node [shape=box, fontname=\"sans-serif\"];\n",
    );
    for id in ids {
        let s = graph.stage(*id);
        let style = if exported.contains(id) {
            ", style=bold"
        } else {
            ""
        };
        out.push_str(&format!(
            "  \"{}\" [label=\"{}\\n{} step{}\"{style}];\n",
            s.name,
            s.name,
            s.steps.len(),
            if s.steps.len() == 1 { "" } else { "s" }
        ));
    }
    for id in ids {
        for (dep, kind) in edges(graph, *id) {
            if !ids.contains(&dep) {
                continue;
            }
            let style = match kind {
                "copy" => " [style=dashed, label=\"copy\"]",
                "mount" => " [style=dotted, label=\"mount\"]",
                "plugin" => " [style=dotted, label=\"plugin\"]",
                _ => "",
            };
            out.push_str(&format!(
                "  \"{}\" -> \"{}\"{style};\n",
                graph.stage(dep).name,
                graph.stage(*id).name
            ));
        }
    }
    out.push_str("}\n");
    out
}

pub fn graph(args: &GraphArgs, sources: &Sources) -> Result<(), Failure> {
    let (_, graph, warnings) = load(&args.spec, sources)?;
    print_warnings(&warnings, sources);
    let ids: Vec<crate::ir::StageId> = if args.targets.is_empty() {
        graph.stages.iter().map(|s| s.id).collect()
    } else {
        graph.ancestors(&targets(&graph, &args.targets)?)
    };
    let exported: Vec<crate::ir::StageId> = graph.exports.iter().map(|e| e.stage).collect();
    let mut out = String::new();
    match args.format {
        GraphFormat::Text => {
            for id in &ids {
                let s = graph.stage(*id);
                let base = match &s.base {
                    Base::Scratch => "scratch".to_string(),
                    Base::Stage(b) => graph.stage(*b).name.clone(),
                    Base::Image(i) => format!("image {:?}", i.reference),
                };
                let mark = if exported.contains(id) {
                    " (exported)"
                } else {
                    ""
                };
                out.push_str(&format!(
                    "{}{mark}: from {base}, {} step{}\n",
                    s.name,
                    s.steps.len(),
                    if s.steps.len() == 1 { "" } else { "s" }
                ));
                for (dep, kind) in edges(&graph, *id) {
                    match kind {
                        "copy" => {
                            out.push_str(&format!("  copies from {}\n", graph.stage(dep).name))
                        }
                        "mount" => out.push_str(&format!("  mounts {}\n", graph.stage(dep).name)),
                        "plugin" => out.push_str(&format!(
                            "  runs a plugin built by {}\n",
                            graph.stage(dep).name
                        )),
                        // The base is on the stage's own line.
                        _ => {}
                    }
                }
            }
        }
        GraphFormat::Dot => out.push_str(&dot(&graph, &ids)),
    }
    out!("{out}");
    Ok(())
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Where the cache lives [default: ~/.cache/kiln, or a .kiln directory beside the spec]
    #[arg(long, env = "KILN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Show cached steps too
    #[arg(long, short = 'a')]
    pub all: bool,
    /// Show the chain of stages that decided how long the last build took, instead
    #[arg(long)]
    pub critical_path: bool,
}

pub fn explain(args: &ExplainArgs, _sources: &Sources) -> Result<(), Failure> {
    let state = state_dir(&args.state_dir, &args.spec.spec_path());
    if !state.exists() {
        return Err(Diagnostic::new(
            Code::EXPLAIN_NONE,
            format!(
                "no build has used the state directory `{}`",
                state.display()
            ),
        )
        .into());
    }
    let store = Store::open_waiting(&state, Access::Shared, &super::waiting)?;
    let scope = crate::pipeline::load::project_scope(&args.spec.spec_path());
    let Some(last) = records::load_last(&store, &scope) else {
        return Err(Diagnostic::new(Code::EXPLAIN_NONE, "no build is recorded yet").into());
    };
    if args.critical_path {
        print_critical_path(&last);
        return Ok(());
    }
    let cached = last.steps.iter().filter(|s| s.cached).count();
    let ran = last.steps.len() - cached;
    outln!(
        "last build of {}: {ran} step{} ran, {cached} cached",
        last.spec,
        if ran == 1 { "" } else { "s" }
    );
    for s in &last.steps {
        if s.cached {
            if args.all {
                let from = if s.remote {
                    " (from the remote cache)"
                } else {
                    ""
                };
                outln!("  cached  {} [{}] {}{from}", s.stage, s.step + 1, s.text);
                if let Some(n) = &s.non_hermetic {
                    outln!("            not hermetic: {n}");
                }
            }
            continue;
        }
        outln!("  ran     {} [{}] {}", s.stage, s.step + 1, s.text);
        for w in &s.why {
            outln!("            because {w}");
        }
        if s.same_result {
            outln!("            ran, same result: later steps kept");
        }
        if let Some(n) = &s.non_hermetic {
            outln!("            not hermetic: {n}; its key does not cover what it read there");
        }
    }
    Ok(())
}

/// The last build's critical path: each stage on it, how long it took and
/// when, and how much of the build the path is.
fn print_critical_path(last: &records::LastBuild) {
    use crate::progress::human_ms;
    let path = crate::model::timing::critical_path(&last.stages);
    let (Some(first), Some(end)) = (path.first(), path.last()) else {
        outln!("the last build of {} recorded no stage times", last.spec);
        return;
    };
    let wall = last.stages.iter().map(|s| s.end_ms).fold(0.0f64, f64::max);
    outln!(
        "critical path of the last build of {}: {} stage{}, {} of {}",
        last.spec,
        path.len(),
        if path.len() == 1 { "" } else { "s" },
        human_ms(end.end_ms - first.start_ms),
        human_ms(wall)
    );
    let width = path
        .iter()
        .map(|s| s.stage.chars().count())
        .max()
        .unwrap_or(0);
    for s in &path {
        outln!(
            "  {:<width$}  {:>7}  ({} to {}){}",
            s.stage,
            human_ms(s.end_ms - s.start_ms),
            human_ms(s.start_ms),
            human_ms(s.end_ms),
            if s.cached { "  cached" } else { "" }
        );
    }
}

#[derive(Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Where the cache lives [default: ~/.cache/kiln, or a .kiln directory beside the spec]
    #[arg(long, env = "KILN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Shrink the cache to at most this size (`500M`, `2G`); exported results are kept longest
    #[arg(long, value_name = "SIZE")]
    pub max_size: Option<String>,
}

#[derive(Args, Debug)]
pub struct ImagesArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Where the cache lives [default: ~/.cache/kiln, or a .kiln directory beside the spec]
    #[arg(long, env = "KILN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// `kiln images`: every name, its manifest digest and its size.
pub fn images(args: &ImagesArgs) -> Result<(), Failure> {
    let state = state_dir(&args.state_dir, &args.spec.spec_path());
    let blobs = crate::store::oci::OciBlobs::new(&crate::store::layout::Layout::new(&state));
    let tags = blobs.tags();
    if tags.is_empty() {
        outln!("no images: `kiln build -t NAME` names one");
        return Ok(());
    }
    let width = tags.iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
    outln!("{:width$}  {:19}  SIZE", "NAME", "DIGEST");
    for t in tags {
        // The size: the config and layers the manifest lists.
        let size: u64 = blobs
            .read(&t.manifest)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|m| {
                m.get("config")
                    .into_iter()
                    .chain(m["layers"].as_array().into_iter().flatten())
                    .filter_map(|d| d.get("size")?.as_u64())
                    .sum()
            })
            .unwrap_or(0);
        let d = t.manifest.to_string();
        outln!(
            "{:width$}  {}  {}",
            t.name,
            &d[..19.min(d.len())],
            human_bytes(size)
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct RmiArgs {
    /// The names to remove (`NAME[:TAG]`; `:latest` when no tag is given)
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// The spec file whose state directory holds the images [default: ./kiln.kdl, else ./Dockerfile]
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Where the cache lives [default: ~/.cache/kiln, or a .kiln directory beside the spec]
    #[arg(long, env = "KILN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// `kiln rmi NAME…`: remove names from the local image store.
pub fn rmi(args: &RmiArgs) -> Result<(), Failure> {
    let spec = crate::pipeline::load::SpecInput {
        context: PathBuf::from("."),
        file: args.file.clone(),
        ..Default::default()
    }
    .spec_path();
    let state = state_dir(&args.state_dir, &spec);
    let blobs = crate::store::oci::OciBlobs::new(&crate::store::layout::Layout::new(&state));
    let mut missing = Vec::new();
    for name in &args.names {
        match blobs.remove_tag(name) {
            Ok(true) => outln!("removed {}", crate::store::oci::normalize_tag(name)),
            Ok(false) => missing.push(name.clone()),
            Err(e) => return Err(e.diagnostic().into()),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let known: Vec<String> = blobs.tags().into_iter().map(|t| t.name).collect();
    Err(missing
        .into_iter()
        .map(|m| {
            Diagnostic::new(Code::RMI_UNKNOWN, format!("no image is named `{m}`")).with_help(
                if known.is_empty() {
                    "the local image store is empty".to_string()
                } else {
                    format!("images: {}", known.join(", "))
                },
            )
        })
        .collect::<Vec<_>>()
        .into())
}

pub fn gc(args: &GcArgs, _sources: &Sources) -> Result<(), Failure> {
    let budget = match &args.max_size {
        Some(s) => Some(
            crate::units::parse_size(s)
                .ok_or_else(|| Diagnostic::new(Code::GC_SIZE, format!("`{s}` is not a size")))?,
        ),
        None => None,
    };
    let state = state_dir(&args.state_dir, &args.spec.spec_path());
    if !state.exists() {
        outln!("nothing to collect: `{}` does not exist", state.display());
        return Ok(());
    }
    let store = Store::open_waiting(&state, Access::Exclusive, &super::waiting)?;
    let r = gc::collect(&store, budget)
        .map_err(|e| Diagnostic::io("cannot collect garbage in", &state, &e))?;
    let total = |i: usize| -> u64 { r.parts.iter().map(|p| if i == 0 { p.1 } else { p.2 }).sum() };
    outln!(
        "state directory: {} → {}",
        human_bytes(total(0)),
        human_bytes(total(1))
    );
    // Every part that holds anything, so nothing goes unaccounted.
    for (part, before, after) in &r.parts {
        if *before == 0 && *after == 0 {
            continue;
        }
        outln!(
            "  {part}: {} → {}",
            human_bytes(*before),
            human_bytes(*after)
        );
    }
    outln!(
        "removed {} cache entr{}, {} tree{}, {} blob{}, {} image blob{}, {} run cache mount{}, {} git repositor{}",
        r.actions_removed,
        if r.actions_removed == 1 { "y" } else { "ies" },
        r.trees_removed,
        if r.trees_removed == 1 { "" } else { "s" },
        r.blobs_removed,
        if r.blobs_removed == 1 { "" } else { "s" },
        r.images_removed,
        if r.images_removed == 1 { "" } else { "s" },
        r.cache_mounts_removed,
        if r.cache_mounts_removed == 1 { "" } else { "s" },
        r.git_repos_removed,
        if r.git_repos_removed == 1 { "y" } else { "ies" },
    );
    if let Some(b) = budget
        && r.bytes_after > b
    {
        outln!(
            "the cache is {} over its budget of {}: what exports hold is kept whatever the budget",
            human_bytes(r.bytes_after - b),
            human_bytes(b)
        );
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[derive(Args, Debug)]
pub struct HashArgs {
    /// The directory to hash
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Where the stat index lives [default: as for `kiln build` of DIR]
    #[arg(long, env = "KILN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Hash every file of a context; prints the file count, bytes and one
/// digest over all `(path, digest)` pairs.
pub fn hash_context(args: &HashArgs) -> Result<(), Failure> {
    let state = state_dir(&args.state_dir, &args.dir.join("kiln.kdl"));
    let meta = std::fs::metadata(&args.dir).map_err(|e| {
        Diagnostic::new(
            Code::CONTEXT_MISSING,
            format!("cannot open `{}`: {e}", args.dir.display()),
        )
        .with_help("pass a directory to hash")
    })?;
    if !meta.is_dir() {
        return Err(Diagnostic::new(
            Code::CONTEXT_NOT_A_DIRECTORY,
            format!("`{}` is not a directory", args.dir.display()),
        )
        .with_help("`kiln hash-context` hashes a directory, as a build context")
        .into());
    }
    let store = Store::open_waiting(&state, Access::Shared, &super::waiting)?;
    let listing = crate::context::Listing {
        exclude: std::slice::from_ref(&state),
        ignore_file: None,
        trust_index: true,
    };
    let snap = crate::context::Snapshot::open(&args.dir, listing, store.layout())?;
    let mut paths = Vec::new();
    let mut bytes = 0u64;
    for (p, e) in &snap.tree.entries {
        if let crate::model::tree::Kind::File { size, .. } = e.kind {
            paths.push(p.as_str());
            bytes += size;
        }
    }
    let digests = snap.digests(&paths)?;
    snap.save_index();
    let mut all = blake3::Hasher::new();
    for (p, d) in paths.iter().zip(&digests) {
        all.update(p.as_bytes());
        all.update(&[0]);
        all.update(&d.0);
    }
    outln!(
        "{} files, {} bytes, {}",
        paths.len(),
        bytes,
        all.finalize().to_hex()
    );
    Ok(())
}
