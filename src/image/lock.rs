//! `kiln.lock`: what each image reference, git ref and unpinned URL
//! resolved to, beside the spec, so that a later
//! build uses the same bytes without asking the network, and `explain`
//! can name a base image that changed.
//!
//! ```kdl
//! // What kiln.kdl's image references resolved to. Written by kiln;
//! // `kiln lock --update` resolves them again.
//! lock 1
//! image "debian:bookworm" platform="linux/amd64" digest="sha256:…"
//! ```
//!
//! The lock of `kiln.kdl` is `kiln.lock`; of any other spec file `NAME`,
//! `NAME.lock` (`Dockerfile.lock`).

use crate::diag::Code;
use crate::diag::{Diagnostic, SourceId, Sources, Span};
use crate::model::digest::Sha256;
use kdl::{KdlDocument, KdlEntry, KdlNode};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The lock file of a spec file.
pub fn path_for(spec: &Path) -> PathBuf {
    let name = spec
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "kiln.kdl".into());
    let lock = match name.strip_suffix(".kdl") {
        Some(stem) => format!("{stem}.lock"),
        None => format!("{name}.lock"),
    };
    spec.with_file_name(lock)
}

/// What a lock file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lock {
    /// (reference as written, platform) → manifest digest.
    pub images: BTreeMap<(String, String), Sha256>,
    /// A download without a checksum in the spec → its sha256, pinned on
    /// first use.
    pub urls: BTreeMap<String, Sha256>,
    /// A git source's (URL, ref) → the commit it named when first built.
    pub gits: BTreeMap<(String, String), String>,
    /// The file named URLs with their credentials (written by an older
    /// kiln): it is written again without them.
    pub scrubbed: bool,
}

impl Lock {
    pub fn image(&self, reference: &str, platform: &str) -> Option<&Sha256> {
        self.images
            .get(&(reference.to_string(), platform.to_string()))
    }

    /// The file's text.
    pub fn to_text(&self, spec_name: &str) -> String {
        let mut doc = KdlDocument::new();
        let mut version = KdlNode::new("lock");
        version.push(KdlEntry::new(1));
        doc.nodes_mut().push(version);
        for ((reference, platform), digest) in &self.images {
            let mut n = KdlNode::new("image");
            n.push(KdlEntry::new(reference.clone()));
            n.push(KdlEntry::new_prop("platform", platform.clone()));
            n.push(KdlEntry::new_prop("digest", digest.to_string()));
            doc.nodes_mut().push(n);
        }
        for (url, digest) in &self.urls {
            let mut n = KdlNode::new("url");
            n.push(KdlEntry::new(url.clone()));
            n.push(KdlEntry::new_prop("digest", digest.to_string()));
            doc.nodes_mut().push(n);
        }
        for ((url, reference), commit) in &self.gits {
            let mut n = KdlNode::new("git");
            n.push(KdlEntry::new(url.clone()));
            n.push(KdlEntry::new_prop("ref", reference.clone()));
            n.push(KdlEntry::new_prop("commit", commit.clone()));
            doc.nodes_mut().push(n);
        }
        doc.autoformat();
        let mut text = format!(
            "// What the images, unpinned downloads and git refs of {spec_name} resolved to.\n// Written by kiln; `kiln lock --update` resolves them again. Keep it with the spec.\n{doc}"
        );
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text
    }
}

/// Read a lock file; `None` when there is none. Errors point into it.
pub fn read(path: &Path, sources: &Sources) -> Result<Option<Lock>, Vec<Diagnostic>> {
    let text = match crate::frontend::read_spec_file(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(vec![Diagnostic::io("cannot read the lock file", path, &e)]);
        }
    };
    let shown = crate::frontend::kdl::display_path(path);
    let id = sources.add(shown, path.to_path_buf(), text.clone());
    let doc: KdlDocument = match text.parse() {
        Ok(d) => d,
        Err(e) => {
            return Err(vec![
                Diagnostic::new(Code::LOCK_SYNTAX, format!("the lock file is not KDL: {e}"))
                    .with_label(Span::new(id, 0, 0), "in this file"),
            ]);
        }
    };
    let mut lock = Lock::default();
    let mut r = Entries {
        id,
        seen: BTreeMap::new(),
        errors: Vec::new(),
    };
    let mut header = None;
    for n in doc.nodes() {
        match n.name().value() {
            "lock" => {
                let version = match n.entries() {
                    [e] if e.name().is_none() => e.value().as_integer(),
                    _ => None,
                };
                if header.is_some() {
                    r.bad(n, "the lock file has two `lock` headers");
                } else if version != Some(1) {
                    r.errors.push(
                        Diagnostic::new(
                            Code::LOCK_VERSION,
                            "this kiln reads lock files of version 1 (`lock 1`)",
                        )
                        .with_label(r.at(n), "an unknown version")
                        .with_help("use the kiln that wrote it, or delete the lock file and build again to write a new one"),
                    );
                }
                header = Some(r.at(n));
            }
            "image" => match image_entry(n) {
                Some((key, d)) => {
                    if r.first("image", key.clone(), d.to_string(), n) {
                        lock.images.insert(key, d);
                    }
                }
                None => r.bad(
                    n,
                    "an image entry needs a reference, `platform=` and a `digest=\"sha256:…\"`",
                ),
            },
            "url" => match url_entry(n) {
                Some((u, d)) => {
                    if r.first("url", (u.clone(), String::new()), d.to_string(), n) {
                        lock.urls.insert(u, d);
                    }
                }
                None => r.bad(n, "a url entry needs the URL and a `digest=\"sha256:…\"`"),
            },
            "git" => match git_entry(n) {
                Some((key, commit)) => {
                    if r.first("git", key.clone(), commit.clone(), n) {
                        lock.gits.insert(key, commit);
                    }
                }
                None => r.bad(
                    n,
                    "a git entry needs the URL, `ref=` and a `commit=` of 40 hex digits",
                ),
            },
            other => r.bad(n, &format!("`{other}` is not a lock entry")),
        }
    }
    if header.is_none() && r.errors.is_empty() {
        r.errors.push(
            Diagnostic::new(
                Code::LOCK_VERSION,
                "the lock file has no `lock 1` header",
            )
            .with_label(Span::new(id, 0, 0), "in this file")
            .with_help("kiln writes `lock 1` first: delete the lock file and build again to write a new one"),
        );
    }
    lock.scrubbed = doc.nodes().iter().any(|n| {
        matches!(n.name().value(), "url" | "git")
            && first_value(n).is_some_and(|u| crate::model::url::without_credentials(u) != u)
    });
    if r.errors.is_empty() {
        Ok(Some(lock))
    } else {
        Err(r.errors)
    }
}

/// The lock file's entries as read: where each came from (to point at
/// both of two that disagree) and what is wrong with them.
struct Entries {
    id: SourceId,
    seen: BTreeMap<(&'static str, String, String), (Span, String)>,
    errors: Vec<Diagnostic>,
}

impl Entries {
    fn at(&self, n: &KdlNode) -> Span {
        let s = n.span();
        Span::new(self.id, s.offset(), s.len())
    }

    fn bad(&mut self, n: &KdlNode, what: &str) {
        let d = Diagnostic::new(Code::LOCK_ENTRY, what).with_label(self.at(n), "in this entry");
        self.errors.push(d);
    }

    /// Whether the entry `n` (pinning `key` of `kind` to `value`) is the
    /// first for its key; an error when an earlier one pins it otherwise.
    fn first(
        &mut self,
        kind: &'static str,
        key: (String, String),
        value: String,
        n: &KdlNode,
    ) -> bool {
        let at = self.at(n);
        match self.seen.get(&(kind, key.0.clone(), key.1.clone())) {
            Some((first, v)) if *v != value => {
                let d = Diagnostic::new(
                    Code::LOCK_CONFLICT,
                    format!("the lock file pins `{}` twice, differently", key.0),
                )
                .with_label(at, "this entry")
                .with_label(*first, "disagrees with this one");
                self.errors.push(d);
                false
            }
            Some(_) => false,
            None => {
                self.seen.insert((kind, key.0, key.1), (at, value));
                true
            }
        }
    }
}

/// A node's first argument, as a string.
fn first_value(n: &KdlNode) -> Option<&str> {
    n.entries()
        .iter()
        .find(|e| e.name().is_none())
        .and_then(|e| e.value().as_string())
}

fn string_property<'n>(n: &'n KdlNode, key: &str) -> Option<&'n str> {
    n.get(key).and_then(|v| v.as_string())
}

/// `image REFERENCE platform=… digest=…`: the reference and platform,
/// and the manifest's digest.
fn image_entry(n: &KdlNode) -> Option<((String, String), Sha256)> {
    let digest = string_property(n, "digest").and_then(Sha256::parse)?;
    let key = (
        first_value(n)?.to_string(),
        string_property(n, "platform")?.to_string(),
    );
    Some((key, digest))
}

/// `url URL digest=…`: the URL (without credentials) and its digest.
fn url_entry(n: &KdlNode) -> Option<(String, Sha256)> {
    let digest = string_property(n, "digest").and_then(Sha256::parse)?;
    Some((
        crate::model::url::without_credentials(first_value(n)?),
        digest,
    ))
}

/// `git URL ref=… commit=…`: the URL (without credentials) and ref, and
/// the commit (lower case).
fn git_entry(n: &KdlNode) -> Option<((String, String), String)> {
    let commit = string_property(n, "commit")?;
    if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let key = (
        crate::model::url::without_credentials(first_value(n)?),
        string_property(n, "ref")?.to_string(),
    );
    Some((key, commit.to_ascii_lowercase()))
}

/// Write a lock file atomically.
pub fn write(path: &Path, lock: &Lock, spec_name: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&tmp, lock.to_text(spec_name))
        .and_then(|_| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("kiln.kdl"));
        assert_eq!(path.file_name().unwrap(), "kiln.lock");
        assert_eq!(
            path_for(Path::new("x/Dockerfile")),
            Path::new("x/Dockerfile.lock")
        );
        let sources = Sources::new();
        assert_eq!(read(&path, &sources).unwrap(), None);
        let mut lock = Lock::default();
        lock.images.insert(
            ("debian:bookworm".into(), "linux/amd64".into()),
            Sha256::of(b"m"),
        );
        lock.urls
            .insert("https://example.com/f".into(), Sha256::of(b"f"));
        lock.gits.insert(
            ("https://example.com/r.git".into(), "main".into()),
            "1098e05e93c787431dd85695ea5905a4bf7fba0c".into(),
        );
        write(&path, &lock, "kiln.kdl").unwrap();
        assert_eq!(read(&path, &sources).unwrap(), Some(lock.clone()));
        assert_eq!(
            lock.image("debian:bookworm", "linux/amd64"),
            Some(&Sha256::of(b"m"))
        );
        std::fs::write(
            &path,
            "lock 1\nimage \"x\" digest=\"md5:1\"\nflavour 2\ngit \"u\" ref=\"main\" commit=\"abc\"\n",
        )
        .unwrap();
        let errs = read(&path, &sources).unwrap_err();
        assert_eq!(errs.len(), 3);
    }

    #[test]
    fn conflicting_entries_and_unknown_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.lock");
        let sources = Sources::new();
        let a = Sha256::of(b"a");
        let b = Sha256::of(b"b");
        for (text, code) in [
            (format!("lock 1\nurl \"http://h/f\" digest=\"{a}\"\nurl \"http://h/f\" digest=\"{b}\"\n"), Code::LOCK_CONFLICT),
            (format!("lock 1\nimage \"x\" platform=\"linux/amd64\" digest=\"{a}\"\nimage \"x\" platform=\"linux/amd64\" digest=\"{b}\"\n"), Code::LOCK_CONFLICT),
            ("lock 1\ngit \"u\" ref=\"main\" commit=\"1098e05e93c787431dd85695ea5905a4bf7fba0c\"\ngit \"u\" ref=\"main\" commit=\"2098e05e93c787431dd85695ea5905a4bf7fba0c\"\n".to_string(), Code::LOCK_CONFLICT),
            ("lock 2\n".to_string(), Code::LOCK_VERSION),
            ("lock \"1\"\n".to_string(), Code::LOCK_VERSION),
            (format!("url \"http://h/f\" digest=\"{a}\"\n"), Code::LOCK_VERSION),
        ] {
            std::fs::write(&path, &text).unwrap();
            let errs = read(&path, &sources).unwrap_err();
            assert_eq!(errs.len(), 1, "{text}");
            assert_eq!(errs[0].code, code, "{text}");
        }
        // Credentials written by an older kiln are dropped from the key.
        std::fs::write(
            &path,
            format!("lock 1\nurl \"http://bob:pw@h/f\" digest=\"{a}\"\n"),
        )
        .unwrap();
        let read_back = read(&path, &sources).unwrap().unwrap();
        assert!(read_back.scrubbed);
        assert!(read_back.urls.contains_key("http://h/f"));
        // The same entry twice says nothing new: accepted.
        std::fs::write(
            &path,
            format!(
                "lock 1\nurl \"http://h/f\" digest=\"{a}\"\nurl \"http://h/f\" digest=\"{a}\"\n"
            ),
        )
        .unwrap();
        assert_eq!(read(&path, &sources).unwrap().unwrap().urls.len(), 1);
    }
}
