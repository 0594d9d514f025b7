//! Stage trees on disk for `run` steps, as stacks of overlayfs layers.
//!
//! A tree is given by a stack of layer directories (top first) whose
//! overlay is that tree. The first tree a stage runs a command on is
//! written out whole, once per tree digest; after that, every tree is a
//! layer on a tree that has a stack: the upper directory of the `run`
//! step that made it (moved into place, so nothing is copied), or the
//! difference builtin steps made (only what changed: files, directories,
//! symlinks, and whiteouts for what was removed). So a step costs
//! O(changes), not O(image). Stacks deeper than [`MAX_DEPTH`] are written
//! out whole again.
//!
//! `rootfs/l/<id>/` are layers (never changed once in place);
//! `rootfs/t/<tree digest>` lists a tree's stack.

use super::SandboxError;
use crate::model::digest::TreeDigest;
use crate::model::tree::{Entry, Kind, Tree};
use crate::store::ContentStore;
use crate::store::layout::Layout;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Stacks deeper than this are written out whole (the kernel bounds the
/// length of overlayfs's options).
pub const MAX_DEPTH: usize = 48;

/// Where layers live and how trees are written.
pub struct Rootfs<'a> {
    pub layout: &'a Layout,
    pub content: &'a dyn ContentStore,
    /// The mtime every written file and directory gets.
    pub epoch: u64,
}

fn io_err(what: &str, p: &Path, e: std::io::Error) -> SandboxError {
    SandboxError::Io(crate::diag::io_message(what, p, &e))
}

impl Rootfs<'_> {
    fn layers_dir(&self) -> PathBuf {
        self.layout.rootfs().join("l")
    }

    fn stack_file(&self, d: TreeDigest) -> PathBuf {
        self.layout.rootfs().join("t").join(d.hex())
    }

    /// The recorded stack of a tree, if all its layers are in place.
    pub fn stack_of(&self, d: TreeDigest) -> Option<Vec<PathBuf>> {
        let text = fs::read_to_string(self.stack_file(d)).ok()?;
        let stack: Vec<PathBuf> = text
            .lines()
            .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|id| self.layers_dir().join(id))
            .collect();
        (!stack.is_empty() && stack.iter().all(|p| p.is_dir())).then_some(stack)
    }

    fn record(&self, d: TreeDigest, stack: &[PathBuf]) -> Result<(), SandboxError> {
        let dir = self.layout.rootfs().join("t");
        fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        let text: String = stack
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| format!("{}\n", n.to_string_lossy()))
            .collect();
        let path = self.stack_file(d);
        // Unique per writer: two stages of one build may record one tree.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{}.{}.{n}", d.hex(), std::process::id()));
        fs::write(&tmp, text)
            .and_then(|_| fs::rename(&tmp, &path))
            .map_err(|e| io_err("cannot write", &path, e))
    }

    /// A new, empty directory to become a layer.
    pub fn new_layer_dir(&self) -> Result<PathBuf, SandboxError> {
        let dir = self.layers_dir();
        fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        for _ in 0..16 {
            let id = new_id();
            let p = dir.join(format!(".new-{id}"));
            match fs::create_dir(&p) {
                Ok(()) => return Ok(p),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("cannot create", &p, e)),
            }
        }
        Err(SandboxError::Io("cannot name a new layer".into()))
    }

    /// Put a finished layer directory in place; returns its final path.
    pub fn place(&self, made: &Path) -> Result<PathBuf, SandboxError> {
        let name = made
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(".new-"))
            .map(str::to_string)
            .unwrap_or_else(new_id);
        let to = self.layers_dir().join(name);
        fs::rename(made, &to).map_err(|e| io_err("cannot place the layer", &to, e))?;
        Ok(to)
    }

    /// The stack for `tree` (digest `d`): recorded, or a layer of its
    /// differences from `base` (a tree with a stack), or the tree written
    /// out whole.
    pub fn stack(
        &self,
        d: TreeDigest,
        tree: &Tree,
        base: Option<(TreeDigest, &Tree)>,
    ) -> Result<Vec<PathBuf>, SandboxError> {
        if let Some(s) = self.stack_of(d) {
            return Ok(s);
        }
        let under = base.and_then(|(bd, bt)| self.stack_of(bd).map(|s| (s, bt)));
        let stack = match under {
            Some((mut under, base_tree)) if under.len() < MAX_DEPTH => {
                let layer = self.new_layer_dir()?;
                self.write_diff(&layer, base_tree, tree)?;
                let placed = self.place(&layer)?;
                under.insert(0, placed);
                under
            }
            _ => {
                let layer = self.new_layer_dir()?;
                self.write_diff(&layer, &Tree::new(), tree)?;
                vec![self.place(&layer)?]
            }
        };
        self.record(d, &stack)?;
        Ok(stack)
    }

    /// Record that `tree` (digest `d`) is `layer` (an upper directory, in
    /// place already) on top of `under`.
    pub fn adopt(
        &self,
        d: TreeDigest,
        layer: PathBuf,
        under: &[PathBuf],
    ) -> Result<(), SandboxError> {
        let mut stack = vec![layer];
        stack.extend(under.iter().cloned());
        self.record(d, &stack)
    }

    /// Write into `dir` what turns `old` into `new` when stacked on it.
    /// Write all of `tree` into the empty directory `dir` (a private copy
    /// for a command run without root, which cannot mount an overlay).
    pub fn write_whole(&self, dir: &Path, tree: &Tree) -> Result<(), SandboxError> {
        self.write_diff(dir, &Tree::new(), tree)
    }

    fn write_diff(&self, dir: &Path, old: &Tree, new: &Tree) -> Result<(), SandboxError> {
        let root = nix_root();
        let mut dirs: Vec<(PathBuf, &Entry)> = Vec::new();
        // Parents of changed entries must be in the layer too, with the
        // new tree's metadata.
        let mut needed: BTreeSet<&str> = BTreeSet::new();
        for (path, e) in &new.entries {
            if old.get(path) == Some(e) && !e.is_dir() {
                continue;
            }
            if e.is_dir() && old.get(path) == Some(e) {
                continue;
            }
            let mut p = crate::model::tree::parent(path);
            while !p.is_empty() {
                needed.insert(p);
                p = crate::model::tree::parent(p);
            }
            needed.insert(path);
        }
        // Removed entries: a whiteout for the topmost removed path.
        let mut whiteouts: Vec<&str> = Vec::new();
        for path in old.entries.keys() {
            if new.get(path).is_some() {
                continue;
            }
            let parent = crate::model::tree::parent(path);
            let covered = whiteouts
                .last()
                .is_some_and(|w| path.starts_with(&format!("{w}/")))
                || (!parent.is_empty() && !new.is_dir(parent));
            if !covered {
                whiteouts.push(path);
                let mut p = parent;
                while !p.is_empty() {
                    needed.insert(p);
                    p = crate::model::tree::parent(p);
                }
            }
        }
        for path in &needed {
            let Some(e) = new.get(path) else { continue };
            let at = dir.join(path);
            match &e.kind {
                Kind::Dir => {
                    fs::create_dir_all(&at).map_err(|err| io_err("cannot create", &at, err))?;
                    dirs.push((at, e));
                }
                Kind::File { blob, .. } => {
                    let mut f =
                        fs::File::create(&at).map_err(|err| io_err("cannot create", &at, err))?;
                    self.content
                        .copy_blob(*blob, &mut f)
                        .map_err(|err| match err {
                            crate::store::CopyError::Store(s) => SandboxError::Store(s),
                            crate::store::CopyError::Write(w) => io_err("cannot write", &at, w),
                        })?;
                    if root {
                        let _ = std::os::unix::fs::fchown(&f, Some(e.uid), Some(e.gid));
                    }
                    f.set_permissions(fs::Permissions::from_mode(e.mode))
                        .map_err(|err| io_err("cannot write", &at, err))?;
                    let _ = f.set_modified(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.epoch),
                    );
                }
                Kind::Symlink { target } => {
                    std::os::unix::fs::symlink(target, &at)
                        .map_err(|err| io_err("cannot create", &at, err))?;
                    if root {
                        let _ = std::os::unix::fs::lchown(&at, Some(e.uid), Some(e.gid));
                    }
                }
            }
        }
        for w in whiteouts {
            let at = dir.join(w);
            if let Some(p) = at.parent() {
                fs::create_dir_all(p).map_err(|err| io_err("cannot create", p, err))?;
            }
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &at,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                0,
            )
            .map_err(|err| io_err("cannot write a whiteout", &at, err.into()))?;
        }
        // Directories last, deepest first: their children are in place.
        for (at, e) in dirs.iter().rev() {
            if root {
                let _ = std::os::unix::fs::chown(at, Some(e.uid), Some(e.gid));
            }
            fs::set_permissions(at, fs::Permissions::from_mode(e.mode))
                .map_err(|err| io_err("cannot set the mode of", at, err))?;
        }
        // The layer's own root is the tree's root directory.
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
        Ok(())
    }
}

fn nix_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn new_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = blake3::Hasher::new();
    h.update(&nanos.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    h.update(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.finalize().to_hex()[..16].to_string()
}
