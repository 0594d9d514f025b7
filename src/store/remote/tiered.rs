//! The local store with a remote cache behind it: lookups go local first,
//! then to the server; results built here are uploaded when the build
//! ends ([`Tiered::finish`]). A result taken from the server brings only
//! its config and the names of its tree and blobs: the tree's manifest is
//! fetched (and kept in memory) when the build reads the tree, the list
//! of its files' SHA-256 names when a file of it is first read, and a
//! file's bytes when they are read. The local store keeps its rule: a tree
//! is stored here only with every file it names (a tree made here on a
//! tree from the server fetches the files it lacks first), so nothing in
//! it needs the server later. A result taken from the server is recorded
//! here once its tree is stored here.
//!
//! (What reads a file: a later step that runs here, an export.)
//!
//! A large tree's manifest is also kept in parts of about 16 KB, in path
//! order, named by an index ([`PARTS_FILE`]): a `copy from=` a stage
//! whose tree is on the server reads the parts holding the paths it
//! picks, not the whole manifest (a build that takes every step from the
//! server downloads about what it exports). Each part is checked against
//! its SHA-256 in the index, the index against the result that names it,
//! and every entry against the part's place; the whole manifest, when it
//! is read, against the tree's digest.

use super::map::ShaMap;
use super::{Remote, Sha};
use crate::model::digest::{BlobDigest, StepKey, TreeDigest};
use crate::model::state::Action;
use crate::model::tree::{Kind, Tree};
use crate::store::{ActionCache, BlobRead, ContentStore, IngestError, Store, StoreError};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

/// The largest tree manifest taken from a server (a tree of a million
/// files is about 60 MB).
const MAX_MANIFEST: u64 = 512 << 20;

/// The result's config and tree digest (kiln's [`Action`], as JSON).
pub const ACTION_FILE: &str = "kiln/action.json";
/// The tree's manifest ([`Tree::to_bytes`]).
pub const TREE_FILE: &str = "kiln/tree";
/// The tree's files: blake3, SHA-256 and size of each (72-byte records).
pub const BLOBS_FILE: &str = "kiln/blobs";
/// The index of the tree's manifest in parts (a large tree's only): the
/// first path and SHA-256 of each part.
pub const PARTS_FILE: &str = "kiln/tree-parts";

/// A manifest larger than this is also kept in parts.
const PARTS_FROM: usize = 64 << 10;
/// About the size of a part.
const PART_SIZE: usize = 16 << 10;
/// The largest part taken (an entry is at most two 4 KB paths).
const MAX_PART: u64 = 1 << 20;
/// The first bytes of an index of parts.
const PARTS_TAG: &[u8] = b"kiln-tree-parts-1\0";

/// What a result from the server names for its tree.
#[derive(Clone, Copy)]
struct Named {
    manifest: Sha,
    list: Sha,
    parts: Option<Sha>,
}

/// The parts of a manifest: each one's first path and SHA-256.
type Parts = std::sync::Arc<Vec<(String, Sha)>>;
/// A part by its name and the next part's first path.
type PartName = (Sha, Option<String>);

pub struct Tiered<'a> {
    local: &'a Store,
    remote: &'a Remote,
    map: ShaMap,
    /// Trees results from the server named.
    trees: Mutex<HashMap<TreeDigest, Named>>,
    /// The indexes of parts read in this build (`None`: not readable).
    parts: Mutex<HashMap<TreeDigest, Option<Parts>>>,
    /// The parts read in this build, by their name and the next part's
    /// first path (what they were checked against).
    part_trees: Mutex<HashMap<PartName, std::sync::Arc<Tree>>>,
    /// Manifests fetched from the server in this build (not stored here:
    /// their files are not).
    fetched: Mutex<HashMap<TreeDigest, std::sync::Arc<Tree>>>,
    /// Blob lists of fetched trees not read yet.
    lists: Mutex<Vec<(TreeDigest, Sha)>>,
    /// Held while lists are read.
    reading: Mutex<()>,
    /// Something the server named could not be fetched: what the build
    /// took from it may be unreadable.
    fetch_failed: std::sync::atomic::AtomicBool,
    /// Results recorded in this build, to upload.
    pending: Mutex<Vec<(StepKey, Action)>>,
    /// Results taken from the server, recorded here once their tree is.
    taken: Mutex<Vec<(StepKey, Action)>>,
    /// The keys of those results.
    found: Mutex<std::collections::HashSet<StepKey>>,
}

/// What an upload holds: a blob of the local store, or bytes made for it.
enum Source {
    Blob(BlobDigest),
    Bytes(Vec<u8>),
}

impl<'a> Tiered<'a> {
    pub fn new(local: &'a Store, remote: &'a Remote) -> Tiered<'a> {
        Tiered {
            local,
            remote,
            map: ShaMap::open(local.layout().remote_map()),
            trees: Mutex::new(HashMap::new()),
            parts: Mutex::new(HashMap::new()),
            part_trees: Mutex::new(HashMap::new()),
            fetched: Mutex::new(HashMap::new()),
            lists: Mutex::new(Vec::new()),
            reading: Mutex::new(()),
            fetch_failed: Default::default(),
            pending: Mutex::new(Vec::new()),
            taken: Mutex::new(Vec::new()),
            found: Mutex::new(Default::default()),
        }
    }

    /// The REAPI Action a step key stands for, with the Command and input
    /// root it names: `kiln step KEY`, and a root holding the key (the
    /// digest of the step's canonical form and of everything it reads).
    fn action(key: StepKey) -> (Sha, Vec<(Sha, Vec<u8>)>) {
        let key_file = format!("kiln step key\n{}\n", key.hex()).into_bytes();
        let key_sha = Sha::of(&key_file);
        let root = re::Directory {
            files: vec![re::FileNode {
                name: "key".into(),
                digest: Some(key_sha.proto()),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec();
        let mut outputs = vec![
            ACTION_FILE.to_string(),
            BLOBS_FILE.to_string(),
            TREE_FILE.to_string(),
            PARTS_FILE.to_string(),
        ];
        outputs.sort();
        let command = re::Command {
            arguments: vec!["kiln".into(), "step".into(), key.hex()],
            output_paths: outputs,
            ..Default::default()
        }
        .encode_to_vec();
        let action = re::Action {
            command_digest: Some(Sha::of(&command).proto()),
            input_root_digest: Some(Sha::of(&root).proto()),
            ..Default::default()
        }
        .encode_to_vec();
        let action_sha = Sha::of(&action);
        let blobs = vec![
            (key_sha, key_file),
            (Sha::of(&root), root),
            (Sha::of(&command), command),
            (action_sha, action),
        ];
        (action_sha, blobs)
    }

    /// A result from the server: its Action, once checked.
    fn take_remote(&self, key: StepKey) -> Option<Action> {
        let (action_sha, _) = Tiered::action(key);
        let result = self.remote.action_result(action_sha)?;
        let file = |path: &str| result.output_files.iter().find(|f| f.path == path);
        let action_file = file(ACTION_FILE)?;
        let sha = Sha::from_proto(action_file.digest.as_ref()?)?;
        let bytes = if action_file.contents.is_empty() {
            self.remote.read_at_most(sha, 1 << 20)?
        } else if Sha::of(&action_file.contents) == sha {
            action_file.contents.clone()
        } else {
            self.remote
                .refuse("a result's config came back with other bytes");
            return None;
        };
        let Ok(action) = serde_json::from_slice::<Action>(&bytes) else {
            self.remote
                .refuse("a result's config is not one kiln wrote");
            return None;
        };
        if let Some(t) = action.tree
            && !self.local.has_tree(t)
        {
            let named = Named {
                manifest: Sha::from_proto(file(TREE_FILE)?.digest.as_ref()?)?,
                list: Sha::from_proto(file(BLOBS_FILE)?.digest.as_ref()?)?,
                parts: file(PARTS_FILE).and_then(|f| Sha::from_proto(f.digest.as_ref()?)),
            };
            self.trees
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(t, named);
        }
        self.taken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((key, action.clone()));
        self.found
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key);
        self.remote.count_hit();
        Some(action)
    }

    /// A tree a result from the server named: its manifest, fetched once
    /// (checked against its name, its paths checked as a step's would be)
    /// and kept in memory.
    fn remote_tree(&self, d: TreeDigest) -> Option<std::sync::Arc<Tree>> {
        if self.remote.is_down() {
            return None;
        }
        if let Some(t) = self
            .fetched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&d)
        {
            return Some(t.clone());
        }
        let named = *self
            .trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&d)?;
        let Some(bytes) = self.remote.read_at_most(named.manifest, MAX_MANIFEST) else {
            self.fetch_failed.store(true, Ordering::Relaxed);
            return None;
        };
        let tree = Tree::from_untrusted(&bytes)
            .filter(|t| TreeDigest::from_hash(blake3::hash(&bytes)) == d && t.digest() == d);
        let Some(tree) = tree else {
            self.remote
                .refuse("a tree it sent is not the one its result named, or not a tree");
            self.fetch_failed.store(true, Ordering::Relaxed);
            return None;
        };
        let tree = std::sync::Arc::new(tree);
        self.fetched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(d, tree.clone());
        self.lists
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((d, named.list));
        Some(tree)
    }

    /// Part `i` of `parts`, read once per build.
    fn part(&self, parts: &[(String, Sha)], i: usize) -> Option<std::sync::Arc<Tree>> {
        let (first, sha) = parts.get(i)?;
        let next = parts.get(i + 1).map(|(n, _)| n.clone());
        let name = (*sha, next);
        if let Some(t) = self
            .part_trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
        {
            return Some(t.clone());
        }
        let bytes = self.remote.read_at_most(*sha, MAX_PART)?;
        let Some(part) = Tree::from_part(&bytes, first, name.1.as_deref()) else {
            self.remote
                .refuse("a part of a tree it sent is not one kiln wrote, or out of place");
            return None;
        };
        let part = std::sync::Arc::new(part);
        self.part_trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, part.clone());
        Some(part)
    }

    /// The index of the parts of a tree a result from the server named
    /// (read once; `None` when it has none or it cannot be read).
    fn parts_of(&self, d: TreeDigest) -> Option<Parts> {
        if let Some(p) = self.parts.lock().unwrap_or_else(|e| e.into_inner()).get(&d) {
            return p.clone();
        }
        let sha = self
            .trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&d)?
            .parts?;
        let found = self
            .remote
            .read_at_most(sha, MAX_MANIFEST)
            .and_then(|bytes| {
                let parts = read_parts(&bytes).map(std::sync::Arc::new);
                if parts.is_none() {
                    self.remote
                        .refuse("an index of a tree's parts it sent is not one kiln wrote");
                }
                parts
            });
        self.parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(d, found.clone());
        found
    }

    /// The SHA-256 name of a file of a tree from the server: the trees'
    /// lists are read as they are needed, and only the entries that name
    /// a file of their tree, with its size, are taken.
    fn remote_name(&self, d: BlobDigest) -> Option<Sha> {
        if let Some(sha) = self.map.get(&d.0) {
            return Some(sha);
        }
        // One thread reads the lists; the others wait for what it found.
        let _reading = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(sha) = self.map.get(&d.0) {
                return Some(sha);
            }
            let (tree, list) = self.lists.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            // (A tree read in parts is read whole here, which lists it
            // again.)
            let t = self.remote_tree(tree)?;
            self.lists
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|(other, _)| *other != tree);
            let files: HashMap<[u8; 32], u64> = t
                .entries
                .values()
                .filter_map(|e| match e.kind {
                    Kind::File { blob, size } => Some((blob.0, size)),
                    _ => None,
                })
                .collect();
            if list.size > 72 * files.len() as u64 {
                self.remote
                    .refuse("a tree's list of files is longer than the tree");
                return None;
            }
            let Some(bytes) = self.remote.read_at_most(list, 72 * files.len() as u64) else {
                self.fetch_failed.store(true, Ordering::Relaxed);
                return None;
            };
            self.map.told(
                read_blob_list(&bytes)
                    .into_iter()
                    .filter(|(b3, sha)| files.get(b3) == Some(&sha.size)),
            );
        }
    }

    /// A blob a tree from the server named, fetched and stored here as it
    /// comes (checked against both its digests).
    fn fetch_blob(&self, d: BlobDigest) -> bool {
        if self.remote.is_down() {
            return false;
        }
        let Some(sha) = self.remote_name(d) else {
            return false;
        };
        let Some(mut stream) = self.remote.reader(sha) else {
            self.fetch_failed.store(true, Ordering::Relaxed);
            return false;
        };
        match self.local.ingest(&mut stream, d) {
            Ok(()) => true,
            Err(e) => {
                if let IngestError::Changed { .. } = e {
                    self.remote.refuse(&format!(
                        "the server's list of files names sha256:{} for a file it is not",
                        crate::model::digest::hex(&sha.hash)
                    ));
                }
                self.fetch_failed.store(true, Ordering::Relaxed);
                false
            }
        }
    }

    /// Before a tree is stored here: every file it names is here (fetched
    /// from the server when a tree it took is below it).
    fn files_here(&self, tree: &Tree) -> Result<(), StoreError> {
        if self
            .trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            // Nothing was taken from the server: every tree is made from
            // trees stored here, whose files are.
            return Ok(());
        }
        for e in tree.entries.values() {
            if let Kind::File { blob, .. } = e.kind
                && !self.local.has_blob(blob)
                && !self.fetch_blob(blob)
            {
                return Err(StoreError::Missing {
                    what: "file",
                    digest: blob.hex(),
                });
            }
        }
        Ok(())
    }

    /// The server behind the local store.
    pub fn remote(&self) -> &'a Remote {
        self.remote
    }

    /// Whether something the server named could not be fetched in this
    /// build (so a build that found its cache damaged may only have lost
    /// the server).
    pub fn fetch_failed(&self) -> bool {
        self.fetch_failed.load(Ordering::Relaxed)
    }

    /// The SHA-256 of local blobs, computed once per blob (on all cores).
    fn shas(&self, blobs: &[BlobDigest]) -> Result<HashMap<BlobDigest, Sha>, StoreError> {
        use rayon::prelude::*;
        let mut out = HashMap::new();
        let mut todo = Vec::new();
        for b in blobs {
            match self.map.computed(&b.0) {
                Some(s) => {
                    out.insert(*b, s);
                }
                None => todo.push(*b),
            }
        }
        todo.sort();
        todo.dedup();
        let found: Vec<(BlobDigest, Sha)> = todo
            .par_iter()
            .map(|b| {
                let mut r = self.local.blob_reader(*b)?;
                let sha = sha_of_reader(&mut *r).map_err(|e| {
                    r.failure().unwrap_or(StoreError::Io {
                        path: std::path::PathBuf::from("(blob)"),
                        source: e,
                    })
                })?;
                Ok((*b, sha))
            })
            .collect::<Result<_, StoreError>>()?;
        self.map
            .computed_now(&found.iter().map(|(b, s)| (b.0, *s)).collect::<Vec<_>>());
        out.extend(found);
        Ok(out)
    }

    /// Upload the results recorded in this build (their trees, files and
    /// the Actions they answer, then the results themselves), and record
    /// here the results taken from the server whose trees are now here.
    pub fn finish(&self, interrupted: bool) {
        let taken = std::mem::take(&mut *self.taken.lock().unwrap_or_else(|e| e.into_inner()));
        for (key, action) in taken {
            if self.local.get(key).is_some() {
                continue;
            }
            // A tree from the server whose every file the build brought
            // here (an export, a step run on it) is stored here now.
            if let Some(t) = action.tree
                && !self.local.has_tree(t)
                && let Some(tree) = self
                    .fetched
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&t)
                    .cloned()
                && tree.entries.values().all(|e| match e.kind {
                    Kind::File { blob, .. } => self.local.has_blob(blob),
                    _ => true,
                })
            {
                let _ = self.local.put_tree(&tree);
            }
            if action.tree.is_none_or(|t| self.local.has_tree(t)) {
                let _ = self.local.put(key, &action);
            }
        }
        if interrupted {
            return;
        }
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        // (Nothing built here: nothing to ask the server, but a registry's
        // tag may name what the build took.)
        if pending.is_empty() {
            if self.remote.wants_uploads() {
                self.remote.flush();
            }
            return;
        }
        if !self.remote.uploads() {
            return;
        }
        let _ = self.upload(pending);
    }

    fn upload(&self, pending: Vec<(StepKey, Action)>) -> Result<(), StoreError> {
        // A key recorded twice (a step's tree stored after its result was
        // first recorded): the last record, or the one with a tree.
        let mut last: BTreeMap<StepKey, Action> = BTreeMap::new();
        for (key, action) in pending {
            match last.get(&key) {
                Some(kept) if kept.tree.is_some() && action.tree.is_none() => {}
                _ => {
                    last.insert(key, action);
                }
            }
        }
        let pending: Vec<(StepKey, Action)> = last.into_iter().collect();
        let mut sources: HashMap<Sha, Source> = HashMap::new();
        let mut results = Vec::new();
        let mut tree_files: HashMap<TreeDigest, Named> = HashMap::new();
        for (key, action) in &pending {
            let (action_sha, blobs) = Tiered::action(*key);
            for (sha, bytes) in blobs {
                sources.insert(sha, Source::Bytes(bytes));
            }
            let json = serde_json::to_vec(action).unwrap_or_default();
            let json_sha = Sha::of(&json);
            sources.insert(json_sha, Source::Bytes(json));
            let mut files = vec![output_file(ACTION_FILE, json_sha)];
            if let Some(t) = action.tree {
                let named = match tree_files.get(&t) {
                    Some(found) => *found,
                    None => {
                        let found = self.tree_sources(t, &mut sources)?;
                        tree_files.insert(t, found);
                        found
                    }
                };
                files.push(output_file(TREE_FILE, named.manifest));
                files.push(output_file(BLOBS_FILE, named.list));
                if let Some(parts) = named.parts {
                    files.push(output_file(PARTS_FILE, parts));
                }
            }
            files.sort_by(|a, b| a.path.cmp(&b.path));
            results.push((
                action_sha,
                re::ActionResult {
                    output_files: files,
                    exit_code: 0,
                    ..Default::default()
                },
            ));
        }
        let all: Vec<Sha> = sources.keys().copied().collect();
        let Some(missing) = self.remote.missing(&all) else {
            return Ok(());
        };
        let read = |sha: &Sha| match sources.get(sha)? {
            Source::Bytes(b) => Some(b.clone()),
            Source::Blob(d) => self.local.read_blob(*d).ok(),
        };
        // Results are recorded only once all they name is there.
        if !self.remote.upload(&missing, &read) {
            return Ok(());
        }
        for (action_sha, result) in results {
            if !self.remote.record(action_sha, result) {
                break;
            }
        }
        self.remote.flush();
        Ok(())
    }

    /// What uploading tree `t` takes: its manifest (and its parts, for a
    /// large one), its blob list and its files, added to `sources`; their
    /// names.
    fn tree_sources(
        &self,
        t: TreeDigest,
        sources: &mut HashMap<Sha, Source>,
    ) -> Result<Named, StoreError> {
        let tree = self.local.get_tree(t)?;
        let blobs: Vec<BlobDigest> = tree
            .entries
            .values()
            .filter_map(|e| match e.kind {
                Kind::File { blob, .. } => Some(blob),
                _ => None,
            })
            .collect();
        let shas = self.shas(&blobs)?;
        let sorted: BTreeMap<BlobDigest, Sha> = shas.into_iter().collect();
        let mut list = Vec::with_capacity(sorted.len() * 72);
        for (b, s) in &sorted {
            list.extend_from_slice(&b.0);
            list.extend_from_slice(&s.hash);
            list.extend_from_slice(&s.size.to_le_bytes());
            sources.insert(*s, Source::Blob(*b));
        }
        let manifest = tree.to_bytes();
        let parts = tree.parts(PART_SIZE);
        // (A part is at most one entry over the size, far below what a
        // reader takes; one that is not is not offered.)
        let readable = parts.iter().all(|(_, b)| b.len() as u64 <= MAX_PART);
        let parts = (manifest.len() > PARTS_FROM && readable).then(|| {
            let mut index = Vec::new();
            for (first, bytes) in parts {
                let sha = Sha::of(&bytes);
                sources.insert(sha, Source::Bytes(bytes));
                index.push((first, sha.hash, sha.size));
            }
            let index = postcard::to_extend(&index, PARTS_TAG.to_vec()).unwrap_or_default();
            let sha = Sha::of(&index);
            sources.insert(sha, Source::Bytes(index));
            sha
        });
        let named = Named {
            manifest: Sha::of(&manifest),
            list: Sha::of(&list),
            parts,
        };
        sources.insert(named.manifest, Source::Bytes(manifest));
        sources.insert(named.list, Source::Bytes(list));
        Ok(named)
    }
}

fn output_file(path: &str, sha: Sha) -> re::OutputFile {
    re::OutputFile {
        path: path.into(),
        digest: Some(sha.proto()),
        ..Default::default()
    }
}

/// An index of parts: in path order, the first part's first path the
/// least, each part at most [`MAX_PART`] bytes.
fn read_parts(bytes: &[u8]) -> Option<Vec<(String, Sha)>> {
    let index: Vec<(String, [u8; 32], u64)> =
        postcard::from_bytes(bytes.strip_prefix(PARTS_TAG)?).ok()?;
    let ordered = index.windows(2).all(|w| w[0].0 < w[1].0);
    let sized = index.iter().all(|(_, _, size)| *size <= MAX_PART);
    (ordered && sized && !index.is_empty()).then(|| {
        index
            .into_iter()
            .map(|(first, hash, size)| (first, Sha { hash, size }))
            .collect()
    })
}

/// The parts holding every path within `ranges` (`[from, to)`): those
/// that begin before a range ends and end after it begins (part `i` holds
/// the paths from its first to the next part's first).
fn parts_for(parts: &[(String, Sha)], ranges: &[(String, String)]) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for (from, to) in ranges {
        // The last part beginning at or before `from`, then on while
        // parts begin before `to`.
        let start = parts
            .partition_point(|(first, _)| first.as_str() <= from.as_str())
            .saturating_sub(1);
        out.extend((start..parts.len()).take_while(|i| *i == start || parts[*i].0 < *to));
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The records of a blob list (a damaged tail is left out).
fn read_blob_list(bytes: &[u8]) -> Vec<([u8; 32], Sha)> {
    bytes
        .chunks_exact(72)
        .filter_map(|r| {
            Some((
                <[u8; 32]>::try_from(&r[..32]).ok()?,
                Sha {
                    hash: <[u8; 32]>::try_from(&r[32..64]).ok()?,
                    size: u64::from_le_bytes(<[u8; 8]>::try_from(&r[64..72]).ok()?),
                },
            ))
        })
        .collect()
}

fn sha_of_reader(r: &mut dyn Read) -> std::io::Result<Sha> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut size = 0u64;
    crate::fsutil::with_buffer(256 * 1024, |buf| {
        loop {
            match r.read(buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    h.update(&buf[..n]);
                    size += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    })?;
    Ok(Sha {
        hash: h.finalize().into(),
        size,
    })
}

impl ActionCache for Tiered<'_> {
    fn here(&self) -> &dyn ActionCache {
        self.local
    }

    fn get(&self, key: StepKey) -> Option<Action> {
        self.local.get(key).or_else(|| self.take_remote(key))
    }

    fn put(&self, key: StepKey, action: &Action) -> Result<(), StoreError> {
        self.local.put(key, action)?;
        // Whether the server takes results is asked when the build ends.
        if self.remote.wants_uploads() {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((key, action.clone()));
        }
        Ok(())
    }

    fn forget(&self, key: StepKey) {
        self.local.forget(key);
    }

    fn found_remotely(&self, key: StepKey) -> bool {
        self.found
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key)
    }

    fn claim(
        &self,
        key: StepKey,
        waiting: &dyn Fn() -> bool,
    ) -> Result<Option<Box<dyn Send>>, StoreError> {
        self.local.claim(key, waiting)
    }

    fn get_fresh(&self, key: StepKey) -> Option<Action> {
        self.local.get_fresh(key)
    }
}

impl ContentStore for Tiered<'_> {
    fn has_blob(&self, d: BlobDigest) -> bool {
        self.local.has_blob(d)
    }

    fn put_blob(&self, bytes: &[u8]) -> Result<BlobDigest, StoreError> {
        self.local.put_blob(bytes)
    }

    fn put_blob_reader(
        &self,
        reader: &mut dyn Read,
        limit: Option<u64>,
    ) -> Result<(BlobDigest, u64), StoreError> {
        self.local.put_blob_reader(reader, limit)
    }

    fn ingest(&self, reader: &mut dyn Read, expected: BlobDigest) -> Result<(), IngestError> {
        self.local.ingest(reader, expected)
    }

    fn blob_reader(&self, d: BlobDigest) -> Result<Box<dyn BlobRead + '_>, StoreError> {
        match self.local.blob_reader(d) {
            Err(StoreError::Missing { .. }) if self.fetch_blob(d) => self.local.blob_reader(d),
            other => other,
        }
    }

    /// Here, or named by a result from the server while it answers.
    fn has_tree(&self, d: TreeDigest) -> bool {
        self.local.has_tree(d)
            || !self.remote.is_down()
                && self
                    .trees
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(&d)
    }

    fn put_tree(&self, tree: &Tree) -> Result<TreeDigest, StoreError> {
        self.files_here(tree)?;
        self.local.put_tree(tree)
    }

    fn put_tree_on(
        &self,
        tree: &Tree,
        base_digest: TreeDigest,
        base: &Tree,
    ) -> Result<TreeDigest, StoreError> {
        self.files_here(tree)?;
        self.local.put_tree_on(tree, base_digest, base)
    }

    /// The parts holding `ranges` of a tree the server named and this
    /// build has not read whole, when they are fewer than half its parts.
    fn tree_part(&self, d: TreeDigest, ranges: &[(String, String)]) -> Option<Tree> {
        if self.remote.is_down()
            || self
                .fetched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&d)
            || self.local.has_tree(d)
        {
            return None;
        }
        let parts = self.parts_of(d)?;
        let wanted = parts_for(&parts, ranges);
        if wanted.len() * 2 > parts.len() {
            return None;
        }
        let mut tree = Tree::new();
        for i in wanted {
            let part = self.part(&parts, i)?;
            tree.entries
                .extend(part.entries.iter().map(|(p, e)| (p.clone(), e.clone())));
        }
        // Its files, if the build reads them (a copy that runs here), are
        // named by its list: read after the lists of trees read whole.
        let list = self
            .trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&d)?
            .list;
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        if !lists.iter().any(|(other, _)| *other == d) {
            lists.insert(0, (d, list));
        }
        Some(tree)
    }

    fn get_tree(&self, d: TreeDigest) -> Result<Tree, StoreError> {
        match self.local.get_tree(d) {
            Err(e @ StoreError::Missing { .. }) => {
                self.remote_tree(d).map(|t| (*t).clone()).ok_or(e)
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::digest::hex;

    #[test]
    fn a_step_key_is_the_same_action_everywhere_and_another_key_another() {
        let (a, blobs) = Tiered::action(StepKey([7; 32]));
        let (b, _) = Tiered::action(StepKey([7; 32]));
        let (c, _) = Tiered::action(StepKey([8; 32]));
        assert_eq!(a, b);
        assert_ne!(a, c);
        // The Action, its Command and input root are blobs to upload.
        assert!(blobs.iter().any(|(s, _)| *s == a));
        let action = re::Action::decode(&blobs[3].1[..]).unwrap();
        let command = re::Command::decode(&blobs[2].1[..]).unwrap();
        assert_eq!(action.command_digest, Some(blobs[2].0.proto()));
        assert_eq!(command.arguments[2], hex(&[7; 32]));
    }

    /// What vouches for a check made here (a layer's diff_id) is this
    /// machine's cache alone, never the server's.
    #[test]
    fn checks_made_here_are_kept_here() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), crate::store::Access::Shared).unwrap();
        let remote = Remote::connect(
            super::super::Settings {
                url: "grpc://127.0.0.1:9".into(),
                instance: String::new(),
                headers: Vec::new(),
                upload: true,
                timeout: std::time::Duration::from_secs(1),
                registry: None,
            },
            &|_, _| Err("no registry".into()),
        )
        .unwrap();
        let t = Tiered::new(&store, &remote);
        let here: *const dyn ActionCache = t.here();
        let local: *const dyn ActionCache = &store;
        assert!(std::ptr::addr_eq(here, local));
        let key = StepKey([5; 32]);
        let action = Action {
            tree: None,
            config: Default::default(),
            test: None,
        };
        t.here().put(key, &action).unwrap();
        assert_eq!(store.get(key), Some(action));
        assert!(!remote.is_down(), "the server was not asked");
    }

    #[test]
    fn the_parts_named_are_those_holding_the_ranges() {
        let sha = Sha::of(b"");
        let parts: Vec<(String, Sha)> = ["", "d", "m", "t"]
            .iter()
            .map(|f| (f.to_string(), sha))
            .collect();
        let r = |from: &str, to: &str| (from.to_string(), to.to_string());
        assert_eq!(parts_for(&parts, &[r("a", "b")]), vec![0]);
        assert_eq!(parts_for(&parts, &[r("d", "d\0")]), vec![1]);
        assert_eq!(parts_for(&parts, &[r("c", "e")]), vec![0, 1]);
        assert_eq!(
            parts_for(&parts, &[r("l", "n"), r("x", "y")]),
            vec![1, 2, 3]
        );
        assert_eq!(parts_for(&parts, &[r("z", "zz")]), vec![3]);
        let index = |entries: &[(&str, u64)]| {
            let v: Vec<(String, [u8; 32], u64)> = entries
                .iter()
                .map(|(f, size)| (f.to_string(), [0; 32], *size))
                .collect();
            postcard::to_extend(&v, PARTS_TAG.to_vec()).unwrap()
        };
        assert_eq!(read_parts(&index(&[("a", 1), ("b", 2)])).unwrap().len(), 2);
        assert!(read_parts(&index(&[("b", 1), ("a", 2)])).is_none(), "order");
        assert!(read_parts(&index(&[("a", MAX_PART + 1)])).is_none(), "size");
        assert!(read_parts(&index(&[])).is_none());
        assert!(read_parts(b"kiln-tree-2\0").is_none());
    }

    /// Parts of a tree of long links are cut by their encoded size, so
    /// the index kiln writes is one it reads back.
    #[test]
    fn parts_of_long_links_stay_within_what_is_read() {
        let mut t = Tree::new();
        for i in 0..400 {
            let link = crate::model::tree::Entry {
                kind: Kind::Symlink {
                    target: format!("/{}", "x".repeat(4000)),
                },
                mode: 0o777,
                uid: 0,
                gid: 0,
            };
            t.put(&format!("l{i:04}"), link, false).unwrap();
        }
        let parts = t.parts(PART_SIZE);
        assert!(parts.len() > 50, "{} parts", parts.len());
        assert!(parts.iter().all(|(_, b)| b.len() <= PART_SIZE + 64));
        let index: Vec<(String, [u8; 32], u64)> = parts
            .iter()
            .map(|(f, b)| {
                let s = Sha::of(b);
                (f.clone(), s.hash, s.size)
            })
            .collect();
        assert!(read_parts(&postcard::to_extend(&index, PARTS_TAG.to_vec()).unwrap()).is_some());
    }

    #[test]
    fn a_blob_list_reads_back() {
        let recs = vec![([1u8; 32], Sha::of(b"a")), ([2u8; 32], Sha::of(b"bb"))];
        let mut bytes = Vec::new();
        for (b, s) in &recs {
            bytes.extend_from_slice(b);
            bytes.extend_from_slice(&s.hash);
            bytes.extend_from_slice(&s.size.to_le_bytes());
        }
        bytes.extend_from_slice(&[0; 5]);
        assert_eq!(read_blob_list(&bytes), recs);
    }
}
