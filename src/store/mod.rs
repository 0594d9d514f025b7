//! The content-addressed store in the state directory.
//!
//! Layout (all below the state dir, `.kiln/` by default):
//!
//! ```text
//! lock                  flock: builds share it, `kiln gc` takes it alone
//! blobs/ab/<blake3>     file contents, read-only, named by their digest
//! trees/ab/<blake3>     tree manifests (JSON), named by their digest
//! actions.log           action cache: step key -> resulting state (see `actions`)
//! links/<blob>-<meta>   link sources for `dir` exports (see `linkable`)
//! index/<hash>.bin      stat index of a context directory
//! records/              what the last builds did (`kiln explain`, gc roots)
//! parse/                lowered spec files, so a no-op build skips KDL parsing
//! tmp/                  files being written; renamed into place when whole
//! ```
//!
//! Invariants: a file appears under its final name only when complete
//! (temp file + rename), so a killed build leaves nothing a later build
//! trusts. Blobs and trees are verified against their digest when read.
//! Nothing outside this module writes below the state dir, and no stored
//! blob is ever handed out to be written: exports link to `links/`
//! copies, checked before reuse.

pub mod actions;
pub mod digest;
pub mod gc;
pub mod records;
pub mod state;
pub mod tree;

use crate::diag::Diagnostic;
use digest::{BlobDigest, StepKey, TreeDigest};
use state::Action;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tree::Tree;

/// How a process holds the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Builds: many at once.
    Shared,
    /// Garbage collection: alone.
    Exclusive,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {digest} is missing from the cache")]
    Missing { what: &'static str, digest: String },
    #[error("{what} {digest} in the cache is corrupt (its content does not match its digest)")]
    Corrupt { what: &'static str, digest: String },
    #[error("{0}")]
    Io(#[from] io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the file changed while it was being read (expected digest {expected}, read {actual})")]
    Changed { expected: String, actual: String },
    #[error("{0}")]
    Io(#[from] io::Error),
}

pub struct Store {
    root: PathBuf,
    /// Read on first use: a build answered from its memo never needs it.
    actions: std::sync::OnceLock<actions::ActionLog>,
    _lock: File,
    counter: AtomicU64,
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
        for sub in ["blobs", "trees", "links", "index", "records", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(|e| {
                Diagnostic::io("cannot create the state directory", &p, &e)
                    .with_help("pick a writable place with `--state-dir DIR` or `KILN_STATE_DIR`")
            })?;
        }
        let lock_path = root.join("lock");
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
        Ok(Store {
            root: root.to_path_buf(),
            actions: std::sync::OnceLock::new(),
            _lock: lock,
            counter: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn shard(&self, kind: &str, hex: &str) -> PathBuf {
        self.root.join(kind).join(&hex[..2]).join(hex)
    }

    /// A fresh path in `tmp/` (not created).
    pub fn tmp_path(&self, hint: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}-{hint}", std::process::id()))
    }

    /// Move a finished temp file to its final name.
    fn commit(&self, tmp: &Path, dest: &Path) -> io::Result<()> {
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

    /// Write `bytes` to `dest` atomically.
    pub fn write_atomic(&self, dest: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
        let tmp = self.tmp_path("w");
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.set_permissions(fs::Permissions::from_mode(mode))?;
            drop(f);
            self.commit(&tmp, dest)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    pub fn blob_path(&self, d: BlobDigest) -> PathBuf {
        self.shard("blobs", &d.hex())
    }

    pub fn has_blob(&self, d: BlobDigest) -> bool {
        self.blob_path(d).exists()
    }

    pub fn put_blob(&self, bytes: &[u8]) -> io::Result<BlobDigest> {
        let d = BlobDigest::from_hash(blake3::hash(bytes));
        if !self.has_blob(d) {
            self.write_atomic(&self.blob_path(d), bytes, 0o444)?;
        }
        Ok(d)
    }

    /// Copy a file's bytes into the store, hashing as it goes; the result
    /// must match `expected` (the digest the cache key was made from).
    pub fn ingest(&self, reader: &mut dyn Read, expected: BlobDigest) -> Result<(), IngestError> {
        if self.has_blob(expected) {
            return Ok(());
        }
        let tmp = self.tmp_path("blob");
        let result = (|| {
            let mut f = File::create(&tmp)?;
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(IngestError::Io(e)),
                };
                hasher.update(&buf[..n]);
                f.write_all(&buf[..n])?;
            }
            let actual = BlobDigest::from_hash(hasher.finalize());
            if actual != expected {
                return Err(IngestError::Changed {
                    expected: expected.hex(),
                    actual: actual.hex(),
                });
            }
            f.set_permissions(fs::Permissions::from_mode(0o444))?;
            drop(f);
            self.commit(&tmp, &self.blob_path(expected))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Read a blob whole, verifying it.
    pub fn read_blob(&self, d: BlobDigest) -> Result<Vec<u8>, StoreError> {
        let bytes = match fs::read(self.blob_path(d)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Missing {
                    what: "blob",
                    digest: d.hex(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        if BlobDigest::from_hash(blake3::hash(&bytes)) != d {
            return Err(StoreError::Corrupt {
                what: "blob",
                digest: d.hex(),
            });
        }
        Ok(bytes)
    }

    pub fn open_blob(&self, d: BlobDigest) -> Result<File, StoreError> {
        File::open(self.blob_path(d)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::Missing {
                what: "blob",
                digest: d.hex(),
            },
            _ => StoreError::Io(e),
        })
    }

    pub fn tree_path(&self, d: TreeDigest) -> PathBuf {
        self.shard("trees", &d.hex())
    }

    pub fn put_tree(&self, tree: &Tree) -> io::Result<TreeDigest> {
        let bytes = tree.to_bytes();
        let d = TreeDigest::from_hash(blake3::hash(&bytes));
        let path = self.tree_path(d);
        if !path.exists() {
            self.write_atomic(&path, &bytes, 0o444)?;
        }
        Ok(d)
    }

    pub fn has_tree(&self, d: TreeDigest) -> bool {
        self.tree_path(d).exists()
    }

    /// Load a tree manifest, verifying it against its digest.
    pub fn get_tree(&self, d: TreeDigest) -> Result<Tree, StoreError> {
        let bytes = match fs::read(self.tree_path(d)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Missing {
                    what: "tree",
                    digest: d.hex(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        if TreeDigest::from_hash(blake3::hash(&bytes)) != d {
            return Err(StoreError::Corrupt {
                what: "tree",
                digest: d.hex(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|_| StoreError::Corrupt {
            what: "tree",
            digest: d.hex(),
        })
    }

    /// Look up a step's result. The tree is not checked here (a hit costs
    /// no IO): trees leave the store only with their entries (`kiln gc`),
    /// and a tree damaged or removed by hand is found when it is read.
    pub fn get_action(&self, key: StepKey) -> Option<Action> {
        self.action_log().get(key)
    }

    /// Drop a cache entry whose result turned out to be unreadable.
    pub fn forget_action(&self, key: StepKey) {
        self.action_log().forget(key);
    }

    pub fn put_action(&self, key: StepKey, state: &Action) -> io::Result<()> {
        self.action_log().put(key, state)
    }

    pub fn action_log(&self) -> &actions::ActionLog {
        self.actions.get_or_init(|| {
            let path = self.root.join("actions.log");
            // An unreadable log means every step misses; writing to it then
            // reports the error.
            actions::ActionLog::load(&path).unwrap_or_else(|_| actions::ActionLog::empty(&path))
        })
    }

    /// Remember which cache entries a build used; `kiln gc` evicts the
    /// entries no recent build used first. The newest 32 lists are kept.
    pub fn record_use(&self, keys: &[StepKey]) -> io::Result<()> {
        let dir = self.root.join("records").join("used");
        fs::create_dir_all(&dir)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let bytes: Vec<u8> = keys.iter().flat_map(|k| k.0).collect();
        self.write_atomic(
            &dir.join(format!("{nanos:032}-{}", std::process::id())),
            &bytes,
            0o644,
        )?;
        let mut lists = used_lists(&self.root);
        while lists.len() > 32 {
            if let Some(old) = lists.pop() {
                let _ = fs::remove_file(old);
            }
        }
        Ok(())
    }

    /// A file with the blob's bytes and the given mode, owner and mtime,
    /// for exports to hard-link. Link sources are private copies, never the
    /// blob itself, and are recreated when their size, mtime or mode shows
    /// that someone wrote through a link.
    pub fn linkable(
        &self,
        blob: BlobDigest,
        size: u64,
        mode: u32,
        owner: Option<(u32, u32)>,
        mtime: u64,
    ) -> Result<PathBuf, StoreError> {
        let (uid, gid) = owner.unwrap_or((u32::MAX, u32::MAX));
        let name = format!("{}-{mode:o}-{uid}-{gid}-{mtime}", blob.hex());
        let path = self.root.join("links").join(&name[..2]).join(&name);
        if let Ok(m) = fs::symlink_metadata(&path)
            && m.len() == size
            && m.mtime() == mtime as i64
            && m.mtime_nsec() == 0
            && m.mode() & 0o7777 == mode
        {
            return Ok(path);
        }
        let tmp = self.tmp_path("link");
        let result = (|| -> Result<(), StoreError> {
            let mut src = self.open_blob(blob)?;
            let mut dst = File::create(&tmp)?;
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = src.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                dst.write_all(&buf[..n])?;
            }
            if BlobDigest::from_hash(hasher.finalize()) != blob {
                return Err(StoreError::Corrupt {
                    what: "blob",
                    digest: blob.hex(),
                });
            }
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&dst, Some(uid), Some(gid))?;
            }
            dst.set_permissions(fs::Permissions::from_mode(mode))?;
            dst.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime))?;
            drop(dst);
            self.commit(&tmp, &path)?;
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|_| path)
    }

    /// Remove leftovers of killed builds. Only safe while holding the lock alone.
    pub fn clear_tmp(&self) {
        let tmp = self.root.join("tmp");
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    let _ = fs::remove_dir_all(&p);
                } else {
                    let _ = fs::remove_file(&p);
                }
            }
        }
    }
}

/// The lists written by [`Store::record_use`], newest first.
pub fn used_lists(root: &Path) -> Vec<PathBuf> {
    let mut lists: Vec<PathBuf> = fs::read_dir(root.join("records").join("used"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    lists.sort();
    lists.reverse();
    lists
}

#[cfg(test)]
mod tests {
    use super::*;
    use state::ImageConfig;

    #[test]
    fn blobs_and_trees_round_trip_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Access::Shared).unwrap();
        let d = store.put_blob(b"hello").unwrap();
        assert_eq!(store.read_blob(d).unwrap(), b"hello");
        // Corrupt it behind the store's back: reading must notice.
        let p = store.blob_path(d);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, b"jello").unwrap();
        assert!(matches!(
            store.read_blob(d),
            Err(StoreError::Corrupt { .. })
        ));

        let mut t = Tree::new();
        t.put("x", tree::Entry::dir(0o755, 0, 0), false).unwrap();
        let td = store.put_tree(&t).unwrap();
        assert_eq!(store.get_tree(td).unwrap(), t);
        assert!(matches!(
            store.get_tree(TreeDigest([7; 32])),
            Err(StoreError::Missing { .. })
        ));
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
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
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
            };
            store.put_action(key, &state).unwrap();
            state
        };
        let store = Store::open(dir.path(), Access::Shared).unwrap();
        assert_eq!(store.get_action(key), Some(state));
        store.forget_action(key);
        assert_eq!(store.get_action(key), None);
    }

    #[test]
    fn link_sources_are_rebuilt_after_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Access::Shared).unwrap();
        let d = store.put_blob(b"data").unwrap();
        let p = store.linkable(d, 4, 0o644, None, 0).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"data");
        fs::write(&p, b"evil!").unwrap();
        let p2 = store.linkable(d, 4, 0o644, None, 0).unwrap();
        assert_eq!(fs::read(&p2).unwrap(), b"data");
        assert_eq!(store.read_blob(d).unwrap(), b"data");
    }
}
