//! The store in a local state directory: blobs and trees as files,
//! actions in an append-only log, verification on every read, quarantine
//! for what is found damaged.

use super::layout::{self, Layout};
use super::{
    Access, ActionCache, BlobRead, ContentStore, IngestError, StoreError, actions, owners, packs,
};
use crate::diag::Code;
use crate::diag::Diagnostic;
use crate::model::digest::{BlobDigest, StepKey, TreeDigest};
use crate::model::state::Action;
use crate::model::tree::{Stored, Tree};
use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub struct Store {
    /// First, so that the open pack is closed while the lock and the
    /// owner's registration still hold.
    packs: packs::Packs,
    layout: Layout,
    /// Read on first use: a build answered from its memo never needs it.
    actions: std::sync::OnceLock<actions::ActionLog>,
    _lock: File,
    owner: owners::Owner,
    counter: AtomicU64,
    /// Verify objects that are already present before trusting them (set
    /// by `--no-cache` and by a build repairing the store).
    verify_existing: AtomicBool,
    verified: Mutex<HashSet<[u8; 32]>>,
    /// What was found damaged and what was done about it, for the build to report.
    repairs: Mutex<Vec<String>>,
}

/// Refuse a state directory another user could change under kiln: the
/// directories on the way to it (and it) must be this user's or root's,
/// and not writable by every user unless sticky (as `/tmp`); a symlink on
/// the way must be this user's or root's (`fsutil::trusted_path`), as git
/// refuses a repository another user owns. Otherwise that user could put
/// symlinks where kiln writes (its blobs, its logs), or swap the path
/// while kiln builds, and kiln, as root say, would write through them. A
/// new state directory is made for its user alone (0700); an existing one
/// is left as it is.
pub fn check_owner(root: &Path) -> Result<(), Diagnostic> {
    let resolved = crate::fsutil::trusted_path(root).map_err(|u| {
        Diagnostic::new(
            Code::STATE_OWNER,
            format!(
                "kiln will not use the state directory `{}`: `{}` cannot be trusted ({})",
                root.display(),
                u.path.display(),
                u.why
            ),
        )
        .with_note("another user could change it, and so make kiln read or write where they choose")
    })?;
    if fs::symlink_metadata(&resolved).is_err() {
        use std::os::unix::fs::DirBuilderExt;
        let _ = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&resolved);
    }
    Ok(())
}

/// The part of a state directory that is this machine's own: its paths
/// (temp names, records, the layer cache, the OCI blob store) and the
/// process that owns the temp files made there. What is stored by
/// content is reached through [`super::ContentStore`], which a store
/// elsewhere can serve as well.
#[derive(Clone, Copy)]
pub struct Scratch<'a> {
    layout: &'a Layout,
    owner: &'a owners::Owner,
    counter: &'a AtomicU64,
}

impl<'a> Scratch<'a> {
    pub fn layout(&self) -> &'a Layout {
        self.layout
    }

    pub fn owner(&self) -> &'a owners::Owner {
        self.owner
    }

    pub fn root(&self) -> &'a Path {
        self.layout.root()
    }

    /// A fresh path in `tmp/` (not created), named for this process so
    /// that `kiln gc` and the next open know whose it is.
    pub fn tmp_path(&self, hint: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.layout
            .tmp()
            .join(format!("{}-{n}-{hint}", self.owner.token()))
    }

    /// Write `bytes` to `dest` atomically (a temp file renamed over it).
    /// What is written this way names nothing in the store's open pack
    /// (logs, records of this machine's own); see [`Store::write_atomic`].
    pub fn write_atomic(&self, dest: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
        let tmp = self.tmp_path("w");
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.set_permissions(fs::Permissions::from_mode(mode))?;
            drop(f);
            commit(&tmp, dest)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// Move a finished temp file to its final name.
fn commit(tmp: &Path, dest: &Path) -> io::Result<()> {
    match fs::rename(tmp, dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(p) = dest.parent() {
                fs::create_dir_all(p)?;
            }
            fs::rename(tmp, dest)
        }
        r => r,
    }
}

impl Store {
    /// Open (creating if needed) the store at `root` and take its lock.
    pub fn open(root: &Path, access: Access) -> Result<Store, Diagnostic> {
        Store::open_waiting(root, access, &|_| {})
    }

    /// Like [`Store::open`]; `waiting` is told why, if the lock is busy.
    pub fn open_waiting(
        root: &Path,
        access: Access,
        waiting: &dyn Fn(&str),
    ) -> Result<Store, Diagnostic> {
        let layout = Layout::new(root);
        check_owner(root)?;
        for sub in layout::DIRS {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(|e| {
                Diagnostic::io("cannot create the state directory", &p, &e)
                    .with_help("pick a writable place with `--state-dir DIR` or `KILN_STATE_DIR`")
            })?;
        }
        // A state directory inside a project is never committed.
        let ignore = root.join(".gitignore");
        if fs::symlink_metadata(&ignore).is_err()
            && let Ok(mut f) = File::options().write(true).create_new(true).open(&ignore)
        {
            let _ = f.write_all(b"# kiln's state directory: nothing here belongs in git\n*\n");
        }
        let lock_path = layout.lock();
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Diagnostic::io("cannot open the store lock", &lock_path, &e))?;
        let locked = match access {
            Access::Shared => lock.try_lock_shared(),
            Access::Exclusive => lock.try_lock(),
        };
        if locked.is_err() {
            waiting(match access {
                Access::Shared => "`kiln gc` is running",
                Access::Exclusive => "a build is running",
            });
            let r = match access {
                Access::Shared => lock.lock_shared(),
                Access::Exclusive => lock.lock(),
            };
            r.map_err(|e| Diagnostic::io("cannot lock the store", &lock_path, &e))?;
        }
        let owner = owners::Owner::register(&layout)
            .map_err(|e| Diagnostic::io("cannot register in", &layout.owners(), &e))?;
        // What killed processes left behind goes now.
        owners::sweep(&layout, owner.token());
        // Trees and cache mounts an older kiln kept where any user could
        // reach them (setuid files included), and overlays it left mounted:
        // closed and unmounted now, removed by `kiln gc`.
        for old in layout.old_sandbox() {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = fs::symlink_metadata(&old)
                && m.is_dir()
                && m.permissions().mode() & 0o077 != 0
            {
                crate::fsutil::unmount_below(&old);
                let _ = fs::set_permissions(&old, fs::Permissions::from_mode(0o700));
            }
        }
        Ok(Store {
            packs: packs::Packs::new(layout.packs(), layout.tmp(), owner.token()),
            layout,
            actions: std::sync::OnceLock::new(),
            _lock: lock,
            owner,
            counter: AtomicU64::new(0),
            verify_existing: AtomicBool::new(false),
            verified: Mutex::new(HashSet::new()),
            repairs: Mutex::new(Vec::new()),
        })
    }

    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// This process's owner token (names its temp files).
    pub fn owner(&self) -> &owners::Owner {
        &self.owner
    }

    /// This state directory's own files, for those (exporters) that read
    /// contents through [`super::ContentStore`] and need the directory
    /// only for scratch and records.
    pub fn scratch(&self) -> Scratch<'_> {
        Scratch {
            layout: &self.layout,
            owner: &self.owner,
            counter: &self.counter,
        }
    }

    /// Verify objects that are already present before relying on them.
    pub fn set_verify_existing(&self, on: bool) {
        self.verify_existing.store(on, Ordering::Relaxed);
    }

    /// A fresh path in `tmp/` (not created).
    pub fn tmp_path(&self, hint: &str) -> PathBuf {
        self.scratch().tmp_path(hint)
    }

    /// Write `bytes` to `dest` atomically. What is written may name blobs:
    /// the open pack is closed first.
    pub fn write_atomic(&self, dest: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
        self.packs.close()?;
        self.write_loose(dest, bytes, mode)
    }

    /// Close the open pack of small blobs, so that other processes find
    /// them: before storing anything that names them.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.packs
            .close()
            .map_err(StoreError::io(&self.layout.packs()))
    }

    fn write_loose(&self, dest: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
        self.scratch().write_atomic(dest, bytes, mode)
    }

    pub fn blob_path(&self, d: BlobDigest) -> PathBuf {
        self.layout.blob(d)
    }

    fn missing(what: &'static str, hex: String) -> StoreError {
        StoreError::Missing { what, digest: hex }
    }

    /// Move a damaged object out of the way and remember it for the report.
    fn quarantine(&self, what: &'static str, path: &Path, hex: &str) -> StoreError {
        let moved_to = self.move_to_quarantine(path, &format!("{what}-{hex}"));
        self.damaged(what, hex, moved_to)
    }

    /// Move a damaged file into `quarantine/` (or remove it, so that it is
    /// written again, if it cannot be moved).
    fn move_to_quarantine(&self, path: &Path, label: &str) -> Option<PathBuf> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let to = self.layout.quarantine().join(format!("{label}-{nanos}"));
        match fs::rename(path, &to) {
            Ok(()) => Some(to),
            // Someone else moved it first, or it cannot be moved: remove it
            // so that it is written again.
            Err(_) => {
                let _ = fs::remove_file(path);
                None
            }
        }
    }

    fn damaged(&self, what: &'static str, hex: &str, moved_to: Option<PathBuf>) -> StoreError {
        let e = StoreError::Corrupt {
            what,
            digest: hex.to_string(),
            moved_to,
        };
        self.repairs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(e.to_string());
        e
    }

    /// Where a small blob is in the packs (`fresh`: having read the packs
    /// other processes closed since). Packs found damaged on the way are
    /// moved aside and reported.
    fn packed(&self, d: BlobDigest, fresh: bool) -> Option<packs::Loc> {
        let (loc, bad) = if fresh {
            self.packs.find_fresh(&d.0)
        } else {
            self.packs.find(&d.0)
        };
        for b in bad {
            let name = b.path.file_name().map(|n| n.to_string_lossy().into_owned());
            let moved = self.move_to_quarantine(&b.path, &name.unwrap_or_default());
            self.repairs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!(
                    "the pack of small blobs `{}` in the cache is damaged ({}){}",
                    b.path.display(),
                    b.why,
                    moved
                        .map(|p| format!("; kiln moved it to `{}`", p.display()))
                        .unwrap_or_default()
                ));
        }
        loc
    }

    /// A packed blob's bytes, checked against its digest: on a mismatch its
    /// pack is moved aside (its table no longer says what it holds).
    fn read_packed(&self, d: BlobDigest, loc: &packs::Loc) -> Result<Vec<u8>, StoreError> {
        let bytes = match loc.read() {
            Ok(b) => Some(b),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => None,
            Err(e) => {
                return Err(StoreError::io(&self.layout.packs().join(loc.pack.name()))(
                    e,
                ));
            }
        };
        match bytes {
            Some(b) if BlobDigest::from_hash(blake3::hash(&b)) == d => Ok(b),
            _ => {
                let moved_to = self
                    .packs
                    .forget(&d.0, loc)
                    .and_then(|p| self.move_to_quarantine(&p, loc.pack.name()));
                Err(self.damaged("blob", &d.hex(), moved_to))
            }
        }
    }

    /// Whether a packed blob may be relied on: always, unless verifying.
    fn packed_intact(&self, d: BlobDigest, loc: &packs::Loc) -> bool {
        if !self.verify_existing.load(Ordering::Relaxed) {
            return true;
        }
        let verified = || self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified().contains(&d.0) {
            return true;
        }
        let ok = self.read_packed(d, loc).is_ok();
        if ok {
            verified().insert(d.0);
        }
        ok
    }

    /// Store a small blob (at most [`packs::MAX`] bytes) in the open pack,
    /// unless a pack holds it already.
    fn put_small(&self, d: BlobDigest, bytes: &[u8]) -> Result<(), StoreError> {
        if self
            .packed(d, false)
            .is_some_and(|l| self.packed_intact(d, &l))
        {
            return Ok(());
        }
        self.packs
            .append(d.0, bytes)
            .map_err(StoreError::io(&self.layout.packs()))
    }

    /// The packs of small blobs (gc).
    pub(super) fn packs(&self) -> &packs::Packs {
        &self.packs
    }

    /// Every packed blob, having read every pack (gc).
    pub(super) fn all_packed(&self) -> Vec<([u8; 32], packs::Loc)> {
        self.packed(BlobDigest([0; 32]), true);
        self.packs.locations()
    }

    /// Everything found damaged since the store was opened (and taken
    /// out of the way), one line each.
    pub fn take_repairs(&self) -> Vec<String> {
        std::mem::take(&mut *self.repairs.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn tree_path(&self, d: TreeDigest) -> PathBuf {
        self.layout.tree(d)
    }

    pub fn action_log(&self) -> &actions::ActionLog {
        self.actions.get_or_init(|| {
            let path = self.layout.actions_log();
            // An unreadable log means every step misses; writing to it then
            // reports the error.
            actions::ActionLog::load(&path).unwrap_or_else(|_| actions::ActionLog::empty(&path))
        })
    }

    /// Remember which cache entries a build used; `kiln gc` evicts the
    /// entries no recent build used first. The newest 32 lists are kept.
    pub fn record_use(&self, keys: &[StepKey]) -> io::Result<()> {
        let dir = self.layout.used();
        fs::create_dir_all(&dir)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let bytes: Vec<u8> = keys.iter().flat_map(|k| k.0).collect();
        let mut lists = used_lists(&self.layout);
        // The same keys as the newest list (a build that changed nothing):
        // the ranking gc reads from the lists would not change.
        if lists.first().is_some_and(|newest| {
            fs::metadata(newest).is_ok_and(|m| m.len() == bytes.len() as u64)
                && fs::read(newest).is_ok_and(|b| b == bytes)
        }) {
            return Ok(());
        }
        self.write_atomic(
            &dir.join(format!("{nanos:032}-{}", self.owner.token())),
            &bytes,
            0o644,
        )?;
        lists = used_lists(&self.layout);
        while lists.len() > 32 {
            if let Some(old) = lists.pop() {
                let _ = fs::remove_file(old);
            }
        }
        Ok(())
    }

    /// Remove leftovers of killed builds. Only safe while holding the lock alone.
    pub fn clear_tmp(&self) {
        if let Ok(rd) = fs::read_dir(self.layout.tmp()) {
            for e in rd.flatten() {
                crate::fsutil::remove_any(&e.path());
            }
        }
        owners::sweep_all(&self.layout, self.owner.token());
    }
}

/// Copy what `reader` yields to `f` (the temp file `tmp`), hashing it on
/// the way; returns its digest and size. `limit` bounds the size: a longer
/// stream fails with [`io::ErrorKind::FileTooLarge`].
fn write_hashed(
    reader: &mut dyn Read,
    f: &mut File,
    tmp: &Path,
    limit: Option<u64>,
) -> Result<(BlobDigest, u64), StoreError> {
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    crate::fsutil::with_buffer(256 * 1024, |buf| {
        loop {
            let n = match reader.read(buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::io(tmp)(e)),
            };
            size += n as u64;
            if limit.is_some_and(|l| size > l) {
                return Err(StoreError::io(tmp)(io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    "the stream is larger than the limit",
                )));
            }
            hasher.update(&buf[..n]);
            f.write_all(&buf[..n]).map_err(StoreError::io(tmp))?;
        }
    })?;
    Ok((BlobDigest::from_hash(hasher.finalize()), size))
}

impl ContentStore for Store {
    /// Whether the blob is present (and, when verifying, intact: a damaged
    /// one is quarantined and reported absent, so it is written again).
    fn has_blob(&self, d: BlobDigest) -> bool {
        if let Some(loc) = self.packed(d, false) {
            return self.packed_intact(d, &loc);
        }
        if !self.blob_path(d).exists() {
            return false;
        }
        if !self.verify_existing.load(Ordering::Relaxed) {
            return true;
        }
        if self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&d.0)
        {
            return true;
        }
        let ok = self.copy_blob(d, &mut io::sink()).is_ok();
        if ok {
            self.verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(d.0);
        }
        ok
    }

    fn put_blob(&self, bytes: &[u8]) -> Result<BlobDigest, StoreError> {
        let d = BlobDigest::from_hash(blake3::hash(bytes));
        if bytes.len() <= packs::MAX {
            self.put_small(d, bytes)?;
        } else if !self.has_blob(d) {
            let path = self.blob_path(d);
            self.write_loose(&path, bytes, 0o444)
                .map_err(StoreError::io(&path))?;
        }
        Ok(d)
    }

    /// Store what a reader yields (streamed: never whole in memory).
    /// Returns its digest and size. `limit` bounds the size; a longer
    /// stream fails with [`io::ErrorKind::FileTooLarge`].
    fn put_blob_reader(
        &self,
        reader: &mut dyn Read,
        limit: Option<u64>,
    ) -> Result<(BlobDigest, u64), StoreError> {
        let tmp = self.tmp_path("blob");
        // A small blob goes to a pack: read it whole first.
        let head = read_head(reader).map_err(StoreError::io(&tmp))?;
        if limit.is_some_and(|l| head.len() as u64 > l) {
            return Err(StoreError::io(&tmp)(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "the stream is larger than the limit",
            )));
        }
        if head.len() <= packs::MAX {
            let d = BlobDigest::from_hash(blake3::hash(&head));
            self.put_small(d, &head)?;
            return Ok((d, head.len() as u64));
        }
        let result = (|| {
            let mut f = File::create(&tmp).map_err(StoreError::io(&tmp))?;
            let (d, size) = write_hashed(&mut (&head[..]).chain(reader), &mut f, &tmp, limit)?;
            if self.has_blob(d) {
                let _ = fs::remove_file(&tmp);
                return Ok((d, size));
            }
            f.set_permissions(fs::Permissions::from_mode(0o444))
                .map_err(StoreError::io(&tmp))?;
            drop(f);
            let path = self.blob_path(d);
            commit(&tmp, &path).map_err(StoreError::io(&path))?;
            Ok((d, size))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Copy a file's bytes into the store, hashing as it goes; the result
    /// must match `expected` (the digest the cache key was made from).
    fn ingest(&self, reader: &mut dyn Read, expected: BlobDigest) -> Result<(), IngestError> {
        if self.has_blob(expected) {
            return Ok(());
        }
        let tmp = self.tmp_path("blob");
        let head = read_head(reader).map_err(StoreError::io(&tmp))?;
        if head.len() <= packs::MAX {
            let actual = BlobDigest::from_hash(blake3::hash(&head));
            if actual != expected {
                return Err(IngestError::Changed {
                    expected: expected.hex(),
                    actual: actual.hex(),
                });
            }
            return Ok(self.put_small(actual, &head)?);
        }
        let result = (|| {
            let mut f = File::create(&tmp).map_err(StoreError::io(&tmp))?;
            let (actual, _) = write_hashed(&mut (&head[..]).chain(reader), &mut f, &tmp, None)?;
            if actual != expected {
                return Err(IngestError::Changed {
                    expected: expected.hex(),
                    actual: actual.hex(),
                });
            }
            f.set_permissions(fs::Permissions::from_mode(0o444))
                .map_err(StoreError::io(&tmp))?;
            drop(f);
            let path = self.blob_path(expected);
            commit(&tmp, &path).map_err(StoreError::io(&path))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// A reader of a blob that checks its digest at the end: the final
    /// `read` fails (and the blob is quarantined) if the bytes were wrong.
    fn blob_reader(&self, d: BlobDigest) -> Result<Box<dyn BlobRead + '_>, StoreError> {
        if let Some(loc) = self.packed(d, false) {
            return Ok(Box::new(PackedReader(io::Cursor::new(
                self.read_packed(d, &loc)?,
            ))));
        }
        let path = self.blob_path(d);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Perhaps in a pack another build closed since this one
                // looked.
                return match self.packed(d, true) {
                    Some(loc) => Ok(Box::new(PackedReader(io::Cursor::new(
                        self.read_packed(d, &loc)?,
                    )))),
                    None => Err(Store::missing("blob", d.hex())),
                };
            }
            Err(e) => return Err(StoreError::io(&path)(e)),
        };
        Ok(Box::new(BlobReader {
            store: self,
            file,
            hasher: blake3::Hasher::new(),
            expected: d,
            failure: None,
            checked: false,
        }))
    }

    fn has_tree(&self, d: TreeDigest) -> bool {
        self.tree_path(d).exists()
    }

    fn put_tree(&self, tree: &Tree) -> Result<TreeDigest, StoreError> {
        self.put_tree_as(tree, None)
    }

    fn put_tree_on(
        &self,
        tree: &Tree,
        base_digest: TreeDigest,
        base: &Tree,
    ) -> Result<TreeDigest, StoreError> {
        self.put_tree_as(tree, Some((base_digest, base)))
    }

    /// Load a tree manifest, verifying it against its digest.
    fn get_tree(&self, d: TreeDigest) -> Result<Tree, StoreError> {
        self.read_tree(d, MAX_DELTA_DEPTH)
    }
}

/// Trees stored as differences from trees stored as differences…, at
/// most this deep: reading a tree reads at most this many small files
/// besides one whole manifest.
const MAX_DELTA_DEPTH: u8 = 8;

impl Store {
    /// Store `tree`, as its differences from `base` when that is stored,
    /// not too deep, and the differences are few (an eighth of the
    /// entries at most); else whole.
    fn put_tree_as(
        &self,
        tree: &Tree,
        base: Option<(TreeDigest, &Tree)>,
    ) -> Result<TreeDigest, StoreError> {
        // The tree names blobs: every process must find them.
        self.flush()?;
        let bytes = tree.to_bytes();
        let d = TreeDigest::from_hash(blake3::hash(&bytes));
        let path = self.tree_path(d);
        let present = path.exists()
            && (!self.verify_existing.load(Ordering::Relaxed) || self.get_tree(d).is_ok());
        if present {
            return Ok(d);
        }
        let delta = base
            .filter(|(b, _)| *b != d)
            .and_then(|(b, base)| Some((b, base, self.tree_depth(b)?)))
            .filter(|(_, _, depth)| *depth < MAX_DELTA_DEPTH)
            .filter(|(_, base, _)| {
                let most = tree.entries.len().max(base.entries.len()) / 8;
                tree.changes_from(base).nth(most).is_none()
            })
            .map(|(b, base, depth)| tree.delta_bytes(d, b, base, depth + 1));
        let stored = delta.as_deref().unwrap_or(&bytes);
        self.write_loose(&path, stored, 0o444)
            .map_err(StoreError::io(&path))?;
        Ok(d)
    }

    /// What the first bytes of the stored tree `d` say: `None` when it
    /// is not stored, `Some(None)` for a whole tree, else the base it is
    /// a delta on and how many deltas deep it is.
    fn tree_head(&self, d: TreeDigest) -> Option<Option<(TreeDigest, u8)>> {
        use std::io::Read;
        let mut head = Vec::with_capacity(Stored::HEAD);
        fs::File::open(self.tree_path(d))
            .ok()?
            .take(Stored::HEAD as u64)
            .read_to_end(&mut head)
            .ok()?;
        Some(Stored::base_of(&head))
    }

    /// How many deltas deep the stored tree `d` is (0: whole).
    fn tree_depth(&self, d: TreeDigest) -> Option<u8> {
        Some(self.tree_head(d)?.map_or(0, |(_, depth)| depth))
    }

    /// The base tree the stored tree `d` is a delta on, if it is one
    /// (what `gc` keeps with it).
    pub fn tree_base(&self, d: TreeDigest) -> Option<TreeDigest> {
        self.tree_head(d)?.map(|(base, _)| base)
    }

    /// Read the stored tree `d`, a delta at most `limit` deep. A whole
    /// tree's bytes are checked against its name; a delta by its sum,
    /// which covers the name (its result is then the tree of that name
    /// when its base is the tree the base's name says); a delta of the
    /// first form, whose sum does not, by its result encoded again.
    fn read_tree(&self, d: TreeDigest, limit: u8) -> Result<Tree, StoreError> {
        let (tree, checked) = self.read_stored(d, limit)?;
        if !checked && tree.digest() != d {
            return Err(self.quarantine("tree", &self.tree_path(d), &d.hex()));
        }
        Ok(tree)
    }

    /// A stored tree, and whether it was checked against its name (a
    /// whole one is; a delta's result is not yet).
    fn read_stored(&self, d: TreeDigest, limit: u8) -> Result<(Tree, bool), StoreError> {
        let path = self.tree_path(d);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Store::missing("tree", d.hex()));
            }
            Err(e) => return Err(StoreError::io(&path)(e)),
        };
        match Stored::read(&bytes, d) {
            Some(Stored::Whole(t)) => {
                if TreeDigest::from_hash(blake3::hash(&bytes)) != d {
                    return Err(self.quarantine("tree", &path, &d.hex()));
                }
                Ok((t, true))
            }
            Some(
                delta @ Stored::Delta {
                    base, depth, bound, ..
                },
            ) if (1..=limit).contains(&depth) => {
                let (below, base_checked) = match self.read_stored(base, depth - 1) {
                    Ok(found) => found,
                    // A delta whose base is gone or damaged cannot be read:
                    // it goes too (what needs it is built again).
                    Err(e) if e.is_damage() => {
                        let _ = self.quarantine("tree", &path, &d.hex());
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                };
                // A delta bound to its name, on a base checked against its
                // own, gives the tree of that name: no need to encode it
                // again to check it.
                Ok((delta.apply(below), bound && base_checked))
            }
            _ => Err(self.quarantine("tree", &path, &d.hex())),
        }
    }
}

impl ActionCache for Store {
    fn here(&self) -> &dyn ActionCache {
        self
    }

    /// A hit costs no IO: the log is read once per build. The tree is not
    /// checked here: trees leave the store only with their entries (`kiln
    /// gc`), and a tree damaged or removed by hand is found when it is read.
    fn get(&self, key: StepKey) -> Option<Action> {
        self.action_log().get(key)
    }

    fn put(&self, key: StepKey, action: &Action) -> Result<(), StoreError> {
        self.flush()?;
        self.action_log()
            .put(key, action)
            .map_err(StoreError::io(&self.layout.actions_log()))
    }

    fn forget(&self, key: StepKey) {
        self.action_log().forget(key);
    }

    fn claim(
        &self,
        key: StepKey,
        waiting: &dyn Fn() -> bool,
    ) -> Result<Option<Box<dyn Send>>, StoreError> {
        let dir = self.layout.inflight();
        let path = dir.join(format!("{}.lock", key.hex()));
        Ok(Claim::take(&dir, &path, waiting)
            .map_err(StoreError::io(&path))?
            .map(|c| Box::new(c) as Box<dyn Send>))
    }

    fn get_fresh(&self, key: StepKey) -> Option<Action> {
        self.action_log().refresh();
        self.action_log().get(key)
    }
}

/// A step being run: an exclusive `flock` on `inflight/<key>.lock`. The
/// holder removes the file before it lets go, so a waiter that wakes on a
/// removed file tries again on the path's new one.
struct Claim {
    path: PathBuf,
    _file: File,
}

impl Claim {
    fn take(dir: &Path, path: &Path, waiting: &dyn Fn() -> bool) -> std::io::Result<Option<Claim>> {
        use std::os::unix::fs::MetadataExt;
        // A claim this process holds already (two stages of one build
        // with the same step, one of them run by a worker that stole it
        // while waiting inside the other): waiting would wait on itself.
        // The step runs unclaimed.
        if held().contains(path) {
            return Ok(None);
        }
        if !dir.is_dir() {
            fs::create_dir_all(dir)?;
        }
        let mut pause = std::time::Duration::from_millis(2);
        loop {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)?;
            loop {
                match file.try_lock() {
                    Ok(()) => break,
                    Err(std::fs::TryLockError::WouldBlock) => {
                        if waiting() {
                            return Ok(None);
                        }
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(std::time::Duration::from_millis(100));
                    }
                    Err(std::fs::TryLockError::Error(e)) => return Err(e),
                }
            }
            let ours = file.metadata()?;
            let same =
                fs::metadata(path).is_ok_and(|m| m.ino() == ours.ino() && m.dev() == ours.dev());
            if same {
                held().insert(path.to_path_buf());
                return Ok(Some(Claim {
                    path: path.to_path_buf(),
                    _file: file,
                }));
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Removed while still locked: whoever opens the path next makes a
        // new file, and a waiter on this one sees it is gone.
        let _ = fs::remove_file(&self.path);
        held().remove(&self.path);
    }
}

/// The claims this process holds.
fn held() -> std::sync::MutexGuard<'static, HashSet<PathBuf>> {
    static HELD: std::sync::OnceLock<Mutex<HashSet<PathBuf>>> = std::sync::OnceLock::new();
    HELD.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The first [`packs::MAX`] + 1 bytes of a stream: all of it when it is
/// small enough for a pack.
fn read_head(reader: &mut dyn Read) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    reader.take(packs::MAX as u64 + 1).read_to_end(&mut head)?;
    Ok(head)
}

/// A packed blob's bytes, read whole and checked already.
struct PackedReader(io::Cursor<Vec<u8>>);

impl Read for PackedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl BlobRead for PackedReader {
    fn failure(&mut self) -> Option<StoreError> {
        None
    }

    fn size_hint(&self) -> Option<u64> {
        Some(self.0.get_ref().len() as u64)
    }
}

/// A blob's bytes, checked against its digest at the end of the stream.
pub struct BlobReader<'a> {
    store: &'a Store,
    file: File,
    hasher: blake3::Hasher,
    expected: BlobDigest,
    failure: Option<StoreError>,
    checked: bool,
}

impl BlobRead for BlobReader<'_> {
    fn size_hint(&self) -> Option<u64> {
        self.file.metadata().ok().map(|m| m.len())
    }

    fn failure(&mut self) -> Option<StoreError> {
        self.failure.take()
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.file.read(buf) {
            Ok(n) => n,
            Err(e) => {
                let message = e.to_string();
                let kind = e.kind();
                self.failure = Some(StoreError::io(&self.store.blob_path(self.expected))(e));
                return Err(io::Error::new(kind, message));
            }
        };
        if n == 0 && !buf.is_empty() {
            if self.checked {
                return Ok(0);
            }
            self.checked = true;
            if BlobDigest::from_hash(self.hasher.finalize()) != self.expected {
                let hex = self.expected.hex();
                let e = self
                    .store
                    .quarantine("blob", &self.store.blob_path(self.expected), &hex);
                let message = e.to_string();
                self.failure = Some(e);
                return Err(io::Error::other(message));
            }
        } else {
            self.hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// The lists written by [`Store::record_use`], newest first.
pub fn used_lists(layout: &Layout) -> Vec<PathBuf> {
    let mut lists: Vec<PathBuf> = fs::read_dir(layout.used())
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    lists.sort();
    lists.reverse();
    lists
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::ImageConfig;
    use crate::model::tree;
    use crate::store::CopyError;

    #[test]
    fn a_claim_is_let_go_and_never_waits_on_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Access::Shared).unwrap();
        let key = StepKey([7; 32]);
        let first = store.claim(key, &|| panic!("no wait")).unwrap();
        assert!(first.is_some());
        // Held by this process: the second claimant runs unclaimed at once
        // (waiting would be waiting on itself).
        assert!(store.claim(key, &|| panic!("no wait")).unwrap().is_none());
        drop(first);
        assert_eq!(
            fs::read_dir(dir.path().join("inflight")).unwrap().count(),
            0
        );
        let again = store.claim(key, &|| panic!("no wait")).unwrap();
        assert!(again.is_some());
        // Another process's claim is waited on (an flock on a new open
        // file: what another process has).
        let path = dir
            .path()
            .join("inflight")
            .join(format!("{}.lock", key.hex()));
        drop(again);
        let other = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap();
        other.lock().unwrap();
        let waits = std::sync::atomic::AtomicUsize::new(0);
        let got = store
            .claim(key, &|| {
                waits.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= 3
            })
            .unwrap();
        assert!(got.is_none(), "told to stop waiting");
        assert!(waits.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    }

    #[test]
    fn a_use_list_equal_to_the_newest_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Access::Shared).unwrap();
        let (a, b) = (StepKey([1; 32]), StepKey([2; 32]));
        store.record_use(&[a, b]).unwrap();
        store.record_use(&[a, b]).unwrap();
        assert_eq!(used_lists(store.layout()).len(), 1);
        store.record_use(&[b, a]).unwrap();
        store.record_use(&[a]).unwrap();
        store.record_use(&[a, b]).unwrap();
        let lists = used_lists(store.layout());
        assert_eq!(lists.len(), 4);
        assert_eq!(
            fs::read(&lists[0]).unwrap(),
            [[1u8; 32], [2u8; 32]].concat()
        );
    }

    /// A blob too large for a pack: a file of its own.
    fn large(c: u8) -> Vec<u8> {
        vec![c; packs::MAX + 1]
    }

    /// Change the first byte of `content` where a closed pack holds it.
    fn tamper_packed(store: &Store, content: &[u8]) -> PathBuf {
        store.flush().unwrap();
        for (_, path) in packs::list(&store.layout().packs()) {
            let mut bytes = fs::read(&path).unwrap();
            if let Some(at) = bytes.windows(content.len()).position(|w| w == content) {
                bytes[at] ^= 1;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
                fs::write(&path, &bytes).unwrap();
                return path;
            }
        }
        panic!("no pack holds the content");
    }

    #[test]
    fn blobs_and_trees_round_trip_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Access::Shared).unwrap();
        let d = store.put_blob(&large(b'h')).unwrap();
        assert_eq!(store.read_blob(d).unwrap(), large(b'h'));
        // Corrupt it behind the store's back: reading must notice.
        let p = store.blob_path(d);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, large(b'j')).unwrap();
        assert!(matches!(
            store.read_blob(d),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(!store.has_blob(d), "a damaged blob is moved aside");
        // The same for a small blob, in a pack.
        let d = store.put_blob(b"hello").unwrap();
        assert!(!store.blob_path(d).exists(), "small blobs are packed");
        assert_eq!(store.read_blob(d).unwrap(), b"hello");
        tamper_packed(&store, b"hello");
        let other = Store::open(dir.path(), Access::Shared).unwrap();
        assert!(other.has_blob(d), "not read: trusted");
        assert!(matches!(
            other.read_blob(d),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(!other.has_blob(d));
        assert!(packs::list(&store.layout().packs()).is_empty());

        let mut t = Tree::new();
        t.put("x", tree::Entry::dir(0o755, 0, 0), false).unwrap();
        let td = store.put_tree(&t).unwrap();
        assert_eq!(store.get_tree(td).unwrap(), t);
        assert!(matches!(
            store.get_tree(TreeDigest([7; 32])),
            Err(StoreError::Missing { .. })
        ));
    }

    /// A tree of `n` files, `changed` of them with other content.
    fn wide_tree(store: &Store, n: usize, changed: usize) -> Tree {
        let mut t = Tree::new();
        t.put("d", tree::Entry::dir(0o755, 0, 0), false).unwrap();
        let blob = store.put_blob(b"same").unwrap();
        let other = store.put_blob(b"other").unwrap();
        for i in 0..n {
            let blob = if i < changed { other } else { blob };
            let e = tree::Entry {
                kind: tree::Kind::File { blob, size: 4 },
                mode: 0o644,
                uid: 0,
                gid: 0,
            };
            t.put(&format!("d/f{i:05}"), e, false).unwrap();
        }
        t
    }

    #[test]
    fn a_tree_made_from_another_is_stored_as_its_differences() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Access::Shared).unwrap();
        let base = wide_tree(&store, 2000, 0);
        let bd = store.put_tree(&base).unwrap();
        let whole = fs::metadata(store.tree_path(bd)).unwrap().len();
        // A chain of small changes: each stored as a delta on the one
        // before, up to the deepest chain, then whole again.
        let mut prev = (bd, base);
        let mut sizes = Vec::new();
        for i in 1..=(MAX_DELTA_DEPTH as usize + 1) {
            let t = wide_tree(&store, 2000, i);
            let d = store.put_tree_on(&t, prev.0, &prev.1).unwrap();
            assert_eq!(d, t.digest(), "the digest is the whole tree's");
            assert_eq!(store.get_tree(d).unwrap(), t);
            sizes.push(fs::metadata(store.tree_path(d)).unwrap().len());
            prev = (d, t);
        }
        assert!(
            sizes[..MAX_DELTA_DEPTH as usize]
                .iter()
                .all(|s| *s * 20 < whole),
            "{sizes:?} against {whole}"
        );
        assert_eq!(*sizes.last().unwrap(), whole, "past the depth, whole");
        // Many changes: whole.
        let t = wide_tree(&store, 2000, 1000);
        let base = wide_tree(&store, 2000, 0);
        let d = store.put_tree_on(&t, bd, &base).unwrap();
        assert_eq!(fs::metadata(store.tree_path(d)).unwrap().len(), whole);
        // A base not stored: whole.
        let t = wide_tree(&store, 1999, 3);
        let mut other = base.clone();
        other.entries.remove("d/f01999");
        let d = store.put_tree_on(&t, other.digest(), &other).unwrap();
        assert_eq!(store.tree_base(d), None);
    }

    #[test]
    fn a_damaged_delta_or_base_is_found_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Access::Shared).unwrap();
        let base = wide_tree(&store, 500, 0);
        let bd = store.put_tree(&base).unwrap();
        let one = wide_tree(&store, 500, 1);
        let d1 = store.put_tree_on(&one, bd, &base).unwrap();
        let two = wide_tree(&store, 500, 2);
        let d2 = store.put_tree_on(&two, d1, &one).unwrap();
        assert_eq!(store.tree_base(d2), Some(d1));
        assert_eq!(store.tree_base(d1), Some(bd));
        // A byte of the middle delta's entries changed: found as itself.
        let p1 = store.tree_path(d1);
        let mut bytes = fs::read(&p1).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::set_permissions(&p1, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p1, &bytes).unwrap();
        assert!(store.get_tree(d2).unwrap_err().is_damage());
        assert!(
            !store.has_tree(d1) && !store.has_tree(d2),
            "both moved aside"
        );
        assert!(store.has_tree(bd));
        // Stored again (as a build after the repair does), and read.
        let d1 = store.put_tree_on(&one, bd, &base).unwrap();
        assert_eq!(store.get_tree(d1).unwrap(), one);
        // The base gone: the delta cannot be read, and goes too.
        fs::remove_file(store.tree_path(bd)).unwrap();
        assert!(store.get_tree(d1).unwrap_err().is_damage());
        assert!(!store.has_tree(d1));
        // A delta renamed to another tree's name is refused.
        let base = wide_tree(&store, 500, 0);
        let bd = store.put_tree(&base).unwrap();
        let d1 = store.put_tree_on(&one, bd, &base).unwrap();
        let d2 = store.put_tree_on(&two, bd, &base).unwrap();
        let (p1, p2) = (store.tree_path(d1), store.tree_path(d2));
        fs::set_permissions(&p1, fs::Permissions::from_mode(0o644)).unwrap();
        fs::copy(&p2, &p1).unwrap();
        assert!(store.get_tree(d1).unwrap_err().is_damage());
        assert_eq!(store.get_tree(d2).unwrap(), two);
    }

    /// Deltas of the first form (their sum over the differences alone)
    /// are still read, their result checked against the name by encoding
    /// it; one renamed to another tree's name is refused as before.
    #[test]
    fn a_delta_of_the_first_form_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Access::Shared).unwrap();
        let base = wide_tree(&store, 300, 0);
        let bd = store.put_tree(&base).unwrap();
        let (one, two) = (wide_tree(&store, 300, 1), wide_tree(&store, 300, 2));
        let d1 = store.put_tree_on(&one, bd, &base).unwrap();
        let d2 = store.put_tree_on(&two, bd, &base).unwrap();
        let first_form = |d: TreeDigest| {
            let path = store.tree_path(d);
            let mut bytes = fs::read(&path).unwrap();
            assert!(bytes.starts_with(b"kiln-tree-delta-2\0"));
            bytes[..18].copy_from_slice(b"kiln-tree-delta-1\0");
            let body = bytes[18 + 33 + 32..].to_vec();
            bytes[18 + 33..18 + 33 + 32].copy_from_slice(blake3::hash(&body).as_bytes());
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            bytes
        };
        let (b1, b2) = (first_form(d1), first_form(d2));
        fs::write(store.tree_path(d1), &b1).unwrap();
        assert_eq!(store.get_tree(d1).unwrap(), one);
        assert_eq!(store.tree_base(d1), Some(bd));
        fs::write(store.tree_path(d1), &b2).unwrap();
        assert!(store.get_tree(d1).unwrap_err().is_damage());
        fs::write(store.tree_path(d2), &b2).unwrap();
        assert_eq!(store.get_tree(d2).unwrap(), two);
    }

    #[test]
    fn ingest_refuses_changed_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Access::Shared).unwrap();
        let expected = BlobDigest::from_hash(blake3::hash(b"one"));
        let err = store.ingest(&mut &b"two"[..], expected).unwrap_err();
        assert!(matches!(err, IngestError::Changed { .. }));
        assert!(!store.has_blob(expected));
        store.ingest(&mut &b"one"[..], expected).unwrap();
        assert!(store.has_blob(expected));
        // Large ones too, streamed to a file.
        let big = BlobDigest::from_hash(blake3::hash(&large(1)));
        let err = store.ingest(&mut &large(2)[..], big).unwrap_err();
        assert!(matches!(err, IngestError::Changed { .. }));
        store.ingest(&mut &large(1)[..], big).unwrap();
        assert!(store.blob_path(big).exists());
        store.flush().unwrap();
        assert_eq!(fs::read_dir(store.layout().tmp()).unwrap().count(), 0);
    }

    #[test]
    fn actions_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let key = StepKey([3; 32]);
        let state = {
            let store = Store::open(dir.path(), Access::Shared).unwrap();
            let td = store.put_tree(&Tree::new()).unwrap();
            let state = Action {
                tree: Some(td),
                config: ImageConfig::default(),
                test: None,
            };
            ActionCache::put(&store, key, &state).unwrap();
            state
        };
        let store = Store::open(dir.path(), Access::Shared).unwrap();
        assert_eq!(ActionCache::get(&store, key), Some(state));
        ActionCache::forget(&store, key);
        assert_eq!(ActionCache::get(&store, key), None);
    }

    #[test]
    fn a_damaged_pack_is_quarantined_and_its_blobs_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Access::Shared).unwrap();
        let d = store.put_blob(b"data").unwrap();
        let e = store.put_blob(b"else").unwrap();
        let pack = tamper_packed(&store, b"data");
        let mut out = Vec::new();
        let Err(CopyError::Store(err)) = store.copy_blob(d, &mut out) else {
            panic!("a damaged blob was copied");
        };
        assert!(
            err.is_damage() && err.to_string().contains("quarantine"),
            "{err}"
        );
        assert!(!pack.exists());
        assert_eq!(store.take_repairs().len(), 1);
        // The whole pack went: its other blobs are missing, not trusted.
        assert!(!store.has_blob(e));
        assert!(matches!(
            store.read_blob(e),
            Err(StoreError::Missing { .. })
        ));
        assert_eq!(store.put_blob(b"data").unwrap(), d);
        assert_eq!(store.read_blob(d).unwrap(), b"data");
        // A pack whose table is damaged is moved aside when read.
        store.flush().unwrap();
        let (_, path) = packs::list(&store.layout().packs()).remove(0);
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 30] ^= 1;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&path, &bytes).unwrap();
        let other = Store::open(dir.path(), Access::Shared).unwrap();
        assert!(!other.has_blob(d));
        let repairs = other.take_repairs();
        assert!(
            repairs[0].contains("pack") && repairs[0].contains("sum"),
            "{repairs:?}"
        );
        assert!(!path.exists());
    }

    #[test]
    fn packed_blobs_are_seen_by_other_stores_once_the_pack_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(dir.path(), Access::Shared).unwrap();
        let b = Store::open(dir.path(), Access::Shared).unwrap();
        // `b` has read the packs (none) before `a` writes.
        assert!(!b.has_blob(BlobDigest([1; 32])));
        let d = a.put_blob(b"shared").unwrap();
        assert!(!b.has_blob(d));
        // Storing a tree closes the pack: a reader finds the blob.
        a.put_tree(&Tree::new()).unwrap();
        assert_eq!(b.read_blob(d).unwrap(), b"shared");
        assert!(b.has_blob(d));
        // And a store dropped closes its pack.
        let e = a.put_blob(b"at the end").unwrap();
        drop(a);
        assert_eq!(b.read_blob(e).unwrap(), b"at the end");
        assert_eq!(fs::read_dir(b.layout().tmp()).unwrap().count(), 0);
    }

    #[test]
    fn damaged_blobs_are_quarantined_and_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Access::Shared).unwrap();
        let d = store.put_blob(&large(b'd')).unwrap();
        let p = store.blob_path(d);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, large(b'x')).unwrap();
        // Copying out notices, moves the blob aside and says so.
        let mut out = Vec::new();
        let Err(CopyError::Store(err)) = store.copy_blob(d, &mut out) else {
            panic!("a damaged blob was copied");
        };
        assert!(err.is_damage(), "{err}");
        assert!(err.to_string().contains("quarantine"), "{err}");
        assert!(!p.exists());
        assert_eq!(store.take_repairs().len(), 1);
        assert_eq!(
            fs::read_dir(store.layout().quarantine()).unwrap().count(),
            1
        );
        // The next write of the same content heals it.
        assert_eq!(store.put_blob(&large(b'd')).unwrap(), d);
        assert_eq!(store.read_blob(d).unwrap(), large(b'd'));
    }

    #[test]
    fn verifying_mode_heals_a_damaged_blob_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Access::Shared).unwrap();
        let d = store.put_blob(&large(b'd')).unwrap();
        let p = store.blob_path(d);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, large(b'x')).unwrap();
        // Without verification an existing blob is trusted; with it, the
        // damaged copy is replaced.
        store.set_verify_existing(true);
        assert_eq!(store.put_blob(&large(b'd')).unwrap(), d);
        assert_eq!(fs::read(&p).unwrap(), large(b'd'));
        // A packed one: written again into a new pack.
        let small = store.put_blob(b"small").unwrap();
        tamper_packed(&store, b"small");
        let store = Store::open(dir.path(), Access::Shared).unwrap();
        store.set_verify_existing(true);
        assert_eq!(store.put_blob(b"small").unwrap(), small);
        assert_eq!(store.read_blob(small).unwrap(), b"small");
        store.flush().unwrap();
        let fresh = Store::open(dir.path(), Access::Shared).unwrap();
        assert_eq!(fresh.read_blob(small).unwrap(), b"small");
    }

    #[test]
    fn streamed_blobs_respect_their_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Access::Shared).unwrap();
        let data = vec![5u8; 100_000];
        let (d, n) = store
            .put_blob_reader(&mut &data[..], Some(100_000))
            .unwrap();
        assert_eq!(
            (d, n),
            (BlobDigest::from_hash(blake3::hash(&data)), 100_000)
        );
        let err = store
            .put_blob_reader(&mut &data[..], Some(99_999))
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Io { ref source, .. } if source.kind() == io::ErrorKind::FileTooLarge)
        );
        assert_eq!(fs::read_dir(store.layout().tmp()).unwrap().count(), 0);
    }
}
