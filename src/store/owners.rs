//! Which kiln processes are alive, so what a killed one left behind can
//! be removed by the next one.
//!
//! Every process that opens the store registers an owner file
//! `owners/<token>` and holds an exclusive `flock` on it until it exits;
//! the kernel drops the lock when the process dies, however it dies. Its
//! temp files in `tmp/` start with its token, and before it creates a temp
//! export beside a destination (outside the state dir) it appends that
//! path to `owners/<token>.exports`. An owner file nobody holds belongs to
//! a dead process: [`sweep`] removes its temp files and temp exports.

use super::layout::Layout;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// This process's registration; dropping it unregisters.
pub struct Owner {
    token: String,
    file: Option<File>,
    layout: Layout,
}

impl Owner {
    /// Create and lock an owner file. It is locked under a temp name and
    /// renamed into place, so no other process can see it unlocked.
    pub fn register(layout: &Layout) -> io::Result<Owner> {
        let token = new_token();
        let dir = layout.owners();
        fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{token}"));
        let file = File::create(&tmp)?;
        file.lock()?;
        fs::rename(&tmp, layout.owner(&token))?;
        Ok(Owner {
            token,
            file: Some(file),
            layout: layout.clone(),
        })
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Record a temp path outside the state dir before creating it, so it
    /// is removed if this process dies before it is renamed into place.
    /// The name must be one [`is_export_temp`] recognises.
    pub fn announce(&self, path: &Path) -> io::Result<()> {
        let mut f = File::options()
            .create(true)
            .append(true)
            .open(self.layout.owner_exports(&self.token))?;
        let mut line = path.as_os_str().as_encoded_bytes().to_vec();
        line.push(b'\n');
        f.write_all(&line)
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        // A clean exit has nothing left to sweep: its temp exports were
        // renamed or removed.
        let _ = fs::remove_file(self.layout.owner_exports(&self.token));
        let _ = fs::remove_file(self.layout.owner(&self.token));
        drop(self.file.take());
    }
}

fn new_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = blake3::Hasher::new();
    h.update(&nanos.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&(&nanos as *const u128 as usize).to_le_bytes());
    format!("{}-{}", std::process::id(), &h.finalize().to_hex()[..8])
}

/// The name of a temp export of `dest`'s file name made by `token`.
pub fn export_temp_name(name: &str, token: &str) -> String {
    format!(".{name}.kiln-tmp-{token}")
}

/// Whether `path` is named like a temp export made by `token`.
pub fn is_export_temp(path: &Path, token: &str) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') && n.ends_with(&format!(".kiln-tmp-{token}")))
}

/// Remove what dead processes left behind (their owner files are not
/// locked). Cheap when nothing died: one directory listing.
pub fn sweep(layout: &Layout, own: &str) {
    let Ok(rd) = fs::read_dir(layout.owners()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.ends_with(".exports") || name == own {
            continue;
        }
        let Ok(f) = File::options().write(true).open(e.path()) else {
            continue;
        };
        if f.try_lock().is_ok() {
            clean(layout, &name);
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Like [`sweep`], also removing announcements whose owner file is gone
/// (only under the store's exclusive lock, when no build runs).
pub fn sweep_all(layout: &Layout, own: &str) {
    sweep(layout, own);
    let Ok(rd) = fs::read_dir(layout.owners()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(token) = name.strip_suffix(".exports")
            && token != own
            && !layout.owner(token).exists()
        {
            clean(layout, token);
        } else if name.starts_with('.') {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Remove a dead owner's temp files and announced temp exports.
fn clean(layout: &Layout, token: &str) {
    let prefix = format!("{token}-");
    if let Ok(rd) = fs::read_dir(layout.tmp()) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                crate::fsutil::remove_any(&e.path());
            }
        }
    }
    let list = layout.owner_exports(token);
    if let Ok(bytes) = fs::read(&list) {
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            // Only paths named like this owner's temp exports are ever
            // removed, whatever the list says.
            let path = PathBuf::from(std::ffi::OsStr::from_bytes(line));
            if is_export_temp(&path, token) {
                crate::fsutil::remove_any(&path);
            }
        }
    }
    let _ = fs::remove_file(list);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_owners_leftovers_are_swept_a_live_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(&dir.path().join("state"));
        for d in super::super::layout::DIRS {
            fs::create_dir_all(layout.root().join(d)).unwrap();
        }
        let alive = Owner::register(&layout).unwrap();
        let dead = Owner::register(&layout).unwrap();
        let me = Owner::register(&layout).unwrap();
        let mut leftovers = Vec::new();
        for o in [&alive, &dead] {
            let tmp = layout.tmp().join(format!("{}-0-blob", o.token()));
            fs::write(&tmp, b"x").unwrap();
            let export = dir.path().join(export_temp_name("dist", o.token()));
            fs::create_dir(&export).unwrap();
            o.announce(&export).unwrap();
            leftovers.push((tmp, export));
        }
        // An announcement that does not look like a temp export is never removed.
        let precious = dir.path().join("precious");
        fs::write(&precious, b"keep").unwrap();
        dead.announce(&precious).unwrap();
        // "Kill" the dead owner: its lock goes, its files stay.
        let mut dead = dead;
        drop(dead.file.take());
        std::mem::forget(dead);

        sweep(&layout, me.token());
        assert!(leftovers[0].0.exists() && leftovers[0].1.exists());
        assert!(!leftovers[1].0.exists() && !leftovers[1].1.exists());
        assert!(precious.exists());
        drop(alive);
        drop(me);
        assert_eq!(fs::read_dir(layout.owners()).unwrap().count(), 0);
    }
}
