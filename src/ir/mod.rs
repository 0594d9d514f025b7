//! The IR: a checked stage graph.
//!
//! [`compile`] turns a spec AST into a [`Graph`]: names resolved to ids,
//! `${}` substituted, modes and owners parsed, cycles rejected. Pure: no IO,
//! no clock, no cache. Every error found is returned at once.

mod compile;
pub mod subst;

pub use compile::{CompileOptions, compile};

use crate::diag::{Span, Spanned};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct StageId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ContextId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
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

    /// The stage built when nothing is asked for: the last one declared.
    pub fn default_target(&self) -> Option<StageId> {
        self.stages.len().checked_sub(1).map(|i| StageId(i as u32))
    }

    /// A stable text dump of the graph (for golden tests and debugging):
    /// every stage with its base, dependencies and steps (described and in
    /// canonical form), every context, plugin and export. Paths are shown
    /// relative to `base_dir` when they are below it.
    pub fn dump(&self, base_dir: &std::path::Path) -> String {
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
            let _ = writeln!(
                out,
                "plugin {} = {} pin {:?}",
                p.name,
                rel(&p.path),
                p.blake3
            );
        }
        for s in &self.stages {
            let base = match &s.base {
                Base::Scratch => "scratch".to_string(),
                Base::Stage(b) => self.stage(*b).name.clone(),
                Base::Image(r) => format!("image {r:?}"),
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
                let _ = writeln!(out, "  {}. {}", i + 1, step.op.describe(self));
                let _ = writeln!(out, "     {}", step.op.canonical(self));
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Base {
    Scratch,
    Stage(StageId),
    /// An OCI image by reference (`from image="…"`).
    Image(String),
}

#[derive(Clone, Debug)]
pub struct Step {
    pub span: Span,
    pub op: Op,
}

/// A step after substitution. Spans here are only for error messages;
/// nothing with a span enters a cache key.
#[derive(Clone, Debug)]
pub enum Op {
    Copy(Copy),
    /// A remote file, pinned by its sha256.
    Fetch {
        url: String,
        dest: String,
        sha256: String,
        chmod: Option<u32>,
        chown: Option<Owner>,
    },
    Write {
        path: String,
        content: String,
        mode: Option<u32>,
    },
    Mkdir {
        paths: Vec<String>,
        mode: Option<u32>,
    },
    Rm {
        paths: Vec<Spanned<String>>,
        force: bool,
    },
    Symlink {
        target: String,
        link: String,
    },
    Meta(Meta),
    Wasm(WasmOp),
    Run(RunOp),
}

/// A plugin step after substitution.
#[derive(Clone, Debug)]
pub struct WasmOp {
    pub plugin: PluginId,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<WasmMount>,
    pub timeout: std::time::Duration,
    /// Bytes of linear memory the guest may use.
    pub memory: u64,
}

/// A read-only directory a plugin sees at `guest`.
#[derive(Clone, Debug)]
pub struct WasmMount {
    pub guest: String,
    pub from: CopyFrom,
    /// The directory in the stage or context, `/` for all of it.
    pub source: String,
    pub span: Span,
}

/// A `run` step after substitution.
#[derive(Clone, Debug, Serialize)]
pub struct RunOp {
    pub command: Vec<String>,
    pub exec: bool,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<String>,
    pub network: Option<String>,
    pub security: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Copy {
    /// Source paths or globs, each with its span for "matched nothing" errors.
    pub sources: Vec<Spanned<String>>,
    pub dest: String,
    pub from: CopyFrom,
    pub chmod: Option<u32>,
    pub chown: Option<Owner>,
    /// Patterns of entries left out, matched against source paths.
    pub exclude: Vec<String>,
    /// Keep each source's parent directories below the destination.
    pub parents: bool,
    /// Extract sources that are tar archives.
    pub unpack: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyFrom {
    Context(ContextId),
    Stage(StageId),
}

/// `chown=`: numeric ids, or names looked up in the stage's `/etc/passwd` and `/etc/group`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub user: String,
    pub group: Option<String>,
}

/// Image metadata steps: they change the stage's config, not its tree.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Meta {
    Env(Vec<(String, String)>),
    Workdir(String),
    User(String),
    Label(Vec<(String, String)>),
    Entrypoint(Vec<String>),
    Cmd(Vec<String>),
    Expose(Vec<String>),
    Volume(Vec<String>),
    Stopsignal(String),
    Shell(Vec<String>),
    Healthcheck(crate::store::state::Healthcheck),
    Onbuild(String),
    Maintainer(String),
}

impl Op {
    /// The step's canonical form: everything that decides its result except
    /// the inputs it reads (whose digests are added to the key separately).
    /// Stable across releases of the same cache format; never holds a span.
    pub fn canonical(&self, graph: &Graph) -> String {
        use serde_json::json;
        let v = match self {
            Op::Copy(c) => json!({
                "copy": {
                    "sources": c.sources.iter().map(|s| &s.value).collect::<Vec<_>>(),
                    "dest": c.dest,
                    "from": match c.from {
                        CopyFrom::Context(id) => json!({"context": graph.context(id).name}),
                        CopyFrom::Stage(_) => json!("stage"),
                    },
                    "chmod": c.chmod,
                    "chown": c.chown,
                    "exclude": c.exclude,
                    "parents": c.parents,
                    "unpack": c.unpack,
                }
            }),
            Op::Fetch {
                url,
                dest,
                sha256,
                chmod,
                chown,
            } => json!({"fetch": {
                "url": url, "dest": dest, "sha256": sha256, "chmod": chmod, "chown": chown,
            }}),
            Op::Write {
                path,
                content,
                mode,
            } => {
                json!({"write": {"path": path, "content": content, "mode": mode}})
            }
            Op::Mkdir { paths, mode } => json!({"mkdir": {"paths": paths, "mode": mode}}),
            Op::Rm { paths, force } => json!({"rm": {
                "paths": paths.iter().map(|p| &p.value).collect::<Vec<_>>(),
                "force": force,
            }}),
            Op::Symlink { target, link } => json!({"symlink": {"target": target, "link": link}}),
            Op::Meta(m) => json!({ "meta": m }),
            Op::Wasm(w) => json!({"wasm": {
                "plugin": graph.plugins[w.plugin.0 as usize].name,
                "args": w.args,
                "env": w.env,
                "mounts": w.mounts.iter().map(|m| json!({
                    "guest": m.guest,
                    "from": match m.from {
                        CopyFrom::Context(id) => json!({"context": graph.context(id).name}),
                        CopyFrom::Stage(_) => json!("stage"),
                    },
                    "source": m.source,
                })).collect::<Vec<_>>(),
                "timeout_ms": w.timeout.as_millis() as u64,
                "memory": w.memory,
            }}),
            Op::Run(r) => json!({ "run": r }),
        };
        v.to_string()
    }

    /// Whether the step can change the stage's tree (metadata steps only
    /// change the config; `workdir` creates its directory).
    pub fn changes_tree(&self) -> bool {
        !matches!(self, Op::Meta(m) if !matches!(m, Meta::Workdir(_)))
    }

    /// A short human description, for progress output.
    pub fn describe(&self, graph: &Graph) -> String {
        let quote = |v: &[String]| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        match self {
            Op::Copy(c) => {
                let srcs: Vec<String> = c.sources.iter().map(|s| s.value.clone()).collect();
                let from = match c.from {
                    CopyFrom::Context(ContextId(0)) => String::new(),
                    CopyFrom::Context(id) => format!(" context={}", graph.context(id).name),
                    CopyFrom::Stage(id) => format!(" from={}", graph.stage(id).name),
                };
                format!("copy {} {:?}{from}", quote(&srcs), c.dest)
            }
            Op::Fetch { url, .. } => format!("fetch {url}"),
            Op::Write { path, .. } => format!("write {path:?}"),
            Op::Mkdir { paths, .. } => format!("mkdir {}", quote(paths)),
            Op::Rm { paths, .. } => {
                let p: Vec<String> = paths.iter().map(|s| s.value.clone()).collect();
                format!("rm {}", quote(&p))
            }
            Op::Symlink { target, link } => format!("symlink {target:?} {link:?}"),
            Op::Meta(m) => match m {
                Meta::Env(kv) => format!(
                    "env {}",
                    kv.iter()
                        .map(|(k, _)| k.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                Meta::Workdir(p) => format!("workdir {p:?}"),
                Meta::User(u) => format!("user {u:?}"),
                Meta::Label(kv) => format!(
                    "label {}",
                    kv.iter()
                        .map(|(k, _)| k.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                Meta::Entrypoint(a) => format!("entrypoint {}", quote(a)),
                Meta::Cmd(a) => format!("cmd {}", quote(a)),
                Meta::Expose(a) => format!("expose {}", a.join(" ")),
                Meta::Volume(a) => format!("volume {}", quote(a)),
                Meta::Stopsignal(s) => format!("stopsignal {s}"),
                Meta::Shell(a) => format!("shell {}", quote(a)),
                Meta::Healthcheck(h) => format!("healthcheck {}", quote(&h.test)),
                Meta::Onbuild(i) => format!("onbuild {i:?}"),
                Meta::Maintainer(m) => format!("maintainer {m:?}"),
            },
            Op::Wasm(w) => {
                format!(
                    "wasm {} {}",
                    graph.plugins[w.plugin.0 as usize].name,
                    quote(&w.args)
                )
            }
            Op::Run(r) => format!("run {}", quote(&r.command)),
        }
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
    pub path: PathBuf,
    pub blake3: Option<String>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Dir,
    Tar,
}

impl ExportFormat {
    /// A format as the spec (`format=`) and `-o type=` write it.
    pub fn parse(s: &str) -> Option<ExportFormat> {
        match s {
            "dir" | "local" => Some(ExportFormat::Dir),
            "tar" => Some(ExportFormat::Tar),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Dir => "dir",
            ExportFormat::Tar => "tar",
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
    /// The export entry in the spec; `None` for `-o` on the command line.
    pub span: Option<Span>,
}
