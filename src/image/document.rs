//! The image documents kiln reads, typed: manifests, indexes and their
//! descriptors, configs, and `docker save`'s `manifest.json`.
//!
//! oci-spec's types (compiled in through oci-client) are stricter than
//! what registries and tools write: they require a descriptor's
//! `mediaType`, a config's `architecture`, `os` and `rootfs.diff_ids`
//! (Docker leaves the list out of an image without layers), a
//! manifest's `schemaVersion`, and refuse a whole index for one entry
//! they cannot read. So these keep to the fields kiln uses, each optional
//! where real images leave it out, and read platform names as written
//! (oci-spec renames some, such as `armbe`).

use serde::Deserialize;
use serde::de::IgnoredAny;
use std::collections::BTreeMap;

/// A descriptor, as a manifest or an index lists it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: Option<String>,
    /// Empty when left out: an index entry without one is passed over,
    /// a manifest's descriptor without one is refused by what reads it.
    #[serde(default)]
    pub digest: String,
    pub size: Option<u64>,
    pub platform: Option<Platform>,
    /// Values are strings by the spec; others are left unread.
    pub annotations: Option<BTreeMap<String, serde_json::Value>>,
}

impl Descriptor {
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key)?.as_str()
    }
}

#[derive(Debug, Deserialize)]
pub struct Platform {
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub variant: Option<String>,
}

/// An image manifest (OCI's, or Docker's schema 2).
#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// An image index (OCI's, or Docker's manifest list).
#[derive(Debug, Deserialize)]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

/// Which of the two a document is: by its media type, or, without one,
/// by its fields.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Shape {
    pub media_type: Option<serde_json::Value>,
    pub manifests: Option<IgnoredAny>,
    pub layers: Option<IgnoredAny>,
}

/// An image config: OCI's, and the fields Docker's adds.
#[derive(Debug, Deserialize)]
pub struct Config {
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub variant: Option<String>,
    pub config: Option<RunConfig>,
    pub rootfs: Option<RootFs>,
}

#[derive(Debug, Deserialize)]
pub struct RootFs {
    pub diff_ids: Option<Vec<String>>,
}

/// What a container of the image runs with.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    pub env: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub stop_signal: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    /// Go's `map[string]struct{}`: only the keys mean anything.
    pub exposed_ports: Option<BTreeMap<String, IgnoredAny>>,
    pub volumes: Option<BTreeMap<String, IgnoredAny>>,
    pub shell: Option<Vec<String>>,
    pub on_build: Option<Vec<String>>,
    pub healthcheck: Option<Healthcheck>,
}

/// Durations in nanoseconds, as Docker writes them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    pub test: Option<Vec<String>>,
    pub interval: Option<serde_json::Number>,
    pub timeout: Option<serde_json::Number>,
    pub start_period: Option<serde_json::Number>,
    pub start_interval: Option<serde_json::Number>,
    pub retries: Option<serde_json::Number>,
}

/// One image of a `docker save` archive's `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ArchiveImage {
    /// The config's path in the archive.
    pub config: String,
    pub repo_tags: Option<Vec<String>>,
    /// The layers' paths, base first (none for an image without layers).
    pub layers: Option<Vec<String>>,
}
