//! Images in: a base image (`from image="…"`, Dockerfile `FROM`) resolved
//! to the digest of its manifest for this platform, its blobs verified
//! into the local image store, and its layers applied into a tree.
//!
//! Where an image comes from is a [`Source`]: a registry
//! ([`registry`]), a local OCI layout or an archive ([`local`]). A
//! reference resolves once (its digest goes into `kiln.lock`, [`lock`]);
//! after that everything is addressed by digest, so a locked build needs
//! no network once the store has the image. The tree of an image is
//! cached by its manifest digest, and every prefix of its layers by the
//! layers' digests (as Docker's chain ids), so a second build using the
//! image, or another image on the same base, does no layer work.

pub mod config;
pub mod document;
pub mod layer;
pub mod local;
pub mod lock;
pub mod platform;
pub mod reference;
pub mod registry;
pub mod set;

use crate::model::digest::{Sha256, StepKey};
use crate::model::state::{Action, ImageConfig, State};
use crate::model::tree::Tree;
use crate::store::oci::OciBlobs;
use crate::store::{ActionCache, ContentStore, StoreError};
use document::{Descriptor, Index, Manifest, Shape};
use platform::Platform;
use reference::ImageRef;
use std::io::Read;

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Why an image could not be had. Messages name what is wrong; the caller
/// adds the spec location and the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Network(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Platform(String),
    #[error("layer {digest}: {error}")]
    Layer {
        digest: Sha256,
        error: layer::LayerError,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// A place images come from.
pub trait Source {
    /// The manifest or index the reference names, and its digest.
    fn top(&mut self) -> Result<(Vec<u8>, Sha256), ImageError>;
    /// A manifest (or index) by digest.
    fn manifest(&mut self, d: &Sha256) -> Result<Vec<u8>, ImageError>;
    /// Copy a blob into the store, verified against its digest and the
    /// `size` its descriptor declares (reading stops past it).
    fn fetch_blob(&mut self, d: &Sha256, size: u64, blobs: &OciBlobs) -> Result<(), ImageError>;
}

/// What to open a source with.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Registries that may be spoken to over plain HTTP (besides loopback).
    pub insecure: Vec<String>,
}

/// Open the source a reference names.
pub fn open(r: &ImageRef, access: &Access) -> Result<Box<dyn Source>, ImageError> {
    match r {
        ImageRef::Registry(reg) => Ok(Box::new(registry::Registry::new(reg, access)?)),
        ImageRef::Layout { dir, tag, digest } => Ok(Box::new(local::Layout::open(
            dir,
            tag.clone(),
            digest.clone(),
        )?)),
        ImageRef::OciArchive { file, tag } => {
            Ok(Box::new(local::Archive::open_oci(file, tag.clone())?))
        }
        ImageRef::DockerArchive { file, name } => {
            Ok(Box::new(local::Archive::open_docker(file, name.clone())?))
        }
    }
}

/// One layer of an image manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerDesc {
    pub digest: Sha256,
    pub size: u64,
    pub media_type: String,
    /// The sha256 of the layer's uncompressed bytes, as the config lists
    /// it: checked against the bytes when the layer is unpacked.
    pub diff_id: Sha256,
}

/// An image, by its manifest.
#[derive(Clone, Debug)]
pub struct Image {
    /// The manifest's digest: the image's identity in keys and the lock.
    pub digest: Sha256,
    pub config_digest: Sha256,
    pub config: ImageConfig,
    pub platform: Platform,
    pub layers: Vec<LayerDesc>,
}

/// A JSON document read as `T` (one of [`document`]'s types): an error
/// names the field at fault.
pub(crate) fn document<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, ImageError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        let inner = e.into_inner();
        ImageError::Invalid(if inner.is_syntax() || inner.is_eof() {
            format!("{what} is not JSON: {inner}")
        } else if at == "." {
            format!("{what} is not valid: {inner}")
        } else {
            format!("{what} is not valid at `{at}`: {inner}")
        })
    })
}

/// Whether a manifest document is an index (a list of per-platform
/// manifests): by its media type, or, without one, by its fields.
fn is_index(bytes: &[u8], what: &str) -> Result<bool, ImageError> {
    let shape: Shape = document(bytes, what)?;
    Ok(match shape.media_type.as_ref().and_then(|t| t.as_str()) {
        Some(t) => t == MEDIA_INDEX || t == DOCKER_LIST,
        None => shape.manifests.is_some() && shape.layers.is_none(),
    })
}

/// A descriptor's digest, which kiln reads only as sha256.
fn sha256(d: &Descriptor, what: &str) -> Result<Sha256, ImageError> {
    Sha256::parse(&d.digest).ok_or_else(|| {
        ImageError::Invalid(format!(
            "{what} has the digest `{}`: kiln reads sha256 digests only",
            d.digest
        ))
    })
}

/// The digest of the manifest for `platform`: the reference's own when it
/// names a manifest, the matching entry's when it names an index.
/// Manifests read are kept in the store.
pub fn resolve(
    source: &mut dyn Source,
    platform: &Platform,
    blobs: &OciBlobs,
) -> Result<Sha256, ImageError> {
    let (bytes, digest) = source.top()?;
    blobs.put_bytes(&bytes)?;
    pick(source, &bytes, digest, platform, blobs, 0)
}

fn pick(
    source: &mut dyn Source,
    bytes: &[u8],
    digest: Sha256,
    platform: &Platform,
    blobs: &OciBlobs,
    depth: usize,
) -> Result<Sha256, ImageError> {
    if !is_index(bytes, "the image manifest")? {
        return Ok(digest);
    }
    if depth > 4 {
        return Err(ImageError::Invalid("image indexes nest too deep".into()));
    }
    let index: Index = document(bytes, "the image index")?;
    let entries = &index.manifests;
    let mut seen = Vec::new();
    for e in entries {
        let p = e.platform.as_ref();
        let field = |f: fn(&document::Platform) -> &Option<String>| {
            p.and_then(|p| f(p).clone()).unwrap_or_default()
        };
        let (os, arch) = (field(|p| &p.os), field(|p| &p.architecture));
        let variant = p.and_then(|p| p.variant.clone());
        // An entry kiln cannot address (another digest) is not one to pick.
        let Some(d) = Sha256::parse(&e.digest) else {
            continue;
        };
        if os.is_empty() && arch.is_empty() {
            // An entry without a platform (attestations, or a single image).
            if entries.len() == 1 {
                let inner = source.manifest(&d)?;
                blobs.put_bytes(&inner)?;
                return pick(source, &inner, d, platform, blobs, depth + 1);
            }
            continue;
        }
        if platform.matches(&os, &arch, variant.as_deref()) {
            let inner = source.manifest(&d)?;
            blobs.put_bytes(&inner)?;
            return pick(source, &inner, d, platform, blobs, depth + 1);
        }
        seen.push(match variant {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        });
    }
    Err(ImageError::Platform(format!(
        "the image has no {platform} variant (it has {})",
        if seen.is_empty() {
            "none".to_string()
        } else {
            seen.join(", ")
        }
    )))
}

/// Read an image by its manifest digest, fetching the manifest and config
/// from `source` when the store lacks them.
pub fn load(
    digest: &Sha256,
    mut source: Option<&mut (dyn Source + '_)>,
    blobs: &OciBlobs,
) -> Result<Image, ImageError> {
    let manifest = match blobs.read(digest) {
        Ok(b) => b,
        Err(_) => {
            let Some(s) = source.as_deref_mut() else {
                return Err(ImageError::NotFound(format!(
                    "the manifest {digest} is not in the image store"
                )));
            };
            let b = s.manifest(digest)?;
            if Sha256::of(&b) != *digest {
                return Err(ImageError::Invalid(format!(
                    "the manifest received does not have the digest {digest}"
                )));
            }
            blobs.put_bytes(&b)?;
            b
        }
    };
    if is_index(&manifest, "the image manifest")? {
        return Err(ImageError::Invalid(format!(
            "{digest} is an image index, not a manifest"
        )));
    }
    let m: Manifest = document(&manifest, "the image manifest")?;
    let config_digest = sha256(&m.config, "the manifest's config")?;
    let declared = |d: &Descriptor, digest: &Sha256, what: &str| {
        d.size.ok_or_else(|| {
            ImageError::Invalid(format!("the manifest's {what} {digest} declares no size"))
        })
    };
    let config_size = declared(&m.config, &config_digest, "config")?;
    if config_size > crate::store::oci::MAX_DOCUMENT {
        return Err(ImageError::Invalid(format!(
            "the manifest declares a config of {config_size} bytes: kiln reads configs up to {}",
            crate::units::format_size(crate::store::oci::MAX_DOCUMENT)
        )));
    }
    let mut descs = Vec::new();
    for l in &m.layers {
        let digest = sha256(l, "a layer of the manifest")?;
        let size = declared(l, &digest, "layer")?;
        let media_type = l.media_type.clone().unwrap_or_default();
        if media_type.contains("nondistributable") || media_type.contains("foreign") {
            return Err(ImageError::Invalid(format!(
                "layer {digest} is a foreign layer, which kiln does not fetch"
            )));
        }
        // A blob already stored (for another image) must be the size this
        // manifest declares: the declared size is what exports write.
        if let Some(stored) = blobs.size(&digest)
            && stored != size
        {
            return Err(ImageError::Invalid(format!(
                "the manifest declares layer {digest} as {size} bytes, but its bytes are {stored}"
            )));
        }
        descs.push((digest, size, media_type));
    }
    if !blobs.has(&config_digest) {
        let Some(s) = source else {
            return Err(ImageError::NotFound(format!(
                "the config {config_digest} is not in the image store"
            )));
        };
        s.fetch_blob(&config_digest, config_size, blobs)?;
    }
    let config_bytes = blobs.read(&config_digest)?;
    let config::Parsed {
        config,
        platform: p,
        diff_ids,
    } = config::parse(&config_bytes)?;
    if diff_ids.len() != descs.len() {
        return Err(ImageError::Invalid(format!(
            "the image config lists {} diff_ids for the manifest's {} layers",
            diff_ids.len(),
            descs.len()
        )));
    }
    let layers = descs
        .into_iter()
        .zip(diff_ids)
        .map(|((digest, size, media_type), diff_id)| LayerDesc {
            digest,
            size,
            media_type,
            diff_id,
        })
        .collect();
    Ok(Image {
        digest: digest.clone(),
        config_digest,
        config,
        platform: Platform {
            os: p.os,
            architecture: p.architecture,
            variant: p.variant,
        },
        layers,
    })
}

/// Push an image to a registry reference (`registry/name:tag`): the
/// blobs it lacks, from the image store, then the manifest.
pub fn push(
    reference: &str,
    access: &Access,
    blobs: &OciBlobs,
    manifest: &[u8],
    blob_list: &[(Sha256, u64)],
) -> Result<registry::Pushed, ImageError> {
    let r = reference::parse_registry(reference)
        .map_err(|e| ImageError::Invalid(format!("`{reference}`: {e}")))?;
    registry::Registry::new(&r, access)?.push(blobs, manifest, MEDIA_MANIFEST, blob_list)
}

/// Attach an in-toto statement to an image pushed to `reference` (its
/// manifest's digest and size): see [`registry::Registry::attach`].
pub fn attach_statement(
    reference: &str,
    access: &Access,
    blobs: &OciBlobs,
    subject: (&Sha256, u64),
    statement: &[u8],
    predicate_type: &str,
) -> Result<Sha256, ImageError> {
    let r = reference::parse_registry(reference)
        .map_err(|e| ImageError::Invalid(format!("`{reference}`: {e}")))?;
    registry::Registry::new(&r, access)?.attach(
        blobs,
        subject,
        "application/vnd.in-toto+json",
        serde_json::json!({ "in-toto.io/predicate-type": predicate_type }),
        statement,
    )
}

pub use crate::model::key::image_rootfs_key as rootfs_key;

/// The action-cache key of the tree of an image's first layers: by their
/// digests and diff_ids, entered only once the bytes matched both.
fn chain_key(layers: &[LayerDesc]) -> StepKey {
    let mut h = blake3::Hasher::new();
    h.update(b"kiln-image-chain-v2\0");
    for l in layers {
        h.update(l.digest.to_string().as_bytes());
        h.update(b"\0");
        h.update(l.diff_id.to_string().as_bytes());
        h.update(b"\0");
    }
    StepKey::from_hash(h.finalize())
}

/// The action-cache entry saying a layer's uncompressed bytes hash to its
/// diff_id (checked once, when it was unpacked or exported).
pub fn verified_key(l: &LayerDesc) -> StepKey {
    let mut h = blake3::Hasher::new();
    h.update(b"kiln-layer-diff-id-v1\0");
    h.update(l.digest.to_string().as_bytes());
    h.update(b"\0");
    h.update(l.diff_id.to_string().as_bytes());
    StepKey::from_hash(h.finalize())
}

/// Check a stored layer's uncompressed bytes against its diff_id, unless
/// that was done before (recorded in `actions`).
pub fn verify_layer(
    l: &LayerDesc,
    blobs: &OciBlobs,
    actions: &dyn ActionCache,
) -> Result<(), ImageError> {
    // Checked on this machine, whatever a shared cache says.
    let actions = actions.here();
    if actions.get(verified_key(l)).is_some() {
        return Ok(());
    }
    let raw = blobs.open(&l.digest)?;
    let mut reader = layer::decompress(Box::new(raw)).map_err(|e| ImageError::Layer {
        digest: l.digest.clone(),
        error: layer::LayerError::Damaged(e.to_string()),
    })?;
    let mut hashing = Hashing::new(&mut reader);
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(|e| ImageError::Layer {
        digest: l.digest.clone(),
        error: layer::LayerError::Damaged(e.to_string()),
    })?;
    check_diff_id(l, hashing.finish())?;
    actions.put(
        verified_key(l),
        &Action {
            tree: None,
            config: ImageConfig::default(),
            test: None,
        },
    )?;
    Ok(())
}

fn check_diff_id(l: &LayerDesc, got: Sha256) -> Result<(), ImageError> {
    if got != l.diff_id {
        return Err(ImageError::Invalid(format!(
            "layer {}: its uncompressed bytes hash to {got}, but the image config says {} (a forged or damaged image)",
            l.digest, l.diff_id
        )));
    }
    Ok(())
}

/// A reader that hashes (sha256) what is read through it.
struct Hashing<'a> {
    inner: &'a mut dyn Read,
    hasher: sha2::Sha256,
}

impl<'a> Hashing<'a> {
    fn new(inner: &'a mut dyn Read) -> Hashing<'a> {
        Hashing {
            inner,
            hasher: sha2::Digest::new(),
        }
    }

    /// Read what is left (a tar ends with padding its reader may leave),
    /// and the digest of everything.
    fn finish(mut self) -> Sha256 {
        let _ = std::io::copy(&mut self, &mut std::io::sink());
        Sha256::from_bytes(&sha2::Digest::finalize(self.hasher))
    }
}

impl Read for Hashing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        Ok(n)
    }
}

/// Where an image's tree is built.
pub struct Unpack<'a> {
    pub content: &'a dyn ContentStore,
    pub actions: &'a dyn ActionCache,
    pub blobs: &'a OciBlobs,
    /// The most a layer may expand to.
    pub limit: u64,
}

/// The state of an image, if its tree is cached (no layer work at all).
pub fn cached(u: &Unpack<'_>, digest: &Sha256) -> Option<State> {
    let a = u.actions.get(rootfs_key(digest))?;
    let tree = a.tree?;
    u.content.has_tree(tree).then_some(State {
        tree,
        config: Box::new(a.config),
    })
}

/// What making an image's tree took.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// Layers applied now.
    pub applied: usize,
    /// Layers whose result was already unpacked (a cached prefix).
    pub reused: usize,
    /// Layers fetched from the source, and their compressed bytes.
    pub fetched: usize,
    pub fetched_bytes: u64,
}

/// Build an image's tree from its layers, starting from the longest prefix
/// already unpacked, fetching layers from `source` as needed. Returns the
/// state, the cache keys used (to keep them from `kiln gc`) and the work done.
pub fn unpack(
    u: &Unpack<'_>,
    image: &Image,
    mut source: Option<&mut (dyn Source + '_)>,
) -> Result<(State, Vec<StepKey>, Work), ImageError> {
    let mut work = Work::default();
    let mut keys = Vec::new();
    let mut start = 0;
    let mut tree = Tree::new();
    for i in (1..=image.layers.len()).rev() {
        let key = chain_key(&image.layers[..i]);
        if let Some(Action { tree: Some(t), .. }) = u.actions.get(key)
            && let Ok(found) = u.content.get_tree(t)
        {
            tree = found;
            start = i;
            work.reused = i;
            keys.push(key);
            break;
        }
    }
    for i in start..image.layers.len() {
        let l = &image.layers[i];
        if !u.blobs.has(&l.digest) {
            let Some(s) = source.as_deref_mut() else {
                return Err(ImageError::NotFound(format!(
                    "layer {} is not in the image store",
                    l.digest
                )));
            };
            s.fetch_blob(&l.digest, l.size, u.blobs)?;
            work.fetched += 1;
            work.fetched_bytes += l.size;
        }
        work.applied += 1;
        let raw = u.blobs.open(&l.digest)?;
        let layer_err = |error| ImageError::Layer {
            digest: l.digest.clone(),
            error,
        };
        let mut reader = layer::decompress(Box::new(raw))
            .map_err(|e| layer_err(layer::LayerError::Damaged(e.to_string())))?;
        // The tree is made from the bytes whose sha256 the config names.
        let mut hashing = Hashing::new(&mut reader);
        layer::apply(u.content, &mut tree, &mut hashing, u.limit).map_err(layer_err)?;
        check_diff_id(l, hashing.finish())?;
        u.actions.here().put(
            verified_key(l),
            &Action {
                tree: None,
                config: ImageConfig::default(),
                test: None,
            },
        )?;
        let t = u.content.put_tree(&tree)?;
        let key = chain_key(&image.layers[..=i]);
        u.actions.put(
            key,
            &Action {
                tree: Some(t),
                config: ImageConfig::default(),
                test: None,
            },
        )?;
        keys.push(key);
    }
    let tree = u.content.put_tree(&tree)?;
    let state = State {
        tree,
        config: Box::new(image.config.clone()),
    };
    let key = rootfs_key(&image.digest);
    u.actions.put(
        key,
        &Action {
            tree: Some(tree),
            config: (*state.config).clone(),
            test: None,
        },
    )?;
    keys.push(key);
    Ok((state, keys, work))
}

/// Read a blob whole from a reader, up to a size that a manifest or config
/// never reaches.
pub(crate) fn read_small(r: &mut dyn Read, what: &str) -> Result<Vec<u8>, ImageError> {
    use crate::store::oci::MAX_DOCUMENT;
    let mut out = Vec::new();
    r.take(MAX_DOCUMENT + 1)
        .read_to_end(&mut out)
        .map_err(|e| ImageError::Invalid(format!("cannot read {what}: {e}")))?;
    if out.len() as u64 > MAX_DOCUMENT {
        return Err(ImageError::Invalid(format!(
            "{what} is larger than {} (kiln reads no more)",
            crate::units::format_size(MAX_DOCUMENT)
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::layout::Layout;
    use std::collections::HashMap;

    /// Documents by digest, as a registry would serve them.
    struct Docs {
        top: Vec<u8>,
        by_digest: HashMap<Sha256, Vec<u8>>,
    }

    impl Docs {
        fn new(top: &str, others: &[&str]) -> Docs {
            Docs {
                top: top.as_bytes().to_vec(),
                by_digest: others
                    .iter()
                    .map(|d| (Sha256::of(d.as_bytes()), d.as_bytes().to_vec()))
                    .collect(),
            }
        }
    }

    impl Source for Docs {
        fn top(&mut self) -> Result<(Vec<u8>, Sha256), ImageError> {
            Ok((self.top.clone(), Sha256::of(&self.top)))
        }
        fn manifest(&mut self, d: &Sha256) -> Result<Vec<u8>, ImageError> {
            self.by_digest
                .get(d)
                .cloned()
                .ok_or_else(|| ImageError::NotFound(d.to_string()))
        }
        fn fetch_blob(&mut self, d: &Sha256, _: u64, blobs: &OciBlobs) -> Result<(), ImageError> {
            let b = self.manifest(d)?;
            blobs.put_bytes(&b)?;
            Ok(())
        }
    }

    fn manifest(config: &str, layers: &str) -> String {
        format!(
            r#"{{"schemaVersion": 2, "mediaType": "{MEDIA_MANIFEST}",
                "config": {{"mediaType": "{MEDIA_CONFIG}", "digest": "{}", "size": {}}},
                "layers": {layers}}}"#,
            Sha256::of(config.as_bytes()),
            config.len()
        )
    }

    fn index(entries: &[(&str, &str)]) -> String {
        let e: Vec<String> = entries
            .iter()
            .map(|(m, platform)| {
                format!(
                    r#"{{"mediaType": "{MEDIA_MANIFEST}", "digest": "{}", "size": {}, "platform": {platform}}}"#,
                    Sha256::of(m.as_bytes()),
                    m.len()
                )
            })
            .collect();
        format!(
            r#"{{"schemaVersion": 2, "mediaType": "{MEDIA_INDEX}", "manifests": [{}]}}"#,
            e.join(",")
        )
    }

    const CONFIG: &str = r#"{"os": "linux", "architecture": "arm64", "config": {"Env": ["A=1"]},
        "rootfs": {"type": "layers", "diff_ids": []}}"#;

    #[test]
    fn an_index_resolves_to_its_platform_and_names_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = OciBlobs::new(&Layout::new(dir.path()));
        let arm = manifest(CONFIG, "[]");
        let amd = manifest(CONFIG, "[]").replace("\"layers\"", "\"annotations\": {}, \"layers\"");
        let top = index(&[
            (&amd, r#"{"os": "linux", "architecture": "amd64"}"#),
            (
                &arm,
                r#"{"os": "linux", "architecture": "arm64", "variant": "v8"}"#,
            ),
        ]);
        let mut docs = Docs::new(&top, &[&arm, &amd, CONFIG]);
        let arm64 = Platform::parse("linux/arm64").unwrap();
        let d = resolve(&mut docs, &arm64, &blobs).unwrap();
        assert_eq!(d, Sha256::of(arm.as_bytes()));
        let image = load(&d, Some(&mut docs), &blobs).unwrap();
        assert_eq!(image.platform.architecture, "arm64");
        assert_eq!(image.config.env, [("A".to_string(), "1".to_string())]);

        let riscv = Platform::parse("linux/riscv64").unwrap();
        let e = resolve(&mut docs, &riscv, &blobs).unwrap_err().to_string();
        assert!(e.contains("linux/amd64, linux/arm64/v8"), "{e}");

        // Entries kiln cannot use are passed over, not the whole index
        // refused: another digest, an attestation without a platform; an
        // entry without a media type is read; platform names are read as
        // written.
        let top = format!(
            r#"{{"manifests": [
                {{"digest": "sha512:{}", "size": 1, "platform": {{"os": "linux", "architecture": "armbe"}}}},
                {{"size": 1, "platform": {{"os": "linux", "architecture": "armbe"}}}},
                {{"mediaType": "{MEDIA_MANIFEST}", "digest": "{}", "size": 1, "platform": {{"os": "unknown", "architecture": "unknown"}}}},
                {{"digest": "{}", "size": {}, "platform": {{"os": "linux", "architecture": "armbe"}}}}
            ]}}"#,
            "c".repeat(128),
            Sha256::of(b"attestation"),
            Sha256::of(arm.as_bytes()),
            arm.len()
        );
        let mut docs = Docs::new(&top, &[&arm, CONFIG]);
        let armbe = Platform::parse("linux/armbe").unwrap();
        assert_eq!(
            resolve(&mut docs, &armbe, &blobs).unwrap(),
            Sha256::of(arm.as_bytes())
        );
    }

    #[test]
    fn a_manifest_field_of_the_wrong_kind_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = OciBlobs::new(&Layout::new(dir.path()));
        let bad = manifest(
            CONFIG,
            &format!(
                r#"[{{"mediaType": "{MEDIA_LAYER}", "digest": "sha256:{}", "size": "12"}}]"#,
                "a".repeat(64)
            ),
        );
        let mut docs = Docs::new(&bad, &[&bad, CONFIG]);
        let d = Sha256::of(bad.as_bytes());
        let e = load(&d, Some(&mut docs), &blobs).unwrap_err().to_string();
        assert!(e.contains("`layers[0].size`"), "{e}");

        // A digest kiln does not read (sha512) is refused, by name.
        let other = manifest(
            CONFIG,
            &format!(
                r#"[{{"mediaType": "{MEDIA_LAYER}", "digest": "sha512:{}", "size": 12}}]"#,
                "b".repeat(128)
            ),
        );
        let mut docs = Docs::new(&other, &[&other, CONFIG]);
        let d = Sha256::of(other.as_bytes());
        let e = load(&d, Some(&mut docs), &blobs).unwrap_err().to_string();
        assert!(
            e.contains("sha512:bbbb") && e.contains("sha256 digests only"),
            "{e}"
        );

        // An index where a manifest is wanted.
        let top = index(&[(&other, r#"{"os": "linux", "architecture": "amd64"}"#)]);
        let mut docs = Docs::new(&top, &[]);
        let d = Sha256::of(top.as_bytes());
        blobs.put_bytes(top.as_bytes()).unwrap();
        let e = load(&d, Some(&mut docs), &blobs).unwrap_err().to_string();
        assert!(e.contains("is an image index"), "{e}");
    }
}
