//! Plugin steps in the executor: their key inputs, and running them over
//! the stage tree on disk.

use super::Executor;
use super::builtin;
use super::key::KeyBuilder;
use super::wasm::{self, Failure, Invocation, LoadError, Runtime};
use super::workdir::{self, TempDir};
use crate::diag::{Diagnostic, Spanned};
use crate::ir::{Copy, CopyFrom, Plugin, StageId, Step, WasmMount, WasmOp};
use crate::progress::Event;
use crate::store::digest::StepKey;
use crate::store::state::{ImageConfig, State};
use crate::store::tree::{self, Kind, Links, Tree};
use std::collections::HashMap;
use std::path::PathBuf;

/// How many lines of output a failure shows.
const TAIL_LINES: usize = 20;

impl Executor<'_> {
    fn runtime(&self) -> Result<&Runtime, Diagnostic> {
        let rt = self
            .runtime
            .get_or_init(|| Runtime::new(&self.store.layout().wasm_cache(), self.options.jobs));
        rt.as_ref().map_err(|e| {
            Diagnostic::env(
                "kiln::wasm::engine",
                format!("cannot start the plugin runtime: {e}"),
            )
        })
    }

    fn plugin(&self, w: &WasmOp) -> &Plugin {
        &self.graph.plugins[w.plugin.0 as usize]
    }

    /// What a plugin step reads, for its key: the module, the time it is
    /// shown, and every mounted file.
    pub(super) fn wasm_inputs(
        &self,
        w: &WasmOp,
        step: &Step,
        inputs: &HashMap<StageId, State>,
        kb: &mut KeyBuilder,
    ) -> Result<(), Diagnostic> {
        let p = self.plugin(w);
        let digest = self.runtime()?.digest(p).map_err(|e| {
            Diagnostic::user(
                "kiln::wasm::module",
                format!("cannot read the module of plugin `{}`: {e}", p.name),
            )
            .with_label(p.span, "declared here")
            .with_label(step.span, "used here")
            .with_help("build the plugin, or fix its `path=` (relative to the spec file)")
        })?;
        kb.input(&format!("module:{}", p.name), &digest);
        kb.input("epoch", &self.options.epoch.to_string());
        for m in &w.mounts {
            match m.from {
                CopyFrom::Stage(src) => kb.input(
                    &format!("mount:{}", m.guest),
                    &format!(
                        "stage:{} {}",
                        self.graph.stage(src).name,
                        inputs[&src].tree.hex()
                    ),
                ),
                CopyFrom::Context(_) => {
                    let picked = self.pick_mount(m)?;
                    builtin::context_inputs(&picked, kb);
                }
            }
        }
        Ok(())
    }

    /// The context entries a mount shows.
    fn pick_mount(&self, m: &WasmMount) -> Result<Vec<super::copy::Picked>, Diagnostic> {
        let CopyFrom::Context(ctx) = m.from else {
            return Ok(Vec::new());
        };
        let snap = self.context(ctx)?;
        let c = Copy {
            sources: vec![Spanned::new(m.span, m.source.clone())],
            dest: "/".into(),
            from: m.from,
            chmod: None,
            chown: None,
            exclude: Vec::new(),
            parents: false,
            unpack: false,
        };
        builtin::pick_from_context(&snap, &c)
    }

    /// A mount's files as a tree and the directory in it to show.
    fn mount_tree(
        &self,
        m: &WasmMount,
        inputs: &HashMap<StageId, State>,
    ) -> Result<(Tree, String), Diagnostic> {
        match m.from {
            CopyFrom::Stage(src) => {
                let t = self.tree(inputs[&src].tree)?;
                let dir = tree::components(&m.source, Links::Rootfs)
                    .map(|c| c.join("/"))
                    .unwrap_or_default();
                let dir = t.resolve(&dir, true, Links::Rootfs).map_err(|e| {
                    Diagnostic::build(
                        "kiln::wasm::mount",
                        format!("cannot mount `{}`: {e}", m.source),
                    )
                    .with_label(m.span, "this mount")
                    .with_help("mount a directory of the stage")
                })?;
                if !dir.is_empty() && !t.is_dir(&dir) {
                    return Err(Diagnostic::build(
                        "kiln::wasm::mount",
                        format!(
                            "`{}` is not a directory in stage `{}`",
                            m.source,
                            self.graph.stage(src).name
                        ),
                    )
                    .with_label(m.span, "this mount")
                    .with_help("mount a directory; a plugin reads files inside it"));
                }
                Ok(((*t).clone(), dir))
            }
            CopyFrom::Context(ctx) => {
                let snap = self.context(ctx)?;
                let mut out = Tree::new();
                for p in self.pick_mount(m)? {
                    if !p.is_dir {
                        return Err(Diagnostic::build(
                            "kiln::wasm::mount",
                            format!("`{}` is not a directory in the context", m.source),
                        )
                        .with_label(m.span, "this mount")
                        .with_help("mount a directory; a plugin reads files inside it"));
                    }
                    for (rel, e) in p.items {
                        if let Kind::File { blob, .. } = e.kind {
                            snap.ingest(self.store, &tree::join(&p.path, &rel), blob)?;
                        }
                        out.entries.insert(rel, e);
                    }
                }
                Ok((out, String::new()))
            }
        }
    }

    /// Run a plugin step over `tree`, returning the tree it leaves.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_wasm(
        &self,
        w: &WasmOp,
        step: &Step,
        tree: &Tree,
        config: &ImageConfig,
        inputs: &HashMap<StageId, State>,
        key: StepKey,
        stage: &str,
        index: usize,
    ) -> Result<Tree, Diagnostic> {
        // The stage tree in a reused scratch directory, emptied and kept
        // for the next run whatever happens; mounts, which are rarer, in a
        // directory of their own.
        let root = self.scratch.take(self.store)?;
        let result = (|| -> Result<Tree, Diagnostic> {
            let p = self.plugin(w);
            let rt = self.runtime()?;
            let module = rt.load(p).map_err(|e| load_error(e, p, step))?;
            let written = workdir::write(self.store, tree, "", &root)?;
            let mounts_dir = (!w.mounts.is_empty()).then(|| TempDir::new(self.store, "mounts"));
            let mut mounts: Vec<(PathBuf, String)> = Vec::new();
            for (i, m) in w.mounts.iter().enumerate() {
                let (t, sub) = self.mount_tree(m, inputs)?;
                let Some(dir) = &mounts_dir else { break };
                let host = dir.0.join(format!("mount-{i}"));
                workdir::write(self.store, &t, &sub, &host)?;
                mounts.push((host, m.guest.clone()));
            }
            // The working directory, for programs (and the SDK) that honour `PWD`.
            let mut env = w.env.clone();
            if !env.iter().any(|(k, _)| k == "PWD") {
                env.push(("PWD".into(), config.workdir().to_string()));
            }
            let inv = Invocation {
                name: &p.name,
                args: &w.args,
                env: &env,
                root: &root,
                mounts: &mounts,
                timeout: w.timeout,
                memory: w.memory,
                seed: key.0,
                epoch: self.options.epoch,
                cancel: self.cancel.clone(),
            };
            let (output, result) = rt.run(&module, &inv);
            let log = self.save_log(key, &output);
            if !output.stdout.is_empty() || !output.stderr.is_empty() {
                let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&output.stderr));
                self.progress.emit(Event::StepOutput {
                    stage: stage.into(),
                    step: index,
                    text: shown(&text),
                });
            }
            if let Err(f) = result {
                return Err(failure(f, p, step, &output, log));
            }
            workdir::read_back(self.store, &root, tree, &written).map_err(|d| {
                if d.labels.is_empty() {
                    d.with_label(step.span, format!("plugin `{}`", p.name))
                } else {
                    d
                }
            })
        })();
        self.scratch.give_back(root);
        result
    }

    /// Keep a step's whole output in the state directory's `logs/`.
    fn save_log(&self, key: StepKey, out: &wasm::Output) -> Option<PathBuf> {
        if out.stdout.is_empty() && out.stderr.is_empty() {
            return None;
        }
        let path = self.store.layout().log(key);
        let mut bytes = b"--- stdout\n".to_vec();
        bytes.extend_from_slice(&out.stdout);
        bytes.extend_from_slice(b"\n--- stderr\n");
        bytes.extend_from_slice(&out.stderr);
        self.store
            .write_atomic(&path, &bytes, 0o644)
            .ok()
            .map(|_| path)
    }
}

/// What the progress display shows of a step's output: its last 50 lines,
/// each cut at 300 characters.
fn shown(text: &str) -> String {
    tail(text, 50)
        .lines()
        .map(|l| match l.char_indices().nth(300) {
            Some((i, _)) => format!("{}…", &l[..i]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn load_error(e: LoadError, p: &Plugin, step: &Step) -> Diagnostic {
    let d = match e {
        LoadError::Read(err) => Diagnostic::user(
            "kiln::wasm::module",
            format!("cannot read the module of plugin `{}` ({}): {err}", p.name, p.path.display()),
        )
        .with_help("build the plugin, or fix its `path=` (relative to the spec file)"),
        LoadError::Pin { expected, actual } => Diagnostic::user(
            "kiln::wasm::pin",
            format!(
                "the module of plugin `{}` does not match its pin: pinned blake3 {expected}, the file has {actual}",
                p.name
            ),
        )
        .with_help("if the new module is the one you want, run `kiln plugin pin` to update the pin"),
        LoadError::Invalid(msg) => Diagnostic::user(
            "kiln::wasm::module",
            format!("plugin `{}` is not a WASI program kiln can run: {msg}", p.name),
        )
        .with_help("plugins are WASI preview 1 modules (`cargo build --target wasm32-wasip1`, or `clang --target=wasm32-wasi`) or preview 2 `wasi:cli/command` components"),
    };
    d.with_label(p.span, "declared here")
        .with_label(step.span, "used here")
}

fn failure(
    f: Failure,
    p: &Plugin,
    step: &Step,
    out: &wasm::Output,
    log: Option<PathBuf>,
) -> Diagnostic {
    let name = &p.name;
    let (code, message, help) = match f {
        Failure::Exit(code) => (
            "kiln::wasm::exit",
            format!("plugin `{name}` exited with status {code}"),
            "its output is below".to_string(),
        ),
        Failure::Timeout(t) => (
            "kiln::wasm::timeout",
            format!(
                "plugin `{name}` ran longer than its time limit of {}",
                crate::units::format_duration(t)
            ),
            "raise the limit with `timeout=` on the step if the work is expected to take this long"
                .into(),
        ),
        Failure::Memory(m) => (
            "kiln::wasm::memory",
            format!(
                "plugin `{name}` needed more than its memory limit of {}",
                crate::units::format_size(m)
            ),
            "raise the limit with `memory=` on the step (up to 4GiB)".into(),
        ),
        Failure::Output(stream) => (
            "kiln::wasm::output",
            format!(
                "plugin `{name}` wrote more than {} to {stream}",
                crate::units::format_size(wasm::OUTPUT_LIMIT as u64)
            ),
            "a plugin's output goes to the build log; write large results to files instead".into(),
        ),
        Failure::Trap { message, frames } => {
            let mut m = format!("plugin `{name}` trapped: {message}");
            if !frames.is_empty() {
                m.push_str("\nwasm backtrace:");
                for (i, f) in frames.iter().enumerate() {
                    m.push_str(&format!("\n  {i}: {f}"));
                }
            }
            (
                "kiln::wasm::trap",
                m,
                "a trap is a bug in the plugin (or its input)".into(),
            )
        }
        Failure::Interrupted => (
            "kiln::wasm::interrupted",
            format!("plugin `{name}` was stopped: the build was interrupted"),
            "run the build again; the steps that finished are cached".into(),
        ),
        Failure::Setup(msg) => (
            "kiln::wasm::setup",
            format!("cannot set up plugin `{name}`: {msg}"),
            "check the mounts of the step".into(),
        ),
    };
    let mut d = Diagnostic::build(code, message)
        .with_label(step.span, format!("plugin `{name}`"))
        .with_help(help);
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if !text.trim().is_empty() {
        d = d.with_note(format!(
            "last lines of its output:\n{}",
            tail(text.trim_end(), TAIL_LINES)
        ));
    }
    if let Some(l) = log {
        d = d.with_note(format!("whole output: {}", l.display()));
    }
    d
}
