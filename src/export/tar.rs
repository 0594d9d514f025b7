//! Deterministic tar: entries in path order, every mtime the same, owners
//! and modes from the tree, no user or group names, no host metadata.

use super::{Failed, Settings, Stores, store_failed};
use crate::diag::Diagnostic;
use crate::model::tree::{DeviceClass, Entry, Kind, Tree};
use crate::store::StoreError;
use rayon::prelude::*;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// Write `tree` as a tar archive to `dest` (a new file, renamed into
/// place by the caller). Not forced to disk (no fsync), as `tar` and `cp`
/// do not: forcing 100 MB out cost more than writing it. After a power
/// loss that left it short, the next build sees its stamp changed and
/// writes it again.
pub fn write(
    store: Stores<'_>,
    tree: &Tree,
    dest: &Path,
    settings: &Settings,
) -> Result<(), Failed> {
    let file = File::create(dest).map_err(|e| err(dest, e))?;
    let out = write_to(store, tree, BufWriter::new(file), settings, dest)?;
    out.into_inner()
        .map_err(|e| Failed::Error(err(dest, e.into_error())))?;
    Ok(())
}

fn err(dest: &Path, e: io::Error) -> Diagnostic {
    let d = Diagnostic::io("cannot write", dest, &e);
    if d.help.is_some() {
        d
    } else {
        d.with_help("check free space and that the destination's directory is writable")
    }
}

/// Write `tree` as a tar archive to `out`; `shown` names it in errors.
/// Every file's bytes are verified as they pass: a damaged blob fails the
/// archive (and is quarantined).
pub fn write_to<W: Write>(
    store: Stores<'_>,
    tree: &Tree,
    out: W,
    settings: &Settings,
    shown: &Path,
) -> Result<W, Failed> {
    let e = |e: io::Error| Failed::Error(err(shown, e));
    let mut b = ::tar::Builder::new(out);
    let entries: Vec<_> = tree.entries.iter().collect();
    // Small files are read (and verified) in batches on all cores, the
    // next batch while this one is written: a tree of many small files
    // costs its reads spread over the cores, not one open after another.
    let read = |batch: &[(&String, &Entry)]| -> Vec<Option<Result<Vec<u8>, StoreError>>> {
        batch
            .par_iter()
            .map(|(_, entry)| match &entry.kind {
                Kind::File { blob, size } if *size <= READ_AHEAD_FILE => {
                    Some(store.content.read_blob(*blob))
                }
                _ => None,
            })
            .collect()
    };
    std::thread::scope(|scope| -> Result<(), Failed> {
        let (send, receive) = std::sync::mpsc::sync_channel(1);
        let (entries, read) = (&entries, &read);
        let reader = std::thread::Builder::new()
            .name("kiln-tar-read".into())
            .spawn_scoped(scope, move || {
                for batch in entries.chunks(BATCH) {
                    // The writer stopped (it failed): so does the reading.
                    if send.send((batch, read(batch))).is_err() {
                        return;
                    }
                }
            });
        if reader.is_err() {
            // No thread to read ahead on: each batch is read here.
            for batch in entries.chunks(BATCH) {
                for ((path, entry), content) in batch.iter().zip(read(batch)) {
                    append(&mut b, store, path, entry, content, settings, shown)?;
                }
            }
            return Ok(());
        }
        for (batch, contents) in receive {
            for ((path, entry), content) in batch.iter().zip(contents) {
                append(&mut b, store, path, entry, content, settings, shown)?;
            }
        }
        Ok(())
    })?;
    b.into_inner().map_err(e)
}

/// Entries read ahead together.
const BATCH: usize = 512;
/// Files up to this size are read ahead whole (so at most three batches,
/// 48 MiB, are held at once: one read, one queued, one written).
const READ_AHEAD_FILE: u64 = 32 * 1024;

/// Append one entry; `content` is a file's bytes when they were read ahead.
fn append<W: Write>(
    b: &mut ::tar::Builder<W>,
    store: Stores<'_>,
    path: &str,
    entry: &Entry,
    content: Option<Result<Vec<u8>, StoreError>>,
    settings: &Settings,
    shown: &Path,
) -> Result<(), Failed> {
    let e = |e: io::Error| Failed::Error(err(shown, e));
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
                .map_err(e)?;
        }
        Kind::File { blob, size } => {
            h.set_entry_type(::tar::EntryType::Regular);
            h.set_size(*size);
            if let Some(content) = content {
                let bytes = content.map_err(store_failed)?;
                if bytes.len() as u64 != *size {
                    // The tree and its blob disagree: the store is damaged.
                    return Err(Failed::Damaged(err(
                        shown,
                        io::Error::other(format!("`{path}` is not the size its tree says")),
                    )));
                }
                b.append_data(&mut h, path, &bytes[..]).map_err(e)?;
                return Ok(());
            }
            let mut reader = store.content.blob_reader(*blob).map_err(store_failed)?;
            if let Err(io_err) = b.append_data(&mut h, path, &mut reader) {
                return Err(match reader.failure() {
                    Some(store_side) => store_failed(store_side),
                    None => Failed::Error(err(shown, io_err)),
                });
            }
        }
        Kind::Symlink { target } => {
            h.set_entry_type(::tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, path, target).map_err(e)?;
        }
        Kind::Device { .. } | Kind::Fifo => {
            special_header(&mut h, &entry.kind).map_err(e)?;
            b.append_data(&mut h, path, io::empty()).map_err(e)?;
        }
    }
    Ok(())
}

/// Make `h` the header of a device node or FIFO (no data), as an image
/// layer holds one.
pub(super) fn special_header(h: &mut ::tar::Header, kind: &Kind) -> io::Result<()> {
    h.set_size(0);
    match kind {
        Kind::Device {
            class,
            major,
            minor,
        } => {
            h.set_entry_type(match class {
                DeviceClass::Block => ::tar::EntryType::Block,
                DeviceClass::Char => ::tar::EntryType::Char,
            });
            h.set_device_major(*major)?;
            h.set_device_minor(*minor)?;
        }
        Kind::Fifo => h.set_entry_type(::tar::EntryType::Fifo),
        Kind::File { .. } | Kind::Dir | Kind::Symlink { .. } => {
            return Err(io::Error::other("not a device node or FIFO"));
        }
    }
    Ok(())
}
