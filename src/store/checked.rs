//! Small state files that vouch for themselves: the stat index, the parse
//! cache, the build memo and the build records.
//!
//! Each file is `magic ‖ blake3(magic ‖ body) ‖ body`. A file whose
//! checksum does not match (bit rot, a torn write from another tool, a
//! stray edit, a file of another format) reads as absent, so kiln falls
//! back to the slow, correct path: it parses, hashes or builds again and
//! writes a good file. The checksum guards against damage, not against
//! someone who can write the state directory on purpose: such a person can
//! also write valid cache records.

use std::fs;
use std::io;
use std::path::Path;

const HASH: usize = 32;

/// The magic of a record of the image layer cache (`layers/<key>.json`):
/// it names its key, so a record under another key's name reads as absent.
pub fn layer_record_magic(key: &str) -> Vec<u8> {
    format!("KILNLAYER2 {key}\n").into_bytes()
}

/// Encode `body` under `magic`.
pub fn encode(magic: &[u8], body: &[u8]) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(magic);
    h.update(body);
    let mut out = Vec::with_capacity(magic.len() + HASH + body.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(h.finalize().as_bytes());
    out.extend_from_slice(body);
    out
}

/// The body of an encoded file, if its magic and checksum hold.
pub fn decode<'a>(magic: &[u8], bytes: &'a [u8]) -> Option<&'a [u8]> {
    let rest = bytes.strip_prefix(magic)?;
    if rest.len() < HASH {
        return None;
    }
    let (sum, body) = rest.split_at(HASH);
    let mut h = blake3::Hasher::new();
    h.update(magic);
    h.update(body);
    (h.finalize().as_bytes() == sum).then_some(body)
}

/// Read and check a file; `None` when it is missing or damaged.
pub fn read(path: &Path, magic: &[u8]) -> Option<Vec<u8>> {
    let bytes = fs::read(path).ok()?;
    decode(magic, &bytes).map(<[u8]>::to_vec)
}

/// Write a file atomically: a temp file beside it, then a rename.
pub fn write(path: &Path, magic: &[u8], body: &[u8]) -> io::Result<()> {
    let Some(dir) = path.parent() else {
        return Err(io::Error::other("a state file needs a directory"));
    };
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.{}", std::process::id(), unique()));
    let result = fs::write(&tmp, encode(magic, body)).and_then(|_| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A number no other temp name of this process has had.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_damage_reads_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("f");
        write(&p, b"TEST1", b"hello world").unwrap();
        assert_eq!(read(&p, b"TEST1").as_deref(), Some(&b"hello world"[..]));
        assert_eq!(read(&p, b"TEST2"), None, "another format");
        let good = fs::read(&p).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            assert_eq!(decode(b"TEST1", &bad), None, "flipped byte {i}");
        }
        assert_eq!(decode(b"TEST1", &good[..good.len() - 1]), None, "torn");
        assert_eq!(read(&dir.path().join("missing"), b"TEST1"), None);
        // No temp files are left behind.
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
