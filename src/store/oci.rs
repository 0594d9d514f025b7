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

/// The largest manifest, index or config kiln reads (containerd's limit).
pub const MAX_DOCUMENT: u64 = 4 << 20;

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

    /// The image store's directory: an OCI layout.
    pub fn root(&self) -> PathBuf {
        self.layout.images()
    }

    pub fn path(&self, d: &Sha256) -> PathBuf {
        self.layout.image_blob(d.hex())
    }

    /// The size of a stored blob (`None` when absent).
    pub fn size(&self, d: &Sha256) -> Option<u64> {
        fs::metadata(self.path(d)).ok().map(|m| m.len())
    }

    pub fn has(&self, d: &Sha256) -> bool {
        self.path(d).exists()
    }

    /// Store what `reader` gives, checked against `expected` (its digest)
    /// and `size` (the size its descriptor declares: reading stops past
    /// it, so a source that sends more cannot fill the disk). Returns the
    /// digest and size.
    pub fn put(
        &self,
        reader: &mut dyn Read,
        expected: Option<&Sha256>,
        size: Option<u64>,
    ) -> Result<(Sha256, u64), StoreError> {
        let dir = self.layout.images().join("blobs").join("sha256");
        fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        self.ensure_layout()?;
        let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), unique()));
        let result = (|| {
            let mut f = File::create(&tmp).map_err(StoreError::io(&tmp))?;
            let mut h = Sha256Hasher::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut got_size = 0u64;
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(StoreError::io(&tmp)(e)),
                };
                h.update(&buf[..n]);
                f.write_all(&buf[..n]).map_err(StoreError::io(&tmp))?;
                got_size += n as u64;
                if let Some(declared) = size
                    && got_size > declared
                {
                    return Err(StoreError::Refused(format!(
                        "blob {}: more bytes came than the {declared} its descriptor declares",
                        expected.map(Sha256::to_string).unwrap_or_default()
                    )));
                }
            }
            if let Some(declared) = size
                && got_size != declared
            {
                return Err(StoreError::Refused(format!(
                    "blob {}: {got_size} bytes came, its descriptor declares {declared}",
                    expected.map(Sha256::to_string).unwrap_or_default()
                )));
            }
            let got = Sha256::from_bytes(&h.finalize());
            if let Some(want) = expected
                && *want != got
            {
                return Err(StoreError::Refused(format!(
                    "blob {want}: the bytes received hash to {got}"
                )));
            }
            f.set_permissions(fs::Permissions::from_mode(0o444))
                .map_err(StoreError::io(&tmp))?;
            drop(f);
            let path = self.path(&got);
            fs::rename(&tmp, &path).map_err(StoreError::io(&path))?;
            Ok((got, got_size))
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
            self.put(&mut &bytes[..], Some(&d), Some(bytes.len() as u64))?;
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

    /// Read a document (a manifest, an index, a config) whole, verified;
    /// one larger than [`MAX_DOCUMENT`] is refused, not read.
    pub fn read(&self, d: &Sha256) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        let mut r = self.open(d)?;
        if r.file.metadata().map(|m| m.len()).unwrap_or(0) > MAX_DOCUMENT {
            return Err(StoreError::Refused(format!(
                "{d} is larger than {} and is not read as a manifest, index or config",
                crate::units::format_size(MAX_DOCUMENT)
            )));
        }
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

/// `app` → `app:latest`; a name with a tag (or a digest) is kept.
pub fn normalize_tag(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || name.contains('@') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A name in the local image store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    pub name: String,
    pub manifest: Sha256,
}

impl OciBlobs {
    fn index_path(&self) -> PathBuf {
        self.layout.images().join("index.json")
    }

    /// Hold the image store's index for an update.
    fn lock_index(&self) -> Result<File, StoreError> {
        let path = self.layout.images().join("index.lock");
        fs::create_dir_all(self.layout.images()).map_err(StoreError::io(&path))?;
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StoreError::io(&path))?;
        f.lock().map_err(StoreError::io(&path))?;
        Ok(f)
    }

    fn read_index(&self) -> serde_json::Value {
        fs::read(self.index_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|v: &serde_json::Value| v.get("manifests").is_some_and(|m| m.is_array()))
            .unwrap_or_else(|| {
                serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": [],
                })
            })
    }

    /// The names in the local image store, sorted.
    pub fn tags(&self) -> Vec<Tag> {
        let index = self.read_index();
        let mut out: Vec<Tag> = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                Some(Tag {
                    name: m.get("annotations")?.get(REF_NAME)?.as_str()?.to_string(),
                    manifest: Sha256::parse(m.get("digest")?.as_str()?)?,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The manifest a name has in the local image store.
    pub fn tag(&self, name: &str) -> Option<Sha256> {
        let name = normalize_tag(name);
        self.tags()
            .into_iter()
            .find(|t| t.name == name)
            .map(|t| t.manifest)
    }

    /// Name a manifest (in the store) in the local image store, replacing
    /// what the name had.
    pub fn set_tag(&self, name: &str, manifest: &Sha256, size: u64) -> Result<(), StoreError> {
        self.ensure_layout()?;
        let _lock = self.lock_index()?;
        let name = normalize_tag(name);
        let mut index = self.read_index();
        if let Some(list) = index["manifests"].as_array_mut() {
            list.retain(|m| {
                m.pointer("/annotations/org.opencontainers.image.ref.name")
                    .and_then(|v| v.as_str())
                    != Some(name.as_str())
            });
            list.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest.to_string(),
                "size": size,
                "annotations": { REF_NAME: name },
            }));
            list.sort_by(|a, b| {
                let n = |v: &serde_json::Value| {
                    v.pointer("/annotations/org.opencontainers.image.ref.name")
                        .and_then(|v| v.as_str())
                        .unwrap_or("")
                        .to_string()
                };
                n(a).cmp(&n(b))
            });
        }
        let bytes = serde_json::to_vec_pretty(&index)
            .map_err(|e| StoreError::io(&self.index_path())(io::Error::other(e)))?;
        write_atomic(&self.index_path(), &bytes)
    }

    /// Remove a name from the local image store; whether it was there.
    /// (`kiln gc` then drops the blobs nothing else keeps.)
    pub fn remove_tag(&self, name: &str) -> Result<bool, StoreError> {
        let _lock = self.lock_index()?;
        let name = normalize_tag(name);
        let mut index = self.read_index();
        let mut removed = false;
        if let Some(list) = index["manifests"].as_array_mut() {
            let before = list.len();
            list.retain(|m| {
                m.pointer("/annotations/org.opencontainers.image.ref.name")
                    .and_then(|v| v.as_str())
                    != Some(name.as_str())
            });
            removed = list.len() != before;
        }
        if removed {
            let bytes = serde_json::to_vec_pretty(&index)
                .map_err(|e| StoreError::io(&self.index_path())(io::Error::other(e)))?;
            write_atomic(&self.index_path(), &bytes)?;
        }
        Ok(removed)
    }

    /// Every blob a tagged image needs: its manifest, config and layers
    /// (what `kiln gc` keeps for the local image store).
    pub fn tagged_blobs(&self) -> std::collections::HashSet<Sha256> {
        let mut keep = std::collections::HashSet::new();
        for t in self.tags() {
            keep.insert(t.manifest.clone());
            let Ok(bytes) = self.read(&t.manifest) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue;
            };
            let descs = v.get("config").into_iter().chain(
                v.get("layers")
                    .and_then(|l| l.as_array())
                    .into_iter()
                    .flatten(),
            );
            for d in descs {
                if let Some(d) = d
                    .get("digest")
                    .and_then(|d| d.as_str())
                    .and_then(Sha256::parse)
                {
                    keep.insert(d);
                }
            }
        }
        keep
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
        assert!(blobs.put(&mut &b"layer"[..], Some(&wrong), None).is_err());
        let p = blobs.path(&d);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, b"LAYER").unwrap();
        assert!(blobs.read(&d).is_err());
        assert!(!p.exists(), "a damaged blob is removed");
        assert_eq!(Sha256::parse(&d.to_string()), Some(d));
        assert_eq!(Sha256::parse("sha256:xyz"), None);
    }
}
