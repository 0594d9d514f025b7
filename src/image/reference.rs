//! Image references, as `from image="…"` and Dockerfile `FROM` write them:
//!
//! - a registry reference (`busybox`, `localhost:5000/app:1.0`,
//!   `registry.example/ns/app@sha256:…`), with Docker's defaults: the
//!   registry `docker.io`, the namespace `library/` for one-part names, and
//!   the tag `latest` when neither a tag nor a digest is given;
//! - a local OCI image layout: `oci-layout://DIR[:TAG|@DIGEST]` (BuildKit's
//!   form) or `oci:DIR[:TAG]` (the containers/image form buildah and skopeo
//!   accept);
//! - an archive: `oci-archive:FILE[:TAG]` (an OCI layout in a tar) or
//!   `docker-archive:FILE[:NAME]` (what `docker save` writes).
//!
//! Relative paths are relative to the directory of the spec file that
//! names the image.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where an image comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ImageRef {
    Registry(RegistryRef),
    Layout {
        dir: PathBuf,
        tag: Option<String>,
        digest: Option<String>,
    },
    OciArchive {
        file: PathBuf,
        tag: Option<String>,
    },
    DockerArchive {
        file: PathBuf,
        name: Option<String>,
    },
}

/// A reference to an image in a registry, with Docker's defaults applied.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RegistryRef {
    /// `docker.io`, `localhost:5000`, …
    pub registry: String,
    /// `library/busybox`, `ns/app`, …
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:…`
    pub digest: Option<String>,
}

impl RegistryRef {
    /// The tag or digest to ask the registry for.
    pub fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// Whether plain HTTP may be used without being told: a registry on
    /// the loopback interface.
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => self.registry.as_str(),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// The host part without a port, for matching `--insecure-registry`.
    pub fn host(&self) -> &str {
        &self.registry
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry(r) => write!(f, "{r}"),
            ImageRef::Layout { dir, tag, digest } => {
                write!(f, "oci-layout://{}", dir.display())?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                if let Some(d) = digest {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
            ImageRef::OciArchive { file, tag } => {
                write!(f, "oci-archive:{}", file.display())?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                Ok(())
            }
            ImageRef::DockerArchive { file, name } => {
                write!(f, "docker-archive:{}", file.display())?;
                if let Some(n) = name {
                    write!(f, ":{n}")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a reference cannot be read; the message says how to write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadReference(pub String);

impl fmt::Display for BadReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parse a reference; `base` is the directory relative paths start from.
pub fn parse(text: &str, base: &Path) -> Result<ImageRef, BadReference> {
    let path = |p: &str| -> Result<PathBuf, BadReference> {
        if p.is_empty() {
            return Err(BadReference(format!("`{text}` names no path")));
        }
        Ok(base.join(p))
    };
    if let Some(rest) = text.strip_prefix("oci-layout://") {
        let (rest, digest) = match rest.rsplit_once('@') {
            Some((r, d)) => (r, Some(check_digest(d, text)?)),
            None => (rest, None),
        };
        let (dir, tag) = split_tag(rest);
        return Ok(ImageRef::Layout {
            dir: path(dir)?,
            tag,
            digest,
        });
    }
    if let Some(rest) = text.strip_prefix("oci:") {
        let (dir, tag) = match rest.split_once(':') {
            Some((d, t)) => (d, Some(t.to_string())),
            None => (rest, None),
        };
        return Ok(ImageRef::Layout {
            dir: path(dir)?,
            tag: tag.filter(|t| !t.is_empty()),
            digest: None,
        });
    }
    if let Some(rest) = text.strip_prefix("oci-archive:") {
        let (file, tag) = match rest.split_once(':') {
            Some((f, t)) => (f, Some(t.to_string())),
            None => (rest, None),
        };
        return Ok(ImageRef::OciArchive {
            file: path(file)?,
            tag: tag.filter(|t| !t.is_empty()),
        });
    }
    if let Some(rest) = text.strip_prefix("docker-archive:") {
        let (file, name) = match rest.split_once(':') {
            Some((f, n)) => (f, Some(n.to_string())),
            None => (rest, None),
        };
        return Ok(ImageRef::DockerArchive {
            file: path(file)?,
            name: name.filter(|n| !n.is_empty()),
        });
    }
    parse_registry(text).map(ImageRef::Registry)
}

/// `TAG` after the last `:` of the last path component, if any.
fn split_tag(rest: &str) -> (&str, Option<String>) {
    let last = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[last..].rfind(':') {
        Some(i) => (
            &rest[..last + i],
            Some(rest[last + i + 1..].to_string()).filter(|t| !t.is_empty()),
        ),
        None => (rest, None),
    }
}

fn check_digest(d: &str, text: &str) -> Result<String, BadReference> {
    match d.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(d.to_ascii_lowercase())
        }
        _ => Err(BadReference(format!(
            "`{text}`: `{d}` is not a digest (write `sha256:` and 64 hex digits)"
        ))),
    }
}

/// Docker's reference grammar: `[REGISTRY/]PATH[:TAG][@DIGEST]`.
pub fn parse_registry(text: &str) -> Result<RegistryRef, BadReference> {
    let bad = |why: &str| BadReference(format!("`{text}` is not an image reference: {why}"));
    if text.is_empty() {
        return Err(bad("it is empty"));
    }
    if text.chars().any(|c| c.is_whitespace()) {
        return Err(bad("it contains whitespace"));
    }
    // Docker's grammar and normalisation (`index.docker.io` is
    // `docker.io`, `busybox` is `docker.io/library/busybox:latest`), as
    // the distribution project's reference package has them.
    let parsed = crate::model::name::parse(text).map_err(|e| bad(&e))?;
    let digest = match &parsed.digest {
        Some(d) => Some(check_digest(d, text)?),
        None => None,
    };
    Ok(RegistryRef {
        registry: parsed.registry,
        repository: parsed.repository,
        tag: parsed.tag,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> RegistryRef {
        parse_registry(s).unwrap()
    }

    #[test]
    fn docker_defaults() {
        let r = reg("busybox");
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(
            reg("localhost:5000/busybox:1.36").to_string(),
            "localhost:5000/busybox:1.36"
        );
        assert!(reg("localhost:5000/x").is_loopback());
        assert!(reg("127.0.0.1:5000/x").is_loopback());
        assert!(!reg("registry.example/x").is_loopback());
        let d = format!("registry.example/ns/app@sha256:{}", "a".repeat(64));
        let r = reg(&d);
        assert_eq!(
            (r.tag.as_deref(), r.reference()),
            (None, &d[d.len() - 71..])
        );
        assert_eq!(reg("ns/app:1.0").repository, "ns/app");
        assert_eq!(reg("ns/app:1.0").registry, "docker.io");
    }

    #[test]
    fn bad_references_say_why() {
        let long = format!("ns/{}", "a".repeat(255));
        for s in [
            "",
            "Busybox",
            "a b",
            "x:",
            "x@sha256:12",
            "x:-bad",
            // Names Docker refuses.
            "a..b",
            "ns/app_",
            "a___b",
            "-a",
            long.as_str(),
        ] {
            assert!(parse_registry(s).is_err(), "{s}");
        }
        // And what it accepts.
        for s in [
            "a__b",
            "a_b",
            "a-b.c",
            "ns/a--b",
            "localhost/x",
            "127.0.0.1:5000/a/b:t",
        ] {
            assert!(parse_registry(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn docker_hub_s_old_name_is_docker_io() {
        assert_eq!(
            reg("index.docker.io/busybox").to_string(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            reg("index.docker.io/library/busybox:1").to_string(),
            "docker.io/library/busybox:1"
        );
    }

    #[test]
    fn local_forms() {
        let base = Path::new("/p");
        assert_eq!(
            parse("oci-layout://img:v1", base).unwrap(),
            ImageRef::Layout {
                dir: "/p/img".into(),
                tag: Some("v1".into()),
                digest: None
            }
        );
        let d = format!("sha256:{}", "b".repeat(64));
        assert_eq!(
            parse(&format!("oci-layout:///abs/img@{d}"), base).unwrap(),
            ImageRef::Layout {
                dir: "/abs/img".into(),
                tag: None,
                digest: Some(d)
            }
        );
        assert_eq!(
            parse("oci:../img:latest", base).unwrap(),
            ImageRef::Layout {
                dir: "/p/../img".into(),
                tag: Some("latest".into()),
                digest: None
            }
        );
        assert_eq!(
            parse("docker-archive:busybox.tar:busybox:1.36", base).unwrap(),
            ImageRef::DockerArchive {
                file: "/p/busybox.tar".into(),
                name: Some("busybox:1.36".into())
            }
        );
        assert!(matches!(
            parse("oci-archive:img.tar", base).unwrap(),
            ImageRef::OciArchive { tag: None, .. }
        ));
        assert!(parse("oci:", base).is_err());
    }
}
