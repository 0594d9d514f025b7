//! Images from a registry, through `oci-client`: anonymous or basic
//! authentication, bearer-token challenges, and credentials from the
//! Docker config file (`~/.docker/config.json`, or `$DOCKER_CONFIG`).
//! Plain HTTP only for registries on the loopback interface and those
//! named with `--insecure-registry`. Blobs are streamed into the store and
//! verified against their digests there, and reading stops at the size
//! their descriptors declare. Manifests and indexes are fetched here (with
//! the client's token) and read up to [`MAX_DOCUMENT`] bytes, never whole
//! whatever their size.

use super::reference::RegistryRef;
use super::{
    Access, DOCKER_LIST, DOCKER_MANIFEST, ImageError, MEDIA_INDEX, MEDIA_MANIFEST, Source,
};
use crate::model::digest::Sha256;
use crate::store::oci::{MAX_DOCUMENT, OciBlobs};
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use std::io::{self, Read};
use std::time::Duration;

const ACCEPTED: &[&str] = &[MEDIA_INDEX, MEDIA_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

pub struct Registry {
    client: Client,
    rt: tokio::runtime::Runtime,
    reference: Reference,
    auth: RegistryAuth,
    shown: String,
    /// Whether the registry is spoken to over plain HTTP.
    plain: bool,
    /// The `Authorization` header for pulls, once asked for.
    pull_auth: Option<Option<String>>,
    /// The client manifests are fetched with (bounded reads).
    agent: ureq::Agent,
}

/// Credentials for a registry from the Docker config file, if it has any.
fn credentials(registry: &str) -> RegistryAuth {
    let server = if registry == "docker.io" {
        "https://index.docker.io/v1/"
    } else {
        registry
    };
    match docker_credential::get_credential(server) {
        Ok(docker_credential::DockerCredential::UsernamePassword(u, p)) => {
            RegistryAuth::Basic(u, p)
        }
        Ok(docker_credential::DockerCredential::IdentityToken(t)) => RegistryAuth::Bearer(t),
        Err(_) => RegistryAuth::Anonymous,
    }
}

impl Registry {
    pub fn new(r: &RegistryRef, access: &Access) -> Result<Registry, ImageError> {
        let mut plain_http: Vec<String> = access.insecure.clone();
        if r.is_loopback() {
            plain_http.push(r.registry.clone());
        }
        let plain = plain_http.contains(&r.registry);
        let config = ClientConfig {
            protocol: if plain_http.is_empty() {
                ClientProtocol::Https
            } else {
                ClientProtocol::HttpsExcept(plain_http)
            },
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(300)),
            ..Default::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ImageError::Network(format!("cannot start the network runtime: {e}")))?;
        let reference = match (&r.digest, &r.tag) {
            (Some(d), _) => {
                Reference::with_digest(r.registry.clone(), r.repository.clone(), d.clone())
            }
            (None, Some(t)) => {
                Reference::with_tag(r.registry.clone(), r.repository.clone(), t.clone())
            }
            (None, None) => {
                Reference::with_tag(r.registry.clone(), r.repository.clone(), "latest".into())
            }
        };
        Ok(Registry {
            client: Client::new(config),
            rt,
            reference,
            auth: credentials(&r.registry),
            shown: r.to_string(),
            plain,
            pull_auth: None,
            agent: ureq::Agent::config_builder()
                .timeout_connect(Some(Duration::from_secs(30)))
                .timeout_recv_body(Some(Duration::from_secs(300)))
                .http_status_as_error(false)
                .build()
                .into(),
        })
    }

    /// The `Authorization` header for pulls: the registry's bearer token
    /// (the client runs the challenge), or the basic credentials.
    fn pull_header(&mut self, fresh: bool) -> Result<Option<String>, ImageError> {
        if !fresh && let Some(h) = &self.pull_auth {
            return Ok(h.clone());
        }
        let header = self.header_for(RegistryOperation::Pull, None)?;
        self.pull_auth = Some(header.clone());
        Ok(header)
    }

    /// The `Authorization` header for `op`: the registry's bearer token
    /// (the client runs the challenge), or the basic credentials.
    fn header_for(
        &mut self,
        op: RegistryOperation,
        limit: Option<Duration>,
    ) -> Result<Option<String>, ImageError> {
        let asked = self.client.auth(&self.reference, &self.auth, op);
        let token = match limit {
            Some(limit) => self
                .rt
                .block_on(async { tokio::time::timeout(limit, asked).await })
                .map_err(|_| {
                    ImageError::Network(format!(
                        "`{}` did not answer within {limit:?} when asked for a token",
                        self.shown
                    ))
                })?,
            None => self.rt.block_on(asked),
        }
        .map_err(|e| self.err("cannot authenticate to", e))?;
        Ok(match (token, &self.auth) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, RegistryAuth::Basic(u, p)) => {
                use base64::Engine;
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                ))
            }
            (None, _) => None,
        })
    }

    /// How to speak to the repository directly, for kiln's cache kept in
    /// it: its base URL (`…/v2/NAME`) and the `Authorization` header for
    /// pulling, or pushing (which takes pulling too), asked for afresh
    /// within `limit`.
    fn access(
        &mut self,
        push: bool,
        limit: Duration,
    ) -> Result<(String, Option<String>), ImageError> {
        let base = format!(
            "{}://{}/v2/{}",
            if self.plain { "http" } else { "https" },
            self.reference.resolve_registry(),
            self.reference.repository()
        );
        let op = if push {
            RegistryOperation::Push
        } else {
            RegistryOperation::Pull
        };
        let header = self.header_for(op, Some(limit))?;
        Ok((base, header))
    }

    /// A manifest or index (`reference` is a tag or a digest), read up to
    /// [`MAX_DOCUMENT`] bytes, and the digest the registry says it has.
    fn get_manifest(&mut self, reference: &str) -> Result<(Vec<u8>, Option<String>), ImageError> {
        let url = format!(
            "{}://{}/v2/{}/manifests/{reference}",
            if self.plain { "http" } else { "https" },
            self.reference.resolve_registry(),
            self.reference.repository()
        );
        let mut fresh = false;
        loop {
            let mut req = self.agent.get(&url).header("Accept", ACCEPTED.join(", "));
            if let Some(h) = self.pull_header(fresh)? {
                req = req.header("Authorization", h);
            }
            let resp = req.call().map_err(|e| {
                ImageError::Network(format!(
                    "cannot fetch the manifest of `{}`: {e}",
                    self.shown
                ))
            })?;
            let status = resp.status().as_u16();
            if status == 401 && !fresh {
                // The token expired, or a scope was missing: ask once more.
                fresh = true;
                continue;
            }
            if status == 404 {
                return Err(ImageError::NotFound(format!(
                    "the registry has no manifest `{reference}` for `{}`",
                    self.shown
                )));
            }
            if status == 401 || status == 403 {
                return Err(self.err(
                    "cannot fetch the manifest of",
                    io::Error::other(format!("the registry answered {status} (unauthorized)")),
                ));
            }
            if !(200..300).contains(&status) {
                return Err(ImageError::Network(format!(
                    "fetching the manifest of `{}` answered {status}",
                    self.shown
                )));
            }
            let digest = resp
                .headers()
                .get("Docker-Content-Digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let mut body = Vec::new();
            resp.into_body()
                .into_reader()
                .take(MAX_DOCUMENT + 1)
                .read_to_end(&mut body)
                .map_err(|e| {
                    ImageError::Network(format!(
                        "cannot read the manifest of `{}`: {e}",
                        self.shown
                    ))
                })?;
            if body.len() as u64 > MAX_DOCUMENT {
                return Err(ImageError::Invalid(format!(
                    "the registry sent a manifest of `{}` larger than {}: kiln reads no more",
                    self.shown,
                    crate::units::format_size(MAX_DOCUMENT)
                )));
            }
            return Ok((body, digest));
        }
    }

    fn err(&self, what: &str, e: impl std::error::Error) -> ImageError {
        // The client's errors wrap the cause (connection refused, a TLS
        // failure) that a user needs to see.
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            let t = s.to_string();
            if !text.contains(&t) {
                text.push_str(": ");
                text.push_str(&t);
            }
            source = s.source();
        }
        let lower = text.to_ascii_lowercase();
        if lower.contains("not authorized")
            || lower.contains("unauthorized")
            || lower.contains("401")
            || lower.contains("denied")
        {
            let creds = if self.auth == RegistryAuth::Anonymous {
                "none were found"
            } else {
                "those found were refused"
            };
            return ImageError::Network(format!(
                "{what} `{}`: {text}; the registry wants credentials and {creds} (kiln reads the Docker config file, `~/.docker/config.json` or `$DOCKER_CONFIG/config.json`, as `docker login` writes it)",
                self.shown
            ));
        }
        if lower.contains("not found") || text.contains("MANIFEST_UNKNOWN") || text.contains("404")
        {
            ImageError::NotFound(format!("{what} `{}`: {text}", self.shown))
        } else {
            ImageError::Network(format!("{what} `{}`: {text}", self.shown))
        }
    }

    fn at_digest(&self, d: &Sha256) -> Reference {
        Reference::with_digest(
            self.reference.registry().to_string(),
            self.reference.repository().to_string(),
            d.to_string(),
        )
    }
}

/// The repository of a registry cache (`--cache-to type=registry,…`).
impl crate::store::remote::registry::Repository for Registry {
    fn access(&mut self, push: bool, limit: Duration) -> Result<(String, Option<String>), String> {
        Registry::access(self, push, limit).map_err(|e| e.to_string())
    }

    fn tag(&self) -> String {
        self.reference.tag().unwrap_or("latest").to_string()
    }
}

/// Open the repository of a registry cache: `reference` is
/// `REG/NAME:TAG` (a digest is refused: a cache is kept under a tag).
pub fn cache_repository(
    reference: &str,
    access: &Access,
) -> Result<Box<dyn crate::store::remote::registry::Repository>, String> {
    let r = super::reference::parse_registry(reference).map_err(|e| e.0)?;
    if r.digest.is_some() {
        return Err(format!(
            "`{reference}` names a digest: a cache is kept under a tag (`REG/NAME:TAG`)"
        ));
    }
    Ok(Box::new(
        Registry::new(&r, access).map_err(|e| e.to_string())?,
    ))
}

/// What a push did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Blobs uploaded, and their bytes.
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    /// Blobs the registry had already.
    pub present: usize,
}

impl Registry {
    /// Push an image to the reference's tag: every blob (layers, config)
    /// the registry lacks, streamed from the image store, then the
    /// manifest, byte for byte (so its digest is the one kiln made).
    pub fn push(
        &self,
        blobs: &OciBlobs,
        manifest: &[u8],
        media_type: &str,
        blob_list: &[(Sha256, u64)],
    ) -> Result<Pushed, ImageError> {
        let pushed = self.push_blobs(blobs, blob_list)?;
        let content_type = media_type
            .parse()
            .map_err(|_| ImageError::Invalid(format!("`{media_type}` is not a media type")))?;
        self.rt
            .block_on(self.client.push_manifest_raw(
                &self.reference,
                manifest.to_vec(),
                content_type,
            ))
            .map_err(|e| self.err("cannot push the manifest to", e))?;
        Ok(pushed)
    }

    /// Attach a document to a pushed manifest as an OCI 1.1 referrer (an
    /// artifact manifest whose `subject` is the image), and list it under
    /// the referrers tag `sha256-HEX` too, for registries without the
    /// referrers API (what `oras attach` and BuildKit's attestations do).
    /// Returns the artifact manifest's digest.
    pub fn attach(
        &self,
        blobs: &OciBlobs,
        subject: (&Sha256, u64),
        artifact_type: &str,
        annotations: serde_json::Value,
        payload: &[u8],
    ) -> Result<Sha256, ImageError> {
        let store = |b: &[u8]| blobs.put_bytes(b).map_err(ImageError::Store);
        let payload_digest = store(payload)?;
        let empty = store(b"{}")?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": super::MEDIA_MANIFEST,
            "artifactType": artifact_type,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": empty.to_string(),
                "size": 2,
            },
            "layers": [{
                "mediaType": artifact_type,
                "digest": payload_digest.to_string(),
                "size": payload.len(),
                "annotations": annotations,
            }],
            "subject": {
                "mediaType": super::MEDIA_MANIFEST,
                "digest": subject.0.to_string(),
                "size": subject.1,
            },
        });
        let bytes = serde_json::to_vec(&manifest)
            .map_err(|e| ImageError::Invalid(format!("the artifact manifest: {e}")))?;
        let digest = Sha256::of(&bytes);
        self.push_blobs(blobs, &[(empty, 2), (payload_digest, payload.len() as u64)])?;
        let media = |m: &str| {
            m.parse()
                .map_err(|_| ImageError::Invalid(format!("`{m}` is not a media type")))
        };
        self.rt
            .block_on(self.client.push_manifest_raw(
                &self.at_digest(&digest),
                bytes.clone(),
                media(super::MEDIA_MANIFEST)?,
            ))
            .map_err(|e| self.err("cannot push the attached document to", e))?;
        // The referrers tag: an index of every artifact about the image,
        // read and written back as the registry has it (other tools'
        // entries and fields kept as they are).
        let tag = Reference::with_tag(
            self.reference.registry().to_string(),
            self.reference.repository().to_string(),
            format!("sha256-{}", subject.0.hex()),
        );
        let mut index = self
            .rt
            .block_on(
                self.client
                    .pull_manifest_raw(&tag, &self.auth, &[super::MEDIA_INDEX]),
            )
            .ok()
            .and_then(|(b, _)| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter(|v| v["manifests"].is_array())
            .unwrap_or_else(|| {
                serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": super::MEDIA_INDEX,
                    "manifests": [],
                })
            });
        let listed = index["manifests"]
            .as_array()
            .is_some_and(|m| m.iter().any(|d| d["digest"] == digest.to_string()));
        if !listed {
            if let Some(m) = index["manifests"].as_array_mut() {
                m.push(serde_json::json!({
                    "mediaType": super::MEDIA_MANIFEST,
                    "artifactType": artifact_type,
                    "digest": digest.to_string(),
                    "size": bytes.len(),
                }));
            }
            let index = serde_json::to_vec(&index)
                .map_err(|e| ImageError::Invalid(format!("the referrers index: {e}")))?;
            self.rt
                .block_on(
                    self.client
                        .push_manifest_raw(&tag, index, media(super::MEDIA_INDEX)?),
                )
                .map_err(|e| self.err("cannot list the attached document in", e))?;
        }
        Ok(digest)
    }

    /// Upload every blob of the list the registry lacks, streamed from the
    /// image store.
    fn push_blobs(
        &self,
        blobs: &OciBlobs,
        blob_list: &[(Sha256, u64)],
    ) -> Result<Pushed, ImageError> {
        self.rt.block_on(
            self.client
                .store_auth_if_needed(self.reference.resolve_registry(), &self.auth),
        );
        let mut pushed = Pushed::default();
        let mut seen = std::collections::HashSet::new();
        for (digest, size) in blob_list {
            if !seen.insert(digest.clone()) {
                continue;
            }
            let d = digest.to_string();
            let present = self
                .rt
                .block_on(self.client.blob_exists(&self.reference, &d))
                .map_err(|e| self.err("cannot push to", e))?;
            if present {
                pushed.present += 1;
                continue;
            }
            let file = blobs.open(digest).map_err(ImageError::Store)?;
            let stream = futures_util::stream::unfold(Some(file), |state| async move {
                let mut f = state?;
                let mut buf = vec![0u8; 4 << 20];
                let mut filled = 0;
                // Fill the chunk (the registry gets fewer, larger requests).
                while filled < buf.len() {
                    match f.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            return Some((
                                Err(oci_client::errors::OciDistributionError::IoError(e)),
                                None,
                            ));
                        }
                    }
                }
                if filled == 0 {
                    return None;
                }
                buf.truncate(filled);
                Some((Ok(bytes::Bytes::from(buf)), Some(f)))
            });
            self.rt
                .block_on(
                    self.client
                        .push_blob_stream(&self.reference, stream, &d, Some(*size)),
                )
                .map_err(|e| self.err("cannot push a blob to", e))?;
            pushed.uploaded += 1;
            pushed.uploaded_bytes += size;
        }
        Ok(pushed)
    }
}

impl Source for Registry {
    fn top(&mut self) -> Result<(Vec<u8>, Sha256), ImageError> {
        let at = self
            .reference
            .digest()
            .or(self.reference.tag())
            .unwrap_or("latest")
            .to_string();
        let (bytes, digest) = self.get_manifest(&at)?;
        let computed = Sha256::of(&bytes);
        // The registry's digest header, when it sends one, must agree, and
        // a reference by digest must get that digest.
        if let Some(d) = digest.as_deref().and_then(Sha256::parse)
            && d != computed
        {
            return Err(ImageError::Invalid(format!(
                "the registry sent a manifest for `{}` whose bytes do not match its digest {d}",
                self.shown
            )));
        }
        if let Some(d) = self.reference.digest().and_then(Sha256::parse)
            && d != computed
        {
            return Err(ImageError::Invalid(format!(
                "the registry sent a manifest for `{}` that does not match its digest {d}",
                self.shown
            )));
        }
        Ok((bytes, computed))
    }

    fn manifest(&mut self, d: &Sha256) -> Result<Vec<u8>, ImageError> {
        let (bytes, _) = self.get_manifest(&d.to_string())?;
        if Sha256::of(&bytes) != *d {
            return Err(ImageError::Invalid(format!(
                "the registry sent a manifest of `{}` that does not match its digest {d}",
                self.shown
            )));
        }
        Ok(bytes)
    }

    fn fetch_blob(&mut self, d: &Sha256, size: u64, blobs: &OciBlobs) -> Result<(), ImageError> {
        let digest = d.to_string();
        self.rt.block_on(
            self.client
                .store_auth_if_needed(self.reference.resolve_registry(), &self.auth),
        );
        let stream = self
            .rt
            .block_on(
                self.client
                    .pull_blob_stream(&self.reference, digest.as_str()),
            )
            .map_err(|e| self.err("cannot fetch a blob of", e))?;
        let reader = StreamReader {
            rt: &self.rt,
            stream: stream.stream,
            chunk: bytes::Bytes::new(),
        };
        // Past the declared size, reading stops: a registry cannot send
        // more than the manifest says.
        let mut reader = reader.take(size.saturating_add(1));
        blobs
            .put(&mut reader, Some(d), Some(size))
            .map_err(|e| match e {
                crate::store::StoreError::Io { source, .. }
                    if source.kind() != io::ErrorKind::StorageFull =>
                {
                    ImageError::Network(format!(
                        "cannot fetch blob {d} of `{}`: {source}",
                        self.shown
                    ))
                }
                other => ImageError::Store(other),
            })?;
        Ok(())
    }
}

/// A blob stream read synchronously, chunk by chunk.
struct StreamReader<'a> {
    rt: &'a tokio::runtime::Runtime,
    stream: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, io::Error>>,
    chunk: bytes::Bytes,
}

impl Read for StreamReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rt.block_on(self.stream.next()) {
                Some(Ok(c)) => self.chunk = c,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}
