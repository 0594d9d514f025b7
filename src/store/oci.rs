//! The local image store's blobs: bytes addressed by their sha256, as in
//! an OCI image layout (`images/blobs/sha256/<hex>`), so the store is a
//! layout that skopeo and umoci read. Written through a temp file and a
//! rename after the digest is checked; verified again whenever read.

use super::StoreError;
use super::layout::Layout;
use crate::model::digest::Sha256;
use sha2::Digest;
use sha2::Sha256 as Sha256Hasher;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The image store's blob directory.
pub struct OciBlobs {
    layout: Layout,
}

impl OciBlobs {
    pub fn new(layout: &Layout) -> OciBlobs {
        OciBlobs {
            layout: layout.clone(),
        }
    }

    pub fn path(&self, d: &Sha256) -> PathBuf {
        self.layout.image_blob(d.hex())
    }

    pub fn has(&self, d: &Sha256) -> bool {
        self.path(d).exists()
    }

    /// Store what `reader` yields; it must hash to `expected` when given.
    /// Returns the digest and size.
    pub fn put(
        &self,
        reader: &mut dyn Read,
        expected: Option<&Sha256>,
    ) -> Result<(Sha256, u64), StoreError> {
        let dir = self.layout.images().join("blobs").join("sha256");
        fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        self.ensure_layout()?;
        let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), unique()));
        let result = (|| {
            let mut f = File::create(&tmp).map_err(StoreError::io(&tmp))?;
            let mut h = Sha256Hasher::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut size = 0u64;
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(StoreError::io(&tmp)(e)),
                };
                h.update(&buf[..n]);
                f.write_all(&buf[..n]).map_err(StoreError::io(&tmp))?;
                size += n as u64;
            }
            let got = Sha256::from_bytes(&h.finalize());
            if let Some(want) = expected
                && *want != got
            {
                return Err(StoreError::Corrupt {
                    what: "image blob",
                    digest: format!("{want} (the bytes received hash to {got})"),
                    moved_to: None,
                });
            }
            f.set_permissions(fs::Permissions::from_mode(0o444))
                .map_err(StoreError::io(&tmp))?;
            drop(f);
            let path = self.path(&got);
            fs::rename(&tmp, &path).map_err(StoreError::io(&path))?;
            Ok((got, size))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// A new temp file beside the blobs, for a blob being made; give it to
    /// [`OciBlobs::adopt`] once its digest is known.
    pub fn temp_file(&self) -> Result<(PathBuf, File), StoreError> {
        let dir = self.layout.images().join("blobs").join("sha256");
        fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        self.ensure_layout()?;
        let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), unique()));
        let f = File::create(&tmp).map_err(StoreError::io(&tmp))?;
        Ok((tmp, f))
    }

    /// Put a temp file made by [`OciBlobs::temp_file`], whose sha256 the
    /// caller computed as it wrote it, in place as the blob `d`.
    pub fn adopt(&self, tmp: &Path, d: &Sha256) -> Result<(), StoreError> {
        let path = self.path(d);
        fs::set_permissions(tmp, fs::Permissions::from_mode(0o444))
            .and_then(|_| fs::rename(tmp, &path))
            .map_err(|e| {
                let _ = fs::remove_file(tmp);
                StoreError::io(&path)(e)
            })
    }

    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Sha256, StoreError> {
        let d = Sha256::of(bytes);
        if !self.has(&d) {
            self.put(&mut &bytes[..], Some(&d))?;
        }
        Ok(d)
    }

    /// A blob's bytes; the last read fails if they do not hash to `d`
    /// (the blob is then removed, so it is fetched again).
    pub fn open(&self, d: &Sha256) -> Result<Verified, StoreError> {
        let path = self.path(d);
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::Missing {
                what: "image blob",
                digest: d.to_string(),
            },
            _ => StoreError::io(&path)(e),
        })?;
        Ok(Verified {
            file,
            hasher: Sha256Hasher::new(),
            expected: d.clone(),
            path,
            done: false,
        })
    }

    /// Read a (small) blob whole, verified.
    pub fn read(&self, d: &Sha256) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        let mut r = self.open(d)?;
        r.read_to_end(&mut out).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => StoreError::Corrupt {
                what: "image blob",
                digest: d.to_string(),
                moved_to: None,
            },
            _ => StoreError::io(&self.path(d))(e),
        })?;
        Ok(out)
    }

    /// Write `oci-layout` (and an empty `index.json`) if missing.
    pub fn ensure_layout(&self) -> Result<(), StoreError> {
        let root = self.layout.images();
        let marker = root.join("oci-layout");
        if !marker.exists() {
            write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = root.join("index.json");
        if !index.exists() {
            write_atomic(
                &index,
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
            )?;
        }
        Ok(())
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), unique()));
    fs::write(&tmp, bytes)
        .and_then(|_| fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            StoreError::io(path)(e)
        })
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A blob being read, checked against its digest at the end.
pub struct Verified {
    file: File,
    hasher: Sha256Hasher,
    expected: Sha256,
    path: PathBuf,
    done: bool,
}

impl Read for Verified {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        if n == 0 && !buf.is_empty() && !self.done {
            self.done = true;
            let got = Sha256::from_bytes(&self.hasher.clone().finalize());
            if got != self.expected {
                let _ = fs::remove_file(&self.path);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "image blob {} in the store is damaged; kiln removed it",
                        self.expected
                    ),
                ));
            }
        } else {
            self.hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_checked_on_the_way_in_and_out() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = OciBlobs::new(&Layout::new(dir.path()));
        let d = blobs.put_bytes(b"layer").unwrap();
        assert_eq!(blobs.read(&d).unwrap(), b"layer");
        assert!(dir.path().join("images/oci-layout").exists());
        let wrong = Sha256::of(b"other");
        assert!(blobs.put(&mut &b"layer"[..], Some(&wrong)).is_err());
        let p = blobs.path(&d);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, b"LAYER").unwrap();
        assert!(blobs.read(&d).is_err());
        assert!(!p.exists(), "a damaged blob is removed");
        assert_eq!(Sha256::parse(&d.to_string()), Some(d));
        assert_eq!(Sha256::parse("sha256:xyz"), None);
    }
}
