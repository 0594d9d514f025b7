//! A content store and action cache in memory: for tests of the
//! executor, and the smallest example of what a cache backend provides.

use super::{ActionCache, BlobRead, ContentStore, IngestError, StoreError};
use crate::model::digest::{BlobDigest, StepKey, TreeDigest};
use crate::model::state::Action;
use crate::model::tree::Tree;
use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryStore {
    blobs: Mutex<HashMap<BlobDigest, Vec<u8>>>,
    trees: Mutex<HashMap<TreeDigest, Tree>>,
    actions: Mutex<HashMap<StepKey, Action>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// How many action entries are stored.
    pub fn actions(&self) -> usize {
        self.actions.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Remove a tree (to test what a damaged cache does).
    pub fn lose_tree(&self, d: TreeDigest) {
        self.trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&d);
    }
}

struct Bytes {
    data: io::Cursor<Vec<u8>>,
}

impl Read for Bytes {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.data.read(buf)
    }
}

impl BlobRead for Bytes {
    fn failure(&mut self) -> Option<StoreError> {
        None
    }
}

impl ContentStore for MemoryStore {
    fn has_blob(&self, d: BlobDigest) -> bool {
        self.blobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&d)
    }

    fn put_blob(&self, bytes: &[u8]) -> Result<BlobDigest, StoreError> {
        let d = BlobDigest::from_hash(blake3::hash(bytes));
        self.blobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(d)
            .or_insert_with(|| bytes.to_vec());
        Ok(d)
    }

    fn put_blob_reader(
        &self,
        reader: &mut dyn Read,
        limit: Option<u64>,
    ) -> Result<(BlobDigest, u64), StoreError> {
        let mut bytes = Vec::new();
        let cap = limit.map_or(u64::MAX, |l| l.saturating_add(1));
        reader
            .take(cap)
            .read_to_end(&mut bytes)
            .map_err(|source| StoreError::Io {
                path: "(memory)".into(),
                source,
            })?;
        if limit.is_some_and(|l| bytes.len() as u64 > l) {
            return Err(StoreError::Io {
                path: "(memory)".into(),
                source: io::Error::new(io::ErrorKind::FileTooLarge, "over the limit"),
            });
        }
        let n = bytes.len() as u64;
        Ok((self.put_blob(&bytes)?, n))
    }

    fn ingest(&self, reader: &mut dyn Read, expected: BlobDigest) -> Result<(), IngestError> {
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .map_err(|source| StoreError::Io {
                path: "(memory)".into(),
                source,
            })?;
        let actual = BlobDigest::from_hash(blake3::hash(&bytes));
        if actual != expected {
            return Err(IngestError::Changed {
                expected: expected.hex(),
                actual: actual.hex(),
            });
        }
        self.put_blob(&bytes)?;
        Ok(())
    }

    fn blob_reader(&self, d: BlobDigest) -> Result<Box<dyn BlobRead + '_>, StoreError> {
        let bytes = self
            .blobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&d)
            .cloned()
            .ok_or(StoreError::Missing {
                what: "blob",
                digest: d.hex(),
            })?;
        Ok(Box::new(Bytes {
            data: io::Cursor::new(bytes),
        }))
    }

    fn has_tree(&self, d: TreeDigest) -> bool {
        self.trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&d)
    }

    fn put_tree(&self, tree: &Tree) -> Result<TreeDigest, StoreError> {
        let d = TreeDigest::from_hash(blake3::hash(&tree.to_bytes()));
        self.trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(d)
            .or_insert_with(|| tree.clone());
        Ok(d)
    }

    fn get_tree(&self, d: TreeDigest) -> Result<Tree, StoreError> {
        self.trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&d)
            .cloned()
            .ok_or(StoreError::Missing {
                what: "tree",
                digest: d.hex(),
            })
    }
}

impl ActionCache for MemoryStore {
    fn here(&self) -> &dyn ActionCache {
        self
    }

    fn get(&self, key: StepKey) -> Option<Action> {
        self.actions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
    }

    fn put(&self, key: StepKey, action: &Action) -> Result<(), StoreError> {
        self.actions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, action.clone());
        Ok(())
    }

    fn forget(&self, key: StepKey) {
        self.actions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_trees_and_actions_round_trip() {
        let m = MemoryStore::new();
        let d = m.put_blob(b"hi").unwrap();
        assert_eq!(m.read_blob(d).unwrap(), b"hi");
        let err = m.ingest(&mut &b"ho"[..], d).unwrap_err();
        assert!(matches!(err, IngestError::Changed { .. }));
        let (d2, n) = m.put_blob_reader(&mut &b"hi"[..], Some(2)).unwrap();
        assert_eq!((d2, n), (d, 2));
        assert!(m.put_blob_reader(&mut &b"hi!"[..], Some(2)).is_err());
        let t = Tree::new();
        let td = m.put_tree(&t).unwrap();
        assert_eq!(m.get_tree(td).unwrap(), t);
        let a = Action {
            tree: Some(td),
            config: Default::default(),
            test: None,
        };
        m.put(StepKey([1; 32]), &a).unwrap();
        assert_eq!(m.get(StepKey([1; 32])), Some(a));
        m.forget(StepKey([1; 32]));
        assert_eq!(m.actions(), 0);
    }
}
