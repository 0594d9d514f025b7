//! The remote cache kept in an OCI registry, as Docker users keep
//! BuildKit's (`--cache-to type=registry,ref=REG/NAME:TAG`, `--cache-from
//! …`): the same Actions, ActionResults and blobs as over REAPI, stored as
//! OCI artifacts in the repository `REG/NAME`, so any registry a team
//! already runs holds it.
//!
//! - Every blob (a file, a tree manifest, a blob list, `action.json`) is a
//!   registry blob named by its SHA-256; blobs the registry has are not
//!   uploaded again (a `HEAD` first).
//! - A step's result is an image manifest of artifact type
//!   [`STEP_TYPE`]: its config the ActionResult (protobuf), its layers the
//!   output files, annotated with the Action's digest.
//! - The tag is an image index of the steps' manifests (the Action's
//!   digest on each entry) and of manifests listing the files each build
//!   uploaded (so a registry's garbage collection keeps what the steps
//!   name): read once per build when a step is looked up, written when a
//!   build that made results ends, merged with what the tag held then
//!   (newest first, at most [`MAX_ENTRIES`] entries).
//!
//! What comes back is checked as over REAPI: manifests and blobs against
//! their digests, sizes against what names them, documents bounded.

use super::{BlobStream, Remote, Sha, re};
use crate::model::digest::hex;
use crate::store::oci::MAX_DOCUMENT;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Where the cache is read from and written to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryCache {
    /// `--cache-from type=registry,ref=…`: looked up.
    pub from: Option<String>,
    /// `--cache-to type=registry,ref=…`: written.
    pub to: Option<String>,
}

/// How to reach a repository, given by the registry client of the image
/// layer: its base URL (`…/v2/NAME`) and the `Authorization` header for
/// pulling or, with `push`, pushing (a token asked for afresh, within
/// `limit`).
pub trait Repository: Send {
    fn access(&mut self, push: bool, limit: Duration) -> Result<(String, Option<String>), String>;
    /// The tag the cache is kept under.
    fn tag(&self) -> String;
}

/// Opens a repository by its reference (`REG/NAME:TAG`), for pushing or
/// not.
pub type Open<'a> = dyn Fn(&str, bool) -> Result<Box<dyn Repository>, String> + Sync + 'a;

/// The artifact type of a step's manifest.
pub const STEP_TYPE: &str = "application/vnd.dev.kiln.step.v1";
/// The artifact type of a manifest listing the files a build uploaded.
const FILES_TYPE: &str = "application/vnd.dev.kiln.files.v1";
/// The artifact type of the index at the tag.
const CACHE_TYPE: &str = "application/vnd.dev.kiln.cache.v1";
const RESULT_MEDIA: &str = "application/vnd.dev.kiln.action-result.v1+protobuf";
const OUTPUT_MEDIA: &str = "application/vnd.dev.kiln.output.v1";
const FILE_MEDIA: &str = "application/vnd.dev.kiln.file.v1";
const EMPTY_MEDIA: &str = "application/vnd.oci.empty.v1+json";
const MANIFEST_MEDIA: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_MEDIA: &str = "application/vnd.oci.image.index.v1+json";
/// Every kind of document a tag may hold.
const ANY_DOCUMENT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.v1+prettyjws";
/// The annotation naming the Action a step's manifest answers.
const ACTION_KEY: &str = "dev.kiln.action";
/// The most entries the index keeps (about 300 bytes each, well inside
/// what registries take for a manifest).
pub const MAX_ENTRIES: usize = 5000;
/// Blobs uploaded at once.
const UPLOADS: usize = 8;
/// Questions (`HEAD`s) asked at once.
const QUESTIONS: usize = 16;

/// `f` of every item, on up to `threads` threads (network waits, not
/// work), in the items' order.
fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out: Mutex<Vec<(usize, R)>> = Mutex::new(Vec::with_capacity(items.len()));
    let work = || loop {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(item) = items.get(i) else {
            return;
        };
        let r = f(item);
        out.lock().unwrap_or_else(|e| e.into_inner()).push((i, r));
    };
    std::thread::scope(|s| {
        for _ in 1..threads.min(items.len()) {
            s.spawn(work);
        }
        work();
    });
    let mut out = out.into_inner().unwrap_or_else(|e| e.into_inner());
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}
/// The most bytes of blobs held in memory by uploads at once.
const IN_FLIGHT: u64 = 256 << 20;

/// Bytes that may be held at once, shared by threads.
struct Budget {
    left: Mutex<u64>,
    freed: std::sync::Condvar,
    total: u64,
}

/// Bytes taken from a [`Budget`], given back when dropped.
struct Held<'b> {
    budget: &'b Budget,
    bytes: u64,
}

impl Budget {
    fn new(total: u64) -> Budget {
        Budget {
            left: Mutex::new(total),
            freed: std::sync::Condvar::new(),
            total,
        }
    }

    /// Wait until `bytes` are free (a request larger than the whole
    /// budget waits for all of it) and take them.
    fn take(&self, bytes: u64) -> Held<'_> {
        let bytes = bytes.min(self.total);
        let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        while *left < bytes {
            left = self.freed.wait(left).unwrap_or_else(|e| e.into_inner());
        }
        *left -= bytes;
        Held {
            budget: self,
            bytes,
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        *self.budget.left.lock().unwrap_or_else(|e| e.into_inner()) += self.bytes;
        self.budget.freed.notify_all();
    }
}
/// The most files one file-list manifest names.
const FILES_PER_MANIFEST: usize = 8000;

/// One repository: how to reach it, and who may do what there.
struct Repo {
    shown: String,
    tag: String,
    push: bool,
    registry: Mutex<Box<dyn Repository>>,
    /// The base URL and `Authorization` header, once asked for.
    access: Mutex<Option<(String, Option<String>)>>,
}

impl Repo {
    fn new(text: &str, push: bool, open: &Open<'_>) -> Result<Repo, String> {
        let registry = open(text, push)?;
        Ok(Repo {
            shown: text.to_string(),
            tag: registry.tag(),
            push,
            registry: Mutex::new(registry),
            access: Mutex::new(None),
        })
    }

    fn access(&self, fresh: bool, limit: Duration) -> Result<(String, Option<String>), String> {
        let mut held = self.access.lock().unwrap_or_else(|e| e.into_inner());
        if !fresh && let Some(a) = &*held {
            return Ok(a.clone());
        }
        let a = self
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .access(self.push, limit)?;
        *held = Some(a.clone());
        Ok(a)
    }
}

/// How a request goes: its method, body and headers.
enum Call<'b> {
    Head,
    Get(&'static str),
    Post,
    Put(&'static str, &'b [u8]),
}

/// The cache in a registry, for [`Remote`].
pub(super) struct Link {
    from: Option<Repo>,
    to: Option<Repo>,
    agent: ureq::Agent,
    /// The index read from `from`: each Action's step manifest.
    index: OnceLock<HashMap<String, Sha>>,
    /// Step manifests pushed to `to` in this build: (Action, manifest).
    staged: Mutex<Vec<(String, Sha)>>,
    /// Files uploaded to `to` in this build.
    uploaded: Mutex<Vec<Sha>>,
    /// Whether `from` and `to` are one repository (tags aside): results
    /// taken from `from` are then named in `to`'s index too, as buildx's
    /// `mode=max` exports every step a build used.
    one_repository: bool,
}

/// A reference without its tag.
fn repository_of(reference: &str) -> &str {
    let slash = reference.rfind('/').unwrap_or(0);
    match reference.rfind(':') {
        Some(colon) if colon > slash => &reference[..colon],
        _ => reference,
    }
}

fn digest_of(sha: &Sha) -> String {
    format!("sha256:{}", hex(&sha.hash))
}

impl Link {
    pub(super) fn new(cache: &RegistryCache, open: &Open<'_>) -> Result<Link, String> {
        let repo = |r: &Option<String>, push: bool| {
            r.as_deref().map(|r| Repo::new(r, push, open)).transpose()
        };
        Ok(Link {
            from: repo(&cache.from, false)?,
            to: repo(&cache.to, true)?,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
            index: OnceLock::new(),
            staged: Mutex::new(Vec::new()),
            uploaded: Mutex::new(Vec::new()),
            one_repository: match (&cache.from, &cache.to) {
                (Some(f), Some(t)) => repository_of(f) == repository_of(t),
                _ => false,
            },
        })
    }

    pub(super) fn writes(&self) -> bool {
        self.to.is_some()
    }

    /// One request to `path` below the repository's base URL (or to an
    /// absolute URL the registry gave), asked again once with a fresh
    /// token when refused. `None` (and the remote off, with its warning)
    /// on failure; a 404 is `Some` (callers decide what absence means).
    fn call(
        &self,
        remote: &Remote,
        repo: &Repo,
        what: &str,
        path: &str,
        call: &Call<'_>,
        limit: Duration,
    ) -> Option<ureq::http::Response<ureq::Body>> {
        self.call_allowing(remote, repo, what, path, call, limit, &[404])
    }

    /// [`Link::call`], with the failing statuses in `allowed` handed back
    /// instead of turning the remote off.
    #[allow(clippy::too_many_arguments)]
    fn call_allowing(
        &self,
        remote: &Remote,
        repo: &Repo,
        what: &str,
        path: &str,
        call: &Call<'_>,
        limit: Duration,
        allowed: &[u16],
    ) -> Option<ureq::http::Response<ureq::Body>> {
        if remote.is_down() {
            return None;
        }
        let mut fresh = false;
        loop {
            let (base, auth) = match repo.access(fresh, remote.settings.timeout) {
                Ok(a) => a,
                Err(e) => {
                    remote.fail(what, &e);
                    return None;
                }
            };
            let url = if path.starts_with("http://") || path.starts_with("https://") {
                path.to_string()
            } else if path.starts_with("/v2/") {
                // A location the registry gave, on its own host.
                let host_end = base.find("/v2/").unwrap_or(base.len());
                format!("{}{path}", &base[..host_end])
            } else {
                format!("{base}/{path}")
            };
            // Credentials go to the registry's own host only (an upload's
            // location may name another).
            let origin_end = base.find("/v2/").unwrap_or(base.len());
            let auth = auth.filter(|_| {
                url.get(..origin_end) == base.get(..origin_end)
                    && matches!(url.as_bytes().get(origin_end), Some(b'/') | None)
            });
            let sent = {
                macro_rules! go {
                    ($req:expr, $send:expr) => {{
                        let mut req = $req;
                        if let Some(h) = &auth {
                            req = req.header("Authorization", h);
                        }
                        let req = req.config().timeout_global(Some(limit)).build();
                        $send(req)
                    }};
                }
                match call {
                    Call::Head => go!(self.agent.head(&url), |r: ureq::RequestBuilder<_>| r.call()),
                    Call::Get(accept) => go!(
                        self.agent.get(&url).header("Accept", *accept),
                        |r: ureq::RequestBuilder<_>| r.call()
                    ),
                    Call::Post => go!(self.agent.post(&url), |r: ureq::RequestBuilder<_>| r
                        .send_empty()),
                    Call::Put(media, body) => go!(
                        self.agent.put(&url).header("Content-Type", *media),
                        |r: ureq::RequestBuilder<_>| r.send(*body)
                    ),
                }
            };
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    remote.fail(what, &e.to_string());
                    return None;
                }
            };
            let status = resp.status().as_u16();
            if status == 401 && !fresh {
                fresh = true;
                continue;
            }
            if (200..300).contains(&status) || allowed.contains(&status) {
                return Some(resp);
            }
            remote.fail(what, &format!("`{}` answered {status}", repo.shown));
            return None;
        }
    }

    /// The body of a 2xx answer, at most `most` bytes (more is refused).
    fn body(
        remote: &Remote,
        what: &str,
        resp: ureq::http::Response<ureq::Body>,
        most: u64,
    ) -> Option<Vec<u8>> {
        if resp.status().as_u16() == 404 {
            return None;
        }
        let mut out = Vec::new();
        if let Err(e) = resp
            .into_body()
            .into_reader()
            .take(most + 1)
            .read_to_end(&mut out)
        {
            remote.fail(what, &e.to_string());
            return None;
        }
        if out.len() as u64 > most {
            remote.refuse(&format!("it sent more than the {most} bytes expected"));
            return None;
        }
        Some(out)
    }

    /// The step manifests the tag of `from` lists, read once.
    fn index(&self, remote: &Remote) -> &HashMap<String, Sha> {
        self.index.get_or_init(|| {
            let Some(from) = &self.from else {
                return HashMap::new();
            };
            read_index(self, remote, from)
                .map(|entries| {
                    entries
                        .into_iter()
                        .filter_map(|e| Some((e.action?, e.manifest)))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    pub(super) fn action_result(&self, remote: &Remote, action: Sha) -> Option<re::ActionResult> {
        let from = self.from.as_ref()?;
        let manifest = *self.index(remote).get(&hex(&action.hash))?;
        let bytes = self.document(remote, from, manifest, MANIFEST_MEDIA)?;
        let v: serde_json::Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(_) => {
                remote.fail("send a step's manifest", "it is not JSON");
                return None;
            }
        };
        let Some(config) = descriptor(&v["config"]) else {
            remote.fail("send a step's manifest", "it names no config");
            return None;
        };
        let data = self.read_from(remote, from, config, 1 << 20)?;
        match <re::ActionResult as prost::Message>::decode(&data[..]) {
            Ok(r) => {
                if self.one_repository {
                    self.staged
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((hex(&action.hash), manifest));
                }
                Some(r)
            }
            Err(_) => {
                remote.fail("send a step's result", "it cannot be read");
                None
            }
        }
    }

    /// A manifest or index by digest, checked against it.
    fn document(
        &self,
        remote: &Remote,
        repo: &Repo,
        sha: Sha,
        accept: &'static str,
    ) -> Option<Vec<u8>> {
        if sha.size > MAX_DOCUMENT {
            remote.fail(
                "send a manifest",
                "it names a manifest larger than kiln reads",
            );
            return None;
        }
        let what = "read a manifest";
        let resp = self.call(
            remote,
            repo,
            what,
            &format!("manifests/{}", digest_of(&sha)),
            &Call::Get(accept),
            remote.transfer_time(sha.size),
        )?;
        let bytes = Self::body(remote, what, resp, sha.size)?;
        if Sha::of(&bytes) != sha {
            remote.fail(
                "send a manifest",
                &format!("manifest {} came back with other bytes", digest_of(&sha)),
            );
            return None;
        }
        remote
            .downloaded_bytes
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Some(bytes)
    }

    pub(super) fn missing(&self, remote: &Remote, blobs: &[Sha]) -> Option<Vec<Sha>> {
        let to = self.to.as_ref()?;
        let found: Vec<Option<Option<Sha>>> = in_parallel(blobs, QUESTIONS, |sha| {
            let resp = self.call(
                remote,
                to,
                "say which blobs it has",
                &format!("blobs/{}", digest_of(sha)),
                &Call::Head,
                remote.settings.timeout,
            )?;
            Some((resp.status().as_u16() == 404).then_some(*sha))
        });
        found
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .map(|v| v.into_iter().flatten().collect())
    }

    pub(super) fn upload(
        &self,
        remote: &Remote,
        blobs: &[Sha],
        bytes: &(dyn Fn(&Sha) -> Option<Vec<u8>> + Sync),
    ) -> bool {
        let Some(to) = &self.to else {
            return false;
        };
        // A registry takes one blob per two round trips (and often a
        // sync): several at once, holding at most [`IN_FLIGHT`] bytes
        // (or one larger blob alone).
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let budget = Budget::new(IN_FLIGHT);
        let work = || {
            use std::sync::atomic::Ordering::Relaxed;
            while !failed.load(Relaxed) {
                let Some(sha) = blobs.get(next.fetch_add(1, Relaxed)) else {
                    return;
                };
                let _held = budget.take(sha.size);
                let sent = bytes(sha).is_some_and(|data| self.put_blob(remote, to, *sha, &data));
                if !sent {
                    failed.store(true, Relaxed);
                    return;
                }
                self.uploaded
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(*sha);
            }
        };
        std::thread::scope(|s| {
            for _ in 1..UPLOADS.min(blobs.len()) {
                s.spawn(work);
            }
            work();
        });
        !failed.into_inner()
    }

    /// Upload one blob: a session, then its bytes in one `PUT`.
    fn put_blob(&self, remote: &Remote, to: &Repo, sha: Sha, data: &[u8]) -> bool {
        let what = "store a blob";
        let Some(started) = self.call(
            remote,
            to,
            what,
            "blobs/uploads/",
            &Call::Post,
            remote.settings.timeout,
        ) else {
            return false;
        };
        let location = started
            .headers()
            .get("Location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let Some(location) = location.filter(|_| started.status().as_u16() == 202) else {
            remote.fail(what, "it started no upload");
            return false;
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let done = self.call(
            remote,
            to,
            what,
            &format!("{location}{sep}digest={}", digest_of(&sha)),
            &Call::Put("application/octet-stream", data),
            remote.transfer_time(sha.size),
        );
        match done {
            Some(r) if r.status().as_u16() == 201 => {
                remote
                    .uploaded_blobs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                remote
                    .uploaded_bytes
                    .fetch_add(sha.size, std::sync::atomic::Ordering::Relaxed);
                true
            }
            Some(r) => {
                remote.fail(
                    what,
                    &format!("the upload answered {}", r.status().as_u16()),
                );
                false
            }
            None => false,
        }
    }

    /// Push a manifest or index by digest (or at `tag`).
    fn put_document(
        &self,
        remote: &Remote,
        to: &Repo,
        at: &str,
        media: &'static str,
        body: &[u8],
    ) -> bool {
        let what = "store a manifest";
        match self.call(
            remote,
            to,
            what,
            &format!("manifests/{at}"),
            &Call::Put(media, body),
            remote.transfer_time(body.len() as u64),
        ) {
            Some(r) if r.status().as_u16() == 201 => true,
            Some(r) => {
                remote.fail(what, &format!("it answered {}", r.status().as_u16()));
                false
            }
            None => false,
        }
    }

    /// Store `result` for `action`: its config blob and its manifest; the
    /// tag is written by [`Link::flush`].
    pub(super) fn record(&self, remote: &Remote, action: Sha, result: re::ActionResult) -> bool {
        let Some(to) = &self.to else {
            return false;
        };
        let config = prost::Message::encode_to_vec(&result);
        let config_sha = Sha::of(&config);
        if self
            .missing(remote, &[config_sha])
            .is_none_or(|m| !m.is_empty())
            && !self.put_blob(remote, to, config_sha, &config)
        {
            return false;
        }
        let layers: Vec<serde_json::Value> = result
            .output_files
            .iter()
            .filter_map(|f| {
                let sha = super::Sha::from_proto(f.digest.as_ref()?)?;
                Some(serde_json::json!({
                    "mediaType": OUTPUT_MEDIA,
                    "digest": digest_of(&sha),
                    "size": sha.size,
                    "annotations": {"org.opencontainers.image.title": f.path},
                }))
            })
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA,
            "artifactType": STEP_TYPE,
            "config": {"mediaType": RESULT_MEDIA, "digest": digest_of(&config_sha), "size": config_sha.size},
            "layers": layers,
            "annotations": {ACTION_KEY: hex(&action.hash)},
        });
        let body = serde_json::to_vec(&manifest).unwrap_or_default();
        let sha = Sha::of(&body);
        if !self.put_document(remote, to, &digest_of(&sha), MANIFEST_MEDIA, &body) {
            return false;
        }
        self.staged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((hex(&action.hash), sha));
        remote
            .results_uploaded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// Write the tag: this build's steps and file lists first, then what
    /// the tag held that they do not replace, at most [`MAX_ENTRIES`].
    pub(super) fn flush(&self, remote: &Remote) {
        let Some(to) = &self.to else {
            return;
        };
        let staged = std::mem::take(&mut *self.staged.lock().unwrap_or_else(|e| e.into_inner()));
        if staged.is_empty() || remote.is_down() {
            return;
        }
        let uploaded =
            std::mem::take(&mut *self.uploaded.lock().unwrap_or_else(|e| e.into_inner()));
        let mut entries: Vec<Entry> = staged
            .iter()
            .map(|(action, manifest)| Entry {
                action: Some(action.clone()),
                manifest: *manifest,
                kind: STEP_TYPE,
            })
            .collect();
        if !uploaded.is_empty() {
            let empty = b"{}";
            let empty_sha = Sha::of(empty);
            if self
                .missing(remote, &[empty_sha])
                .is_none_or(|m| !m.is_empty())
                && !self.put_blob(remote, to, empty_sha, empty)
            {
                return;
            }
            for files in uploaded.chunks(FILES_PER_MANIFEST) {
                let manifest = serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": MANIFEST_MEDIA,
                    "artifactType": FILES_TYPE,
                    "config": {"mediaType": EMPTY_MEDIA, "digest": digest_of(&empty_sha), "size": 2},
                    "layers": files.iter().map(|f| serde_json::json!({
                        "mediaType": FILE_MEDIA, "digest": digest_of(f), "size": f.size,
                    })).collect::<Vec<_>>(),
                });
                let body = serde_json::to_vec(&manifest).unwrap_or_default();
                let sha = Sha::of(&body);
                if !self.put_document(remote, to, &digest_of(&sha), MANIFEST_MEDIA, &body) {
                    return;
                }
                entries.push(Entry {
                    action: None,
                    manifest: sha,
                    kind: FILES_TYPE,
                });
            }
        }
        let replaced: HashSet<String> = staged.iter().map(|(a, _)| a.clone()).collect();
        self.write_tag(remote, to, entries, &replaced);
    }

    /// Write the index at `to`'s tag: `ours` first, then what the tag
    /// holds when it is written that `ours` does not replace. The registry
    /// has no compare-and-swap: the tag is read back after it is written,
    /// and merged again when another build's write replaced ours (a few
    /// times at most). Entries whose manifests the registry no longer has
    /// (deleted, collected) are dropped when it refuses the index.
    fn write_tag(&self, remote: &Remote, to: &Repo, ours: Vec<Entry>, replaced: &HashSet<String>) {
        let mut check_old = false;
        for _ in 0..4 {
            let Some(old) = read_index(self, remote, to) else {
                return;
            };
            let mut entries: Vec<&Entry> = ours.iter().collect();
            let mut seen: HashSet<[u8; 32]> = ours.iter().map(|e| e.manifest.hash).collect();
            for e in &old {
                if e.action.as_ref().is_some_and(|a| replaced.contains(a))
                    || !seen.insert(e.manifest.hash)
                    || (check_old && !self.has_manifest(remote, to, e.manifest))
                {
                    continue;
                }
                entries.push(e);
            }
            entries.truncate(MAX_ENTRIES);
            let index = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": INDEX_MEDIA,
                "artifactType": CACHE_TYPE,
                "manifests": entries.iter().map(|e| e.json()).collect::<Vec<_>>(),
            });
            let body = serde_json::to_vec(&index).unwrap_or_default();
            if body.len() as u64 > MAX_DOCUMENT {
                remote.fail(
                    "store the cache's index",
                    "it would be larger than registries take",
                );
                return;
            }
            let what = "store the cache's index";
            let Some(resp) = self.call_allowing(
                remote,
                to,
                what,
                &format!("manifests/{}", to.tag),
                &Call::Put(INDEX_MEDIA, &body),
                remote.transfer_time(body.len() as u64),
                &[400],
            ) else {
                return;
            };
            if resp.status().as_u16() == 400 {
                if check_old {
                    remote.fail(what, "it refused the index (400)");
                    return;
                }
                // A manifest the old index named is gone.
                check_old = true;
                continue;
            }
            // Ours are there unless another build wrote the tag meanwhile.
            let Some(now) = read_index(self, remote, to) else {
                return;
            };
            let there: HashSet<[u8; 32]> = now.iter().map(|e| e.manifest.hash).collect();
            if ours.iter().all(|e| there.contains(&e.manifest.hash)) {
                return;
            }
        }
        remote.warn(format!(
            "the registry cache at `{}` was written by other builds at the same time, again and again: some of this build's results may be missing from its index",
            to.shown
        ));
    }

    /// Whether the registry has the manifest `sha` (`HEAD`).
    fn has_manifest(&self, remote: &Remote, repo: &Repo, sha: Sha) -> bool {
        self.call(
            remote,
            repo,
            "say which manifests it has",
            &format!("manifests/{}", digest_of(&sha)),
            &Call::Head,
            remote.settings.timeout,
        )
        .is_some_and(|r| r.status().is_success())
    }

    /// A blob of at most `most` bytes from `repo`, checked.
    fn read_from(&self, remote: &Remote, repo: &Repo, sha: Sha, most: u64) -> Option<Vec<u8>> {
        if sha.size > most {
            remote.refuse(&format!(
                "it names a blob of {} bytes where at most {most} make sense",
                sha.size
            ));
            return None;
        }
        let what = "read a blob";
        let resp = self.call(
            remote,
            repo,
            what,
            &format!("blobs/{}", digest_of(&sha)),
            &Call::Get("*/*"),
            remote.transfer_time(sha.size),
        )?;
        let data = Self::body(remote, what, resp, sha.size)?;
        if Sha::of(&data) != sha {
            remote.refuse(&format!(
                "blob {} came back with other bytes",
                digest_of(&sha)
            ));
            return None;
        }
        remote
            .downloaded_bytes
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Some(data)
    }

    pub(super) fn read(&self, remote: &Remote, sha: Sha) -> Option<Vec<u8>> {
        self.read_from(remote, self.from.as_ref()?, sha, u64::MAX)
    }

    /// A blob streamed as it arrives, checked at its end ([`BlobStream`]).
    pub(super) fn reader<'r>(&self, remote: &'r Remote, sha: Sha) -> Option<BlobStream<'r>> {
        let from = self.from.as_ref()?;
        let resp = self.call(
            remote,
            from,
            "read a blob",
            &format!("blobs/{}", digest_of(&sha)),
            &Call::Get("*/*"),
            remote.transfer_time(sha.size),
        )?;
        if resp.status().as_u16() == 404 {
            return None;
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, String>>(8);
        let mut body = resp.into_body().into_reader().take(sha.size + 1);
        std::thread::Builder::new()
            .name("kiln-remote-read".into())
            .spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    match body.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.blocking_send(Err(e.to_string()));
                            return;
                        }
                    }
                }
            })
            .ok()?;
        Some(BlobStream::new(remote, sha, rx))
    }
}

/// One entry of the index at a tag.
struct Entry {
    /// The Action a step's manifest answers (none for a file list).
    action: Option<String>,
    manifest: Sha,
    kind: &'static str,
}

impl Entry {
    fn json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "mediaType": MANIFEST_MEDIA,
            "digest": digest_of(&self.manifest),
            "size": self.manifest.size,
            "artifactType": self.kind,
        });
        if let Some(a) = &self.action {
            v["annotations"] = serde_json::json!({ ACTION_KEY: a });
        }
        v
    }
}

/// A descriptor's digest and size, if it is a SHA-256 one.
fn descriptor(v: &serde_json::Value) -> Option<Sha> {
    let digest = v["digest"].as_str()?.strip_prefix("sha256:")?;
    let mut hash = [0u8; 32];
    (digest.len() == 64 && faster_hex::hex_decode(digest.as_bytes(), &mut hash).is_ok())
        .then_some(())?;
    Some(Sha {
        hash,
        size: v["size"].as_u64()?,
    })
}

/// The entries of the index at `repo`'s tag (none when there is no tag
/// yet; `None` when it cannot be read).
fn read_index(link: &Link, remote: &Remote, repo: &Repo) -> Option<Vec<Entry>> {
    let what = "read the cache's index";
    let resp = link.call(
        remote,
        repo,
        what,
        &format!("manifests/{}", repo.tag),
        // Whatever the tag holds, so an image there is seen (and kept).
        &Call::Get(ANY_DOCUMENT),
        remote.transfer_time(MAX_DOCUMENT),
    )?;
    if resp.status().as_u16() == 404 {
        return Some(Vec::new());
    }
    let bytes = Link::body(remote, what, resp, MAX_DOCUMENT)?;
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        remote.fail(
            "keep kiln's cache under its tag",
            &format!("the tag of `{}` is not an index", repo.shown),
        );
        return None;
    };
    if v["artifactType"].as_str() != Some(CACHE_TYPE) {
        remote.fail(
            "keep kiln's cache under its tag",
            &format!(
                "`{}` holds something else (an image?), which kiln neither reads as a cache nor overwrites",
                repo.shown
            ),
        );
        return None;
    }
    let entries = v["manifests"].as_array().map(|all| {
        all.iter()
            .filter_map(|m| {
                let manifest = descriptor(m)?;
                let kind = match m["artifactType"].as_str()? {
                    STEP_TYPE => STEP_TYPE,
                    FILES_TYPE => FILES_TYPE,
                    _ => return None,
                };
                let action = m["annotations"][ACTION_KEY]
                    .as_str()
                    .filter(|a| a.len() == 64 && a.bytes().all(|b| b.is_ascii_hexdigit()))
                    .map(str::to_string);
                (kind == FILES_TYPE || action.is_some()).then_some(Entry {
                    action,
                    manifest,
                    kind,
                })
            })
            .collect()
    });
    Some(entries.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_hold_at_most_the_budget() {
        let budget = Budget::new(100);
        let most = std::sync::atomic::AtomicU64::new(0);
        let now = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for size in [60u64, 50, 40, 30, 500, 10, 90] {
                let (budget, most, now) = (&budget, &most, &now);
                s.spawn(move || {
                    use std::sync::atomic::Ordering::SeqCst;
                    let held = budget.take(size);
                    let n = now.fetch_add(held.bytes, SeqCst) + held.bytes;
                    most.fetch_max(n, SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    now.fetch_sub(held.bytes, SeqCst);
                });
            }
        });
        assert!(most.into_inner() <= 100);
        assert_eq!(*budget.left.lock().unwrap(), 100);
    }
}
