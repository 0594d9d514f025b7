//! What every step of a build runs with: the graph, the content store,
//! the local state directory (scratch space, logs, stat indexes), the
//! build's options, progress and cancel flag, and what is opened once per
//! build — context listings, loaded trees, the plugin runtime.

use super::Options;
use super::workdir::ScratchDirs;
use crate::context::{Listing, Snapshot};
use crate::diag::Code;
use crate::diag::Diagnostic;
use crate::image::set::ImageSet;
use crate::ir::{ContextId, Graph};
use crate::model::digest::{StepKey, TreeDigest};
use crate::model::state::State;
use crate::model::tree::Tree;
use crate::plugin::Runtime;
use crate::progress::Progress;
use crate::store::{ActionCache, ContentStore};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

pub struct Env<'a> {
    pub graph: &'a Graph,
    pub content: &'a dyn ContentStore,
    pub actions: &'a dyn ActionCache,
    pub images: &'a ImageSet,
    /// This machine's part of the state directory: scratch space, logs,
    /// stat indexes, layers on disk.
    pub local: crate::store::Scratch<'a>,
    pub progress: &'a Progress<'a>,
    pub options: Options,
    pub cancel: Arc<AtomicBool>,
    /// Paths kept out of every context (the state dir, export targets).
    exclude: Vec<PathBuf>,
    contexts: Vec<OnceLock<Result<Arc<Snapshot>, Diagnostic>>>,
    /// The memo and listings read while the spec was compiled, taken by
    /// the first use that matches.
    prefetched: Mutex<super::memo::Prefetched>,
    trees: Mutex<HashMap<TreeDigest, Arc<Tree>>>,
    /// The plugin runtime, started by the first plugin step.
    runtime: OnceLock<Result<Runtime, String>>,
    /// Empty directories plugin steps work in, reused from step to step.
    pub scratch_dirs: ScratchDirs,
    /// Which stored tree each stored tree of this build was made from
    /// (a stage's trees, step after step, from its base's): the lineage a
    /// `run` step's tree on disk is layered on.
    parents: Mutex<HashMap<TreeDigest, TreeDigest>>,
}

impl<'a> Env<'a> {
    pub fn new(setup: super::Setup<'a>) -> Env<'a> {
        let super::Setup {
            graph,
            stores,
            progress,
            options,
            cancel,
            exclude,
            images,
            prefetched,
        } = setup;
        Env {
            graph,
            content: stores.content,
            actions: stores.actions,
            images,
            local: stores.local,
            progress,
            options,
            cancel,
            exclude,
            contexts: graph.contexts.iter().map(|_| OnceLock::new()).collect(),
            prefetched: Mutex::new(prefetched),
            trees: Mutex::new(HashMap::new()),
            runtime: OnceLock::new(),
            scratch_dirs: ScratchDirs::default(),
            parents: Mutex::new(HashMap::new()),
        }
    }

    /// Record that the stored tree `child` was made from `parent`.
    pub fn derived(&self, child: TreeDigest, parent: TreeDigest) {
        if child != parent {
            self.parents
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(child)
                .or_insert(parent);
        }
    }

    /// `from` and the trees it was made from, nearest first.
    pub fn lineage(&self, from: TreeDigest) -> Vec<TreeDigest> {
        let parents = self.parents.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = vec![from];
        let mut at = from;
        while let Some(&p) = parents.get(&at) {
            if out.contains(&p) || out.len() >= 256 {
                break;
            }
            out.push(p);
            at = p;
        }
        out
    }

    /// A context, listed once per build.
    pub fn context(&self, id: ContextId) -> Result<Arc<Snapshot>, Diagnostic> {
        self.contexts[id.0 as usize]
            .get_or_init(|| {
                let ctx = self.graph.context(id);
                // Listed already, the same way, while the spec was compiled.
                if !self.options.no_cache {
                    let key = self.listing_key(id);
                    let mut pre = self.prefetched.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(i) = pre.snapshots.iter().position(|(k, _)| *k == key) {
                        return Ok(Arc::new(pre.snapshots.swap_remove(i).1));
                    }
                }
                let listing = Listing {
                    exclude: &self.exclude,
                    ignore_file: ctx.ignore_file.as_deref(),
                    trust_index: !self.options.no_cache,
                };
                Snapshot::open(&ctx.path, listing, self.local.layout()).map(Arc::new)
            })
            .clone()
    }

    /// How context `id` is listed in this build.
    pub fn listing_key(&self, id: ContextId) -> super::memo::ListingKey {
        let ctx = self.graph.context(id);
        super::memo::ListingKey {
            path: ctx.path.clone(),
            exclude: self.exclude.clone(),
            ignore_file: ctx.ignore_file.clone(),
        }
    }

    /// The memo read while the spec was compiled (once).
    pub fn prefetched_memo(&self) -> Option<super::memo::Memo> {
        self.prefetched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .memo
            .take()
    }

    /// The contexts listed so far.
    pub fn listed(&self) -> impl Iterator<Item = (usize, &Result<Arc<Snapshot>, Diagnostic>)> {
        self.contexts
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.get().map(|s| (i, s)))
    }

    /// A stored tree, loaded (and verified) once per build.
    pub fn tree(&self, d: TreeDigest) -> Result<Arc<Tree>, Diagnostic> {
        if let Some(t) = self.trees.lock().unwrap_or_else(|e| e.into_inner()).get(&d) {
            return Ok(t.clone());
        }
        let t = Arc::new(self.content.get_tree(d)?);
        self.trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(d, t.clone());
        Ok(t)
    }

    /// Let the trees kept in memory go without freeing them one by one:
    /// for a process about to end (freeing an image's tree entry by entry
    /// costs milliseconds that nothing needs).
    pub fn leave_trees(&self) {
        let trees = std::mem::take(&mut *self.trees.lock().unwrap_or_else(|e| e.into_inner()));
        std::mem::forget(trees);
    }

    /// A tree kept in memory in this run, if it is.
    pub fn tree_in_memory(&self, d: TreeDigest) -> Option<Arc<Tree>> {
        self.trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&d)
            .cloned()
    }

    /// A stored tree to change: a copy of the one kept in this run, or
    /// read from the store and kept (a copy costs a fraction of decoding
    /// it again, and a `run` step after the change reads it to find what
    /// changed).
    pub fn tree_owned(&self, d: TreeDigest) -> Result<Tree, Diagnostic> {
        Ok((*self.tree(d)?).clone())
    }

    /// Keep a tree built in this run for the stages and exports that read it.
    pub fn keep_tree(&self, d: TreeDigest, tree: Tree) {
        self.trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(d, Arc::new(tree));
    }

    /// The state of the image a stage is built on: its tree (unpacked once
    /// per build at most, and cached by digest) and its config.
    pub fn image_state(&self, reference: &str) -> Result<State, String> {
        let blobs = crate::store::oci::OciBlobs::new(self.local.layout());
        let u = crate::image::Unpack {
            content: self.content,
            actions: self.actions,
            blobs: &blobs,
            limit: self.options.unpack_limit,
        };
        let started = std::time::Instant::now();
        let done = |digest: &crate::model::digest::Sha256, w: &crate::image::Work| {
            self.progress.emit(crate::progress::Event::ImageUnpacked {
                reference: reference.to_string(),
                digest: digest.to_string(),
                applied: w.applied,
                reused: w.reused,
                fetched: w.fetched,
                fetched_bytes: w.fetched_bytes,
                ms: started.elapsed().as_secs_f64() * 1000.0,
            });
        };
        self.images.state(reference, &u, &done)
    }

    /// The plugin runtime, started on first use.
    pub fn runtime(&self) -> Result<&Runtime, Diagnostic> {
        self.runtime
            .get_or_init(|| {
                let dir = crate::plugin::machine_cache_dir()
                    .unwrap_or_else(|| self.local.layout().wasm_cache());
                Runtime::new(&dir, self.options.jobs)
            })
            .as_ref()
            .map_err(|e| {
                Diagnostic::new(
                    Code::WASM_ENGINE,
                    format!("cannot start the plugin runtime: {e}"),
                )
            })
    }

    /// Keep a step's whole output in the state directory's `logs/`.
    pub fn save_log(&self, key: StepKey, stdout: &[u8], stderr: &[u8]) -> Option<PathBuf> {
        if stdout.is_empty() && stderr.is_empty() {
            return None;
        }
        let path = self.local.layout().log(key);
        let mut bytes = b"--- stdout\n".to_vec();
        bytes.extend_from_slice(stdout);
        bytes.extend_from_slice(b"\n--- stderr\n");
        bytes.extend_from_slice(stderr);
        self.local
            .write_atomic(&path, &bytes, 0o644)
            .ok()
            .map(|_| path)
    }
}
