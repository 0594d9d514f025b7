//! blake3 → SHA-256: how kiln's addresses are named on a REAPI server.
//!
//! Digests this machine computed from the bytes are kept in the state
//! directory (`remote/sha256`, records of 80 bytes appended: blake3,
//! SHA-256, size, and 8 bytes of the record's own blake3; reading stops at
//! the first record that does not match its sum), so a blob is hashed for
//! the remote once. Digests a
//! server sent (with a result taken from it) are kept in memory only: a
//! blob fetched by one is checked against both.

use super::Sha;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

const RECORD: usize = 80;

pub struct ShaMap {
    path: PathBuf,
    /// Read on first use (a build that asks the server nothing reads none).
    known: std::sync::OnceLock<Mutex<HashMap<[u8; 32], Sha>>>,
    told: Mutex<HashMap<[u8; 32], Sha>>,
}

impl ShaMap {
    /// The map kept at `path` (a damaged tail record is left out).
    pub fn open(path: PathBuf) -> ShaMap {
        ShaMap {
            path,
            known: std::sync::OnceLock::new(),
            told: Mutex::new(HashMap::new()),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Sha>> {
        self.known
            .get_or_init(|| Mutex::new(read(&self.path)))
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The SHA-256 of the blob `b3`, computed here or told by the server.
    pub fn get(&self, b3: &[u8; 32]) -> Option<Sha> {
        if let Some(s) = self.known().get(b3) {
            return Some(*s);
        }
        self.told
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(b3)
            .copied()
    }

    /// The SHA-256 this machine computed for the blob `b3`, if it did.
    pub fn computed(&self, b3: &[u8; 32]) -> Option<Sha> {
        self.known().get(b3).copied()
    }

    /// Keep what this machine computed (best effort: a map that cannot be
    /// written only costs hashing again).
    pub fn computed_now(&self, found: &[([u8; 32], Sha)]) {
        if found.is_empty() {
            return;
        }
        let mut known = self.known();
        let mut out = Vec::with_capacity(found.len() * RECORD);
        for (b3, sha) in found {
            if known.insert(*b3, *sha).is_none() {
                let start = out.len();
                out.extend_from_slice(b3);
                out.extend_from_slice(&sha.hash);
                out.extend_from_slice(&sha.size.to_le_bytes());
                let sum = blake3::hash(&out[start..]);
                out.extend_from_slice(&sum.as_bytes()[..8]);
            }
        }
        if out.is_empty() {
            return;
        }
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // One write of whole records; a torn one is skipped when read.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            let _ = f.write_all(&out);
        }
    }

    /// Keep what a server said (for this process only).
    pub fn told(&self, found: impl IntoIterator<Item = ([u8; 32], Sha)>) {
        self.told
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(found);
    }
}

/// The records kept at `path` (what follows a damaged one is dropped
/// from the file, so what is appended next is read again).
fn read(path: &std::path::Path) -> HashMap<[u8; 32], Sha> {
    let mut known = HashMap::new();
    if let Ok(bytes) = std::fs::read(path) {
        let mut good = 0;
        for r in bytes.chunks_exact(RECORD) {
            let (r, sum) = r.split_at(72);
            if blake3::hash(r).as_bytes()[..8] != *sum {
                break;
            }
            good += RECORD;
            let (b3, rest) = r.split_at(32);
            let (sha, size) = rest.split_at(32);
            let (Ok(b3), Ok(hash), Ok(size)) = (
                <[u8; 32]>::try_from(b3),
                <[u8; 32]>::try_from(sha),
                <[u8; 8]>::try_from(size),
            ) else {
                continue;
            };
            known.insert(
                b3,
                Sha {
                    hash,
                    size: u64::from_le_bytes(size),
                },
            );
        }
        // What follows damage is dropped, so what is appended next
        // is read again.
        if good < bytes.len() {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(good as u64));
        }
    }
    known
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_computed_is_kept_and_a_torn_record_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("remote/sha256");
        let m = ShaMap::open(path.clone());
        let a = ([1u8; 32], Sha::of(b"one"));
        m.computed_now(&[a]);
        m.told([([2u8; 32], Sha::of(b"two"))]);
        assert_eq!(m.get(&[2u8; 32]), Some(Sha::of(b"two")));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[9u8; 40]);
        std::fs::write(&path, &bytes).unwrap();
        let again = ShaMap::open(path.clone());
        assert_eq!(again.get(&[1u8; 32]), Some(a.1));
        assert_eq!(again.get(&[2u8; 32]), None, "told ones are not kept");
        // A damaged record, then whole ones: reading stops at the damage.
        bytes.truncate(80);
        bytes[5] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let damaged = ShaMap::open(path.clone());
        damaged.computed_now(&[([3u8; 32], Sha::of(b"three"))]);
        let again = ShaMap::open(path);
        assert_eq!(again.get(&[1u8; 32]), None, "damaged: dropped");
        assert_eq!(again.get(&[3u8; 32]), Some(Sha::of(b"three")));
    }
}
