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
//!
//! The memo also says how each context was listed, so [`prefetch`] can
//! read it and list those contexts on another thread while the spec is
//! read and compiled; the executor uses a prefetched listing only when the
//! build asks for the same one (same directory, exclusions and ignore
//! file).

use crate::context::{Listing, Snapshot};
use crate::model::digest::{StateDigest, StepKey};
use crate::model::state::State;
use crate::store::layout::Layout;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Serialize, Deserialize)]
pub struct Memo {
    pub key: [u8; 32],
    /// Each context the build listed: how, and its fingerprint.
    pub contexts: Vec<MemoContext>,
    /// Every stage built, in the order it finished: id, result and the
    /// result's digest (computed once, when the memo is written).
    pub stages: Vec<(u32, State, StateDigest)>,
    /// Every step, cached: what a build answered from the memo reports.
    pub steps: Vec<MemoStep>,
}

/// A step of the memo's build, compact (no names or hex to decode: a
/// no-op reads a thousand of them).
#[derive(Serialize, Deserialize)]
pub struct MemoStep {
    pub stage: u32,
    pub step: u32,
    pub key: StepKey,
    pub text: String,
    pub non_hermetic: Option<String>,
    /// A test step's run: a build answered from the memo reports it.
    pub test: Option<crate::model::state::TestRun>,
}

/// A context as the memo's build listed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoContext {
    pub id: u32,
    pub fingerprint: [u8; 32],
    pub listed: ListingKey,
}

/// What a listing depends on besides the directory's contents (the stat
/// index is always trusted when a memo is kept).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListingKey {
    pub path: PathBuf,
    pub exclude: Vec<PathBuf>,
    pub ignore_file: Option<PathBuf>,
}

impl ListingKey {
    pub fn listing(&self) -> Listing<'_> {
        Listing {
            exclude: &self.exclude,
            ignore_file: self.ignore_file.as_deref(),
            trust_index: true,
        }
    }
}

const FILE: &str = "memo";
/// Leads the file; bump when `Memo` changes shape. The file is checksummed:
/// a damaged memo reads as absent and the build runs normally.
const MAGIC: &[u8] = b"KILNMEMO7";

/// The memo of the project `scope`.
pub fn load(layout: &Layout, scope: &str) -> Option<Memo> {
    load_from(layout, scope)
}

fn load_from(layout: &Layout, scope: &str) -> Option<Memo> {
    let bytes = crate::store::checked::read(&layout.project_record(scope, FILE), MAGIC)?;
    postcard::from_bytes(&bytes).ok()
}

pub fn save(layout: &Layout, scope: &str, memo: &Memo) {
    if let Ok(body) = postcard::to_stdvec(memo) {
        let path = layout.project_record(scope, FILE);
        let _ = crate::store::checked::write(&path, MAGIC, &body);
    }
}

pub fn forget(layout: &Layout, scope: &str) {
    let _ = std::fs::remove_file(layout.project_record(scope, FILE));
}

/// The memo and the contexts it lists, read on another thread.
pub struct Prefetch(Option<std::thread::JoinHandle<Prefetched>>);

#[derive(Default)]
pub struct Prefetched {
    pub memo: Option<Memo>,
    /// Contexts listed as the memo's build listed them.
    pub snapshots: Vec<(ListingKey, Snapshot)>,
}

/// Start reading the memo of the project `scope` in the state directory
/// `state_dir` and listing its contexts. Reading needs no lock: the memo
/// is replaced whole and checksummed, and a listing only reads the context.
pub fn prefetch(state_dir: &Path, scope: &str) -> Prefetch {
    let layout = Layout::new(state_dir);
    let scope = scope.to_string();
    let spawned = std::thread::Builder::new()
        .name("kiln-prefetch".into())
        .spawn(move || {
            let Some(memo) = load_from(&layout, &scope) else {
                return Prefetched::default();
            };
            let snapshots = memo
                .contexts
                .iter()
                .filter_map(|c| {
                    let snap = Snapshot::open(&c.listed.path, c.listed.listing(), &layout).ok()?;
                    Some((c.listed.clone(), snap))
                })
                .collect();
            Prefetched {
                memo: Some(memo),
                snapshots,
            }
        });
    Prefetch(spawned.ok())
}

impl Prefetch {
    /// Nothing prefetched (`--no-cache`, `kiln check`).
    pub fn none() -> Prefetch {
        Prefetch(None)
    }

    /// What was read, once the thread is done.
    pub fn join(self) -> Prefetched {
        self.0.and_then(|h| h.join().ok()).unwrap_or_default()
    }
}
