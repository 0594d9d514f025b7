//! Provenance: `provenance=#true` on an export writes an in-toto
//! statement with a SLSA v1 provenance predicate beside it
//! (`DEST.provenance.json`): the export as its subject, and every
//! material the build read, with its digest, as kiln's keys know them:
//! base images (manifest sha256), context files (blake3), plugin modules
//! (blake3), pinned downloads and git commits, host files, and the spec
//! files. The same build gives the same bytes (no times, sorted). On a
//! push, the statement is attached to the pushed image instead (an OCI
//! 1.1 referrer, whose subject is the image's manifest).

use crate::diag::{Diagnostic, Sources};
use crate::ir::{Export, ExportFormat, Graph};
use crate::model::key::{KeyInput, Start};
use crate::store::records::StepRecord;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const STATEMENT: &str = "https://in-toto.io/Statement/v1";
pub const SLSA: &str = "https://slsa.dev/provenance/v1";
pub const BUILD_TYPE: &str = "urn:kiln:build:v1";

/// Where an export's statement goes.
pub fn path_for(dest: &Path) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".provenance.json");
    dest.with_file_name(name)
}

/// Whether `path` holds nothing, or a statement kiln wrote (which a new
/// one may replace).
pub fn replaceable(path: &Path) -> bool {
    match std::fs::read(path) {
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes).is_ok_and(|v| {
            v["_type"] == STATEMENT && v["predicate"]["buildDefinition"]["buildType"] == BUILD_TYPE
        }),
    }
}

/// What the statement says of the export itself.
pub struct Subject {
    pub name: String,
    /// Algorithm → hex.
    pub digest: BTreeMap<String, String>,
}

/// The export's digest: an image's manifest (sha256), an archive's bytes
/// (sha256), or a directory's tree (kiln's blake3 tree digest).
pub fn subject(export: &Export, dest: &Path, tree_hex: &str) -> Result<Subject, Diagnostic> {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let io = |e: std::io::Error| Diagnostic::io("cannot read the export", dest, &e);
    let digest = match export.format {
        ExportFormat::Dir => BTreeMap::from([("blake3".to_string(), tree_hex.to_string())]),
        ExportFormat::Oci => {
            let index: Value =
                serde_json::from_slice(&std::fs::read(dest.join("index.json")).map_err(io)?)
                    .map_err(|e| Diagnostic::internal(format!("the exported index.json: {e}")))?;
            let d = index["manifests"][0]["digest"].as_str().unwrap_or("");
            BTreeMap::from([(
                "sha256".to_string(),
                d.trim_start_matches("sha256:").to_string(),
            )])
        }
        _ => {
            use sha2::Digest;
            use std::io::Read;
            let mut f = std::fs::File::open(dest).map_err(io)?;
            let mut h = sha2::Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            BTreeMap::from([(
                "sha256".to_string(),
                crate::model::digest::hex(&h.finalize()),
            )])
        }
    };
    Ok(Subject { name, digest })
}

/// The statement for the export of `stage`.
pub fn statement(
    graph: &Graph,
    export: &Export,
    subject: &Subject,
    records: &[StepRecord],
    sources: &Sources,
    epoch: u64,
) -> Value {
    let stages: BTreeSet<String> = graph
        .ancestors(&[export.stage])
        .into_iter()
        .map(|id| graph.stage(id).name.clone())
        .collect();
    // uri → digest set; a BTreeMap keeps them sorted and each once.
    let mut deps: BTreeMap<String, BTreeMap<&'static str, String>> = BTreeMap::new();
    for f in sources.all() {
        deps.insert(
            format!("file:{}", f.name),
            BTreeMap::from([(
                "blake3",
                blake3::hash(f.text.as_bytes()).to_hex().to_string(),
            )]),
        );
    }
    for r in records.iter().filter(|r| stages.contains(&r.stage)) {
        for input in &r.inputs {
            let (uri, alg, hex) = match input {
                KeyInput::Start(Start::Image { reference, digest }) => (
                    format!("image:{reference}"),
                    "sha256",
                    digest.hex().to_string(),
                ),
                KeyInput::ContextFile { path, value } => {
                    // `"<blob> <mode>"` for a file; directories and links
                    // are named by their place, not by content.
                    let Some((blob, _)) = value.split_once(' ').filter(|(b, _)| b.len() == 64)
                    else {
                        continue;
                    };
                    (format!("context:{path}"), "blake3", blob.to_string())
                }
                KeyInput::Module { plugin, digest } => {
                    (format!("plugin:{plugin}"), "blake3", digest.clone())
                }
                KeyInput::Pinned { source, digest } => match digest.split_once(':') {
                    Some(("sha256", h)) => (source.clone(), "sha256", h.to_string()),
                    Some(("git", h)) => (format!("git+{source}"), "gitCommit", h.to_string()),
                    _ => continue,
                },
                KeyInput::HostFile { path, digest } => {
                    (format!("host:{path}"), "blake3", digest.clone())
                }
                _ => continue,
            };
            deps.entry(uri).or_default().insert(alg, hex);
        }
        // A download pinned in the spec, a git commit named in it: in the
        // step's canonical form.
        for input in &r.inputs {
            if let KeyInput::Step(canonical) = input
                && let Ok(v) = serde_json::from_str::<Value>(canonical)
            {
                if let (Some(url), Some(sum)) = (
                    v.pointer("/fetch/url").and_then(Value::as_str),
                    v.pointer("/fetch/sha256").and_then(Value::as_str),
                ) {
                    deps.entry(url.to_string())
                        .or_default()
                        .insert("sha256", sum.to_string());
                }
                if let (Some(url), Some(reference)) = (
                    v.pointer("/git/url").and_then(Value::as_str),
                    v.pointer("/git/ref").and_then(Value::as_str),
                ) && crate::git::is_commit(reference)
                {
                    deps.entry(format!("git+{url}#{reference}"))
                        .or_default()
                        .insert("gitCommit", reference.to_string());
                }
            }
        }
    }
    // No credentials in a statement: URLs lose theirs (records of older
    // builds may hold them), and an arg that carries one is not shown.
    let resolved: Vec<Value> = deps
        .into_iter()
        .map(|(uri, digest)| {
            json!({"uri": crate::model::url::without_credentials(&uri), "digest": digest})
        })
        .collect();
    let args = redacted_args(graph);
    json!({
        "_type": STATEMENT,
        "subject": [{"name": subject.name, "digest": subject.digest}],
        "predicateType": SLSA,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "stage": graph.stage(export.stage).name,
                    "format": export.format.name(),
                    "args": args,
                },
                "internalParameters": {
                    "SOURCE_DATE_EPOCH": epoch,
                },
                "resolvedDependencies": resolved,
            },
            "runDetails": {
                "builder": {
                    "id": "urn:kiln:builder",
                    "version": {"kiln": env!("CARGO_PKG_VERSION")},
                },
                "metadata": {},
            },
        },
    })
}

/// The build's args, with any value that holds the credentials of a URL
/// the build fetches (a password given with `--arg`) shown as `***`.
fn redacted_args(graph: &Graph) -> std::collections::BTreeMap<String, Option<String>> {
    let mut secrets: Vec<String> = Vec::new();
    for step in graph.stages.iter().flat_map(|s| &s.steps) {
        step.op.reads(&mut |r| {
            if let crate::ir::Read::Remote(url) = r {
                secrets.extend(crate::model::url::credentials(url));
            }
        });
    }
    graph
        .args
        .iter()
        .map(|(k, v)| {
            let v = v.as_ref().map(|v| {
                let hides = secrets
                    .iter()
                    .any(|s| s == v || (s.len() >= 4 && v.contains(s.as_str())));
                if hides { "***".to_string() } else { v.clone() }
            });
            (k.clone(), v)
        })
        .collect()
}
