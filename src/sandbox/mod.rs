//! Running commands in a sandbox: bubblewrap over a stage's tree. The
//! only module that runs programs of the build.
//!
//! A command sees the stage's tree as `/` (writable: writes go to a fresh
//! overlay upper directory, so the tree's layers never change), a fresh
//! `/proc` whose kernel knobs (`/proc/sys`, `sysrq-trigger`, `irq`, `bus`,
//! `fs`) are read-only and whose revealing files are masked as runc masks
//! them, a minimal `/dev`, no `/sys`, its own user, PID, IPC, UTS, cgroup
//! and mount namespaces, no network unless it asks, no host environment,
//! only the mounts it declares, no descriptor but its standard streams,
//! `no_new_privs`, and Docker's default seccomp profile ([`seccomp`]).
//!
//! As root, kiln never gives a command the host's root: the command's ids
//! are an unprivileged range of the host's ([`ids`]), bubblewrap starts as
//! that range's root, and the stage's overlay is mounted in a mount
//! namespace of the sandbox's own, so it goes away with the sandbox
//! ([`child`]). As `root` of the sandbox a command keeps Docker's default
//! capabilities (over its own namespaces only); as another user it has
//! none. The whole process tree is killed on timeout, on Ctrl-C, and when
//! kiln dies.
//!
//! [`rootfs`] keeps trees on disk as stacked layers; [`upper`] reads back
//! what a command changed. Without root, [`copy`] stands in for both: the
//! tree is written out as a private directory, the command runs as root of
//! a user namespace of its own, and the changes are found by comparison.

mod child;
pub mod copy;
pub mod forward;
pub mod ids;
pub mod rootfs;
mod seccomp;
pub mod upper;

pub use ids::Ids;

use crate::store::StoreError;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How deep a command may nest directories in what it leaves (paths
/// deeper cannot be written out or exported by most tools either).
pub const MAX_DEPTH: usize = 512;

/// The error for a directory deeper than [`MAX_DEPTH`], if `path` is.
pub(crate) fn too_deep(path: &str) -> Result<(), SandboxError> {
    if path.bytes().filter(|b| *b == b'/').count() + 1 > MAX_DEPTH {
        let shown: String = path.chars().take(120).collect();
        return Err(SandboxError::Changes(format!(
            "the command left directories nested more than {MAX_DEPTH} deep (`/{shown}…`)"
        )));
    }
    Ok(())
}

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
    /// A packed layer's image could not be mounted (a kernel that mounts
    /// no EROFS image from a file).
    #[error("{0}")]
    Packed(String),
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
/// the store, a symlink or a FIFO), found as `name` in `dir`; `None` for a
/// socket (a daemon's leftover, which images do not hold either). A device
/// node is an error: no command can make one, and kiln takes none back.
///
/// `left` is what the files a command leaves may still add up to (`kiln
/// build --max-unpack-size`): a sparse file of terabytes is refused before
/// it is read, not written into the store.
#[allow(clippy::too_many_arguments)]
pub(crate) fn leaf(
    content: &dyn crate::store::ContentStore,
    dir: &std::os::fd::OwnedFd,
    name: &str,
    path: &str,
    st: &rustix::fs::Stat,
    (uid, gid): (u32, u32),
    at: &Path,
    left: &std::cell::Cell<u64>,
) -> Result<Option<crate::model::tree::Entry>, SandboxError> {
    use crate::model::tree::{Entry, Kind};
    use rustix::fs::{FileType, OFlags};
    let io = |what: &str, e: rustix::io::Errno| {
        SandboxError::Io(crate::diag::io_message(what, at, &e.into()))
    };
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {
            let too_much = || {
                SandboxError::Changes(format!(
                    "the command's files add up to more than {} (at `/{path}`, {}): raise `--max-unpack-size` if that is expected",
                    crate::units::approx_size(left.get()),
                    crate::units::approx_size(st.st_size as u64)
                ))
            };
            if st.st_size as u64 > left.get() {
                return Err(too_much());
            }
            let f = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| io("cannot open", e))?;
            let (blob, size) = content
                .put_blob_reader(&mut std::fs::File::from(f), Some(left.get()))
                .map_err(|e| match e {
                    StoreError::Io { source, .. }
                        if source.kind() == std::io::ErrorKind::FileTooLarge =>
                    {
                        too_much()
                    }
                    other => other.into(),
                })?;
            left.set(left.get() - size);
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
        FileType::Fifo => Kind::Fifo,
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

/// A directory (or file) the command sees at `dest`.
#[derive(Clone, Debug)]
pub struct Bind {
    pub src: PathBuf,
    pub dest: String,
    pub writable: bool,
}

/// Where the stage's tree is for the command.
#[derive(Clone, Debug)]
pub enum Root {
    /// Layers stacked by overlayfs (top first), the command's changes
    /// going to `upper` (as root). Mounted at `merged` in the sandbox's own
    /// mount namespace only.
    Overlay {
        lowers: Vec<PathBuf>,
        /// The EROFS images of packed lowers, with the lower each is
        /// mounted on (before the overlay, in the same namespace).
        packed: Vec<(PathBuf, PathBuf)>,
        upper: PathBuf,
        work: PathBuf,
        merged: PathBuf,
    },
    /// A directory holding the tree (without root).
    Dir(PathBuf),
}

/// How to run one command.
#[derive(Clone, Debug)]
pub struct Spec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The working directory, absolute.
    pub cwd: String,
    /// `(uid, gid, supplementary groups)` in the sandbox; root when `(0, 0, …)`.
    pub user: (u32, u32, Vec<u32>),
    /// Whether the command may reach the network.
    pub network: bool,
    /// Show the host's root (read-only) with the tree's working directory
    /// at `cwd`, instead of the tree as `/`.
    pub host_root: bool,
    pub binds: Vec<Bind>,
    /// `(dest, size)` of empty in-memory directories.
    pub tmpfs: Vec<(String, Option<u64>)>,
    pub timeout: Option<Duration>,
    /// How the sandbox's ids are the host's.
    pub ids: Ids,
}

/// Which stream output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Docker's default capabilities for a container's root (over the
/// sandbox's own namespaces: its root is not the host's).
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

/// Kernel knobs under `/proc` a command may read but not write (runc's
/// read-only paths).
const PROC_READ_ONLY: &[&str] = &["bus", "fs", "irq", "sys", "sysrq-trigger"];
/// What runc masks under `/proc`: files behind `/dev/null`, directories
/// behind an empty read-only tmpfs.
const PROC_MASKED: &[&str] = &[
    "acpi",
    "asound",
    "interrupts",
    "kcore",
    "keys",
    "latency_stats",
    "sched_debug",
    "scsi",
    "timer_list",
    "timer_stats",
];

/// Map the user namespace bwrap made for the command (its child's pid
/// comes as JSON on `info`) to the host's unprivileged range, then let
/// bwrap go on: one byte on `block` for its own wait, one for its
/// child's (bwrap closes the descriptor only where it waits as
/// `--block-fd`, so it is given as both, and nothing of it reaches the
/// command).
fn map_user_namespace(
    info: OwnedFd,
    block: OwnedFd,
    (uid_map, gid_map): &(String, String),
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
    for (map, line) in [("uid_map", uid_map), ("gid_map", gid_map)] {
        std::fs::write(format!("/proc/{pid}/{map}"), line)
            .map_err(|e| setup(&format!("writing {map}"), &e))?;
    }
    let mut block = std::fs::File::from(block);
    std::io::Write::write_all(&mut block, b"11").map_err(|e| setup("waking bubblewrap", &e))?;
    Ok(())
}

/// Whether a command's tree can be an overlay: kiln is root of the
/// machine (the root of a container, whose ids are a part of the host's,
/// cannot mount overlayfs with the attributes kiln reads back).
pub fn overlay_possible() -> bool {
    static POSSIBLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *POSSIBLE.get_or_init(|| {
        rustix::process::geteuid().is_root()
            && std::fs::read_to_string("/proc/self/uid_map")
                .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
    })
}

/// Whether bubblewrap is installed and has what kiln uses (checked once):
/// `--add-seccomp-fd` and `--userns-block-fd` came with bubblewrap 0.5.
pub fn check_bwrap() -> Result<(), String> {
    static CHECKED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    CHECKED.get_or_init(check_bwrap_once).clone()
}

/// The options kiln needs that older bubblewraps lack.
const BWRAP_OPTIONS: [&str; 3] = ["--add-seccomp-fd", "--userns-block-fd", "--info-fd"];

fn check_bwrap_once() -> Result<(), String> {
    // bubblewrap's help text is in its binary: finding every option there
    // answers without starting a process (a few ms of every build); a
    // binary that does not show them (a wrapper script, say) is asked.
    let found = BWRAP_PATH
        .split(':')
        .map(|d| Path::new(d).join("bwrap"))
        .find(|p| p.is_file());
    let small = |p: &PathBuf| std::fs::metadata(p).is_ok_and(|m| m.len() < 16 << 20);
    if let Some(bytes) = found.filter(small).and_then(|p| std::fs::read(p).ok())
        && BWRAP_OPTIONS
            .iter()
            .all(|o| bytes.windows(o.len()).any(|w| w == o.as_bytes()))
    {
        return Ok(());
    }
    let out = Command::new("bwrap")
        .arg("--help")
        .env_clear()
        .env("PATH", BWRAP_PATH)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                "bubblewrap (`bwrap`) is not installed: install Debian's `bubblewrap`".to_string()
            } else {
                format!("cannot run bubblewrap: {e}")
            }
        })?;
    let help = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = BWRAP_OPTIONS
        .into_iter()
        .filter(|o| !help.contains(o))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the installed bubblewrap has no {}: kiln needs bubblewrap 0.5 or later (Debian 12 has 0.8)",
            missing.join(", ")
        ))
    }
}

/// Where bubblewrap (and the system's other tools kiln runs as root) is
/// looked for, whatever kiln's caller set PATH to.
pub(crate) const BWRAP_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn setup_err(what: &str, e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Setup(format!("{what}: {e}"))
}

/// Bytes bubblewrap reads from a descriptor (a seccomp program, its
/// arguments), in memory, sealed: nothing can change them once written.
fn program_fd(bytes: &[u8]) -> Result<OwnedFd, SandboxError> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(
        "kiln-sandbox",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| setup_err("cannot hold what bubblewrap reads", e))?;
    let mut f = std::fs::File::from(fd);
    std::io::Write::write_all(&mut f, bytes)
        .and_then(|_| std::io::Seek::rewind(&mut f))
        .map_err(|e| setup_err("cannot hold what bubblewrap reads", e))?;
    rustix::fs::fcntl_add_seals(
        &f,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )
    .map_err(|e| setup_err("cannot seal what bubblewrap reads", e))?;
    Ok(f.into())
}

/// A command line and what its child does before `exec`, with the
/// descriptors that must stay open until it is spawned.
struct Prepared {
    command: Command,
    /// Kept open until the child has them.
    handed: Vec<OwnedFd>,
    /// The read end of bwrap's report and the write end of its wait, with
    /// the maps to write (as root).
    userns: Option<(OwnedFd, OwnedFd, (String, String))>,
    /// The read end of the child's failure report.
    report: OwnedFd,
}

/// The descriptors handed on to bubblewrap, numbered from 3 in order.
#[derive(Default)]
struct Handing {
    fds: Vec<std::os::fd::RawFd>,
    kept: Vec<OwnedFd>,
}

impl Handing {
    /// Hand on `fd`; returns the number bubblewrap knows it by.
    fn fd(&mut self, fd: OwnedFd) -> i32 {
        self.fds.push(fd.as_raw_fd());
        self.kept.push(fd);
        2 + self.fds.len() as i32
    }
}

/// Where bubblewrap finds what the sandbox shows: as root, the child binds
/// each path at `/tmp/kiln-N` (see [`child`]); without root, the paths
/// themselves.
struct Shown {
    staged: bool,
    paths: Vec<PathBuf>,
}

impl Shown {
    /// The path bubblewrap is given for `path`.
    fn show(&mut self, path: PathBuf) -> PathBuf {
        if self.staged {
            self.paths.push(path);
            PathBuf::from(child::staged(self.paths.len() - 1))
        } else {
            path
        }
    }
}

fn cstring(p: &Path) -> Result<std::ffi::CString, SandboxError> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| SandboxError::Setup(format!("`{}` holds a NUL byte", p.display())))
}

/// What the child mounts as the tree: the directory the layers are named
/// relative to (when they share one), the packed layers' images with
/// where each goes, and the overlay's target and options.
struct OverlayMount {
    dir: Option<std::ffi::CString>,
    packed: Vec<(std::ffi::CString, std::ffi::CString)>,
    overlay: (std::ffi::CString, std::ffi::CString),
}

fn overlay_mount(
    lowers: &[PathBuf],
    packed: &[(PathBuf, PathBuf)],
    upper: &Path,
    work: &Path,
    merged: &Path,
) -> Result<OverlayMount, SandboxError> {
    // Layers of one directory are named relative to it (the child mounts
    // from there): the options fit one page.
    let common = lowers
        .first()
        .and_then(|l| l.parent())
        .filter(|p| lowers.iter().all(|l| l.parent() == Some(*p)));
    let named = |p: &Path| match common.and_then(|c| p.strip_prefix(c).ok()) {
        Some(rel) => rel.to_path_buf(),
        None => p.to_path_buf(),
    };
    let lower: Vec<String> = lowers.iter().map(|l| escape(&named(l))).collect();
    let packed = packed
        .iter()
        .map(|(image, on)| Ok((cstring(&named(image))?, cstring(&named(on))?)))
        .collect::<Result<Vec<_>, SandboxError>>()?;
    // The child mounts from the layers' directory: every other path
    // absolute.
    let absolute =
        |p: &Path| std::path::absolute(p).map_err(|e| setup_err("cannot resolve a layer path", e));
    let dir = common
        .map(|c| absolute(c).and_then(|c| cstring(&c)))
        .transpose()?;
    // Lowers on another file system (a packed layer's image) would give
    // their entries another device and other inode numbers: overlayfs
    // makes them one device again where it can.
    let xino = if packed.is_empty() { "" } else { ",xino=auto" };
    let options = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off{xino}",
        lower.join(":"),
        escape(&absolute(upper)?),
        escape(&absolute(work)?)
    );
    Ok(OverlayMount {
        dir,
        packed,
        overlay: (
            cstring(&absolute(merged)?)?,
            std::ffi::CString::new(options)
                .map_err(|_| SandboxError::Setup("a layer path holds a NUL byte".into()))?,
        ),
    })
}

/// The host's system, read-only, entry by entry (so that the working
/// directory, which the host does not have, can be made beside them),
/// with the tree's working directory at its place.
fn bind_host_system(c: &mut Command, tree: &Path, cwd: &str) {
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
    c.arg("--bind").arg(tree).arg(cwd);
    c.args(["--tmpfs", "/tmp"]);
}

/// A `/proc` of the sandbox's own, what of it could reach the host
/// read-only or masked, and a minimal `/dev`.
fn proc_and_dev(c: &mut Command) {
    c.args(["--proc", "/proc"]);
    let proc = Path::new("/proc");
    for name in PROC_READ_ONLY {
        let p = proc.join(name);
        if p.exists() {
            c.arg("--ro-bind").arg(&p).arg(&p);
        }
    }
    for name in PROC_MASKED {
        let p = proc.join(name);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => {
                c.arg("--tmpfs").arg(&p).arg("--remount-ro").arg(&p);
            }
            Ok(_) => {
                c.arg("--ro-bind").arg("/dev/null").arg(&p);
            }
            Err(_) => {}
        }
    }
    c.args(["--dev", "/dev"]);
}

/// The bubblewrap command that reads `c`'s options from a descriptor and
/// runs `argv`. Every option (environment values, secrets given as
/// variables, paths) goes to bubblewrap that way, not on its command
/// line, which every user of the machine can read in /proc. (The
/// command itself is on it, as under Docker.)
fn through_descriptor(
    c: &Command,
    h: &mut Handing,
    argv: &[String],
) -> Result<Command, SandboxError> {
    let mut listed = Vec::new();
    for a in c.get_args() {
        use std::os::unix::ffi::OsStrExt;
        if a.as_bytes().contains(&0) {
            return Err(SandboxError::Setup(
                "an argument or environment value holds a NUL byte".into(),
            ));
        }
        listed.extend_from_slice(a.as_bytes());
        listed.push(0);
    }
    let args_fd = h.fd(program_fd(&listed)?);
    let mut c = Command::new("bwrap");
    c.arg("--args").arg(args_fd.to_string()).arg("--");
    c.args(argv);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear()
        // bwrap is found where the system keeps it, whatever kiln's caller
        // set PATH to.
        .env("PATH", BWRAP_PATH);
    Ok(c)
}

/// The host's ids the command becomes (user, group, groups), when the
/// sandbox maps a range of them.
fn host_ids(spec: &Spec) -> Result<Option<(u32, u32, Vec<u32>)>, SandboxError> {
    let (uid, gid, groups) = &spec.user;
    Ok(match spec.ids {
        Ids::Mapped { .. } => {
            let host_uid = spec.ids.host_uid(*uid).map_err(|e| unmapped("user", &e))?;
            let host_gid = spec.ids.host_gid(*gid).map_err(|e| unmapped("group", &e))?;
            let host_groups = groups
                .iter()
                .map(|g| spec.ids.host_gid(*g).map_err(|e| unmapped("group", &e)))
                .collect::<Result<Vec<u32>, _>>()?;
            Some((host_uid, host_gid, host_groups))
        }
        Ids::Own => None,
    })
}

/// The command line that runs `spec` over `root`.
fn prepare(root: &Root, spec: &Spec) -> Result<Prepared, SandboxError> {
    check_bwrap().map_err(SandboxError::Setup)?;
    let programs = seccomp::programs().map_err(SandboxError::Setup)?;
    let as_root = spec.user.0 == 0;
    let mut h = Handing::default();
    let mut shown = Shown {
        staged: spec.ids.owns_files(),
        paths: Vec::new(),
    };
    let mut c = Command::new("bwrap");
    c.args(["--die-with-parent", "--new-session"]);
    let maps = spec.ids.maps();
    let userns = match &maps {
        Some(maps) => {
            let pipe = || {
                rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .map_err(|e| setup_err("cannot make a pipe", e))
            };
            let (info_r, info_w) = pipe()?;
            let (block_r, block_w) = pipe()?;
            let info = h.fd(info_w);
            let block = h.fd(block_r);
            c.args(["--unshare-user", "--info-fd", &info.to_string()]);
            c.args(["--userns-block-fd", &block.to_string()]);
            c.args(["--block-fd", &block.to_string()]);
            Some((info_r, block_w, maps.clone()))
        }
        None => {
            c.args(["--unshare-user", "--uid", "0", "--gid", "0"]);
            None
        }
    };
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
    if as_root {
        for cap in CAPS {
            c.args(["--cap-add", cap]);
        }
    }
    c.args(["--hostname", "kiln"]);
    // The tree (or, with the host's system, the tree's working directory).
    let below = |base: &Path| {
        if spec.host_root {
            base.join(spec.cwd.trim_start_matches('/'))
        } else {
            base.to_path_buf()
        }
    };
    let mut overlay = None;
    let tree = match root {
        Root::Dir(dir) => shown.show(below(dir)),
        Root::Overlay {
            lowers,
            packed,
            upper,
            work,
            merged,
        } => {
            if !shown.staged {
                return Err(SandboxError::Setup(
                    "an overlay needs root: without root the tree is a copy".into(),
                ));
            }
            overlay = Some(overlay_mount(lowers, packed, upper, work, merged)?);
            shown.show(below(merged))
        }
    };
    if spec.host_root {
        bind_host_system(&mut c, &tree, &spec.cwd);
    } else {
        c.arg("--bind").arg(&tree).arg("/");
    }
    proc_and_dev(&mut c);
    for b in &spec.binds {
        let src = shown.show(b.src.clone());
        c.arg(if b.writable { "--bind" } else { "--ro-bind" })
            .arg(src)
            .arg(&b.dest);
    }
    for (dest, size) in &spec.tmpfs {
        if let Some(s) = size {
            c.arg("--size").arg(s.to_string());
        }
        c.arg("--tmpfs").arg(dest);
    }
    for p in programs {
        let fd = h.fd(program_fd(p)?);
        c.arg("--add-seccomp-fd").arg(fd.to_string());
    }
    c.arg("--clearenv");
    for (k, v) in &spec.env {
        c.arg("--setenv").arg(k).arg(v);
    }
    c.arg("--chdir").arg(&spec.cwd);
    let mut c = through_descriptor(&c, &mut h, &spec.argv)?;
    let become_ids = host_ids(spec)?;
    let stage = if shown.staged {
        let paths = shown
            .paths
            .iter()
            .map(|p| cstring(p))
            .collect::<Result<Vec<_>, _>>()?;
        let places = (0..paths.len())
            .map(|i| cstring(Path::new(&child::staged(i))))
            .collect::<Result<Vec<_>, _>>()?;
        let (overlay_dir, packed, overlay) = match overlay {
            Some(o) => (o.dir, o.packed, Some(o.overlay)),
            None => (None, Vec::new(), None),
        };
        Some(child::Stage {
            overlay,
            overlay_dir,
            packed,
            paths,
            places,
        })
    } else {
        None
    };
    let (report_r, report_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| setup_err("cannot make a pipe", e))?;
    child::install(
        &mut c,
        child::Launch {
            stage,
            fds: h.fds,
            become_ids,
            report: report_w.as_raw_fd(),
        },
    );
    h.kept.push(report_w);
    Ok(Prepared {
        command: c,
        handed: h.kept,
        userns,
        report: report_r,
    })
}

fn unmapped(what: &str, e: &ids::Unmapped) -> SandboxError {
    SandboxError::Setup(format!("the command's {what}: {e}"))
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

/// Run `spec` over the tree at `root`, passing output to `out` as it
/// comes. Stops (killing every process) on timeout or when `cancel` is set.
pub fn run(
    root: &Root,
    spec: &Spec,
    cancel: &Arc<AtomicBool>,
    out: &mut dyn FnMut(Stream, &[u8]),
) -> Result<(), SandboxError> {
    let Prepared {
        mut command,
        handed,
        userns,
        report,
    } = prepare(root, spec)?;
    let spawned = command.spawn();
    // The child has its copies (or failed): ours close now.
    drop(command);
    drop(handed);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let mut step = [0u8; 1];
            let what = match rustix::io::read(&report, &mut step) {
                Ok(1) => child::STEPS
                    .get(step[0] as usize)
                    .copied()
                    .unwrap_or("starting"),
                _ => "",
            };
            if step[0] as usize == child::PACKED_STEP {
                return Err(SandboxError::Packed(format!(
                    "cannot start the sandbox ({what}): {e}"
                )));
            }
            return Err(SandboxError::Setup(if !what.is_empty() {
                format!("cannot start the sandbox ({what}): {e}")
            } else if e.kind() == std::io::ErrorKind::NotFound {
                "bubblewrap (`bwrap`) is not installed: install Debian's `bubblewrap`".to_string()
            } else {
                format!("cannot start bubblewrap: {e}")
            }));
        }
    };
    drop(report);
    if let Some((info_r, block_w, maps)) = userns
        && let Err(e) = map_user_namespace(info_r, block_w, &maps)
    {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    // Bounded: a command that prints faster than kiln shows waits on its
    // pipe, instead of growing kiln's memory.
    let (tx, rx) = std::sync::mpsc::sync_channel::<(Stream, Vec<u8>)>(16);
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
