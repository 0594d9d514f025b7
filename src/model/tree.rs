//! Trees: a stage's filesystem as a sorted manifest.
//!
//! A [`Tree`] maps a relative path (`"usr/bin/x"`, no leading slash; the
//! root itself is implicit) to an [`Entry`]: a file (a blob digest), a
//! directory or a symlink, with mode and owner. Builtin steps edit trees in
//! memory; nothing is written to disk until a tree is stored or exported.
//! Timestamps are not recorded: exports normalize them.

use super::digest::{BlobDigest, TreeDigest};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Bound;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Kind {
    File {
        blob: BlobDigest,
        size: u64,
    },
    Dir,
    Symlink {
        target: String,
    },
    /// A character or block device, as an image's layer holds it (Debian
    /// roots made by mmdebstrap have `/dev/console`, say). Kept in trees
    /// and written to layers and tars as it is; never made where a step
    /// could use it (a `run` step gets bubblewrap's own `/dev`).
    Device {
        class: DeviceClass,
        major: u32,
        minor: u32,
    },
    /// A named pipe, likewise kept.
    Fifo,
}

/// Which kind of device node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    Char,
    Block,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(flatten)]
    pub kind: Kind,
    /// Permission bits, including setuid/setgid/sticky (at most 0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Entry {
    pub fn dir(mode: u32, uid: u32, gid: u32) -> Entry {
        Entry {
            kind: Kind::Dir,
            mode,
            uid,
            gid,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir)
    }
}

/// How symlinks are followed when resolving a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Links {
    /// A root filesystem: absolute targets start at the tree root and `..`
    /// stops at the root, as inside a container.
    Rootfs,
    /// A build context: a target that is absolute or climbs above the root
    /// escapes, which is an error.
    Confined,
}

/// Why a tree operation failed. Paths are shown with a leading `/`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("`/{0}` is not a directory")]
    NotADirectory(String),
    #[error("cannot replace directory `/{0}` with a file")]
    IsADirectory(String),
    #[error("`/{0}` does not exist")]
    NotFound(String),
    #[error("too many levels of symlinks at `/{0}`")]
    TooManyLinks(String),
    #[error("`{path}` is a symlink to `{target}`, which points outside the context")]
    Escapes { path: String, target: String },
    #[error("the path `{0}` leads outside the context")]
    DotDotEscapes(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub entries: BTreeMap<String, Entry>,
}

/// Split a path into its normal components. `.` and empty parts vanish;
/// `..` pops, stopping at the root (Rootfs) or failing (Confined).
pub fn components(path: &str, links: Links) -> Result<Vec<String>, TreeError> {
    let mut out: Vec<String> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() && links == Links::Confined {
                    return Err(TreeError::DotDotEscapes(path.to_string()));
                }
            }
            p => out.push(p.to_string()),
        }
    }
    Ok(out)
}

/// An exclude pattern as it is matched: relative, without a final `/`.
pub fn exclude_pattern(p: &str) -> &str {
    p.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
}

/// A path pattern as `copy` sources and `exclude` patterns use it: `*`,
/// `?` and `[…]` stay within a component, `**` crosses components, `\`
/// escapes.
pub fn glob(pattern: &str) -> Result<globset::Glob, globset::Error> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

/// Normalize `path` against a working directory (both in rootfs terms).
pub fn normalize(path: &str, workdir: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{workdir}/{path}")
    };
    components(&joined, Links::Rootfs)
        .unwrap_or_default()
        .join("/")
}

/// The parent of a tree path (`""` for top-level entries).
pub fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// The last component of a tree path.
pub fn basename(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, b)| b)
}

pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// A path a step could have made: relative and normal (no empty, `.` or
/// `..` part, no NUL).
fn normal_path(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\0')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// The first bytes of an encoded tree: the encoding's name and version.
const TREE_TAG: &[u8] = b"kiln-tree-2\0";

/// One entry as [`Tree::to_bytes`] writes it (postcard needs externally
/// tagged, unflattened types; the JSON form of [`Entry`] stays as it is).
#[derive(Serialize, Deserialize)]
struct WireEntry<'a> {
    #[serde(borrow)]
    path: Cow<'a, str>,
    #[serde(borrow)]
    kind: WireKind<'a>,
    mode: u32,
    uid: u32,
    gid: u32,
}

#[derive(Serialize, Deserialize)]
enum WireKind<'a> {
    File(BlobDigest, u64),
    Dir,
    Symlink(#[serde(borrow)] Cow<'a, str>),
    // New kinds go last: postcard numbers variants by their place, and
    // the digests of stored trees must not change.
    Device(bool, u32, u32),
    Fifo,
}

impl<'a> WireEntry<'a> {
    fn of(path: &'a str, e: &'a Entry) -> WireEntry<'a> {
        WireEntry {
            path: Cow::Borrowed(path),
            kind: match &e.kind {
                Kind::File { blob, size } => WireKind::File(*blob, *size),
                Kind::Dir => WireKind::Dir,
                Kind::Symlink { target } => WireKind::Symlink(Cow::Borrowed(target)),
                Kind::Device {
                    class,
                    major,
                    minor,
                } => WireKind::Device(*class == DeviceClass::Block, *major, *minor),
                Kind::Fifo => WireKind::Fifo,
            },
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
        }
    }

    fn into_entry(self) -> (String, Entry) {
        let kind = match self.kind {
            WireKind::File(blob, size) => Kind::File { blob, size },
            WireKind::Dir => Kind::Dir,
            WireKind::Symlink(t) => Kind::Symlink {
                target: t.into_owned(),
            },
            WireKind::Device(block, major, minor) => Kind::Device {
                class: if block {
                    DeviceClass::Block
                } else {
                    DeviceClass::Char
                },
                major,
                minor,
            },
            WireKind::Fifo => Kind::Fifo,
        };
        let e = Entry {
            kind,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
        };
        (self.path.into_owned(), e)
    }
}

/// The first bytes of a tree stored as its differences from another: the
/// first form, whose sum covers the differences alone (the result is
/// checked against its name by encoding it again), and the current one,
/// whose sum also covers the digest of the tree it gives (so a delta read
/// under its own name, on a base that was checked, is checked itself).
const DELTA_TAG_1: &[u8] = b"kiln-tree-delta-1\0";
const DELTA_TAG: &[u8] = b"kiln-tree-delta-2\0";

/// A stored tree's bytes, read: the tree, or its differences from a base
/// tree (stored by its digest), which must be read first.
#[derive(Debug)]
pub enum Stored {
    Whole(Tree),
    Delta {
        base: TreeDigest,
        /// How many deltas deep this one is (its base's depth plus one).
        depth: u8,
        put: Vec<(String, Entry)>,
        gone: Vec<String>,
        /// Whether the sum covered the name the delta was read under: then
        /// the result is that tree when the base is the one it names.
        bound: bool,
    },
}

impl Stored {
    /// Read stored bytes ([`Tree::to_bytes`] or [`Tree::delta_bytes`]),
    /// stored under the name `name`; `None` for anything else.
    pub fn read(bytes: &[u8], name: TreeDigest) -> Option<Stored> {
        let (rest, bound) = if let Some(rest) = bytes.strip_prefix(DELTA_TAG) {
            (rest, true)
        } else if let Some(rest) = bytes.strip_prefix(DELTA_TAG_1) {
            (rest, false)
        } else {
            return Tree::from_bytes(bytes).map(Stored::Whole);
        };
        let (base, rest) = rest.split_first_chunk::<32>()?;
        let (&depth, rest) = rest.split_first()?;
        let (sum, body) = rest.split_first_chunk::<32>()?;
        if delta_sum(bound.then_some(name), body) != *sum {
            return None;
        }
        let (put, gone): (Vec<WireEntry<'_>>, Vec<Cow<'_, str>>) =
            postcard::from_bytes(body).ok()?;
        // In order, as written, so the result is what was stored.
        if put.windows(2).any(|w| w[0].path >= w[1].path) || gone.windows(2).any(|w| w[0] >= w[1]) {
            return None;
        }
        Some(Stored::Delta {
            base: TreeDigest(*base),
            depth,
            put: put.into_iter().map(WireEntry::into_entry).collect(),
            gone: gone.into_iter().map(Cow::into_owned).collect(),
            bound,
        })
    }

    /// The base a delta needs and how deep it is, from the first bytes of
    /// stored bytes (no more needs to be read); `None` for a whole tree.
    pub fn base_of(head: &[u8]) -> Option<(TreeDigest, u8)> {
        let rest = head
            .strip_prefix(DELTA_TAG)
            .or_else(|| head.strip_prefix(DELTA_TAG_1))?;
        let (base, rest) = rest.split_first_chunk::<32>()?;
        Some((TreeDigest(*base), *rest.first()?))
    }

    /// How many bytes [`Stored::base_of`] reads.
    pub const HEAD: usize = DELTA_TAG.len() + 33;

    /// The tree, given the base a delta names (ignored for a whole tree).
    pub fn apply(self, base: Tree) -> Tree {
        match self {
            Stored::Whole(t) => t,
            Stored::Delta { put, gone, .. } => {
                let mut t = base;
                for p in gone {
                    t.entries.remove(&p);
                }
                t.entries.extend(put);
                t
            }
        }
    }
}

/// A delta's sum: of its body, after the digest of the tree it gives (the
/// current form) or alone (the first).
fn delta_sum(name: Option<TreeDigest>, body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    if let Some(name) = name {
        h.update(&name.0);
    }
    h.update(body);
    *h.finalize().as_bytes()
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    /// The canonical bytes of this tree; its digest is their blake3. A
    /// tag, then postcard (compact and fast: an image of 10,000 files is
    /// encoded in about a millisecond, where JSON took several).
    pub fn to_bytes(&self) -> Vec<u8> {
        let wire: Vec<WireEntry<'_>> = self
            .entries
            .iter()
            .map(|(path, e)| WireEntry::of(path, e))
            .collect();
        postcard::to_extend(&wire, TREE_TAG.to_vec()).unwrap_or_else(|_| TREE_TAG.to_vec())
    }

    /// This tree stored as its differences from `base` (digest
    /// `base_digest`), `depth` deltas deep (the base's depth plus one):
    /// what [`Stored::read`] reads back with the base at hand. Its digest
    /// is still [`Tree::digest`], of the whole tree's bytes.
    pub fn delta_bytes(
        &self,
        name: TreeDigest,
        base_digest: TreeDigest,
        base: &Tree,
        depth: u8,
    ) -> Vec<u8> {
        let mut put = Vec::new();
        let mut gone = Vec::new();
        for change in self.changes_from(base) {
            match change {
                Change::Added(p, e) | Change::Changed(p, _, e) => put.push(WireEntry::of(p, e)),
                Change::Removed(p, _) => gone.push(Cow::Borrowed(p)),
            }
        }
        let body = postcard::to_allocvec(&(put, gone)).unwrap_or_default();
        let mut out = DELTA_TAG.to_vec();
        out.extend_from_slice(&base_digest.0);
        out.push(depth);
        // Its own sum, bound to the tree it gives: a damaged delta is found
        // as itself, not as every tree stored on it, and one read under
        // another name is found too.
        out.extend_from_slice(&delta_sum(Some(name), &body));
        out.extend_from_slice(&body);
        out
    }

    /// Read what [`Tree::to_bytes`] wrote (or the JSON of stores written
    /// before the tag); `None` for anything else, including entries out of
    /// order (so that reading and writing back gives the same bytes).
    pub fn from_bytes(bytes: &[u8]) -> Option<Tree> {
        let Some(rest) = bytes.strip_prefix(TREE_TAG) else {
            return match bytes.first() {
                Some(b'{') => serde_json::from_slice(bytes).ok(),
                _ => None,
            };
        };
        let wire: Vec<WireEntry<'_>> = postcard::from_bytes(rest).ok()?;
        if wire.windows(2).any(|w| w[0].path >= w[1].path) {
            return None;
        }
        // Sorted already: the map is built in bulk.
        let entries = wire.into_iter().map(WireEntry::into_entry).collect();
        Some(Tree { entries })
    }

    /// A tree in the current form only, whose every path is one a step
    /// could have made: relative, normal (no empty, `.` or `..` part, no
    /// NUL), below a directory of the tree: what a tree from elsewhere (a
    /// remote cache) must be before anything reads it.
    pub fn from_untrusted(bytes: &[u8]) -> Option<Tree> {
        bytes.starts_with(TREE_TAG).then_some(())?;
        let t = Tree::from_bytes(bytes)?;
        t.well_formed().then_some(t)
    }

    fn well_formed(&self) -> bool {
        self.entries.keys().all(|path| {
            let parent = parent(path);
            normal_path(path)
                && (parent.is_empty() || self.entries.get(parent).is_some_and(Entry::is_dir))
        })
    }

    /// This tree's entries in consecutive parts of at most `size` encoded
    /// bytes each (or one entry, when it alone is larger), in path order, each with the path of its first entry
    /// and encoded as a tree of its own ([`Tree::to_bytes`]): what a remote
    /// cache keeps so that reading a few paths fetches a few parts.
    pub fn parts(&self, size: usize) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut wire: Vec<WireEntry<'_>> = Vec::new();
        let mut bytes = 0;
        let mut flush = |wire: &mut Vec<WireEntry<'_>>| {
            if let Some(first) = wire.first() {
                let first = first.path.to_string();
                let encoded = postcard::to_extend(&*wire, TREE_TAG.to_vec())
                    .unwrap_or_else(|_| TREE_TAG.to_vec());
                out.push((first, encoded));
                wire.clear();
            }
        };
        for (path, e) in &self.entries {
            let entry = WireEntry::of(path, e);
            // What postcard writes for it (a link's target included).
            let len = postcard::experimental::serialized_size(&entry).unwrap_or(path.len() + 48);
            if bytes > 0 && bytes + len > size {
                flush(&mut wire);
                bytes = 0;
            }
            bytes += len;
            wire.push(entry);
        }
        flush(&mut wire);
        out
    }

    /// A part [`Tree::parts`] wrote, read back from elsewhere: its entries
    /// when they are in order, each a normal path, the first `first`, and
    /// all before `next` (the next part's first path).
    pub fn from_part(bytes: &[u8], first: &str, next: Option<&str>) -> Option<Tree> {
        bytes.starts_with(TREE_TAG).then_some(())?;
        let t = Tree::from_bytes(bytes)?;
        let in_place = t.entries.keys().next().is_some_and(|p| p == first)
            && t.entries
                .keys()
                .next_back()
                .is_some_and(|p| next.is_none_or(|n| p.as_str() < n));
        (in_place && t.entries.keys().all(|p| normal_path(p))).then_some(t)
    }

    pub fn digest(&self) -> TreeDigest {
        TreeDigest::from_hash(blake3::hash(&self.to_bytes()))
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// Is `path` the root or a directory?
    pub fn is_dir(&self, path: &str) -> bool {
        path.is_empty() || self.entries.get(path).is_some_and(Entry::is_dir)
    }

    /// Resolve symlinks in `path` (every component, and the last one too when
    /// `follow_last`). Components that do not exist are kept as written.
    pub fn resolve(
        &self,
        path: &str,
        follow_last: bool,
        links: Links,
    ) -> Result<String, TreeError> {
        let mut pending: Vec<String> = components(path, links)?;
        pending.reverse();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            if part == ".." {
                if done.pop().is_none() && links == Links::Confined {
                    return Err(TreeError::DotDotEscapes(path.to_string()));
                }
                continue;
            }
            done.push(part);
            let here = done.join("/");
            let is_last = pending.is_empty();
            if let Some(Entry {
                kind: Kind::Symlink { target },
                ..
            }) = self.entries.get(&here)
            {
                if is_last && !follow_last {
                    break;
                }
                hops += 1;
                if hops > 40 {
                    return Err(TreeError::TooManyLinks(here));
                }
                done.pop();
                if target.starts_with('/') {
                    if links == Links::Confined {
                        return Err(TreeError::Escapes {
                            path: here,
                            target: target.clone(),
                        });
                    }
                    done.clear();
                }
                for t in target.split('/').rev() {
                    match t {
                        "" | "." => {}
                        other => pending.push(other.to_string()),
                    }
                }
                // `..` in a target is handled as it is popped, which needs the
                // escape check to know it came from a link:
                if links == Links::Confined {
                    let mut depth = done.len() as i64;
                    for t in target.split('/') {
                        match t {
                            "" | "." => {}
                            ".." => depth -= 1,
                            _ => depth += 1,
                        }
                        if depth < 0 {
                            return Err(TreeError::Escapes {
                                path: here,
                                target: target.clone(),
                            });
                        }
                    }
                }
            }
        }
        Ok(done.join("/"))
    }

    /// Make sure `dir` and its parents are directories, creating what is
    /// missing with `template`'s mode and owner.
    pub fn mkdir_all(&mut self, dir: &str, template: &Entry) -> Result<(), TreeError> {
        if dir.is_empty() {
            return Ok(());
        }
        let mut here = String::new();
        for part in dir.split('/') {
            here = join(&here, part);
            match self.entries.get(&here) {
                Some(e) if e.is_dir() => {}
                Some(_) => return Err(TreeError::NotADirectory(here)),
                None => {
                    self.entries.insert(here.clone(), template.clone());
                }
            }
        }
        Ok(())
    }

    /// Put an entry at `path` (parents must exist as directories).
    /// A directory keeps an existing directory's entry unless `replace_dir_meta`.
    pub fn put(
        &mut self,
        path: &str,
        entry: Entry,
        replace_dir_meta: bool,
    ) -> Result<(), TreeError> {
        if path.is_empty() {
            return Err(TreeError::IsADirectory(String::new()));
        }
        let p = parent(path);
        if !self.is_dir(p) {
            return Err(TreeError::NotADirectory(p.to_string()));
        }
        match self.entries.get(path) {
            Some(existing) if existing.is_dir() => {
                if entry.is_dir() {
                    if replace_dir_meta {
                        self.entries.insert(path.to_string(), entry);
                    }
                    return Ok(());
                }
                return Err(TreeError::IsADirectory(path.to_string()));
            }
            _ => {
                self.entries.insert(path.to_string(), entry);
            }
        }
        Ok(())
    }

    /// Remove `path` and everything below it. Returns whether it existed.
    pub fn remove_all(&mut self, path: &str) -> bool {
        let existed = self.entries.remove(path).is_some();
        let below: Vec<String> = self.descendants(path).map(|(p, _)| p.to_string()).collect();
        for p in &below {
            self.entries.remove(p);
        }
        existed || !below.is_empty()
    }

    /// How `self` differs from `old`, path by path in order: one pass over
    /// both (no lookups), so comparing two trees of an image costs about
    /// a millisecond.
    pub fn changes_from<'a>(&'a self, old: &'a Tree) -> Changes<'a> {
        Changes {
            old: old.entries.iter().peekable(),
            new: self.entries.iter().peekable(),
        }
    }

    /// Every entry strictly below `dir` (all of the tree for the root), in order.
    pub fn descendants<'a>(
        &'a self,
        dir: &str,
    ) -> Box<dyn Iterator<Item = (&'a String, &'a Entry)> + 'a> {
        if dir.is_empty() {
            return Box::new(self.entries.iter());
        }
        let lo = format!("{dir}/");
        let hi = format!("{dir}0"); // '0' sorts right after '/'
        Box::new(
            self.entries
                .range::<String, _>((Bound::Included(lo), Bound::Excluded(hi))),
        )
    }
}

/// One path at which two trees differ (see [`Tree::changes_from`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Change<'a> {
    /// In the new tree only.
    Added(&'a str, &'a Entry),
    /// In the old tree only.
    Removed(&'a str, &'a Entry),
    /// In both, different: `(path, old, new)`.
    Changed(&'a str, &'a Entry, &'a Entry),
}

impl<'a> Change<'a> {
    pub fn path(&self) -> &'a str {
        match self {
            Change::Added(p, _) | Change::Removed(p, _) | Change::Changed(p, _, _) => p,
        }
    }
}

/// The differences of two trees, by one merge of their sorted entries.
pub struct Changes<'a> {
    old: std::iter::Peekable<std::collections::btree_map::Iter<'a, String, Entry>>,
    new: std::iter::Peekable<std::collections::btree_map::Iter<'a, String, Entry>>,
}

impl<'a> Iterator for Changes<'a> {
    type Item = Change<'a>;

    fn next(&mut self) -> Option<Change<'a>> {
        loop {
            let order = match (self.old.peek(), self.new.peek()) {
                (None, None) => return None,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((o, _)), Some((n, _))) => o.as_str().cmp(n.as_str()),
            };
            match order {
                std::cmp::Ordering::Less => {
                    let (p, e) = self.old.next()?;
                    return Some(Change::Removed(p, e));
                }
                std::cmp::Ordering::Greater => {
                    let (p, e) = self.new.next()?;
                    return Some(Change::Added(p, e));
                }
                std::cmp::Ordering::Equal => {
                    let (p, was) = self.old.next()?;
                    let (_, is) = self.new.next()?;
                    if was != is {
                        return Some(Change::Changed(p, was, is));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Entry {
        Entry {
            kind: Kind::File {
                blob: BlobDigest([0; 32]),
                size: 0,
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    fn link(t: &str) -> Entry {
        Entry {
            kind: Kind::Symlink { target: t.into() },
            mode: 0o777,
            uid: 0,
            gid: 0,
        }
    }

    fn sample() -> Tree {
        let mut t = Tree::new();
        let d = Entry::dir(0o755, 0, 0);
        t.mkdir_all("a/b", &d).unwrap();
        t.put("a/b/f", file(), false).unwrap();
        t.put("a/up", link("../a/b"), false).unwrap();
        t.put("a/abs", link("/a/b"), false).unwrap();
        t.put("a/out", link("../../x"), false).unwrap();
        t.put("a/loop", link("loop"), false).unwrap();
        t.put("a.txt", file(), false).unwrap();
        t
    }

    #[test]
    fn parts_hold_the_tree_in_order_and_are_checked_for_their_place() {
        let mut t = Tree::new();
        let d = Entry::dir(0o755, 0, 0);
        for i in 0..300 {
            t.mkdir_all(&format!("d{i:03}/sub"), &d).unwrap();
            t.put(&format!("d{i:03}/sub/f"), file(), false).unwrap();
        }
        let parts = t.parts(1000);
        assert!(parts.len() > 10, "{} parts", parts.len());
        let mut back = Tree::new();
        for (i, (first, bytes)) in parts.iter().enumerate() {
            let next = parts.get(i + 1).map(|(n, _)| n.as_str());
            let part = Tree::from_part(bytes, first, next).unwrap();
            assert!(bytes.len() < 1500, "about the size asked");
            back.entries.extend(part.entries);
            // Out of its place: refused.
            assert!(Tree::from_part(bytes, "a", next).is_none());
            if i > 0 {
                let (prev, _) = &parts[i - 1];
                assert!(Tree::from_part(bytes, first, Some(prev)).is_none());
            }
        }
        assert_eq!(back, t);
        assert_eq!(Tree::new().parts(1000), Vec::new());
        // A path no step makes is refused.
        let mut bad = Tree::new();
        bad.entries.insert("../x".into(), file());
        let (first, bytes) = &bad.parts(1000)[0];
        assert!(Tree::from_part(bytes, first, None).is_none());
    }

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize("x/y", "/work"), "work/x/y");
        assert_eq!(normalize("/x/../y/", "/work"), "y");
        assert_eq!(normalize("../../..", "/work"), "");
        assert_eq!(normalize(".", "/"), "");
    }

    #[test]
    fn resolve_follows_links() {
        let t = sample();
        assert_eq!(t.resolve("a/up/f", true, Links::Rootfs).unwrap(), "a/b/f");
        assert_eq!(t.resolve("a/abs/f", true, Links::Rootfs).unwrap(), "a/b/f");
        assert_eq!(t.resolve("a/abs", false, Links::Rootfs).unwrap(), "a/abs");
        assert_eq!(t.resolve("a/out/z", true, Links::Rootfs).unwrap(), "x/z");
        assert_eq!(
            t.resolve("a/missing/z", true, Links::Rootfs).unwrap(),
            "a/missing/z"
        );
        assert!(matches!(
            t.resolve("a/loop", true, Links::Rootfs),
            Err(TreeError::TooManyLinks(_))
        ));
    }

    #[test]
    fn confined_resolution_refuses_escapes() {
        let t = sample();
        assert_eq!(t.resolve("a/up/f", true, Links::Confined).unwrap(), "a/b/f");
        assert!(matches!(
            t.resolve("a/abs/f", true, Links::Confined),
            Err(TreeError::Escapes { .. })
        ));
        assert!(matches!(
            t.resolve("a/out", true, Links::Confined),
            Err(TreeError::Escapes { .. })
        ));
        assert!(matches!(
            t.resolve("../x", true, Links::Confined),
            Err(TreeError::DotDotEscapes(_))
        ));
        assert_eq!(
            t.resolve("a/../a.txt", true, Links::Confined).unwrap(),
            "a.txt"
        );
    }

    #[test]
    fn descendants_are_exact() {
        let t = sample();
        let below: Vec<&String> = t.descendants("a").map(|(p, _)| p).collect();
        assert_eq!(below, ["a/abs", "a/b", "a/b/f", "a/loop", "a/out", "a/up"]);
        assert!(!below.iter().any(|p| *p == "a.txt"));
    }

    #[test]
    fn put_checks_parents_and_dirs() {
        let mut t = sample();
        assert_eq!(
            t.put("a.txt/x", file(), false),
            Err(TreeError::NotADirectory("a.txt".into()))
        );
        assert_eq!(
            t.put("a/b", file(), false),
            Err(TreeError::IsADirectory("a/b".into()))
        );
        assert!(t.remove_all("a"));
        assert_eq!(t.entries.len(), 1);
        assert!(!t.remove_all("nope"));
    }

    #[test]
    fn digest_is_order_independent_of_insertion() {
        let mut a = Tree::new();
        let mut b = Tree::new();
        a.put("x", file(), false).unwrap();
        a.put("y", file(), false).unwrap();
        b.put("y", file(), false).unwrap();
        b.put("x", file(), false).unwrap();
        assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn changes_are_found_in_one_pass() {
        let old = sample();
        let mut new = old.clone();
        new.entries.insert("a/new".into(), file());
        let gone = new.entries.keys().next().cloned().unwrap();
        new.entries.remove(&gone);
        new.entries.insert("a/b".into(), link("x"));
        let found: Vec<Change<'_>> = new.changes_from(&old).collect();
        let mut expected = vec![
            Change::Added("a/new", &new.entries["a/new"]),
            Change::Removed(&gone, &old.entries[&gone]),
            Change::Changed("a/b", &old.entries["a/b"], &new.entries["a/b"]),
        ];
        expected.sort_by(|x, y| x.path().cmp(y.path()));
        assert_eq!(found, expected);
        assert_eq!(old.changes_from(&old).count(), 0);
        assert_eq!(new.changes_from(&Tree::new()).count(), new.entries.len());
    }
}

#[cfg(test)]
mod serde_tests {
    use super::*;

    #[test]
    fn file_entries_round_trip_through_json() {
        let mut t = Tree::new();
        let e = Entry {
            kind: Kind::File {
                blob: BlobDigest([5; 32]),
                size: 3,
            },
            mode: 0o644,
            uid: 1,
            gid: 2,
        };
        t.put("f", e, false).unwrap();
        let back = Tree::from_bytes(&t.to_bytes()).unwrap();
        assert_eq!(back, t);
        // Trees stored as JSON by earlier versions still read.
        let old = serde_json::to_vec(&t).unwrap();
        assert_eq!(Tree::from_bytes(&old).unwrap(), t);
        assert!(Tree::from_bytes(b"garbage").is_none());
    }
}
