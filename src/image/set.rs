//! The images of one build: every reference its stages are built on,
//! resolved to a digest before any step runs (from `kiln.lock`, or by
//! asking the source), and their trees, unpacked once per build at most.

use super::lock::Lock;
use super::platform::Platform;
use super::reference::{self, ImageRef};
use super::{Access, ImageError, Unpack, Work};
use crate::model::digest::{Sha256, StepKey};
use crate::model::state::State;
use crate::store::oci::OciBlobs;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// How the lock file is used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LockMode {
    /// Use what is locked; resolve and lock what is not.
    #[default]
    Normal,
    /// Use only what is locked; anything missing is an error (for CI).
    Locked,
    /// Resolve again: every reference, or those named.
    Update(Vec<String>),
}

/// Where a reference's digest came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// The lock file.
    Locked,
    /// The registry, now (and written to the lock file).
    Resolved,
    /// A layout or archive on this machine, read now (never locked).
    Local,
}

impl How {
    pub fn as_str(self) -> &'static str {
        match self {
            How::Locked => "locked",
            How::Resolved => "resolved",
            How::Local => "local",
        }
    }
}

struct Entry {
    image_ref: ImageRef,
    digest: Sha256,
    how: How,
    /// The image's state once made (`None` again after [`ImageSet::forget_states`]).
    state: Mutex<Option<Result<State, String>>>,
}

/// The name in the local image store that `written` means, if any: the
/// same name in Docker's normal form (`index.docker.io/app:1` is `app:1`).
fn local_name(blobs: &OciBlobs, written: &str) -> Option<String> {
    if blobs.tag(written).is_some() {
        return Some(crate::store::oci::normalize_tag(written));
    }
    let want = crate::model::name::canonical(written).ok()?;
    blobs
        .tags()
        .into_iter()
        .map(|t| t.name)
        .find(|n| crate::model::name::canonical(n).is_ok_and(|c| c == want))
}

/// The resolved images of a build.
pub struct ImageSet {
    pub platform: Platform,
    access: Access,
    entries: HashMap<String, Arc<Entry>>,
    used: Mutex<Vec<StepKey>>,
}

/// What an image built on another keeps of it.
pub struct BaseLayers {
    pub layers: Vec<super::LayerDesc>,
    /// The layers' uncompressed digests, in order.
    pub diff_ids: Vec<Sha256>,
    pub history: Vec<serde_json::Value>,
}

/// Why resolving failed: the reference and what went wrong.
#[derive(Debug)]
pub struct Failure {
    pub reference: String,
    pub why: String,
    pub kind: FailureKind,
    /// For a registry reference: the local image store, looked in first.
    pub looked_in: Option<std::path::PathBuf>,
}

/// What kind of help a failure needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The reference is not one kiln can read.
    Reference,
    /// Not in the lock file, under `--locked`.
    NotLocked,
    /// The image has no variant for the platform.
    Platform,
    /// The registry or file could not be reached, or said no.
    Source,
}

impl ImageSet {
    pub fn empty(platform: Platform, access: Access) -> ImageSet {
        ImageSet {
            platform,
            access,
            entries: HashMap::new(),
            used: Mutex::new(Vec::new()),
        }
    }

    /// Resolve every `(reference, spec directory)`, updating `lock`.
    /// Returns the set and whether the lock changed.
    pub fn resolve(
        refs: &[(String, &Path)],
        lock: &mut Lock,
        mode: &LockMode,
        platform: Platform,
        access: Access,
        blobs: &OciBlobs,
    ) -> Result<(ImageSet, bool), Vec<Failure>> {
        let mut set = ImageSet::empty(platform, access);
        let mut failures = Vec::new();
        let mut changed = false;
        let plat = set.platform.to_string();
        for (written, dir) in refs {
            if set.entries.contains_key(written) {
                continue;
            }
            let image_ref = match reference::parse(written, dir) {
                // A name in the local image store (`kiln build -t`) comes
                // first, as in Docker, unless the lock file pins the
                // reference: a name tagged by another project on this
                // machine never replaces a pinned image.
                Ok(ImageRef::Registry(_))
                    if lock.image(written, &plat).is_none()
                        && local_name(blobs, written).is_some() =>
                {
                    ImageRef::Layout {
                        dir: blobs.root(),
                        tag: local_name(blobs, written),
                        digest: None,
                    }
                }
                Ok(r) => r,
                Err(e) => {
                    failures.push(Failure {
                        reference: written.clone(),
                        why: e.to_string(),
                        kind: FailureKind::Reference,
                        looked_in: None,
                    });
                    continue;
                }
            };
            // Images on this machine (layouts, archives) are read afresh
            // each build: cheap, and a rebuilt local image is used at once.
            // Their digest still goes into every key. Registry references
            // are locked.
            let local = !matches!(image_ref, ImageRef::Registry(_));
            let renew = local
                || match mode {
                    LockMode::Update(names) => names.is_empty() || names.contains(written),
                    _ => false,
                };
            let locked = if renew {
                None
            } else {
                lock.image(written, &plat).cloned()
            };
            let (digest, how) = match (locked, mode) {
                (Some(d), _) => (d, How::Locked),
                (None, LockMode::Locked) if !local => {
                    failures.push(Failure {
                        reference: written.clone(),
                        why: "it is not in the lock file, and `--locked` forbids resolving it"
                            .to_string(),
                        kind: FailureKind::NotLocked,
                        looked_in: None,
                    });
                    continue;
                }
                (None, _) => {
                    let resolved = super::open(&image_ref, &set.access).and_then(|mut source| {
                        super::resolve(source.as_mut(), &set.platform, blobs)
                    });
                    match resolved {
                        Ok(d) if local => (d, How::Local),
                        Ok(d) => {
                            let before = lock
                                .images
                                .insert((written.clone(), plat.clone()), d.clone());
                            changed |= before.as_ref() != Some(&d);
                            (d, How::Resolved)
                        }
                        Err(e) => {
                            let kind = match e {
                                ImageError::Platform(_) => FailureKind::Platform,
                                _ => FailureKind::Source,
                            };
                            failures.push(Failure {
                                reference: written.clone(),
                                why: e.to_string(),
                                kind,
                                looked_in: (!local && kind == FailureKind::Source)
                                    .then(|| blobs.root()),
                            });
                            continue;
                        }
                    }
                }
            };
            set.entries.insert(
                written.clone(),
                Arc::new(Entry {
                    image_ref,
                    digest,
                    how,
                    state: Default::default(),
                }),
            );
        }
        if failures.is_empty() {
            Ok((set, changed))
        } else {
            Err(failures)
        }
    }

    /// Every reference, the digest it resolved to and how, in order.
    pub fn resolved(&self) -> Vec<(String, Sha256, How)> {
        let mut out: Vec<_> = self
            .entries
            .iter()
            .map(|(r, e)| (r.clone(), e.digest.clone(), e.how))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// How registries are reached (plain HTTP for some).
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// The digest a reference resolved to.
    pub fn digest(&self, reference: &str) -> Option<&Sha256> {
        self.entries.get(reference).map(|e| &e.digest)
    }

    /// The state (tree and config) of an image: cached by its digest, or
    /// built from its layers (fetched from its source if the store lacks
    /// them), once per build. `done` hears of the work when there was some.
    pub fn state(
        &self,
        reference: &str,
        u: &Unpack<'_>,
        done: &dyn Fn(&Sha256, &Work),
    ) -> Result<State, String> {
        let Some(entry) = self.entries.get(reference).cloned() else {
            return Err(format!("`{reference}` was not resolved"));
        };
        // Held while the state is made: a second stage on the same image
        // waits for it rather than making it again.
        let mut held = entry.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(made) = &*held {
            return made.clone();
        }
        let made = self
            .build_state(&entry, u)
            .map_err(|e| e.to_string())
            .map(|(state, work)| {
                if let Some(w) = work {
                    done(&entry.digest, &w);
                }
                state
            });
        *held = Some(made.clone());
        made
    }

    /// Make every image's state again when next asked (a build that found
    /// the cache damaged, or a remote cache gone, builds again without
    /// what it took from them).
    pub fn forget_states(&self) {
        for e in self.entries.values() {
            *e.state.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    fn build_state(
        &self,
        entry: &Entry,
        u: &Unpack<'_>,
    ) -> Result<(State, Option<Work>), ImageError> {
        if let Some(s) = super::cached(u, &entry.digest) {
            self.used
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(super::rootfs_key(&entry.digest));
            return Ok((s, None));
        }
        // The source is opened only when the store lacks something.
        let mut source: Option<Box<dyn super::Source>> = None;
        let image = match super::load(&entry.digest, None, u.blobs) {
            Ok(i) => i,
            Err(_) => {
                let s = source.insert(super::open(&entry.image_ref, &self.access)?);
                super::load(&entry.digest, Some(s.as_mut()), u.blobs)?
            }
        };
        let all_here = image.layers.iter().all(|l| u.blobs.has(&l.digest));
        if !all_here && source.is_none() {
            source = Some(super::open(&entry.image_ref, &self.access)?);
        }
        let (state, keys, work) = super::unpack(u, &image, source.as_deref_mut())?;
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(keys);
        Ok((state, Some(work)))
    }

    /// An image's layers as its manifest lists them, every blob in the
    /// store (fetched from the source when missing), with the config's
    /// `diff_ids` and `history`: what an image built on it keeps.
    pub fn layers(
        &self,
        reference: &str,
        blobs: &OciBlobs,
        actions: &dyn crate::store::ActionCache,
    ) -> Result<BaseLayers, String> {
        let Some(entry) = self.entries.get(reference).cloned() else {
            return Err(format!("`{reference}` was not resolved"));
        };
        let mut source: Option<Box<dyn super::Source>> = None;
        let image = match super::load(&entry.digest, None, blobs) {
            Ok(i) => i,
            Err(_) => {
                let s = source.insert(
                    super::open(&entry.image_ref, &self.access).map_err(|e| e.to_string())?,
                );
                super::load(&entry.digest, Some(s.as_mut()), blobs).map_err(|e| e.to_string())?
            }
        };
        for l in &image.layers {
            if !blobs.has(&l.digest) {
                if source.is_none() {
                    source = Some(
                        super::open(&entry.image_ref, &self.access).map_err(|e| e.to_string())?,
                    );
                }
                if let Some(s) = source.as_mut() {
                    s.fetch_blob(&l.digest, l.size, blobs)
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        // What goes into an export is checked against the bytes first:
        // each layer's size (when fetched, or found stored) and diff_id.
        for l in &image.layers {
            super::verify_layer(l, blobs, actions).map_err(|e| e.to_string())?;
        }
        let config = blobs
            .read(&image.config_digest)
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_slice(&config)
            .map_err(|e| format!("the config of `{reference}` is not JSON: {e}"))?;
        let diff_ids: Vec<Sha256> = image.layers.iter().map(|l| l.diff_id.clone()).collect();
        let history = v
            .get("history")
            .and_then(|h| h.as_array())
            .cloned()
            .unwrap_or_default();
        Ok(BaseLayers {
            layers: image.layers,
            diff_ids,
            history,
        })
    }

    /// The cache keys of image trees this build used (kept by `kiln gc`).
    pub fn used_keys(&self) -> Vec<StepKey> {
        self.used.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
