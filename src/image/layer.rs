//! Applying an image layer (a tar, gzip- or zstd-compressed or not) to a
//! tree, as container runtimes do: entries in order, `.wh.NAME` removing
//! `NAME` from the layers below, `.wh..wh..opq` hiding everything below
//! its directory in the layers below, hard links to earlier entries, modes
//! and owners kept. File contents stream into the content store.
//!
//! Nothing is extracted to disk, so nothing can be written outside the
//! root; still, a layer that tries — an absolute path, `..`, a path
//! through a symlink (the symlink-then-file trick), a device node or a
//! FIFO — is refused, naming the entry.

use crate::model::tree::{self, Entry, Kind, Tree};
use crate::store::{ContentStore, StoreError};
use std::io::{self, BufReader, Read};

/// Why a layer cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("the entry `{entry}` {why}")]
    Hostile { entry: String, why: &'static str },
    #[error("the layer is damaged: {0}")]
    Damaged(String),
    #[error("the layer expands to more than {}", crate::units::format_size(*.0))]
    TooLarge(u64),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// The bytes of a layer, decompressed by what its first bytes announce.
pub fn decompress<'a>(mut raw: Box<dyn Read + 'a>) -> io::Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match raw.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = io::Cursor::new(magic[..got].to_vec()).chain(raw);
    Ok(if magic[..got].starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(head)))
    } else if magic[..got] == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::new(head)?)
    } else {
        Box::new(head)
    })
}

/// One entry of a layer, read before the layer is applied.
enum Item {
    Put(String, Entry),
    /// A hard link to a path in this layer or below.
    Link(String, String),
}

/// Apply the (uncompressed) layer `tar` to `tree`. At most `limit` bytes of
/// file content are taken.
pub fn apply(
    content: &dyn ContentStore,
    tree: &mut Tree,
    tar: impl Read,
    limit: u64,
) -> Result<(), LayerError> {
    let layer = read(content, tar, limit)?;
    // Whiteouts and opaque directories hide what the layers below hold,
    // never what this layer adds: apply them first.
    for dir in &layer.opaque {
        let below: Vec<String> = tree.descendants(dir).map(|(p, _)| p.clone()).collect();
        for p in below {
            tree.entries.remove(&p);
        }
    }
    for w in &layer.whiteouts {
        tree.remove_all(w);
    }
    for item in layer.items {
        place(tree, item)?;
    }
    Ok(())
}

/// A layer as read: its entries in order, the paths it whites out and
/// the directories it makes opaque.
struct Layer {
    items: Vec<Item>,
    whiteouts: Vec<String>,
    opaque: Vec<String>,
}

/// Read a layer's entries, their contents stored (at most `limit` bytes).
fn read(content: &dyn ContentStore, tar: impl Read, limit: u64) -> Result<Layer, LayerError> {
    let damaged = |e: &dyn std::fmt::Display| LayerError::Damaged(e.to_string());
    let mut archive = tar::Archive::new(tar);
    let mut layer = Layer {
        items: Vec::new(),
        whiteouts: Vec::new(),
        opaque: Vec::new(),
    };
    let mut left = limit;
    for entry in archive.entries().map_err(|e| damaged(&e))? {
        let mut entry = entry.map_err(|e| damaged(&e))?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8(raw.clone()).map_err(|_| LayerError::Hostile {
            entry: String::from_utf8_lossy(&raw).into_owned(),
            why: "has a name that is not UTF-8",
        })?;
        let hostile = |why| LayerError::Hostile {
            entry: name.clone(),
            why,
        };
        let trimmed = name.trim_start_matches("./");
        if trimmed.starts_with('/') {
            return Err(hostile("is an absolute path"));
        }
        let path = inside(trimmed).ok_or_else(|| hostile("climbs out of the root with `..`"))?;
        if path.is_empty() {
            continue;
        }
        let base = tree::basename(&path);
        let dir = tree::parent(&path).to_string();
        if base == ".wh..wh..opq" {
            layer.opaque.push(dir);
            continue;
        }
        if let Some(hidden) = base.strip_prefix(".wh.") {
            layer.whiteouts.push(tree::join(&dir, hidden));
            continue;
        }
        if let Some(item) = item(content, &mut entry, &name, path, &mut left, limit)? {
            layer.items.push(item);
        }
    }
    Ok(layer)
}

/// `path` with `.` and empty parts left out; `None` if it climbs out
/// with `..`.
fn inside(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// What one tar entry puts at `path` (a file's content stored, counted
/// against `left`); `None` for entries that only carry headers.
fn item<R: Read>(
    content: &dyn ContentStore,
    entry: &mut tar::Entry<'_, R>,
    name: &str,
    path: String,
    left: &mut u64,
    limit: u64,
) -> Result<Option<Item>, LayerError> {
    let hostile = |why| LayerError::Hostile {
        entry: name.to_string(),
        why,
    };
    let header = entry.header();
    let mode = header.mode().unwrap_or(0o644) & 0o7777;
    let uid = header.uid().unwrap_or(0) as u32;
    let gid = header.gid().unwrap_or(0) as u32;
    let kind = header.entry_type();
    let entry_of = |kind| Entry {
        kind,
        mode,
        uid,
        gid,
    };
    let target = |entry: &tar::Entry<'_, R>| -> Result<String, LayerError> {
        let bytes = entry
            .link_name_bytes()
            .map(|b| b.into_owned())
            .unwrap_or_default();
        String::from_utf8(bytes).map_err(|_| hostile("links to a path that is not UTF-8"))
    };
    Ok(Some(if kind.is_dir() {
        Item::Put(path, Entry::dir(mode, uid, gid))
    } else if kind.is_symlink() {
        let target = target(entry)?;
        Item::Put(
            path,
            Entry {
                mode: 0o777,
                ..entry_of(Kind::Symlink { target })
            },
        )
    } else if kind.is_hard_link() {
        let t = target(entry)?;
        let t = t.trim_start_matches("./").trim_start_matches('/');
        let t = inside(t).ok_or_else(|| hostile("hard-links to a path outside the root"))?;
        Item::Link(path, t)
    } else if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
        let (blob, size) = match content.put_blob_reader(entry, Some(*left)) {
            Ok(done) => done,
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::FileTooLarge => {
                return Err(LayerError::TooLarge(limit));
            }
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::InvalidData => {
                return Err(LayerError::Damaged(source.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        *left -= size;
        Item::Put(path, entry_of(Kind::File { blob, size }))
    } else if kind.is_pax_global_extensions()
        || kind.is_pax_local_extensions()
        || kind.is_gnu_longname()
        || kind.is_gnu_longlink()
    {
        return Ok(None);
    } else if let Some(kind) = special_kind(entry.header()) {
        Item::Put(path, entry_of(kind))
    } else {
        return Err(hostile("has an entry type kiln does not know"));
    }))
}

/// Put one entry of a layer in the tree.
fn place(tree: &mut Tree, item: Item) -> Result<(), LayerError> {
    let (path, entry) = match item {
        Item::Put(p, e) => (p, e),
        // A hard link is the same file (or symlink: tar links to
        // whatever entry it named): it has the target's mode and owner.
        Item::Link(p, target) => match tree.get(&target) {
            Some(
                e @ Entry {
                    kind: Kind::File { .. } | Kind::Symlink { .. },
                    ..
                },
            ) => (p, e.clone()),
            _ => {
                return Err(LayerError::Hostile {
                    entry: p,
                    why: "hard-links to a file that is not in the image",
                });
            }
        },
    };
    // Parents must be directories, never symlinks: a path through a
    // symlink would be written wherever the link points.
    let mut here = String::new();
    for part in tree::parent(&path).split('/').filter(|p| !p.is_empty()) {
        here = tree::join(&here, part);
        match tree.get(&here) {
            Some(e) if e.is_dir() => {}
            Some(Entry {
                kind: Kind::Symlink { .. },
                ..
            }) => {
                return Err(LayerError::Hostile {
                    entry: path,
                    why: "is written through a symlink",
                });
            }
            // A file where a directory is needed: the later entry wins,
            // as tar does.
            Some(_) | None => {
                tree.entries.insert(here.clone(), Entry::dir(0o755, 0, 0));
            }
        }
    }
    if !entry.is_dir() {
        // A later entry for the same path replaces the earlier one (and
        // what was below it).
        tree.remove_all(&path);
    }
    tree.entries.insert(path, entry);
    Ok(())
}

/// What a tar entry of a device node or FIFO is in a tree (kept as an
/// entry: root file systems hold `/dev/console` and the like; never made
/// where a step runs); `None` for any other type.
pub fn special_kind(header: &tar::Header) -> Option<Kind> {
    let kind = header.entry_type();
    let number = |n: std::io::Result<Option<u32>>| n.ok().flatten().unwrap_or(0);
    if kind.is_character_special() || kind.is_block_special() {
        Some(Kind::Device {
            class: if kind.is_block_special() {
                crate::model::tree::DeviceClass::Block
            } else {
                crate::model::tree::DeviceClass::Char
            },
            major: number(header.device_major()),
            minor: number(header.device_minor()),
        })
    } else if kind.is_fifo() {
        Some(Kind::Fifo)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    /// A layer from (path, kind, data): kind `f` file, `d` dir, `l` symlink
    /// (data = target), `h` hard link (data = target), `c` char device.
    fn layer(entries: &[(&str, char, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            match kind {
                'f' => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    h.set_path(path).unwrap();
                    h.set_cksum();
                    b.append(&h, data.as_bytes()).unwrap();
                }
                'd' => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    h.set_path(path).unwrap();
                    h.set_cksum();
                    b.append(&h, io::empty()).unwrap();
                }
                'l' | 'h' => {
                    h.set_entry_type(if *kind == 'l' {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    });
                    h.set_size(0);
                    h.set_path(path).unwrap();
                    h.set_link_name(data).unwrap();
                    h.set_cksum();
                    b.append(&h, io::empty()).unwrap();
                }
                'c' => {
                    h.set_entry_type(tar::EntryType::Char);
                    h.set_size(0);
                    h.set_path(path).unwrap();
                    h.set_cksum();
                    b.append(&h, io::empty()).unwrap();
                }
                _ => unreachable!(),
            }
        }
        b.into_inner().unwrap()
    }

    /// Write a raw (unchecked) name into a header: the tar crate refuses `..`.
    fn raw_layer(name: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_entry_type(tar::EntryType::Regular);
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn paths(t: &Tree) -> Vec<&str> {
        t.entries.keys().map(String::as_str).collect()
    }

    #[test]
    fn layers_stack_with_whiteouts_and_opaque_directories() {
        let m = MemoryStore::new();
        let mut t = Tree::new();
        let base = layer(&[
            ("etc/", 'd', ""),
            ("etc/a", 'f', "a"),
            ("etc/b", 'f', "b"),
            ("var/", 'd', ""),
            ("var/cache/", 'd', ""),
            ("var/cache/x", 'f', "x"),
            ("bin/sh", 'f', "sh"),
            ("bin/ash", 'h', "bin/sh"),
        ]);
        apply(&m, &mut t, &base[..], 1 << 20).unwrap();
        let top = layer(&[
            ("etc/.wh.a", 'f', ""),
            ("var/cache/.wh..wh..opq", 'f', ""),
            ("var/cache/y", 'f', "y"),
            ("etc/c", 'f', "c"),
        ]);
        apply(&m, &mut t, &top[..], 1 << 20).unwrap();
        assert_eq!(
            paths(&t),
            [
                "bin",
                "bin/ash",
                "bin/sh",
                "etc",
                "etc/b",
                "etc/c",
                "var",
                "var/cache",
                "var/cache/y"
            ]
        );
        assert_eq!(
            t.get("bin/ash").unwrap().kind,
            t.get("bin/sh").unwrap().kind
        );
    }

    #[test]
    fn device_nodes_are_kept_as_entries() {
        let m = MemoryStore::new();
        let mut t = Tree::new();
        let bytes = layer(&[("dev/", 'd', ""), ("dev/console", 'c', "")]);
        apply(&m, &mut t, &bytes[..], 1 << 20).unwrap();
        assert!(matches!(
            t.get("dev/console").map(|e| &e.kind),
            Some(Kind::Device {
                class: crate::model::tree::DeviceClass::Char,
                ..
            })
        ));
    }

    #[test]
    fn a_hard_link_to_a_symlink_is_the_same_symlink() {
        let m = MemoryStore::new();
        let mut t = Tree::new();
        let bytes = layer(&[("lib", 'l', "usr/lib"), ("lib64", 'h', "lib")]);
        apply(&m, &mut t, &bytes[..], 1 << 20).unwrap();
        assert_eq!(
            t.get("lib64").unwrap().kind,
            Kind::Symlink {
                target: "usr/lib".into()
            }
        );
    }

    #[test]
    fn hostile_layers_are_refused() {
        let m = MemoryStore::new();
        for (bytes, says) in [
            (raw_layer(b"../../etc/passwd"), "climbs out"),
            (raw_layer(b"/etc/passwd"), "absolute"),
            (
                layer(&[("etc", 'l', "/host-etc"), ("etc/passwd", 'f', "evil")]),
                "through a symlink",
            ),
            (layer(&[("x", 'h', "nowhere")]), "not in the image"),
        ] {
            let mut t = Tree::new();
            let err = apply(&m, &mut t, &bytes[..], 1 << 20).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn compressed_layers_are_recognised() {
        let plain = layer(&[("f", 'f', "hello")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &plain).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&plain[..], 3).unwrap();
        for bytes in [plain.clone(), gz, zst] {
            let m = MemoryStore::new();
            let mut t = Tree::new();
            let r = decompress(Box::new(io::Cursor::new(bytes))).unwrap();
            apply(&m, &mut t, r, 1 << 20).unwrap();
            assert_eq!(paths(&t), ["f"]);
        }
    }

    #[test]
    fn the_expanded_size_is_bounded() {
        let m = MemoryStore::new();
        let mut t = Tree::new();
        let big = layer(&[("f", 'f', &"x".repeat(1000))]);
        assert!(matches!(
            apply(&m, &mut t, &big[..], 999),
            Err(LayerError::TooLarge(999))
        ));
    }
}
