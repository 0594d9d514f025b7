//! The stat index: which digest a context file had when its size, mtime,
//! ctime and inode were last seen. Files changed less than two seconds
//! before they were hashed are not recorded (an edit in the same clock
//! tick would go unnoticed).

use crate::model::digest::BlobDigest;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
}

impl FileStat {
    pub fn from_stat(st: &rustix::fs::Stat) -> FileStat {
        FileStat {
            size: st.st_size as u64,
            mtime_ns: st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128,
            ctime_ns: st.st_ctime as i128 * 1_000_000_000 + st.st_ctime_nsec as i128,
            ino: st.st_ino,
            dev: st.st_dev,
        }
    }

    /// Feed every field to a hasher.
    pub fn hash_into(&self, h: &mut blake3::Hasher) {
        h.update(&self.size.to_le_bytes());
        h.update(&self.mtime_ns.to_le_bytes());
        h.update(&self.ctime_ns.to_le_bytes());
        h.update(&self.ino.to_le_bytes());
        h.update(&self.dev.to_le_bytes());
    }

    pub fn ino(&self) -> u64 {
        self.ino
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn mtime_ns(&self) -> i128 {
        self.mtime_ns
    }

    /// The later of mtime and ctime, in nanoseconds since the epoch.
    pub fn changed_ns(&self) -> i128 {
        self.mtime_ns.max(self.ctime_ns)
    }

    pub fn of(m: &std::fs::Metadata) -> FileStat {
        FileStat {
            size: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
pub struct StatIndex {
    #[serde(skip)]
    file: PathBuf,
    #[serde(skip)]
    dirty: bool,
    entries: HashMap<String, (FileStat, BlobDigest)>,
}

/// Leads the index file; bump when its shape changes. The file is
/// checksummed: a damaged index reads as empty, so every file is hashed.
const MAGIC: &[u8] = b"KILNSTAT2";

pub fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

impl StatIndex {
    /// Where the index of a context lives in the state dir.
    pub fn load(file: &Path) -> StatIndex {
        let file = file.to_path_buf();
        let mut index: StatIndex = crate::store::checked::read(&file, MAGIC)
            .and_then(|b| postcard::from_bytes(&b).ok())
            .unwrap_or_default();
        index.file = file;
        index
    }

    /// An index that vouches for nothing (`--no-cache` hashes every file);
    /// what is hashed is still saved to `file`.
    pub fn empty(file: &Path) -> StatIndex {
        StatIndex {
            file: file.to_path_buf(),
            dirty: true,
            ..StatIndex::default()
        }
    }

    pub fn lookup(&self, path: &str, stat: &FileStat) -> Option<BlobDigest> {
        match self.entries.get(path) {
            Some((s, d)) if s == stat => Some(*d),
            _ => None,
        }
    }

    pub fn record(&mut self, path: &str, stat: FileStat, digest: BlobDigest) {
        if now_ns() - stat.mtime_ns.max(stat.ctime_ns) < 2_000_000_000 {
            return;
        }
        self.entries.insert(path.to_string(), (stat, digest));
        self.dirty = true;
    }

    /// Write the index back, forgetting files that are no longer in the context.
    pub fn save(&mut self, present: &HashMap<String, FileStat>) -> std::io::Result<()> {
        let before = self.entries.len();
        self.entries.retain(|p, _| present.contains_key(p));
        if !self.dirty && self.entries.len() == before {
            return Ok(());
        }
        let body = postcard::to_stdvec(self).map_err(std::io::Error::other)?;
        crate::store::checked::write(&self.file, MAGIC, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trips_and_forgets_deleted_files() {
        let dir = tempfile::tempdir().unwrap();
        let layout = crate::store::layout::Layout::new(dir.path());
        let ctx = dir.path().join("ctx");
        let old = FileStat {
            size: 1,
            mtime_ns: 1,
            ctime_ns: 1,
            ino: 1,
            dev: 1,
        };
        let mut index = StatIndex::load(&layout.index(&ctx));
        index.record("a", old, BlobDigest([1; 32]));
        index.record("b", old, BlobDigest([2; 32]));
        // A file changed a moment ago is not trusted yet.
        let fresh = FileStat {
            mtime_ns: now_ns(),
            ..old
        };
        index.record("c", fresh, BlobDigest([3; 32]));
        let present: HashMap<String, FileStat> = [("a".to_string(), old)].into();
        index.save(&present).unwrap();
        let again = StatIndex::load(&layout.index(&ctx));
        assert_eq!(again.lookup("a", &old), Some(BlobDigest([1; 32])));
        assert_eq!(again.lookup("b", &old), None);
        assert_eq!(again.lookup("c", &fresh), None);
        assert_eq!(again.lookup("a", &FileStat { size: 2, ..old }), None);
    }
}
