//! Step kinds: one module per kind, each owning its canonical form (what
//! keys it), the inputs it adds to its key, how it is described, and how
//! it runs. The stage runner knows none of them: it calls [`StepKind`]
//! through [`kind`]. A new step kind is a new module here, a new variant
//! of `ir::Op`, and its compile function in `ir/compile/steps.rs`.

mod copy;
pub mod copy_rules;
pub mod download;
mod fetch;
mod git;
mod meta;
mod mkdir;
mod rm;
mod run;
mod symlink;
pub mod unpack;
pub mod users;
pub mod wasm;
mod write;

use super::env::Env;
use crate::context::Snapshot;
use crate::diag::Code;
use crate::diag::{Diagnostic, Span};
use crate::ir::{CopyFrom, Graph, Names, Op, Owner, Stage, StageId, StepLoc};
use crate::model::digest::StepKey;
use crate::model::key::KeyBuilder;
use crate::model::state::{ImageConfig, State};
use crate::model::tree::{Entry, Kind, Tree};
use crate::store::ContentStore;
use std::collections::HashMap;
use std::sync::Arc;

/// What the stage runner asks of a step kind.
pub trait StepKind: Sync {
    /// Everything that decides the step's result except the inputs it
    /// reads (whose digests [`StepKind::prepare`] adds to the key). Stable
    /// across releases of one cache format; built from the op's data and
    /// the names of what it reads (never an index or a location: the op
    /// holds no location, ids cannot be serialized, and [`Names`] gives
    /// only names), so inserting or moving declarations keeps every key.
    fn canonical(&self, names: Names<'_>) -> serde_json::Value;

    /// A short human description, for progress and `explain`.
    fn describe(&self, names: Names<'_>) -> String;

    /// Whether the step can change the tree (metadata steps change only
    /// the config).
    fn changes_tree(&self) -> bool {
        true
    }

    /// Whether the tree after the step must be stored: true for steps
    /// that run a program, since replaying them would mean running it again.
    fn stores_tree(&self) -> bool {
        false
    }

    /// Why the step's result may depend on more than its key: the
    /// network, or the host's files. `None` for a hermetic step.
    fn non_hermetic(&self) -> Option<&'static str> {
        None
    }

    /// Read what the step reads; add its digests to `key` when one is
    /// given (a replay needs no key). What is returned goes to `run`.
    fn prepare(
        &self,
        _cx: &StepCx<'_>,
        _key: Option<&mut KeyBuilder>,
    ) -> Result<Prepared, Diagnostic> {
        Ok(Prepared::Nothing)
    }

    /// Apply the step to the stage's tree and config.
    fn run(&self, cx: &StepCx<'_>, work: Work<'_>, prepared: Prepared) -> Result<(), Diagnostic>;
}

/// The step kind of an op.
pub fn kind(op: &Op) -> &dyn StepKind {
    match op {
        Op::Copy(c) => c,
        Op::Fetch(f) => f,
        Op::Git(g) => g,
        Op::Write(w) => w,
        Op::Mkdir(m) => m,
        Op::Rm(r) => r,
        Op::Symlink(s) => s,
        Op::Meta(m) => m,
        Op::Wasm(w) => w,
        Op::Run(r) => r,
    }
}

/// An op's canonical form, as text.
pub fn canonical(op: &Op, graph: &Graph) -> String {
    kind(op).canonical(graph.names()).to_string()
}

/// Where a copy or a mount reads from, in a canonical form: a context by
/// its name; a stage as `"stage"`, since what is read from it joins the
/// key by digest (its name joins it there too where a change of it shows).
pub(crate) fn from_json(from: CopyFrom, names: Names<'_>) -> serde_json::Value {
    match from {
        CopyFrom::Context(id) => serde_json::json!({ "context": names.context(id) }),
        CopyFrom::Stage(_) => serde_json::json!("stage"),
    }
}

pub fn describe(op: &Op, graph: &Graph) -> String {
    kind(op).describe(graph.names())
}

/// Where a step runs: the build's services, its stage and place, the
/// results of the stages it reads, and (once known) its key.
pub struct StepCx<'a> {
    pub env: &'a Env<'a>,
    pub stage: &'a Stage,
    pub index: usize,
    pub loc: &'a StepLoc,
    /// The results of the stages this one depends on.
    pub inputs: &'a HashMap<StageId, State>,
    /// The step's key; `None` while it is being computed.
    pub key: Option<StepKey>,
    /// The last tree of the stage known to be in the store: the current
    /// tree is it with the steps since applied. (A `run` step writes only
    /// the difference to disk when the stored tree is on disk already.)
    pub stored: Option<crate::model::digest::TreeDigest>,
    /// The digest of the tree the step starts on, when it is known without
    /// encoding the tree (it is the stored one).
    pub current: Option<crate::model::digest::TreeDigest>,
}

impl StepCx<'_> {
    pub fn span(&self) -> Span {
        self.loc.span
    }

    pub fn graph(&self) -> &Graph {
        self.env.graph
    }

    pub fn content(&self) -> &dyn ContentStore {
        self.env.content
    }

    /// The result of a stage this step reads.
    pub fn input(&self, id: StageId) -> Result<&State, Diagnostic> {
        self.inputs.get(&id).ok_or_else(|| {
            Diagnostic::internal(format!(
                "stage `{}` was read before it was built",
                self.graph().stage(id).name
            ))
        })
    }

    /// The tree of a stage this step reads.
    pub fn input_tree(&self, id: StageId) -> Result<Arc<Tree>, Diagnostic> {
        let state = self.input(id)?;
        self.env.tree(state.tree)
    }
}

/// What a step changes.
pub struct Work<'a> {
    pub tree: &'a mut Tree,
    pub config: &'a mut ImageConfig,
    /// Set by a step that stored `tree` itself (so it is not encoded twice).
    pub stored: &'a mut Option<crate::model::digest::TreeDigest>,
    /// Set by a test step: how its command ended.
    pub test: &'a mut Option<TestEnd>,
}

/// How a test step ended: its run, and when it failed, the failure the
/// build reports (the stage goes on with what the command left).
pub struct TestEnd {
    pub run: crate::model::state::TestRun,
    pub failure: Option<Diagnostic>,
}

/// Work a step did while computing its key, reused when it runs.
pub enum Prepared {
    Nothing,
    /// A context copy's matched files, with their digests.
    Picked(Arc<Snapshot>, Vec<copy_rules::Picked>),
    /// What a copy from another stage matched there.
    Selected(Vec<copy_rules::Picked>),
}

fn tree_err(what: &str, span: Span, e: crate::model::tree::TreeError) -> Diagnostic {
    Diagnostic::new(Code::STEP_PATH, format!("{what}: {e}")).with_label(span, "in this step")
}

/// Numeric ids, or names looked up in the stage's `/etc/passwd` and `/etc/group`.
fn resolve_owner(
    content: &dyn ContentStore,
    tree: &Tree,
    owner: &Owner,
    span: Span,
) -> Result<(u32, u32), Diagnostic> {
    let lookup = |file: &str, name: &str, field: usize| -> Result<Option<(u32, u32)>, Diagnostic> {
        let Some(Entry {
            kind: Kind::File { blob, .. },
            ..
        }) = tree.get(file)
        else {
            return Ok(None);
        };
        let bytes = content.read_blob(*blob)?;
        for line in String::from_utf8_lossy(&bytes).lines() {
            let parts: Vec<&str> = line.split(':').collect();
            if parts.first() == Some(&name) && parts.len() > field {
                let id = parts[2].parse().ok();
                let gid = parts.get(3).and_then(|g| g.parse().ok());
                if let Some(id) = id {
                    return Ok(Some((id, gid.unwrap_or(id))));
                }
            }
        }
        Ok(None)
    };
    let unknown = |what: &str, name: &str, file: &str| {
        Diagnostic::new(Code::COPY_OWNER, format!("unknown {what} `{name}`"))
            .with_label(span, format!("not in the stage's /{file}"))
    };
    let (uid, primary_gid) = match owner.user.parse::<u32>() {
        Ok(id) => (id, id),
        Err(_) => lookup("etc/passwd", &owner.user, 3)?
            .ok_or_else(|| unknown("user", &owner.user, "etc/passwd"))?,
    };
    let gid = match &owner.group {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(id) => id,
            Err(_) => {
                lookup("etc/group", g, 2)?
                    .ok_or_else(|| unknown("group", g, "etc/group"))?
                    .0
            }
        },
    };
    Ok((uid, gid))
}

/// Quote each word as the spec would.
fn quote(v: &[String]) -> String {
    v.iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Graph {
    /// A stable text dump of the graph (for golden tests and debugging):
    /// every stage with its base, dependencies and steps (described, and in
    /// the canonical form their kind keys them by), every context, plugin
    /// and export. Paths are shown relative to `base_dir` when below it.
    pub fn dump(&self, base_dir: &std::path::Path) -> String {
        use crate::ir::Base;
        use std::fmt::Write;
        let rel = |p: &std::path::Path| match p.strip_prefix(base_dir) {
            Ok(r) if r.as_os_str().is_empty() => ".".to_string(),
            Ok(r) => r.display().to_string(),
            Err(_) => p.display().to_string(),
        };
        let mut out = String::new();
        for (k, v) in &self.args {
            let _ = writeln!(out, "arg {k} = {v:?}");
        }
        for c in &self.contexts {
            let name = if c.name.is_empty() {
                "(default)"
            } else {
                &c.name
            };
            let _ = writeln!(out, "context {name} = {}", rel(&c.path));
        }
        for p in &self.plugins {
            let source = match &p.source {
                crate::ir::PluginSource::Host(path) => rel(path),
                crate::ir::PluginSource::Stage { stage, path } => {
                    format!("{path} in {}", self.stage(*stage).name)
                }
                crate::ir::PluginSource::Url(url) => url.clone(),
            };
            let _ = writeln!(out, "plugin {} = {source} pin {:?}", p.name, p.blake3);
        }
        for s in &self.stages {
            let base = match &s.base {
                Base::Scratch => "scratch".to_string(),
                Base::Stage(b) => self.stage(*b).name.clone(),
                Base::Image(i) => format!("image {:?}", i.reference),
            };
            let deps: Vec<&str> = s
                .deps
                .iter()
                .map(|d| self.stage(*d).name.as_str())
                .collect();
            let _ = writeln!(
                out,
                "stage {} from {base} needs [{}]",
                s.name,
                deps.join(", ")
            );
            for (i, step) in s.steps.iter().enumerate() {
                let _ = writeln!(out, "  {}. {}", i + 1, describe(&step.op, self));
                let _ = writeln!(out, "     {}", canonical(&step.op, self));
            }
        }
        for e in &self.exports {
            let _ = writeln!(
                out,
                "export {} to {} as {:?} when {:?}",
                self.stage(e.stage).name,
                rel(&e.dest),
                e.format,
                e.when
            );
        }
        out
    }
}
