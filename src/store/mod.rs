//! The content-addressed store in the state directory.
//!
//! Where everything lives is [`layout::Layout`]'s to say. Invariants: a
//! file appears under its final name only when complete (temp file +
//! rename), so a killed build leaves nothing a later build trusts. Blobs
//! and trees are verified against their digest whenever their bytes are
//! read, and an object found damaged is moved to `quarantine/` at once, so
//! the next write of the same content puts a good copy in its place (see
//! [`Store::take_repairs`] for how the build reports it). Nothing outside
//! this module writes below the state dir, and no stored blob is ever
//! handed out to be written: exports copy bytes out, verifying them.

pub mod actions;
pub mod checked;
pub mod gc;
pub mod layout;
mod local;
pub mod memory;
pub mod oci;
pub mod owners;
pub mod packs;
pub mod records;
pub mod remote;

pub use local::{BlobReader, Scratch, Store, check_owner as check_state_dir, used_lists};

use crate::diag::Code;
use crate::diag::Diagnostic;
use crate::model::digest::{BlobDigest, StepKey, TreeDigest};
use crate::model::state::Action;
use crate::model::tree::Tree;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

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
    #[error("{what} {digest} in the cache is damaged (its content does not match its digest){}",
        moved_to.as_ref().map(|p| format!("; kiln moved it to `{}`", p.display())).unwrap_or_default())]
    Corrupt {
        what: &'static str,
        digest: String,
        moved_to: Option<PathBuf>,
    },
    #[error("{}", io_message(path, source))]
    Io { path: PathBuf, source: io::Error },
    /// Bytes offered to the store that are not what they claim to be (a
    /// blob of another digest or size than its descriptor's): refused, and
    /// nothing stored. Not damage: the store is sound.
    #[error("{0}")]
    Refused(String),
}

fn io_message(path: &Path, e: &io::Error) -> String {
    crate::diag::io_message("cannot use", path, e)
}

impl StoreError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether this is damage to the store (a missing or corrupt object),
    /// which rebuilding without the cache repairs.
    pub fn is_damage(&self) -> bool {
        !matches!(self, StoreError::Io { .. } | StoreError::Refused(_))
    }

    /// The error as the user sees it.
    pub fn diagnostic(&self) -> Diagnostic {
        match self {
            StoreError::Io { path, source } => Diagnostic::io("cannot use", path, source),
            StoreError::Refused(why) => Diagnostic::new(Code::IMAGE_REFUSED, why.clone()),
            _ => Diagnostic::new(Code::STORE_DAMAGED, self.to_string()).with_help(
                "kiln rebuilds what needed it without the cache; if this repeats, check the disk",
            ),
        }
    }
}

impl From<StoreError> for Diagnostic {
    fn from(e: StoreError) -> Diagnostic {
        e.diagnostic()
    }
}

/// Why a blob could not be copied out: the store's side, or the writer's.
#[derive(Debug)]
pub enum CopyError {
    Store(StoreError),
    Write(io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the file changed while it was being read (expected digest {expected}, read {actual})")]
    Changed { expected: String, actual: String },
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Content-addressed bytes and tree manifests: what a step reads and
/// writes. The local store is one; a remote cache (the Remote Execution
/// API's CAS) would be another.
pub trait ContentStore: Sync {
    fn has_blob(&self, d: BlobDigest) -> bool;
    fn put_blob(&self, bytes: &[u8]) -> Result<BlobDigest, StoreError>;
    /// Store what a reader yields, streamed; at most `limit` bytes (a
    /// longer stream fails with [`io::ErrorKind::FileTooLarge`]).
    fn put_blob_reader(
        &self,
        reader: &mut dyn Read,
        limit: Option<u64>,
    ) -> Result<(BlobDigest, u64), StoreError>;
    /// Store a reader's bytes, which must hash to `expected`.
    fn ingest(&self, reader: &mut dyn Read, expected: BlobDigest) -> Result<(), IngestError>;
    /// A blob's bytes, checked against the digest at the end of the stream.
    fn blob_reader(&self, d: BlobDigest) -> Result<Box<dyn BlobRead + '_>, StoreError>;
    fn has_tree(&self, d: TreeDigest) -> bool;
    fn put_tree(&self, tree: &Tree) -> Result<TreeDigest, StoreError>;
    /// Store `tree`, made from the tree `base` (digest `base_digest`):
    /// a store may keep it as its differences from `base`, so a step that
    /// changed a few files of an image costs a few entries, not the
    /// image's manifest. The digest is [`Tree::digest`] either way.
    fn put_tree_on(
        &self,
        tree: &Tree,
        base_digest: TreeDigest,
        base: &Tree,
    ) -> Result<TreeDigest, StoreError> {
        let _ = (base_digest, base);
        self.put_tree(tree)
    }
    fn get_tree(&self, d: TreeDigest) -> Result<Tree, StoreError>;
    /// The entries of tree `d` within `ranges` (`[from, to)` in path
    /// order), when they cost less to read than the whole tree (a large
    /// tree a remote cache named, not here); `None`: read it whole.
    fn tree_part(&self, _d: TreeDigest, _ranges: &[(String, String)]) -> Option<Tree> {
        None
    }

    /// Copy a blob's bytes to `out`, verifying them: on a mismatch an error
    /// is returned and what was written to `out` must be thrown away.
    fn copy_blob(&self, d: BlobDigest, out: &mut dyn Write) -> Result<u64, CopyError> {
        let mut r = self.blob_reader(d).map_err(CopyError::Store)?;
        // One buffer per thread: zeroing a buffer per blob costs more than
        // reading a small one.
        crate::fsutil::with_buffer(256 * 1024, |buf| {
            let mut n = 0u64;
            loop {
                let k = match r.read(buf) {
                    Ok(0) => return Ok(n),
                    Ok(k) => k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(CopyError::Store(r.failure().unwrap_or(StoreError::Io {
                            path: PathBuf::from("(blob)"),
                            source: e,
                        })));
                    }
                };
                out.write_all(&buf[..k]).map_err(CopyError::Write)?;
                n += k as u64;
            }
        })
    }

    /// Read a blob whole, verifying it.
    fn read_blob(&self, d: BlobDigest) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        match self.copy_blob(d, &mut out) {
            Ok(_) => Ok(out),
            Err(CopyError::Store(e)) => Err(e),
            Err(CopyError::Write(e)) => Err(StoreError::Io {
                path: PathBuf::from("(memory)"),
                source: e,
            }),
        }
    }
}

/// A blob being read: its last `read` fails if the bytes did not match
/// their digest, and [`BlobRead::failure`] then says why.
pub trait BlobRead: Read + Send {
    /// What went wrong on the store's side, if anything did: a consumer
    /// that failed with no such error failed on its own side.
    fn failure(&mut self) -> Option<StoreError>;
    /// The blob's size, when known before reading it.
    fn size_hint(&self) -> Option<u64> {
        None
    }
}

/// Step key → what the step produced. The local action log is one; a
/// remote action cache would be another.
pub trait ActionCache: Sync {
    fn get(&self, key: StepKey) -> Option<Action>;
    /// This machine's part of the cache: for records that vouch for a
    /// check made here (a layer found to match its diff_id), which no
    /// other machine's word replaces.
    fn here(&self) -> &dyn ActionCache;
    fn put(&self, key: StepKey, action: &Action) -> Result<(), StoreError>;
    /// Drop an entry whose result turned out to be unreadable.
    fn forget(&self, key: StepKey);

    /// Claim the step keyed `key` before running it, so no other build on
    /// this cache runs it at the same time: held until the returned value
    /// is dropped. While another build holds it, `waiting` is called now
    /// and then; it returns `true` to stop waiting (the build was
    /// interrupted: `Ok(None)`). A cache no other build shares has nothing
    /// to claim.
    fn claim(
        &self,
        _key: StepKey,
        _waiting: &dyn Fn() -> bool,
    ) -> Result<Option<Box<dyn Send>>, StoreError> {
        Ok(None)
    }

    /// Whether [`ActionCache::get`] answered `key` from a remote cache in
    /// this build (what `explain` and the progress say of the step).
    fn found_remotely(&self, _key: StepKey) -> bool {
        false
    }

    /// [`ActionCache::get`], having read what other builds recorded since
    /// this one started (after waiting on a claim).
    fn get_fresh(&self, key: StepKey) -> Option<Action> {
        self.get(key)
    }
}
