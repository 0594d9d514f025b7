//! Small file-system helpers shared by the store, the sandbox and the
//! exporters.

use std::fs;
use std::path::{Path, PathBuf};

/// Remove a file, symlink or directory tree, if it exists. Directories
/// exported read-only are made writable first.
pub fn remove_any(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = remove_tree(p);
        }
        Ok(_) => {
            let _ = fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Remove the directory `dir` and everything below it, however deep, in
/// constant stack and with two descriptors open: every subdirectory is
/// first moved up into `dir` itself (so none is ever more than one level
/// down), read-only ones made writable on the way. No symlink is
/// followed: entries are reached through their directory's descriptor.
pub fn remove_tree(dir: &Path) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let top = rustix::fs::open(dir, flags, Mode::empty())?;
    let _ = rustix::fs::fchmod(&top, Mode::from_raw_mode(0o700));
    let mut fresh = 0u64;
    loop {
        // Names at the top: files go now, directories are emptied below.
        let mut subdirs = Vec::new();
        let mut listing = rustix::fs::Dir::read_from(&top)?;
        while let Some(item) = listing.read() {
            let item = item?;
            let name = item.file_name().to_owned();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            let st = rustix::fs::statat(&top, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                subdirs.push(name);
            } else {
                rustix::fs::unlinkat(&top, name.as_c_str(), AtFlags::empty())?;
            }
        }
        if subdirs.is_empty() {
            break;
        }
        for name in subdirs {
            let sub = rustix::fs::openat(&top, name.as_c_str(), flags, Mode::empty())?;
            let _ = rustix::fs::fchmod(&sub, Mode::from_raw_mode(0o700));
            let mut below = rustix::fs::Dir::read_from(&sub)?;
            let mut names = Vec::new();
            while let Some(item) = below.read() {
                let item = item?;
                let n = item.file_name().to_owned();
                if n.to_bytes() != b"." && n.to_bytes() != b".." {
                    names.push(n);
                }
            }
            for n in names {
                let st = rustix::fs::statat(&sub, n.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    // Up into the top, under a name of its own.
                    loop {
                        fresh += 1;
                        let to = format!(".kiln-rm-{fresh}");
                        match rustix::fs::renameat_with(
                            &sub,
                            n.as_c_str(),
                            &top,
                            to.as_str(),
                            rustix::fs::RenameFlags::NOREPLACE,
                        ) {
                            Err(rustix::io::Errno::EXIST | rustix::io::Errno::NOTEMPTY) => {
                                continue;
                            }
                            r => break r?,
                        }
                    }
                } else {
                    rustix::fs::unlinkat(&sub, n.as_c_str(), AtFlags::empty())?;
                }
            }
            rustix::fs::unlinkat(&top, name.as_c_str(), AtFlags::REMOVEDIR)?;
        }
    }
    drop(top);
    fs::remove_dir(dir)
}

/// Why a path cannot be trusted: the path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted {
    pub path: PathBuf,
    pub why: String,
}

/// The names and `..`s of `p`, last first (a stack to walk it by).
fn parts_reversed(p: &Path) -> Vec<std::ffi::OsString> {
    use std::path::Component;
    let mut parts: Vec<std::ffi::OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    parts.reverse();
    parts
}

/// Check that no other user can change where `path` leads, and return it
/// resolved (symlinks followed; components that do not exist yet kept as
/// written). Every existing directory on the way must be kiln's user's or
/// root's and, when every user may write it, sticky (as `/tmp`); every
/// symlink on the way must be kiln's user's or root's, and is followed
/// from the directory it is in. So a directory (a state directory, an
/// export's parent) reached this way is one that only kiln's user and
/// root can redirect, whatever is later done by path, as OpenSSH checks
/// the directories above a key file.
pub fn trusted_path(path: &Path) -> Result<PathBuf, Untrusted> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    let whose = if me == 0 {
        "root's".to_string()
    } else {
        format!("uid {me}'s or root's")
    };
    let untrusted = |p: &Path, why: String| Untrusted {
        path: p.to_path_buf(),
        why,
    };
    let start = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| untrusted(path, format!("the working directory cannot be read: {e}")))?
            .join(path)
    };
    let mut pending = parts_reversed(&start);
    let mut done = PathBuf::from("/");
    let check_dir = |p: &Path, m: &fs::Metadata| -> Result<(), Untrusted> {
        if m.uid() != me && m.uid() != 0 {
            return Err(untrusted(
                p,
                format!("it belongs to uid {}, not {whose}", m.uid()),
            ));
        }
        if m.mode() & 0o002 != 0 && m.mode() & 0o1000 == 0 {
            return Err(untrusted(p, "every user may write it".into()));
        }
        Ok(())
    };
    check_dir(
        &done,
        &fs::metadata("/").map_err(|e| untrusted(&done, e.to_string()))?,
    )?;
    let mut hops = 0;
    let mut missing = false;
    while let Some(part) = pending.pop() {
        if part == ".." {
            // Physical: `done` holds no symlink; a directory yet to be
            // made is a plain one.
            done.pop();
            continue;
        }
        let next = done.join(&part);
        if missing {
            done = next;
            continue;
        }
        let m = match fs::symlink_metadata(&next) {
            Ok(m) => m,
            // Not there (or not reachable: a file on the way, no search
            // permission): what follows is made by kiln, or fails there.
            Err(_) => {
                missing = true;
                done = next;
                continue;
            }
        };
        if m.file_type().is_symlink() {
            if m.uid() != me && m.uid() != 0 {
                return Err(untrusted(
                    &next,
                    format!("it is a symlink of uid {}, not {whose}", m.uid()),
                ));
            }
            hops += 1;
            if hops > 40 {
                return Err(untrusted(&next, "too many symlinks".into()));
            }
            let target = fs::read_link(&next).map_err(|e| untrusted(&next, e.to_string()))?;
            if target.is_absolute() {
                done = PathBuf::from("/");
            }
            pending.extend(parts_reversed(&target));
            continue;
        }
        if m.is_dir() {
            check_dir(&next, &m)?;
        }
        done = next;
    }
    Ok(done)
}

/// Whether an I/O error means the disk (or the user's quota) is full.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error()
            || code == rustix::io::Errno::DQUOT.raw_os_error()
    ) || e.kind() == std::io::ErrorKind::StorageFull
}

/// Set a path's access and modification times to `epoch` (seconds),
/// without following a final symlink.
pub fn set_epoch_times(path: &Path, epoch: u64) -> std::io::Result<()> {
    let at = rustix::fs::Timespec {
        tv_sec: epoch as i64,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: at,
        last_modification: at,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(std::io::Error::from)
}

/// [`set_epoch_times`] for `dir` and everything below it.
pub fn set_epoch_times_below(dir: &Path, epoch: u64) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            set_epoch_times_below(&entry.path(), epoch)?;
        } else {
            set_epoch_times(&entry.path(), epoch)?;
        }
    }
    // Last: setting a child's times leaves its directory's alone, but be
    // plain about the order.
    set_epoch_times(dir, epoch)
}

/// Unmount (lazily) whatever is mounted below `dir`: overlays an older
/// kiln mounted in the host's namespace and did not live to unmount.
/// kiln now mounts only inside its sandboxes, so none are made any more.
pub fn unmount_below(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else { return };
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    // Deepest first, so that nested mounts go before their parents.
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p.starts_with(&dir) && *p != dir)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH);
    }
}

/// A mount point as `/proc/self/mountinfo` writes it (`\040` for a space…).
fn unescape_mountinfo(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Make a FIFO at `at` with `mode` (its permission bits).
pub fn make_fifo(at: &Path, mode: u32) -> std::io::Result<()> {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        at,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(mode & 0o777),
        0,
    )?;
    Ok(())
}

/// Remove the file, symlink or empty directory at `rel` below `root`
/// without following a symlink on the way: every directory is opened
/// relative to its parent with `O_NOFOLLOW`, so what a command left in a
/// tree (a directory replaced by a symlink to the host's `/etc`, say)
/// cannot make kiln remove anything outside `root`.
pub fn remove_below(root: &Path, rel: &str) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let Some((last, parents)) = parts.split_last() else {
        return Ok(());
    };
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(std::io::Error::other("not a plain relative path"));
    }
    let mut dir = rustix::fs::open(root, dir_flags, Mode::empty())?;
    for p in parents {
        dir = rustix::fs::openat(&dir, *p, dir_flags, Mode::empty())?;
    }
    let st = rustix::fs::statat(&dir, *last, AtFlags::SYMLINK_NOFOLLOW)?;
    let flags = if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    rustix::fs::unlinkat(&dir, *last, flags)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_buffer_is_reused_by_its_thread_and_a_nested_call_gets_its_own() {
        let first = with_buffer(16, |b| {
            b[0] = 7;
            let inner = with_buffer(8, |i| {
                assert_eq!(i.len(), 8);
                i.as_ptr() as usize
            });
            assert_ne!(inner, b.as_ptr() as usize);
            b.as_ptr() as usize
        });
        // The same memory again, as long as it is large enough.
        assert_eq!(with_buffer(4, |b| b.as_ptr() as usize), first);
        assert_eq!(with_buffer(1 << 16, |b| b.len()), 1 << 16);
    }

    use super::*;

    #[test]
    fn removing_below_a_root_never_follows_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir_all(outside.join("etc")).unwrap();
        fs::write(outside.join("etc/victim"), b"x").unwrap();
        // `a` replaced by a symlink out of the root, as a command could.
        fs::rename(root.join("a"), root.join("z")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a")).unwrap();
        assert!(remove_below(&root, "a/etc/victim").is_err());
        assert!(outside.join("etc/victim").exists());
        // What is really there goes; a directory only when empty.
        assert!(remove_below(&root, "z").is_err());
        remove_below(&root, "z/b").unwrap();
        remove_below(&root, "z").unwrap();
        remove_below(&root, "a").unwrap();
        assert!(outside.exists() && !root.join("a").exists());
    }

    #[test]
    fn a_tree_of_any_depth_is_removed_without_following_links() {
        use rustix::fs::{Mode, OFlags};
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"x").unwrap();
        let top = dir.path().join("top");
        fs::create_dir(&top).unwrap();
        // 3000 levels, deeper than any path the kernel takes whole, with a
        // read-only directory, a link out and a file on the way.
        let mut fd =
            rustix::fs::open(&top, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        for i in 0..3000 {
            rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            if i == 10 {
                rustix::fs::symlinkat(&outside, &fd, "link").unwrap();
                fs::write(
                    format!("/proc/self/fd/{}/file", {
                        use std::os::fd::AsRawFd;
                        fd.as_raw_fd()
                    }),
                    b"y",
                )
                .unwrap();
            }
            fd = rustix::fs::openat(&fd, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
                .unwrap();
            if i == 20 {
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o555)).unwrap();
            }
        }
        drop(fd);
        remove_tree(&top).unwrap();
        assert!(!top.exists());
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn a_path_is_trusted_only_when_no_other_user_can_change_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(dir.path()).unwrap();
        let mine = base.join("mine");
        fs::create_dir(&mine).unwrap();
        fs::set_permissions(&mine, fs::Permissions::from_mode(0o755)).unwrap();
        // Symlinks are followed; what does not exist yet is kept.
        std::os::unix::fs::symlink("mine", base.join("link")).unwrap();
        assert_eq!(
            trusted_path(&base.join("link/new/../state")).unwrap(),
            mine.join("state")
        );
        // Writable by every user, not sticky: anyone could swap `state`.
        let open = base.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let u = trusted_path(&open.join("state")).unwrap_err();
        assert_eq!(u.path, open);
        // Sticky (as /tmp): only the owner of `state` could.
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(trusted_path(&open.join("state")).is_ok());
    }
}

thread_local! {
    static BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Run `f` with a buffer of `size` bytes, reused by the thread: zeroing a
/// large buffer per file costs more than reading a small file. A nested
/// call gets a buffer of its own.
pub fn with_buffer<T>(size: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
    let mut buf = BUFFER.with(|b| b.take());
    if buf.len() < size {
        buf = vec![0u8; size];
    }
    let out = f(&mut buf[..size]);
    BUFFER.with(|b| b.set(buf));
    out
}
