//! Listing a context directory: every entry below the root, on all cores
//! once the tree fans out (a small context is listed on the calling thread:
//! starting the thread pool would cost more than the listing), without
//! following a single symlink. Each directory is opened relative
//! to its parent's descriptor (`O_NOFOLLOW`) and each entry is stat'ed
//! relative to its directory, so no path is resolved twice and nothing
//! outside the root is ever looked at.

use super::index::FileStat;
use crate::diag::Code;
use crate::diag::Diagnostic;
use crate::model::digest::BlobDigest;
use crate::model::tree::{Entry, Kind};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Mutex;

/// One entry found: its path below the root, its tree entry (file digests
/// are placeholders) and, for files, its stat.
pub struct Listed {
    pub path: String,
    pub entry: Entry,
    pub stat: Option<FileStat>,
}

/// Decides which entries to leave out (with everything below them):
/// called with the path below the root and whether it is a directory.
pub type Skip<'a> = dyn Fn(&str, bool) -> bool + Sync + 'a;

struct Walk<'a> {
    context: &'a Path,
    skip: &'a Skip<'a>,
    found: Mutex<Vec<Listed>>,
    errors: Mutex<Vec<Diagnostic>>,
}

pub fn walk(root: &Path, skip: &Skip<'_>) -> Result<Vec<Listed>, Diagnostic> {
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Diagnostic::io("cannot open the context", root, &e.into()))?;
    let w = Walk {
        context: root,
        skip,
        found: Mutex::new(Vec::new()),
        errors: Mutex::new(Vec::new()),
    };
    // Depth first on this thread while at most a few directories wait;
    // past that, the waiting ones go to the thread pool, which lists
    // everything below them in parallel.
    let mut waiting = vec![(fd, String::new())];
    while let Some((fd, rel)) = waiting.pop() {
        let mut found = |sub: OwnedFd, sub_rel: String| waiting.push((sub, sub_rel));
        if let Err(e) = list_dir_inner(&fd, &rel, &w, &mut found) {
            w.errors.lock().unwrap_or_else(|e| e.into_inner()).push(e);
        }
        if waiting.len() > SERIAL_FANOUT {
            break;
        }
    }
    if !waiting.is_empty() {
        rayon::scope(|s| {
            for (fd, rel) in waiting {
                let w = &w;
                s.spawn(move |s| list_dir(s, fd, rel, w));
            }
        });
    }
    if let Some(e) = w
        .errors
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .next()
    {
        return Err(e);
    }
    Ok(w.found.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// Directories waiting to be listed beyond which the walk goes parallel.
const SERIAL_FANOUT: usize = 4;

fn list_dir<'s>(s: &rayon::Scope<'s>, fd: OwnedFd, rel: String, w: &'s Walk<'s>) {
    let mut found = |sub: OwnedFd, sub_rel: String| s.spawn(move |s| list_dir(s, sub, sub_rel, w));
    if let Err(e) = list_dir_inner(&fd, &rel, w, &mut found) {
        w.errors.lock().unwrap_or_else(|e| e.into_inner()).push(e);
    }
}

/// List one directory; each subdirectory found, opened, goes to `subdir`.
fn list_dir_inner(
    fd: &OwnedFd,
    rel: &str,
    w: &Walk<'_>,
    subdir: &mut dyn FnMut(OwnedFd, String),
) -> Result<(), Diagnostic> {
    let at = |name: &str| w.context.join(rel).join(name);
    let io = |what: &str, p: &Path, e: rustix::io::Errno| {
        Diagnostic::new(
            Code::CONTEXT_WALK,
            format!("{what} `{}`: {}", p.display(), std::io::Error::from(e)),
        )
    };
    let mut dir =
        rustix::fs::Dir::read_from(fd).map_err(|e| io("cannot list", &w.context.join(rel), e))?;
    let mut local = Vec::new();
    while let Some(item) = dir.read() {
        let item = item.map_err(|e| io("cannot list", &w.context.join(rel), e))?;
        let raw = item.file_name();
        let bytes = raw.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let st = rustix::fs::statat(fd, raw, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io("cannot stat", &at(&String::from_utf8_lossy(bytes)), e))?;
        let ft = FileType::from_raw_mode(st.st_mode);
        let Ok(name) = std::str::from_utf8(bytes) else {
            // Tree paths are UTF-8. A name that is not may still be ignored:
            // the ignore rules see it with U+FFFD for the bad bytes.
            let lossy = String::from_utf8_lossy(bytes);
            let lossy_path = if rel.is_empty() {
                lossy.to_string()
            } else {
                format!("{rel}/{lossy}")
            };
            if (w.skip)(&lossy_path, ft == FileType::Directory) {
                continue;
            }
            return Err(Diagnostic::new(
                Code::CONTEXT_NAME,
                format!("`{}` has a name that is not UTF-8", at(&lossy).display()),
            )
            .with_help("rename the file, or exclude it in `.kilnignore`"));
        };
        let path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        if (w.skip)(&path, ft == FileType::Directory) {
            continue;
        }
        let mode = st.st_mode & 0o7777;
        let mut stat = None;
        let kind = match ft {
            FileType::Directory => {
                let sub = rustix::fs::openat(
                    fd,
                    raw,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io("cannot open", &at(name), e))?;
                subdir(sub, path.clone());
                Kind::Dir
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(fd, raw, Vec::new())
                    .map_err(|e| io("cannot read the symlink", &at(name), e))?;
                // Kept exactly or refused: two different targets must never
                // become one.
                let Ok(target) = target.into_string() else {
                    return Err(Diagnostic::new(
                        Code::CONTEXT_LINK_TARGET,
                        format!(
                            "the symlink `{}` points to a path that is not UTF-8",
                            at(name).display()
                        ),
                    )
                    .with_help("change the link's target, or exclude it in `.kilnignore`"));
                };
                Kind::Symlink { target }
            }
            FileType::RegularFile => {
                stat = Some(FileStat::from_stat(&st));
                Kind::File {
                    blob: BlobDigest([0; 32]),
                    size: st.st_size as u64,
                }
            }
            // Sockets, fifos and devices have no content to copy.
            _ => continue,
        };
        local.push(Listed {
            path,
            entry: Entry {
                kind,
                mode,
                uid: 0,
                gid: 0,
            },
            stat,
        });
    }
    w.found
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .append(&mut local);
    Ok(())
}
