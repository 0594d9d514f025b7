//! `wasm PLUGIN ARG…`: a WebAssembly program run over the stage's tree on
//! disk (`workdir`), through the plugin runtime (`crate::plugin`). Keyed by
//! the module's digest (its bytes are read once and stored, so the bytes
//! keyed are the bytes run), its args and env, its mounts (by digest) and
//! the time it is shown. Its tree is always stored: replaying it would
//! mean running it again.

use super::copy::{context_inputs, ingest, pick_from_context};
use super::{Prepared, StepCx, StepKind, Work, quote};
use crate::diag::Code;
use crate::diag::{Diagnostic, Span, Spanned};
use crate::exec::workdir::{self, TempDir};
use crate::ir::{CopyFrom, Names, Plugin, PluginSource, WasmMount, WasmOp};
use crate::model::key::{KeyBuilder, KeyInput};
use crate::model::tree::{self, Links, Tree};
use crate::plugin::{self, Failure, Invocation, LoadError};
use crate::progress::Event;
use serde_json::json;
use std::path::PathBuf;

/// How many lines of output a failure shows.
const TAIL_LINES: usize = 20;

impl StepKind for WasmOp {
    fn canonical(&self, names: Names<'_>) -> serde_json::Value {
        json!({"wasm": {
            "plugin": names.plugin(self.plugin),
            "args": self.args,
            "env": self.env,
            "mounts": self.mounts.iter().map(|m| json!({
                "guest": m.guest,
                "from": super::from_json(m.from, names),
                "source": m.source,
            })).collect::<Vec<_>>(),
            "timeout_ms": self.timeout.as_millis() as u64,
            "memory": self.memory,
        }})
    }

    fn describe(&self, names: Names<'_>) -> String {
        format!("wasm {} {}", names.plugin(self.plugin), quote(&self.args))
    }

    fn stores_tree(&self) -> bool {
        true
    }

    /// The module (stored in the content store), the time it is shown,
    /// and every mounted file.
    fn prepare(
        &self,
        cx: &StepCx<'_>,
        key: Option<&mut KeyBuilder>,
    ) -> Result<Prepared, Diagnostic> {
        let Some(key) = key else {
            return Ok(Prepared::Nothing);
        };
        let p = plugin_of(self, cx);
        let digest = match (&p.source, &p.blake3) {
            // A pinned download is keyed by its pin: a cached step never
            // fetches it, and a run checks what it fetched against the pin.
            (PluginSource::Url(_), Some(pin)) => pin.clone(),
            _ => {
                let read = module_reader(cx, p);
                let module = cx
                    .env
                    .runtime()?
                    .module(p, &read)
                    .map_err(|e| unreadable(p, cx.span(), &e))?;
                // Stored once per build: storing hashes the bytes again.
                if !module.stored.load(std::sync::atomic::Ordering::Acquire) {
                    cx.content().put_blob(&module.bytes)?;
                    module
                        .stored
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                module.digest.clone()
            }
        };
        key.input(KeyInput::Module {
            plugin: p.name.clone(),
            digest,
        });
        key.input(KeyInput::Epoch(cx.env.options.epoch));
        for (i, m) in self.mounts.iter().enumerate() {
            match m.from {
                CopyFrom::Stage(src) => key.input(KeyInput::Mount {
                    guest: m.guest.clone(),
                    stage: cx.graph().stage(src).name.clone(),
                    tree: cx.input(src)?.tree,
                }),
                CopyFrom::Context(ctx) => {
                    let snap = cx.env.context(ctx)?;
                    let picked = pick_mount(&snap, m, cx.loc.part(i))?;
                    context_inputs(&picked, key);
                }
            }
        }
        Ok(Prepared::Nothing)
    }

    fn run(&self, cx: &StepCx<'_>, work: Work<'_>, _prepared: Prepared) -> Result<(), Diagnostic> {
        let env = cx.env;
        let key = cx
            .key
            .ok_or_else(|| Diagnostic::internal("a plugin step ran without its key"))?;
        // The stage tree in a reused scratch directory, emptied and kept
        // for the next run whatever happens; mounts, which are rarer, in a
        // directory of their own.
        let root = env.scratch_dirs.take(env.local)?;
        let result = (|| -> Result<Tree, Diagnostic> {
            let p = plugin_of(self, cx);
            let rt = env.runtime()?;
            let read = module_reader(cx, p);
            let module = if rt.is_loaded(p) {
                rt.load(p, &read)
            } else {
                // A large module takes minutes to compile the first time:
                // say so if it takes more than a moment.
                let (done, waiting) = std::sync::mpsc::channel::<()>();
                std::thread::scope(|s| {
                    let read = &read;
                    s.spawn(move || {
                        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                            waiting.recv_timeout(std::time::Duration::from_secs(2))
                        {
                            let size = rt
                                .module(p, read)
                                .map(|m| m.bytes.len() as u64)
                                .unwrap_or(0);
                            env.progress.emit(Event::StepWaiting {
                                stage: cx.stage.name.clone(),
                                step: cx.index,
                                text: format!(
                                    "compiling plugin `{}` ({}), once for this machine",
                                    p.name,
                                    crate::units::approx_size(size)
                                ),
                            });
                        }
                    });
                    let loaded = rt.load(p, read);
                    drop(done);
                    loaded
                })
            }
            .map_err(|e| load_error(e, p, cx.span()))?;
            let written = workdir::write(env.content, work.tree, "", &root)?;
            let mounts_dir = (!self.mounts.is_empty()).then(|| TempDir::new(env.local, "mounts"));
            let mut mounts: Vec<(PathBuf, String)> = Vec::new();
            // File mounts by the directory that shows them: (guest
            // directory, its files, the first mount's index).
            let mut file_dirs: Vec<(String, Tree, usize)> = Vec::new();
            for (i, m) in self.mounts.iter().enumerate() {
                let Some(dir) = &mounts_dir else { break };
                let guest = m.guest.trim_end_matches('/');
                match mount_tree(cx, m, cx.loc.part(i))? {
                    Shown::Dir(t, sub) => {
                        let host = dir.0.join(format!("mount-{i}"));
                        workdir::write(env.content, &t, &sub, &host)?;
                        mounts.push((host, guest.to_string()));
                    }
                    // WASI shows directories: a file is shown alone in a
                    // directory of its own at the mount's parent.
                    Shown::File(entry) => {
                        let (parent, name) = guest.rsplit_once('/').unwrap_or(("", guest));
                        if parent.is_empty() {
                            return Err(file_mount_error(
                                cx.loc.part(i),
                                format!(
                                    "`{guest}` mounts a file right under `/`: a file mount is shown in a directory of its own, and `/` is the stage itself"
                                ),
                                "mount the file in a directory below `/`, such as \"/mnt/config.toml\"",
                            ));
                        }
                        match file_dirs.iter_mut().find(|(g, ..)| g == parent) {
                            Some((_, t, _)) => {
                                t.entries.insert(name.to_string(), entry);
                            }
                            None => {
                                let mut t = Tree::new();
                                t.entries.insert(name.to_string(), entry);
                                file_dirs.push((parent.to_string(), t, i));
                            }
                        }
                    }
                }
            }
            for (guest, t, i) in file_dirs {
                let Some(dir) = &mounts_dir else { break };
                if mounts.iter().any(|(_, g)| *g == guest) {
                    return Err(file_mount_error(
                        cx.loc.part(i),
                        format!("`{guest}` is both a directory mount and where a file is mounted"),
                        "mount the file elsewhere, or put it in the mounted directory",
                    ));
                }
                let host = dir.0.join(format!("files-{i}"));
                workdir::write(env.content, &t, "", &host)?;
                mounts.push((host, guest));
            }
            // The working directory, for programs (and the SDK) that honour `PWD`.
            let mut vars = self.env.clone();
            if !vars.iter().any(|(k, _)| k == "PWD") {
                vars.push(("PWD".into(), work.config.workdir().to_string()));
            }
            let inv = Invocation {
                name: &p.name,
                args: &self.args,
                env: &vars,
                root: &root,
                mounts: &mounts,
                timeout: self.timeout,
                memory: self.memory,
                seed: key.0,
                epoch: env.options.epoch,
                cancel: env.cancel.clone(),
            };
            let (output, result) = rt.run(&module, &inv);
            let log = env.save_log(key, &output.stdout, &output.stderr);
            if !output.stdout.is_empty() || !output.stderr.is_empty() {
                let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&output.stderr));
                env.progress.emit(Event::StepOutput {
                    stage: cx.stage.name.clone(),
                    step: cx.index,
                    text: shown(&text),
                });
            }
            if let Err(f) = result {
                let mut d = failure(f, p, cx.span(), &output, log);
                let at: Vec<&str> = self.mounts.iter().map(|m| m.guest.as_str()).collect();
                if let Some(note) = read_only_note(&at, &output) {
                    d = d.with_note(note);
                }
                return Err(d);
            }
            workdir::read_back(env.content, &root, work.tree, &written).map_err(|d| {
                if d.labels.is_empty() {
                    d.with_label(cx.span(), format!("plugin `{}`", p.name))
                } else {
                    d
                }
            })
        })();
        env.scratch_dirs.give_back(root);
        *work.tree = result?;
        Ok(())
    }
}

fn plugin_of<'a>(w: &WasmOp, cx: &StepCx<'a>) -> &'a Plugin {
    &cx.env.graph.plugins[w.plugin.0 as usize]
}

/// A module that could not be read (or downloaded), with what to do.
fn unreadable(p: &Plugin, used: Span, why: &str) -> Diagnostic {
    let (code, help) = match &p.source {
        PluginSource::Host(_) => (
            Code::WASM_MODULE,
            "build the plugin, or fix its `path=` (relative to the spec file)",
        ),
        PluginSource::Stage { .. } => (
            Code::WASM_MODULE,
            "make the stage write the module at `path=` (an absolute path in its result)",
        ),
        PluginSource::Url(_) if p.blake3.is_none() => (
            Code::WASM_UNPINNED,
            "run `kiln plugin pin`: it downloads the module once and writes its blake3",
        ),
        PluginSource::Url(_) => (
            Code::WASM_DOWNLOAD,
            "check the URL and the network; once downloaded, the module is kept in the store by its pin",
        ),
    };
    Diagnostic::new(
        code,
        format!("cannot read the module of plugin `{}`: {why}", p.name),
    )
    .with_label(p.span, "declared here")
    .with_label(used, "used here")
    .with_help(help)
}

/// The context entries a mount shows.
fn pick_mount(
    snap: &crate::context::Snapshot,
    m: &WasmMount,
    span: Span,
) -> Result<Vec<super::copy_rules::Picked>, Diagnostic> {
    pick_from_context(snap, &[Spanned::new(span, m.source.clone())], &[])
}

/// What a mount shows: a directory (a tree and the directory in it), or
/// one file.
enum Shown {
    Dir(Tree, String),
    File(tree::Entry),
}

fn file_mount_error(span: Span, message: String, help: &str) -> Diagnostic {
    Diagnostic::new(Code::WASM_MOUNT, message)
        .with_label(span, "this mount")
        .with_help(help.to_string())
}

/// A mount's files: a directory, or a single file.
fn mount_tree(cx: &StepCx<'_>, m: &WasmMount, span: Span) -> Result<Shown, Diagnostic> {
    let not_shown = |what: String| {
        Diagnostic::new(Code::WASM_MOUNT, what)
            .with_label(span, "this mount")
            .with_help("mount a directory or a regular file (symbolic links are followed inside the stage)")
    };
    match m.from {
        CopyFrom::Stage(src) => {
            let t = cx.input_tree(src)?;
            let dir = tree::components(&m.source, Links::Rootfs)
                .map(|c| c.join("/"))
                .unwrap_or_default();
            let dir = t
                .resolve(&dir, true, Links::Rootfs)
                .map_err(|e| not_shown(format!("cannot mount `{}`: {e}", m.source)))?;
            if dir.is_empty() || t.is_dir(&dir) {
                return Ok(Shown::Dir((*t).clone(), dir));
            }
            match t.get(&dir) {
                Some(e) if matches!(e.kind, tree::Kind::File { .. }) => Ok(Shown::File(e.clone())),
                Some(_) => Err(not_shown(format!(
                    "`{}` in stage `{}` is neither a directory nor a regular file",
                    m.source,
                    cx.graph().stage(src).name
                ))),
                None => Err(not_shown(format!(
                    "stage `{}` has no `{}`",
                    cx.graph().stage(src).name,
                    m.source
                ))),
            }
        }
        CopyFrom::Context(ctx) => {
            let snap = cx.env.context(ctx)?;
            let picked = pick_mount(&snap, m, span)?;
            ingest(cx.content(), &snap, &picked)?;
            if let [p] = picked.as_slice()
                && !p.is_dir
            {
                return match p.items.as_slice() {
                    [(_, e)] if matches!(e.kind, tree::Kind::File { .. }) => {
                        Ok(Shown::File(e.clone()))
                    }
                    _ => Err(not_shown(format!(
                        "`{}` in the context is neither a directory nor a regular file",
                        m.source
                    ))),
                };
            }
            let mut out = Tree::new();
            for p in picked {
                if !p.is_dir {
                    return Err(not_shown(format!(
                        "`{}` is not one directory or one file in the context",
                        m.source
                    )));
                }
                for (rel, e) in p.items {
                    out.entries.insert(rel, e);
                }
            }
            Ok(Shown::Dir(out, String::new()))
        }
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
/// How the step reads its plugin's module: the file on the host, the file
/// in the result of the stage that builds it, or the download its pin
/// names (from the content store once it is there).
fn module_reader<'a>(
    cx: &'a StepCx<'a>,
    p: &'a Plugin,
) -> impl Fn() -> Result<Vec<u8>, String> + 'a {
    move || match &p.source {
        PluginSource::Host(path) => {
            std::fs::read(path).map_err(|e| format!("{e} ({})", path.display()))
        }
        PluginSource::Stage { stage, path } => {
            let stage_name = &cx.graph().stage(*stage).name;
            let tree = cx.input_tree(*stage).map_err(|d| d.message)?;
            let rel = tree
                .resolve(path.trim_start_matches('/'), true, Links::Rootfs)
                .map_err(|e| format!("`{path}` in stage `{stage_name}`: {e}"))?;
            match tree.get(&rel).map(|e| &e.kind) {
                Some(tree::Kind::File { blob, .. }) => cx
                    .content()
                    .read_blob(*blob)
                    .map_err(|e| format!("`{path}` in stage `{stage_name}`: {e}")),
                Some(_) => Err(format!("`{path}` in stage `{stage_name}` is not a file")),
                None => Err(format!("stage `{stage_name}` has no `{path}`")),
            }
        }
        PluginSource::Url(url) => downloaded(cx, p, url),
    }
}

/// A downloaded module: from the store when its pin is there, else
/// fetched, checked against the pin and stored, so it is fetched once.
fn downloaded(cx: &StepCx<'_>, p: &Plugin, url: &str) -> Result<Vec<u8>, String> {
    let pin = p.blake3.as_deref().ok_or_else(|| {
        format!(
            "`{url}` is not pinned: run `kiln plugin pin` to download it once and write its blake3"
        )
    })?;
    let blob = crate::model::digest::BlobDigest::parse(pin)
        .ok_or_else(|| format!("the pin of `{url}` is not a blake3 digest"))?;
    if cx.content().has_blob(blob) {
        return cx.content().read_blob(blob).map_err(|e| e.to_string());
    }
    let body = super::download::fetch(url, None, p.span).map_err(|d| d.message)?;
    let got = blake3::hash(&body).to_hex();
    if got.as_str() != pin {
        return Err(format!(
            "`{url}` does not match its pin: expected blake3 {pin}, downloaded {got}"
        ));
    }
    cx.content().put_blob(&body).map_err(|e| e.to_string())?;
    Ok(body)
}

/// When a failed plugin with mounts said it could not write, that its
/// mounts are read-only (the guest's own message cannot say so).
fn read_only_note(mounts: &[&str], out: &plugin::Output) -> Option<String> {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .to_ascii_lowercase();
    let refused = ["read-only", "permission denied", "not permitted"]
        .iter()
        .any(|w| text.contains(w));
    (!mounts.is_empty() && refused).then(|| {
        format!(
            "the step's mounts ({}) are read-only: a plugin writes its results into the stage's tree",
            mounts.join(", ")
        )
    })
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn load_error(e: LoadError, p: &Plugin, used: Span) -> Diagnostic {
    let d = match e {
        LoadError::Read(err) => return unreadable(p, used, &err),
        LoadError::Pin { expected, actual } => Diagnostic::new(
            Code::WASM_PIN,
            format!(
                "the module of plugin `{}` does not match its pin: pinned blake3 {expected}, the file has {actual}",
                p.name
            ),
        ),
        LoadError::Invalid(msg) => Diagnostic::new(
            Code::WASM_MODULE,
            format!("plugin `{}` is not a WASI program kiln can run: {msg}", p.name),
        )
        .with_help("plugins are WASI preview 1 modules (`cargo build --target wasm32-wasip1`, or `clang --target=wasm32-wasi`) or preview 2 `wasi:cli/command` components"),
    };
    d.with_label(p.span, "declared here")
        .with_label(used, "used here")
}

fn failure(
    f: Failure,
    p: &Plugin,
    span: Span,
    out: &plugin::Output,
    log: Option<PathBuf>,
) -> Diagnostic {
    let name = &p.name;
    let (code, message, help) = match f {
        Failure::Exit(code) => (
            Code::WASM_EXIT,
            format!("plugin `{name}` exited with status {code}"),
            "its output is below".to_string(),
        ),
        Failure::Timeout(t) => (
            Code::WASM_TIMEOUT,
            format!(
                "plugin `{name}` ran longer than its time limit of {}",
                crate::units::format_duration(t)
            ),
            "raise the limit with `timeout=` on the step if the work is expected to take this long"
                .into(),
        ),
        Failure::Memory(m) => (
            Code::WASM_MEMORY,
            format!(
                "plugin `{name}` needed more than its memory limit of {}",
                crate::units::format_size(m)
            ),
            "raise the limit with `memory=` on the step (up to 4GiB)".into(),
        ),
        Failure::Output(stream) => (
            Code::WASM_OUTPUT,
            format!(
                "plugin `{name}` wrote more than {} to {stream}",
                crate::units::format_size(plugin::OUTPUT_LIMIT as u64)
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
                Code::WASM_TRAP,
                m,
                "a trap is a bug in the plugin (or its input)".into(),
            )
        }
        Failure::Interrupted => (
            Code::WASM_INTERRUPTED,
            format!("plugin `{name}` was stopped: the build was interrupted"),
            "run the build again; the steps that finished are cached".into(),
        ),
        Failure::Setup(msg) => (
            Code::WASM_SETUP,
            format!("cannot set up plugin `{name}`: {msg}"),
            "check the mounts of the step".into(),
        ),
    };
    let mut d = Diagnostic::new(code, message)
        .with_label(span, format!("plugin `{name}`"))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn out(stderr: &str) -> plugin::Output {
        plugin::Output {
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_refused_write_with_mounts_says_they_are_read_only() {
        let note = read_only_note(&["/assets"], &out("open /assets/x: Read-only file system"));
        assert!(note.is_some_and(|n| n.contains("(/assets) are read-only")));
        assert!(read_only_note(&[], &out("Permission denied")).is_none());
        assert!(read_only_note(&["/assets"], &out("no such file")).is_none());
    }
}
