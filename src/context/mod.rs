//! Build contexts: directories on the host that `copy` reads from.
//!
//! A [`Snapshot`] lists a context once per build (honouring `.kilnignore`,
//! or `.dockerignore` when there is no `.kilnignore`), as a [`Tree`] whose
//! file digests are filled in on demand. A stat index in the state dir
//! (size, mtime, ctime, inode per file) lets unchanged files skip hashing,
//! as git and ninja do. Files are opened through a capability
//! ([`cap_std::fs::Dir`]) rooted at the context, so no path or symlink can
//! lead a read outside it. This module only reads the context.

mod dockerignore;
pub mod index;
pub mod walk;

use crate::diag::Code;
use crate::diag::Diagnostic;
use crate::model::digest::BlobDigest;
use crate::model::tree::{Kind, Tree};
use crate::store::layout::Layout;
use crate::store::{ContentStore, IngestError};
use index::{FileStat, StatIndex};
use rayon::prelude::*;
use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// Names of ignore files, in order of preference.
pub const IGNORE_FILES: &[&str] = &[".kilnignore", ".dockerignore"];

/// The largest ignore file kiln reads.
const MAX_IGNORE_FILE: u64 = 1 << 20;

/// How to list a context.
#[derive(Clone, Copy, Debug, Default)]
pub struct Listing<'a> {
    /// Paths kept out of the listing (the state dir, export destinations).
    pub exclude: &'a [PathBuf],
    /// An ignore file that replaces the context's own, read with
    /// `.dockerignore` rules (a Dockerfile's `NAME.dockerignore`).
    pub ignore_file: Option<&'a Path>,
    /// Trust the stat index (`--no-cache` hashes every file instead).
    pub trust_index: bool,
}

/// A listed context directory.
pub struct Snapshot {
    pub path: PathBuf,
    dir: cap_std::fs::Dir,
    /// Every entry; file digests are placeholders until [`Snapshot::digests`].
    pub tree: Tree,
    stats: HashMap<String, FileStat>,
    /// Loaded on first use: listing a context (for the build memo) needs no digests.
    index: std::sync::OnceLock<RwLock<StatIndex>>,
    index_file: PathBuf,
    trust_index: bool,
    /// Files hashed in this build that the index does not vouch for.
    hashed: RwLock<HashMap<String, BlobDigest>>,
    /// The bytes of small files hashed in this build, until they are
    /// stored: a cold copy reads each file once, and stores exactly the
    /// bytes its key was made from. At most [`KEPT_BYTES`] in all.
    kept: std::sync::Mutex<Kept>,
}

/// Bytes of hashed files kept for [`Snapshot::ingest`].
#[derive(Default)]
struct Kept {
    files: HashMap<String, Vec<u8>>,
    bytes: usize,
}

/// Files up to this size are read whole when hashed, and kept.
const KEEP_FILE: u64 = 64 * 1024;
/// What one context keeps of them at most.
const KEPT_BYTES: usize = 64 << 20;

impl Snapshot {
    /// List a context directory.
    pub fn open(
        path: &Path,
        listing: Listing<'_>,
        layout: &Layout,
    ) -> Result<Snapshot, Diagnostic> {
        let Listing {
            exclude,
            ignore_file,
            trust_index,
        } = listing;
        let meta = std::fs::metadata(path).map_err(|e| {
            Diagnostic::new(
                Code::CONTEXT_MISSING,
                format!("cannot open the context `{}`: {e}", path.display()),
            )
            .with_help("pass an existing directory as the context")
        })?;
        if !meta.is_dir() {
            return Err(Diagnostic::new(
                Code::CONTEXT_NOT_A_DIRECTORY,
                format!("the context `{}` is not a directory", path.display()),
            )
            .with_help("the context is the directory that `copy` reads from"));
        }
        let dir = crate::ambient::open_dir(path)
            .map_err(|e| Diagnostic::io("cannot open the context", path, &e))?;
        let ignore = match ignore_file {
            Some(f) => Some(docker_ignore_file(f)?),
            None => ignore_matcher(path, &dir)?,
        };
        let root = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let exclude: Vec<PathBuf> = exclude
            .iter()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
            .collect();
        let mut tree = Tree::new();
        let mut stats = HashMap::new();
        let exclude: Vec<String> = exclude
            .iter()
            .filter_map(|x| x.strip_prefix(&root).ok())
            .filter_map(|r| r.to_str().map(String::from))
            .filter(|r| !r.is_empty())
            .collect();
        let skip = |rel: &str, is_dir: bool| {
            exclude.iter().any(|x| x == rel)
                || match &ignore {
                    None => false,
                    Some(Ignore::Kiln(m)) => m.matched(Path::new(rel), is_dir).is_ignore(),
                    // An excluded directory is still walked when a `!`
                    // pattern may re-include something inside it.
                    Some(Ignore::Docker(d)) => d.excluded(rel) && !(is_dir && d.has_exceptions()),
                }
        };
        for found in walk::walk(&root, &skip)? {
            if let Some(stat) = found.stat {
                stats.insert(found.path.clone(), stat);
            }
            tree.entries.insert(found.path, found.entry);
        }
        // Excluded directories walked for re-included entries stay only as
        // the parents of what was re-included.
        if let Some(Ignore::Docker(d)) = &ignore
            && d.has_exceptions()
        {
            let dirs: Vec<String> = tree
                .entries
                .iter()
                .rev()
                .filter(|(p, e)| e.is_dir() && d.excluded(p))
                .map(|(p, _)| p.clone())
                .collect();
            for dir in dirs {
                let below = format!("{dir}/");
                let has_children = tree
                    .entries
                    .range(below.clone()..)
                    .next()
                    .is_some_and(|(p, _)| p.starts_with(&below));
                if !has_children {
                    tree.entries.remove(&dir);
                }
            }
        }
        Ok(Snapshot {
            path: path.to_path_buf(),
            dir,
            tree,
            stats,
            index: std::sync::OnceLock::new(),
            index_file: layout.index(&root),
            trust_index,
            hashed: RwLock::new(HashMap::new()),
            kept: Default::default(),
        })
    }

    fn index(&self) -> &RwLock<StatIndex> {
        self.index.get_or_init(|| {
            RwLock::new(if self.trust_index {
                StatIndex::load(&self.index_file)
            } else {
                StatIndex::empty(&self.index_file)
            })
        })
    }

    /// A digest of the listing: every path with its kind, mode and symlink
    /// target, and every file's size, mtime, ctime and inode. `None` while a
    /// file changed less than two seconds ago (its stat cannot vouch yet).
    pub fn fingerprint(&self) -> Option<[u8; 32]> {
        let now = index::now_ns();
        let mut h = blake3::Hasher::new();
        for (path, e) in &self.tree.entries {
            h.update(path.as_bytes());
            h.update(&[0]);
            h.update(&e.mode.to_le_bytes());
            match &e.kind {
                Kind::File { .. } => {
                    let stat = self.stats.get(path)?;
                    if now - stat.changed_ns() < 2_000_000_000 {
                        return None;
                    }
                    h.update(b"f");
                    stat.hash_into(&mut h);
                }
                Kind::Dir => {
                    h.update(b"d");
                }
                Kind::Symlink { target } => {
                    h.update(b"l");
                    h.update(target.as_bytes());
                    h.update(&[0]);
                }
                Kind::Device {
                    class,
                    major,
                    minor,
                } => {
                    h.update(match class {
                        crate::model::tree::DeviceClass::Block => b"b",
                        crate::model::tree::DeviceClass::Char => b"c",
                    });
                    h.update(&major.to_le_bytes());
                    h.update(&minor.to_le_bytes());
                }
                Kind::Fifo => {
                    h.update(b"p");
                }
            }
        }
        Some(*h.finalize().as_bytes())
    }

    /// Digests of the given files (paths in the snapshot), hashing in
    /// parallel those the stat index does not vouch for.
    pub fn digests(&self, paths: &[&str]) -> Result<Vec<BlobDigest>, Diagnostic> {
        if paths.len() <= 4 {
            // Not worth waking other threads for.
            return paths.iter().map(|p| self.digest(p)).collect();
        }
        paths.par_iter().map(|p| self.digest(p)).collect()
    }

    fn digest(&self, path: &str) -> Result<BlobDigest, Diagnostic> {
        let stat = self.stats.get(path).copied();
        if let Some(stat) = stat
            && let Some(d) = self
                .index()
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .lookup(path, &stat)
        {
            return Ok(d);
        }
        if let Some(d) = self
            .hashed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
        {
            return Ok(*d);
        }
        let mut file = self.open_file(path)?;
        let small = stat.is_some_and(|s| s.size() <= KEEP_FILE);
        let (d, bytes) = if small {
            // Read whole (one read, one more to see the end): hashed
            // here, and stored from memory if the step runs.
            let mut bytes = Vec::with_capacity(stat.map_or(0, |s| s.size() as usize) + 1);
            (&mut file)
                .take(KEEP_FILE + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| self.read_error(path, &e))?;
            if bytes.len() as u64 > KEEP_FILE {
                // It grew since it was listed: hashed as a stream, not kept.
                let d = hash_reader(&mut io::Cursor::new(bytes).chain(&mut file))
                    .map_err(|e| self.read_error(path, &e))?;
                (d, None)
            } else {
                (BlobDigest::from_hash(blake3::hash(&bytes)), Some(bytes))
            }
        } else {
            let d = hash_reader(&mut file).map_err(|e| self.read_error(path, &e))?;
            (d, None)
        };
        let after = file.metadata().map(|m| FileStat::of(&m)).ok();
        if let Some(bytes) = bytes {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            if kept.bytes + bytes.len() <= KEPT_BYTES {
                kept.bytes += bytes.len();
                // Hashed twice at once (two steps copying it): kept once.
                if let Some(old) = kept.files.insert(path.to_string(), bytes) {
                    kept.bytes -= old.len();
                }
            }
        }
        if let (Some(stat), Some(after)) = (stat, after)
            && stat == after
        {
            self.index()
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .record(path, stat, d);
        }
        self.hashed
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_string(), d);
        Ok(d)
    }

    /// Open a file of the context for reading, confined to the context.
    pub fn open_file(&self, path: &str) -> Result<std::fs::File, Diagnostic> {
        self.dir
            .open(path)
            .map(|f| f.into_std())
            .map_err(|e| self.read_error(path, &e))
    }

    fn read_error(&self, path: &str, e: &io::Error) -> Diagnostic {
        if escaped(e) {
            Diagnostic::new(
                Code::CONTEXT_ESCAPE,
                format!("`{path}` leads outside the context"),
            )
        } else {
            Diagnostic::new(
                Code::CONTEXT_READ,
                format!(
                    "cannot read `{path}` in the context `{}`: {e}",
                    self.path.display()
                ),
            )
        }
    }

    /// Copy a context file into the store; it must still have the digest
    /// that went into the step's key.
    pub fn ingest(
        &self,
        store: &dyn ContentStore,
        path: &str,
        digest: BlobDigest,
    ) -> Result<(), Diagnostic> {
        let kept = {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            let bytes = kept.files.remove(path);
            kept.bytes -= bytes.as_ref().map_or(0, Vec::len);
            bytes
        };
        if let Some(bytes) = kept
            && store.put_blob(&bytes)? == digest
        {
            return Ok(());
        }
        if store.has_blob(digest) {
            return Ok(());
        }
        let mut file = self.open_file(path)?;
        match store.ingest(&mut file, digest) {
            Ok(()) => Ok(()),
            Err(IngestError::Changed { actual, .. }) => {
                let now = file.metadata().map(|m| FileStat::of(&m)).ok();
                if now.is_some() && now == self.stats.get(path).copied() {
                    // The file did not change since it was listed: the digest
                    // the key was made from was wrong, so the stat index lied.
                    // Drop it; the build is repeated without trusting it.
                    let _ = std::fs::remove_file(&self.index_file);
                    return Err(Diagnostic::new(
                        Code::STORE_DAMAGED,
                        format!(
                            "the stat index of the context `{}` gave a wrong digest for `{path}` (its content hashes to {actual}); kiln removed the index",
                            self.path.display()
                        ),
                    )
                    .with_help("kiln hashes the context again; if this repeats, check the disk"));
                }
                Err(Diagnostic::new(
                    Code::CONTEXT_CHANGED,
                    format!("`{path}` in the context changed during the build"),
                ))
            }
            Err(IngestError::Store(e)) => Err(e.into()),
        }
    }

    /// Save what was hashed, so the next build can skip it.
    pub fn save_index(&self) {
        if let Some(index) = self.index.get() {
            let mut index = index.write().unwrap_or_else(|e| e.into_inner());
            let _ = index.save(&self.stats);
        }
    }
}

/// blake3 of everything a reader yields; big buffers are hashed on all cores.
pub fn hash_reader(r: &mut dyn Read) -> io::Result<BlobDigest> {
    crate::fsutil::with_buffer(1 << 20, |buf| hash_into(r, buf))
}

fn hash_into(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<BlobDigest> {
    let mut hasher = blake3::Hasher::new();
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match r.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        if filled >= 256 * 1024 {
            hasher.update_rayon(&buf[..filled]);
        } else {
            hasher.update(&buf[..filled]);
        }
        if filled < buf.len() {
            break;
        }
    }
    Ok(BlobDigest::from_hash(hasher.finalize()))
}

/// A context's ignore rules.
enum Ignore {
    /// `.kilnignore`: gitignore syntax.
    Kiln(ignore::gitignore::Gitignore),
    /// `.dockerignore`: Docker's own rules.
    Docker(dockerignore::DockerIgnore),
}

/// Read an ignore file: a regular file of at most [`MAX_IGNORE_FILE`]
/// bytes, opened without blocking (a FIFO is refused, not waited on).
/// `open` opens it (through the context's capability for the context's
/// own ignore files). `None` when it does not exist. Its content is shown
/// in no error but the parser's, which quotes only the offending pattern.
fn read_ignore_file(
    shown: &Path,
    open: impl FnOnce() -> io::Result<std::fs::File>,
) -> Result<Option<String>, Diagnostic> {
    let refuse = |why: String| {
        Diagnostic::new(
            Code::CONTEXT_IGNORE,
            format!("cannot use the ignore file `{}`: {why}", shown.display()),
        )
        .with_help("an ignore file must be a regular file inside the context (a symlink may point only inside it)")
    };
    let file = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if escaped(&e) => {
            return Err(refuse(
                "it is a symlink that leads outside the context".into(),
            ));
        }
        Err(e) => return Err(Diagnostic::io("cannot read the ignore file", shown, &e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| Diagnostic::io("cannot read the ignore file", shown, &e))?;
    if !meta.is_file() {
        return Err(refuse("it is not a regular file".into()));
    }
    if meta.len() > MAX_IGNORE_FILE {
        return Err(refuse(format!(
            "it is larger than {}",
            crate::units::format_size(MAX_IGNORE_FILE)
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_IGNORE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Diagnostic::io("cannot read the ignore file", shown, &e))?;
    if bytes.len() as u64 > MAX_IGNORE_FILE {
        return Err(refuse(format!(
            "it is larger than {}",
            crate::units::format_size(MAX_IGNORE_FILE)
        )));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| refuse("it is not UTF-8 text".into()))
}

/// Open a file for reading without following a final symlink and without
/// blocking on a FIFO.
fn open_nofollow(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::File::options()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
}

/// A `.dockerignore`-syntax file named explicitly (beside a Dockerfile).
fn docker_ignore_file(file: &Path) -> Result<Ignore, Diagnostic> {
    let text = read_ignore_file(file, || open_nofollow(file))?.ok_or_else(|| {
        Diagnostic::io(
            "cannot read the ignore file",
            file,
            &io::Error::from(io::ErrorKind::NotFound),
        )
    })?;
    dockerignore::DockerIgnore::parse(&text)
        .map(Ignore::Docker)
        .map_err(|e| {
            Diagnostic::new(
                Code::CONTEXT_IGNORE,
                format!("{}:{}: {}", file.display(), e.line, e.message),
            )
        })
}

/// The context's ignore rules: `.kilnignore`, else `.dockerignore`,
/// read through the context's capability like every context file.
fn ignore_matcher(root: &Path, dir: &cap_std::fs::Dir) -> Result<Option<Ignore>, Diagnostic> {
    for name in IGNORE_FILES {
        let file = root.join(name);
        let opened = read_ignore_file(&file, || {
            let mut o = cap_std::fs::OpenOptions::new();
            o.read(true);
            cap_std::fs::OpenOptionsExt::custom_flags(
                &mut o,
                rustix::fs::OFlags::NONBLOCK.bits() as i32,
            );
            dir.open_with(name, &o).map(|f| f.into_std())
        })?;
        let Some(text) = opened else {
            continue;
        };
        let bad = |line: usize, message: String| {
            Diagnostic::new(
                Code::CONTEXT_IGNORE,
                format!("{}:{line}: {message}", file.display()),
            )
        };
        if *name == ".dockerignore" {
            return dockerignore::DockerIgnore::parse(&text)
                .map(|d| Some(Ignore::Docker(d)))
                .map_err(|e| bad(e.line, e.message));
        }
        let mut b = ignore::gitignore::GitignoreBuilder::new(root);
        for (n, line) in text.lines().enumerate() {
            if let Err(e) = b.add_line(Some(file.clone()), line.trim_end()) {
                return Err(bad(n + 1, format!("bad pattern `{line}`: {e}")));
            }
        }
        return b.build().map(|g| Some(Ignore::Kiln(g))).map_err(|e| {
            Diagnostic::new(Code::CONTEXT_IGNORE, format!("{}: {e}", file.display()))
        });
    }
    Ok(None)
}

/// Whether cap-std refused a path because it leads outside the
/// directory it was opened in (through `..` or a symlink). cap-std
/// reports it only as `PermissionDenied` with its own wording, so this is
/// the one place that reads the wording.
fn escaped(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied && e.to_string().contains("outside")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_reader_matches_blake3() {
        let data = vec![7u8; 3 << 20];
        let d = hash_reader(&mut &data[..]).unwrap();
        assert_eq!(d, BlobDigest::from_hash(blake3::hash(&data)));
    }

    fn snapshot(ctx: &Path, state: &Path) -> (Snapshot, crate::store::Store) {
        let store = crate::store::Store::open(state, crate::store::Access::Shared).unwrap();
        let listing = Listing {
            exclude: &[],
            ignore_file: None,
            trust_index: true,
        };
        (Snapshot::open(ctx, listing, store.layout()).unwrap(), store)
    }

    #[test]
    fn a_small_file_is_read_once_and_stored_as_it_was_hashed() {
        let ctx = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("a"), b"first").unwrap();
        let (snap, store) = snapshot(ctx.path(), state.path());
        let d = snap.digests(&["a"]).unwrap()[0];
        assert_eq!(d, BlobDigest::from_hash(blake3::hash(b"first")));
        // Changed after it was hashed: the bytes the key was made from are
        // the ones stored, and what was kept is let go.
        std::fs::write(ctx.path().join("a"), b"second").unwrap();
        snap.ingest(&store, "a", d).unwrap();
        assert_eq!(store.read_blob(d).unwrap(), b"first");
        let kept = snap.kept.lock().unwrap();
        assert!(kept.files.is_empty());
        assert_eq!(kept.bytes, 0);
    }

    #[test]
    fn a_large_file_is_streamed_and_checked_when_stored() {
        let ctx = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let big = vec![3u8; (KEEP_FILE + 1) as usize];
        std::fs::write(ctx.path().join("big"), &big).unwrap();
        let (snap, store) = snapshot(ctx.path(), state.path());
        let d = snap.digests(&["big"]).unwrap()[0];
        assert!(snap.kept.lock().unwrap().files.is_empty());
        std::fs::write(ctx.path().join("big"), b"changed").unwrap();
        let e = snap.ingest(&store, "big", d).unwrap_err();
        assert_eq!(e.code, Code::CONTEXT_CHANGED);
        assert!(!store.has_blob(d));
    }
}
