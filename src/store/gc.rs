//! Garbage collection with a size budget.
//!
//! Roots are action cache entries; each keeps its tree and the tree's
//! blobs. Trees that export destinations hold are kept first, then entries
//! from the most recently used down (by the lists of keys recent builds
//! used, then by age in the log), while the total fits the budget. Everything no kept root reaches is
//! deleted, as are the link sources and leftover temp files. Runs with the
//! store locked exclusively, so no build sees a half-collected store.

use super::records;
use super::{ContentStore, Store, packs};
use crate::model::digest::{BlobDigest, StepKey, TreeDigest};
use crate::model::state::Action;
use crate::model::tree::Kind;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, Default)]
pub struct Report {
    /// The cache proper (blobs, trees, the action log): what the budget
    /// bounds.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Every part of the state directory, by what it holds: bytes before
    /// and after (see [`super::layout::Layout::part_of`]).
    pub parts: Vec<(&'static str, u64, u64)>,
    pub actions_removed: usize,
    pub trees_removed: usize,
    pub blobs_removed: usize,
    /// Image blobs (layers, manifests, configs) removed.
    pub images_removed: usize,
    /// `run` cache mounts removed.
    pub cache_mounts_removed: usize,
    /// Local repositories of git sources removed (fetched again when a
    /// build needs a commit they had).
    pub git_repos_removed: usize,
}

/// Cache mounts and git repositories unused this long are removed by every collection; with a
/// size budget, all of them are.
const CACHE_MOUNT_IDLE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// A project's records (explain, step history) go when no build of it
/// wrote them for this long: its folder was likely removed.
const PROJECT_IDLE: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Image blobs are kept for the images whose tree is kept (so a locked
/// build can unpack them again offline) and for the images named in the
/// local image store: their manifests, configs and layers, and the
/// indexes that list them. The rest are removed.
fn collect_images(store: &Store, kept_keys: &HashSet<StepKey>) -> usize {
    use crate::model::digest::Sha256;
    let dir = store.layout().images().join("blobs").join("sha256");
    let Ok(rd) = fs::read_dir(&dir) else {
        return 0;
    };
    let blobs: Vec<(String, PathBuf, u64)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let len = e.metadata().ok()?.len();
            Some((name, e.path(), len))
        })
        .collect();
    let json = |path: &Path, len: u64| -> Option<serde_json::Value> {
        // Manifests, configs and indexes are small; layers are not read.
        if len > 4 << 20 {
            return None;
        }
        serde_json::from_slice(&fs::read(path).ok()?).ok()
    };
    let digests_in = |v: &serde_json::Value, field: &str| -> Vec<String> {
        v.get(field)
            .and_then(|x| x.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.get("digest")?.as_str())
                    .filter_map(|d| d.strip_prefix("sha256:").map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    // Images named in the local image store (`kiln build -t`) are roots.
    let mut keep: HashSet<String> = super::oci::OciBlobs::new(store.layout())
        .tagged_blobs()
        .into_iter()
        .map(|d| d.hex().to_string())
        .collect();
    let mut indexes = Vec::new();
    for (name, path, len) in &blobs {
        let Some(v) = json(path, *len) else { continue };
        if v.get("layers").is_some() {
            let kept = Sha256::parse(&format!("sha256:{name}"))
                .is_some_and(|d| kept_keys.contains(&crate::model::key::image_rootfs_key(&d)));
            if kept {
                keep.insert(name.clone());
                keep.extend(digests_in(&v, "layers"));
                if let Some(c) = v
                    .get("config")
                    .and_then(|c| c.get("digest"))
                    .and_then(|d| d.as_str())
                    .and_then(|d| d.strip_prefix("sha256:"))
                {
                    keep.insert(c.to_string());
                }
            }
        } else if v.get("manifests").is_some() {
            indexes.push((name.clone(), digests_in(&v, "manifests")));
        }
    }
    for (name, children) in indexes {
        if children.iter().any(|c| keep.contains(c)) {
            keep.insert(name);
        }
    }
    let mut removed = 0;
    for (name, path, _) in blobs {
        if !keep.contains(&name) && fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Trees on disk for `run` steps (`rootfs/t/<tree>` lists a tree's layers
/// in `rootfs/l/`, sealed in `rootfs/s/`; `rootfs/copies/<project>/<id>`
/// are private copies of trees, each with a `record` naming its tree) are kept
/// for the trees in `keep`; everything else goes, as do the lock files of
/// trees without a stack and what a killed build left half made.
fn collect_rootfs(root: &Path, keep: &HashSet<TreeDigest>) {
    let kept = |name: &str| {
        // `<tree digest>.<epoch>` or `<tree digest>.lock`
        let digest = name.split('.').next().unwrap_or("");
        TreeDigest::parse(digest).is_some_and(|d| keep.contains(&d))
    };
    let mut used: HashSet<String> = HashSet::new();
    if let Ok(rd) = fs::read_dir(root.join("t")) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".lock") {
                continue;
            }
            if kept(&name) {
                for l in fs::read_to_string(e.path()).unwrap_or_default().lines() {
                    used.insert(l.to_string());
                }
            } else {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    // Locks of trees that have no stack any more (no build holds one:
    // gc runs with the store locked).
    if let Ok(rd) = fs::read_dir(root.join("t")) {
        let names: HashSet<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for name in &names {
            if let Some(d) = name.strip_suffix(".lock")
                && !names.iter().any(|n| n != name && n.starts_with(d))
            {
                let _ = fs::remove_file(root.join("t").join(name));
            }
        }
    }
    // Layers (`l/<id>`) and their seals (`s/<id>`), removed on all cores:
    // unlinking their files is most of what a budgeted gc costs.
    let mut gone = Vec::new();
    for part in ["l", "s"] {
        if let Ok(rd) = fs::read_dir(root.join(part)) {
            for e in rd.flatten() {
                if !used.contains(&*e.file_name().to_string_lossy()) {
                    gone.push(e.path());
                }
            }
        }
    }
    // Private copies, per project (`copies/<project>/<id>`): the record
    // names the tree.
    let projects: Vec<PathBuf> = fs::read_dir(root.join("copies"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    for project in &projects {
        if let Ok(rd) = fs::read_dir(project) {
            for e in rd.flatten() {
                let record = fs::read_to_string(e.path().join("record")).unwrap_or_default();
                if !kept(record.split_whitespace().next().unwrap_or("")) {
                    gone.push(e.path());
                }
            }
        }
    }
    {
        use rayon::prelude::*;
        gone.par_iter().for_each(|p| crate::fsutil::remove_any(p));
    }
    for project in &projects {
        // Gone when empty (fails otherwise).
        let _ = fs::remove_dir(project);
    }
}

/// The id mappings with something kept for `run` steps (`sandbox/ids-…`).
fn sandbox_mappings(layout: &super::layout::Layout) -> Vec<String> {
    let Ok(rd) = fs::read_dir(layout.sandbox()) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ids-"))
        .collect()
}

/// The cache of layers made for image exports (`layers/<key>.json`)
/// names blobs of the image store: entries whose blob is gone go too.
fn collect_layer_cache(layout: &super::layout::Layout) {
    let Ok(rd) = fs::read_dir(layout.layer_cache()) else {
        return;
    };
    let blobs = super::oci::OciBlobs::new(layout);
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let magic = super::checked::layer_record_magic(name.trim_end_matches(".json"));
        let digest = fs::read(e.path())
            .ok()
            .and_then(|b| {
                super::checked::decode(&magic, &b)
                    .and_then(|body| serde_json::from_slice::<serde_json::Value>(body).ok())
            })
            .and_then(|v| v.get("digest")?.as_str().map(str::to_string))
            .and_then(|d| crate::model::digest::Sha256::parse(&d));
        if digest.is_none_or(|d| !blobs.has(&d)) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Directories kept beside a `.lock` touched when used: `run` cache
/// mounts (`cache/<name>`) and git repositories (`git/<hash>.git`).
fn collect_idle(dir: &Path, all: bool) -> usize {
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in rd.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "lock") || !path.is_dir() {
            continue;
        }
        let lock = path.with_extension("lock");
        let idle = fs::metadata(&lock)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age > CACHE_MOUNT_IDLE);
        if all || idle {
            crate::fsutil::remove_any(&path);
            let _ = fs::remove_file(&lock);
            removed += 1;
        }
    }
    removed
}

fn files(dir: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let Ok(shards) = fs::read_dir(dir) else {
        return out;
    };
    for shard in shards.flatten() {
        let Ok(rd) = fs::read_dir(shard.path()) else {
            continue;
        };
        for f in rd.flatten() {
            if let Ok(m) = f.metadata() {
                out.push((f.path(), m));
            }
        }
    }
    out
}

fn packs_size(layout: &super::layout::Layout) -> u64 {
    packs::list(&layout.packs())
        .iter()
        .filter_map(|(_, p)| fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Packs are kept as they are while at most this share of their bytes is
/// garbage and they are not small; the blobs still used in the others are
/// copied into new packs, and the old ones removed.
const PACK_GARBAGE: u64 = 10;
const SMALL_PACK: u64 = 4 << 20;

/// Remove the packed blobs no kept tree names: packs with nothing kept go,
/// packs mostly kept stay, and the kept blobs of the rest (and small
/// blobs that older kiln kept a file each) move into new packs. Returns
/// how many packed blobs went.
fn collect_packs(
    store: &Store,
    kept: &HashSet<BlobDigest>,
    loose: &[(PathBuf, fs::Metadata)],
    budget: Option<u64>,
) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut removed = 0;
    // Blobs a pack that stays (or the new packs) hold: a copy elsewhere
    // is garbage.
    let mut placed: HashSet<[u8; 32]> = HashSet::new();
    let mut emptied: Vec<PathBuf> = Vec::new();
    let mut to_copy: Vec<(PathBuf, fs::File, Vec<packs::Entry>)> = Vec::new();
    let mut listed: Vec<(PathBuf, fs::File, Vec<packs::Entry>, u64)> =
        packs::list(&store.layout().packs())
            .into_iter()
            .filter_map(|(_, path)| {
                let file = packs::open_pack(&path).ok()?;
                // Damaged tables were moved aside when the packs were read.
                let entries = packs::read_table(&file).ok()?;
                let bytes = entries.iter().map(|e| u64::from(e.len)).sum();
                Some((path, file, entries, bytes))
            })
            .collect();
    // The largest first: they are the likeliest to stay.
    listed.sort_by_key(|(_, _, _, bytes)| std::cmp::Reverse(*bytes));
    // Small packs are merged into one; a lone one stays until it has
    // garbage enough (so a gc with nothing to do rewrites nothing).
    let small = listed
        .iter()
        .filter(|(_, _, _, bytes)| *bytes < SMALL_PACK)
        .count();
    for (path, file, entries, bytes) in listed {
        let (live, dead): (Vec<packs::Entry>, Vec<packs::Entry>) = entries
            .into_iter()
            .partition(|e| kept.contains(&BlobDigest(e.digest)) && !placed.contains(&e.digest));
        let dead_bytes: u64 = dead.iter().map(|e| u64::from(e.len)).sum();
        if live.is_empty() {
            // Nothing to copy: it goes now (room for what is copied).
            removed += dead.len();
            let _ = fs::remove_file(&path);
        } else if dead_bytes * 100 <= bytes * PACK_GARBAGE
            && (bytes >= SMALL_PACK || small < 2)
            // With a budget to meet, no garbage stays: what is left is
            // what the budget counted.
            && (budget.is_none() || dead.is_empty())
        {
            // Its garbage stays until there is more of it.
            placed.extend(live.iter().map(|e| e.digest));
        } else {
            removed += dead.len();
            placed.extend(live.iter().map(|e| e.digest));
            to_copy.push((path, file, live));
        }
    }
    let before: HashSet<String> = packs::list(&store.layout().packs())
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let packs = store.packs();
    // Copying can fail (a full disk): what was not copied stays where it
    // is, and the rest of gc goes on.
    let copied = (|| -> std::io::Result<()> {
        for (path, file, live) in &to_copy {
            for e in live {
                let mut bytes = vec![0u8; e.len as usize];
                // A blob that cannot be read or is damaged is not copied:
                // it is missing, and written again by the build that needs it.
                if file.read_exact_at(&mut bytes, e.offset).is_ok()
                    && blake3::hash(&bytes).as_bytes() == &e.digest
                {
                    packs.append_again(e.digest, &bytes)?;
                }
            }
            emptied.push(path.clone());
        }
        for (path, meta) in loose {
            let Some(d) = BlobDigest::parse(name_of(path)) else {
                continue;
            };
            if meta.len() as usize > packs::MAX || !kept.contains(&d) {
                continue;
            }
            match fs::read(path) {
                // A copy is in a pack already.
                _ if placed.contains(&d.0) => {}
                Ok(bytes) if BlobDigest::from_hash(blake3::hash(&bytes)) == d => {
                    packs.append_again(d.0, &bytes)?;
                    placed.insert(d.0);
                }
                // Damaged: it goes.
                Ok(_) => {}
                // Unreadable now: left as it is.
                Err(_) => continue,
            }
            emptied.push(path.clone());
        }
        // The new packs are in place, and on disk, before anything old
        // goes: after a power loss the old copies are what is left.
        packs.close()?;
        if !emptied.is_empty() {
            sync_new_packs(&store.layout().packs(), &before)?;
        }
        Ok(())
    })();
    if copied.is_err() {
        emptied.clear();
    }
    let _ = packs.reset();
    for path in &emptied {
        let _ = fs::remove_file(path);
    }
    Ok(removed)
}

/// Force to disk the packs in `dir` not named in `before`, and `dir`.
fn sync_new_packs(dir: &Path, before: &HashSet<String>) -> std::io::Result<()> {
    for (name, path) in packs::list(dir) {
        if !before.contains(&name) {
            fs::File::open(&path)?.sync_all()?;
        }
    }
    fs::File::open(dir)?.sync_all()
}

fn name_of(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// Collect garbage. With `budget`, also evict least recently used entries
/// until the store fits.
pub fn collect(store: &Store, budget: Option<u64>) -> std::io::Result<Report> {
    let before = usage(store.root());
    let mut report = collect_inner(store, budget)?;
    let after = usage(store.root());
    let mut parts: Vec<&'static str> = before.keys().chain(after.keys()).copied().collect();
    parts.sort();
    parts.dedup();
    report.parts = parts
        .into_iter()
        .map(|p| {
            let get = |m: &HashMap<&'static str, u64>| m.get(p).copied().unwrap_or(0);
            (p, get(&before), get(&after))
        })
        .collect();
    Ok(report)
}

/// Bytes of the files below the state directory, by part.
fn usage(root: &Path) -> HashMap<&'static str, u64> {
    fn size(p: &Path) -> u64 {
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| size(&e.path())).sum())
                .unwrap_or(0),
            Ok(m) => m.len(),
            Err(_) => 0,
        }
    }
    let mut out = HashMap::new();
    if let Ok(rd) = fs::read_dir(root) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            *out.entry(super::layout::Layout::part_of(&name))
                .or_insert(0) += size(&e.path());
        }
    }
    out
}

/// Whether nothing in the directory `dir` changed for `idle`.
fn idle_for(dir: &Path, idle: std::time::Duration) -> bool {
    let Ok(rd) = fs::read_dir(dir) else {
        return false;
    };
    let newest = rd
        .flatten()
        .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
        .max();
    newest.is_some_and(|t| t.elapsed().is_ok_and(|age| age > idle))
}

fn collect_inner(store: &Store, budget: Option<u64>) -> std::io::Result<Report> {
    store.clear_tmp();
    let layout = store.layout();
    remove_derived(layout);
    let blob_files = files(&layout.blobs());
    let tree_files = files(&layout.trees());
    let mut report = Report {
        bytes_before: stored_bytes(layout),
        ..Report::default()
    };
    let mut kept = Kept::new(store);
    // Exported trees first: they are what users look at.
    for rec in records::load_exports(store) {
        kept.tree(rec.tree, 0, None);
    }
    // Then cache entries, most recently used first, while they fit.
    let log = store.action_log();
    let entries = by_recency(layout, log.entries());
    let mut over = false;
    for (key, action, size) in &entries {
        let fits = match (action, over) {
            (Some(Action { tree: Some(t), .. }), false) => kept.tree(*t, *size, budget),
            // An entry without a stored tree costs only its record.
            (Some(Action { tree: None, .. }), false) => kept.bytes(*size, budget),
            _ => false,
        };
        if fits {
            kept.keys.insert(*key);
        } else {
            over = over || action.is_some();
        }
    }
    report.actions_removed = log.rewrite(&|k| kept.keys.contains(k), &store.tmp_path("actions"))?;
    for (path, _) in &tree_files {
        if !TreeDigest::parse(name_of(path))
            .is_some_and(|d| kept.trees.contains(&d) || kept.bases.contains(&d))
        {
            let _ = fs::remove_file(path);
            report.trees_removed += 1;
        }
    }
    report.blobs_removed += collect_packs(store, &kept.blobs, &blob_files, budget)?;
    for (path, _) in &blob_files {
        if !BlobDigest::parse(name_of(path)).is_some_and(|d| kept.blobs.contains(&d)) {
            let _ = fs::remove_file(path);
            report.blobs_removed += 1;
        }
    }
    // Plugin output logs go with their steps' cache entries.
    if let Ok(rd) = fs::read_dir(layout.logs()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let key = name.strip_suffix(".log").and_then(StepKey::parse);
            if !key.is_some_and(|k| kept.keys.contains(&k)) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    // Compiled plugin modules are recompiled when needed: with a budget to
    // meet, they go first.
    if budget.is_some() {
        let _ = fs::remove_dir_all(layout.wasm_cache());
    }
    report.images_removed = collect_images(store, &kept.keys);
    collect_layer_cache(layout);
    let on_disk = trees_on_disk(layout, &entries, &kept, budget);
    for ids in sandbox_mappings(layout) {
        collect_rootfs(&layout.rootfs(&ids), &on_disk);
        report.cache_mounts_removed += collect_idle(&layout.cache_mounts(&ids), budget.is_some());
    }
    for old in layout.old_sandbox() {
        if old.exists() {
            crate::fsutil::unmount_below(&old);
            crate::fsutil::remove_any(&old);
        }
    }
    report.git_repos_removed = collect_idle(&layout.git(), budget.is_some());
    report.bytes_after = stored_bytes(layout);
    Ok(report)
}

/// Remove what is derived, and rebuilt when needed: parsed specs, the
/// build memos, the quarantine, claims of steps in flight (none: no
/// build runs during gc), records of projects long idle, and what older
/// kiln versions kept.
fn remove_derived(layout: &super::layout::Layout) {
    let _ = fs::remove_dir_all(layout.root().join("links"));
    let _ = fs::remove_dir_all(layout.inflight());
    let _ = fs::remove_dir_all(layout.parse());
    // Records of kiln before they were kept per project.
    for old in ["memo", "last.json", "steps.json", "last.digest"] {
        let _ = fs::remove_file(layout.record(old));
    }
    if let Ok(rd) = fs::read_dir(layout.projects()) {
        for e in rd.flatten() {
            let _ = fs::remove_file(e.path().join("memo"));
            if idle_for(&e.path(), PROJECT_IDLE) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    if let Ok(rd) = fs::read_dir(layout.quarantine()) {
        for e in rd.flatten() {
            crate::fsutil::remove_any(&e.path());
        }
    }
}

/// The bytes of stored contents: blobs (loose and packed), tree
/// manifests and the action log.
fn stored_bytes(layout: &super::layout::Layout) -> u64 {
    [layout.blobs(), layout.trees()]
        .iter()
        .flat_map(|d| files(d))
        .map(|(_, m)| m.len())
        .sum::<u64>()
        + packs_size(layout)
        + fs::metadata(layout.actions_log())
            .map(|m| m.len())
            .unwrap_or(0)
}

/// The keys in a list of keys used (32 bytes each).
fn used_keys(list: &Path) -> impl Iterator<Item = StepKey> {
    fs::read(list)
        .unwrap_or_default()
        .chunks_exact(32)
        .map(|k| {
            let mut key = [0u8; 32];
            key.copy_from_slice(k);
            StepKey(key)
        })
        .collect::<Vec<_>>()
        .into_iter()
}

/// An action log entry: its key, what it records, its size.
type Entry = (StepKey, Option<Action>, u64);

/// The action log's entries, most recently used first: by the newest
/// list of keys used that names them, then the later written first.
fn by_recency(layout: &super::layout::Layout, entries: Vec<Entry>) -> Vec<Entry> {
    let mut rank: HashMap<StepKey, usize> = HashMap::new();
    for (i, list) in super::used_lists(layout).iter().enumerate() {
        for key in used_keys(list) {
            rank.entry(key).or_insert(i);
        }
    }
    let mut entries: Vec<(usize, Entry)> = entries.into_iter().enumerate().collect();
    entries.sort_by_key(|(pos, (k, _, _))| {
        (
            rank.get(k).copied().unwrap_or(usize::MAX),
            std::cmp::Reverse(*pos),
        )
    });
    entries.into_iter().map(|(_, e)| e).collect()
}

/// What `run` steps keep on disk, per id mapping: the trees kept; with a
/// budget, only those the newest build used, so that build's next run
/// writes no tree out again while the rest is bounded by one build's
/// working set.
fn trees_on_disk(
    layout: &super::layout::Layout,
    entries: &[Entry],
    kept: &Kept<'_>,
    budget: Option<u64>,
) -> HashSet<TreeDigest> {
    if budget.is_none() {
        return kept.trees.clone();
    }
    let newest: HashSet<StepKey> = super::used_lists(layout)
        .first()
        .map(|list| used_keys(list).collect())
        .unwrap_or_default();
    entries
        .iter()
        .filter(|(k, _, _)| newest.contains(k) && kept.keys.contains(k))
        .filter_map(|(_, a, _)| a.as_ref()?.tree)
        .collect()
}

/// What gc keeps: trees, the blobs they name, the manifests trees stored
/// as differences are read against, cache entries, and their bytes.
struct Kept<'s> {
    store: &'s Store,
    /// Every pack's table (a damaged one is moved aside and reported).
    packed: HashMap<[u8; 32], u64>,
    trees: HashSet<TreeDigest>,
    blobs: HashSet<BlobDigest>,
    bases: HashSet<TreeDigest>,
    keys: HashSet<StepKey>,
    total: u64,
}

impl<'s> Kept<'s> {
    fn new(store: &'s Store) -> Kept<'s> {
        Kept {
            store,
            packed: store
                .all_packed()
                .into_iter()
                .map(|(d, l)| (d, u64::from(l.len)))
                .collect(),
            trees: HashSet::new(),
            blobs: HashSet::new(),
            bases: HashSet::new(),
            keys: HashSet::new(),
            total: 0,
        }
    }

    fn blob_size(&self, d: &BlobDigest) -> u64 {
        self.packed.get(&d.0).copied().unwrap_or_else(|| {
            fs::metadata(self.store.blob_path(*d))
                .map(|m| m.len())
                .unwrap_or(0)
        })
    }

    fn tree_size(&self, d: &TreeDigest) -> u64 {
        fs::metadata(self.store.tree_path(*d))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Keep `size` bytes more if they fit in `limit`.
    fn bytes(&mut self, size: u64, limit: Option<u64>) -> bool {
        let fits = limit.is_none_or(|l| self.total + size <= l);
        if fits {
            self.total += size;
        }
        fits
    }

    /// Keep a tree and its blobs (and `extra` bytes, its record) if they
    /// fit in `limit`; false when they do not or the tree cannot be read.
    fn tree(&mut self, tree: TreeDigest, extra: u64, limit: Option<u64>) -> bool {
        let mut add = extra;
        let mut new_blobs = Vec::new();
        let mut new_bases = Vec::new();
        if !self.trees.contains(&tree) {
            add += self.tree_size(&tree);
            // A tree stored as its differences from another keeps that
            // one's manifest (not its files), and so on down.
            let mut below = self.store.tree_base(tree);
            while let Some(b) = below {
                if self.trees.contains(&b) || self.bases.contains(&b) || new_bases.contains(&b) {
                    break;
                }
                add += self.tree_size(&b);
                new_bases.push(b);
                below = self.store.tree_base(b);
            }
            let Ok(t) = self.store.get_tree(tree) else {
                return false;
            };
            for e in t.entries.values() {
                if let Kind::File { blob, .. } = e.kind
                    && !self.blobs.contains(&blob)
                    && !new_blobs.contains(&blob)
                {
                    add += self.blob_size(&blob);
                    new_blobs.push(blob);
                }
            }
        }
        if !self.bytes(add, limit) {
            return false;
        }
        self.trees.insert(tree);
        self.blobs.extend(new_blobs);
        self.bases.extend(new_bases);
        true
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_project_s_records_are_idle_when_nothing_in_them_changed_for_long() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("last.json");
        fs::write(&f, b"{}").unwrap();
        let day = std::time::Duration::from_secs(24 * 3600);
        assert!(!idle_for(dir.path(), PROJECT_IDLE));
        let old = std::time::SystemTime::now() - 40 * day;
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(idle_for(dir.path(), PROJECT_IDLE));
        // One recent record keeps the project.
        fs::write(dir.path().join("steps.json"), b"{}").unwrap();
        assert!(!idle_for(dir.path(), PROJECT_IDLE));
        assert!(!idle_for(&dir.path().join("missing"), PROJECT_IDLE));
    }

    use super::*;
    use crate::model::state::ImageConfig;
    use crate::model::tree::{Entry, Tree};
    use crate::store::Access;

    fn entry_with(store: &Store, key: u8, content: &[u8]) -> TreeDigest {
        let blob = store.put_blob(content).unwrap();
        entry_of(store, key, blob, content.len() as u64)
    }

    /// A cache entry keyed `[key; 32]` whose tree holds `blob`.
    fn entry_of(store: &Store, key: u8, blob: BlobDigest, size: u64) -> TreeDigest {
        let mut t = Tree::new();
        t.put(
            "f",
            Entry {
                kind: Kind::File { blob, size },
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
            false,
        )
        .unwrap();
        let td = store.put_tree(&t).unwrap();
        crate::store::ActionCache::put(
            store,
            StepKey([key; 32]),
            &Action {
                tree: Some(td),
                config: ImageConfig::default(),
                test: None,
            },
        )
        .unwrap();
        td
    }

    #[test]
    fn a_kept_tree_keeps_the_tree_it_is_stored_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Access::Exclusive).unwrap();
        let blob = store.put_blob(b"content").unwrap();
        let mut base = Tree::new();
        for i in 0..100 {
            let e = Entry {
                kind: Kind::File { blob, size: 7 },
                mode: 0o644,
                uid: 0,
                gid: 0,
            };
            base.put(&format!("f{i:03}"), e, false).unwrap();
        }
        // The base is in no cache entry; the tree made from it is.
        let bd = store.put_tree(&base).unwrap();
        let mut t = base.clone();
        t.entries.remove("f000");
        let td = store.put_tree_on(&t, bd, &base).unwrap();
        assert_eq!(store.tree_base(td), Some(bd));
        crate::store::ActionCache::put(
            &store,
            StepKey([1; 32]),
            &Action {
                tree: Some(td),
                config: ImageConfig::default(),
                test: None,
            },
        )
        .unwrap();
        // An unused tree goes.
        let mut unused = Tree::new();
        unused.put("x", Entry::dir(0o755, 0, 0), false).unwrap();
        let ud = store.put_tree(&unused).unwrap();
        let r = collect(&store, None).unwrap();
        assert_eq!(r.trees_removed, 1, "{r:?}");
        assert!(!store.has_tree(ud));
        assert!(store.has_tree(bd));
        assert_eq!(store.get_tree(td).unwrap(), t);
    }

    #[test]
    fn packs_keep_what_is_used_in_few_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Access::Exclusive).unwrap();
        // A large pack, all in use but one blob; small packs, some garbage.
        let big: Vec<Vec<u8>> = (0..80u32)
            .map(|i| [i.to_le_bytes().as_slice(), &[7u8; 60_000]].concat())
            .collect();
        for b in &big {
            store.put_blob(b).unwrap();
        }
        store.flush().unwrap();
        for (i, b) in big.iter().enumerate().skip(1) {
            entry_with(&store, 100 + i as u8, b);
        }
        let used = entry_with(&store, 1, b"used");
        store.put_blob(b"garbage").unwrap();
        store.flush().unwrap();
        entry_with(&store, 2, b"also used");
        // A small blob an older kiln kept as a file of its own.
        let old = BlobDigest::from_hash(blake3::hash(b"old file"));
        let old_path = store.blob_path(old);
        fs::create_dir_all(old_path.parent().unwrap()).unwrap();
        fs::write(&old_path, b"old file").unwrap();
        fs::set_permissions(&old_path, fs::Permissions::from_mode(0o444)).unwrap();
        entry_of(&store, 3, old, 8);
        let before = packs::list(&store.layout().packs());
        assert_eq!(before.len(), 4);

        let r = collect(&store, None).unwrap();
        assert_eq!(r.blobs_removed, 1, "{r:?}");
        let after = packs::list(&store.layout().packs());
        assert_eq!(after.len(), 2, "{after:?}");
        assert!(after.contains(&before[0]), "the large pack stays as it is");
        assert!(!old_path.exists(), "the old file moved into a pack");
        // gc forgot the tables it read: this reads the packs again.
        let fresh = &store;
        for b in big.iter().skip(1) {
            assert_eq!(
                &fresh
                    .read_blob(BlobDigest::from_hash(blake3::hash(b)))
                    .unwrap(),
                b
            );
        }
        for b in [&b"used"[..], b"also used", b"old file"] {
            assert_eq!(
                fresh
                    .read_blob(BlobDigest::from_hash(blake3::hash(b)))
                    .unwrap(),
                b
            );
        }
        assert!(!fresh.has_blob(BlobDigest::from_hash(blake3::hash(b"garbage"))));
        // The large pack's little garbage stays until there is more of it.
        assert!(fresh.has_blob(BlobDigest::from_hash(blake3::hash(&big[0]))));
        assert!(store.has_tree(used));
        // Nothing more to do: the packs stay as they are.
        let again = collect(&store, None).unwrap();
        assert_eq!(again.blobs_removed, 0);
        assert_eq!(
            packs::list(&store.layout().packs()),
            after,
            "a gc with nothing to do rewrites no pack, small or large"
        );
        // With a budget, the large pack's garbage goes too (the budget
        // counts what is used, so nothing else may stay).
        let r = collect(&store, Some(1 << 30)).unwrap();
        assert_eq!(r.blobs_removed, 1, "{r:?}");
        assert!(!fresh.has_blob(BlobDigest::from_hash(blake3::hash(&big[0]))));
        for b in big.iter().skip(1) {
            assert!(fresh.has_blob(BlobDigest::from_hash(blake3::hash(b))));
        }
    }

    #[test]
    fn unreachable_blobs_go_and_budget_evicts_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Access::Exclusive).unwrap();
        let orphan = store.put_blob(b"orphan").unwrap();
        let old = entry_with(&store, 1, &[1u8; 10_000]);
        // The newest build used only the second entry.
        let new = entry_with(&store, 2, &[2u8; 10_000]);
        store.record_use(&[StepKey([2; 32])]).unwrap();

        let r = collect(&store, None).unwrap();
        assert_eq!(r.blobs_removed, 1);
        assert!(!store.has_blob(orphan));
        assert!(store.has_tree(old) && store.has_tree(new));

        let r = collect(&store, Some(15_000)).unwrap();
        assert_eq!(r.actions_removed, 1);
        assert!(!store.has_tree(old));
        assert!(store.has_tree(new));
        assert!(r.bytes_after <= 15_000);
    }
}
