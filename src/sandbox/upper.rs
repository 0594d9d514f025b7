//! Reading what a command changed: overlayfs's upper directory holds
//! exactly the changes (a removed path is a 0/0 character device, a
//! directory replaced whole carries `trusted.overlay.opaque=y`), so only
//! what changed is read and hashed.

use super::{Ids, SandboxError};
use crate::model::tree::{self, Entry, Tree};
use crate::store::ContentStore;
use rustix::fs::{AtFlags, FileType, OFlags};
use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::path::Path;

/// Apply the changes in `upper` to `tree`. Paths in `scaffolding` (mount
/// points kiln created for the command) are left out when the command
/// left them empty (they were not in the tree: kiln made them). Owners
/// are moved back out of the sandbox's id range (`ids`).
pub fn apply(
    content: &dyn ContentStore,
    upper: &Path,
    tree: &mut Tree,
    scaffolding: &BTreeSet<String>,
    ids: Ids,
    limit: u64,
) -> Result<(), SandboxError> {
    let fd = rustix::fs::open(
        upper,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| SandboxError::Io(crate::diag::io_message("cannot read", upper, &e.into())))?;
    let mut dropped = Vec::new();
    let cx = Walk {
        content,
        upper,
        scaffolding,
        ids,
        left: std::cell::Cell::new(limit),
    };
    walk(&cx, &fd, "", tree, &mut dropped)?;
    Ok(())
}

/// What every directory of the walk shares.
struct Walk<'a> {
    content: &'a dyn ContentStore,
    upper: &'a Path,
    scaffolding: &'a BTreeSet<String>,
    ids: Ids,
    /// What the files read back may still add up to.
    left: std::cell::Cell<u64>,
}

fn walk(
    cx: &Walk<'_>,
    dir: &OwnedFd,
    rel: &str,
    tree: &mut Tree,
    dropped: &mut Vec<String>,
) -> Result<bool, SandboxError> {
    let (content, upper, scaffolding) = (cx.content, cx.upper, cx.scaffolding);
    let io = |what: &str, p: &str, e: rustix::io::Errno| {
        SandboxError::Io(crate::diag::io_message(what, &upper.join(p), &e.into()))
    };
    let mut names = Vec::new();
    let mut d = rustix::fs::Dir::read_from(dir).map_err(|e| io("cannot list", rel, e))?;
    while let Some(item) = d.read() {
        let item = item.map_err(|e| io("cannot list", rel, e))?;
        let name = item.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push(name.to_vec());
    }
    names.sort();
    let mut kept_any = false;
    for raw in names {
        let Ok(name) = String::from_utf8(raw.clone()) else {
            return Err(SandboxError::Changes(format!(
                "the command left `/{}` whose name is not UTF-8",
                tree::join(rel, &String::from_utf8_lossy(&raw))
            )));
        };
        let path = tree::join(rel, &name);
        let st = rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io("cannot stat", &path, e))?;
        let ft = FileType::from_raw_mode(st.st_mode);
        let mode = st.st_mode & 0o7777;
        // A whiteout (made by overlayfs itself, with its mounter's ids)
        // has no owner to read back; everything else was made by the
        // command, or copied up from the tree, within the sandbox's ids.
        let whiteout = ft == FileType::CharacterDevice && st.st_rdev == 0;
        let owner = cx.ids.guest(st.st_uid, st.st_gid);
        let (uid, gid) = match owner {
            Some(o) => o,
            None if whiteout => (0, 0),
            None => {
                return Err(SandboxError::Changes(format!(
                    "`/{path}` has the host owner {}:{}, outside the sandbox's ids: it was not made by the command",
                    st.st_uid, st.st_gid
                )));
            }
        };
        match ft {
            FileType::CharacterDevice if st.st_rdev == 0 => {
                // A whiteout: the path was removed.
                tree.remove_all(&path);
                kept_any = true;
            }
            FileType::Directory => {
                super::too_deep(&path)?;
                let sub = rustix::fs::openat(
                    dir,
                    &name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| io("cannot open", &path, e))?;
                let mut buf = [0u8; 4];
                let opaque = rustix::fs::fgetxattr(&sub, "trusted.overlay.opaque", &mut buf)
                    .is_ok_and(|n| buf[..n] == *b"y");
                // (`tree` still holds what was at `path` before: a path is
                // changed only when it is reached, parents first.)
                if opaque || tree.get(&path).is_some_and(|e| !e.is_dir()) {
                    // Replaced whole: what was below it is gone.
                    tree.remove_all(&path);
                }
                tree.entries
                    .insert(path.clone(), Entry::dir(mode, uid, gid));
                let kept = walk(cx, &sub, &path, tree, dropped)?;
                // Scaffolding is only what kiln made: nothing was there.
                let scaffold = scaffolding.contains(&path);
                if scaffold && !kept {
                    tree.entries.remove(&path);
                    dropped.push(path);
                } else {
                    kept_any = true;
                }
            }
            _ => {
                if ft == FileType::RegularFile && scaffolding.contains(&path) && st.st_size == 0 {
                    dropped.push(path);
                    continue;
                }
                let at = upper.join(&path);
                tree.remove_all(&path);
                if let Some(e) =
                    super::leaf(content, dir, &name, &path, &st, (uid, gid), &at, &cx.left)?
                {
                    tree.entries.insert(path, e);
                    kept_any = true;
                }
            }
        }
    }
    Ok(kept_any)
}
