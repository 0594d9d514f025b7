//! `run`: a command in a sandbox over the stage's tree (Docker's `RUN`),
//! through [`crate::sandbox`]. Keyed by its canonical form (command,
//! environment, every mount's declaration, network and security settings,
//! all typed), the trees of the stages it mounts, the context files it
//! mounts, and for `sandbox="host"` the host files it names; never by
//! what a cache mount holds or a secret's value (where and how they are
//! mounted is in the canonical form, as in BuildKit: adding a secret to a
//! command changes what it does). Its tree is always stored: replaying it
//! would mean running it again.
//!
//! The command runs on the stage's tree as overlayfs layers (written out
//! once per tree, then only differences), and only what the upper
//! directory holds — what the command changed — is read back.

use super::copy::{context_inputs, ingest, pick_from_context};
use super::users::{self, User};
use super::{Prepared, StepCx, StepKind, TestEnd, Work, quote};
use crate::diag::Code;
use crate::diag::{Diagnostic, Spanned};
use crate::ir::{CopyFrom, MountKind, Names, RunMount, RunOp, Sandbox, Sharing};
use crate::model::key::{KeyBuilder, KeyInput};
use crate::model::state::{ImageConfig, TestRun};
use crate::model::tree::{self, Links, Tree};
use crate::progress::Event;
use crate::sandbox::rootfs::Rootfs;
use crate::sandbox::{self, Bind, SandboxError, Stream, forward};
use serde_json::json;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A mount's declaration in the canonical form: every field, stages and
/// contexts by name (never by index).
fn mount_json(m: &RunMount, names: Names<'_>) -> serde_json::Value {
    let from = |f: CopyFrom| super::from_json(f, names);
    let kind = match &m.kind {
        MountKind::Bind {
            from: f,
            source,
            rw,
        } => json!({"bind": {
            "from": from(*f), "source": source, "rw": rw,
        }}),
        MountKind::Cache {
            id,
            sharing,
            readonly,
            from: f,
            source,
            mode,
            uid,
            gid,
        } => json!({"cache": {
            "id": id, "sharing": sharing, "readonly": readonly,
            "from": f.map(from), "source": source,
            "mode": mode, "uid": uid, "gid": gid,
        }}),
        MountKind::Tmpfs { size } => json!({"tmpfs": {"size": size}}),
        MountKind::Secret {
            id,
            required,
            env,
            mode,
            uid,
            gid,
        } => json!({"secret": {
            "id": id, "required": required, "env": env,
            "mode": mode, "uid": uid, "gid": gid,
        }}),
        MountKind::Ssh {
            id,
            required,
            mode,
            uid,
            gid,
        } => json!({"ssh": {
            "id": id, "required": required, "mode": mode, "uid": uid, "gid": gid,
        }}),
    };
    json!({"target": m.target, "mount": kind})
}

/// Docker's `PATH` when the image sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How much of a command's output the log keeps.
const LOG_LIMIT: usize = 64 << 20;
/// How many lines of output a failure shows.
const TAIL_LINES: usize = 20;
/// How much of the end of a command's output is kept for them.
const TAIL_BYTES: usize = 8 << 10;

impl StepKind for RunOp {
    fn canonical(&self, names: Names<'_>) -> serde_json::Value {
        let mut form = json!({ "run": {
            "command": self.command,
            "exec": self.exec,
            "env": self.env,
            "mounts": self.mounts.iter().map(|m| mount_json(m, names)).collect::<Vec<_>>(),
            "network": self.network,
            "security": self.security,
            "timeout_ms": self.timeout.map(|t| t.as_millis() as u64),
            "sandbox": self.sandbox,
            "host_inputs": self.host_inputs,
        }});
        // A test keeps what a failing command left, so it is another step
        // than the `run` of the same command (a `run`'s form is as it was).
        if self.test.is_some()
            && let Some(o) = form.as_object_mut()
        {
            o.insert("test".into(), json!(true));
        }
        form
    }

    fn describe(&self, _names: Names<'_>) -> String {
        let word = if self.test.is_some() { "test" } else { "run" };
        format!("{word} {}", quote(&self.command))
    }

    fn non_hermetic(&self) -> Option<&'static str> {
        if self.sandbox == Sandbox::Host {
            Some("it saw the host's files")
        } else if self.network.reaches_out() {
            Some("it could reach the network")
        } else {
            None
        }
    }

    fn stores_tree(&self) -> bool {
        true
    }

    fn prepare(
        &self,
        cx: &StepCx<'_>,
        key: Option<&mut KeyBuilder>,
    ) -> Result<Prepared, Diagnostic> {
        let Some(key) = key else {
            return Ok(Prepared::Nothing);
        };
        // The command sees the epoch: as every file's time, and as
        // SOURCE_DATE_EPOCH in its environment.
        key.input(KeyInput::Epoch(cx.env.options.epoch));
        for (i, m) in self.mounts.iter().enumerate() {
            let from = match &m.kind {
                MountKind::Bind { from, .. } => Some(*from),
                // What seeds a cache is not keyed: a cache never is.
                _ => None,
            };
            match from {
                Some(CopyFrom::Stage(src)) => key.input(KeyInput::Mount {
                    guest: m.target.clone(),
                    stage: cx.graph().stage(src).name.clone(),
                    tree: cx.input(src)?.tree,
                }),
                Some(CopyFrom::Context(ctx)) => {
                    let snap = cx.env.context(ctx)?;
                    let source = bind_source(m);
                    let picked = pick_from_context(
                        &snap,
                        &[Spanned::new(cx.loc.part(i), source.to_string())],
                        &[],
                    )?;
                    context_inputs(&picked, key);
                }
                None => {}
            }
        }
        for h in &self.host_inputs {
            let digest = host_digest(h).map_err(|e| {
                Diagnostic::new(
                    Code::RUN_HOST_INPUT,
                    format!("cannot read the host input `{h}`: {e}"),
                )
                .with_label(cx.span(), "this step")
            })?;
            key.input(KeyInput::HostFile {
                path: h.clone(),
                digest,
            });
        }
        Ok(Prepared::Nothing)
    }

    fn run(
        &self,
        cx: &StepCx<'_>,
        mut work: Work<'_>,
        _prepared: Prepared,
    ) -> Result<(), Diagnostic> {
        let env = cx.env;
        let user = resolve_user(cx, work.tree, work.config)?;
        let spec = self.spec(cx, work.config, &user)?;
        let platform = &env.images.platform;
        if !platform.runs_here() {
            return Err(Diagnostic::new(
                Code::RUN_PLATFORM,
                format!(
                    "this build is for {platform}, whose programs do not run on this {} machine",
                    crate::image::platform::Platform::host()
                ),
            )
            .with_label(cx.span(), "this command"));
        }
        match self.sandbox {
            Sandbox::Image => self.check_program(cx, work.tree, &spec)?,
            Sandbox::Host => check_host_workdir(cx, &spec.cwd)?,
        }
        // Without root (or as the root of a container, which cannot mount
        // overlayfs): the tree is copied. Without root, no owners but the
        // user's own, which the command sees as root.
        let privileged = sandbox::overlay_possible();
        if !spec.ids.owns_files() && spec.user.0 != 0 {
            return Err(Diagnostic::new(
                Code::RUN_USER_WITHOUT_ROOT,
                format!(
                    "running a command as user {} needs kiln to run as root",
                    spec.user.0
                ),
            )
            .with_label(cx.span(), "this step")
            .with_note("without root, kiln can only map its own user into the sandbox, as root"));
        }
        if self.attempt(cx, &mut work, spec.clone(), privileged)? {
            return Ok(());
        }
        // A layer the command ran on no longer matched its seal (checked
        // while the command ran): nothing it made was kept. Once more, on
        // a tree written afresh (the changed layer is not used again).
        env.progress.emit(Event::Notice {
            message: format!(
                "stage `{}`: a layer of the tree on disk changed since it was written (edited or damaged); the command runs again on a tree written afresh",
                cx.stage.name
            ),
        });
        if self.attempt(cx, &mut work, spec, privileged)? {
            return Ok(());
        }
        Err(Diagnostic::new(
            Code::RUN_LAYERS_CHANGED,
            "the layers of the tree on disk changed while the command ran, twice",
        )
        .with_label(cx.span(), "this step"))
    }
}

impl RunOp {
    /// Run the command once on the tree on disk: `false` when a layer it
    /// ran on turned out not to match its seal (nothing was kept).
    /// The tree the command runs on, on disk: as root, a stack of overlay
    /// layers (the tree's own, or its difference from the nearest tree of
    /// its lineage that has one) with a fresh upper directory; without
    /// root, a private copy.
    #[allow(clippy::too_many_arguments)]
    fn root_on_disk(
        &self,
        cx: &StepCx<'_>,
        work: &Work<'_>,
        rootfs: &Rootfs<'_>,
        dir: &Path,
        digest: crate::model::digest::TreeDigest,
        privileged: bool,
        spec: &sandbox::Spec,
    ) -> Result<sandbox::Root, Diagnostic> {
        let env = cx.env;
        let fail = |e: SandboxError| error(cx, e, None, "");
        Ok(if privileged {
            // The tree on disk: its own stack, or the difference from the
            // nearest tree of its lineage that has one (the stage's last
            // stored tree, its base's, the image's). The sandbox mounts it
            // in a namespace of its own; kiln never does.
            let lineage = cx.stored.map(|d| env.lineage(d)).unwrap_or_default();
            let stack = rootfs
                .stack_on(digest, work.tree, &lineage, &|d| env.tree(d).ok())
                .map_err(fail)?;
            rootfs.note_used(&stack);
            let o = dir.join("o");
            let (upper, work_dir, merged) = (o.join("upper"), o.join("work"), o.join("merged"));
            for d in [&upper, &work_dir, &merged] {
                fs::create_dir_all(d).map_err(|e| {
                    fail(SandboxError::Io(crate::diag::io_message(
                        "cannot create",
                        d,
                        &e,
                    )))
                })?;
            }
            // The upper directory is the tree's root: its owner and mode
            // are the root's, as a layer's are.
            rootfs.own(&upper, 0, 0, "").map_err(fail)?;
            let _ = fs::set_permissions(&upper, fs::Permissions::from_mode(0o755));
            sandbox::Root::Overlay {
                packed: stack
                    .iter()
                    .filter_map(|l| Some((rootfs.packed_image(l)?, l.clone())))
                    .collect(),
                lowers: stack,
                upper,
                work: work_dir,
                merged,
            }
        } else {
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                env.progress.emit(Event::Notice {
                    message: if spec.ids.owns_files() {
                        "running as the root of a container (no overlayfs): `run` steps run on a private copy of the stage's tree".into()
                    } else {
                        "not running as root: `run` steps run on a private copy of the stage's tree (no overlayfs), as root of a user namespace of their own; owners cannot change".into()
                    },
                });
            }
            let copy = dir.join("root");
            // A copy a previous command left (settled to be exactly its
            // tree), brought to this tree by writing what differs; else
            // the tree written out.
            let reused = rootfs.take_copy(&copy, digest, work.tree, &|d| env.tree(d).ok());
            if !reused {
                fs::create_dir(&copy).map_err(|e| {
                    fail(SandboxError::Io(crate::diag::io_message(
                        "cannot create",
                        &copy,
                        &e,
                    )))
                })?;
                rootfs.write_whole(&copy, work.tree).map_err(fail)?;
            }
            sandbox::Root::Dir(copy)
        })
    }

    /// Where each mount goes: targets joined to the working directory,
    /// none the root, below `/proc` or `/dev` (but `/dev/shm`), or below
    /// another mount. (An environment-variable secret has none.)
    fn mount_targets(&self, cx: &StepCx<'_>, workdir: &str) -> Result<Vec<String>, Diagnostic> {
        // Targets are joined to the working directory (BuildKit's rule for
        // a relative or absent one); none may be the root itself.
        let mut targets = Vec::with_capacity(self.mounts.len());
        for (i, m) in self.mounts.iter().enumerate() {
            if matches!(m.kind, MountKind::Secret { env: Some(_), .. }) && m.target.is_empty() {
                targets.push(String::new());
                continue;
            }
            let t = tree::normalize(&m.target, workdir);
            if t.is_empty() {
                return Err(Diagnostic::new(
                    Code::RUN_MOUNT,
                    format!(
                        "the mount target `{}` is the root (the working directory is `{workdir}`)",
                        m.target
                    ),
                )
                .with_label(cx.loc.part(i), "this mount")
                .with_help("mount below the root: give an absolute target such as `/src`, or set a working directory first"));
            }
            // bubblewrap makes the sandbox's `/proc` and `/dev` (with
            // links into `/proc`), and resolves a target while the host's
            // root is still at hand: no target below them (but `/dev/shm`),
            // and none below another mount, whose content the tree does not
            // show (a link there could lead anywhere).
            let first = t.split('/').next().unwrap_or("");
            if first == "proc" || (first == "dev" && t != "dev/shm") {
                return Err(Diagnostic::new(
                    Code::RUN_MOUNT,
                    format!(
                        "the mount target `{}` is below `/{first}`, which the sandbox makes",
                        m.target
                    ),
                )
                .with_label(cx.loc.part(i), "this mount")
                .with_help("mount on a directory of the stage's own tree"));
            }
            targets.push(format!("/{t}"));
        }
        for (i, t) in targets.iter().enumerate() {
            if let Some(j) = targets.iter().position(|o| {
                !o.is_empty() && !t.is_empty() && t != o && t.starts_with(&format!("{o}/"))
            }) {
                return Err(Diagnostic::new(
                    Code::RUN_MOUNT,
                    format!(
                        "the mount target `{t}` is below another mount, `{}`",
                        targets[j]
                    ),
                )
                .with_label(cx.loc.part(i), "this mount")
                .with_help(
                    "mount on a directory of the stage's own tree, not below another mount",
                ));
            }
        }
        Ok(targets)
    }

    /// What the command changed, taken into the stage's tree and stored;
    /// what is on disk kept for the next command (as root, the new tree's
    /// layer; without root, the copy settled to be the new tree).
    #[allow(clippy::too_many_arguments)]
    fn keep(
        &self,
        cx: &StepCx<'_>,
        work: &mut Work<'_>,
        rootfs: &Rootfs<'_>,
        on_disk: &sandbox::Root,
        marks: Option<&sandbox::copy::Marks>,
        scaffold: &BTreeSet<String>,
        spec: &sandbox::Spec,
        digest: crate::model::digest::TreeDigest,
        start: &std::sync::Arc<Tree>,
    ) -> Result<(), Diagnostic> {
        let env = cx.env;
        let fail = |e: SandboxError| error(cx, e, None, "");
        match (on_disk, marks) {
            (sandbox::Root::Overlay { upper, .. }, _) => sandbox::upper::apply(
                env.content,
                upper,
                work.tree,
                scaffold,
                spec.ids,
                env.options.unpack_limit,
            ),
            (sandbox::Root::Dir(copy), Some(marks)) => sandbox::copy::apply(
                env.content,
                copy,
                marks,
                work.tree,
                scaffold,
                spec.ids,
                env.options.unpack_limit,
            ),
            (sandbox::Root::Dir(_), None) => {
                Err(SandboxError::Io("the copy's marks are missing".into()))
            }
        }
        .map_err(fail)?;
        // Stored now, encoded once; the upper directory becomes the layer
        // of the new tree, so the next command on it writes nothing out.
        let new_digest = env.content.put_tree_on(work.tree, digest, start)?;
        *work.stored = Some(new_digest);
        // Without root: the copy, settled to be exactly the new tree, is
        // where a next command on that tree starts.
        if let (sandbox::Root::Dir(copy), Some(marks)) = (on_disk, marks)
            && let Ok(Some(seal)) =
                sandbox::copy::settle_sealed(copy, marks, work.tree, scaffold, env.options.epoch)
        {
            // Best effort: a copy not kept is written out again next time.
            let _ = rootfs.keep_copy(copy, new_digest, seal);
        }
        // As root: the new tree's stack is one layer on the stack the
        // command ran on, written from the store (the difference between
        // the two trees' manifests: what the command changed), never the
        // upper directory itself. So the layer holds exactly the tree,
        // whatever else the command left there (extended attributes,
        // sockets), and its files are new ones that no process the command
        // handed a descriptor to can reach. A stack another build already
        // made for the same tree is taken as it is.
        if new_digest != digest
            && let sandbox::Root::Overlay { .. } = on_disk
        {
            let load = |d: crate::model::digest::TreeDigest| (d == digest).then(|| start.clone());
            // Best effort: a tree without a stack is layered when needed.
            let _ = rootfs.stack_on(new_digest, work.tree, &[digest], &load);
        }
        Ok(())
    }

    fn attempt(
        &self,
        cx: &StepCx<'_>,
        work: &mut Work<'_>,
        mut spec: sandbox::Spec,
        privileged: bool,
    ) -> Result<bool, Diagnostic> {
        let env = cx.env;
        let key = cx
            .key
            .ok_or_else(|| Diagnostic::internal("a run step ran without its key"))?;
        let fail = |e: SandboxError| error(cx, e, None, "");
        let rootfs = Rootfs {
            layout: env.local.layout(),
            content: env.content,
            epoch: env.options.epoch,
            ids: spec.ids,
            scope: &env.options.scope,
        };
        let digest = cx.current.unwrap_or_else(|| work.tree.digest());
        let dir = rootfs.new_layer_dir().map_err(fail)?;
        let scratch = ScratchDir(dir.clone());
        // The tree the command starts on: the new tree is stored as its
        // differences from it, and as root its layer is (see below).
        let start = std::sync::Arc::new(work.tree.clone());
        let on_disk = self.root_on_disk(cx, work, &rootfs, &dir, digest, privileged, &spec)?;
        let marks = match &on_disk {
            sandbox::Root::Dir(copy) => Some(sandbox::copy::mark(copy).map_err(fail)?),
            sandbox::Root::Overlay { .. } => None,
        };
        // Mount points and the working directory are made where the
        // command's changes go (the copy, or the upper directory, with the
        // tree's own directories on the way).
        let made_in = Scaffold {
            root: match &on_disk {
                sandbox::Root::Dir(copy) => copy.clone(),
                sandbox::Root::Overlay { upper, .. } => upper.clone(),
            },
            layered: matches!(on_disk, sandbox::Root::Overlay { .. }),
            tree: &*work.tree,
            rootfs: &rootfs,
            copied: Default::default(),
        };
        let mut scaffold = BTreeSet::new();
        let mut keep_alive = Vec::new();
        let host = self.sandbox == Sandbox::Host;
        // Normalized again: no `..` leads a path out of the tree.
        let workdir = format!("/{}", tree::normalize(work.config.workdir(), "/"));
        // Mount points the command needs, made in the tree as kiln's own
        // scaffolding (left out of the result unless the command uses
        // them). With `sandbox="host"` only the working directory of the
        // tree is shown (at its own path), so only mounts below it are.
        let in_tree = |dest: &str| -> Option<String> {
            let rel = tree::components(dest.trim_start_matches('/'), Links::Rootfs)
                .unwrap_or_default()
                .join("/");
            let w = workdir.trim_matches('/');
            let below = rel == w || rel.starts_with(&format!("{w}/"));
            (!host || below).then_some(rel)
        };
        if !host {
            for d in ["proc", "dev"] {
                made_in.dir(d, &mut scaffold).map_err(fail)?;
            }
        }
        // The working directory exists for the command, as BuildKit makes
        // it (and it stays, as there).
        let mut kept = BTreeSet::new();
        made_in
            .dir(workdir.trim_start_matches('/'), &mut kept)
            .map_err(fail)?;
        let targets = self.mount_targets(cx, &workdir)?;
        for (i, m) in self.mounts.iter().enumerate() {
            let target = targets[i].as_str();
            if let Some(b) = self.mount(cx, m, target, i, &dir, &rootfs, &mut keep_alive)? {
                if let Some(rel) = in_tree(&b.dest) {
                    if b.src.is_dir() {
                        made_in.dir(&rel, &mut scaffold).map_err(fail)?;
                    } else {
                        made_in.file(&rel, &mut scaffold).map_err(fail)?;
                    }
                }
                if let MountKind::Ssh { .. } = m.kind {
                    spec.env.retain(|(k, _)| k != "SSH_AUTH_SOCK");
                    spec.env.push(("SSH_AUTH_SOCK".into(), b.dest.clone()));
                }
                spec.binds.push(b);
            } else if let MountKind::Tmpfs { size } = m.kind {
                if let Some(rel) = in_tree(target) {
                    made_in.dir(&rel, &mut scaffold).map_err(fail)?;
                }
                spec.tmpfs.push((target.to_string(), size));
            } else if let MountKind::Secret {
                env: Some(var), id, ..
            } = &m.kind
                && let Some(value) = env.options.secrets.get(id)
            {
                spec.env.retain(|(k, _)| k != var);
                spec.env
                    .push((var.clone(), String::from_utf8_lossy(value).into_owned()));
            }
        }
        if self.network.reaches_out() && !host {
            name_resolution(work.tree, &targets, &made_in, &mut scaffold, &mut spec)
                .map_err(fail)?;
        }
        made_in.back_to_epoch(scaffold.iter().chain(kept.iter()), env.options.epoch);
        let t0 = std::time::Instant::now();
        let (result, log) = run_shown(cx, &on_disk, &spec);
        let ms = t0.elapsed().as_millis() as u64;
        drop(keep_alive);
        // A kernel that mounts no EROFS image from a file: the tree is
        // written out again as files, and nothing is packed any more.
        if let (Err(SandboxError::Packed(why)), sandbox::Root::Overlay { lowers, .. }) =
            (&result, &on_disk)
        {
            rootfs.packing_failed(lowers);
            env.progress.emit(Event::Notice {
                message: format!(
                    "stage `{}`: a packed layer could not be mounted ({why}); layers are kept as files on this kernel",
                    cx.stage.name
                ),
            });
            drop(scratch);
            return self.attempt(cx, work, spec, privileged);
        }
        // The layers' seals were checked while the command ran (see
        // `Rootfs::stack_of`): a command that ran on a changed layer,
        // whatever it did, is run again rather than believed.
        if let sandbox::Root::Overlay { lowers, .. } = &on_disk
            && !rootfs.confirm(lowers)
        {
            return Ok(false);
        }
        self.conclude(
            cx,
            work,
            (result, log, ms, key),
            &rootfs,
            &on_disk,
            marks.as_ref(),
            &scaffold,
            &spec,
            digest,
            &start,
        )?;
        drop(scratch);
        Ok(true)
    }

    /// After the command: its output saved, its verdict (a test's run),
    /// and what it made kept (a test stopped at its time limit keeps
    /// nothing: its processes were killed, and may not all be gone yet).
    #[allow(clippy::too_many_arguments)]
    fn conclude(
        &self,
        cx: &StepCx<'_>,
        work: &mut Work<'_>,
        (result, log, ms, key): (
            Result<(), SandboxError>,
            Output,
            u64,
            crate::model::digest::StepKey,
        ),
        rootfs: &Rootfs<'_>,
        on_disk: &sandbox::Root,
        marks: Option<&sandbox::copy::Marks>,
        scaffold: &BTreeSet<String>,
        spec: &sandbox::Spec,
        digest: crate::model::digest::TreeDigest,
        start: &std::sync::Arc<Tree>,
    ) -> Result<(), Diagnostic> {
        let env = cx.env;
        let secrets = &env.options.secrets;
        let saved = env.save_log(key, &secrets.redact(&log.all), &[]);
        let output = String::from_utf8_lossy(&secrets.redact(&log.tail)).into_owned();
        let timed_out = matches!(result, Err(SandboxError::Timeout(_)));
        *work.test = self.verdict(cx, result, ms, saved, &output)?;
        if timed_out {
            return Ok(());
        }
        let kept = self.keep(
            cx, work, rootfs, on_disk, marks, scaffold, spec, digest, start,
        );
        // A test whose files cannot be taken into the tree (a name that is
        // not UTF-8, more than `--max-unpack-size`) failed, whatever its
        // status: said so with its output, and the stage goes on without
        // what it made.
        if let (Err(d), Some(end)) = (&kept, work.test.as_mut())
            && !d.is_damage()
        {
            *work.tree = (**start).clone();
            end.run.passed = false;
            let failure = Diagnostic::new(
                Code::TEST_FAILED,
                format!("test failed: {}, and {}", end.run.status, d.message),
            )
            .with_label(cx.span(), "this test");
            end.failure = Some(with_output(failure, None, &output));
            return Ok(());
        }
        kept
    }
}

impl RunOp {
    /// What a command's end means: for a `run`, nothing or its error; for
    /// a test, its run (and when it failed, the failure the build reports).
    fn verdict(
        &self,
        cx: &StepCx<'_>,
        result: Result<(), SandboxError>,
        ms: u64,
        saved: Option<PathBuf>,
        output: &str,
    ) -> Result<Option<TestEnd>, Diagnostic> {
        let status = match (result, self.test.is_some()) {
            (Ok(()), false) => return Ok(None),
            (Ok(()), true) => {
                return Ok(Some(TestEnd {
                    run: TestRun {
                        passed: true,
                        status: "exit 0".into(),
                        ms,
                        tail: tail(output),
                    },
                    failure: None,
                }));
            }
            // A test's verdict: recorded, and the stage goes on.
            (Err(SandboxError::Exit(c)), true) => format!("exit {c}"),
            (Err(SandboxError::Signal(n)), true) => format!("killed by signal {n}"),
            (Err(SandboxError::Timeout(t)), true) => format!(
                "ran longer than its time limit of {}",
                crate::units::format_duration(t)
            ),
            (Err(e), _) => return Err(error(cx, e, saved, output)),
        };
        let failure = Diagnostic::new(Code::TEST_FAILED, format!("test failed: {status}"))
            .with_label(cx.span(), "this test");
        Ok(Some(TestEnd {
            run: TestRun {
                passed: false,
                status,
                ms,
                tail: tail(output),
            },
            failure: Some(with_output(failure, saved, output)),
        }))
    }
}

/// With a network, names resolve as on the host. A symlink there
/// (`/etc/resolv.conf` to systemd's stub, say) is followed inside the
/// tree, as a container runtime does; where it leads must be the tree's
/// own (not below `/proc`, `/dev` or a mount).
fn name_resolution(
    tree: &Tree,
    targets: &[String],
    made_in: &Scaffold<'_>,
    scaffold: &mut BTreeSet<String>,
    spec: &mut sandbox::Spec,
) -> Result<(), SandboxError> {
    for f in ["/etc/resolv.conf", "/etc/hosts"] {
        if !Path::new(f).is_file() {
            continue;
        }
        let Ok(rel) = tree.resolve(f.trim_start_matches('/'), true, Links::Rootfs) else {
            continue;
        };
        let first = rel.split('/').next().unwrap_or("");
        let below_mount = targets.iter().any(|t| {
            let t = t.trim_start_matches('/');
            rel == t || rel.starts_with(&format!("{t}/"))
        });
        if first == "proc" || first == "dev" || below_mount || rel.is_empty() {
            continue;
        }
        made_in.file(&rel, scaffold)?;
        spec.binds.push(Bind {
            src: PathBuf::from(f),
            dest: format!("/{rel}"),
            writable: false,
        });
    }
    Ok(())
}

/// Run the command, its output shown as it comes (secrets redacted) and
/// kept for the log. What is shown and kept is bounded (a command
/// printing without end costs kiln no more than the limit), and lines
/// are cut where they end, or every 64 KiB for output without newlines.
fn run_shown(
    cx: &StepCx<'_>,
    on_disk: &sandbox::Root,
    spec: &sandbox::Spec,
) -> (Result<(), SandboxError>, Output) {
    let env = cx.env;
    let mut log: Vec<u8> = Vec::new();
    let mut last: Vec<u8> = Vec::new();
    let mut pending = String::new();
    let mut last_emit = std::time::Instant::now();
    let secrets = &env.options.secrets;
    let emit = |text: &str| {
        if !text.is_empty() {
            let text = secrets.redact(text.as_bytes());
            env.progress.emit(Event::StepOutput {
                stage: cx.stage.name.clone(),
                step: cx.index,
                text: String::from_utf8_lossy(&text).trim_end().to_string(),
            });
        }
    };
    let mut shown = 0usize;
    let mut cut_off = false;
    let result = sandbox::run(on_disk, spec, &env.cancel, &mut |_s: Stream, bytes| {
        if log.len() < LOG_LIMIT {
            log.extend_from_slice(&bytes[..bytes.len().min(LOG_LIMIT - log.len())]);
        }
        // The end of the output, whatever its length.
        last.extend_from_slice(&bytes[bytes.len().saturating_sub(TAIL_BYTES)..]);
        if last.len() > 2 * TAIL_BYTES {
            last.drain(..last.len() - TAIL_BYTES);
        }
        if shown >= LOG_LIMIT {
            if !cut_off {
                cut_off = true;
                emit("(the rest of the output is not shown: more than 64 MiB)");
            }
            return;
        }
        pending.push_str(&String::from_utf8_lossy(bytes));
        let full = pending.len() > 64 << 10;
        if full || last_emit.elapsed().as_millis() >= 100 {
            let cut = match pending.rfind('\n') {
                Some(c) => Some(c + 1),
                None if full => Some(pending.len()),
                None => None,
            };
            if let Some(cut) = cut {
                let lines: String = pending.drain(..cut).collect();
                shown += lines.len();
                emit(&lines);
                last_emit = std::time::Instant::now();
            }
        }
    });
    if !cut_off {
        emit(&pending);
    }
    let tail = last.split_off(last.len().saturating_sub(TAIL_BYTES));
    (result, Output { all: log, tail })
}

/// What a command printed: the start (the log keeps up to [`LOG_LIMIT`]
/// bytes) and the end ([`TAIL_BYTES`], what a failure and a test's
/// report show).
struct Output {
    all: Vec<u8>,
    tail: Vec<u8>,
}

impl RunOp {
    /// The command line, environment, user and settings of the sandbox.
    fn spec(
        &self,
        cx: &StepCx<'_>,
        config: &ImageConfig,
        user: &User,
    ) -> Result<sandbox::Spec, Diagnostic> {
        let argv = if self.exec {
            self.command.clone()
        } else {
            let mut a = config
                .shell
                .clone()
                .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
            a.extend(self.command.iter().cloned());
            a
        };
        if argv.is_empty() {
            return Err(Diagnostic::new(Code::RUN_EMPTY, "the command is empty")
                .with_label(cx.span(), "this step"));
        }
        let mut env: Vec<(String, String)> = config.env.clone();
        for (k, v) in &self.env {
            env.retain(|(n, _)| n != k);
            env.push((k.clone(), v.clone()));
        }
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        if !env.iter().any(|(k, _)| k == "HOME") {
            env.push(("HOME".into(), user.home.clone()));
        }
        // As BuildKit passes it (an `ENV` of the same name wins).
        let epoch = cx.env.options.epoch;
        if epoch != 0 && !env.iter().any(|(k, _)| k == "SOURCE_DATE_EPOCH") {
            env.push(("SOURCE_DATE_EPOCH".into(), epoch.to_string()));
        }
        Ok(sandbox::Spec {
            argv,
            env,
            cwd: format!("/{}", tree::normalize(config.workdir(), "/")),
            user: (user.uid, user.gid, user.groups.clone()),
            network: self.network.reaches_out(),
            host_root: self.sandbox == Sandbox::Host,
            binds: Vec::new(),
            tmpfs: Vec::new(),
            timeout: self.timeout,
            ids: sandbox::Ids::of_this_process(),
        })
    }

    /// Fail before any sandbox work when the program is not in the tree
    /// (`/bin/sh` in a stage from scratch is the common case), naming it.
    fn check_program(
        &self,
        cx: &StepCx<'_>,
        tree: &Tree,
        spec: &sandbox::Spec,
    ) -> Result<(), Diagnostic> {
        let program = &spec.argv[0];
        let path = spec
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
        if program_in_tree(tree, program, path, &spec.cwd) {
            return Ok(());
        }
        let what = if self.exec { "program" } else { "shell" };
        let help = if tree.get("bin").is_none() && tree.get("usr").is_none() {
            "the stage has no programs at all: build it on an image (`from image=\"…\"`), or copy the program in before this step".to_string()
        } else if program.contains('/') {
            format!("check the path, or install `{program}` in an earlier step")
        } else {
            format!(
                "`{program}` is looked up in PATH ({path}); give its full path or install it in an earlier step"
            )
        };
        Err(Diagnostic::new(
            Code::RUN_NO_PROGRAM,
            format!("the stage has no {what} `{program}` to run this command"),
        )
        .with_label(cx.span(), "this command")
        .with_help(help))
    }

    /// Prepare one mount; `None` for mounts that are not binds.
    #[allow(clippy::too_many_arguments)]
    fn mount(
        &self,
        cx: &StepCx<'_>,
        m: &RunMount,
        target: &str,
        i: usize,
        dir: &Path,
        rootfs: &Rootfs<'_>,
        keep_alive: &mut Vec<Box<dyn std::any::Any>>,
    ) -> Result<Option<Bind>, Diagnostic> {
        let at = MountAt {
            cx,
            i,
            target,
            dir,
            rootfs,
        };
        let bind = |src: PathBuf, writable: bool| {
            Some(Bind {
                src,
                dest: target.to_string(),
                writable,
            })
        };
        match &m.kind {
            MountKind::Bind { from, source, rw } => {
                let host = dir.join(format!("bind-{i}"));
                let host = self.materialize(cx, *from, source, &host, i, true, rootfs)?;
                Ok(bind(host, *rw))
            }
            MountKind::Cache {
                id,
                sharing,
                readonly,
                from,
                source,
                mode,
                uid,
                gid,
            } => {
                let data = at.cache_slot(id, *sharing, keep_alive)?;
                if !data.exists() {
                    let fresh = data.with_extension("new");
                    let _ = fs::remove_dir_all(&fresh);
                    match from {
                        Some(f) => {
                            self.materialize(cx, *f, source, &fresh, i, false, rootfs)?;
                        }
                        None => fs::create_dir_all(&fresh)
                            .map_err(|e| at.io("cannot create", &fresh, e))?,
                    }
                    rootfs
                        .own(&fresh, *uid, *gid, target)
                        .map_err(|e| error(cx, e, None, ""))?;
                    let _ = fs::set_permissions(&fresh, fs::Permissions::from_mode(*mode));
                    fs::rename(&fresh, &data).map_err(|e| at.io("cannot create", &data, e))?;
                }
                Ok(bind(data, !readonly))
            }
            MountKind::Tmpfs { .. } => Ok(None),
            MountKind::Secret {
                id,
                required,
                env: var,
                mode,
                uid,
                gid,
            } => {
                let Some(value) = at.secret(id, *required)? else {
                    return Ok(None);
                };
                if var.is_some() {
                    return Ok(None);
                }
                // In memory (never in the state directory), removed after.
                let owner = rootfs.ids.host_owner(*uid, *gid).map_err(|e| {
                    Diagnostic::new(Code::RUN_SECRET, format!("the secret's owner: {e}"))
                        .with_label(at.span(), "this mount")
                })?;
                let file = SecretFile::write(value, *mode, owner).map_err(|e| {
                    Diagnostic::new(
                        Code::RUN_SECRET_ENV,
                        format!("cannot hold the secret `{id}`: {e}"),
                    )
                    .with_label(at.span(), "this mount")
                })?;
                let src = file.file.clone();
                keep_alive.push(Box::new(file));
                Ok(bind(src, false))
            }
            MountKind::Ssh {
                id,
                required,
                uid,
                gid,
                mode,
            } => match cx.env.options.ssh.get(id) {
                // The agent's socket is the user's: the sandbox's ids
                // cannot open it, so it is reached through a socket of
                // the sandbox's that kiln forwards.
                Some(socket) if rootfs.ids.owns_files() => {
                    let path = dir.join(format!("ssh-{i}.sock"));
                    let owner = rootfs.ids.host_owner(*uid, *gid).map_err(|e| {
                        Diagnostic::new(Code::RUN_SSH, format!("the socket's owner: {e}"))
                            .with_label(at.span(), "this mount")
                    })?;
                    let proxy =
                        forward::Forward::start(&path, socket, owner, *mode).map_err(|e| {
                            Diagnostic::new(
                                Code::RUN_SSH_ENV,
                                format!("cannot forward the SSH agent `{id}`: {e}"),
                            )
                            .with_label(at.span(), "this mount")
                        })?;
                    keep_alive.push(Box::new(proxy));
                    Ok(bind(path, true))
                }
                Some(socket) => Ok(bind(socket.clone(), true)),
                None if *required => Err(Diagnostic::new(
                    Code::RUN_SSH,
                    format!("the SSH agent `{id}` is required but was not given"),
                )
                .with_label(at.span(), "this mount")
                .with_help("give it with `kiln build --ssh default` (forwards $SSH_AUTH_SOCK)")),
                None => Ok(None),
            },
        }
    }

    /// Write a stage's or context's directory (or, when `files` allows,
    /// single file) for a mount under `dest`, with the tree's modes and
    /// owners; returns the path to bind.
    #[allow(clippy::too_many_arguments)]
    fn materialize(
        &self,
        cx: &StepCx<'_>,
        from: CopyFrom,
        source: &str,
        dest: &Path,
        i: usize,
        files: bool,
        rootfs: &Rootfs<'_>,
    ) -> Result<PathBuf, Diagnostic> {
        let span = cx.loc.part(i);
        let written = |e: SandboxError| error(cx, e, None, "");
        // A single file is written as `FILE` in `dest`, and bound alone.
        let single = |entry: tree::Entry| -> Result<PathBuf, Diagnostic> {
            let mut t = Tree::new();
            t.entries.insert("FILE".to_string(), entry);
            fs::create_dir_all(dest).map_err(|e| Diagnostic::io("cannot create", dest, &e))?;
            rootfs.write_whole(dest, &t).map_err(written)?;
            Ok(dest.join("FILE"))
        };
        let not_dir = |what: String| {
            Diagnostic::new(Code::RUN_MOUNT_FAILED, format!("{what} is not a directory"))
                .with_label(span, "this mount")
                .with_help("a cache mount starts from a directory")
        };
        let (t, sub) = match from {
            CopyFrom::Stage(src) => {
                let t = cx.input_tree(src)?;
                let dir = tree::components(source, Links::Rootfs)
                    .map(|c| c.join("/"))
                    .unwrap_or_default();
                let dir = t.resolve(&dir, true, Links::Rootfs).map_err(|e| {
                    Diagnostic::new(
                        Code::RUN_MOUNT_FAILED,
                        format!("cannot mount `{source}`: {e}"),
                    )
                    .with_label(span, "this mount")
                })?;
                if !dir.is_empty() && !t.is_dir(&dir) {
                    let name = &cx.graph().stage(src).name;
                    return match t.get(&dir) {
                        Some(e) if files => single(e.clone()),
                        Some(_) => Err(not_dir(format!("`{source}` in stage `{name}`"))),
                        None => Err(Diagnostic::new(
                            Code::RUN_MOUNT_FAILED,
                            format!("stage `{name}` has no `{source}`"),
                        )
                        .with_label(span, "this mount")
                        .with_help("mount a path the stage has")),
                    };
                }
                ((*t).clone(), dir)
            }
            CopyFrom::Context(ctx) => {
                let snap = cx.env.context(ctx)?;
                let picked =
                    pick_from_context(&snap, &[Spanned::new(span, source.to_string())], &[])?;
                ingest(cx.content(), &snap, &picked)?;
                let mut out = Tree::new();
                for p in picked {
                    if p.is_dir {
                        for (rel, e) in p.items {
                            out.entries.insert(rel, e);
                        }
                    } else if let Some((_, e)) = p.items.into_iter().next() {
                        if !files {
                            return Err(not_dir(format!("`{source}` in the context")));
                        }
                        return single(e);
                    }
                }
                (out, String::new())
            }
        };
        fs::create_dir_all(dest).map_err(|e| Diagnostic::io("cannot create", dest, &e))?;
        rootfs.write_subtree(dest, &t, &sub).map_err(written)?;
        Ok(dest.to_path_buf())
    }
}

/// The source directory of a bind mount (`/` when not said).
/// With `sandbox="host"` the stage's working directory is shown at its
/// own path over the host's system, so it must be a directory the host's
/// root does not have (`/work`, not `/` or `/usr/src`).
fn check_host_workdir(cx: &StepCx<'_>, cwd: &str) -> Result<(), Diagnostic> {
    let top = cwd.trim_start_matches('/').split('/').next().unwrap_or("");
    let taken = top.is_empty() || Path::new("/").join(top).symlink_metadata().is_ok();
    if !taken {
        return Ok(());
    }
    let shown = if top.is_empty() {
        "the stage's working directory is `/`".to_string()
    } else {
        format!("the working directory `{cwd}` is under the host's `/{top}`")
    };
    Err(Diagnostic::new(
        Code::RUN_HOST_WORKDIR,
        format!("a `sandbox=\"host\"` step shows the host's system with the stage's working directory over it, but {shown}"),
    )
    .with_label(cx.span(), "this step"))
}

/// Whether `program` names a file of the tree, as `execvp` would find it:
/// a path with a slash from the working directory, a bare name in PATH.
fn program_in_tree(tree: &Tree, program: &str, path: &str, cwd: &str) -> bool {
    let is_file = |p: &str| {
        tree.resolve(p, true, Links::Rootfs)
            .ok()
            .and_then(|r| tree.get(&r).map(|e| !e.is_dir()))
            .unwrap_or(false)
    };
    if program.contains('/') {
        return is_file(&tree::normalize(program, cwd));
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .any(|d| is_file(&tree::normalize(&tree::join(d, program), cwd)))
}

fn bind_source(m: &RunMount) -> &str {
    match &m.kind {
        MountKind::Bind { source, .. } | MountKind::Cache { source, .. } => source,
        _ => "/",
    }
}

/// The blake3 of a host file.
fn host_digest(path: &str) -> std::io::Result<String> {
    let mut f = fs::File::open(path)?;
    Ok(crate::context::hash_reader(&mut f)?.hex())
}

/// Who a command runs as.
/// The stage's user, looked up in the tree, or a located error.
fn resolve_user(cx: &StepCx<'_>, tree: &Tree, config: &ImageConfig) -> Result<User, Diagnostic> {
    users::resolve(cx.content(), tree, config.user.as_deref()).map_err(|e| match e {
        users::Error::Store(d) => d,
        users::Error::Unknown { what, name } => {
            let spec = config.user.clone().unwrap_or_default();
            Diagnostic::new(Code::RUN_USER, format!("unknown {what} `{name}`")).with_label(
                cx.span(),
                format!(
                    "runs as `{spec}`, which the stage's /etc/passwd and /etc/group do not name"
                ),
            )
        }
    })
}

/// One mount of a `run` step being made: the step, the mount's index and
/// target, the step's scratch directory and the tree's layers.
struct MountAt<'a> {
    cx: &'a StepCx<'a>,
    i: usize,
    target: &'a str,
    dir: &'a Path,
    rootfs: &'a Rootfs<'a>,
}

impl MountAt<'_> {
    fn span(&self) -> crate::diag::Span {
        self.cx.loc.part(self.i)
    }

    fn io(&self, what: &str, p: &Path, e: std::io::Error) -> Diagnostic {
        Diagnostic::io(what, p, &e).with_label(self.span(), "this mount")
    }

    /// The directory of a cache mount, locked as its sharing says (the
    /// lock held in `keep_alive`): the machine's cache of that id, or,
    /// for a private cache in use, one of this step's own.
    fn cache_slot(
        &self,
        id: &str,
        sharing: Sharing,
        keep_alive: &mut Vec<Box<dyn std::any::Any>>,
    ) -> Result<PathBuf, Diagnostic> {
        let layout = self.cx.env.local.layout();
        let caches = layout.cache_mounts(&self.rootfs.ids.tag());
        // Without an id, the cache is its target's.
        let id = if id.is_empty() { self.target } else { id };
        let name: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let name = format!("{name}-{}", &blake3::hash(id.as_bytes()).to_hex()[..12]);
        if !caches.is_dir() {
            layout
                .private_dir(&caches)
                .map_err(|e| self.io("cannot create", &caches, e))?;
        }
        let lock_path = caches.join(format!("{name}.lock"));
        let lock = fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| self.io("cannot open", &lock_path, e))?;
        // Used now: `kiln gc` removes cache mounts long unused.
        let _ = lock.set_modified(std::time::SystemTime::now());
        let mut data = caches.join(&name);
        match sharing {
            Sharing::Shared => {
                let _ = lock.lock_shared();
            }
            Sharing::Locked => {
                lock.lock()
                    .map_err(|e| self.io("cannot lock", &lock_path, e))?;
            }
            Sharing::Private => {
                if lock.try_lock().is_err() {
                    // In use: this step gets a cache of its own.
                    data = self.dir.join(format!("cache-{}", self.i));
                }
            }
        }
        keep_alive.push(Box::new(lock));
        Ok(data)
    }

    /// A secret's value; `None` (said) when it was not given and the
    /// mount does not require it.
    fn secret(&self, id: &str, required: bool) -> Result<Option<&[u8]>, Diagnostic> {
        let env = self.cx.env;
        if let Some(value) = env.options.secrets.get(id) {
            return Ok(Some(value));
        }
        if required {
            return Err(Diagnostic::new(
                Code::RUN_SECRET,
                format!("the secret `{id}` is required but was not given"),
            )
            .with_label(self.span(), "this mount")
            .with_help(format!(
                "give it with `kiln build --secret id={id},src=FILE` (or `env=VAR`)"
            )));
        }
        env.progress.emit(Event::Notice {
            message: format!(
                "#{} [{}]: the secret `{id}` was not given, so the command runs without it (`--secret id={id},src=FILE` gives it)",
                self.cx.stage.name,
                self.cx.index + 1
            ),
        });
        Ok(None)
    }
}

/// Where mount points and the working directory are made for a command:
/// in the private copy itself, or in the overlay's upper directory, where
/// the tree's directories on the way are made with the tree's owner and
/// mode first (as overlayfs copies them up), so the command sees them
/// unchanged.
struct Scaffold<'a> {
    root: PathBuf,
    layered: bool,
    tree: &'a Tree,
    rootfs: &'a Rootfs<'a>,
    /// The tree's directories made in the upper directory.
    copied: std::cell::RefCell<Vec<String>>,
}

impl Scaffold<'_> {
    /// Making the scaffolding changed its directories' times: back to
    /// the epoch, as the tree's own, so a command finds the same times
    /// however its tree came to be on disk.
    fn back_to_epoch<'r>(&self, made: impl Iterator<Item = &'r String>, epoch: u64) {
        for rel in made {
            let _ = crate::fsutil::set_epoch_times(&self.root.join(rel), epoch);
            let _ = crate::fsutil::set_epoch_times(&self.root.join(tree::parent(rel)), epoch);
        }
        for rel in self.copied.borrow().iter() {
            let _ = crate::fsutil::set_epoch_times(&self.root.join(rel), epoch);
        }
    }

    /// Make `rel` (and missing parents) a directory, remembering in `made`
    /// what the tree did not have.
    fn dir(&self, rel: &str, made: &mut BTreeSet<String>) -> Result<(), SandboxError> {
        let mut here = String::new();
        // Components as the tree has them: `..` never climbs out of `root`.
        let parts = tree::components(rel, Links::Rootfs).unwrap_or_default();
        for part in &parts {
            here = tree::join(&here, part);
            let p = self.root.join(&here);
            let not_dir = || {
                SandboxError::Setup(format!(
                    "cannot mount at `/{here}`: it is not a directory in the stage"
                ))
            };
            let create = |p: &Path| {
                fs::create_dir(p).map_err(|e| {
                    SandboxError::Setup(crate::diag::io_message("cannot create", p, &e))
                })
            };
            if self.layered {
                if made.contains(&here) || fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                    continue;
                }
                match self.tree.get(&here) {
                    Some(e) if e.is_dir() => {
                        create(&p)?;
                        self.rootfs.own(&p, e.uid, e.gid, &here)?;
                        fs::set_permissions(&p, fs::Permissions::from_mode(e.mode)).map_err(
                            |err| {
                                SandboxError::Setup(crate::diag::io_message(
                                    "cannot set the mode of",
                                    &p,
                                    &err,
                                ))
                            },
                        )?;
                        self.copied.borrow_mut().push(here.clone());
                    }
                    Some(_) => return Err(not_dir()),
                    None => {
                        create(&p)?;
                        self.rootfs.own(&p, 0, 0, &here)?;
                        made.insert(here.clone());
                    }
                }
                continue;
            }
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(not_dir()),
                Err(_) => {
                    create(&p)?;
                    made.insert(here.clone());
                }
            }
        }
        Ok(())
    }

    /// Make `rel` an (empty) file, for a file to be mounted on. What is
    /// there already must be a file: bubblewrap would follow a symlink
    /// while the host's root is still at hand.
    fn file(&self, rel: &str, made: &mut BTreeSet<String>) -> Result<(), SandboxError> {
        self.dir(tree::parent(rel), made)?;
        let p = self.root.join(rel);
        let not_file = |what: &str| {
            SandboxError::Setup(format!(
                "cannot mount a file at `/{rel}`: it is {what} in the stage"
            ))
        };
        let exists = if self.layered {
            match self.tree.get(rel) {
                Some(e) if matches!(e.kind, tree::Kind::File { .. }) => true,
                Some(e) if matches!(e.kind, tree::Kind::Symlink { .. }) => {
                    return Err(not_file("a symlink"));
                }
                Some(e) if e.is_dir() => return Err(not_file("a directory")),
                Some(_) => return Err(not_file("not a regular file")),
                None => made.contains(rel),
            }
        } else {
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_file() => true,
                Ok(m) if m.file_type().is_symlink() => return Err(not_file("a symlink")),
                Ok(m) if m.is_dir() => return Err(not_file("a directory")),
                Ok(_) => return Err(not_file("not a regular file")),
                Err(_) => false,
            }
        };
        if !exists {
            fs::File::create(&p).map_err(|e| {
                SandboxError::Setup(crate::diag::io_message("cannot create", &p, &e))
            })?;
            self.rootfs.own(&p, 0, 0, rel)?;
            made.insert(rel.to_string());
        }
        Ok(())
    }
}

/// A directory removed when dropped.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        crate::fsutil::remove_any(&self.0);
    }
}

/// A secret's bytes in a file in memory (`/dev/shm`), in a directory of
/// its own that only kiln's user may enter (whatever `mode=` the file
/// has, no other user of the machine can reach it); removed when dropped.
struct SecretFile {
    dir: PathBuf,
    file: PathBuf,
}

impl SecretFile {
    fn write(value: &[u8], mode: u32, (uid, gid): (u32, u32)) -> std::io::Result<SecretFile> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nonce = blake3::hash(
            format!(
                "{:?}{}{}",
                std::time::SystemTime::now(),
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )
            .as_bytes(),
        )
        .to_hex()[..16]
            .to_string();
        let dir = base.join(format!("kiln-secret-{nonce}"));
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let secret = SecretFile {
            file: dir.join("secret"),
            dir,
        };
        let mut f = fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret.file)?;
        f.write_all(value)?;
        let _ = std::os::unix::fs::fchown(&f, Some(uid), Some(gid));
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        Ok(secret)
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.file);
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The last lines of a command's output, as a test's report keeps them
/// (at most [`TAIL_LINES`] lines and [`TAIL_BYTES`]).
fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.trim_end().lines().collect();
    let mut tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    if tail.len() > TAIL_BYTES {
        let mut cut = tail.len() - TAIL_BYTES;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail.drain(..cut);
    }
    if !tail.is_empty() {
        tail.push('\n');
    }
    tail
}

/// A failed run as a diagnostic, with the output's last lines.
fn error(cx: &StepCx<'_>, e: SandboxError, log: Option<PathBuf>, output: &str) -> Diagnostic {
    let (code, help) = match &e {
        // bubblewrap exits with 128 + the signal that killed the command.
        SandboxError::Exit(code) if *code == 128 + libc::SIGSYS => (
            Code::RUN_EXIT,
            "the command was killed by SIGSYS: the sandbox's seccomp filter (Docker's default profile) stopped a system call it refuses, or a 32-bit program, which the filter does not let run".to_string(),
        ),
        SandboxError::Exit(_) | SandboxError::Signal(_) => (
            Code::RUN_EXIT,
            "its output is below".to_string(),
        ),
        SandboxError::Timeout(_) => (
            Code::RUN_TIMEOUT,
            "raise the limit with `timeout=` on the step if the work is expected to take this long"
                .to_string(),
        ),
        SandboxError::Interrupted => (
            Code::RUN_INTERRUPTED,
            "run the build again; the steps that finished are cached".to_string(),
        ),
        SandboxError::Changes(_) => (
            Code::RUN_CHANGES,
            "remove what the command leaves behind before it ends".to_string(),
        ),
        SandboxError::Store(s) => return s.diagnostic(),
        SandboxError::Setup(_) | SandboxError::Packed(_) | SandboxError::Io(_) => (
            Code::RUN_SANDBOX,
            "kiln runs commands with bubblewrap (0.5 or later) in user namespaces (`kernel.unprivileged_userns_clone`, `user.max_user_namespaces`), over overlayfs as root: check that they are available".to_string(),
        ),
    };
    let d = Diagnostic::new(code, e.to_string())
        .with_label(cx.span(), "this command")
        .with_help(help);
    with_output(d, log, output)
}

/// A diagnostic with a command's last lines of output, and where the
/// whole output is.
fn with_output(mut d: Diagnostic, log: Option<PathBuf>, output: &str) -> Diagnostic {
    let tail: Vec<&str> = output.trim_end().lines().collect();
    if !tail.is_empty() {
        d = d.with_note(format!(
            "last lines of its output:\n{}",
            tail[tail.len().saturating_sub(TAIL_LINES)..].join("\n")
        ));
    }
    if let Some(l) = log {
        d = d.with_note(format!("whole output: {}", l.display()));
    }
    d
}
