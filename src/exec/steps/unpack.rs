//! Extracting tar archives, as Docker's `ADD` does for local sources: a
//! file that is a tar archive (plain, gzip, bzip2, xz or zstd, recognised by its
//! content, not its name) becomes the directory it holds.
//!
//! Archives are streamed: the archive blob is verified, then decompressed
//! and read entry by entry, each file going straight into the store. No
//! entry is ever held in memory whole, and the expanded size is bounded
//! (`--max-unpack-size`), so a small archive that expands to terabytes
//! (a "bomb") is stopped with an error instead of filling the disk.

use crate::model::digest::BlobDigest;
use crate::model::tree::{self, Entry, Kind, Links};
use crate::store::{BlobRead, ContentStore, CopyError, StoreError};
use std::collections::BTreeMap;
use std::io::{self, BufReader, Read};

/// The expanded size allowed when none is given.
pub const DEFAULT_LIMIT: u64 = 8 << 30;

/// Why an archive could not be extracted.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("the archive is damaged: {0}")]
    Damaged(String),
    #[error("the archive entry `{0}` leads outside the destination")]
    Escapes(String),
    #[error("the archive entry `{0}` is of a kind tar archives of files do not hold")]
    Special(String),
    #[error("the archive hard-links `{0}` to `{1}`, which is not earlier in the archive")]
    BadLink(String, String),
    #[error("the archive has an entry whose {0} is not UTF-8 (`{1}`)")]
    NotUtf8(&'static str, String),
    #[error("the archive expands to more than {} (the limit); it may be an archive bomb", crate::units::format_size(*.0))]
    TooLarge(u64),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Counts what passes and fails once more than `limit` bytes did.
struct Counted<R> {
    inner: R,
    count: u64,
    limit: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, "limit"));
        }
        Ok(n)
    }
}

/// xz has no streaming reader in lzma-rs: decompress on a (scoped) thread
/// into a bounded channel, which this end reads. (lzma-rust2's `XzReader`
/// streams, but allocates the dictionary size an archive's header names
/// up front: a few bytes of hostile `.xz` would cost 1.5 GiB of memory.
/// lzma-rs grows its window with what is actually written, and the
/// output is capped by `Counted`.)
struct XzReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
}

struct ChannelWriter(std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>);

impl io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .send(Ok(buf.to_vec()))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "reader gone"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl XzReader {
    fn new<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        input: Box<dyn BlobRead + 'scope>,
    ) -> XzReader {
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        scope.spawn(move || {
            let mut input = BufReader::new(input);
            let mut out = io::BufWriter::with_capacity(64 * 1024, ChannelWriter(tx.clone()));
            let r = lzma_rs::xz_decompress(&mut input, &mut out)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
                .and_then(|_| io::Write::flush(&mut out));
            if let Err(e) = r {
                let _ = tx.send(Err(e));
            }
        });
        XzReader {
            rx,
            chunk: Vec::new(),
            at: 0,
        }
    }
}

impl Read for XzReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(c)) => {
                    self.chunk = c;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn damaged(e: &dyn std::fmt::Display) -> UnpackError {
    UnpackError::Damaged(e.to_string())
}

/// The blob's bytes, decompressed if they start like a compressed stream.
/// Also says whether they were compressed.
fn open_stream<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    content: &'scope dyn ContentStore,
    blob: BlobDigest,
) -> Result<(Box<dyn Read + 'scope>, bool), UnpackError> {
    // Verify the whole archive first: what is extracted must be the bytes
    // the key was made from (the stream is verified again as it is read).
    match content.copy_blob(blob, &mut io::sink()) {
        Ok(_) => {}
        Err(CopyError::Store(e)) => return Err(e.into()),
        Err(CopyError::Write(e)) => return Err(damaged(&e)),
    }
    let mut magic = [0u8; 6];
    let got = {
        let mut r = content.blob_reader(blob)?;
        let mut got = 0;
        while got < magic.len() {
            match r.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(damaged(&e)),
            }
        }
        got
    };
    let head = &magic[..got];
    let raw = content.blob_reader(blob)?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        (
            Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(raw))),
            true,
        )
    } else if head.starts_with(b"BZh") {
        (
            Box::new(bzip2::read::MultiBzDecoder::new(BufReader::new(raw))),
            true,
        )
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        (Box::new(XzReader::new(scope, raw)), true)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let z = zstd::stream::read::Decoder::new(raw).map_err(|e| damaged(&e))?;
        (Box::new(z), true)
    } else {
        (Box::new(raw), false)
    })
}

/// Whether a 512-byte block is a valid tar header.
fn is_tar(block: &[u8]) -> bool {
    if block.len() < 512 {
        return false;
    }
    let Ok(stored) = tar::Header::from_byte_slice(&block[..512]).cksum() else {
        return false;
    };
    // The checksum counts the checksum field itself as eight spaces.
    let sum: u32 = block[..512]
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

/// If the blob holds a tar archive, its entries as paths relative to the
/// extraction directory, parents first; `None` if it is not an archive.
/// At most `limit` bytes of file content are extracted.
pub fn unpack(
    content: &dyn ContentStore,
    blob: BlobDigest,
    limit: u64,
) -> Result<Option<Vec<(String, Entry)>>, UnpackError> {
    std::thread::scope(|scope| unpack_in(scope, content, blob, limit))
}

fn unpack_in<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    store: &'scope dyn ContentStore,
    blob: BlobDigest,
    limit: u64,
) -> Result<Option<Vec<(String, Entry)>>, UnpackError> {
    let (stream, compressed) = open_stream(scope, store, blob)?;
    // The decompressed stream holds headers besides content: allow it twice
    // the content limit (and at least a little).
    let mut stream = Counted {
        inner: stream,
        count: 0,
        limit: limit.saturating_mul(2).max(1 << 20),
    };
    let mut first = vec![0u8; 512];
    let mut got = 0;
    while got < first.len() {
        match stream.read(&mut first[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A file that merely starts like a compressed stream is copied as is.
            Err(_) if compressed => return Ok(None),
            Err(e) => return Err(damaged(&e)),
        }
    }
    if !is_tar(&first[..got]) {
        return Ok(None);
    }
    let mut out: BTreeMap<String, Entry> = BTreeMap::new();
    let mut left = limit;
    let stream = io::Cursor::new(first).chain(stream);
    let mut archive = tar::Archive::new(stream);
    let too_large = |e: &io::Error| e.kind() == io::ErrorKind::FileTooLarge;
    let entries = archive.entries().map_err(|e| damaged(&e))?;
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) if too_large(&e) => return Err(UnpackError::TooLarge(limit)),
            Err(e) => return Err(damaged(&e)),
        };
        let raw_bytes = entry.path_bytes().into_owned();
        let raw = String::from_utf8(raw_bytes.clone()).map_err(|_| {
            UnpackError::NotUtf8("name", String::from_utf8_lossy(&raw_bytes).into_owned())
        })?;
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
        let link_target = |entry: &tar::Entry<'_, _>| -> Result<String, UnpackError> {
            let bytes = entry
                .link_name_bytes()
                .map(|b| b.into_owned())
                .unwrap_or_default();
            String::from_utf8(bytes).map_err(|e| {
                UnpackError::NotUtf8(
                    "link target",
                    String::from_utf8_lossy(e.as_bytes()).into_owned(),
                )
            })
        };
        let e = if kind.is_dir() {
            Entry::dir(mode, uid, gid)
        } else if kind.is_symlink() {
            Entry {
                kind: Kind::Symlink {
                    target: link_target(&entry)?,
                },
                mode: 0o777,
                uid,
                gid,
            }
        } else if kind.is_hard_link() {
            let target = link_target(&entry)?;
            let clean = tree::components(&target, Links::Confined)
                .map_err(|_| UnpackError::Escapes(target.clone()))?
                .join("/");
            match out.get(&clean) {
                Some(e) if matches!(e.kind, Kind::File { .. } | Kind::Symlink { .. }) => e.clone(),
                _ => return Err(UnpackError::BadLink(path, target)),
            }
        } else if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            let (blob, size) = match store.put_blob_reader(&mut entry, Some(left)) {
                Ok(done) => done,
                Err(StoreError::Io { source, .. }) if too_large(&source) => {
                    return Err(UnpackError::TooLarge(limit));
                }
                Err(e) => return Err(e.into()),
            };
            left -= size;
            Entry {
                kind: Kind::File { blob, size },
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
        } else if let Some(kind) = crate::image::layer::special_kind(header) {
            // Kept as an entry, as an image layer's are; never made on disk.
            Entry {
                kind,
                mode,
                uid,
                gid,
            }
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

    fn unpack(s: &Store, bytes: &[u8]) -> Result<Option<Vec<(String, Entry)>>, UnpackError> {
        use crate::store::ContentStore;
        let blob = s.put_blob(bytes).expect("store");
        super::unpack(s, blob, DEFAULT_LIMIT)
    }

    use crate::store::Store;

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

    #[test]
    fn bombs_stop_at_the_limit_without_holding_entries_in_memory() {
        use crate::store::ContentStore;
        let (_d, s) = store();
        // 64 MiB of zeros, gzipped to a few dozen KiB.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(64 << 20);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "zeros", io::repeat(0).take(64 << 20))
            .expect("append");
        let tar = b.into_inner().expect("finish");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        io::Write::write_all(&mut gz, &tar).expect("gzip");
        let gz = gz.finish().expect("gzip");
        assert!(gz.len() < 1 << 20);
        let blob = s.put_blob(&gz).expect("store");
        match super::unpack(&s, blob, 16 << 20) {
            Err(UnpackError::TooLarge(l)) => assert_eq!(l, 16 << 20),
            other => panic!("expected a size error, got {other:?}"),
        }
        // Within the limit it extracts, streamed into the store.
        let items = super::unpack(&s, blob, 64 << 20)
            .expect("ok")
            .expect("archive");
        assert_eq!(items.len(), 1);
        assert!(matches!(items[0].1.kind, Kind::File { size, .. } if size == 64 << 20));
    }

    #[test]
    fn zstd_archives_extract() {
        let (_d, s) = store();
        let tar = archive();
        let zst = zstd::encode_all(&tar[..], 3).expect("zstd");
        let items = unpack(&s, &zst).expect("unpack").expect("an archive");
        assert_eq!(items.len(), 4);
    }

    #[test]
    fn xz_archives_stream_and_non_utf8_targets_are_refused() {
        let (_d, s) = store();
        let tar = archive();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &tar[..], &mut xz).expect("xz");
        let items = unpack(&s, &xz).expect("unpack").expect("an archive");
        assert_eq!(items.len(), 4);

        let mut b = tar::Builder::new(Vec::new());
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        l.set_link_name_literal(&b"caf\xe9"[..]).expect("name");
        b.append_data(&mut l, "link", io::empty()).expect("link");
        let bytes = b.into_inner().expect("finish");
        assert!(matches!(
            unpack(&s, &bytes),
            Err(UnpackError::NotUtf8("link target", _))
        ));
    }
}
