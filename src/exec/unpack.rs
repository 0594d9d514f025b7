//! Extracting tar archives, as Docker's `ADD` does for local sources: a
//! file that is a tar archive (plain, gzip, bzip2 or xz, recognised by its
//! content, not its name) becomes the directory it holds.

use crate::store::Store;
use crate::store::tree::{self, Entry, Kind, Links};
use std::collections::BTreeMap;
use std::io::Read;

/// Why an archive could not be extracted.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("the archive is damaged: {0}")]
    Damaged(String),
    #[error("the archive entry `{0}` leads outside the destination")]
    Escapes(String),
    #[error("the archive entry `{0}` is a device or fifo, which kiln does not create")]
    Special(String),
    #[error("the archive hard-links `{0}` to `{1}`, which is not earlier in the archive")]
    BadLink(String, String),
    #[error("cannot store the archive's files: {0}")]
    Store(#[from] std::io::Error),
}

/// The compression an archive's first bytes announce.
fn decompress(bytes: &[u8]) -> Result<Vec<u8>, UnpackError> {
    let damaged = |e: &dyn std::fmt::Display| UnpackError::Damaged(e.to_string());
    let mut out = Vec::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| damaged(&e))?;
    } else if bytes.starts_with(b"BZh") {
        bzip2::read::MultiBzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| damaged(&e))?;
    } else if bytes.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        lzma_rs::xz_decompress(&mut std::io::BufReader::new(bytes), &mut out)
            .map_err(|e| damaged(&e))?;
    } else {
        return Ok(bytes.to_vec());
    }
    Ok(out)
}

/// Whether `bytes` (decompressed) start with a valid tar header.
fn is_tar(bytes: &[u8]) -> bool {
    let Some(block) = bytes.get(..512) else {
        return false;
    };
    let Ok(stored) = tar::Header::from_byte_slice(block).cksum() else {
        return false;
    };
    // The checksum counts the checksum field itself as eight spaces.
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                *b as u32
            }
        })
        .sum();
    sum == stored
}

/// If `bytes` hold a tar archive, its entries as paths relative to the
/// extraction directory, parents first; `None` if it is not an archive.
pub fn unpack(store: &Store, bytes: &[u8]) -> Result<Option<Vec<(String, Entry)>>, UnpackError> {
    let compressed = bytes.starts_with(&[0x1f, 0x8b])
        || bytes.starts_with(b"BZh")
        || bytes.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]);
    let data = match decompress(bytes) {
        Ok(d) => d,
        // A file that merely starts like a compressed stream is copied as is.
        Err(_) if compressed => return Ok(None),
        Err(e) => return Err(e),
    };
    if !is_tar(&data) {
        return Ok(None);
    }
    let mut out: BTreeMap<String, Entry> = BTreeMap::new();
    let mut archive = tar::Archive::new(data.as_slice());
    let entries = archive
        .entries()
        .map_err(|e| UnpackError::Damaged(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| UnpackError::Damaged(e.to_string()))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = tree::components(&raw, Links::Confined)
            .map_err(|_| UnpackError::Escapes(raw.clone()))?
            .join("/");
        if path.is_empty() {
            continue;
        }
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let kind = header.entry_type();
        let e = if kind.is_dir() {
            Entry::dir(mode, uid, gid)
        } else if kind.is_symlink() {
            let target = entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            Entry {
                kind: Kind::Symlink { target },
                mode: 0o777,
                uid,
                gid,
            }
        } else if kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let clean = tree::components(&target, Links::Confined)
                .map_err(|_| UnpackError::Escapes(target.clone()))?
                .join("/");
            match out.get(&clean) {
                Some(e) if matches!(e.kind, Kind::File { .. }) => e.clone(),
                _ => return Err(UnpackError::BadLink(path, target)),
            }
        } else if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            let mut content = Vec::new();
            entry
                .read_to_end(&mut content)
                .map_err(|e| UnpackError::Damaged(e.to_string()))?;
            let blob = store.put_blob(&content)?;
            Entry {
                kind: Kind::File {
                    blob,
                    size: content.len() as u64,
                },
                mode,
                uid,
                gid,
            }
        } else if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            continue;
        } else {
            return Err(UnpackError::Special(path));
        };
        // Parents the archive does not list are created as Docker does.
        let mut parent = tree::parent(&path);
        while !parent.is_empty() {
            out.entry(parent.to_string())
                .or_insert_with(|| Entry::dir(0o755, 0, 0));
            parent = tree::parent(parent);
        }
        // A later entry for the same path replaces the earlier one, as tar does.
        if !e.is_dir() {
            let below = format!("{path}/");
            out.retain(|p, _| !p.starts_with(&below));
        }
        out.insert(path, e);
    }
    Ok(Some(out.into_iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(5);
        h.set_mode(0o640);
        h.set_uid(7);
        h.set_gid(8);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "dir/sub/file.txt", &b"hello"[..])
            .expect("append");
        let mut l = tar::Header::new_ustar();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        b.append_link(&mut l, "link", "dir/sub/file.txt")
            .expect("link");
        b.into_inner().expect("finish")
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path(), crate::store::Access::Shared).expect("store");
        (dir, s)
    }

    #[test]
    fn plain_and_gzip_archives_extract() {
        let (_d, s) = store();
        let tar = archive();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).expect("gzip");
        let gz = gz.finish().expect("gzip");
        for bytes in [tar.clone(), gz] {
            let items = unpack(&s, &bytes).expect("unpack").expect("an archive");
            let paths: Vec<&str> = items.iter().map(|(p, _)| p.as_str()).collect();
            assert_eq!(paths, ["dir", "dir/sub", "dir/sub/file.txt", "link"]);
            let f = &items[2].1;
            assert_eq!((f.mode, f.uid, f.gid), (0o640, 7, 8));
        }
    }

    #[test]
    fn other_files_are_not_archives() {
        let (_d, s) = store();
        assert!(unpack(&s, b"just text").expect("ok").is_none());
        assert!(unpack(&s, &[0u8; 2048]).expect("ok").is_none());
        // Starts like gzip but is not: copied as is.
        assert!(unpack(&s, &[0x1f, 0x8b, 1, 2, 3]).expect("ok").is_none());
    }

    #[test]
    fn entries_cannot_escape() {
        let (_d, s) = store();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_entry_type(tar::EntryType::Regular);
        // Written raw: the tar crate refuses `..` in `append_data`.
        let name = b"../../etc/evil";
        h.as_gnu_mut().expect("gnu").name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, &b"x"[..]).expect("append");
        let bytes = b.into_inner().expect("finish");
        match unpack(&s, &bytes) {
            Err(UnpackError::Escapes(p)) => assert_eq!(p, "../../etc/evil"),
            other => panic!("expected an escape error, got {other:?}"),
        }
    }
}
