//! Exporters: write a stage's tree out of the build, as a directory or a
//! deterministic tar archive.
//!
//! An export is assembled beside its destination under a temporary name and
//! then swapped in with one rename (`RENAME_EXCHANGE` when something is
//! already there), so a reader sees the old export or the new one, never a
//! mix, and a failed build leaves the old one untouched. Directory exports
//! hard-link files from the store's link sources instead of copying bytes.
//! Timestamps are SOURCE_DATE_EPOCH (or 0); owners are those of the tree.

mod tar;

use crate::diag::Diagnostic;
use crate::ir::ExportFormat;
use crate::store::tree::{Kind, Tree};
use crate::store::{Store, StoreError};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// Settings shared by every export of a build.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Timestamp for every entry (SOURCE_DATE_EPOCH, or 0).
    pub epoch: u64,
    /// Whether to set owners (only root can).
    pub set_owner: bool,
}

fn env_err(what: &str, path: &Path, e: &io::Error) -> Diagnostic {
    Diagnostic::io(what, path, e).with_help("check that the destination's directory is writable")
}

pub fn store_err(e: StoreError) -> Diagnostic {
    Diagnostic::env("kiln::store::corrupt", format!("{e}")).with_help(
        "the cache entry was damaged outside kiln; run the build again with `--no-cache`",
    )
}

/// Refuse destinations whose replacement would destroy the user's work:
/// the filesystem root, or a directory containing one of `protected`.
pub fn check_destination(dest: &Path, protected: &[PathBuf]) -> Result<(), Diagnostic> {
    let abs = std::path::absolute(dest).unwrap_or_else(|_| dest.to_path_buf());
    let canon = canonical_prefix(&abs);
    for p in protected {
        let pc = canonical_prefix(&std::path::absolute(p).unwrap_or_else(|_| p.clone()));
        if pc.starts_with(&canon) {
            return Err(Diagnostic::user(
                "kiln::export::dangerous",
                format!(
                    "refusing to export to `{}`: it contains `{}`",
                    dest.display(),
                    p.display()
                ),
            )
            .with_help(
                "an export replaces its destination whole; pick a new directory such as `dist/`",
            ));
        }
    }
    Ok(())
}

/// The canonical form of the longest existing prefix of `p`, plus the rest.
fn canonical_prefix(p: &Path) -> PathBuf {
    let mut existing = p.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = fs::canonicalize(&existing) {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => return p.to_path_buf(),
        }
    }
}

/// Write `tree` to `dest` in `format`, replacing what was there atomically.
pub fn export(
    store: &Store,
    tree: &Tree,
    format: ExportFormat,
    dest: &Path,
    settings: &Settings,
) -> Result<(), Diagnostic> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| env_err("cannot create", &parent, &e))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let tmp = parent.join(format!(".{name}.kiln-tmp-{}", std::process::id()));
    remove_any(&tmp);
    let written = match format {
        ExportFormat::Dir => write_dir(store, tree, &tmp, settings),
        ExportFormat::Tar => tar::write(store, tree, &tmp, settings),
    };
    if let Err(e) = written {
        remove_any(&tmp);
        return Err(e);
    }
    swap_in(&tmp, dest).map_err(|e| {
        remove_any(&tmp);
        env_err("cannot replace", dest, &e)
    })
}

/// Put `tmp` at `dest` in one step; whatever was at `dest` is removed after.
fn swap_in(tmp: &Path, dest: &Path) -> io::Result<()> {
    if fs::symlink_metadata(dest).is_err() {
        return fs::rename(tmp, dest);
    }
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        tmp,
        rustix::fs::CWD,
        dest,
        rustix::fs::RenameFlags::EXCHANGE,
    ) {
        Ok(()) => {
            remove_any(tmp);
            Ok(())
        }
        Err(_) => {
            // Filesystems without RENAME_EXCHANGE: a file can still be replaced
            // atomically; a directory is moved aside first.
            if fs::symlink_metadata(dest)
                .map(|m| m.is_dir())
                .unwrap_or(false)
            {
                let aside = dest.with_extension(format!("kiln-old-{}", std::process::id()));
                fs::rename(dest, &aside)?;
                let r = fs::rename(tmp, dest);
                if r.is_err() {
                    let _ = fs::rename(&aside, dest);
                } else {
                    remove_any(&aside);
                }
                r
            } else {
                fs::rename(tmp, dest)
            }
        }
    }
}

fn remove_any(p: &Path) {
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

/// Directories exported read-only must be made writable to be removed.
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

fn write_dir(
    store: &Store,
    tree: &Tree,
    root: &Path,
    settings: &Settings,
) -> Result<(), Diagnostic> {
    let mtime = UNIX_EPOCH + Duration::from_secs(settings.epoch);
    fs::create_dir(root).map_err(|e| env_err("cannot create", root, &e))?;
    let mut dirs = vec![(root.to_path_buf(), 0o755u32, (0u32, 0u32))];
    for (path, entry) in &tree.entries {
        let at = root.join(path);
        let owner = (entry.uid, entry.gid);
        match &entry.kind {
            Kind::Dir => {
                fs::create_dir(&at).map_err(|e| env_err("cannot create", &at, &e))?;
                dirs.push((at, entry.mode, owner));
            }
            Kind::File { blob, size } => {
                let src = store
                    .linkable(
                        *blob,
                        *size,
                        entry.mode,
                        settings.set_owner.then_some(owner),
                        settings.epoch,
                    )
                    .map_err(store_err)?;
                if let Err(e) = fs::hard_link(&src, &at) {
                    // Another filesystem, or a link limit: copy instead.
                    if e.kind() != io::ErrorKind::CrossesDevices && e.raw_os_error() != Some(31) {
                        return Err(env_err("cannot write", &at, &e));
                    }
                    fs::copy(&src, &at).map_err(|e| env_err("cannot write", &at, &e))?;
                    fs::set_permissions(&at, fs::Permissions::from_mode(entry.mode))
                        .map_err(|e| env_err("cannot write", &at, &e))?;
                    if let Ok(f) = fs::File::options().write(true).open(&at) {
                        let _ = f.set_modified(mtime);
                    }
                    if settings.set_owner {
                        let _ = std::os::unix::fs::chown(&at, Some(owner.0), Some(owner.1));
                    }
                }
            }
            Kind::Symlink { target } => {
                std::os::unix::fs::symlink(target, &at)
                    .map_err(|e| env_err("cannot create symlink", &at, &e))?;
                if settings.set_owner {
                    let _ = std::os::unix::fs::lchown(&at, Some(owner.0), Some(owner.1));
                }
            }
        }
    }
    // Directory modes and times last, deepest first: children are in place.
    for (dir, mode, owner) in dirs.iter().rev() {
        if settings.set_owner {
            let _ = std::os::unix::fs::chown(dir, Some(owner.0), Some(owner.1));
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(*mode))
            .map_err(|e| env_err("cannot set mode of", dir, &e))?;
        if let Ok(f) = fs::File::open(dir) {
            let _ = f.set_modified(mtime);
        }
    }
    Ok(())
}
