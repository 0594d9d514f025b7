//! Deterministic tar: entries in path order, every mtime the same, owners
//! and modes from the tree, no user or group names, no host metadata.

use super::{Settings, store_err};
use crate::diag::Diagnostic;
use crate::store::Store;
use crate::store::digest::BlobDigest;
use crate::store::tree::{Kind, Tree};
use std::fs::File;
use std::io::{self, BufWriter, Read};

use std::path::Path;

/// Hashes what passes through and fails at the end if it is not `expected`,
/// so a damaged blob never ends up in an archive.
struct Verified<R> {
    inner: R,
    hasher: blake3::Hasher,
    expected: BlobDigest,
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            if BlobDigest::from_hash(self.hasher.finalize()) != self.expected {
                return Err(io::Error::other(format!(
                    "blob {} in the cache is corrupt",
                    self.expected
                )));
            }
        } else {
            self.hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

pub fn write(
    store: &Store,
    tree: &Tree,
    dest: &Path,
    settings: &Settings,
) -> Result<(), Diagnostic> {
    let err = |e: io::Error| {
        Diagnostic::io("cannot write", dest, &e)
            .with_help("check free space and that the destination's directory is writable")
    };
    let file = File::create(dest).map_err(err)?;
    let mut b = ::tar::Builder::new(BufWriter::new(file));
    for (path, entry) in &tree.entries {
        let mut h = ::tar::Header::new_gnu();
        h.set_mode(entry.mode);
        h.set_uid(entry.uid as u64);
        h.set_gid(entry.gid as u64);
        h.set_mtime(settings.epoch);
        match &entry.kind {
            Kind::Dir => {
                h.set_entry_type(::tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, format!("{path}/"), io::empty())
                    .map_err(err)?;
            }
            Kind::File { blob, size } => {
                h.set_entry_type(::tar::EntryType::Regular);
                h.set_size(*size);
                let f = store.open_blob(*blob).map_err(store_err)?;
                let reader = Verified {
                    inner: f,
                    hasher: blake3::Hasher::new(),
                    expected: *blob,
                };
                b.append_data(&mut h, path, reader).map_err(err)?;
            }
            Kind::Symlink { target } => {
                h.set_entry_type(::tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, path, target).map_err(err)?;
            }
        }
    }
    let inner = b.into_inner().map_err(err)?;
    let file = inner.into_inner().map_err(|e| err(e.into_error()))?;
    file.sync_all().map_err(err)?;
    Ok(())
}
