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
use crate::diag::{Diagnostic, Sources, Span};
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
    let mut errors = Vec::new();
    let at = |n: &KdlNode| {
        let s = n.span();
        Span::new(id, s.offset(), s.len())
    };
    let bad = |n: &KdlNode, what: String| {
        Diagnostic::new(Code::LOCK_ENTRY, what).with_label(at(n), "in this entry")
    };
    // Where each entry came from, to point at both of two that disagree.
    let mut seen: BTreeMap<(&'static str, String, String), (Span, String)> = BTreeMap::new();
    let mut conflict =
        |kind: &'static str, key: (String, String), value: String, n: &KdlNode| match seen.get(&(
            kind,
            key.0.clone(),
            key.1.clone(),
        )) {
            Some((first, v)) if *v != value => Some(
                Diagnostic::new(
                    Code::LOCK_CONFLICT,
                    format!("the lock file pins `{}` twice, differently", key.0),
                )
                .with_label(at(n), "this entry")
                .with_label(*first, "disagrees with this one"),
            ),
            Some(_) => None,
            None => {
                seen.insert((kind, key.0, key.1), (at(n), value));
                None
            }
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
                    errors.push(bad(n, "the lock file has two `lock` headers".into()));
                } else if version != Some(1) {
                    errors.push(
                        Diagnostic::new(
                            Code::LOCK_VERSION,
                            "this kiln reads lock files of version 1 (`lock 1`)",
                        )
                        .with_label(at(n), "an unknown version")
                        .with_help("use the kiln that wrote it, or delete the lock file and build again to write a new one"),
                    );
                }
                header = Some(at(n));
            }
            "image" => {
                let reference = n
                    .entries()
                    .iter()
                    .find(|e| e.name().is_none())
                    .and_then(|e| e.value().as_string());
                let prop = |k: &str| n.get(k).and_then(|v| v.as_string());
                match (
                    reference,
                    prop("platform"),
                    prop("digest").and_then(Sha256::parse),
                ) {
                    (Some(r), Some(p), Some(d)) => {
                        let key = (r.to_string(), p.to_string());
                        match conflict("image", key.clone(), d.to_string(), n) {
                            Some(e) => errors.push(e),
                            None => {
                                lock.images.insert(key, d);
                            }
                        }
                    }
                    _ => errors.push(bad(
                        n,
                        "an image entry needs a reference, `platform=` and a `digest=\"sha256:…\"`"
                            .into(),
                    )),
                }
            }
            "url" => {
                let url = n
                    .entries()
                    .iter()
                    .find(|e| e.name().is_none())
                    .and_then(|e| e.value().as_string());
                let digest = n
                    .get("digest")
                    .and_then(|v| v.as_string())
                    .and_then(Sha256::parse);
                match (url, digest) {
                    (Some(u), Some(d)) => {
                        let u = crate::model::url::without_credentials(u);
                        match conflict("url", (u.clone(), String::new()), d.to_string(), n) {
                            Some(e) => errors.push(e),
                            None => {
                                lock.urls.insert(u, d);
                            }
                        }
                    }
                    _ => errors.push(bad(
                        n,
                        "a url entry needs the URL and a `digest=\"sha256:…\"`".into(),
                    )),
                }
            }
            "git" => {
                let url = n
                    .entries()
                    .iter()
                    .find(|e| e.name().is_none())
                    .and_then(|e| e.value().as_string());
                let prop = |k: &str| n.get(k).and_then(|v| v.as_string());
                match (url, prop("ref"), prop("commit")) {
                    (Some(u), Some(r), Some(c))
                        if c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit()) =>
                    {
                        let key = (crate::model::url::without_credentials(u), r.to_string());
                        match conflict("git", key.clone(), c.to_ascii_lowercase(), n) {
                            Some(e) => errors.push(e),
                            None => {
                                lock.gits.insert(key, c.to_ascii_lowercase());
                            }
                        }
                    }
                    _ => errors.push(bad(
                        n,
                        "a git entry needs the URL, `ref=` and a `commit=` of 40 hex digits".into(),
                    )),
                }
            }
            other => errors.push(bad(n, format!("`{other}` is not a lock entry"))),
        }
    }
    if header.is_none() && errors.is_empty() {
        errors.push(
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
            && n.entries()
                .iter()
                .find(|e| e.name().is_none())
                .and_then(|e| e.value().as_string())
                .is_some_and(|u| crate::model::url::without_credentials(u) != u)
    });
    if errors.is_empty() {
        Ok(Some(lock))
    } else {
        Err(errors)
    }
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
