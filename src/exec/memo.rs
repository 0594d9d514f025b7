//! The build memo: the whole result of the last successful build, and what
//! it depended on, so a build that changes nothing finishes without
//! computing a single step key.
//!
//! A memo matches when the caller's key (kiln's version, every spec file's
//! text, the args and the requested stages) is the same and every context
//! the build listed has the same fingerprint: the same paths, kinds, modes
//! and symlink targets, and for every file the same size, mtime, ctime and
//! inode — the test git and ninja rely on. A memo is not written while any
//! context file changed in the last two seconds, so an edit within one
//! clock tick of the build cannot hide. Anything else makes a normal build,
//! which writes a new memo when it succeeds.

use crate::model::digest::StateDigest;
use crate::model::state::State;
use crate::store::records::StepRecord;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Memo {
    pub key: [u8; 32],
    /// Each context the build listed: its id and fingerprint.
    pub contexts: Vec<(u32, [u8; 32])>,
    /// Every stage built, in the order it finished: id, result and the
    /// result's digest (computed once, when the memo is written).
    pub stages: Vec<(u32, State, StateDigest)>,
    pub records: Vec<StepRecord>,
}

const FILE: &str = "memo";
/// Leads the file; bump when `Memo` changes shape. The file is checksummed:
/// a damaged memo reads as absent and the build runs normally.
const MAGIC: &[u8] = b"KILNMEMO4";

pub fn load(store: &crate::store::Store) -> Option<Memo> {
    let bytes = crate::store::checked::read(&store.layout().record(FILE), MAGIC)?;
    postcard::from_bytes(&bytes).ok()
}

pub fn save(store: &crate::store::Store, memo: &Memo) {
    if let Ok(body) = postcard::to_stdvec(memo) {
        let _ = crate::store::checked::write(&store.layout().record(FILE), MAGIC, &body);
    }
}

pub fn forget(store: &crate::store::Store) {
    let _ = std::fs::remove_file(store.layout().record(FILE));
}
