//! The spec AST: what the user wrote, with spans, before substitution and
//! name resolution. Strings are raw: `${NAME}` is still in them.

use crate::diag::{SourceId, Span, Spanned};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A string as written, with its span.
pub type Str = Spanned<String>;

/// A whole spec: the root file plus everything it includes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Spec {
    /// Directory of the root spec file; default context and state dir live relative to it.
    pub dir: PathBuf,
    pub files: Vec<SourceId>,
    pub version: Option<Spanned<i128>>,
    pub args: Vec<ArgDecl>,
    pub contexts: Vec<ContextDecl>,
    pub plugins: Vec<PluginDecl>,
    pub stages: Vec<StageDecl>,
    pub exports: Vec<ExportDecl>,
    /// Warnings found while reading (a KDL v1 file, say).
    #[serde(skip)]
    pub warnings: Vec<crate::diag::Diagnostic>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArgDecl {
    pub span: Span,
    pub name: Str,
    pub default: Option<Str>,
}

/// `context NAME path="…"`: a named extra build context.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContextDecl {
    pub span: Span,
    pub name: Str,
    pub path: Str,
    /// Directory of the file that declared it; `path` is relative to it.
    pub dir: PathBuf,
}

/// `plugin NAME path="…" blake3="…"` (or `url="…"`, or `from=STAGE
/// path="…"`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PluginDecl {
    pub span: Span,
    pub name: Str,
    /// The module on the host (or, with `from`, in that stage's result).
    pub path: Option<Str>,
    /// `url=`: the module is downloaded once into the store.
    #[serde(default)]
    pub url: Option<Str>,
    pub blake3: Option<Str>,
    /// `from=STAGE`: `path` is in that stage's result, not on the host.
    #[serde(default)]
    pub from: Option<Str>,
    pub dir: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageDecl {
    pub span: Span,
    pub name: Str,
    pub from: Option<Str>,
    /// `from image="REF"`: an OCI image as the base.
    pub image: Option<Str>,
    pub steps: Vec<StepDecl>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepDecl {
    pub span: Span,
    pub kind: StepKind,
}

/// A key and a value, as in `env`, `label`.
pub type Pair = (Str, Str);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StepKind {
    Copy {
        sources: Vec<Str>,
        dest: Str,
        from: Option<Str>,
        context: Option<Str>,
        chmod: Option<Str>,
        chown: Option<Str>,
        /// Patterns of source entries left out (Docker's `--exclude`).
        exclude: Vec<Str>,
        /// Keep each source's parent directories (Docker's `--parents`).
        parents: bool,
        /// Extract sources that are tar archives (Docker's `ADD`).
        unpack: bool,
    },
    /// `fetch URL DEST checksum="sha256:…"`: a remote file, pinned by its digest.
    Fetch {
        url: Str,
        dest: Str,
        checksum: Option<Str>,
        chmod: Option<Str>,
        chown: Option<Str>,
    },
    /// `git URL DEST [ref=REF] [subdir=DIR] [keep-git-dir=#true]`: a
    /// repository's tree at a commit.
    Git {
        url: Str,
        dest: Str,
        reference: Option<Str>,
        subdir: Option<Str>,
        keep_git_dir: bool,
        chmod: Option<Str>,
        chown: Option<Str>,
    },
    Write {
        path: Str,
        content: Str,
        mode: Option<Str>,
    },
    Mkdir {
        paths: Vec<Str>,
        mode: Option<Str>,
    },
    Rm {
        paths: Vec<Str>,
        force: bool,
    },
    Symlink {
        target: Str,
        link: Str,
    },
    Env(Vec<Pair>),
    Workdir(Str),
    User(Str),
    Label(Vec<Pair>),
    Entrypoint(Vec<Str>),
    Cmd(Vec<Str>),
    Expose(Vec<Str>),
    Volume(Vec<Str>),
    Stopsignal(Str),
    /// The shell that runs shell-form commands (Docker's `SHELL`).
    Shell(Vec<Str>),
    Healthcheck(HealthcheckDecl),
    /// An instruction recorded for images built on this one (Docker's `ONBUILD`).
    Onbuild(Str),
    /// The image's author (Docker's `MAINTAINER`).
    Maintainer(Str),
    /// `wasm PLUGIN ARG…`: a plugin step.
    Wasm(WasmDecl),
    /// `run "cmd"`: a shell command in a sandbox (`test "cmd"`: a test).
    Run(RunDecl),
}

/// `run COMMAND… [exec=#true] [network=…] [security=…] { env …; mount … }`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunDecl {
    pub command: Vec<Str>,
    /// Exec form: the arguments are the program and its arguments; otherwise
    /// the one argument is a script for the stage's shell.
    pub exec: bool,
    /// Build-time environment (Docker's `ARG`s in scope), not kept on the stage.
    pub env: Vec<Pair>,
    /// Docker `--mount` specifications, as written.
    pub mounts: Vec<Str>,
    pub network: Option<Str>,
    pub security: Option<Str>,
    /// `timeout=`: how long the command may run.
    pub timeout: Option<Str>,
    /// `sandbox="image"|"host"`: the stage's tree as `/` (the default), or
    /// the host's root read-only with the stage's tree at its workdir.
    pub sandbox: Option<Str>,
    /// `host-inputs PATH…` children: host files whose digests join the key
    /// of a `sandbox="host"` step.
    pub host_inputs: Vec<Str>,
    /// Written `test`: a test, whose failure is recorded, not fatal.
    pub test: Option<TestDecl>,
}

/// What a `test` step adds to a `run` step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TestDecl {
    /// `name=`: the test's name in reports (else its stage's).
    pub name: Option<Str>,
}

/// `wasm PLUGIN ARG… [timeout=D] [memory=SIZE] { env …; mount … }`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WasmDecl {
    pub plugin: Str,
    pub args: Vec<Str>,
    pub env: Vec<Pair>,
    pub mounts: Vec<MountDecl>,
    pub timeout: Option<Str>,
    pub memory: Option<Str>,
}

/// `mount GUEST [from=STAGE | context=NAME] [source=PATH]`: read-only.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MountDecl {
    pub span: Span,
    pub guest: Str,
    pub from: Option<Str>,
    pub context: Option<Str>,
    pub source: Option<Str>,
}

/// `healthcheck NONE` or `healthcheck CMD|CMD-SHELL ARG… [interval=…] …`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HealthcheckDecl {
    /// `["NONE"]`, `["CMD", …]` or `["CMD-SHELL", …]`, as Docker's image config has it.
    pub test: Vec<Str>,
    pub interval: Option<Str>,
    pub timeout: Option<Str>,
    pub start_period: Option<Str>,
    pub start_interval: Option<Str>,
    pub retries: Option<Str>,
}

impl StepKind {
    /// The node name that introduces this step.
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Copy { .. } => "copy",
            StepKind::Fetch { .. } => "fetch",
            StepKind::Git { .. } => "git",
            StepKind::Write { .. } => "write",
            StepKind::Mkdir { .. } => "mkdir",
            StepKind::Rm { .. } => "rm",
            StepKind::Symlink { .. } => "symlink",
            StepKind::Env(_) => "env",
            StepKind::Workdir(_) => "workdir",
            StepKind::User(_) => "user",
            StepKind::Label(_) => "label",
            StepKind::Entrypoint(_) => "entrypoint",
            StepKind::Cmd(_) => "cmd",
            StepKind::Expose(_) => "expose",
            StepKind::Volume(_) => "volume",
            StepKind::Stopsignal(_) => "stopsignal",
            StepKind::Shell(_) => "shell",
            StepKind::Healthcheck(_) => "healthcheck",
            StepKind::Onbuild(_) => "onbuild",
            StepKind::Maintainer(_) => "maintainer",
            StepKind::Wasm(_) => "wasm",
            StepKind::Run(r) if r.test.is_some() => "test",
            StepKind::Run { .. } => "run",
        }
    }
}

/// One entry of the `export` block.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExportDecl {
    pub span: Span,
    pub stage: Str,
    /// Where the export goes: a path (`to=`), or a registry (`image=`).
    pub to: Option<Str>,
    /// A registry reference to push the stage's image to.
    pub image: Option<Str>,
    pub format: Option<Str>,
    pub when: Option<Str>,
    pub tag: Option<Str>,
    pub compression: Option<Str>,
    /// `provenance=#true`: an in-toto statement beside the export.
    pub provenance: bool,
    /// `squash=#true`: an image's own changes in one layer.
    pub squash: bool,
    /// Directory of the file that declared it; `to` is relative to it.
    pub dir: PathBuf,
}

/// What one spec file declares, in order, before its includes are read
/// (its declarations in `decls`; `dir`, `files` and `warnings` unused).
/// This is what the parse cache stores per file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Fragment {
    pub decls: Spec,
    /// `include`s, each with the number of this file's stages before it.
    pub includes: Vec<(Str, usize)>,
}
