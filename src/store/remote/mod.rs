//! A remote cache over the Remote Execution API (REAPI v2, gRPC): the
//! Action Cache and the Content Addressable Storage of a server a team
//! already runs (BuildGrid, Buildbarn, bazel-remote, …).
//!
//! kiln's own addresses stay blake3; the server's are SHA-256 (what every
//! server supports), mapped by [`map::ShaMap`]. A kiln step is a REAPI
//! Action whose Command names the step (`kiln step KEY`) and whose input
//! root holds the step's key, the digest of
//! everything the step reads (so equal inputs give equal Actions in any
//! checkout, state directory or machine). Its ActionResult holds the
//! step's result as output files: `kiln/action.json` (the image config
//! after the step, and the tree's digest), `kiln/tree` (the tree's
//! manifest) and `kiln/blobs` (each file's blake3 and SHA-256), so a
//! machine that takes the result needs no byte of the tree until it reads
//! one ("build without the bytes": [`tiered::Tiered`]).
//!
//! The same cache can be kept in an OCI registry instead ([`registry`]:
//! `--cache-to`/`--cache-from type=registry,ref=…`): the same Actions,
//! results and blobs, as artifacts under an index at a tag.
//!
//! Faults cost one bounded wait: the first call that fails or times out
//! turns the remote off for the rest of the build, with one warning.

pub mod map;
pub mod registry;
pub mod tiered;

use crate::model::digest::hex;
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream as bs;
use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Where the remote cache is and how to use it.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `grpc://HOST:PORT` or `grpcs://HOST:PORT`.
    pub url: String,
    /// The REAPI instance name (empty for the default instance).
    pub instance: String,
    /// Headers sent with every call (an authorization header, say).
    pub headers: Vec<(String, String)>,
    /// Whether results built here are uploaded.
    pub upload: bool,
    /// The longest a call may take before the remote is given up on.
    pub timeout: Duration,
    /// The cache is kept in a registry instead (`url` then names it in
    /// messages).
    pub registry: Option<registry::RegistryCache>,
}

impl Settings {
    /// Whether the settings can be used: the URL ([`Settings::endpoint`])
    /// and each header's name and value.
    pub fn check(&self) -> Result<(), String> {
        if self.registry.is_some() {
            return Ok(());
        }
        self.endpoint()?;
        for (k, v) in &self.headers {
            tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(
                k.to_ascii_lowercase().as_bytes(),
            )
            .map_err(|_| format!("`{k}` cannot be the name of a header"))?;
            tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(v.as_str())
                .map_err(|_| {
                    format!("the value of header `{k}` cannot be sent (visible ASCII only)")
                })?;
        }
        Ok(())
    }

    /// The server's address as tonic takes it ([`endpoint`]).
    pub fn endpoint(&self) -> Result<String, String> {
        endpoint(&self.url)
    }
}

/// A REAPI server's address as tonic takes it, from its `grpc://` or
/// `grpcs://` URL; an error says what is wrong with the URL.
pub fn endpoint(url: &str) -> Result<String, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("`{url}` is not a URL: write grpc://HOST:PORT"))?;
    let scheme = match scheme {
        "grpc" => "http",
        "grpcs" => "https",
        other => {
            return Err(format!(
                "`{other}://` is not a remote cache scheme: use grpc:// or grpcs://"
            ));
        }
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(format!(
            "`{url}` must be grpc://HOST:PORT or grpcs://HOST:PORT (no path)"
        ));
    }
    Ok(format!("{scheme}://{host}"))
}

/// A SHA-256 digest and size, as REAPI names a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sha {
    pub hash: [u8; 32],
    pub size: u64,
}

impl Sha {
    pub fn of(bytes: &[u8]) -> Sha {
        use sha2::Digest;
        Sha {
            hash: sha2::Sha256::digest(bytes).into(),
            size: bytes.len() as u64,
        }
    }

    fn proto(&self) -> re::Digest {
        re::Digest {
            hash: hex(&self.hash),
            size_bytes: self.size as i64,
        }
    }

    fn from_proto(d: &re::Digest) -> Option<Sha> {
        let mut hash = [0u8; 32];
        (d.hash.len() == 64 && faster_hex::hex_decode(d.hash.as_bytes(), &mut hash).is_ok())
            .then_some(())?;
        Some(Sha {
            hash,
            size: u64::try_from(d.size_bytes).ok()?,
        })
    }
}

/// What the remote did in one build.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub hits: u64,
    pub uploaded_blobs: u64,
    pub uploaded_bytes: u64,
    pub downloaded_bytes: u64,
    pub results_uploaded: u64,
}

/// A connection to a REAPI server.
pub struct Remote {
    settings: Settings,
    rt: tokio::runtime::Runtime,
    link: Link,
    /// What the server said it takes, asked on first use (a build whose
    /// every step is found here asks the server nothing).
    caps: std::sync::OnceLock<Caps>,
    /// Turned on by the first failure: the build goes on without it.
    down: AtomicBool,
    /// The build gave up on it after what it took could not be read.
    given_up: AtomicBool,
    /// What to tell the user, once each.
    warnings: Mutex<Vec<String>>,
    hits: AtomicU64,
    uploaded_blobs: AtomicU64,
    uploaded_bytes: AtomicU64,
    downloaded_bytes: AtomicU64,
    results_uploaded: AtomicU64,
}

/// How the cache is spoken to.
enum Link {
    /// A REAPI server over gRPC.
    Grpc(tonic::transport::Channel),
    /// An OCI registry.
    Registry(Box<registry::Link>),
}

/// What the server takes.
#[derive(Clone, Copy, Debug)]
struct Caps {
    /// The largest batch of blobs in one call.
    max_batch: u64,
    /// Whether clients may record results.
    updates: bool,
}

/// Blobs at most this large go in batches; larger ones by ByteStream
/// (gRPC's usual 4 MiB message limit, less room for the request's own
/// fields).
const BATCH_LIMIT: u64 = (4 << 20) - (64 << 10);
/// The largest message taken from the server (a batch of blobs).
const MAX_MESSAGE: usize = 16 << 20;
/// ByteStream chunks.
const CHUNK: usize = 1 << 20;

impl Remote {
    /// Connect and read the server's capabilities: it must take SHA-256
    /// and, when results are to be uploaded, let clients update its
    /// Action Cache. A server that cannot be reached is not an error here:
    /// the remote is down from the start, with its warning.
    pub fn connect(settings: Settings, open: &registry::Open<'_>) -> Result<Remote, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kiln-remote")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the remote cache's client: {e}"))?;
        let link = match &settings.registry {
            Some(r) => Link::Registry(Box::new(registry::Link::new(r, open)?)),
            None => Link::Grpc(Self::channel(&settings, &rt)?),
        };
        Ok(Remote {
            settings,
            rt,
            link,
            caps: std::sync::OnceLock::new(),
            down: AtomicBool::new(false),
            given_up: AtomicBool::new(false),
            warnings: Mutex::new(Vec::new()),
            hits: AtomicU64::new(0),
            uploaded_blobs: AtomicU64::new(0),
            uploaded_bytes: AtomicU64::new(0),
            downloaded_bytes: AtomicU64::new(0),
            results_uploaded: AtomicU64::new(0),
        })
    }

    /// A lazily connected gRPC channel to the server.
    fn channel(
        settings: &Settings,
        rt: &tokio::runtime::Runtime,
    ) -> Result<tonic::transport::Channel, String> {
        let endpoint = settings.endpoint()?;
        let ep = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .map_err(|e| format!("`{}` is not a usable address: {e}", settings.url))?
            .connect_timeout(settings.timeout);
        let ep = if endpoint.starts_with("https://") {
            ep.tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots())
                .map_err(|e| format!("cannot set up TLS for `{}`: {e}", settings.url))?
        } else {
            ep
        };
        let _guard = rt.enter();
        Ok(ep.connect_lazy())
    }

    /// The gRPC channel, or the registry to go to instead.
    fn grpc(&self) -> Result<tonic::transport::Channel, &registry::Link> {
        match &self.link {
            Link::Grpc(c) => Ok(c.clone()),
            Link::Registry(r) => Err(r),
        }
    }

    /// The server's capabilities, read once: it must keep a cache and
    /// take SHA-256 digests, else the build goes on without it.
    fn caps(&self) -> Option<&Caps> {
        let caps = self.caps.get_or_init(|| {
            self.read_caps().unwrap_or(Caps {
                max_batch: BATCH_LIMIT,
                updates: false,
            })
        });
        (!self.is_down()).then_some(caps)
    }

    fn read_caps(&self) -> Option<Caps> {
        let Ok(channel) = self.grpc() else {
            return None;
        };
        let mut client = re::capabilities_client::CapabilitiesClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE);
        let req = self.request(re::GetCapabilitiesRequest {
            instance_name: self.settings.instance.clone(),
        });
        let caps = self.send(
            "read the server's capabilities",
            async move { client.get_capabilities(req).await },
            self.settings.timeout,
        )?;
        let Some(cache) = caps.cache_capabilities else {
            self.fail("keep a cache", "its capabilities list none");
            return None;
        };
        let sha256 = re::digest_function::Value::Sha256 as i32;
        if !cache.digest_functions.is_empty() && !cache.digest_functions.contains(&sha256) {
            self.fail(
                "take SHA-256 digests",
                "its capabilities list other digest functions",
            );
            return None;
        }
        let max_batch = if cache.max_batch_total_size_bytes > 0 {
            // Room for the request's own fields.
            (cache.max_batch_total_size_bytes as u64)
                .saturating_sub(64 << 10)
                .clamp(64 << 10, BATCH_LIMIT)
        } else {
            BATCH_LIMIT
        };
        let updates = cache
            .action_cache_update_capabilities
            .is_some_and(|c| c.update_enabled);
        if self.settings.upload && !updates {
            self.warn(format!(
                "the server at `{}` does not let clients record results: nothing is uploaded (set --remote-upload=false to say so)",
                self.settings.url
            ));
        }
        Some(Caps { max_batch, updates })
    }

    fn max_batch(&self) -> u64 {
        self.caps().map_or(BATCH_LIMIT, |c| c.max_batch)
    }

    /// Whether uploads were asked for (and the remote is not down), without
    /// asking the server anything.
    pub fn wants_uploads(&self) -> bool {
        let writes = match &self.link {
            Link::Grpc(_) => self.settings.upload,
            Link::Registry(r) => r.writes(),
        };
        writes && !self.is_down()
    }

    /// Whether results built here are to be uploaded.
    pub fn uploads(&self) -> bool {
        match &self.link {
            Link::Grpc(_) => self.settings.upload && self.caps().is_some_and(|c| c.updates),
            Link::Registry(r) => r.writes() && !self.is_down(),
        }
    }

    /// What must be written once the build's results are recorded (the
    /// registry's tag; nothing over REAPI).
    pub fn flush(&self) {
        if let Link::Registry(r) = &self.link {
            r.flush(self);
        }
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// What to tell the user (why the remote went down, what it will not
    /// do), each once.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A result was taken from the server.
    pub fn count_hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn tally(&self) -> Tally {
        Tally {
            hits: self.hits.load(Ordering::Relaxed),
            uploaded_blobs: self.uploaded_blobs.load(Ordering::Relaxed),
            uploaded_bytes: self.uploaded_bytes.load(Ordering::Relaxed),
            downloaded_bytes: self.downloaded_bytes.load(Ordering::Relaxed),
            results_uploaded: self.results_uploaded.load(Ordering::Relaxed),
        }
    }

    fn warn(&self, message: String) {
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(message);
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        for (k, v) in &self.settings.headers {
            if let (Ok(k), Ok(v)) = (
                tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()),
                tonic::metadata::MetadataValue::try_from(v.as_str()),
            ) {
                req.metadata_mut().insert(k, v);
            }
        }
        req
    }

    /// Run one call, bounded by the timeout. A failure turns the remote
    /// off (with its warning) and gives `None`; so does a call made after.
    fn call<T, F>(&self, what: &str, fut: F) -> Option<T>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send,
        T: Send,
    {
        self.call_for(what, fut, self.settings.timeout)
    }

    fn call_for<T, F>(&self, what: &str, fut: F, limit: Duration) -> Option<T>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send,
        T: Send,
    {
        // The capabilities first (once).
        self.caps()?;
        self.send(what, fut, limit)
    }

    /// One call, whatever the capabilities: see [`Remote::call`].
    fn send<T, F>(&self, what: &str, fut: F, limit: Duration) -> Option<T>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send,
        T: Send,
    {
        if self.is_down() {
            return None;
        }
        let outcome = self
            .rt
            .block_on(async { tokio::time::timeout(limit, fut).await });
        match outcome {
            Ok(Ok(r)) => Some(r.into_inner()),
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => None,
            Ok(Err(status)) => {
                self.fail(what, &describe(&status));
                None
            }
            Err(_) => {
                self.fail(what, &format!("no answer within {:?}", limit));
                None
            }
        }
    }

    /// Stop using the server for the rest of the build: what it named
    /// could not be read (a warning says so unless one already said why).
    pub fn give_up(&self) {
        self.given_up.store(true, Ordering::Relaxed);
        self.fail(
            "keep what its results name",
            "a tree or file a result named could not be read",
        );
    }

    /// Whether [`Remote::give_up`] was called.
    pub fn given_up(&self) -> bool {
        self.given_up.load(Ordering::Relaxed)
    }

    /// Stop trusting the server for the rest of the build (what it sent
    /// was not what it named).
    pub fn refuse(&self, why: &str) {
        self.fail("send a blob", why);
    }

    fn fail(&self, what: &str, why: &str) {
        if !self.down.swap(true, Ordering::Relaxed) {
            self.warn(format!(
                "the remote cache at `{}` failed to {what} ({why}); this build goes on without it",
                self.settings.url
            ));
        }
    }

    /// The ActionResult recorded for `action`, if any.
    pub fn action_result(&self, action: Sha) -> Option<re::ActionResult> {
        let channel = match self.grpc() {
            Ok(c) => c,
            Err(r) => return r.action_result(self, action),
        };
        let mut client = re::action_cache_client::ActionCacheClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE);
        let req = self.request(re::GetActionResultRequest {
            instance_name: self.settings.instance.clone(),
            action_digest: Some(action.proto()),
            inline_output_files: vec![tiered::ACTION_FILE.into()],
            digest_function: re::digest_function::Value::Sha256 as i32,
            ..Default::default()
        });
        self.call("look up a result", async move {
            client.get_action_result(req).await
        })
    }

    /// Record `result` for `action`.
    pub fn record(&self, action: Sha, result: re::ActionResult) -> bool {
        let channel = match self.grpc() {
            Ok(c) => c,
            Err(r) => return r.record(self, action, result),
        };
        let mut client = re::action_cache_client::ActionCacheClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE);
        let req = self.request(re::UpdateActionResultRequest {
            instance_name: self.settings.instance.clone(),
            action_digest: Some(action.proto()),
            action_result: Some(result),
            digest_function: re::digest_function::Value::Sha256 as i32,
            ..Default::default()
        });
        let done = self
            .call("record a result", async move {
                client.update_action_result(req).await
            })
            .is_some();
        if done {
            self.results_uploaded.fetch_add(1, Ordering::Relaxed);
        }
        done
    }

    /// Which of `blobs` the server lacks (all of them when it cannot say).
    pub fn missing(&self, blobs: &[Sha]) -> Option<Vec<Sha>> {
        let channel = match self.grpc() {
            Ok(c) => c,
            Err(r) => return r.missing(self, blobs),
        };
        let mut out = Vec::new();
        for chunk in blobs.chunks(10_000) {
            let mut client =
                re::content_addressable_storage_client::ContentAddressableStorageClient::new(
                    channel.clone(),
                );
            let req = self.request(re::FindMissingBlobsRequest {
                instance_name: self.settings.instance.clone(),
                blob_digests: chunk.iter().map(Sha::proto).collect(),
                digest_function: re::digest_function::Value::Sha256 as i32,
            });
            let r = self.call("find which blobs it lacks", async move {
                client.find_missing_blobs(req).await
            })?;
            out.extend(r.missing_blob_digests.iter().filter_map(Sha::from_proto));
        }
        Some(out)
    }

    /// Upload blobs (each read by `bytes` when its turn comes): small ones
    /// in batches, large ones by ByteStream. `false` when the remote went
    /// down on the way.
    pub fn upload(&self, blobs: &[Sha], bytes: &(dyn Fn(&Sha) -> Option<Vec<u8>> + Sync)) -> bool {
        if let Err(r) = self.grpc() {
            return r.upload(self, blobs, bytes);
        }
        let mut batch: Vec<(Sha, Vec<u8>)> = Vec::new();
        let mut batch_size = 0u64;
        for sha in blobs {
            // A blob that cannot be read here: the results naming it are
            // not recorded.
            let Some(data) = bytes(sha) else {
                return false;
            };
            if sha.size > self.max_batch() {
                if !self.write_stream(*sha, data) {
                    return false;
                }
                continue;
            }
            if batch_size + sha.size > self.max_batch()
                && !self.send_batch(std::mem::take(&mut batch))
            {
                return false;
            }
            if batch.is_empty() {
                batch_size = 0;
            }
            batch_size += sha.size;
            batch.push((*sha, data));
        }
        batch.is_empty() || self.send_batch(batch)
    }

    fn send_batch(&self, batch: Vec<(Sha, Vec<u8>)>) -> bool {
        if batch.is_empty() {
            return true;
        }
        let total: u64 = batch.iter().map(|(s, _)| s.size).sum();
        let n = batch.len() as u64;
        let Ok(channel) = self.grpc() else {
            return false;
        };
        let mut client =
            re::content_addressable_storage_client::ContentAddressableStorageClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE);
        let req = self.request(re::BatchUpdateBlobsRequest {
            instance_name: self.settings.instance.clone(),
            requests: batch
                .into_iter()
                .map(|(sha, data)| re::batch_update_blobs_request::Request {
                    digest: Some(sha.proto()),
                    data,
                    compressor: 0,
                })
                .collect(),
            digest_function: re::digest_function::Value::Sha256 as i32,
        });
        let Some(r) = self.call_for(
            "store blobs",
            async move { client.batch_update_blobs(req).await },
            self.transfer_time(total),
        ) else {
            return false;
        };
        if let Some(bad) = r
            .responses
            .iter()
            .find(|x| x.status.as_ref().is_some_and(|s| s.code != 0))
        {
            let why = bad
                .status
                .as_ref()
                .map(|s| s.message.clone())
                .unwrap_or_default();
            self.fail("store a blob", &why);
            return false;
        }
        self.uploaded_blobs.fetch_add(n, Ordering::Relaxed);
        self.uploaded_bytes.fetch_add(total, Ordering::Relaxed);
        true
    }

    fn write_stream(&self, sha: Sha, data: Vec<u8>) -> bool {
        let resource = format!(
            "{}uploads/{}/blobs/{}/{}",
            self.instance_prefix(),
            upload_id(),
            hex(&sha.hash),
            sha.size
        );
        let mut requests = Vec::new();
        let mut offset = 0usize;
        while offset < data.len() || requests.is_empty() {
            let end = (offset + CHUNK).min(data.len());
            requests.push(bs::WriteRequest {
                resource_name: if offset == 0 {
                    resource.clone()
                } else {
                    String::new()
                },
                write_offset: offset as i64,
                finish_write: end == data.len(),
                data: data[offset..end].to_vec(),
            });
            offset = end;
        }
        let Ok(channel) = self.grpc() else {
            return false;
        };
        let mut client = bs::byte_stream_client::ByteStreamClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE);
        let mut req = self.request(futures_util::stream::iter(requests));
        let _ = &mut req;
        let ok = self
            .call_for(
                "store a large blob",
                async move { client.write(req).await },
                self.transfer_time(sha.size),
            )
            .is_some();
        if ok {
            self.uploaded_blobs.fetch_add(1, Ordering::Relaxed);
            self.uploaded_bytes.fetch_add(sha.size, Ordering::Relaxed);
        }
        ok
    }

    /// [`Remote::read`] for a blob of at most `most` bytes (what the
    /// server names as larger is refused, unread).
    pub fn read_at_most(&self, sha: Sha, most: u64) -> Option<Vec<u8>> {
        if sha.size > most {
            self.refuse(&format!(
                "it names a blob of {} bytes where at most {most} make sense",
                sha.size
            ));
            return None;
        }
        self.read(sha)
    }

    /// A blob's bytes, checked against its SHA-256 (a wrong one is
    /// refused: `None`, and the remote is not trusted again this build).
    pub fn read(&self, sha: Sha) -> Option<Vec<u8>> {
        let channel = match self.grpc() {
            Ok(c) => c,
            Err(r) => return r.read(self, sha),
        };
        let data = if sha.size <= self.max_batch() {
            let mut client =
                re::content_addressable_storage_client::ContentAddressableStorageClient::new(
                    channel,
                );
            let req = self.request(re::BatchReadBlobsRequest {
                instance_name: self.settings.instance.clone(),
                digests: vec![sha.proto()],
                digest_function: re::digest_function::Value::Sha256 as i32,
                ..Default::default()
            });
            let r = self.call_for(
                "read a blob",
                async move { client.batch_read_blobs(req).await },
                self.transfer_time(sha.size),
            )?;
            let found = r.responses.into_iter().next()?;
            if found.status.as_ref().is_some_and(|s| s.code != 0) {
                return None;
            }
            found.data
        } else {
            let mut out = Vec::new();
            self.reader(sha)?.read_to_end(&mut out).ok()?;
            return Some(out);
        };
        if Sha::of(&data) != sha {
            self.fail(
                "send a blob",
                &format!("blob sha256:{} came back with other bytes", hex(&sha.hash)),
            );
            return None;
        }
        self.downloaded_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Some(data)
    }

    /// A large blob's bytes, streamed from the server as they come (each
    /// part waited for at most the timeout) and checked against its
    /// SHA-256: the read that ends the stream fails if they do not match,
    /// and the remote is not trusted again this build.
    pub fn reader(&self, sha: Sha) -> Option<BlobStream<'_>> {
        let channel = match self.grpc() {
            Ok(c) => c,
            Err(r) => return r.reader(self, sha),
        };
        self.caps()?;
        let resource = format!(
            "{}blobs/{}/{}",
            self.instance_prefix(),
            hex(&sha.hash),
            sha.size
        );
        let mut client = bs::byte_stream_client::ByteStreamClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE);
        let req = self.request(bs::ReadRequest {
            resource_name: resource,
            read_offset: 0,
            read_limit: 0,
        });
        // Sent on as it comes, waited for without holding the runtime's
        // thread; the whole stream has one deadline.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, String>>(8);
        let limit = self.transfer_time(sha.size);
        self.rt.spawn(async move {
            let deadline = tokio::time::Instant::now() + limit;
            let late = || format!("the blob did not arrive within {limit:?}");
            let mut stream = match tokio::time::timeout_at(deadline, client.read(req)).await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(status)) => {
                    let _ = tx.send(Err(describe(&status))).await;
                    return;
                }
                Err(_) => {
                    let _ = tx.send(Err(late())).await;
                    return;
                }
            };
            loop {
                let part = match tokio::time::timeout_at(deadline, stream.message()).await {
                    Ok(Ok(Some(part))) => Ok(part.data),
                    Ok(Ok(None)) => return,
                    Ok(Err(status)) => Err(describe(&status)),
                    Err(_) => Err(late()),
                };
                let last = part.is_err();
                if tx.send(part).await.is_err() || last {
                    return;
                }
            }
        });
        Some(BlobStream::new(self, sha, rx))
    }

    fn instance_prefix(&self) -> String {
        if self.settings.instance.is_empty() {
            String::new()
        } else {
            format!("{}/", self.settings.instance)
        }
    }

    /// The timeout, plus a second per 10 MB moved.
    fn transfer_time(&self, bytes: u64) -> Duration {
        self.settings.timeout + Duration::from_millis(bytes / 10_000)
    }
}

/// A blob streamed from the server ([`Remote::reader`]).
pub struct BlobStream<'r> {
    remote: &'r Remote,
    sha: Sha,
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, String>>,
    part: Vec<u8>,
    at: usize,
    seen: u64,
    hasher: sha2::Sha256,
    done: bool,
}

impl<'r> BlobStream<'r> {
    fn new(
        remote: &'r Remote,
        sha: Sha,
        rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, String>>,
    ) -> BlobStream<'r> {
        BlobStream {
            remote,
            sha,
            rx,
            part: Vec::new(),
            at: 0,
            seen: 0,
            hasher: <sha2::Sha256 as sha2::Digest>::new(),
            done: false,
        }
    }
}

impl std::io::Read for BlobStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let refused = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
        while self.at == self.part.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(part)) => {
                    self.seen += part.len() as u64;
                    if self.seen > self.sha.size {
                        self.remote
                            .fail("send a blob", "it sent more bytes than the blob has");
                        return Err(refused("longer than its digest says".into()));
                    }
                    self.hasher.update(&part);
                    self.part = part;
                    self.at = 0;
                }
                Some(Err(why)) => {
                    self.remote.fail("send a blob", &why);
                    return Err(refused(why));
                }
                // The end: the bytes must be the blob's.
                None => {
                    let hash: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
                    let got = Sha {
                        hash,
                        size: self.seen,
                    };
                    if got != self.sha {
                        let why = format!(
                            "blob sha256:{} came back with other bytes",
                            hex(&self.sha.hash)
                        );
                        self.remote.fail("send a blob", &why);
                        return Err(refused(why));
                    }
                    self.remote
                        .downloaded_bytes
                        .fetch_add(self.seen, Ordering::Relaxed);
                    self.done = true;
                }
            }
        }
        let n = buf.len().min(self.part.len() - self.at);
        buf[..n].copy_from_slice(&self.part[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn describe(status: &tonic::Status) -> String {
    // What the server says is shown, not obeyed: no control characters.
    let message: String = status
        .message()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    let message = message.trim();
    if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {message}", status.code())
    }
}

/// A fresh name for one upload.
fn upload_id() -> String {
    use rand::RngExt;
    let n: u128 = rand::rng().random();
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> Settings {
        Settings {
            url: url.into(),
            instance: String::new(),
            headers: Vec::new(),
            upload: true,
            timeout: Duration::from_secs(1),
            registry: None,
        }
    }

    #[test]
    fn urls_name_grpc_or_grpcs_and_a_host() {
        assert_eq!(
            settings("grpc://127.0.0.1:8980").endpoint().unwrap(),
            "http://127.0.0.1:8980"
        );
        assert_eq!(
            settings("grpcs://cache.example:443/").endpoint().unwrap(),
            "https://cache.example:443"
        );
        for bad in ["127.0.0.1:8980", "http://h:1", "grpc://", "grpc://h:1/x"] {
            assert!(settings(bad).endpoint().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_server_that_is_not_there_costs_one_bounded_wait() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let start = std::time::Instant::now();
        let r = Remote::connect(settings(&format!("grpc://127.0.0.1:{port}")), &|_, _| {
            Err("no registry".into())
        })
        .unwrap();
        // Nothing is asked before it is needed.
        assert!(!r.is_down());
        assert!(r.action_result(Sha::of(b"x")).is_none());
        assert!(r.is_down());
        let said = r.take_warnings();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("goes on without it"));
        assert!(r.take_warnings().is_empty(), "said once");
        assert!(r.read(Sha::of(b"x")).is_none());
        assert!(!r.uploads());
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
