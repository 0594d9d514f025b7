//! Exporters: write a stage's tree out of the build, as a directory or a
//! deterministic tar archive.
//!
//! An export happens in two phases, so that a build writes all of its
//! exports or none: [`stage`] writes the new export beside its destination
//! under a temp name (announced to the store first, so that a killed build's
//! leftovers are swept by the next one), and [`Staged::commit`] swaps it in
//! with one rename (`RENAME_EXCHANGE` when something is already there), so
//! a reader sees the old export or the new one, never a mix.
//! [`Staged::discard`] throws a staged export away.
//!
//! Every file of a `dir` export is a private copy, verified against its
//! digest as it is copied: an edit to one exported file never shows in
//! another export, another file, or the store. An export whose record
//! shows it untouched since kiln wrote it (same tree and settings, and
//! every path's `lstat` as recorded) is left alone: a no-op build writes
//! nothing. Timestamps are SOURCE_DATE_EPOCH (or 0); owners are those of
//! the tree when kiln runs as root.
//!
//! Where an export may go is `dest`'s business.

pub mod dest;
pub mod image;
mod tar;

/// Write `tree` as a deterministic tar to `out` (`-o -`: standard output).
pub fn tar_to<W: io::Write>(
    store: Stores<'_>,
    tree: &Tree,
    out: W,
    settings: &Settings,
) -> Result<W, Failed> {
    tar::write_to(store, tree, out, settings, Path::new("-"))
}

use crate::diag::Code;
use crate::diag::Diagnostic;
use crate::fsutil::remove_any;
use crate::ir::ExportFormat;
use crate::model::tree::{Kind, Tree};
use crate::store::records::{self, ExportRecord, Stamp};
use crate::store::{ContentStore, CopyError, Scratch, Store, StoreError};
use rayon::prelude::*;
use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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

impl Settings {
    /// Everything besides the tree that decides an export's bytes.
    fn describe(&self, format: ExportFormat) -> String {
        format!("{format:?} epoch={} owners={}", self.epoch, self.set_owner)
    }
}

fn env_err(what: &str, path: &Path, e: &io::Error) -> Diagnostic {
    let d = Diagnostic::io(what, path, e);
    if d.help.is_some() {
        d
    } else {
        d.with_help("check that the destination's directory is writable")
    }
}

/// An export to write: what, where (resolved), and how.
pub struct Job<'a> {
    pub stage: &'a str,
    pub tree: &'a Tree,
    pub tree_digest: crate::model::digest::TreeDigest,
    pub format: ExportFormat,
    /// The destination as the user wrote it (for messages).
    pub shown: &'a Path,
    /// The destination resolved by [`dest::check`].
    pub dest: &'a Path,
    pub settings: &'a Settings,
    /// For image formats: the rest of the image.
    pub image: Option<&'a image::ImageSpec>,
    /// Trees the build holds in memory (layers are made from them rather
    /// than read from the store).
    pub in_memory:
        &'a (dyn Fn(crate::model::digest::TreeDigest) -> Option<std::sync::Arc<Tree>> + Sync),
}

/// The outcome of [`stage`].
pub enum Prepared {
    /// The destination already holds this export, untouched.
    Intact,
    /// Written beside the destination; not yet in place.
    Staged(Box<Staged>),
}

/// An export written under a temp name beside its destination.
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    shown: PathBuf,
    record: ExportRecord,
    tree: Vec<String>,
}

/// Why staging failed: an ordinary error, or damage in the store (which a
/// rebuild without the cache repairs).
pub enum Failed {
    Error(Diagnostic),
    Damaged(Diagnostic),
}

impl From<Diagnostic> for Failed {
    fn from(d: Diagnostic) -> Failed {
        Failed::Error(d)
    }
}

/// What an exporter works with: contents and trees through the content
/// store's trait (the local store, or one that reaches a remote cache),
/// and this machine's state directory for its own files (temp names,
/// export records, the layer cache, the OCI blob store).
#[derive(Clone, Copy)]
pub struct Stores<'a> {
    pub content: &'a dyn ContentStore,
    pub scratch: Scratch<'a>,
}

impl<'a> Stores<'a> {
    /// Both from the local state directory.
    pub fn local(store: &'a Store) -> Stores<'a> {
        Stores {
            content: store,
            scratch: store.scratch(),
        }
    }
}

fn store_failed(e: StoreError) -> Failed {
    if e.is_damage() {
        Failed::Damaged(e.diagnostic())
    } else {
        Failed::Error(e.diagnostic())
    }
}

/// Check the destination and write the export under a temp name (or find
/// it intact).
pub fn stage(store: Stores<'_>, job: &Job<'_>) -> Result<Prepared, Failed> {
    let dest_key = job.dest.to_string_lossy().into_owned();
    let mut settings = job.settings.describe(job.format);
    if let Some(i) = job.image {
        settings.push(' ');
        settings.push_str(&i.describe());
    }
    let record = records::load_export(store.scratch.layout(), &dest_key);
    let matches_record = record.as_ref().is_some_and(|r| stamps_hold(job.dest, r));
    if let Some(r) = &record
        && matches_record
        && r.tree == job.tree_digest
        && r.settings == settings
    {
        return Ok(Prepared::Intact);
    }
    check_replaceable(store.scratch.layout(), job.shown, job.dest)?;
    let parent = match job.dest.parent() {
        Some(p) => p.to_path_buf(),
        None => return Err(Diagnostic::internal("an export destination without a parent").into()),
    };
    fs::create_dir_all(&parent).map_err(|e| env_err("cannot create", &parent, &e))?;
    let name = job
        .dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let tmp = parent.join(crate::store::owners::export_temp_name(
        &name,
        store.scratch.owner().token(),
    ));
    store.scratch.owner().announce(&tmp).map_err(|e| {
        Diagnostic::io(
            "cannot write to the state directory",
            store.scratch.root(),
            &e,
        )
    })?;
    remove_any(&tmp);
    let written = match job.format {
        // What a `dir` export holds (device nodes are left out).
        ExportFormat::Dir => write_dir(store, job.tree, &tmp, job.settings).map(|_| {
            job.tree
                .entries
                .iter()
                .filter(|(_, e)| !matches!(e.kind, Kind::Device { .. }))
                .map(|(p, _)| p.clone())
                .collect()
        }),
        ExportFormat::Tar => tar::write(store, job.tree, &tmp, job.settings).map(|_| Vec::new()),
        ExportFormat::Oci | ExportFormat::OciArchive | ExportFormat::DockerArchive => {
            write_image(store, job, &tmp)
        }
        ExportFormat::Push | ExportFormat::Tagged => {
            Err(Diagnostic::internal("a push or a tag is not a file export").into())
        }
    };
    let paths = match written {
        Ok(p) => p,
        Err(e) => {
            remove_any(&tmp);
            return Err(e);
        }
    };
    dest::set_marker(&tmp);
    Ok(Prepared::Staged(Box::new(Staged {
        tmp,
        dest: job.dest.to_path_buf(),
        shown: job.shown.to_path_buf(),
        record: ExportRecord {
            dest: dest_key,
            stage: job.stage.to_string(),
            tree: job.tree_digest,
            at_unix: std::time::SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            settings,
            stamps: Vec::new(),
        },
        tree: paths,
    })))
}

/// An image export: the image made (layers from the cache when there),
/// then written as a layout directory (returning its files) or an archive.
fn write_image(store: Stores<'_>, job: &Job<'_>, tmp: &Path) -> Result<Vec<String>, Failed> {
    let Some(spec) = job.image else {
        return Err(Diagnostic::internal("an image export without its image settings").into());
    };
    let built = image::build(
        store,
        job.tree,
        job.tree_digest,
        spec,
        job.settings,
        job.in_memory,
    )?;
    let docker = job.format == ExportFormat::DockerArchive;
    let files = image::layout_files(&built, spec, docker);
    let blobs = crate::store::oci::OciBlobs::new(store.scratch.layout());
    if job.format == ExportFormat::Oci {
        image::write_layout(&blobs, &files, tmp, job.settings)
    } else {
        image::write_archive(&blobs, &files, tmp, job.settings).map(|_| Vec::new())
    }
}

impl Staged {
    /// Put the export in place and record what was written.
    pub fn commit(mut self, store: Stores<'_>) -> Result<(), Diagnostic> {
        swap_in(&self.tmp, &self.dest).map_err(|e| {
            remove_any(&self.tmp);
            env_err("cannot replace", &self.shown, &e)
        })?;
        // The record is written after the swap: a build killed in between
        // leaves an unrecorded export, which only costs a rewrite next time.
        let mut stamps = Vec::with_capacity(self.tree.len() + 1);
        let stamper = Stamper::new(&self.dest);
        if let Some(s) = stamper.stamp("") {
            stamps.push((String::new(), s));
            for p in &self.tree {
                match stamper.stamp(p) {
                    Some(s) => stamps.push((p.clone(), s)),
                    None => {
                        stamps.clear();
                        break;
                    }
                }
            }
        }
        self.record.stamps = stamps;
        if self.record.stamps.is_empty() {
            records::forget_export(store.scratch.layout(), &self.record.dest);
        } else {
            let _ = records::save_export(store.scratch.layout(), &self.record);
        }
        Ok(())
    }

    /// Throw the staged export away.
    pub fn discard(self) {
        remove_any(&self.tmp);
    }
}

/// Remove kiln's previous export at `dest` (resolved; shown as `shown`),
/// and its record: refused, as a replacement would be, when what is
/// there is not kiln's.
pub fn remove_previous(store: Stores<'_>, shown: &Path, dest: &Path) -> Result<(), Diagnostic> {
    check_replaceable(store.scratch.layout(), shown, dest)?;
    remove_any(dest);
    records::forget_export(store.scratch.layout(), &dest.to_string_lossy());
    if fs::symlink_metadata(dest).is_ok() {
        return Err(Diagnostic::new(
            Code::EXPORT_REMOVE,
            format!("cannot remove the previous export at `{}`", shown.display()),
        ));
    }
    Ok(())
}

/// Whether kiln may replace what is at `dest` (resolved): see
/// [`dest::check_replaceable`]; the record in the state dir counts when
/// it describes the very file or directory there.
pub fn check_replaceable(
    layout: &crate::store::layout::Layout,
    shown: &Path,
    dest: &Path,
) -> Result<(), Diagnostic> {
    let key = dest.to_string_lossy();
    let record = records::load_export(layout, &key);
    let recorded = record.as_ref().is_some_and(|r| root_matches(dest, r))
        || records::legacy_export_recorded(layout, &key);
    dest::check_replaceable(shown, dest, recorded)
}

/// Whether the destination itself is the one the record describes.
fn root_matches(dest: &Path, record: &ExportRecord) -> bool {
    let Some((_, want)) = record.stamps.first() else {
        return false;
    };
    Stamper::new(dest)
        .stamp("")
        .is_some_and(|now| now.dev == want.dev && now.ino == want.ino)
}

/// Whether every path recorded still has the stat recorded: nobody
/// changed, added (a directory's ctime moves) or removed anything since.
fn stamps_hold(dest: &Path, record: &ExportRecord) -> bool {
    let stamper = Stamper::new(dest);
    !record.stamps.is_empty()
        && record
            .stamps
            .iter()
            .all(|(p, want)| stamper.stamp(p).is_some_and(|now| now == *want))
}

/// Whether the export at `dest` is the one recorded for this tree and
/// these settings, untouched since: then it is not written again. (File
/// exports only: an image's settings name its base, found with the tree.)
pub fn intact(
    store: Stores<'_>,
    dest: &Path,
    tree: crate::model::digest::TreeDigest,
    settings: &Settings,
    format: ExportFormat,
) -> bool {
    let record = records::load_export(store.scratch.layout(), &dest.to_string_lossy());
    record.is_some_and(|r| {
        r.tree == tree && r.settings == settings.describe(format) && stamps_hold(dest, &r)
    })
}

/// Stats the entries of an export where it lies: relative to the
/// destination directory's descriptor (no path is walked again for each
/// of a thousand files), or the destination itself when it is a file.
/// Symlinks are never followed at the destination.
struct Stamper<'a> {
    dest: &'a Path,
    dir: Option<std::os::fd::OwnedFd>,
}

impl<'a> Stamper<'a> {
    fn new(dest: &'a Path) -> Stamper<'a> {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Stamper {
            dest,
            dir: rustix::fs::open(dest, flags, Mode::empty()).ok(),
        }
    }

    /// The stamp of `path` below the destination (`""`: the destination).
    fn stamp(&self, path: &str) -> Option<Stamp> {
        use rustix::fs::AtFlags;
        let st = match (&self.dir, path.is_empty()) {
            (Some(fd), true) => rustix::fs::fstat(fd),
            (Some(fd), false) => rustix::fs::statat(fd, path, AtFlags::SYMLINK_NOFOLLOW),
            (None, true) => rustix::fs::lstat(self.dest),
            (None, false) => return None,
        };
        st.ok().map(|st| Stamp::of_stat(&st))
    }
}

/// Put `tmp` at `dest` in one step; whatever was at `dest` is removed after.
fn swap_in(tmp: &Path, dest: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    // Another build may put its export in place at any moment: each try is
    // one atomic step (put in place if nothing is there, else exchange).
    for _ in 0..8 {
        match renameat_with(CWD, tmp, CWD, dest, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::EXIST) => {}
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => return fallback(tmp, dest),
            Err(e) => return Err(e.into()),
        }
        match renameat_with(CWD, tmp, CWD, dest, RenameFlags::EXCHANGE) {
            Ok(()) => {
                // The old export is now at the temp name (announced):
                // removed on a thread of its own (unlinking a large tar
                // takes a while), or by the next build if this one is
                // killed.
                remove_later(tmp);
                return Ok(());
            }
            // Gone again in between: try again.
            Err(rustix::io::Errno::NOENT) => continue,
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => return fallback(tmp, dest),
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other(
        "the destination kept changing while it was replaced",
    ))
}

/// The threads removing old exports.
static REMOVALS: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// Remove `path` on a thread of its own.
fn remove_later(path: &Path) {
    let owned = path.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("kiln-remove".into())
        .spawn(move || remove_any(&owned));
    match spawned {
        Ok(h) => REMOVALS.lock().unwrap_or_else(|e| e.into_inner()).push(h),
        // No thread: removed now.
        Err(_) => remove_any(path),
    }
}

/// Wait until the old exports given to [`remove_later`] are gone.
pub fn finish_removals() {
    let running = std::mem::take(&mut *REMOVALS.lock().unwrap_or_else(|e| e.into_inner()));
    for h in running {
        let _ = h.join();
    }
}

/// Filesystems without `RENAME_EXCHANGE`: a file can still be replaced
/// atomically; a directory is removed first.
fn fallback(tmp: &Path, dest: &Path) -> io::Result<()> {
    if fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir()) {
        remove_any(dest);
    }
    fs::rename(tmp, dest)
}

fn write_dir(
    store: Stores<'_>,
    tree: &Tree,
    root: &Path,
    settings: &Settings,
) -> Result<(), Failed> {
    let mtime = UNIX_EPOCH + Duration::from_secs(settings.epoch);
    fs::create_dir(root).map_err(|e| env_err("cannot create", root, &e))?;
    let mut dirs = vec![(root.to_path_buf(), 0o755u32, (0u32, 0u32))];
    let mut files = Vec::new();
    let mut links = Vec::new();
    let mut fifos = Vec::new();
    for (path, entry) in &tree.entries {
        let at = root.join(path);
        let owner = (entry.uid, entry.gid);
        match &entry.kind {
            // A device node is never made outside the store: a `dir`
            // export leaves it out (tar and image exports keep it).
            Kind::Device { .. } => {}
            Kind::Fifo => fifos.push((at, entry.mode, owner)),
            Kind::Dir => {
                fs::create_dir(&at).map_err(|e| env_err("cannot create", &at, &e))?;
                dirs.push((at, entry.mode, owner));
            }
            Kind::File { blob, .. } => files.push((at, *blob, entry.mode, owner)),
            Kind::Symlink { target } => links.push((at, target, owner)),
        }
    }
    // Files are independent of each other: copy them on all cores.
    files
        .par_iter()
        .try_for_each(|(at, blob, mode, owner)| -> Result<(), Failed> {
            let mut f = fs::File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(at)
                .map_err(|e| env_err("cannot write", at, &e))?;
            store
                .content
                .copy_blob(*blob, &mut f)
                .map_err(|e| match e {
                    CopyError::Write(e) => Failed::Error(env_err("cannot write", at, &e)),
                    CopyError::Store(e) => store_failed(e),
                })?;
            if settings.set_owner {
                std::os::unix::fs::fchown(&f, Some(owner.0), Some(owner.1))
                    .map_err(|e| env_err("cannot set the owner of", at, &e))?;
            }
            // After chown, which clears setuid and setgid bits.
            f.set_permissions(fs::Permissions::from_mode(*mode))
                .map_err(|e| env_err("cannot write", at, &e))?;
            f.set_modified(mtime)
                .map_err(|e| env_err("cannot write", at, &e))?;
            Ok(())
        })?;
    for (at, mode, owner) in fifos {
        crate::fsutil::make_fifo(&at, 0o600).map_err(|e| env_err("cannot create", &at, &e))?;
        if settings.set_owner {
            let _ = std::os::unix::fs::lchown(&at, Some(owner.0), Some(owner.1));
        }
        fs::set_permissions(&at, fs::Permissions::from_mode(mode))
            .map_err(|e| env_err("cannot write", &at, &e))?;
        let _ = crate::fsutil::set_epoch_times(&at, settings.epoch);
    }
    for (at, target, owner) in links {
        std::os::unix::fs::symlink(target, &at)
            .map_err(|e| env_err("cannot create symlink", &at, &e))?;
        if settings.set_owner {
            let _ = std::os::unix::fs::lchown(&at, Some(owner.0), Some(owner.1));
        }
        let _ = crate::fsutil::set_epoch_times(&at, settings.epoch);
    }
    // Directory modes and times last, deepest first: children are in place.
    for (dir, mode, owner) in dirs.iter().rev() {
        if settings.set_owner {
            let _ = std::os::unix::fs::chown(dir, Some(owner.0), Some(owner.1));
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(*mode))
            .map_err(|e| env_err("cannot set mode of", dir, &e))?;
        let _ = crate::fsutil::set_epoch_times(dir, settings.epoch);
    }
    Ok(())
}
