//! Small blobs kept many to a file.
//!
//! Creating a file costs more than writing a few kilobytes into one (on
//! ext4, about 90 µs a file against a few µs to append), so a context of
//! 100,000 small files stored a file each spends most of its time making
//! files. A blob of at most [`MAX`] bytes is appended instead to this
//! process's open pack (in `tmp/`, named by the owner's token), where this
//! process finds it at once. The pack is closed (its table written) and
//! renamed into `packs/` before anything that names its blobs is stored (a
//! tree, an action, a record: see `Store::flush`), so a build killed before
//! that leaves only a temp file the next build sweeps away, never a stored
//! object naming a blob that was lost. A pack in `packs/` never changes:
//! `kiln gc` copies the blobs still in use out of packs that are mostly
//! garbage or small into new ones, and removes the old.
//!
//! Format (integers little-endian):
//!
//! ```text
//! "KILNPACK" version (u32, 1) 0 (u32)                       16 bytes
//! the blobs' bytes, one after another
//! table: per blob its digest (32), offset (u64), length (u32)  44 bytes each
//! footer: table offset (u64), count (u64), blake3 of the table (32), "KILNPEND"
//! ```
//!
//! A blob's bytes are checked against its digest whenever they are read
//! (by the store); a pack whose table does not check is not trusted at
//! all.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// The largest blob kept in a pack; larger ones are files of their own.
pub const MAX: usize = 64 * 1024;
/// An open pack is closed once it holds this much, or this many blobs
/// (which bounds what reading a table can allocate: 44 MB).
const ROTATE: u64 = 256 << 20;
const MAX_ENTRIES: usize = 1 << 20;
const MAGIC: &[u8; 8] = b"KILNPACK";
const END: &[u8; 8] = b"KILNPEND";
const VERSION: u32 = 1;
const HEADER: u64 = 16;
const ENTRY: usize = 44;
const FOOTER: u64 = 56;

/// One pack file. Opened for reading on first use, so a process that
/// read the tables of a thousand packs holds no descriptor for those it
/// reads no blob from.
pub struct Pack {
    file: std::sync::OnceLock<File>,
    /// Its file name in `packs/` (once closed, for an open one).
    name: String,
    dir: PathBuf,
}

impl Pack {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn file(&self) -> io::Result<&File> {
        if let Some(f) = self.file.get() {
            return Ok(f);
        }
        let f = open_pack(&self.dir.join(&self.name))?;
        Ok(self.file.get_or_init(|| f))
    }
}

/// Open a pack for reading: a regular file, never a FIFO or device put
/// in its place (opened without blocking, and refused).
pub fn open_pack(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok(f)
}

/// Where a blob's bytes are.
#[derive(Clone)]
pub struct Loc {
    pub pack: Arc<Pack>,
    pub offset: u64,
    pub len: u32,
}

impl Loc {
    /// The bytes, unchecked.
    pub fn read(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; self.len as usize];
        self.pack.file()?.read_exact_at(&mut buf, self.offset)?;
        Ok(buf)
    }
}

/// One line of a pack's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub digest: [u8; 32],
    pub offset: u64,
    pub len: u32,
}

/// The pack this process is writing.
struct Open {
    pack: Arc<Pack>,
    /// The same file, for writing.
    file: File,
    tmp: PathBuf,
    entries: Vec<Entry>,
    end: u64,
}

#[derive(Default)]
struct Index {
    loaded: bool,
    /// Pack files read (by name).
    known: HashSet<String>,
    map: HashMap<[u8; 32], Loc, std::hash::BuildHasherDefault<DigestHasher>>,
}

/// Digests are uniformly random already: a few of their bytes are a hash
/// (SipHash over every lookup of a 100,000-file context shows in profiles).
#[derive(Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
    }
}

/// The packs of one state directory, as one process sees them.
pub struct Packs {
    dir: PathBuf,
    tmp_dir: PathBuf,
    token: String,
    counter: std::sync::atomic::AtomicU64,
    index: RwLock<Index>,
    open: Mutex<Option<Open>>,
    /// A pack failed to close: blobs callers were told are stored are
    /// not, so every later close fails too (the build fails rather than
    /// store something naming them).
    lost: std::sync::atomic::AtomicBool,
}

/// A pack that could not be read: its path and why.
pub struct Unreadable {
    pub path: PathBuf,
    pub why: String,
}

impl Packs {
    pub fn new(dir: PathBuf, tmp_dir: PathBuf, token: &str) -> Packs {
        Packs {
            dir,
            tmp_dir,
            token: token.to_string(),
            counter: Default::default(),
            index: RwLock::default(),
            open: Mutex::new(None),
            lost: Default::default(),
        }
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Where a blob is, in the packs this process has read (all of them,
    /// read on first use) or is writing. Packs closed by other processes
    /// since are not looked at: see [`Packs::find_fresh`].
    pub fn find(&self, d: &[u8; 32]) -> (Option<Loc>, Vec<Unreadable>) {
        let mut bad = Vec::new();
        {
            let index = self.index();
            if index.loaded {
                return (index.map.get(d).cloned(), bad);
            }
        }
        let mut index = self.index_mut();
        if !index.loaded {
            bad = self.load_new(&mut index);
            index.loaded = true;
        }
        (index.map.get(d).cloned(), bad)
    }

    /// [`Packs::find`], having first read the packs other processes closed
    /// since this one last looked.
    pub fn find_fresh(&self, d: &[u8; 32]) -> (Option<Loc>, Vec<Unreadable>) {
        let mut index = self.index_mut();
        let bad = self.load_new(&mut index);
        index.loaded = true;
        (index.map.get(d).cloned(), bad)
    }

    /// Read the tables of packs not read yet. A blob in two packs is found
    /// in the first read.
    fn load_new(&self, index: &mut Index) -> Vec<Unreadable> {
        let mut bad = Vec::new();
        for (name, path) in list(&self.dir) {
            if index.known.contains(&name) {
                continue;
            }
            // A pack that cannot be opened or read now (descriptors run
            // out, a disk error) is skipped, not judged: it is looked at
            // again next time.
            let Ok(file) = open_pack(&path) else {
                continue;
            };
            match read_table(&file) {
                Ok(entries) => {
                    let pack = Arc::new(Pack {
                        file: std::sync::OnceLock::new(),
                        name: name.clone(),
                        dir: self.dir.clone(),
                    });
                    for e in entries {
                        index.map.entry(e.digest).or_insert_with(|| Loc {
                            pack: pack.clone(),
                            offset: e.offset,
                            len: e.len,
                        });
                    }
                    index.known.insert(name);
                }
                Err(TableError::Damaged(why)) => bad.push(Unreadable { path, why }),
                // Another version's pack, or a read that failed: left alone.
                Err(TableError::Other) => {}
            }
        }
        bad
    }

    /// Append a blob to the open pack (opening one if needed), unless this
    /// process already has it. The caller has checked `bytes` hash to `d`.
    pub fn append(&self, d: [u8; 32], bytes: &[u8]) -> io::Result<()> {
        debug_assert!(bytes.len() <= MAX);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if self.index().map.contains_key(&d) {
            return Ok(());
        }
        let o = match &mut *open {
            Some(o) => o,
            None => open.insert(self.start()?),
        };
        o.file.write_all_at(bytes, o.end)?;
        let entry = Entry {
            digest: d,
            offset: o.end,
            len: bytes.len() as u32,
        };
        o.end += bytes.len() as u64;
        o.entries.push(entry);
        let loc = Loc {
            pack: o.pack.clone(),
            offset: entry.offset,
            len: entry.len,
        };
        self.index_mut().map.insert(d, loc);
        if o.end >= ROTATE || o.entries.len() >= MAX_ENTRIES {
            self.close_locked(&mut open)?;
        }
        Ok(())
    }

    /// Append a blob whatever this process already has (gc's copying).
    pub fn append_again(&self, d: [u8; 32], bytes: &[u8]) -> io::Result<()> {
        self.index_mut().map.remove(&d);
        self.append(d, bytes)
    }

    fn start(&self) -> io::Result<Open> {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{}-{n}.pack", self.token);
        let tmp = self.tmp_dir.join(format!("{}-pack-{n}", self.token));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let mut header = Vec::with_capacity(HEADER as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        file.write_all_at(&header, 0)?;
        // Read through its own descriptor (the name changes on close).
        let reader = file.try_clone()?;
        Ok(Open {
            pack: Arc::new(Pack {
                file: std::sync::OnceLock::from(reader),
                name,
                dir: self.dir.clone(),
            }),
            file,
            tmp,
            entries: Vec::new(),
            end: HEADER,
        })
    }

    /// Close the open pack, if any: write its table and move it into
    /// `packs/`, where every process finds its blobs. On failure its blobs
    /// are forgotten (the caller fails, and they are written again later).
    pub fn close(&self) -> io::Result<()> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        self.close_locked(&mut open)
    }

    fn close_locked(&self, open: &mut Option<Open>) -> io::Result<()> {
        if self.lost.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io::Error::other(
                "a pack of small blobs could not be written earlier in this build",
            ));
        }
        let Some(o) = open.take() else {
            return Ok(());
        };
        let result = (|| {
            if o.entries.is_empty() {
                let _ = fs::remove_file(&o.tmp);
                return Ok(());
            }
            let mut table = Vec::with_capacity(o.entries.len() * ENTRY + FOOTER as usize);
            for e in &o.entries {
                table.extend_from_slice(&e.digest);
                table.extend_from_slice(&e.offset.to_le_bytes());
                table.extend_from_slice(&e.len.to_le_bytes());
            }
            let sum = blake3::hash(&table);
            table.extend_from_slice(&o.end.to_le_bytes());
            table.extend_from_slice(&(o.entries.len() as u64).to_le_bytes());
            table.extend_from_slice(sum.as_bytes());
            table.extend_from_slice(END);
            o.file.write_all_at(&table, o.end)?;
            o.file.set_permissions(fs::Permissions::from_mode(0o444))?;
            let dest = self.dir.join(&o.pack.name);
            match fs::rename(&o.tmp, &dest) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(&self.dir)?;
                    fs::rename(&o.tmp, &dest)
                }
                r => r,
            }
        })();
        match result {
            Ok(()) => {
                self.index_mut().known.insert(o.pack.name.clone());
                Ok(())
            }
            Err(e) => {
                self.lost.store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = fs::remove_file(&o.tmp);
                let mut index = self.index_mut();
                for entry in &o.entries {
                    if index
                        .map
                        .get(&entry.digest)
                        .is_some_and(|l| Arc::ptr_eq(&l.pack, &o.pack))
                    {
                        index.map.remove(&entry.digest);
                    }
                }
                Err(e)
            }
        }
    }

    /// Forget a blob found damaged. In a closed pack, the whole pack is
    /// forgotten (and its path returned, for the store to move it out of
    /// the way): its table can no longer be trusted to say what it holds.
    /// In the open pack, only that blob (it is left out of the table).
    pub fn forget(&self, d: &[u8; 32], loc: &Loc) -> Option<PathBuf> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mut index = self.index_mut();
        if let Some(o) = &mut *open
            && Arc::ptr_eq(&o.pack, &loc.pack)
        {
            o.entries.retain(|e| e.digest != *d);
            if index
                .map
                .get(d)
                .is_some_and(|l| Arc::ptr_eq(&l.pack, &loc.pack))
            {
                index.map.remove(d);
            }
            return None;
        }
        // Only that pack's blobs: a good copy written since stays.
        index.map.retain(|_, l| !Arc::ptr_eq(&l.pack, &loc.pack));
        Some(self.dir.join(&loc.pack.name))
    }

    /// Close the open pack and forget every table read: the next lookup
    /// reads the packs again (after gc rewrote them).
    pub fn reset(&self) -> io::Result<()> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let closed = self.close_locked(&mut open);
        *self.index_mut() = Index::default();
        closed
    }

    /// Every blob this process knows of, with its pack's name (gc: after
    /// [`Packs::find_fresh`], every pack).
    pub fn locations(&self) -> Vec<([u8; 32], Loc)> {
        self.index()
            .map
            .iter()
            .map(|(d, l)| (*d, l.clone()))
            .collect()
    }
}

impl Drop for Packs {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// The packs in `dir`: (file name, path).
pub fn list(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    name.ends_with(".pack").then(|| (name, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Why a pack's table was not read.
#[derive(Debug)]
pub enum TableError {
    /// The pack is damaged: it is not trusted at all.
    Damaged(String),
    /// Another version's pack, or a read that failed: not judged.
    Other,
}

/// A pack's table, checked: its sum, and every blob inside the data.
pub fn read_table(file: &File) -> Result<Vec<Entry>, TableError> {
    let damaged = |why: &str| TableError::Damaged(why.to_string());
    let size = file.metadata().map_err(|_| TableError::Other)?.len();
    if size < HEADER + FOOTER {
        return Err(damaged("too short to be a pack"));
    }
    let mut header = [0u8; HEADER as usize];
    file.read_exact_at(&mut header, 0)
        .map_err(|_| TableError::Other)?;
    if &header[..8] != MAGIC {
        return Err(damaged("it does not start as a pack"));
    }
    if header[8..12] != VERSION.to_le_bytes() {
        return Err(TableError::Other);
    }
    let mut footer = [0u8; FOOTER as usize];
    file.read_exact_at(&mut footer, size - FOOTER)
        .map_err(|_| TableError::Other)?;
    if &footer[48..] != END {
        return Err(damaged("its end is missing"));
    }
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    let (table_at, count) = (word(&footer[..8]), word(&footer[8..16]));
    let table_len = count
        .checked_mul(ENTRY as u64)
        .filter(|n| {
            count <= MAX_ENTRIES as u64
                && table_at.checked_add(*n) == Some(size - FOOTER)
                && table_at >= HEADER
        })
        .ok_or_else(|| damaged("its table does not fit"))?;
    let mut table = vec![0u8; table_len as usize];
    file.read_exact_at(&mut table, table_at)
        .map_err(|_| TableError::Other)?;
    if blake3::hash(&table).as_bytes() != &footer[16..48] {
        return Err(damaged("its table does not match its sum"));
    }
    table
        .chunks_exact(ENTRY)
        .map(|c| {
            let mut digest = [0u8; 32];
            digest.copy_from_slice(&c[..32]);
            let offset = word(&c[32..40]);
            let len = u32::from_le_bytes(c[40..44].try_into().unwrap_or([0; 4]));
            let inside = offset >= HEADER
                && len as usize <= MAX
                && offset
                    .checked_add(u64::from(len))
                    .is_some_and(|end| end <= table_at);
            if inside {
                Ok(Entry {
                    digest,
                    offset,
                    len,
                })
            } else {
                Err(damaged("its table points outside its data"))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packs(dir: &Path) -> Packs {
        let (p, t) = (dir.join("packs"), dir.join("tmp"));
        fs::create_dir_all(&p).unwrap();
        fs::create_dir_all(&t).unwrap();
        Packs::new(p, t, "tok")
    }

    fn d(b: &[u8]) -> [u8; 32] {
        *blake3::hash(b).as_bytes()
    }

    #[test]
    fn blobs_are_found_at_once_and_by_others_once_closed() {
        let dir = tempfile::tempdir().unwrap();
        let a = packs(dir.path());
        a.append(d(b"one"), b"one").unwrap();
        a.append(d(b"two"), b"two").unwrap();
        a.append(d(b"one"), b"one").unwrap();
        assert_eq!(a.find(&d(b"one")).0.unwrap().read().unwrap(), b"one");
        // Another process sees nothing until the pack is closed.
        let b = packs(dir.path());
        assert!(b.find(&d(b"two")).0.is_none());
        a.close().unwrap();
        assert!(b.find(&d(b"two")).0.is_none(), "not looked for again");
        let loc = b.find_fresh(&d(b"two")).0.unwrap();
        assert_eq!(loc.read().unwrap(), b"two");
        // What was read is still readable after closing.
        assert_eq!(a.find(&d(b"two")).0.unwrap().read().unwrap(), b"two");
        let entries = read_table(&File::open(dir.path().join("packs/tok-0.pack")).unwrap());
        assert_eq!(entries.unwrap().len(), 2, "a blob once per pack");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_damaged_table_is_refused_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let a = packs(dir.path());
        a.append(d(b"x"), b"x").unwrap();
        a.close().unwrap();
        let path = dir.path().join("packs/tok-0.pack");
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.len() - 60;
        bytes[at] ^= 1;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&path, &bytes).unwrap();
        let b = packs(dir.path());
        let (found, bad) = b.find(&d(b"x"));
        assert!(found.is_none());
        assert_eq!(bad.len(), 1);
        assert!(bad[0].why.contains("sum"), "{}", bad[0].why);
        for cut in [0, 10, 20, bytes.len() - 1] {
            fs::write(&path, &bytes[..cut]).unwrap();
            assert!(
                matches!(
                    read_table(&File::open(&path).unwrap()),
                    Err(TableError::Damaged(_))
                ),
                "{cut}"
            );
        }
        // Another version's pack is left alone, not judged damaged.
        let mut other = fs::read(dir.path().join("packs/tok-0.pack")).unwrap_or(bytes.clone());
        other[8] = 9;
        fs::write(&path, &other).unwrap();
        assert!(matches!(
            read_table(&File::open(&path).unwrap()),
            Err(TableError::Other)
        ));
        // A FIFO in a pack's place is refused without blocking.
        fs::remove_file(&path).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let c = packs(dir.path());
        assert!(c.find_fresh(&d(b"x")).0.is_none());
        assert!(open_pack(&path).is_err());
    }

    #[test]
    fn forgetting_a_blob_of_a_closed_pack_forgets_the_pack() {
        let dir = tempfile::tempdir().unwrap();
        let a = packs(dir.path());
        a.append(d(b"x"), b"x").unwrap();
        a.append(d(b"y"), b"y").unwrap();
        a.close().unwrap();
        a.append(d(b"z"), b"z").unwrap();
        let x = a.find(&d(b"x")).0.unwrap();
        assert_eq!(
            a.forget(&d(b"x"), &x),
            Some(dir.path().join("packs/tok-0.pack"))
        );
        assert!(a.find(&d(b"y")).0.is_none());
        // In the open pack: only that blob, left out of its table.
        a.append(d(b"w"), b"w").unwrap();
        let z = a.find(&d(b"z")).0.unwrap();
        assert_eq!(a.forget(&d(b"z"), &z), None);
        // A location in a pack already forgotten leaves a newer copy be.
        a.append(d(b"x"), b"x").unwrap();
        a.forget(&d(b"x"), &x);
        assert!(a.find(&d(b"x")).0.is_some());
        a.close().unwrap();
        let entries = read_table(&File::open(dir.path().join("packs/tok-1.pack")).unwrap());
        let digests: Vec<[u8; 32]> = entries.unwrap().iter().map(|e| e.digest).collect();
        assert_eq!(digests, [d(b"w"), d(b"x")], "`z` left out");
    }

    #[test]
    fn a_pack_that_cannot_be_closed_forgets_its_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let a = packs(dir.path());
        a.append(d(b"x"), b"x").unwrap();
        // `packs/` replaced by a file: the rename fails.
        fs::remove_dir(dir.path().join("packs")).unwrap();
        fs::write(dir.path().join("packs"), b"").unwrap();
        assert!(a.close().is_err());
        assert!(a.find(&d(b"x")).0.is_none());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        // Callers were told `x` was stored: every later close fails, so
        // nothing naming it is stored.
        fs::remove_file(dir.path().join("packs")).unwrap();
        fs::create_dir(dir.path().join("packs")).unwrap();
        assert!(a.close().is_err());
        a.append(d(b"y"), b"y").unwrap();
        assert!(a.close().is_err());
    }
}
