//! Image names as Docker reads them (the distribution project's grammar):
//! `busybox`, `ns/app:1.0`, `registry.example:5000/ns/app@sha256:…`.
//! One grammar for names kiln pulls, tags (`-t`, `tag=`) and pushes, and
//! one normal form to compare them by: `index.docker.io/busybox` and
//! `busybox:latest` are both `docker.io/library/busybox:latest`.

/// The longest name (registry and repository) Docker accepts.
pub const MAX_NAME: usize = 255;

/// The distribution project's reference grammar (`reference/regexp.go`):
/// `[DOMAIN[:PORT]/]PATH[:TAG][@DIGEST]`. Compiled without Unicode, as Go's
/// `\w` is ASCII (and compiling takes microseconds, not the tens of
/// milliseconds a Unicode `\w` costs every process).
const REFERENCE: &str = r"^((?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))+)?(?::[0-9]+)?/)?[a-z0-9]+(?:(?:(?:[._]|__|[-]*)[a-z0-9]+)+)?(?:(?:/[a-z0-9]+(?:(?:(?:[._]|__|[-]*)[a-z0-9]+)+)?)+)?)(?::([\w][\w.-]{0,127}))?(?:@([A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][[:xdigit:]]{32,}))?$";

fn reference() -> Option<&'static regex::Regex> {
    static RE: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::RegexBuilder::new(REFERENCE)
            .unicode(false)
            .size_limit(10 << 21)
            .build()
            .ok()
    })
    .as_ref()
}

/// A name taken apart, in normal form: `docker.io`'s official images
/// under `library/`, `latest` when neither tag nor digest is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Name {
    /// `REGISTRY/REPOSITORY[:TAG][@DIGEST]`.
    pub fn whole(&self) -> String {
        let mut s = format!("{}/{}", self.registry, self.repository);
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }
}

const INVALID: &str = "a name is lowercase letters, digits and separators (`.`, `_`, `__`, `-`) between them, in `/`-separated parts, then `:TAG` or `@sha256:…`";

/// Take `name` apart as Docker does, or say why it is not a name Docker
/// accepts.
pub fn parse(name: &str) -> Result<Name, String> {
    if name.is_empty() {
        return Err(INVALID.into());
    }
    if name.chars().any(char::is_whitespace) {
        return Err("it contains whitespace".into());
    }
    let re = reference().ok_or("the reference grammar did not compile")?;
    let caps = re.captures(name).ok_or(INVALID)?;
    let path = caps.get(1).map_or("", |m| m.as_str());
    let digest = caps.get(3).map(|m| m.as_str().to_string());
    let tag = match (caps.get(2), &digest) {
        (Some(t), _) => Some(t.as_str().to_string()),
        (None, None) => Some("latest".to_string()),
        (None, Some(_)) => None,
    };
    // The distribution project's normalisation (`normalize.go`): a first
    // part with a `.` or `:`, or `localhost`, is a registry.
    let (mut registry, mut repository) = match path.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first.to_string(), rest.to_string())
        }
        _ => ("docker.io".to_string(), path.to_string()),
    };
    if registry == "index.docker.io" {
        registry = "docker.io".into();
    }
    if registry == "docker.io" && !repository.contains('/') {
        repository = format!("library/{repository}");
    }
    if let Some(d) = &digest {
        let want = match d.split_once(':') {
            Some(("sha256", hex)) => hex.len() == 64,
            Some(("sha384", hex)) => hex.len() == 96,
            Some(("sha512", hex)) => hex.len() == 128,
            _ => return Err(format!("the digest `{d}` is not sha256, sha384 or sha512")),
        };
        if !want {
            return Err(format!("the digest `{d}` has the wrong length"));
        }
    }
    // The whole name counts, registry included.
    let written = name.split('@').next().unwrap_or(name);
    let last = written.rfind('/').map_or(0, |i| i + 1);
    let bare = match written[last..].find(':') {
        Some(i) => &written[..last + i],
        None => written,
    };
    if bare.len() > MAX_NAME || repository.len() > MAX_NAME {
        return Err(format!("a name is at most {MAX_NAME} characters"));
    }
    Ok(Name {
        registry,
        repository,
        tag,
        digest,
    })
}

/// `name` in its normal form (`REGISTRY/REPOSITORY:TAG` or
/// `REGISTRY/REPOSITORY@DIGEST`), or why it is not a name Docker accepts.
pub fn canonical(name: &str) -> Result<String, String> {
    parse(name).map(|n| n.whole())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_docker_s() {
        for (name, normal) in [
            ("busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("ns/app:1", "docker.io/ns/app:1"),
            ("localhost:5000/a/b:t", "localhost:5000/a/b:t"),
            ("a__b", "docker.io/library/a__b:latest"),
        ] {
            assert_eq!(canonical(name).as_deref(), Ok(normal), "{name}");
        }
        let long = format!("registry.example/{}", "a".repeat(250));
        for bad in [
            "a..b",
            "ns/app_",
            "a___b",
            "Upper",
            "a b",
            "",
            long.as_str(),
        ] {
            assert!(canonical(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_grammar_is_the_distribution_project_s() {
        let hex = "0123456789abcdef".repeat(4);
        let names = [
            "busybox".to_string(),
            "test.com:tag".into(),
            "test.com:5000".into(),
            "test.com:5000/ns/app".into(),
            "foo_bar.com:8080".into(),
            "foo_bar.com:8080/x".into(),
            "lowercase:Uppercase".into(),
            "Uppercase:x".into(),
            "localhost/a".into(),
            "localhost:5000/a/b:t".into(),
            "127.0.0.1:5000/x:1.0-rc_2".into(),
            "a-b--c/d.e".into(),
            "a__b/c_d".into(),
            "a.-b".into(),
            "x:".into(),
            "x:.t".into(),
            format!("x:{}", "t".repeat(128)),
            format!("x:{}", "t".repeat(129)),
            format!("app@sha256:{hex}"),
            format!("reg.io/app:1@sha256:{hex}"),
            "app@sha256:abc".into(),
            format!("app@md5:{hex}"),
            format!("app@sha512:{hex}"),
            "index.docker.io/library/busybox".into(),
            "docker.io/ns/app".into(),
            "/app".into(),
            "app/".into(),
        ];
        for n in &names {
            let ours = canonical(n).ok();
            let theirs = oci_client::Reference::try_from(n.as_str())
                .ok()
                .map(|r| r.whole());
            assert_eq!(ours, theirs, "{n}");
        }
    }
}
