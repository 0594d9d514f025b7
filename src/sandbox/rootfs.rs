//! Stage trees on disk for `run` steps, as stacks of overlayfs layers.
//!
//! A tree is given by a stack of layer directories (top first) whose
//! overlay is that tree. Only the root of a tree's lineage (the trees it
//! was made from: its stage's stored trees, its base stage's, the base
//! image's) is ever written out whole, once per tree digest; every other
//! tree is a layer on a tree of its lineage that has a stack, written from
//! the store: its difference from that tree, computed from the two
//! manifests (only what changed: files, directories, symlinks, and
//! whiteouts for what was removed or became a device node), whether a
//! `run` step's command or builtin steps made it. A command's upper
//! directory is never kept as a layer: what it holds beyond the tree
//! (extended attributes, sockets) stays out, and no process the command
//! handed a descriptor to can reach a layer's files. So
//! a step costs O(changes), not O(image): an edit before a `gcc` step
//! writes the edited file. Stacks deeper than [`MAX_DEPTH`] are made
//! again on a shallower tree of the lineage.
//!
//! A tree written out whole that is large ([`PACK_MIN_ENTRIES`]) is then
//! packed into one EROFS image, `l/<id>/layer.erofs`, which the sandbox
//! mounts read-only on the layer's own directory (in its own mount
//! namespace) before the overlay: its seal is one `stat`, gc removes it
//! with one unlink, and the layer cannot be written through. Packing
//! needs `mkfs.erofs` and a kernel with EROFS; without them, or when it
//! fails, the directory is the layer.
//!
//! Files on disk have the tree's owners moved into the sandbox's id range
//! ([`super::ids`]), so they are kept per mapping, below the state dir's
//! `sandbox/` (which only its owner can enter):
//! `rootfs/l/<id>/` are layers (never changed once in place);
//! `rootfs/t/<tree digest>.<epoch>` lists a tree's stack (every time on
//! disk is the epoch, `SOURCE_DATE_EPOCH`; `….p` when it holds a packed
//! layer); `rootfs/s/<id>` seals a
//! layer: a digest of what stat says of every entry in it (type, mode,
//! owner, size, mtime, ctime, inode), written when the layer is put in
//! place, followed by ` erofs` for a packed one. What a command makes on a stack is kept only when each of its
//! layers still matches its seal (checked once per layer per process, in
//! the background while the command runs, so the check costs no time of
//! its own): a layer edited or damaged on disk (changing a file changes
//! its ctime) makes the command run again on the tree written out afresh,
//! and the layer is not used again, so no result comes from files the
//! tree does not hold.
//!
//! Without root, a command runs on a private copy of its tree instead;
//! settled to be exactly the new tree, the copy is kept in
//! `rootfs/copies/<project>/<id>/` (`root/` and a `record`: tree, epoch,
//! seal; the few newest per project) for the next command of the same
//! project, which brings it to its own tree by writing what differs. A
//! copy is never handed to another project: files of a copy a command
//! held open could still change after it was sealed.

use super::{Ids, SandboxError};
use crate::model::digest::TreeDigest;
use crate::model::tree::{Change, Entry, Kind, Tree};
use crate::store::ContentStore;
use crate::store::layout::Layout;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The deepest stack a command runs on. Layers are named relative to
/// their directory in overlayfs's options (17 bytes each, in one page),
/// and the kernel takes up to 500; past this, a tree is layered on a
/// shallower tree of its lineage (`bench/overlay-depth.py`: first lookups
/// cost 25% more at 64 layers than at one, 6× at 480).
pub const MAX_DEPTH: usize = 64;

/// How many trees back a lineage is searched for a stack.
const MAX_LINEAGE: usize = 64;

/// The fewest entries of a tree written out whole that is packed into one
/// EROFS image: checking a directory layer's seal costs a `stat` per
/// entry (about 4 µs each), a packed layer's one `stat` and a mount in
/// the sandbox (about 2 ms).
const PACK_MIN_ENTRIES: usize = 2048;

/// The image file in a packed layer's directory.
const PACKED_NAME: &str = "layer.erofs";

/// What follows the digest in a packed layer's seal.
const PACKED_SEAL: &str = " erofs";

/// Set once a packed layer could not be mounted in this process.
static PACKING_OFF: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The file naming the kernel on which packed layers could not be
/// mounted.
const NO_PACKING: &str = "no-packing";

fn kernel_release() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|k| k.trim().to_string())
}

/// `mkfs.erofs` where the system keeps it (whatever kiln's caller set
/// PATH to), when it is installed and the kernel knows EROFS.
fn erofs_tool() -> Option<&'static Path> {
    static TOOL: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    TOOL.get_or_init(|| {
        let kernel = fs::read_to_string("/proc/filesystems").is_ok_and(|t| {
            t.lines()
                .any(|l| l.split_whitespace().last() == Some("erofs"))
        });
        if !kernel {
            return None;
        }
        super::BWRAP_PATH
            .split(':')
            .map(|d| Path::new(d).join("mkfs.erofs"))
            .find(|p| p.is_file())
    })
    .as_deref()
}

/// Where layers live and how trees are written.
pub struct Rootfs<'a> {
    pub layout: &'a Layout,
    pub content: &'a dyn ContentStore,
    /// The mtime every written file and directory gets.
    pub epoch: u64,
    /// How owners are written.
    pub ids: Ids,
    /// The project whose kept private copies are used (a hex digest of
    /// its spec's path): a copy one project's command left is never
    /// another project's starting point.
    pub scope: &'a str,
}

fn io_err(what: &str, p: &Path, e: std::io::Error) -> SandboxError {
    SandboxError::Io(crate::diag::io_message(what, p, &e))
}

impl Rootfs<'_> {
    fn dir(&self) -> PathBuf {
        self.layout.rootfs(&self.ids.tag())
    }

    fn layers_dir(&self) -> PathBuf {
        self.dir().join("l")
    }

    /// A tree's stack, for this epoch: every time on disk is the epoch,
    /// so a stack written under another one is another stack. A stack
    /// holding a packed layer is recorded under a name of its own
    /// (`….p`), which a kiln that knows no packed layers never reads.
    fn stack_file(&self, d: TreeDigest, packed: bool) -> PathBuf {
        let suffix = if packed { ".p" } else { "" };
        self.dir()
            .join("t")
            .join(format!("{}.{}{suffix}", d.hex(), self.epoch))
    }

    fn seal_file(&self, layer: &Path) -> Option<PathBuf> {
        Some(self.dir().join("s").join(layer.file_name()?))
    }

    /// The recorded stack of a tree, if all its layers are in place and
    /// none was found in this process not to match its seal. The seals of
    /// layers not checked yet are checked in the background from here on:
    /// the stack is provisional until [`Rootfs::confirm`] says every layer
    /// matched, and nothing made on it may be kept before (a command runs
    /// meanwhile, so the check costs no time of its own). A stack with a
    /// layer that does not match is forgotten (its tree is then written
    /// out again); its layers stay for gc, as another build may have them
    /// mounted.
    pub fn stack_of(&self, d: TreeDigest) -> Option<Vec<PathBuf>> {
        // A packed stack first, unless packed layers cannot be mounted here.
        let text = (self.packing())
            .then(|| fs::read_to_string(self.stack_file(d, true)).ok())
            .flatten()
            .or_else(|| fs::read_to_string(self.stack_file(d, false)).ok())?;
        let stack: Vec<PathBuf> = text
            .lines()
            .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|id| self.layers_dir().join(id))
            .collect();
        // Directories themselves (a link in a layer's place is not followed).
        let real_dir = |p: &PathBuf| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
        if stack.is_empty() || !stack.iter().all(real_dir) {
            return None;
        }
        // A stack that fails is made again (under the tree's lock) by the
        // next build that needs it; not removed here, where another build
        // may just have recorded a sound one.
        if stack.iter().any(|p| failed().contains(p)) {
            return None;
        }
        check_later(
            stack
                .iter()
                .filter_map(|l| Some((l.clone(), self.seal_file(l)?)))
                .collect(),
        );
        Some(stack)
    }

    /// Whether every layer of `stack` matches its seal: waits for the
    /// checks under way, checks the others on all cores. A layer that does
    /// not match is not handed out again by [`Rootfs::stack_of`].
    pub fn confirm(&self, stack: &[PathBuf]) -> bool {
        stack.iter().all(|p| self.sealed(p))
    }

    /// Seal a layer in place (see the module doc). A packed layer's seal
    /// says so after the digest (`<digest> erofs`), which a kiln that knows
    /// no packed layers cannot read (its stack is recorded where such a
    /// kiln does not look, too).
    fn seal(&self, layer: &Path, packed: bool) -> Result<(), SandboxError> {
        let Some(path) = self.seal_file(layer) else {
            return Ok(());
        };
        let digest = seal_of(layer).map_err(|e| io_err("cannot read the layer", layer, e))?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| io_err("cannot create", dir, e))?;
        }
        let mut text = blake3::Hash::from(digest).to_hex().to_string();
        if packed {
            text.push_str(PACKED_SEAL);
        }
        fs::write(&path, text.as_bytes()).map_err(|e| io_err("cannot write", &path, e))?;
        verified().insert(layer.to_path_buf());
        Ok(())
    }

    /// Whether trees are packed here: not once a packed layer could not be
    /// mounted (a kernel that mounts no EROFS image from a file), in this
    /// process or, on this kernel, before.
    fn packing(&self) -> bool {
        if PACKING_OFF.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        let said = fs::read_to_string(self.dir().join(NO_PACKING)).ok();
        said.is_none_or(|k| Some(k.trim()) != kernel_release().as_deref())
    }

    /// A packed layer of `stack` could not be mounted: nothing is packed
    /// from here on (on this kernel), and the stack's packed layers are
    /// not used again, so the tree is written out again as files.
    pub fn packing_failed(&self, stack: &[PathBuf]) {
        PACKING_OFF.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(k) = kernel_release() {
            let _ = fs::write(self.dir().join(NO_PACKING), k);
        }
        for l in stack {
            if self.packed_image(l).is_some() {
                failed().insert(l.clone());
            }
        }
    }

    /// The EROFS image of a packed layer (mounted on the layer's own
    /// directory by the sandbox, below the overlay), or `None` for a
    /// layer that is a directory of its own.
    pub fn packed_image(&self, layer: &Path) -> Option<PathBuf> {
        let seal = fs::read_to_string(self.seal_file(layer)?).ok()?;
        seal.ends_with(PACKED_SEAL).then(|| layer.join(PACKED_NAME))
    }

    /// Pack the tree `tree` (digest `d`), written out whole at `written`,
    /// into an EROFS image in a new layer directory of its own, when that
    /// pays: as root (the sandbox mounts it), for a tree large enough
    /// that one `stat` of the image instead of one per entry outweighs a
    /// mount, with `mkfs.erofs` at hand. `None` (the directory stays the
    /// layer) otherwise, or when packing fails.
    fn pack(&self, written: &Path, d: TreeDigest, tree: &Tree) -> Option<PathBuf> {
        if !self.ids.owns_files() || tree.entries.len() < PACK_MIN_ENTRIES || !self.packing() {
            return None;
        }
        // mkfs.erofs 1.5 cuts a 255-byte name to 254 bytes: such a tree
        // stays files.
        if tree
            .entries
            .keys()
            .any(|p| p.split('/').any(|c| c.len() > 254))
        {
            return None;
        }
        let mkfs = erofs_tool()?;
        let layer = self.new_layer_dir().ok()?;
        let image = layer.join(PACKED_NAME);
        // Every time on disk is the epoch already; the file system's id
        // comes from the tree, so a tree packs to the same bytes. (A kiln
        // killed meanwhile leaves the tool to finish into a directory gc
        // removes.)
        let hex = d.hex();
        let uuid = format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        );
        let made = std::process::Command::new(mkfs)
            .env_clear()
            .env("PATH", super::BWRAP_PATH)
            .arg("--quiet")
            .arg("-x-1")
            .arg(format!("-T{}", self.epoch))
            .arg(format!("-U{uuid}"))
            .arg(&image)
            .arg(written)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let sealed = made
            && fs::File::open(&image).and_then(|f| f.sync_all()).is_ok()
            && fs::set_permissions(&image, fs::Permissions::from_mode(0o400)).is_ok()
            && fs::set_permissions(&layer, fs::Permissions::from_mode(0o500)).is_ok();
        if !sealed {
            let _ = crate::fsutil::remove_tree(&layer);
            return None;
        }
        Some(layer)
    }

    /// Whether a layer matches its seal (once per process).
    fn sealed(&self, layer: &Path) -> bool {
        match self.seal_file(layer) {
            Some(seal) => check_seal(layer, &seal, true),
            None => false,
        }
    }

    /// Remember the layers a command ran on, for the next build of this
    /// project to check their seals early ([`prefetch_seals`]).
    pub fn note_used(&self, stack: &[PathBuf]) {
        let dir = self.dir().join("used");
        let text: String = stack
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| format!("{}\n", n.to_string_lossy()))
            .collect();
        let path = dir.join(self.scope_name());
        if fs::read_to_string(&path).is_ok_and(|t| t == text) {
            return;
        }
        let _ = fs::create_dir_all(&dir);
        let tmp = dir.join(format!(".{}.{}", self.scope_name(), new_id()));
        if fs::write(&tmp, text).is_ok() {
            let _ = fs::rename(&tmp, &path);
        }
    }

    fn scope_name(&self) -> String {
        let scope: String = self
            .scope
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .take(64)
            .collect();
        if scope.is_empty() { "-".into() } else { scope }
    }

    fn record(&self, d: TreeDigest, stack: &[PathBuf]) -> Result<(), SandboxError> {
        let dir = self.dir().join("t");
        fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        let text: String = stack
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| format!("{}\n", n.to_string_lossy()))
            .collect();
        let packed = stack.iter().any(|l| self.packed_image(l).is_some());
        let path = self.stack_file(d, packed);
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
        if !dir.is_dir() {
            self.layout
                .private_dir(&dir)
                .map_err(|e| io_err("cannot create", &dir, e))?;
        }
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

    /// Put a finished layer directory in place (`packed`: holding the
    /// layer's EROFS image); returns its final path.
    fn place(&self, made: &Path, packed: bool) -> Result<PathBuf, SandboxError> {
        let name = made
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(".new-"))
            .map(str::to_string)
            .unwrap_or_else(new_id);
        let to = self.layers_dir().join(name);
        fs::rename(made, &to).map_err(|e| io_err("cannot place the layer", &to, e))?;
        // Sealed once in place: the move changed the directory's ctime.
        self.seal(&to, packed)?;
        Ok(to)
    }

    /// The stack for `tree` (digest `d`): the recorded one, or a layer of
    /// its differences from the nearest tree of `lineage` (the trees it
    /// was made from, nearest first) that has a stack. Trees of the
    /// lineage on the way that have none get one first, the farthest
    /// written out whole: so the root of a lineage (a base image) is
    /// written once, and every later tree costs what it changed. A stack
    /// is never deeper than [`MAX_DEPTH`]: a deeper one is made again on a
    /// shallower tree of the lineage. `load` gives a lineage tree.
    pub fn stack_on(
        &self,
        d: TreeDigest,
        tree: &Tree,
        lineage: &[TreeDigest],
        load: &dyn Fn(TreeDigest) -> Option<std::sync::Arc<Tree>>,
    ) -> Result<Vec<PathBuf>, SandboxError> {
        if let Some(s) = self.stack_of(d).filter(|s| s.len() <= MAX_DEPTH) {
            return Ok(s);
        }
        // One writer per tree, across threads and builds: the others wait
        // and take its stack.
        let _lock = self.lock(d)?;
        if let Some(s) = self.stack_of(d).filter(|s| s.len() <= MAX_DEPTH) {
            return Ok(s);
        }
        // The lineage trees without a stack, nearest first, up to the
        // first one with a stack shallow enough to build on.
        let mut pending: Vec<(TreeDigest, std::sync::Arc<Tree>)> = Vec::new();
        let mut under: Option<(Vec<PathBuf>, std::sync::Arc<Tree>)> = None;
        for &a in lineage.iter().filter(|a| **a != d).take(MAX_LINEAGE) {
            let Some(t) = load(a) else { break };
            match self.stack_of(a) {
                Some(s) if s.len() < MAX_DEPTH => {
                    under = Some((s, t));
                    break;
                }
                // Too deep to build on: a farther tree is shallower.
                Some(_) => {}
                None => pending.push((a, t)),
            }
        }
        for (a, t) in pending.into_iter().rev() {
            let s = self.layer_on(a, &t, under.as_ref())?;
            under = Some((s, t));
        }
        self.layer_on(d, tree, under.as_ref())
    }

    /// Make and record the stack of `tree` (digest `d`): its differences
    /// from `under` as one layer on `under`'s stack, or all of it.
    fn layer_on(
        &self,
        d: TreeDigest,
        tree: &Tree,
        under: Option<&(Vec<PathBuf>, std::sync::Arc<Tree>)>,
    ) -> Result<Vec<PathBuf>, SandboxError> {
        let layer = self.new_layer_dir()?;
        let stack = match under {
            Some((stack, base)) if stack.len() < MAX_DEPTH => {
                self.write_diff(&layer, base, tree)?;
                let mut s = vec![self.place(&layer, false)?];
                s.extend(stack.iter().cloned());
                s
            }
            _ => {
                self.write_diff(&layer, &Tree::new(), tree)?;
                match self.pack(&layer, d, tree) {
                    Some(packed) => {
                        let _ = crate::fsutil::remove_tree(&layer);
                        vec![self.place(&packed, true)?]
                    }
                    None => vec![self.place(&layer, false)?],
                }
            }
        };
        self.record(d, &stack)?;
        Ok(stack)
    }

    /// An exclusive lock on making `d`'s stack (released when dropped).
    fn lock(&self, d: TreeDigest) -> Result<fs::File, SandboxError> {
        let dir = self.dir().join("t");
        fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        let path = dir.join(format!("{}.lock", d.hex()));
        let f = fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_err("cannot open", &path, e))?;
        f.lock().map_err(|e| io_err("cannot lock", &path, e))?;
        Ok(f)
    }

    /// Write into `dir` what turns `old` into `new` when stacked on it.
    /// Write all of `tree` into the empty directory `dir` (a private copy
    /// for a command run without root, which cannot mount an overlay).
    pub fn write_whole(&self, dir: &Path, tree: &Tree) -> Result<(), SandboxError> {
        self.write_diff(dir, &Tree::new(), tree)
    }

    /// Write the entries below `sub` of `tree` into the empty directory
    /// `dir`, which becomes `sub` (modes, owners and times as a layer's).
    pub fn write_subtree(&self, dir: &Path, tree: &Tree, sub: &str) -> Result<(), SandboxError> {
        if sub.is_empty() {
            return self.write_whole(dir, tree);
        }
        let mut part = Tree::new();
        let prefix = format!("{sub}/");
        for (path, e) in tree.descendants(sub) {
            if let Some(rel) = path.strip_prefix(&prefix) {
                part.entries.insert(rel.to_string(), e.clone());
            }
        }
        self.write_diff(dir, &Tree::new(), &part)?;
        if let Some(e) = tree.get(sub) {
            self.own(dir, e.uid, e.gid, sub)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(e.mode))
                .map_err(|err| io_err("cannot set the mode of", dir, err))?;
        }
        Ok(())
    }

    /// Give `at` the tree's owner `uid:gid` (moved into the sandbox's
    /// range), when files get owners; `path` names it in an error.
    pub fn own(&self, at: &Path, uid: u32, gid: u32, path: &str) -> Result<(), SandboxError> {
        if !self.ids.owns_files() {
            return Ok(());
        }
        let unmapped = |e: super::ids::Unmapped| {
            SandboxError::Changes(format!(
                "`/{path}` is owned by {uid}:{gid}, which a sandbox cannot hold: the owner's {e}"
            ))
        };
        let (host_uid, host_gid) = self.ids.host_owner(uid, gid).map_err(unmapped)?;
        std::os::unix::fs::lchown(at, Some(host_uid), Some(host_gid))
            .map_err(|e| io_err("cannot set the owner of", at, e))
    }

    fn write_diff(&self, dir: &Path, old: &Tree, new: &Tree) -> Result<(), SandboxError> {
        self.write_changes(dir, old, new, true)
    }

    /// Write into `dir` what `new` has that `old` does not (every changed
    /// or new entry, with its parents), and, with `whiteouts`, a whiteout
    /// for what `new` removed (a layer's way); without, `dir` is a copy of
    /// `old` whose removed entries are gone already.
    fn write_changes(
        &self,
        dir: &Path,
        old: &Tree,
        new: &Tree,
        whiteouts_too: bool,
    ) -> Result<(), SandboxError> {
        let mut dirs: Vec<(PathBuf, &Entry, &str)> = Vec::new();
        // Parents of changed entries must be in the layer too, with the
        // new tree's metadata.
        let mut needed: BTreeSet<&str> = BTreeSet::new();
        // Removed entries: a whiteout for the topmost removed path. A path
        // that became a device node is removed on disk too (a device is
        // never made there), or what it replaced would still show.
        let mut whiteouts: Vec<&str> = Vec::new();
        for change in new.changes_from(old) {
            let (path, was, is) = match change {
                Change::Added(p, e) => (p, None, Some(e)),
                Change::Changed(p, o, e) => (p, Some(o), Some(e)),
                Change::Removed(p, o) => (p, Some(o), None),
            };
            if is.is_some() {
                let mut p = crate::model::tree::parent(path);
                while !p.is_empty() {
                    needed.insert(p);
                    p = crate::model::tree::parent(p);
                }
                needed.insert(path);
            }
            let Some(was) = was else { continue };
            let gone = is.is_none_or(|e| matches!(e.kind, Kind::Device { .. }));
            if !gone || matches!(was.kind, Kind::Device { .. }) {
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
                // A device node is never made where a command could use it
                // (the command gets bubblewrap's own `/dev`): it stays in
                // the tree while its directory does.
                Kind::Device { .. } => {}
                Kind::Fifo => {
                    crate::fsutil::make_fifo(&at, e.mode)
                        .map_err(|err| io_err("cannot create", &at, err))?;
                    self.own(&at, e.uid, e.gid, path)?;
                    let _ = crate::fsutil::set_epoch_times(&at, self.epoch);
                }
                Kind::Dir => {
                    fs::create_dir_all(&at).map_err(|err| io_err("cannot create", &at, err))?;
                    dirs.push((at, e, *path));
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
                    self.own(&at, e.uid, e.gid, path)?;
                    f.set_permissions(fs::Permissions::from_mode(e.mode))
                        .map_err(|err| io_err("cannot write", &at, err))?;
                    let _ = f.set_modified(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.epoch),
                    );
                }
                Kind::Symlink { target } => {
                    std::os::unix::fs::symlink(target, &at)
                        .map_err(|err| io_err("cannot create", &at, err))?;
                    self.own(&at, e.uid, e.gid, path)?;
                    let _ = crate::fsutil::set_epoch_times(&at, self.epoch);
                }
            }
        }
        for w in whiteouts.into_iter().filter(|_| whiteouts_too) {
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
        // Their times are the epoch too: a command finds the same times
        // however its tree came to be on disk.
        for (at, e, path) in dirs.iter().rev() {
            self.own(at, e.uid, e.gid, path)?;
            fs::set_permissions(at, fs::Permissions::from_mode(e.mode))
                .map_err(|err| io_err("cannot set the mode of", at, err))?;
            let _ = crate::fsutil::set_epoch_times(at, self.epoch);
        }
        // The layer's own root is the tree's root directory.
        self.own(dir, 0, 0, "")?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
        let _ = crate::fsutil::set_epoch_times(dir, self.epoch);
        Ok(())
    }
}

impl Rootfs<'_> {
    fn copies_dir(&self) -> PathBuf {
        self.dir().join("copies").join(self.scope_name())
    }

    /// Without root: put at `into` (which must not exist) a private copy
    /// of `tree` (digest `d`) made from one a previous command left
    /// (`keep_copy`), brought up to date by writing only what differs
    /// (computed from the two trees); `false` when none could be had (the
    /// tree is then written out whole). A kept copy is used only while it
    /// matches its seal, as layers are; `load` gives its tree.
    pub fn take_copy(
        &self,
        into: &Path,
        d: TreeDigest,
        tree: &Tree,
        load: &dyn Fn(TreeDigest) -> Option<std::sync::Arc<Tree>>,
    ) -> bool {
        let Ok(rd) = fs::read_dir(self.copies_dir()) else {
            return false;
        };
        let mut kept: Vec<(bool, std::time::SystemTime, PathBuf, CopyRecord)> = rd
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let record = CopyRecord::read(&e.path())?;
                let at = e.metadata().and_then(|m| m.modified()).ok()?;
                Some((record.tree != d, at, e.path(), record))
            })
            .collect();
        // This very tree first, then the newest.
        kept.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let Some(parent) = into.parent() else {
            return false;
        };
        for (_, _, path, record) in kept {
            let held = parent.join(format!(".held-{}", new_id()));
            if fs::rename(&path, &held).is_err() {
                continue; // another build took it
            }
            let root = held.join("root");
            let usable = record.epoch == self.epoch
                && (copy_verified(&path, &record.seal)
                    || seal_of(&root).is_ok_and(|s| s == record.seal));
            let brought = usable
                && if record.tree == d {
                    fs::rename(&root, into).is_ok()
                } else {
                    load(record.tree).is_some_and(|from| {
                        self.bring(&root, &from, tree).is_ok() && fs::rename(&root, into).is_ok()
                    })
                };
            let _ = crate::fsutil::remove_tree(&held);
            if brought {
                return true;
            }
            if into.exists() {
                let _ = crate::fsutil::remove_tree(into);
            }
        }
        false
    }

    /// Keep the private copy at `root`, exactly `tree` `d` with the
    /// epoch's times (`copy::settle` said so), for a later command
    /// (`take_copy`), in this build or a later one; at most
    /// [`COPIES_KEPT`] are kept, the oldest removed.
    pub fn keep_copy(
        &self,
        root: &Path,
        d: TreeDigest,
        seal: [u8; 32],
    ) -> Result<(), SandboxError> {
        let dir = self.copies_dir();
        if !dir.is_dir() {
            self.layout
                .private_dir(&dir)
                .map_err(|e| io_err("cannot create", &dir, e))?;
        }
        let id = new_id();
        let making = dir.join(format!(".new-{id}"));
        fs::create_dir(&making).map_err(|e| io_err("cannot create", &making, e))?;
        let record = CopyRecord {
            tree: d,
            epoch: self.epoch,
            seal,
        };
        let done = fs::rename(root, making.join("root"))
            .and_then(|_| fs::write(making.join("record"), record.text()))
            .and_then(|_| fs::rename(&making, dir.join(&id)));
        if let Err(e) = done {
            let _ = crate::fsutil::remove_tree(&making);
            return Err(io_err("cannot keep the copy in", &dir, e));
        }
        copies_verified().insert(dir.join(&id), seal);
        // The oldest beyond the few kept go.
        let mut all: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .filter_map(|e| Some((e.metadata().and_then(|m| m.modified()).ok()?, e.path())))
                    .collect()
            })
            .unwrap_or_default();
        all.sort();
        while all.len() > COPIES_KEPT {
            let (_, old) = all.remove(0);
            let gone = dir.join(format!(".gone-{}", new_id()));
            if fs::rename(&old, &gone).is_ok() {
                let _ = crate::fsutil::remove_tree(&gone);
            }
        }
        Ok(())
    }

    /// Turn the copy at `root`, exactly `from`, into exactly `to`: what
    /// `to` removed or changed in kind goes, then what differs is written
    /// (with parents, owners, modes and the epoch's times).
    fn bring(&self, root: &Path, from: &Tree, to: &Tree) -> Result<(), SandboxError> {
        let mut gone: Vec<&str> = Vec::new();
        for (path, e) in &from.entries {
            if matches!(e.kind, Kind::Device { .. }) {
                continue; // never on disk
            }
            let keep = match (to.get(path), &e.kind) {
                (Some(n), _) if n == e => true,
                (Some(n), Kind::Dir) => n.is_dir(),
                (Some(n), Kind::File { .. }) => matches!(n.kind, Kind::File { .. }),
                _ => false,
            };
            let covered = gone
                .last()
                .is_some_and(|g| path.starts_with(&format!("{g}/")));
            if !keep && !covered {
                gone.push(path);
            }
        }
        for path in &gone {
            // Parents are the tree's directories (the copy is the tree):
            // removed below a descriptor all the same.
            let at = root.join(path);
            let r = match fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() => crate::fsutil::remove_tree(&at),
                Ok(_) => crate::fsutil::remove_below(root, path),
                Err(_) => Ok(()),
            };
            r.map_err(|e| io_err("cannot remove", &at, e))?;
        }
        // Files that stay files but changed are written again whole.
        let mut kept_from = from.clone();
        for path in &gone {
            kept_from.remove_all(path);
        }
        self.write_changes(root, &kept_from, to, false)?;
        for path in &gone {
            let parent = root.join(crate::model::tree::parent(path));
            let _ = crate::fsutil::set_epoch_times(&parent, self.epoch);
        }
        Ok(())
    }
}

/// How many private copies are kept for commands without root: each is
/// a whole tree on disk.
pub const COPIES_KEPT: usize = 2;

/// What a kept copy is: `<tree digest> <epoch> <seal>`.
struct CopyRecord {
    tree: TreeDigest,
    epoch: u64,
    seal: [u8; 32],
}

impl CopyRecord {
    fn text(&self) -> String {
        format!(
            "{} {} {}\n",
            self.tree.hex(),
            self.epoch,
            blake3::Hash::from(self.seal).to_hex()
        )
    }

    fn read(dir: &Path) -> Option<CopyRecord> {
        let text = fs::read_to_string(dir.join("record")).ok()?;
        let mut parts = text.split_whitespace();
        Some(CopyRecord {
            tree: TreeDigest::parse(parts.next()?)?,
            epoch: parts.next()?.parse().ok()?,
            seal: *blake3::Hash::from_hex(parts.next()?).ok()?.as_bytes(),
        })
    }
}

/// Copies this process kept, with their seals: taken again without a walk.
fn copies_verified() -> std::sync::MutexGuard<'static, std::collections::HashMap<PathBuf, [u8; 32]>>
{
    static MAP: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<PathBuf, [u8; 32]>>,
    > = std::sync::OnceLock::new();
    MAP.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn copy_verified(path: &Path, seal: &[u8; 32]) -> bool {
    copies_verified().remove(path).is_some_and(|s| s == *seal)
}

/// Whether `layer` matches the seal in `seal` (once per process: a check
/// under way on another thread is waited for, not repeated); `parallel`:
/// on all cores (else on this thread alone, as a check in the background
/// must not take the cores from the build).
fn check_seal(layer: &Path, seal: &Path, parallel: bool) -> bool {
    use std::sync::{Arc, OnceLock};
    type Checks = std::sync::Mutex<std::collections::HashMap<PathBuf, Arc<OnceLock<bool>>>>;
    static CHECKING: OnceLock<Checks> = OnceLock::new();
    if verified().contains(layer) {
        return true;
    }
    let checks = CHECKING.get_or_init(Default::default);
    let once = checks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(layer.to_path_buf())
        .or_default()
        .clone();
    let ok = *once.get_or_init(|| {
        // `<digest>` or `<digest> erofs` (a packed layer).
        let recorded = fs::read_to_string(seal)
            .ok()
            .and_then(|t| blake3::Hash::from_hex(t.trim_end().trim_end_matches(PACKED_SEAL)).ok());
        let actual = if parallel {
            seal_of(layer)
        } else {
            seal_by_walk(layer)
        };
        recorded.is_some_and(|r| actual.is_ok_and(|s| blake3::Hash::from(s) == r))
    });
    if ok {
        verified().insert(layer.to_path_buf());
    } else {
        failed().insert(layer.to_path_buf());
    }
    let mut held = checks.lock().unwrap_or_else(|e| e.into_inner());
    if held.get(layer).is_some_and(|o| Arc::ptr_eq(o, &once)) {
        held.remove(layer);
    }
    ok
}

/// Check, on a thread of its own, the seals of the layers the last build
/// of the project `scope` (a hex digest of its spec's path) ran commands
/// on, below the state directory `layout`: done while the spec is read
/// and the steps before the first command run, the check the command
/// would wait for is over when it starts.
pub fn prefetch_seals(layout: &Layout, scope: &str) {
    let Ok(mappings) = fs::read_dir(layout.sandbox()) else {
        return;
    };
    let mut todo: Vec<(PathBuf, PathBuf)> = Vec::new();
    for m in mappings.flatten() {
        let rootfs = m.path().join("rootfs");
        let Ok(text) = fs::read_to_string(rootfs.join("used").join(scope)) else {
            continue;
        };
        for id in text
            .lines()
            .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            todo.push((rootfs.join("l").join(id), rootfs.join("s").join(id)));
        }
    }
    if todo.is_empty() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("kiln-seals".into())
        .spawn(move || {
            for (layer, seal) in todo {
                if layer.is_dir() {
                    check_seal(&layer, &seal, false);
                }
            }
        });
}

/// Start checking `layers` (with their seals) on a thread of their own
/// (one core: the build keeps the others), but those checked already.
fn check_later(mut layers: Vec<(PathBuf, PathBuf)>) {
    layers.retain(|(l, _)| !verified().contains(l) && !failed().contains(l));
    if layers.is_empty() {
        return;
    }
    // Without a thread, `confirm` checks them.
    let _ = std::thread::Builder::new()
        .name("kiln-seals".into())
        .spawn(move || {
            for (layer, seal) in layers {
                check_seal(&layer, &seal, false);
            }
        });
}

/// A set of layers this process found something of, locked.
type Layers = std::sync::Mutex<std::collections::HashSet<PathBuf>>;

fn locked(
    set: &'static std::sync::OnceLock<Layers>,
) -> std::sync::MutexGuard<'static, std::collections::HashSet<PathBuf>> {
    set.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Layers found not to match their seals in this process.
fn failed() -> std::sync::MutexGuard<'static, std::collections::HashSet<PathBuf>> {
    static SET: std::sync::OnceLock<Layers> = std::sync::OnceLock::new();
    locked(&SET)
}

/// Layers found to match their seals in this process.
fn verified() -> std::sync::MutexGuard<'static, std::collections::HashSet<PathBuf>> {
    static SET: std::sync::OnceLock<Layers> = std::sync::OnceLock::new();
    locked(&SET)
}

/// What stat says of an entry: what a seal covers. (Field types differ
/// between targets: the casts are not all no-ops everywhere.)
#[allow(clippy::unnecessary_cast)]
pub(crate) fn stat_fields(st: &rustix::fs::Stat) -> [u64; 10] {
    [
        u64::from(st.st_mode),
        u64::from(st.st_uid),
        u64::from(st.st_gid),
        st.st_size as u64,
        st.st_mtime as u64,
        st.st_mtime_nsec as u64,
        st.st_ctime as u64,
        st.st_ctime_nsec as u64,
        st.st_ino,
        st.st_rdev,
    ]
}

/// What stat says of every entry below `dir` (itself included), in the
/// order of a depth-first walk with sorted names, as one digest. The
/// directories are read on all cores, each opened below `dir` with no
/// link followed (`openat2`), and held open only while read.
pub fn seal_of(dir: &Path) -> std::io::Result<[u8; 32]> {
    use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
    use std::sync::Mutex;
    type Found = (Vec<Vec<u8>>, [u64; 10]);
    const DIR: OFlags = OFlags::RDONLY
        .union(OFlags::DIRECTORY)
        .union(OFlags::NOFOLLOW)
        .union(OFlags::CLOEXEC);
    fn visit<'s>(
        scope: &rayon::Scope<'s>,
        root: &'s rustix::fd::OwnedFd,
        at: Vec<Vec<u8>>,
        found: &'s Mutex<Vec<Found>>,
        failed: &'s Mutex<Option<rustix::io::Errno>>,
    ) {
        let run = || -> rustix::io::Result<()> {
            let rel = at.join(&b'/');
            let fd = rustix::fs::openat2(
                root,
                if rel.is_empty() { &b"."[..] } else { &rel[..] },
                DIR,
                Mode::empty(),
                ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH,
            )?;
            let mut here = Vec::new();
            for e in rustix::fs::Dir::read_from(&fd)? {
                let e = e?;
                let name = e.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                let st = rustix::fs::statat(&fd, e.file_name(), AtFlags::SYMLINK_NOFOLLOW)?;
                let mut path = at.clone();
                path.push(name.to_vec());
                if rustix::fs::FileType::from_raw_mode(st.st_mode)
                    == rustix::fs::FileType::Directory
                {
                    let next = path.clone();
                    scope.spawn(move |s| visit(s, root, next, found, failed));
                }
                here.push((path, stat_fields(&st)));
            }
            found.lock().unwrap_or_else(|e| e.into_inner()).extend(here);
            Ok(())
        };
        if let Err(e) = run() {
            failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(e);
        }
    }
    let top = rustix::fs::lstat(dir)?;
    let root = rustix::fs::open(dir, DIR, Mode::empty())?;
    let found: Mutex<Vec<Found>> = Mutex::new(Vec::new());
    let failed: Mutex<Option<rustix::io::Errno>> = Mutex::new(None);
    rayon::scope(|s| visit(s, &root, Vec::new(), &found, &failed));
    match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        // A kernel without openat2 (before 5.6): one walk by path.
        Some(rustix::io::Errno::NOSYS) => return seal_by_walk(dir),
        Some(e) => return Err(e.into()),
        None => {}
    }
    let mut found = found.into_inner().unwrap_or_else(|e| e.into_inner());
    found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut h = blake3::Hasher::new();
    h.update(&u64::from(top.st_mode).to_le_bytes());
    for (path, stat) in &found {
        let mut rel = String::new();
        for c in path {
            rel.push('/');
            rel.push_str(&String::from_utf8_lossy(c));
        }
        seal_entry(&mut h, &rel, stat);
    }
    Ok(*h.finalize().as_bytes())
}

/// One entry of a seal: its path (with a leading `/`) and what stat says.
fn seal_entry(h: &mut blake3::Hasher, rel: &str, stat: &[u64; 10]) {
    h.update(rel.as_bytes());
    h.update(&[0]);
    for v in stat {
        h.update(&v.to_le_bytes());
    }
}

/// The seal of a directory whose own mode is `top_mode`, from what stat
/// said of every entry below it (paths without a leading `/`, in the
/// order of a depth-first walk with sorted names): [`seal_of`]'s digest
/// without a walk of its own.
pub(crate) fn seal_digest<'a>(
    top_mode: u32,
    entries: impl Iterator<Item = (&'a str, &'a [u64; 10])>,
) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&u64::from(top_mode).to_le_bytes());
    for (path, stat) in entries {
        seal_entry(&mut h, &format!("/{path}"), stat);
    }
    *h.finalize().as_bytes()
}

/// [`seal_of`] by one walk of paths (kernels without `openat2`; and what
/// the test holds the parallel walk to).
fn seal_by_walk(dir: &Path) -> std::io::Result<[u8; 32]> {
    fn visit(dir: &Path, rel: &str, h: &mut blake3::Hasher) -> std::io::Result<()> {
        let mut names: Vec<std::ffi::OsString> = fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let st = rustix::fs::lstat(&path)?;
            let rel = format!("{rel}/{}", name.to_string_lossy());
            seal_entry(h, &rel, &stat_fields(&st));
            if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
                visit(&path, &rel, h)?;
            }
        }
        Ok(())
    }
    let mut h = blake3::Hasher::new();
    let top = rustix::fs::lstat(dir)?;
    h.update(&u64::from(top.st_mode).to_le_bytes());
    visit(dir, "", &mut h)?;
    Ok(*h.finalize().as_bytes())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tree::Kind;
    use crate::store::memory::MemoryStore;

    fn rootfs<'a>(layout: &'a Layout, store: &'a MemoryStore) -> Rootfs<'a> {
        Rootfs {
            layout,
            content: store,
            epoch: 0,
            ids: Ids::Own,
            scope: "test",
        }
    }

    #[test]
    fn a_layer_changed_on_disk_is_not_used_again() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let store = MemoryStore::new();
        let rootfs = rootfs(&layout, &store);
        let mut tree = Tree::new();
        tree.entries.insert(
            "etc/conf".into(),
            Entry {
                kind: Kind::File {
                    blob: store.put_blob(b"right\n").unwrap(),
                    size: 6,
                },
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        );
        tree.entries.insert("etc".into(), Entry::dir(0o755, 0, 0));
        let d = TreeDigest([7; 32]);
        let stack = rootfs.stack_on(d, &tree, &[], &|_| None).unwrap();
        assert_eq!(rootfs.stack_of(d), Some(stack.clone()));
        assert!(rootfs.confirm(&stack));
        // Edited in place (same size), as damage or a stray tool would.
        fs::write(stack[0].join("etc/conf"), b"wrong\n").unwrap();
        verified().clear();
        // Handed out while its seal is checked, then found out: not
        // confirmed, and not handed out again.
        assert_eq!(rootfs.stack_of(d), Some(stack.clone()));
        assert!(!rootfs.confirm(&stack));
        assert_eq!(rootfs.stack_of(d), None);
        // The tree is written out again, and that stack is sound.
        let again = rootfs.stack_on(d, &tree, &[], &|_| None).unwrap();
        assert_ne!(again, stack);
        assert_eq!(fs::read(again[0].join("etc/conf")).unwrap(), b"right\n");
        verified().clear();
        assert_eq!(rootfs.stack_of(d), Some(again.clone()));
        assert!(rootfs.confirm(&again));
        // A layer without a seal (from an older kiln) is not trusted.
        fs::remove_dir_all(layout.rootfs(&Ids::Own.tag()).join("s")).unwrap();
        verified().clear();
        assert!(!rootfs.confirm(&again));
        assert_eq!(rootfs.stack_of(d), None);
    }

    #[test]
    fn a_path_that_becomes_a_device_hides_what_it_replaced() {
        use std::os::unix::fs::FileTypeExt;
        if !rustix::process::geteuid().is_root() {
            return; // whiteouts are device nodes: root only
        }
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let store = MemoryStore::new();
        let rootfs = rootfs(&layout, &store);
        let file = Entry {
            kind: Kind::File {
                blob: store.put_blob(b"root:x:0:0\n").unwrap(),
                size: 11,
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        let device = Entry {
            kind: Kind::Device {
                class: crate::model::tree::DeviceClass::Char,
                major: 1,
                minor: 3,
            },
            mode: 0o666,
            uid: 0,
            gid: 0,
        };
        let mut old = Tree::new();
        old.entries.insert("etc".into(), Entry::dir(0o755, 0, 0));
        old.entries.insert("etc/passwd".into(), file.clone());
        old.entries.insert("var".into(), Entry::dir(0o755, 0, 0));
        old.entries.insert("var/x".into(), file);
        let mut new = old.clone();
        new.entries.insert("etc/passwd".into(), device.clone());
        new.entries.remove("var/x");
        new.entries.insert("var".into(), device);
        let layer = dir.path().join("layer");
        fs::create_dir(&layer).unwrap();
        rootfs.write_diff(&layer, &old, &new).unwrap();
        for p in ["etc/passwd", "var"] {
            let m = fs::symlink_metadata(layer.join(p)).unwrap();
            assert!(m.file_type().is_char_device(), "{p}");
            assert_eq!(
                std::os::unix::fs::MetadataExt::rdev(&m),
                0,
                "{p} is a whiteout"
            );
        }
        assert!(!layer.join("var/x").exists());
    }

    #[test]
    fn a_large_tree_written_whole_is_packed_and_its_image_sealed() {
        if !rustix::process::geteuid().is_root() || erofs_tool().is_none() {
            return; // packing is for overlays: root, with erofs-utils
        }
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let store = MemoryStore::new();
        let rootfs = Rootfs {
            ids: Ids::Mapped {
                uid_base: 200_000,
                gid_base: 200_000,
                count: 65_536,
            },
            ..rootfs(&layout, &store)
        };
        let mut tree = Tree::new();
        tree.entries.insert("d".into(), Entry::dir(0o755, 0, 0));
        for i in 0..PACK_MIN_ENTRIES {
            let body = format!("file {i}\n");
            tree.entries.insert(
                format!("d/f{i}"),
                Entry {
                    kind: Kind::File {
                        blob: store.put_blob(body.as_bytes()).unwrap(),
                        size: body.len() as u64,
                    },
                    mode: 0o640,
                    uid: 7,
                    gid: 8,
                },
            );
        }
        let d = TreeDigest([9; 32]);
        let stack = rootfs.stack_on(d, &tree, &[], &|_| None).unwrap();
        assert_eq!(stack.len(), 1);
        let image = rootfs.packed_image(&stack[0]).expect("packed");
        let names: Vec<_> = fs::read_dir(&stack[0])
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [PACKED_NAME]);
        // A kiln that knows no packed layers cannot read the seal.
        let seal = fs::read_to_string(rootfs.seal_file(&stack[0]).unwrap()).unwrap();
        assert!(blake3::Hash::from_hex(seal.trim()).is_err());
        verified().clear();
        assert!(rootfs.confirm(&stack));
        // Mounted as the sandbox mounts it, it is the tree: contents,
        // modes, owners moved into the range, the epoch's times.
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let out = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount -t erofs -o ro \"$1\" \"$2\" && cat \"$2/d/f2047\" && stat -c '%a %u %g %Y' \"$2/d/f5\" \"$2/d\" && ls \"$2/d\" | wc -l")
            .args(["-", image.to_str().unwrap(), mnt.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("file 2047\n640 200007 200008 0\n755 200000 200000 0\n{PACK_MIN_ENTRIES}\n")
        );
        // The image changed on disk: not used again, written out afresh.
        let mut f = fs::OpenOptions::new().append(true).open(&image).unwrap();
        std::io::Write::write_all(&mut f, b"x").unwrap();
        drop(f);
        verified().clear();
        assert!(!rootfs.confirm(&stack));
        assert_eq!(rootfs.stack_of(d), None);
        let again = rootfs.stack_on(d, &tree, &[], &|_| None).unwrap();
        assert_ne!(again, stack);
        assert!(rootfs.packed_image(&again[0]).is_some());
        // A name mkfs.erofs would cut short: the tree stays files.
        let mut long = tree.clone();
        long.entries
            .insert(format!("d/{}", "n".repeat(255)), Entry::dir(0o755, 0, 0));
        let l = rootfs
            .stack_on(TreeDigest([11; 32]), &long, &[], &|_| None)
            .unwrap();
        assert!(rootfs.packed_image(&l[0]).is_none());
        // A small tree stays a directory.
        let mut small = Tree::new();
        small.entries.insert("d".into(), Entry::dir(0o755, 0, 0));
        let s = rootfs
            .stack_on(TreeDigest([10; 32]), &small, &[], &|_| None)
            .unwrap();
        assert!(rootfs.packed_image(&s[0]).is_none());
        assert!(s[0].join("d").is_dir());
    }

    #[test]
    fn the_parallel_seal_is_the_walk_s() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for p in ["a", "a/b", "a-b", "a.b", "a/b/c", "z", "a/b/c/d"] {
            fs::create_dir_all(d.join(p)).unwrap();
        }
        for f in ["a/x", "a-b/y", "a/b/c/d/e", "top", "a.b/\u{e9}"] {
            fs::write(d.join(f), f).unwrap();
        }
        std::os::unix::fs::symlink("a/b", d.join("link")).unwrap();
        let parallel = seal_of(d).unwrap();
        assert_eq!(parallel, seal_by_walk(d).unwrap());
        fs::write(d.join("a/b/c/d/e"), "changed").unwrap();
        assert_ne!(seal_of(d).unwrap(), parallel);
        assert_eq!(seal_of(d).unwrap(), seal_by_walk(d).unwrap());
    }
}
