//! A stage tree on disk, for a plugin to work in, and back.
//!
//! Builtin steps never need this: they work on tree manifests. A plugin is
//! a real program with a file system, so its stage tree is written out to
//! a private directory in the state dir's `tmp/` (files copied from the
//! store, never linked: the guest may write to them), and read back after.
//!
//! Reading back must not hash what the guest left alone. Every file is
//! written with a sentinel mtime; a file whose inode, size and mtime are
//! still the ones written keeps its digest. Writing a file sets its mtime
//! to the host's clock, which is never the sentinel.

use crate::context::index::FileStat;
use crate::diag::Code;
use crate::diag::Diagnostic;
use crate::model::digest::BlobDigest;
use crate::model::tree::{Entry, Kind, Tree};
use crate::store::{ContentStore, Scratch};
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mtime every written file gets (one second after the epoch).
const SENTINEL: std::time::Duration = std::time::Duration::from_secs(1);

/// What was written, to tell later what changed.
pub struct Written {
    /// Files by path: (inode, size, digest).
    files: HashMap<String, (u64, u64, BlobDigest)>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Diagnostic {
    Diagnostic::io(what, path, &e)
}

/// Write the entries of `tree` below `subdir` (`""` for all of it) to `dest`,
/// which must not exist. Directories are left writable; modes and owners
/// stay in the tree.
pub fn write(
    store: &dyn ContentStore,
    tree: &Tree,
    subdir: &str,
    dest: &Path,
) -> Result<Written, Diagnostic> {
    if !dest.is_dir() {
        fs::create_dir_all(dest).map_err(|e| io("cannot create", dest, e))?;
    }
    let mut files = HashMap::new();
    let entries: Box<dyn Iterator<Item = (&String, &Entry)>> = if subdir.is_empty() {
        Box::new(tree.entries.iter())
    } else {
        Box::new(tree.descendants(subdir))
    };
    let strip = if subdir.is_empty() {
        0
    } else {
        subdir.len() + 1
    };
    for (path, e) in entries {
        let rel = &path[strip..];
        let at = dest.join(rel);
        match &e.kind {
            // A device or FIFO is nothing a plugin can use: it is not
            // written, and stays in the tree while its directory does.
            Kind::Device { .. } | Kind::Fifo => {}
            Kind::Dir => {
                fs::create_dir_all(&at).map_err(|err| io("cannot create", &at, err))?;
            }
            Kind::Symlink { target } => {
                std::os::unix::fs::symlink(target, &at)
                    .map_err(|err| io("cannot create", &at, err))?;
            }
            Kind::File { blob, size } => {
                let mut out = fs::File::create(&at).map_err(|err| io("cannot create", &at, err))?;
                store.copy_blob(*blob, &mut out).map_err(|e| match e {
                    crate::store::CopyError::Store(e) => Diagnostic::from(e),
                    crate::store::CopyError::Write(e) => io("cannot write", &at, e),
                })?;
                out.set_permissions(fs::Permissions::from_mode(0o644))
                    .map_err(|err| io("cannot write", &at, err))?;
                out.set_modified(std::time::UNIX_EPOCH + SENTINEL)
                    .map_err(|err| io("cannot write", &at, err))?;
                let ino = out
                    .metadata()
                    .map_err(|err| io("cannot stat", &at, err))?
                    .ino();
                files.insert(rel.to_string(), (ino, *size, *blob));
            }
        }
    }
    Ok(Written { files })
}

/// Read `dir` back as a tree: files the guest left alone keep their digest,
/// others are stored. Paths that were in `before` keep its mode and owner
/// (a WASI guest cannot change them); new files get `0644`, new
/// directories `0755`, owner `0:0`.
pub fn read_back(
    store: &dyn ContentStore,
    dir: &Path,
    before: &Tree,
    written: &Written,
) -> Result<Tree, Diagnostic> {
    let listed = crate::context::walk::walk(dir, &|_, _| false).map_err(|d| {
        if d.code == Code::CONTEXT_LINK_TARGET {
            Diagnostic::new(
                Code::WASM_NAME,
                format!(
                    "a plugin left a symlink whose target is not UTF-8 ({})",
                    d.message
                ),
            )
            .with_help(
                "kiln trees hold UTF-8 link targets; change the plugin to write UTF-8 targets",
            )
        } else if d.code == Code::CONTEXT_NAME {
            Diagnostic::new(
                Code::WASM_NAME,
                format!(
                    "a plugin left a file whose name is not UTF-8 ({})",
                    d.message
                ),
            )
            .with_help("kiln trees hold UTF-8 names; change the plugin to write UTF-8 names")
        } else {
            d
        }
    })?;
    let mut tree = Tree::new();
    for found in listed {
        let path = found.path;
        let old = before.get(&path);
        let same_kind = old.is_some_and(|o| {
            std::mem::discriminant(&o.kind) == std::mem::discriminant(&found.entry.kind)
        });
        let keep = |default: u32| -> (u32, u32, u32) {
            match old {
                Some(o) if same_kind => (o.mode, o.uid, o.gid),
                _ => (default, 0, 0),
            }
        };
        let entry = match found.entry.kind {
            // The listing skips them; none are made by a plugin.
            Kind::Device { .. } | Kind::Fifo => continue,
            Kind::Dir => {
                let (mode, uid, gid) = keep(0o755);
                Entry::dir(mode, uid, gid)
            }
            Kind::Symlink { target } => {
                let (_, uid, gid) = keep(0o777);
                Entry {
                    kind: Kind::Symlink { target },
                    mode: 0o777,
                    uid,
                    gid,
                }
            }
            Kind::File { size, .. } => {
                let at = dir.join(&path);
                let unchanged = match (found.stat, written.files.get(&path)) {
                    (Some(stat), Some((ino, old_size, blob))) => {
                        unchanged(&stat, *ino, *old_size).then_some(*blob)
                    }
                    _ => None,
                };
                let blob = match unchanged {
                    Some(b) => b,
                    None => {
                        let mut f = fs::File::open(&at).map_err(|e| io("cannot read", &at, e))?;
                        store.put_blob_reader(&mut f, None)?.0
                    }
                };
                let (mode, uid, gid) = keep(0o644);
                Entry {
                    kind: Kind::File { blob, size },
                    mode,
                    uid,
                    gid,
                }
            }
        };
        tree.entries.insert(path, entry);
    }
    // Devices and FIFOs were not written out: they stay where their
    // directory still is.
    for (path, e) in &before.entries {
        if matches!(e.kind, Kind::Device { .. } | Kind::Fifo)
            && !tree.entries.contains_key(path)
            && (crate::model::tree::parent(path).is_empty()
                || tree.is_dir(crate::model::tree::parent(path)))
        {
            tree.entries.insert(path.clone(), e.clone());
        }
    }
    Ok(tree)
}

fn unchanged(stat: &FileStat, ino: u64, size: u64) -> bool {
    stat.ino() == ino && stat.size() == size && stat.mtime_ns() == SENTINEL.as_nanos() as i128
}

/// Empty directories in the store's `tmp/`, handed out one per plugin run
/// and taken back emptied: creating and removing directories costs more
/// than a whole warm plugin run on some file systems. Removed when dropped.
#[derive(Default)]
pub struct ScratchDirs {
    free: std::sync::Mutex<Vec<PathBuf>>,
    all: std::sync::Mutex<Vec<PathBuf>>,
}

impl ScratchDirs {
    /// An empty directory.
    pub fn take(&self, store: Scratch<'_>) -> Result<PathBuf, Diagnostic> {
        if let Some(p) = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(p);
        }
        let p = store.tmp_path("scratch");
        fs::create_dir_all(&p).map_err(|e| io("cannot create", &p, e))?;
        self.all
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p.clone());
        Ok(p)
    }

    /// Empty a directory and keep it for the next run (or drop it if it
    /// cannot be emptied).
    pub fn give_back(&self, dir: PathBuf) {
        let emptied = fs::read_dir(&dir).and_then(|rd| {
            for e in rd {
                let e = e?;
                if e.file_type()?.is_dir() {
                    fs::remove_dir_all(e.path())?;
                } else {
                    fs::remove_file(e.path())?;
                }
            }
            Ok(())
        });
        if emptied.is_ok() {
            self.free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(dir);
        } else {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

impl Drop for ScratchDirs {
    fn drop(&mut self) {
        for p in self.all.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = fs::remove_dir_all(p);
        }
    }
}

/// A private directory in the store's `tmp/`, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(store: Scratch<'_>, hint: &str) -> TempDir {
        TempDir(store.tmp_path(hint))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
