//! Running a command without root: the stage's tree is written out whole
//! as a private directory (mounting an overlay needs root), and what the
//! command changed is found by comparing that directory with what was
//! written: every entry's inode, size, mode, mtime and ctime (any write,
//! chmod, rename or link moves the ctime), so only changed files are read
//! and hashed.
//!
//! Without root, kiln cannot give files other owners: the command runs as
//! root in a user namespace of its own (mapped to the user running kiln),
//! and an entry it writes keeps the owner the tree had at that path, or
//! root (0:0) where the path is new.

use super::SandboxError;
use crate::model::tree::{self, Entry, Tree};
use crate::store::ContentStore;
use rustix::fs::{AtFlags, FileType, OFlags};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::Path;

/// What `lstat` said of an entry when the directory was written.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Mark {
    ino: u64,
    mode: u32,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Mark {
    fn of(st: &rustix::fs::Stat) -> Mark {
        Mark {
            ino: st.st_ino,
            mode: st.st_mode,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime, st.st_ctime_nsec as i64),
        }
    }
}

/// Every entry below a directory as it was before the command ran.
pub struct Marks(HashMap<String, Mark>);

fn open_dir(root: &Path) -> Result<OwnedFd, SandboxError> {
    rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| SandboxError::Io(crate::diag::io_message("cannot read", root, &e.into())))
}

fn open_sub(dir: &OwnedFd, name: &str) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
}

/// The names in a directory, sorted, as UTF-8 (a tree cannot hold others).
fn names(root: &Path, dir: &OwnedFd, rel: &str) -> Result<Vec<String>, SandboxError> {
    let io = |e: rustix::io::Errno| {
        SandboxError::Io(crate::diag::io_message(
            "cannot list",
            &root.join(rel),
            &e.into(),
        ))
    };
    let mut out = Vec::new();
    let mut d = rustix::fs::Dir::read_from(dir).map_err(io)?;
    while let Some(item) = d.read() {
        let item = item.map_err(io)?;
        let raw = item.file_name().to_bytes();
        if raw == b"." || raw == b".." {
            continue;
        }
        match std::str::from_utf8(raw) {
            Ok(n) => out.push(n.to_string()),
            Err(_) => {
                return Err(SandboxError::Changes(format!(
                    "the command left `/{}` whose name is not UTF-8",
                    tree::join(rel, &String::from_utf8_lossy(raw))
                )));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Make the private copy below `root`, after a command ran and its
/// changes were applied to `tree`, exactly what writing `tree` out afresh
/// would give the next command, or say it cannot be: scaffolding the tree
/// does not hold is removed, and then every entry must be the tree's
/// (same paths, kinds, modes, sizes, symlink targets; no file with a second
/// link, no special file the tree cannot hold), and every time becomes
/// `epoch`. Then the next `run` on `tree` can start from it instead of
/// writing the whole tree out again. An entry the command did not touch
/// (its mark in `before` holds: setting an attribute or a time moves the
/// ctime) was already the tree's, with no attributes and the epoch's
/// times, so only touched entries cost more than their stat.
pub fn settle(
    root: &Path,
    before: &Marks,
    tree: &Tree,
    scaffolding: &BTreeSet<String>,
    epoch: u64,
) -> Result<bool, SandboxError> {
    Ok(settle_sealed(root, before, tree, scaffolding, epoch)?.is_some())
}

/// [`settle`], and the copy's seal when it settled (what
/// [`super::rootfs::seal_of`] would say of it, from the same walk: the
/// entries whose times were set are looked at again, the rest as seen).
pub fn settle_sealed(
    root: &Path,
    before: &Marks,
    tree: &Tree,
    scaffolding: &BTreeSet<String>,
    epoch: u64,
) -> Result<Option<[u8; 32]>, SandboxError> {
    // Never by path: the command may have put a symlink where kiln made
    // a directory.
    for s in scaffolding.iter().rev() {
        if tree.get(s).is_none() {
            let _ = crate::fsutil::remove_below(root, s);
        }
    }
    let mut seen = 0;
    let mut attrs = vec![0u8; 1024];
    let mut touched: Vec<usize> = Vec::new();
    let mut stats: Vec<(String, [u64; 10])> = Vec::new();
    let same = each(root, &mut |dir, name, path, st| {
        let Some(e) = tree.get(path) else {
            return Ok(false);
        };
        seen += 1;
        if before.0.get(path) != Some(&Mark::of(st)) {
            // Extended attributes the command set (a tree holds none).
            if has_attributes(&root.join(path), &mut attrs) {
                return Ok(false);
            }
            touched.push(stats.len());
        }
        stats.push((path.to_string(), super::rootfs::stat_fields(st)));
        let mode = st.st_mode & 0o7777;
        Ok(match (&e.kind, FileType::from_raw_mode(st.st_mode)) {
            (tree::Kind::File { size, .. }, FileType::RegularFile) => {
                st.st_size as u64 == *size && mode == e.mode && st.st_nlink == 1
            }
            (tree::Kind::Dir, FileType::Directory) => mode == e.mode,
            (tree::Kind::Fifo, FileType::Fifo) => mode == e.mode,
            (tree::Kind::Symlink { target }, FileType::Symlink) => {
                rustix::fs::readlinkat(dir, name, Vec::new())
                    .ok()
                    .is_some_and(|t| t.to_str().is_ok_and(|t| t == target))
            }
            _ => false,
        })
    })?;
    // Device nodes of the tree are never on disk.
    let on_disk = tree
        .entries
        .values()
        .filter(|e| !matches!(e.kind, tree::Kind::Device { .. }))
        .count();
    if !same || seen != on_disk {
        return Ok(None);
    }
    let set_times = |path: &Path| {
        crate::fsutil::set_epoch_times(path, epoch).map_err(|e| {
            SandboxError::Io(crate::diag::io_message("cannot set the times of", path, &e))
        })
    };
    for &i in &touched {
        let path = root.join(&stats[i].0);
        set_times(&path)?;
        // Its ctime moved: as it is now.
        let st = rustix::fs::lstat(&path).map_err(|e| {
            SandboxError::Io(crate::diag::io_message("cannot stat", &path, &e.into()))
        })?;
        stats[i].1 = super::rootfs::stat_fields(&st);
    }
    set_times(root)?;
    let top = rustix::fs::lstat(root)
        .map_err(|e| SandboxError::Io(crate::diag::io_message("cannot stat", root, &e.into())))?;
    Ok(Some(super::rootfs::seal_digest(
        top.st_mode,
        stats.iter().map(|(p, st)| (p.as_str(), st)),
    )))
}

/// Whether `path` has extended attributes beyond the SELinux label the
/// system gives every file (`buf` holds the names; too many to list
/// counts as having some).
fn has_attributes(path: &Path, buf: &mut [u8]) -> bool {
    match rustix::fs::llistxattr(path, &mut buf[..]) {
        Ok(n) => buf[..n]
            .split(|b| *b == 0)
            .any(|name| !name.is_empty() && name != b"security.selinux"),
        Err(rustix::io::Errno::NOTSUP) => false,
        Err(_) => true,
    }
}

/// Note every entry below `root` (written from the tree, before the command).
pub fn mark(root: &Path) -> Result<Marks, SandboxError> {
    let mut out = HashMap::new();
    each(root, &mut |_, _, path, st| {
        out.insert(path.to_string(), Mark::of(st));
        Ok(true)
    })?;
    Ok(Marks(out))
}

/// Visit every entry below `root` in path order, with its directory, name,
/// path and `lstat`, until `f` says no (then `false`).
type Visit<'a> =
    dyn FnMut(&OwnedFd, &str, &str, &rustix::fs::Stat) -> Result<bool, SandboxError> + 'a;

fn each(root: &Path, f: &mut Visit<'_>) -> Result<bool, SandboxError> {
    fn walk(
        root: &Path,
        dir: &OwnedFd,
        rel: &str,
        f: &mut Visit<'_>,
    ) -> Result<bool, SandboxError> {
        for name in names(root, dir, rel)? {
            let path = tree::join(rel, &name);
            let io = |e: rustix::io::Errno| {
                SandboxError::Io(crate::diag::io_message(
                    "cannot stat",
                    &root.join(&path),
                    &e.into(),
                ))
            };
            let st =
                rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW).map_err(io)?;
            if !f(dir, &name, &path, &st)? {
                return Ok(false);
            }
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                super::too_deep(&path)?;
                let sub = open_sub(dir, &name).map_err(io)?;
                if !walk(root, &sub, &path, f)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
    walk(root, &open_dir(root)?, "", f)
}

/// Apply what the command changed below `root` to `tree`. Paths in
/// `scaffolding` (mount points kiln made for the command) are left out
/// when the command left them empty.
pub fn apply(
    content: &dyn ContentStore,
    root: &Path,
    before: &Marks,
    tree: &mut Tree,
    scaffolding: &BTreeSet<String>,
    ids: super::Ids,
    limit: u64,
) -> Result<(), SandboxError> {
    let mut seen = HashSet::new();
    let mut w = Walk {
        content,
        root,
        before,
        scaffolding,
        seen: &mut seen,
        ids,
        left: std::cell::Cell::new(limit),
    };
    w.walk(&open_dir(root)?, "", tree)?;
    let mut gone: Vec<&String> = before.0.keys().filter(|p| !seen.contains(*p)).collect();
    gone.sort();
    for p in gone {
        tree.remove_all(p);
    }
    Ok(())
}

struct Walk<'a> {
    content: &'a dyn ContentStore,
    root: &'a Path,
    before: &'a Marks,
    scaffolding: &'a BTreeSet<String>,
    seen: &'a mut HashSet<String>,
    /// How owners on disk are the tree's (as the root of a container,
    /// the copy has real owners; as a user, none).
    ids: super::Ids,
    /// What the files read back may still add up to.
    left: std::cell::Cell<u64>,
}

impl Walk<'_> {
    /// Returns whether anything at or below `rel` was added or changed.
    fn walk(&mut self, dir: &OwnedFd, rel: &str, tree: &mut Tree) -> Result<bool, SandboxError> {
        let mut changed_any = false;
        for name in names(self.root, dir, rel)? {
            let path = tree::join(rel, &name);
            let io = |what: &str, e: rustix::io::Errno| {
                SandboxError::Io(crate::diag::io_message(
                    what,
                    &self.root.join(&path),
                    &e.into(),
                ))
            };
            let st = rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io("cannot stat", e))?;
            self.seen.insert(path.clone());
            let was = self.before.0.get(&path);
            let unchanged = was == Some(&Mark::of(&st));
            let ft = FileType::from_raw_mode(st.st_mode);
            let mode = st.st_mode & 0o7777;
            // With owners on disk, they are read back; as a user, owners
            // cannot change: what was there keeps its owner, a new path is
            // root's.
            let (uid, gid) = if self.ids.owns_files() {
                self.ids.guest(st.st_uid, st.st_gid).ok_or_else(|| {
                    SandboxError::Changes(format!(
                        "`/{path}` has the owner {}:{}, outside the sandbox's ids",
                        st.st_uid, st.st_gid
                    ))
                })?
            } else {
                tree.get(&path)
                    .filter(|_| was.is_some())
                    .map(|e| (e.uid, e.gid))
                    .unwrap_or((0, 0))
            };
            let scaffold = was.is_none() && self.scaffolding.contains(&path);
            match ft {
                FileType::Directory => {
                    super::too_deep(&path)?;
                    let sub = open_sub(dir, &name).map_err(|e| io("cannot open", e))?;
                    if !unchanged {
                        if tree.get(&path).is_some_and(|e| !e.is_dir()) {
                            tree.remove_all(&path);
                        }
                        tree.entries
                            .insert(path.clone(), Entry::dir(mode, uid, gid));
                    }
                    let below = self.walk(&sub, &path, tree)?;
                    if scaffold && !below {
                        tree.entries.remove(&path);
                    } else if below || !unchanged {
                        changed_any = true;
                    }
                }
                _ if unchanged => {}
                _ => {
                    if ft == FileType::RegularFile && scaffold && st.st_size == 0 {
                        continue;
                    }
                    let at = self.root.join(&path);
                    tree.remove_all(&path);
                    if let Some(e) = super::leaf(
                        self.content,
                        dir,
                        &name,
                        &path,
                        &st,
                        (uid, gid),
                        &at,
                        &self.left,
                    )? {
                        tree.entries.insert(path, e);
                        changed_any = true;
                    }
                }
            }
        }
        Ok(changed_any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tree::Kind;
    use crate::store::memory::MemoryStore;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn file(store: &MemoryStore, bytes: &[u8], uid: u32) -> Entry {
        Entry {
            kind: Kind::File {
                blob: store.put_blob(bytes).unwrap(),
                size: bytes.len() as u64,
            },
            mode: 0o644,
            uid,
            gid: uid,
        }
    }

    #[test]
    fn changes_found_by_comparison_keep_owners_and_drop_empty_scaffolding() {
        let store = MemoryStore::new();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut tree = Tree::new();
        for (path, bytes, uid) in [
            ("same", &b"same"[..], 7),
            ("edited", b"old", 1000),
            ("gone", b"x", 0),
            ("d/inner", b"y", 0),
        ] {
            tree.entries.insert(path.into(), file(&store, bytes, uid));
            fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
            fs::write(root.join(path), bytes).unwrap();
            fs::set_permissions(root.join(path), fs::Permissions::from_mode(0o644)).unwrap();
        }
        tree.entries.insert("d".into(), Entry::dir(0o755, 5, 5));
        let before = mark(root).unwrap();
        // What a command does, and the mount points kiln made for it.
        fs::write(root.join("edited"), b"new").unwrap();
        fs::remove_file(root.join("gone")).unwrap();
        fs::remove_dir_all(root.join("d")).unwrap();
        fs::write(root.join("d"), b"now a file").unwrap();
        fs::write(root.join("new"), b"n").unwrap();
        fs::create_dir_all(root.join("mnt/empty")).unwrap();
        fs::create_dir_all(root.join("used")).unwrap();
        fs::write(root.join("used/out"), b"o").unwrap();
        std::os::unix::fs::symlink("same", root.join("link")).unwrap();
        let scaffolding: BTreeSet<String> = ["mnt", "mnt/empty", "used"]
            .into_iter()
            .map(String::from)
            .collect();
        apply(
            &store,
            root,
            &before,
            &mut tree,
            &scaffolding,
            crate::sandbox::Ids::Own,
            u64::MAX,
        )
        .unwrap();

        let owner = |p: &str| tree.get(p).map(|e| (e.uid, e.gid));
        assert_eq!(tree.get("same"), Some(&file(&store, b"same", 7)));
        assert_eq!(tree.get("edited"), Some(&file(&store, b"new", 1000)));
        assert!(tree.get("gone").is_none() && tree.get("d/inner").is_none());
        // `d` was a directory: a file there now is a new kind of entry,
        // but the same path, so it keeps the owner it had.
        assert_eq!(owner("d"), Some((5, 5)));
        assert!(!tree.is_dir("d"));
        assert_eq!(owner("new"), Some((0, 0)));
        assert!(tree.get("mnt").is_none() && tree.get("mnt/empty").is_none());
        assert!(tree.is_dir("used") && tree.get("used/out").is_some());
        assert!(matches!(
            tree.get("link").map(|e| &e.kind),
            Some(Kind::Symlink { target }) if target == "same"
        ));
    }

    #[test]
    fn a_fifo_left_behind_is_kept() {
        let store = MemoryStore::new();
        let dir = tempfile::tempdir().unwrap();
        let before = mark(dir.path()).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("fifo"),
            FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let mut tree = Tree::new();
        apply(
            &store,
            dir.path(),
            &before,
            &mut tree,
            &BTreeSet::new(),
            crate::sandbox::Ids::Own,
            u64::MAX,
        )
        .unwrap();
        assert_eq!(tree.get("fifo").map(|e| &e.kind), Some(&Kind::Fifo));
    }

    #[test]
    fn a_copy_settles_into_its_tree_only_when_it_is_exactly_that_tree() {
        use std::os::unix::fs::MetadataExt;
        let store = MemoryStore::new();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Every entry counts as one the command touched.
        let untouched = Marks(HashMap::new());
        fs::create_dir_all(root.join("d")).unwrap();
        fs::set_permissions(root.join("d"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.join("d/f"), b"data").unwrap();
        fs::set_permissions(root.join("d/f"), fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink("d/f", root.join("l")).unwrap();
        fs::create_dir_all(root.join("mnt/point")).unwrap();
        let mut tree = Tree::new();
        tree.entries.insert("d".into(), Entry::dir(0o755, 0, 0));
        tree.entries.insert("d/f".into(), file(&store, b"data", 0));
        tree.entries.insert(
            "l".into(),
            Entry {
                kind: Kind::Symlink {
                    target: "d/f".into(),
                },
                mode: 0o777,
                uid: 0,
                gid: 0,
            },
        );
        let scaffolding: BTreeSet<String> =
            ["mnt", "mnt/point"].into_iter().map(String::from).collect();
        assert!(settle(root, &untouched, &tree, &scaffolding, 7).unwrap());
        // The scaffolding is gone and every time is the epoch.
        assert!(!root.join("mnt").exists());
        for p in ["d", "d/f"] {
            assert_eq!(
                fs::symlink_metadata(root.join(p)).unwrap().mtime(),
                7,
                "{p}"
            );
        }
        // A second link to a file: the next command could change both.
        fs::hard_link(root.join("d/f"), root.join("d/g")).unwrap();
        tree.entries.insert("d/g".into(), file(&store, b"data", 0));
        assert!(!settle(root, &untouched, &tree, &BTreeSet::new(), 7).unwrap());
        fs::remove_file(root.join("d/g")).unwrap();
        tree.entries.remove("d/g");
        assert!(settle(root, &untouched, &tree, &BTreeSet::new(), 7).unwrap());
        // A device node of the tree is never on disk: still exactly the tree.
        tree.entries.insert(
            "d/console".into(),
            Entry {
                kind: Kind::Device {
                    class: tree::DeviceClass::Char,
                    major: 5,
                    minor: 1,
                },
                mode: 0o600,
                uid: 0,
                gid: 0,
            },
        );
        assert!(settle(root, &untouched, &tree, &BTreeSet::new(), 7).unwrap());
        tree.entries.remove("d/console");
        // Something the tree does not hold, or a mode it does not say.
        fs::write(root.join("extra"), b"x").unwrap();
        assert!(!settle(root, &untouched, &tree, &BTreeSet::new(), 7).unwrap());
        fs::remove_file(root.join("extra")).unwrap();
        fs::set_permissions(root.join("d/f"), fs::Permissions::from_mode(0o600)).unwrap();
        assert!(!settle(root, &untouched, &tree, &BTreeSet::new(), 7).unwrap());
        fs::set_permissions(root.join("d/f"), fs::Permissions::from_mode(0o644)).unwrap();
        // An extended attribute the command set (where the file system
        // has them), seen also when the copy was marked before the
        // command: setting it moves the file's ctime.
        let marked = mark(root).unwrap();
        if rustix::fs::lsetxattr(
            root.join("d/f"),
            "user.kiln-test",
            b"1",
            rustix::fs::XattrFlags::empty(),
        )
        .is_ok()
        {
            assert!(!settle(root, &marked, &tree, &BTreeSet::new(), 7).unwrap());
            assert!(!settle(root, &untouched, &tree, &BTreeSet::new(), 7).unwrap());
            rustix::fs::lremovexattr(root.join("d/f"), "user.kiln-test").unwrap();
            assert!(settle(root, &untouched, &tree, &BTreeSet::new(), 7).unwrap());
        }
        // Something the tree holds and the copy lacks.
        tree.entries.insert("gone".into(), file(&store, b"g", 0));
        assert!(!settle(root, &untouched, &tree, &BTreeSet::new(), 7).unwrap());
    }

    #[test]
    fn the_seal_settling_gives_is_the_walk_s() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = MemoryStore::new();
        let mut tree = Tree::new();
        tree.put("d", Entry::dir(0o755, 0, 0), false).unwrap();
        tree.put("d/a", file(&store, b"a", 0), false).unwrap();
        tree.put("d/b", file(&store, b"b", 0), false).unwrap();
        tree.put("z", file(&store, b"z", 0), false).unwrap();
        let rootfs = crate::sandbox::rootfs::Rootfs {
            layout: &crate::store::layout::Layout::new(dir.path()),
            content: &store,
            epoch: 7,
            ids: crate::sandbox::Ids::Own,
            scope: "test",
        };
        let copy = root.join("copy");
        std::fs::create_dir(&copy).unwrap();
        rootfs.write_whole(&copy, &tree).unwrap();
        let marks = mark(&copy).unwrap();
        // A command rewrote one file with the same content and made one.
        std::fs::write(copy.join("d/a"), b"a").unwrap();
        std::fs::write(copy.join("d/c"), b"c").unwrap();
        tree.put("d/c", file(&store, b"c", 0), false).unwrap();
        let seal = settle_sealed(&copy, &marks, &tree, &BTreeSet::new(), 7)
            .unwrap()
            .expect("settled");
        assert_eq!(seal, crate::sandbox::rootfs::seal_of(&copy).unwrap());
    }
}
