//! Images out: a stage as an OCI image (a layout directory, the same as
//! one tar, or a `docker load` archive), bytes that depend on the tree,
//! the config and the settings alone.
//!
//! Layers: the base image's, byte for byte (the same digests as the image
//! pulled, so a registry has them already), then one layer of what the
//! stage's steps changed on it: files added or changed, with their parent
//! directories, and a whiteout (`.wh.NAME`) for each path removed. A stage
//! on `scratch` is one layer. Layers are deterministic (entries in path
//! order, every mtime the epoch, no user names, gzip without a time or
//! name) and cached by the trees they come from, so a re-export
//! compresses nothing. The config and manifest are JSON with sorted keys.

use super::{Failed, Settings, Stores, env_err, store_failed};
use crate::diag::Code;
use crate::diag::Diagnostic;
use crate::model::digest::{Sha256, TreeDigest};
use crate::model::state::ImageConfig;
use crate::model::tree::{Entry, Kind, Tree};
use crate::store::oci::OciBlobs;
use serde_json::{Value, json};
use sha2::Digest;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub use crate::ir::Compression;

fn media_type(c: Compression) -> &'static str {
    match c {
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
    }
}

/// A layer of the image: its blob (in the image store) and the digest of
/// its uncompressed tar.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layer {
    pub digest: Sha256,
    pub size: u64,
    pub media_type: String,
    pub diff_id: Sha256,
}

/// The image a stage is built on, kept byte for byte.
pub struct Base {
    pub tree_digest: TreeDigest,
    pub layers: Vec<Layer>,
    /// The base config's `history`.
    pub history: Vec<Value>,
}

/// What the image is made of besides the stage's tree.
pub struct ImageSpec {
    pub base: Option<Base>,
    pub config: ImageConfig,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    /// `NAME:TAG` (or just a tag, for an OCI layout's ref name).
    pub tag: Option<String>,
    pub compression: Compression,
    /// The image's own layers, bottom first: each the change from the
    /// tree below it (the base's, or the previous one) to its tree.
    pub own: Vec<Segment>,
    /// Steps after the last layer that changed only the config: a history
    /// entry without a layer.
    pub tail: Option<Segment>,
}

/// One layer the stage's steps made: the tree it leads to, and the steps,
/// for the config's `history`.
#[derive(Clone, Debug)]
pub struct Segment {
    pub tree: TreeDigest,
    pub created_by: String,
}

impl Segment {
    pub fn new(tree: TreeDigest, steps: &[String]) -> Segment {
        let mut created_by = format!("kiln: {}", steps.join("; "));
        if created_by.len() > 4096 {
            let mut cut = 4093;
            while !created_by.is_char_boundary(cut) {
                cut -= 1;
            }
            created_by.truncate(cut);
            created_by.push_str("...");
        }
        Segment { tree, created_by }
    }
}

impl ImageSpec {
    /// Everything besides the tree that decides the image's bytes.
    pub fn describe(&self) -> String {
        format!(
            "base={} os={} arch={} variant={:?} tag={:?} compression={} config={} layers={} then={}",
            self.base
                .as_ref()
                .map(|b| b
                    .layers
                    .iter()
                    .map(|l| l.digest.to_string())
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default(),
            self.os,
            self.architecture,
            self.variant,
            self.tag,
            self.compression.name(),
            serde_json::to_string(&self.config).unwrap_or_default(),
            self.own
                .iter()
                .map(|l| format!("{}:{}", l.tree, l.created_by))
                .collect::<Vec<_>>()
                .join("\n"),
            self.tail
                .as_ref()
                .map(|t| t.created_by.as_str())
                .unwrap_or(""),
        )
    }
}

/// The image, written: its blobs in the image store, and the documents.
pub struct Built {
    pub layers: Vec<Layer>,
    pub config: Vec<u8>,
    pub config_digest: Sha256,
    pub manifest: Vec<u8>,
    pub manifest_digest: Sha256,
}

fn io_failed(what: &str, path: &Path, e: io::Error) -> Failed {
    Failed::Error(env_err(what, path, &e))
}

/// Make the image of `tree`: the layers (from the cache when there) and
/// the config and manifest.
pub fn build(
    store: Stores<'_>,
    tree: &Tree,
    tree_digest: TreeDigest,
    spec: &ImageSpec,
    settings: &Settings,
    in_memory: &dyn Fn(TreeDigest) -> Option<std::sync::Arc<Tree>>,
) -> Result<Built, Failed> {
    let blobs = OciBlobs::new(store.scratch.layout());
    let mut layers: Vec<Layer> = spec
        .base
        .as_ref()
        .map(|b| b.layers.clone())
        .unwrap_or_default();
    let mut history: Vec<Value> = spec
        .base
        .as_ref()
        .map(|b| b.history.clone())
        .unwrap_or_default();
    let created = rfc3339(settings.epoch);
    // Trees are loaded only for layers not in the cache: those the build
    // holds in memory as they are, the rest from the store, each once
    // (a segment's tree is the next one's base; two are kept).
    let loaded: std::cell::RefCell<Vec<(TreeDigest, std::sync::Arc<Tree>)>> = Default::default();
    let load = |d: Option<TreeDigest>| -> Result<Held<'_>, Failed> {
        let Some(d) = d else {
            return Ok(Held::Shared(Default::default()));
        };
        if d == tree_digest {
            return Ok(Held::Borrowed(tree));
        }
        let held = in_memory(d).or_else(|| {
            let loaded = loaded.borrow();
            loaded.iter().find(|(l, _)| *l == d).map(|(_, t)| t.clone())
        });
        let t = match held {
            Some(t) => t,
            None => {
                let t = std::sync::Arc::new(store.content.get_tree(d).map_err(store_failed)?);
                let mut loaded = loaded.borrow_mut();
                if loaded.len() == 2 {
                    loaded.remove(0);
                }
                loaded.push((d, t.clone()));
                t
            }
        };
        Ok(Held::Shared(t))
    };
    let mut below = spec.base.as_ref().map(|b| b.tree_digest);
    for seg in &spec.own {
        layers.push(own_layer(
            store,
            &blobs,
            (below, seg.tree),
            &load,
            spec.compression,
            settings,
        )?);
        history.push(json!({
            "created": created,
            "created_by": seg.created_by,
            "comment": "kiln",
        }));
        below = Some(seg.tree);
    }
    if let Some(t) = &spec.tail {
        history.push(json!({
            "created": created,
            "created_by": t.created_by,
            "comment": "kiln",
            "empty_layer": true,
        }));
    }
    let config = config_json(spec, &layers, history, &created);
    let config = serde_json::to_vec(&config)
        .map_err(|e| Failed::Error(Diagnostic::internal(format!("image config: {e}"))))?;
    let config_digest = blobs.put_bytes(&config).map_err(store_failed)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {
            "mediaType": MEDIA_CONFIG,
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.media_type,
            "digest": l.digest.to_string(),
            "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest)
        .map_err(|e| Failed::Error(Diagnostic::internal(format!("image manifest: {e}"))))?;
    let manifest_digest = blobs.put_bytes(&manifest).map_err(store_failed)?;
    Ok(Built {
        layers,
        config,
        config_digest,
        manifest,
        manifest_digest,
    })
}

/// The OCI image config, as Docker writes it (its `Healthcheck` and
/// `OnBuild` beside the OCI fields).
fn config_json(spec: &ImageSpec, layers: &[Layer], history: Vec<Value>, created: &str) -> Value {
    let c = &spec.config;
    let mut cfg = serde_json::Map::new();
    if let Some(u) = &c.user {
        cfg.insert("User".into(), json!(u));
    }
    if !c.exposed_ports.is_empty() {
        let ports: serde_json::Map<String, Value> = c
            .exposed_ports
            .iter()
            .map(|p| {
                let p = if p.contains('/') {
                    p.clone()
                } else {
                    format!("{p}/tcp")
                };
                (p, json!({}))
            })
            .collect();
        cfg.insert("ExposedPorts".into(), Value::Object(ports));
    }
    if !c.env.is_empty() {
        cfg.insert(
            "Env".into(),
            json!(
                c.env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
            ),
        );
    }
    if let Some(e) = &c.entrypoint {
        cfg.insert("Entrypoint".into(), json!(e));
    }
    if let Some(cmd) = &c.cmd {
        cfg.insert("Cmd".into(), json!(cmd));
    }
    if !c.volumes.is_empty() {
        let v: serde_json::Map<String, Value> =
            c.volumes.iter().map(|v| (v.clone(), json!({}))).collect();
        cfg.insert("Volumes".into(), Value::Object(v));
    }
    if let Some(w) = &c.workdir {
        cfg.insert("WorkingDir".into(), json!(w));
    }
    if !c.labels.is_empty() {
        cfg.insert("Labels".into(), json!(c.labels));
    }
    if let Some(s) = &c.stop_signal {
        cfg.insert("StopSignal".into(), json!(s));
    }
    if let Some(h) = &c.healthcheck {
        let mut hc = serde_json::Map::new();
        hc.insert("Test".into(), json!(h.test));
        for (k, v) in [
            ("Interval", h.interval),
            ("Timeout", h.timeout),
            ("StartPeriod", h.start_period),
            ("StartInterval", h.start_interval),
        ] {
            if let Some(v) = v {
                hc.insert(k.into(), json!(v));
            }
        }
        if let Some(r) = h.retries {
            hc.insert("Retries".into(), json!(r));
        }
        cfg.insert("Healthcheck".into(), Value::Object(hc));
    }
    if !c.onbuild.is_empty() {
        cfg.insert("OnBuild".into(), json!(c.onbuild));
    }
    if let Some(s) = &c.shell {
        cfg.insert("Shell".into(), json!(s));
    }
    let mut top = serde_json::Map::new();
    top.insert("created".into(), json!(created));
    top.insert("architecture".into(), json!(spec.architecture));
    top.insert("os".into(), json!(spec.os));
    if let Some(v) = &spec.variant {
        top.insert("variant".into(), json!(v));
    }
    if let Some(a) = &c.author {
        top.insert("author".into(), json!(a));
    }
    top.insert("config".into(), Value::Object(cfg));
    top.insert(
        "rootfs".into(),
        json!({
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
        }),
    );
    top.insert("history".into(), Value::Array(history));
    Value::Object(top)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The cache of layers made, by the trees they come from.
fn layer_cache_path(store: Stores<'_>, key: &str) -> PathBuf {
    store
        .scratch
        .layout()
        .layer_cache()
        .join(format!("{key}.json"))
}

/// A layer from the tree `from` (none: empty) to the tree `to`, from the
/// cache of layers when it was made before.
fn own_layer<'t>(
    store: Stores<'_>,
    blobs: &OciBlobs,
    (from, to): (Option<TreeDigest>, TreeDigest),
    load: &dyn Fn(Option<TreeDigest>) -> Result<Held<'t>, Failed>,
    compression: Compression,
    settings: &Settings,
) -> Result<Layer, Failed> {
    let key = blake3::hash(
        format!(
            "kiln-layer-v1\0{}\0{to}\0{}\0{}\0{}",
            from.map(|d| d.to_string()).unwrap_or_default(),
            compression.name(),
            settings.epoch,
            settings.set_owner
        )
        .as_bytes(),
    )
    .to_hex()
    .to_string();
    let cache = layer_cache_path(store, &key);
    // A record vouches for itself and names its key: a damaged record, or
    // one moved from another key's name, reads as absent (and the layer
    // is made again), as does one whose blob is gone or of another size.
    let magic = crate::store::checked::layer_record_magic(&key);
    if let Some(l) = fs::read(&cache).ok().and_then(|b| {
        crate::store::checked::decode(&magic, &b)
            .and_then(|body| serde_json::from_slice::<Layer>(body).ok())
    }) && blobs.size(&l.digest) == Some(l.size)
    {
        return Ok(l);
    }
    let (below, above) = (load(from)?, load(Some(to))?);
    let items = diff(&below, &above);
    let layer = write_layer(store, blobs, &items, compression, settings)?;
    if let Some(dir) = cache.parent() {
        let _ = fs::create_dir_all(dir);
        let tmp = cache.with_extension(format!("tmp-{}", std::process::id()));
        if let Ok(bytes) = serde_json::to_vec(&layer)
            && fs::write(&tmp, crate::store::checked::encode(&magic, &bytes)).is_ok()
        {
            let _ = fs::rename(&tmp, &cache);
        }
    }
    Ok(layer)
}

/// A tree an image is made of: the stage's own, or one shared.
enum Held<'t> {
    Borrowed(&'t Tree),
    Shared(std::sync::Arc<Tree>),
}

impl std::ops::Deref for Held<'_> {
    type Target = Tree;
    fn deref(&self) -> &Tree {
        match self {
            Held::Borrowed(t) => t,
            Held::Shared(t) => t,
        }
    }
}

/// One entry of a layer: a path of the new tree, or a whiteout.
#[derive(Debug, PartialEq, Eq)]
enum Item<'t> {
    Put(&'t Entry),
    Whiteout,
}

/// What a layer over `base` must hold to give `tree`: every path added or
/// changed, the directories above them, and a whiteout for each path
/// removed (the topmost only), by layer path.
fn diff<'t>(base: &Tree, tree: &'t Tree) -> BTreeMap<String, Item<'t>> {
    use crate::model::tree::Change;
    let mut out = BTreeMap::new();
    for change in tree.changes_from(base) {
        let path = match change {
            Change::Added(path, _) | Change::Changed(path, _, _) => {
                if let Some((path, entry)) = tree.entries.get_key_value(path) {
                    out.insert(path.clone(), Item::Put(entry));
                }
                // The directories above, so the layer makes them as the
                // tree has them.
                for parent in ancestors(path) {
                    if let Some(e) = tree.entries.get(parent) {
                        out.entry(parent.to_string()).or_insert(Item::Put(e));
                    }
                }
                continue;
            }
            // A directory replaced by a file, or the reverse, is replaced by
            // the entry itself (above); a kept directory keeps what it has.
            Change::Removed(path, _) => path,
        };
        // Only the topmost removed path: below a directory removed or
        // replaced by a file or link, nothing of it is left.
        let covered = ancestors(path).any(|a| {
            base.entries.get(a).is_some_and(|e| e.kind == Kind::Dir)
                && tree.entries.get(a).is_none_or(|e| e.kind != Kind::Dir)
        });
        if covered {
            continue;
        }
        let wh = match path.rsplit_once('/') {
            Some((parent, name)) => format!("{parent}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        out.insert(wh, Item::Whiteout);
    }
    // A directory replaced by a file or link goes with its contents when
    // the entry is applied (as the OCI layer rules say); a file replaced
    // by a directory needs nothing more.
    out
}

fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    let mut p = path;
    std::iter::from_fn(move || {
        let (parent, _) = p.rsplit_once('/')?;
        p = parent;
        Some(parent)
    })
}

/// A writer that hashes (sha256) and counts what passes.
struct Hashing<W> {
    inner: W,
    hasher: sha2::Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hashing<W>(inner: W) -> Hashing<W> {
    Hashing {
        inner,
        hasher: sha2::Sha256::new(),
        size: 0,
    }
}

/// gzip on every core: the stream is cut into chunks of a fixed size,
/// each compressed on its own (in parallel) into a gzip member, written
/// in order. A gzip file may hold several members (RFC 1952); Docker,
/// containerd, umoci and kiln read them as one stream. The bytes depend
/// on the data alone, not on the number of cores.
struct ParallelGzip<W: Write> {
    inner: W,
    chunk: Vec<u8>,
    full: Vec<Vec<u8>>,
}

const GZIP_CHUNK: usize = 4 << 20;

impl<W: Write> ParallelGzip<W> {
    fn new(inner: W) -> ParallelGzip<W> {
        ParallelGzip {
            inner,
            chunk: Vec::with_capacity(GZIP_CHUNK),
            full: Vec::new(),
        }
    }

    /// Compress the full chunks (in parallel) and write them out.
    fn drain(&mut self) -> io::Result<()> {
        use rayon::prelude::*;
        let members: Vec<io::Result<Vec<u8>>> = self
            .full
            .par_iter()
            .map(|data| {
                let mut e = flate2::GzBuilder::new()
                    .mtime(0)
                    .operating_system(255)
                    .write(
                        Vec::with_capacity(data.len() / 2),
                        flate2::Compression::default(),
                    );
                e.write_all(data)?;
                e.finish()
            })
            .collect();
        self.full.clear();
        for m in members {
            self.inner.write_all(&m?)?;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        if !self.chunk.is_empty() || self.full.is_empty() {
            let last = std::mem::take(&mut self.chunk);
            self.full.push(last);
        }
        self.drain()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(GZIP_CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == GZIP_CHUNK {
            let full = std::mem::replace(&mut self.chunk, Vec::with_capacity(GZIP_CHUNK));
            self.full.push(full);
            // Enough to keep every core busy.
            if self.full.len() >= 2 * rayon::current_num_threads().max(1) {
                self.drain()?;
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Compressor<W: Write> {
    Gzip(ParallelGzip<W>),
    Zstd(zstd::Encoder<'static, W>),
    None(W),
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Gzip(w) => w.write(buf),
            Compressor::Zstd(w) => w.write(buf),
            Compressor::None(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Gzip(w) => w.flush(),
            Compressor::Zstd(w) => w.flush(),
            Compressor::None(w) => w.flush(),
        }
    }
}

impl<W: Write> Compressor<W> {
    fn new(c: Compression, w: W) -> io::Result<Compressor<W>> {
        Ok(match c {
            // No time, no name, fixed level: the same bytes every time.
            Compression::Gzip => Compressor::Gzip(ParallelGzip::new(w)),
            Compression::Zstd => Compressor::Zstd(zstd::Encoder::new(w, 3)?),
            Compression::None => Compressor::None(w),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Gzip(w) => w.finish(),
            Compressor::Zstd(w) => w.finish(),
            Compressor::None(w) => Ok(w),
        }
    }
}

/// Write a layer's tar, compressed, into the image store.
fn write_layer(
    store: Stores<'_>,
    blobs: &OciBlobs,
    items: &BTreeMap<String, Item<'_>>,
    compression: Compression,
    settings: &Settings,
) -> Result<Layer, Failed> {
    let (tmp, file) = blobs.temp_file().map_err(store_failed)?;
    let result = (|| {
        let shown = tmp.as_path();
        let fail = |e: io::Error| io_failed("cannot write", shown, e);
        let outer = hashing(BufWriter::with_capacity(256 * 1024, file));
        let inner = hashing(Compressor::new(compression, outer).map_err(fail)?);
        let mut b = ::tar::Builder::new(inner);
        for (path, item) in items {
            let mut h = ::tar::Header::new_gnu();
            h.set_mtime(settings.epoch);
            match item {
                Item::Whiteout => {
                    h.set_entry_type(::tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_uid(0);
                    h.set_gid(0);
                    h.set_size(0);
                    b.append_data(&mut h, path, io::empty()).map_err(fail)?;
                }
                Item::Put(entry) => {
                    h.set_mode(entry.mode);
                    h.set_uid(u64::from(entry.uid));
                    h.set_gid(u64::from(entry.gid));
                    match &entry.kind {
                        Kind::Dir => {
                            h.set_entry_type(::tar::EntryType::Directory);
                            h.set_size(0);
                            b.append_data(&mut h, format!("{path}/"), io::empty())
                                .map_err(fail)?;
                        }
                        Kind::File { blob, size } => {
                            h.set_entry_type(::tar::EntryType::Regular);
                            h.set_size(*size);
                            let mut reader =
                                store.content.blob_reader(*blob).map_err(store_failed)?;
                            if let Err(e) = b.append_data(&mut h, path, &mut reader) {
                                return Err(match reader.failure() {
                                    Some(s) => store_failed(s),
                                    None => fail(e),
                                });
                            }
                        }
                        Kind::Symlink { target } => {
                            h.set_entry_type(::tar::EntryType::Symlink);
                            h.set_size(0);
                            b.append_link(&mut h, path, target).map_err(fail)?;
                        }
                        Kind::Device { .. } | Kind::Fifo => {
                            super::tar::special_header(&mut h, &entry.kind).map_err(fail)?;
                            b.append_data(&mut h, path, io::empty()).map_err(fail)?;
                        }
                    }
                }
            }
        }
        let inner = b.into_inner().map_err(fail)?;
        let diff_id = Sha256::from_bytes(&inner.hasher.finalize());
        let mut outer = inner.inner.finish().map_err(fail)?;
        outer.flush().map_err(fail)?;
        let digest = Sha256::from_bytes(&outer.hasher.clone().finalize());
        let size = outer.size;
        let file = outer.inner.into_inner().map_err(|e| fail(e.into_error()))?;
        file.sync_all().map_err(fail)?;
        Ok((diff_id, digest, size))
    })();
    match result {
        Ok((diff_id, digest, size)) => {
            blobs.adopt(&tmp, &digest).map_err(store_failed)?;
            Ok(Layer {
                digest,
                size,
                media_type: media_type(compression).to_string(),
                diff_id,
            })
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The files of an image as an OCI layout: `oci-layout`, `index.json`
/// and `blobs/sha256/…`, and for a `docker load` archive also
/// `manifest.json` (as `docker save` writes both since Docker 25).
/// Paths relative to the layout, in order; a blob is named by its digest.
pub enum Content {
    Bytes(Vec<u8>),
    Blob(Sha256),
}

pub fn layout_files(built: &Built, spec: &ImageSpec, docker: bool) -> Vec<(String, Content)> {
    let mut files = Vec::new();
    let blob_path = |d: &Sha256| format!("blobs/sha256/{}", d.hex());
    let mut descriptor = json!({
        "mediaType": MEDIA_MANIFEST,
        "digest": built.manifest_digest.to_string(),
        "size": built.manifest.len(),
    });
    let (name, tag) = split_tag(spec.tag.as_deref());
    if let Some(t) = &tag {
        // An OCI layout names an image by its tag (skopeo's `oci:DIR:TAG`);
        // containerd reads the whole name.
        descriptor["annotations"] = json!({
            REF_NAME: t,
            "io.containerd.image.name": match &name {
                Some(n) => format!("{n}:{t}"),
                None => t.clone(),
            },
        });
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [descriptor],
    });
    files.push((
        "oci-layout".to_string(),
        Content::Bytes(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
    ));
    files.push((
        "index.json".to_string(),
        Content::Bytes(serde_json::to_vec(&index).unwrap_or_default()),
    ));
    let mut blobs: BTreeMap<String, Content> = BTreeMap::new();
    blobs.insert(
        blob_path(&built.manifest_digest),
        Content::Bytes(built.manifest.clone()),
    );
    blobs.insert(
        blob_path(&built.config_digest),
        Content::Bytes(built.config.clone()),
    );
    for l in &built.layers {
        blobs.insert(blob_path(&l.digest), Content::Blob(l.digest.clone()));
    }
    if docker {
        let repo_tags: Vec<String> = match (&name, &tag) {
            (Some(n), Some(t)) => vec![format!("{n}:{t}")],
            _ => Vec::new(),
        };
        let manifest = json!([{
            "Config": blob_path(&built.config_digest),
            "RepoTags": repo_tags,
            "Layers": built.layers.iter().map(|l| blob_path(&l.digest)).collect::<Vec<_>>(),
        }]);
        files.push((
            "manifest.json".to_string(),
            Content::Bytes(serde_json::to_vec(&manifest).unwrap_or_default()),
        ));
    }
    files.extend(blobs);
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
}

/// `name:tag` → (name, tag); a bare `tag` (no `/` or `:`) for an OCI
/// layout → (None, tag); `name` → (name, `latest`).
pub fn split_tag(t: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(t) = t.filter(|t| !t.is_empty()) else {
        return (None, None);
    };
    let last = t.rsplit('/').next().unwrap_or(t);
    match last.rsplit_once(':') {
        Some((_, tag)) => {
            let name = &t[..t.len() - tag.len() - 1];
            (Some(name.to_string()), Some(tag.to_string()))
        }
        None if !t.contains('/') && !t.contains('.') => {
            (Some(t.to_string()), Some("latest".into()))
        }
        None => (Some(t.to_string()), Some("latest".into())),
    }
}

/// Write the layout into a new directory `root`; returns its files.
pub fn write_layout(
    blobs: &OciBlobs,
    files: &[(String, Content)],
    root: &Path,
    settings: &Settings,
) -> Result<Vec<String>, Failed> {
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(settings.epoch);
    fs::create_dir(root).map_err(|e| io_failed("cannot create", root, e))?;
    let mut written = Vec::new();
    for d in ["blobs", "blobs/sha256"] {
        let p = root.join(d);
        fs::create_dir(&p).map_err(|e| io_failed("cannot create", &p, e))?;
        written.push(d.to_string());
    }
    // The same modes whatever the umask.
    for d in [
        root.to_path_buf(),
        root.join("blobs"),
        root.join("blobs/sha256"),
    ] {
        fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| io_failed("cannot create", &d, e))?;
    }
    for (path, content) in files {
        let at = root.join(path);
        let mut f = File::create(&at).map_err(|e| io_failed("cannot write", &at, e))?;
        match content {
            Content::Bytes(b) => f
                .write_all(b)
                .map_err(|e| io_failed("cannot write", &at, e))?,
            Content::Blob(d) => copy_blob(blobs, d, &mut f, &at)?,
        }
        let _ = f.set_modified(mtime);
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .map_err(|e| io_failed("cannot write", &at, e))?;
        written.push(path.clone());
    }
    Ok(written)
}

fn copy_blob(blobs: &OciBlobs, d: &Sha256, out: &mut dyn Write, at: &Path) -> Result<(), Failed> {
    let mut r = blobs.open(d).map_err(store_failed)?;
    // Large reads and writes: layers are big, and every byte is hashed
    // on the way (a damaged blob never reaches an export).
    let mut buf = vec![0u8; 1 << 20];
    let copied = (|| -> io::Result<()> {
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            out.write_all(&buf[..n])?;
        }
    })();
    copied.map_err(|e| {
        if e.kind() == io::ErrorKind::InvalidData {
            Failed::Damaged(
                Diagnostic::new(Code::STORE_DAMAGED, e.to_string()).with_help(
                    "build again: the damaged blob was removed and is made or fetched again",
                ),
            )
        } else {
            io_failed("cannot write", at, e)
        }
    })?;
    Ok(())
}

/// Write the layout as one deterministic tar (an `oci-archive`, or with
/// `manifest.json` a `docker-archive`).
pub fn write_archive(
    blobs: &OciBlobs,
    files: &[(String, Content)],
    dest: &Path,
    settings: &Settings,
) -> Result<(), Failed> {
    let fail = |e: io::Error| io_failed("cannot write", dest, e);
    let file = File::create(dest).map_err(fail)?;
    let mut b = ::tar::Builder::new(BufWriter::with_capacity(256 * 1024, file));
    let dir = |b: &mut ::tar::Builder<BufWriter<File>>, p: &str| {
        let mut h = ::tar::Header::new_gnu();
        h.set_entry_type(::tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(settings.epoch);
        h.set_size(0);
        b.append_data(&mut h, p, io::empty())
    };
    dir(&mut b, "blobs/").map_err(fail)?;
    dir(&mut b, "blobs/sha256/").map_err(fail)?;
    for (path, content) in files {
        let mut h = ::tar::Header::new_gnu();
        h.set_entry_type(::tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(settings.epoch);
        match content {
            Content::Bytes(bytes) => {
                h.set_size(bytes.len() as u64);
                b.append_data(&mut h, path, &bytes[..]).map_err(fail)?;
            }
            Content::Blob(d) => {
                let size = fs::metadata(blobs.path(d)).map_err(fail)?.len();
                h.set_size(size);
                let mut r = blobs.open(d).map_err(store_failed)?;
                if let Err(e) = b.append_data(&mut h, path, &mut r as &mut dyn Read) {
                    return Err(if e.kind() == io::ErrorKind::InvalidData {
                        Failed::Damaged(Diagnostic::new(Code::STORE_DAMAGED, e.to_string()))
                    } else {
                        fail(e)
                    });
                }
            }
        }
    }
    let file = b
        .into_inner()
        .map_err(fail)?
        .into_inner()
        .map_err(|e| fail(e.into_error()))?;
    file.sync_all().map_err(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tree::Entry;

    #[test]
    fn parallel_gzip_is_one_stream_to_a_reader_and_the_same_bytes_every_time() {
        use std::io::Read;
        let data: Vec<u8> = (0..(GZIP_CHUNK * 5 + 123))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let write = |data: &[u8]| {
            let mut w = ParallelGzip::new(Vec::new());
            for part in data.chunks(100_000) {
                w.write_all(part).unwrap();
            }
            w.finish().unwrap()
        };
        let gz = write(&data);
        assert_eq!(gz, write(&data));
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data);
        // An empty stream is still a gzip file.
        let empty = write(&[]);
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&empty[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn tags_split_as_docker_reads_them() {
        assert_eq!(
            split_tag(Some("localhost:5000/app:1.0")),
            (Some("localhost:5000/app".into()), Some("1.0".into()))
        );
        assert_eq!(
            split_tag(Some("app")),
            (Some("app".into()), Some("latest".into()))
        );
        assert_eq!(
            split_tag(Some("localhost:5000/app")),
            (Some("localhost:5000/app".into()), Some("latest".into()))
        );
        assert_eq!(split_tag(None), (None, None));
    }

    #[test]
    fn a_diff_has_changes_their_parents_and_topmost_whiteouts() {
        let d = Entry::dir(0o755, 0, 0);
        let l = |t: &str| Entry {
            kind: Kind::Symlink { target: t.into() },
            mode: 0o777,
            uid: 0,
            gid: 0,
        };
        let mut base = Tree::default();
        for p in [
            "etc",
            "usr",
            "usr/lib",
            "usr/lib/x",
            "old",
            "old/a",
            "old/b",
        ] {
            base.entries.insert(p.into(), d.clone());
        }
        base.entries.insert("etc/hosts".into(), l("a"));
        let mut tree = Tree::default();
        for p in ["etc", "usr", "usr/lib", "usr/lib/x"] {
            tree.entries.insert(p.into(), d.clone());
        }
        tree.entries.insert("etc/hosts".into(), l("b"));
        tree.entries.insert("usr/lib/x/new".into(), l("c"));
        let got: Vec<(String, bool)> = diff(&base, &tree)
            .into_iter()
            .map(|(p, i)| (p, i == Item::Whiteout))
            .collect();
        assert_eq!(
            got,
            vec![
                (".wh.old".into(), true),
                ("etc".into(), false),
                ("etc/hosts".into(), false),
                ("usr".into(), false),
                ("usr/lib".into(), false),
                ("usr/lib/x".into(), false),
                ("usr/lib/x/new".into(), false),
            ]
        );
    }
}
