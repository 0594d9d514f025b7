//! Small file-system helpers shared by the store, the sandbox and the
//! exporters.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Remove a file, symlink or directory tree, if it exists. Directories
/// exported read-only are made writable first.
pub fn remove_any(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            make_writable(p);
            let _ = fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Give `p` and every directory below it owner rwx, so it can be emptied.
fn make_writable(p: &Path) {
    let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                make_writable(&e.path());
            }
        }
    }
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
}
