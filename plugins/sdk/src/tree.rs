//! The stage tree: walk it in a stable order, read and write files.
//!
//! Paths are ordinary paths: absolute ones start at the stage root,
//! relative ones at the stage's working directory (after [`crate::run`]).

use crate::{Error, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// What a walked entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// One entry below a walked directory.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The path relative to the walked directory, `/`-separated.
    pub rel: String,
    /// The path to open.
    pub path: PathBuf,
    pub kind: Kind,
    /// Bytes, for files.
    pub size: u64,
}

/// Every entry below `dir`, sorted by relative path (bytewise), without
/// following symlinks. The same tree always walks in the same order.
pub fn walk(dir: impl AsRef<Path>) -> Result<Vec<Entry>> {
    let dir = dir.as_ref();
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        let rd = fs::read_dir(&path).map_err(|e| Error::new(format!("{}: {e}", path.display())))?;
        for item in rd {
            let item = item.map_err(|e| Error::new(format!("{}: {e}", path.display())))?;
            let name = item.file_name().to_string_lossy().into_owned();
            let child_rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let child = item.path();
            let meta = fs::symlink_metadata(&child)
                .map_err(|e| Error::new(format!("{}: {e}", child.display())))?;
            let ft = meta.file_type();
            let kind = if ft.is_symlink() {
                Kind::Symlink
            } else if ft.is_dir() {
                stack.push((child.clone(), child_rel.clone()));
                Kind::Dir
            } else {
                Kind::File
            };
            out.push(Entry {
                rel: child_rel,
                path: child,
                kind,
                size: if kind == Kind::File { meta.len() } else { 0 },
            });
        }
    }
    out.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    Ok(out)
}

/// Read a whole file, with its path in the error.
pub fn read(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let p = path.as_ref();
    fs::read(p).map_err(|e| Error::new(format!("cannot read {}: {e}", p.display())))
}

/// Read a whole UTF-8 file, with its path in the error.
pub fn read_to_string(path: impl AsRef<Path>) -> Result<String> {
    let p = path.as_ref();
    fs::read_to_string(p).map_err(|e| Error::new(format!("cannot read {}: {e}", p.display())))
}

/// Write a file, creating its parent directories.
pub fn write(path: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> Result<()> {
    let p = path.as_ref();
    if let Some(parent) = p.parent()
        && !parent.as_os_str().is_empty()
    {
        fs::create_dir_all(parent)
            .map_err(|e| Error::new(format!("cannot create {}: {e}", parent.display())))?;
    }
    fs::write(p, bytes).map_err(|e| Error::new(format!("cannot write {}: {e}", p.display())))
}
