//! The files of a checkout that differ from a commit (`kiln affected
//! --since REF`): what `git diff --name-only REF` and `git status` name
//! together. A file is compared by its kind (file, executable, link,
//! submodule) and blob id: the index's, when the file's stat still
//! matches the index entry (and is older than the index by a second, as
//! git does against racy writes), else the file's bytes hashed; files the
//! caller lists (a context's) that are neither in the commit nor in the
//! index are new, whether git ignores them or not (a build reads them),
//! `.git/` included; files inside a submodule are the submodule's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A file as git sees it: its kind and blob id.
type Blob = (Kind, gix::ObjectId);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Executable,
    Link,
    Submodule,
}

/// The root of the checkout holding `dir`, and its files that differ from
/// `rev` (a commit, branch, tag, `HEAD~1`…): changed, added to the index,
/// deleted, and `untracked` (paths below the checkout that the caller
/// lists, such as a context's files, not in the index). Paths are
/// absolute.
pub fn changed_since(
    dir: &Path,
    rev: &str,
    untracked: &[PathBuf],
) -> Result<(PathBuf, Vec<PathBuf>), String> {
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
    let mut now: BTreeMap<String, Option<Blob>> = BTreeMap::new();
    let mut submodules = Vec::new();
    for entry in index.entries() {
        let path = entry.path(&index).to_string();
        if entry.mode.is_submodule() {
            submodules.push(format!("{path}/"));
        }
        now.insert(path.clone(), current(&root, &path, entry, index_time));
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
    for p in untracked {
        let Ok(rel) = p.strip_prefix(&root) else {
            continue;
        };
        let Some(rel) = rel.to_str() else { continue };
        let in_submodule = submodules.iter().any(|s| rel.starts_with(s.as_str()));
        if !in_submodule && !now.contains_key(rel) && !then.contains_key(rel) {
            out.push(p.clone());
        }
    }
    out.sort();
    out.dedup();
    Ok((root, out))
}

/// Every file (blob or link) of `rev`'s tree, by path.
fn tree_at(repo: &gix::Repository, rev: &str) -> Result<BTreeMap<String, Blob>, String> {
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
        .map(|e| {
            let kind = if e.mode.is_commit() {
                Kind::Submodule
            } else if e.mode.is_link() {
                Kind::Link
            } else if e.mode.is_executable() {
                Kind::Executable
            } else {
                Kind::File
            };
            (e.filepath.to_string(), (kind, e.oid))
        })
        .collect())
}

/// The file at `path` now: the index's kind and id while the file's stat
/// matches the entry, else its kind and its bytes hashed; `None` when it
/// is gone.
fn current(
    root: &Path,
    path: &str,
    entry: &gix::index::Entry,
    index_time: Option<std::time::SystemTime>,
) -> Option<Blob> {
    use std::os::unix::fs::PermissionsExt;
    let full = root.join(path);
    let meta = std::fs::symlink_metadata(&full).ok()?;
    if entry.mode.is_submodule() {
        return Some((Kind::Submodule, entry.id));
    }
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    // Written in the second the index was: its stat cannot vouch for it.
    let racy = meta
        .modified()
        .ok()
        .zip(index_time)
        .is_none_or(|(m, i)| secs(m) >= secs(i));
    let kind = if meta.file_type().is_symlink() {
        Kind::Link
    } else if meta.permissions().mode() & 0o111 != 0 {
        Kind::Executable
    } else {
        Kind::File
    };
    let same_stat = gix::index::fs::Metadata::from_path_no_follow(&full)
        .ok()
        .and_then(|m| gix::index::entry::Stat::from_fs(&m).ok())
        .is_some_and(|s| s.matches(&entry.stat, Default::default()));
    if same_stat && !racy {
        return Some((kind, entry.id));
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
    let id = gix::objs::compute_hash(gix::hash::Kind::Sha1, gix::objs::Kind::Blob, &data).ok()?;
    Some((kind, id))
}
