//! The action cache: step key → resulting state, as one append-only log.
//!
//! Every record is `"KAC2" key[32] len:u32le payload[len] check[8]`, where
//! `check` is the start of blake3(key ‖ payload) and `payload` is the state. Builds append a whole record with one `O_APPEND` write, so
//! concurrent builds never interleave, and the log is read once per build
//! into memory: a cache hit costs a hash-map lookup, not a file read. A
//! record torn by a crash fails its check and is skipped (reading resumes
//! at the next `KAC2`); the last record for a key wins. Payloads are
//! postcard-encoded states. `kiln gc` rewrites
//! the log under the exclusive lock.

use crate::model::digest::StepKey;
use crate::model::state::Action;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

/// Bump when the record layout or `Action` changes shape: older records
/// then fail to parse and count as misses.
const MAGIC: &[u8; 4] = b"KAC2";
const HEADER: usize = 4 + 32 + 4;

pub struct ActionLog {
    path: PathBuf,
    entries: RwLock<HashMap<StepKey, Vec<u8>>>,
    /// Keys in the order their latest record appears in the log (oldest first).
    order: RwLock<Vec<StepKey>>,
    append: Mutex<Option<File>>,
    /// How far the file has been read: [`ActionLog::refresh`] reads on
    /// from there.
    read: Mutex<u64>,
}

fn check(key: &[u8], payload: &[u8]) -> [u8; 8] {
    let mut h = blake3::Hasher::new();
    h.update(key);
    h.update(payload);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    out
}

/// Encode one record.
pub fn record(key: StepKey, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER + payload.len() + 8);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&key.0);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(payload);
    buf.extend_from_slice(&check(&key.0, payload));
    buf
}

/// Decode every intact record of a log, in order; damaged bytes are skipped.
pub fn parse(bytes: &[u8]) -> Vec<(StepKey, &[u8])> {
    parse_to_end(bytes).0
}

/// [`parse`], and where the last intact record ends (what follows may be
/// a record another build is writing).
fn parse_to_end(bytes: &[u8]) -> (Vec<(StepKey, &[u8])>, usize) {
    let mut out = Vec::new();
    let mut last_end = 0;
    let mut i = 0;
    while i + HEADER + 8 <= bytes.len() {
        if &bytes[i..i + 4] != MAGIC {
            i += 1;
            continue;
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[i + 4..i + 36]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&bytes[i + 36..i + 40]);
        let len = u32::from_le_bytes(len) as usize;
        let end = i + HEADER + len;
        if end + 8 <= bytes.len() {
            let payload = &bytes[i + HEADER..end];
            if bytes[end..end + 8] == check(&key, payload) {
                out.push((StepKey(key), payload));
                i = end + 8;
                last_end = i;
                continue;
            }
        }
        i += 1;
    }
    (out, last_end)
}

impl ActionLog {
    pub fn load(path: &Path) -> io::Result<ActionLog> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        // The last record of a key wins; order keys by their last record.
        let records = parse(&bytes);
        let mut entries: HashMap<StepKey, Vec<u8>> = HashMap::with_capacity(records.len());
        let mut order = Vec::with_capacity(records.len());
        for (key, payload) in records.into_iter().rev() {
            if let std::collections::hash_map::Entry::Vacant(v) = entries.entry(key) {
                v.insert(payload.to_vec());
                order.push(key);
            }
        }
        order.reverse();
        Ok(ActionLog {
            path: path.to_path_buf(),
            entries: RwLock::new(entries),
            order: RwLock::new(order),
            append: Mutex::new(None),
            read: Mutex::new(parse_to_end(&bytes).1 as u64),
        })
    }

    /// A log with no entries (for a log that cannot be read: every lookup misses).
    pub fn empty(path: &Path) -> ActionLog {
        ActionLog {
            path: path.to_path_buf(),
            entries: RwLock::new(HashMap::new()),
            order: RwLock::new(Vec::new()),
            append: Mutex::new(None),
            read: Mutex::new(u64::MAX),
        }
    }

    /// Read the records other builds appended since this log was read
    /// (the last record of a key wins, as on load). A log that could not
    /// be read stays empty.
    pub fn refresh(&self) {
        use std::io::{Read, Seek, SeekFrom};
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        if *read == u64::MAX {
            return;
        }
        let Ok(mut f) = File::open(&self.path) else {
            return;
        };
        let mut bytes = Vec::new();
        if f.seek(SeekFrom::Start(*read)).is_err() || f.read_to_end(&mut bytes).is_err() {
            return;
        }
        let (records, end) = parse_to_end(&bytes);
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let mut order = self.order.write().unwrap_or_else(|e| e.into_inner());
        for (key, payload) in records {
            if entries.insert(key, payload.to_vec()).is_none() {
                order.push(key);
            }
        }
        *read += end as u64;
    }

    pub fn get(&self, key: StepKey) -> Option<Action> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        Action::from_postcard(entries.get(&key)?)
    }

    pub fn put(&self, key: StepKey, state: &Action) -> io::Result<()> {
        let payload = postcard::to_stdvec(state).map_err(io::Error::other)?;
        let rec = record(key, &payload);
        {
            let mut append = self.append.lock().unwrap_or_else(|e| e.into_inner());
            if append.is_none() {
                *append = Some(File::options().create(true).append(true).open(&self.path)?);
            }
            if let Some(f) = append.as_mut() {
                f.write_all(&rec)?;
            }
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.insert(key, payload).is_none() {
            self.order
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .push(key);
        }
        Ok(())
    }

    pub fn forget(&self, key: StepKey) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }

    /// Every entry, oldest first, with the size of its record.
    pub fn entries(&self) -> Vec<(StepKey, Option<Action>, u64)> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let order = self.order.read().unwrap_or_else(|e| e.into_inner());
        order
            .iter()
            .filter_map(|k| {
                let p = entries.get(k)?;
                Some((*k, Action::from_postcard(p), (HEADER + p.len() + 8) as u64))
            })
            .collect()
    }

    /// Replace the log with only `keep` (in their current order), through
    /// `tmp` and a rename. Only while holding the store lock alone.
    pub fn rewrite(&self, keep: &dyn Fn(&StepKey) -> bool, tmp: &Path) -> io::Result<usize> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let order = self.order.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        let mut removed = 0;
        for k in order.iter() {
            match entries.get(k) {
                Some(p) if keep(k) => out.extend_from_slice(&record(*k, p)),
                Some(_) => removed += 1,
                None => {}
            }
        }
        fs::write(tmp, &out)?;
        fs::rename(tmp, &self.path)?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::digest::TreeDigest;
    use crate::model::state::ImageConfig;

    fn state(n: u8) -> Action {
        Action {
            tree: Some(TreeDigest([n; 32])),
            config: ImageConfig::default(),
            test: None,
        }
    }

    #[test]
    fn torn_and_garbled_records_are_skipped() {
        let mut log = record(StepKey([1; 32]), b"one");
        log.extend_from_slice(&record(StepKey([2; 32]), b"two")[..20]); // torn
        log.extend_from_slice(b"garbage KAC2 more garbage");
        let mut bad = record(StepKey([3; 32]), b"three");
        let n = bad.len();
        bad[n - 12] ^= 1; // flipped payload bit
        log.extend_from_slice(&bad);
        log.extend_from_slice(&record(StepKey([4; 32]), b"four"));
        let got: Vec<(u8, &[u8])> = parse(&log).into_iter().map(|(k, p)| (k.0[0], p)).collect();
        assert_eq!(got, vec![(1, &b"one"[..]), (4, &b"four"[..])]);
    }

    #[test]
    fn round_trip_last_wins_and_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("actions.log");
        let log = ActionLog::load(&path).unwrap();
        log.put(StepKey([1; 32]), &state(1)).unwrap();
        log.put(StepKey([2; 32]), &state(2)).unwrap();
        log.put(StepKey([1; 32]), &state(3)).unwrap();
        let again = ActionLog::load(&path).unwrap();
        assert_eq!(again.get(StepKey([1; 32])), Some(state(3)));
        assert_eq!(again.entries().len(), 2);
        let removed = again
            .rewrite(&|k| k.0[0] == 2, &dir.path().join("tmp"))
            .unwrap();
        assert_eq!(removed, 1);
        let third = ActionLog::load(&path).unwrap();
        assert_eq!(third.get(StepKey([1; 32])), None);
        assert_eq!(third.get(StepKey([2; 32])), Some(state(2)));
    }

    #[test]
    fn refresh_reads_what_another_build_appended_and_waits_for_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("actions.log");
        let ours = ActionLog::load(&path).unwrap();
        ours.put(StepKey([1; 32]), &state(1)).unwrap();
        let theirs = ActionLog::load(&path).unwrap();
        theirs.put(StepKey([2; 32]), &state(2)).unwrap();
        assert_eq!(ours.get(StepKey([2; 32])), None);
        // Half of a record another build is writing: not read yet.
        let next = record(StepKey([3; 32]), &postcard::to_stdvec(&state(3)).unwrap());
        let mut f = File::options().append(true).open(&path).unwrap();
        f.write_all(&next[..10]).unwrap();
        ours.refresh();
        assert_eq!(ours.get(StepKey([2; 32])), Some(state(2)));
        assert_eq!(ours.get(StepKey([3; 32])), None);
        f.write_all(&next[10..]).unwrap();
        ours.refresh();
        assert_eq!(ours.get(StepKey([3; 32])), Some(state(3)));
        assert_eq!(ours.entries().len(), 3);
    }
}
