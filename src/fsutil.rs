//! Small file-system helpers shared by the store and the exporters.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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
