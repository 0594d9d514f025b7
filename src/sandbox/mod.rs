//! Running commands in a sandbox: bubblewrap over an overlayfs view of a
//! stage's tree. The only module that runs programs of the build.
//!
//! A command sees the stage's tree as `/` (writable: writes go to a fresh
//! overlay upper directory, so the tree's layers never change), a fresh
//! `/proc`, a minimal `/dev`, its own PID, IPC, UTS and mount namespaces,
//! no network unless it asks, no host environment, only the mounts it
//! declares. As `root` it keeps Docker's default capabilities; as another
//! user it runs as that user (through `setpriv`) in a user namespace of
//! its own, so files it makes are owned by it. The whole process tree is
//! killed on timeout, on Ctrl-C, and when kiln dies.
//!
//! [`rootfs`] keeps trees on disk as stacked layers; [`upper`] reads back
//! what a command changed. Without root, [`copy`] stands in for both: the
//! tree is written out as a private directory, the command runs as root of
//! a user namespace of its own, and the changes are found by comparison.

pub mod copy;
pub mod rootfs;
pub mod upper;

use crate::store::StoreError;
use command_fds::{CommandFdExt, FdMapping};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Why a command could not run, or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The command left something a tree cannot hold.
    #[error("{0}")]
    Changes(String),
    /// The sandbox could not be set up (bwrap missing, mount refused…).
    #[error("{0}")]
    Setup(String),
    #[error("the command exited with status {0}")]
    Exit(i32),
    #[error("the command was killed by signal {0}")]
    Signal(i32),
    #[error("the command ran longer than its time limit of {}", crate::units::format_duration(*.0))]
    Timeout(Duration),
    #[error("the command was stopped: the build was interrupted")]
    Interrupted,
}

/// The tree entry for what a command left at `path` (a file, read into
/// the store, or a symlink), found as `name` in `dir`; `None` for a
/// socket (a daemon's leftover, which images do not hold either). A FIFO
/// or a device node is an error: a tree cannot hold one.
pub(crate) fn leaf(
    content: &dyn crate::store::ContentStore,
    dir: &std::os::fd::OwnedFd,
    name: &str,
    path: &str,
    st: &rustix::fs::Stat,
    (uid, gid): (u32, u32),
    at: &Path,
) -> Result<Option<crate::model::tree::Entry>, SandboxError> {
    use crate::model::tree::{Entry, Kind};
    use rustix::fs::{FileType, OFlags};
    let io = |what: &str, e: rustix::io::Errno| {
        SandboxError::Io(crate::diag::io_message(what, at, &e.into()))
    };
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {
            let f = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| io("cannot open", e))?;
            let (blob, size) = content.put_blob_reader(&mut std::fs::File::from(f), None)?;
            Kind::File { blob, size }
        }
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(dir, name, Vec::new())
                .map_err(|e| io("cannot read the link", e))?;
            let Ok(target) = target.into_string() else {
                return Err(SandboxError::Changes(format!(
                    "the command left the symlink `/{path}`, whose target is not UTF-8"
                )));
            };
            Kind::Symlink { target }
        }
        FileType::Socket => return Ok(None),
        FileType::Fifo => {
            return Err(SandboxError::Changes(format!(
                "the command left the FIFO `/{path}`, which a kiln tree cannot hold"
            )));
        }
        _ => {
            return Err(SandboxError::Changes(format!(
                "the command left the device node `/{path}`, which a kiln tree cannot hold"
            )));
        }
    };
    let mode = match kind {
        Kind::Symlink { .. } => 0o777,
        _ => st.st_mode & 0o7777,
    };
    Ok(Some(Entry {
        kind,
        mode,
        uid,
        gid,
    }))
}

/// An overlay mount of a layer stack, with a fresh upper directory.
/// Unmounted when dropped.
pub struct Overlay {
    pub merged: PathBuf,
    pub upper: PathBuf,
    work: PathBuf,
    mounted: bool,
}

/// Escape a path for overlayfs's option string.
fn escape(p: &Path) -> String {
    let mut out = String::new();
    for c in p.to_string_lossy().chars() {
        if matches!(c, ':' | ',' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Overlay {
    /// Mount `lowers` (top first) with a new upper directory, all below
    /// `dir` (which must exist and be empty, on the same filesystem as
    /// where the upper directory will be kept).
    pub fn mount(lowers: &[PathBuf], dir: &Path) -> Result<Overlay, SandboxError> {
        let io = |what: &str, p: &Path, e: std::io::Error| {
            SandboxError::Setup(crate::diag::io_message(what, p, &e))
        };
        let (merged, upper, work) = (dir.join("merged"), dir.join("upper"), dir.join("work"));
        for d in [&merged, &upper, &work] {
            std::fs::create_dir_all(d).map_err(|e| io("cannot create", d, e))?;
        }
        let lower: Vec<String> = lowers.iter().map(|l| escape(l)).collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off",
            lower.join(":"),
            escape(&upper),
            escape(&work)
        );
        let data = std::ffi::CString::new(options)
            .map_err(|_| SandboxError::Setup("a layer path holds a NUL byte".into()))?;
        rustix::mount::mount(
            "overlay",
            &merged,
            "overlay",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )
        .map_err(|e| {
            SandboxError::Setup(format!(
                "cannot mount the stage's tree (overlayfs, {} layers): {}",
                lowers.len(),
                std::io::Error::from(e)
            ))
        })?;
        Ok(Overlay {
            merged,
            upper,
            work,
            mounted: true,
        })
    }

    /// Unmount (the upper directory stays, holding the changes).
    pub fn unmount(&mut self) -> Result<(), SandboxError> {
        if self.mounted {
            rustix::mount::unmount(&self.merged, rustix::mount::UnmountFlags::DETACH).map_err(
                |e| {
                    SandboxError::Setup(format!(
                        "cannot unmount `{}`: {}",
                        self.merged.display(),
                        std::io::Error::from(e)
                    ))
                },
            )?;
            self.mounted = false;
            let _ = std::fs::remove_dir_all(&self.work);
        }
        Ok(())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

/// A directory (or file) the command sees at `dest`.
#[derive(Clone, Debug)]
pub struct Bind {
    pub src: PathBuf,
    pub dest: String,
    pub writable: bool,
}

/// How to run one command.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The working directory, absolute.
    pub cwd: String,
    /// `(uid, gid, supplementary groups)`; root when `(0, 0, …)`.
    pub user: (u32, u32, Vec<u32>),
    /// Whether the command may reach the network.
    pub network: bool,
    /// Show the host's root (read-only) with the tree at `cwd`, instead of
    /// the tree as `/`.
    pub host_root: bool,
    pub binds: Vec<Bind>,
    /// `(dest, size)` of empty in-memory directories.
    pub tmpfs: Vec<(String, Option<u64>)>,
    pub timeout: Option<Duration>,
    /// Run as root of a user namespace of the command's own (mapped to the
    /// user running kiln): how a command runs when kiln is not root.
    pub userns: bool,
}

/// Which stream output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Docker's default capabilities for a container's root.
const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The descriptors bwrap reports its child on and waits on for the user
/// namespace's maps, when the command runs as a user other than root.
const INFO_FD: i32 = 3;
const BLOCK_FD: i32 = 4;

/// Map the user namespace bwrap made for the command one to one onto the
/// host's ids, then let bwrap go on. bwrap reports its child's pid as JSON
/// on the info pipe and waits on the block pipe until the maps are written
/// (which takes `CAP_SETUID` here, that the user's bwrap lacks).
fn map_user_namespace(
    info: std::os::fd::OwnedFd,
    block: std::os::fd::OwnedFd,
) -> Result<(), SandboxError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| {
        SandboxError::Setup(format!("cannot set up the user namespace: {what}: {e}"))
    };
    let mut text = Vec::new();
    let mut info = std::fs::File::from(info);
    let mut buf = [0u8; 512];
    let pid = loop {
        let n = info
            .read(&mut buf)
            .map_err(|e| setup("reading bwrap's report", &e))?;
        if n == 0 {
            return Err(SandboxError::Setup(
                "bubblewrap stopped before making the user namespace".into(),
            ));
        }
        text.extend_from_slice(&buf[..n]);
        if text.len() > 64 * 1024 {
            return Err(SandboxError::Setup(
                "bubblewrap's report is too long".into(),
            ));
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) {
            match v.get("child-pid").and_then(serde_json::Value::as_u64) {
                Some(p) => break p,
                None => {
                    return Err(SandboxError::Setup(
                        "bubblewrap did not report its child".into(),
                    ));
                }
            }
        }
    };
    for map in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{pid}/{map}"), "0 0 4294967295\n")
            .map_err(|e| setup(&format!("writing {map}"), &e))?;
    }
    let mut block = std::fs::File::from(block);
    std::io::Write::write_all(&mut block, b"1").map_err(|e| setup("waking bubblewrap", &e))?;
    Ok(())
}

/// Whether bubblewrap is installed.
pub fn bwrap_available() -> bool {
    Command::new("bwrap")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The command line that runs `spec` over `root`.
fn command(root: &Path, spec: &Spec) -> Command {
    let (uid, gid, groups) = &spec.user;
    let as_root = *uid == 0;
    let mut c = if as_root {
        Command::new("bwrap")
    } else {
        // bwrap drops to the user by running as the user, in a user
        // namespace that kiln maps to the host's ids one to one (see
        // `map_user_namespace`): what the command creates is owned by the
        // user, files of other users stay theirs and show as theirs, and
        // the supplementary groups are the user's.
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"));
        if groups.is_empty() {
            c.arg("--clear-groups");
        } else {
            c.arg(format!(
                "--groups={}",
                groups
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        c.arg("--").arg("bwrap");
        c
    };
    c.args(["--die-with-parent", "--new-session"]);
    if as_root {
        if spec.userns {
            c.args(["--unshare-user", "--uid", "0", "--gid", "0"]);
        }
        c.args([
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ]);
        if !spec.network {
            c.arg("--unshare-net");
        }
        c.args(["--cap-drop", "ALL"]);
        for cap in CAPS {
            c.args(["--cap-add", cap]);
        }
    } else {
        c.args([
            "--unshare-user",
            "--info-fd",
            &INFO_FD.to_string(),
            "--userns-block-fd",
            &BLOCK_FD.to_string(),
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ]);
        if !spec.network {
            c.arg("--unshare-net");
        }
    }
    c.args(["--hostname", "kiln"]);
    if spec.host_root {
        // The host's system, read-only, entry by entry (so that the
        // working directory, which the host does not have, can be made
        // beside them), with the tree's working directory at its place.
        let mut names: Vec<std::ffi::OsString> = std::fs::read_dir("/")
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        names.sort();
        for name in names {
            let n = name.to_string_lossy();
            if matches!(n.as_ref(), "proc" | "dev" | "sys" | "tmp" | "run") {
                continue;
            }
            let host = Path::new("/").join(&name);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(t) = std::fs::read_link(&host) {
                        c.arg("--symlink").arg(t).arg(&host);
                    }
                }
                Ok(m) if m.is_dir() => {
                    c.arg("--ro-bind").arg(&host).arg(&host);
                }
                _ => {}
            }
        }
        c.arg("--bind").arg(root).arg(&spec.cwd);
        c.args(["--tmpfs", "/tmp"]);
    } else {
        c.arg("--bind").arg(root).arg("/");
    }
    c.args(["--proc", "/proc", "--dev", "/dev"]);
    for b in &spec.binds {
        c.arg(if b.writable { "--bind" } else { "--ro-bind" })
            .arg(&b.src)
            .arg(&b.dest);
    }
    for (dest, size) in &spec.tmpfs {
        if let Some(s) = size {
            c.arg("--size").arg(s.to_string());
        }
        c.arg("--tmpfs").arg(dest);
    }
    c.arg("--clearenv");
    for (k, v) in &spec.env {
        c.arg("--setenv").arg(k).arg(v);
    }
    c.arg("--chdir").arg(&spec.cwd);
    c.arg("--");
    c.args(&spec.argv);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear();
    c
}

/// Run `spec` over the tree mounted at `root`, passing output to `out` as
/// it comes. Stops (killing every process) on timeout or when `cancel` is set.
pub fn run(
    root: &Path,
    spec: &Spec,
    cancel: &Arc<AtomicBool>,
    out: &mut dyn FnMut(Stream, &[u8]),
) -> Result<(), SandboxError> {
    let mut c = command(root, spec);
    let as_user = spec.user.0 != 0;
    let pipes = if as_user {
        let info = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| SandboxError::Setup(format!("cannot make a pipe: {e}")))?;
        let block = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| SandboxError::Setup(format!("cannot make a pipe: {e}")))?;
        let (info_r, info_w) = info;
        let (block_r, block_w) = block;
        c.fd_mappings(vec![
            FdMapping {
                parent_fd: info_w,
                child_fd: INFO_FD,
            },
            FdMapping {
                parent_fd: block_r,
                child_fd: BLOCK_FD,
            },
        ])
        .map_err(|e| SandboxError::Setup(format!("cannot pass descriptors to bubblewrap: {e}")))?;
        Some((info_r, block_w))
    } else {
        None
    };
    let mut child = c.spawn().map_err(|e| {
        SandboxError::Setup(if e.kind() == std::io::ErrorKind::NotFound {
            "bubblewrap (`bwrap`) is not installed: install Debian's `bubblewrap` (and `util-linux` for `setpriv`)".to_string()
        } else {
            format!("cannot start bubblewrap: {e}")
        })
    })?;
    // The command holds the child's ends of the pipes until dropped.
    drop(c);
    if let Some((info_r, block_w)) = pipes
        && let Err(e) = map_user_namespace(info_r, block_w)
    {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    let (tx, rx) = std::sync::mpsc::channel::<(Stream, Vec<u8>)>();
    let mut readers = Vec::new();
    for (stream, pipe) in [
        (
            Stream::Stdout,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            Stream::Stderr,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        let Some(mut pipe) = pipe else { continue };
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send((stream, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }
    drop(tx);
    let started = Instant::now();
    let mut stopped: Option<SandboxError> = None;
    let status = loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok((s, bytes)) => out(s, &bytes),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if stopped.is_none() {
            if cancel.load(Ordering::Relaxed) {
                stopped = Some(SandboxError::Interrupted);
            } else if spec.timeout.is_some_and(|t| started.elapsed() > t) {
                stopped = Some(SandboxError::Timeout(spec.timeout.unwrap_or_default()));
            }
            if stopped.is_some() {
                // bwrap's init is the namespace's PID 1: killing bwrap kills
                // every process of the sandbox.
                let _ = child.kill();
            }
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                return Err(SandboxError::Setup(format!(
                    "cannot wait for the command: {e}"
                )));
            }
        }
    };
    for r in readers {
        let _ = r.join();
    }
    while let Ok((s, bytes)) = rx.try_recv() {
        out(s, &bytes);
    }
    if let Some(e) = stopped {
        return Err(e);
    }
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(code), _) => Err(SandboxError::Exit(code)),
        (None, Some(sig)) => Err(SandboxError::Signal(sig)),
        (None, None) => Err(SandboxError::Exit(-1)),
    }
}
