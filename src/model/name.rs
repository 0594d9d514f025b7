//! Image names as Docker reads them (the distribution project's grammar):
//! `busybox`, `ns/app:1.0`, `registry.example:5000/ns/app@sha256:…`.
//! One grammar for names kiln pulls, tags (`-t`, `tag=`) and pushes, and
//! one normal form to compare them by: `index.docker.io/busybox` and
//! `busybox:latest` are both `docker.io/library/busybox:latest`.

/// The longest name (registry and repository) Docker accepts.
pub const MAX_NAME: usize = 255;

/// `name` in its normal form (`REGISTRY/REPOSITORY:TAG` or
/// `REGISTRY/REPOSITORY@DIGEST`), or why it is not a name Docker accepts.
pub fn canonical(name: &str) -> Result<String, String> {
    if name.chars().any(char::is_whitespace) {
        return Err("it contains whitespace".into());
    }
    let r = oci_client::Reference::try_from(name).map_err(|e| match e {
        oci_client::ParseError::NameTooLong => format!("a name is at most {MAX_NAME} characters"),
        oci_client::ParseError::ReferenceInvalidFormat | oci_client::ParseError::NameEmpty => {
            "a name is lowercase letters, digits and separators (`.`, `_`, `__`, `-`) between them, in `/`-separated parts, then `:TAG` or `@sha256:…`".to_string()
        }
        other => other.to_string(),
    })?;
    // The whole name counts, registry included (the parser counts the
    // repository only).
    let written = name.split('@').next().unwrap_or(name);
    let last = written.rfind('/').map_or(0, |i| i + 1);
    let bare = match written[last..].find(':') {
        Some(i) => &written[..last + i],
        None => written,
    };
    if bare.len() > MAX_NAME {
        return Err(format!("a name is at most {MAX_NAME} characters"));
    }
    Ok(r.whole())
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
}
