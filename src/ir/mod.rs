//! The IR: a checked stage graph.
//!
//! [`compile`] turns a spec AST into a [`Graph`]: names resolved to ids,
//! `${}` substituted, modes and owners parsed, cycles rejected. Pure: no IO,
//! no clock, no cache. Every error found is returned at once.

mod compile;
mod op;
mod query;
pub mod subst;

pub use compile::{CompileOptions, compile, valid_tag};
pub use op::*;

use crate::diag::Span;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

// The ids are indexes into the graph's declarations: inserting a stage
// renumbers the ones below it. So they are not `Serialize`: nothing that
// is written down (a cache key above all) can hold one; a key names what
// an id points at through [`Names`].

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StageId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContextId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PluginId(pub u32);

/// The checked build graph.
#[derive(Clone, Debug)]
pub struct Graph {
    pub stages: Vec<Stage>,
    /// `contexts[0]` is the default context (the directory on the command line).
    pub contexts: Vec<Context>,
    pub plugins: Vec<Plugin>,
    pub exports: Vec<Export>,
    /// Every declared arg and its value after `--arg` overrides.
    pub args: BTreeMap<String, Option<String>>,
    /// Where each step was written.
    pub source_map: SourceMap,
}

impl Graph {
    pub fn stage(&self, id: StageId) -> &Stage {
        &self.stages[id.0 as usize]
    }

    pub fn find_stage(&self, name: &str) -> Option<StageId> {
        self.stages
            .iter()
            .position(|s| s.name == name)
            .map(|i| StageId(i as u32))
    }

    pub fn context(&self, id: ContextId) -> &Context {
        &self.contexts[id.0 as usize]
    }

    /// The stage built when nothing is asked for: the last one declared
    /// (a Dockerfile's last stage: the stages its `COPY --from=IMAGE`s
    /// make come first).
    pub fn default_target(&self) -> Option<StageId> {
        self.stages.len().checked_sub(1).map(|i| StageId(i as u32))
    }

    /// What a canonical form may see of the graph: names only.
    pub fn names(&self) -> Names<'_> {
        Names { graph: self }
    }

    /// `roots` and every stage they depend on, in dependency order
    /// (a stage comes after all of its dependencies).
    pub fn ancestors(&self, roots: &[StageId]) -> Vec<StageId> {
        let mut seen = vec![false; self.stages.len()];
        let mut order = Vec::new();
        fn visit(g: &Graph, id: StageId, seen: &mut [bool], order: &mut Vec<StageId>) {
            if seen[id.0 as usize] {
                return;
            }
            seen[id.0 as usize] = true;
            for &dep in &g.stage(id).deps {
                visit(g, dep, seen, order);
            }
            order.push(id);
        }
        for &r in roots {
            visit(self, r, &mut seen, &mut order);
        }
        order
    }
}

/// The graph as a step's canonical form sees it: the names of stages,
/// contexts and plugins, and nothing else: no index (which moves when a
/// declaration is inserted above), no location (which moves when a line
/// is), no path on this machine.
#[derive(Clone, Copy)]
pub struct Names<'a> {
    graph: &'a Graph,
}

impl Names<'_> {
    pub fn stage(&self, id: StageId) -> &str {
        &self.graph.stage(id).name
    }

    /// A context's name (empty for the default context).
    pub fn context(&self, id: ContextId) -> &str {
        &self.graph.context(id).name
    }

    pub fn plugin(&self, id: PluginId) -> &str {
        &self.graph.plugins[id.0 as usize].name
    }
}

#[derive(Clone, Debug)]
pub struct Stage {
    pub id: StageId,
    pub name: String,
    /// The `stage NAME` line.
    pub span: Span,
    pub base: Base,
    /// The `from` line, when there is one.
    pub from_span: Option<Span>,
    pub steps: Vec<Step>,
    /// Stages this one reads (base, `copy from=`), sorted, without duplicates.
    pub deps: Vec<StageId>,
}

impl Stage {
    /// Its `test` steps: each step's index and its name in reports (its
    /// `name=`; else the stage's name when it is the stage's only test,
    /// or `step N`).
    pub fn tests(&self) -> Vec<(usize, String)> {
        let tests: Vec<(usize, &Test)> = self
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &s.op {
                Op::Run(RunOp { test: Some(t), .. }) => Some((i, t)),
                _ => None,
            })
            .collect();
        let alone = tests.len() == 1;
        tests
            .into_iter()
            .map(|(i, t)| {
                let name = match &t.name {
                    Some(n) => n.clone(),
                    None if alone => self.name.clone(),
                    None => format!("step {}", i + 1),
                };
                (i, name)
            })
            .collect()
    }

    /// The name in reports of the test at step `index` (`None`: that step
    /// is not a test).
    pub fn test_name(&self, index: usize) -> Option<String> {
        self.tests()
            .into_iter()
            .find(|(i, _)| *i == index)
            .map(|(_, n)| n)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Base {
    Scratch,
    Stage(StageId),
    /// An OCI image by reference (`from image="…"`).
    Image(ImageBase),
}

/// An image a stage is built on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageBase {
    /// The reference as written (after substitution): what `kiln.lock` keys.
    pub reference: String,
    /// The directory of the spec file that names it: local image paths
    /// (`oci-layout://img`) are relative to it.
    pub dir: PathBuf,
}

/// A step of a stage: what it does. Where it was written is in the
/// graph's [`SourceMap`].
#[derive(Clone, Debug)]
pub struct Step {
    pub op: Op,
}

/// Where each step was written: a side table beside the graph (as
/// BuildKit keeps a source map beside LLB), so that errors point at the
/// spec while nothing with a location is part of a step.
#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    /// Per stage, per step.
    steps: Vec<Vec<StepLoc>>,
}

/// Where one step was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepLoc {
    /// The whole step node.
    pub span: Span,
    /// Its list items in order: a copy's sources, an `rm`'s paths, a
    /// plugin's or a `run`'s mounts.
    pub parts: Vec<Span>,
}

impl StepLoc {
    /// The span of list item `i`, or the step's.
    pub fn part(&self, i: usize) -> Span {
        self.parts.get(i).copied().unwrap_or(self.span)
    }
}

impl SourceMap {
    pub fn step(&self, stage: StageId, index: usize) -> &StepLoc {
        &self.steps[stage.0 as usize][index]
    }

    pub(crate) fn push_stage(&mut self, steps: Vec<StepLoc>) {
        self.steps.push(steps);
    }
}

#[derive(Clone, Debug)]
pub struct Context {
    pub id: ContextId,
    /// Empty for the default context.
    pub name: String,
    pub path: PathBuf,
    pub span: Option<Span>,
    /// A `.dockerignore`-syntax file used instead of the context's own ignore file.
    pub ignore_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct Plugin {
    pub id: PluginId,
    pub name: String,
    pub source: PluginSource,
    pub blake3: Option<String>,
    pub span: Span,
}

/// Where a plugin's module comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginSource {
    /// A file on the host.
    Host(PathBuf),
    /// A file (an absolute path) in the result of a stage that builds it.
    Stage { stage: StageId, path: String },
    /// Downloaded once into the content store, by its pin.
    Url(String),
}

impl Plugin {
    /// The stage whose result holds the module, if a stage builds it.
    pub fn from_stage(&self) -> Option<StageId> {
        match self.source {
            PluginSource::Stage { stage, .. } => Some(stage),
            _ => None,
        }
    }

    /// The module's file on the host, if it is one.
    pub fn host_path(&self) -> Option<&Path> {
        match &self.source {
            PluginSource::Host(p) => Some(p),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Dir,
    Tar,
    /// An OCI image layout directory.
    Oci,
    /// An OCI image layout as one tar.
    OciArchive,
    /// What `docker load` reads (an OCI layout with `manifest.json`).
    DockerArchive,
    /// Pushed to a registry (the export's `tag` is the reference).
    Push,
    /// Named in the local image store (`-t`; the export's `tag`).
    Tagged,
}

impl ExportFormat {
    /// A format as the spec (`format=`) and `-o type=` write it.
    pub fn parse(s: &str) -> Option<ExportFormat> {
        match s {
            "dir" | "local" => Some(ExportFormat::Dir),
            "tar" => Some(ExportFormat::Tar),
            "oci" => Some(ExportFormat::Oci),
            "oci-archive" => Some(ExportFormat::OciArchive),
            "docker-archive" | "docker" => Some(ExportFormat::DockerArchive),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Dir => "dir",
            ExportFormat::Tar => "tar",
            ExportFormat::Oci => "oci",
            ExportFormat::OciArchive => "oci-archive",
            ExportFormat::DockerArchive => "docker-archive",
            ExportFormat::Push => "registry",
            ExportFormat::Tagged => "image",
        }
    }

    /// Whether the export is an image (a config, a manifest, layers).
    pub fn is_image(self) -> bool {
        matches!(
            self,
            ExportFormat::Oci
                | ExportFormat::OciArchive
                | ExportFormat::DockerArchive
                | ExportFormat::Push
                | ExportFormat::Tagged
        )
    }
}

/// How an image export's own layer is compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    None,
}

impl Compression {
    pub fn parse(s: &str) -> Option<Compression> {
        match s {
            "gzip" => Some(Compression::Gzip),
            "zstd" => Some(Compression::Zstd),
            "none" | "uncompressed" => Some(Compression::None),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "none",
        }
    }
}

/// When an export entry is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum When {
    /// Only when the whole build succeeds (the default).
    Success,
    /// Whenever its stage succeeds, even if other parts of the build fail.
    Always,
}

#[derive(Clone, Debug)]
pub struct Export {
    pub stage: StageId,
    pub dest: PathBuf,
    pub format: ExportFormat,
    pub when: When,
    /// An image's name (`NAME[:TAG]`), for image formats.
    pub tag: Option<String>,
    /// An image's own layer's compression.
    pub compression: Compression,
    /// Write an in-toto provenance statement beside the export.
    pub provenance: bool,
    /// An image's own changes in one layer, not one per stored tree.
    pub squash: bool,
    /// The export entry in the spec; `None` for `-o` on the command line.
    pub span: Option<Span>,
}
