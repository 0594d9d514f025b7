//! The files of a checkout that differ from a commit (`kiln affected
//! --since REF`): what `git diff --name-only REF` and `git status` name
//! together. A file is compared by its blob id: the index's, when the
//! file's stat still matches the index entry (and is older than the
//! index, as git does against racy writes), else the file's bytes hashed;
//! files the caller lists (a context's) that are neither in the commit
//! nor in the index are new, whether git ignores them or not (a build
//! reads them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The checkout holding `dir`, and its files that differ from `rev` (a
/// commit, branch, tag, `HEAD~1`…): changed, added to the index, deleted,
/// and `untracked` (paths below the checkout that the caller lists, such
/// as a context's files, not in the index). Paths are absolute.
pub fn changed_since(
    dir: &Path,
    rev: &str,
    untracked: &dyn Fn(&Path) -> Vec<PathBuf>,
) -> Result<Vec<PathBuf>, String> {
    let repo = gix::discover(dir)
        .map_err(|e| format!("no git checkout holds `{}`: {e}", dir.display()))?;
    let root = repo
        .workdir()
        .ok_or_else(|| "the git repository has no working tree".to_string())?
        .to_path_buf();
    let root = std::fs::canonicalize(&root).unwrap_or(root);
    let then = tree_at(&repo, rev)?;
    let index = repo
        .index_or_empty()
        .map_err(|e| format!("cannot read the git index: {e}"))?;
    let index_time = std::fs::metadata(index.path())
        .and_then(|m| m.modified())
        .ok();
    let mut now: BTreeMap<String, Option<gix::ObjectId>> = BTreeMap::new();
    for entry in index.entries() {
        let path = entry.path(&index).to_string();
        now.insert(path.clone(), current_id(&root, &path, entry, index_time));
    }
    let mut changed: BTreeSet<String> = BTreeSet::new();
    for (path, id) in &now {
        if then.get(path) != id.as_ref() {
            changed.insert(path.clone());
        }
    }
    for path in then.keys() {
        if !now.contains_key(path) {
            changed.insert(path.clone());
        }
    }
    let mut out: Vec<PathBuf> = changed.iter().map(|p| root.join(p)).collect();
    for p in untracked(&root) {
        let Ok(rel) = p.strip_prefix(&root) else {
            continue;
        };
        let Some(rel) = rel.to_str() else { continue };
        let in_git = rel == ".git" || rel.starts_with(".git/");
        if !in_git && !now.contains_key(rel) && !then.contains_key(rel) {
            out.push(p.clone());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Every file (blob or link) of `rev`'s tree, by path.
fn tree_at(repo: &gix::Repository, rev: &str) -> Result<BTreeMap<String, gix::ObjectId>, String> {
    let id = repo
        .rev_parse_single(rev)
        .map_err(|e| format!("`{rev}` names no commit here: {e}"))?;
    let tree = id
        .object()
        .and_then(|o| o.peel_to_tree())
        .map_err(|e| format!("`{rev}` names no commit here: {e}"))?;
    let mut rec = gix::traverse::tree::Recorder::default();
    tree.traverse()
        .breadthfirst(&mut rec)
        .map_err(|e| format!("cannot read the tree of `{rev}`: {e}"))?;
    Ok(rec
        .records
        .into_iter()
        .filter(|e| !e.mode.is_tree())
        .map(|e| (e.filepath.to_string(), e.oid))
        .collect())
}

/// The blob id of the file at `path` now: the index's while the file's
/// stat matches it, else its bytes hashed; `None` when it is gone.
fn current_id(
    root: &Path,
    path: &str,
    entry: &gix::index::Entry,
    index_time: Option<std::time::SystemTime>,
) -> Option<gix::ObjectId> {
    let full = root.join(path);
    let meta = std::fs::symlink_metadata(&full).ok()?;
    if entry.mode.is_submodule() {
        return Some(entry.id);
    }
    let racy = meta
        .modified()
        .ok()
        .zip(index_time)
        .is_none_or(|(m, i)| m >= i);
    let same_stat = gix::index::fs::Metadata::from_path_no_follow(&full)
        .ok()
        .and_then(|m| gix::index::entry::Stat::from_fs(&m).ok())
        .is_some_and(|s| s.matches(&entry.stat, Default::default()));
    if same_stat && !racy {
        return Some(entry.id);
    }
    let data = if meta.file_type().is_symlink() {
        use std::os::unix::ffi::OsStrExt;
        std::fs::read_link(&full)
            .ok()?
            .as_os_str()
            .as_bytes()
            .to_vec()
    } else {
        std::fs::read(&full).ok()?
    };
    gix::objs::compute_hash(gix::hash::Kind::Sha1, gix::objs::Kind::Blob, &data).ok()
}
