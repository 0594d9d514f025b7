//! URLs as kiln shows and records them: without the credentials a user
//! may have put in them (`https://user:token@host/…`). Keys, the lock file,
//! provenance, progress, image history and messages all use this form;
//! only the download itself sees the credentials.

/// `url` without its credentials: the userinfo of an `http(s)` URL (often
/// a token, even alone), or of any URL that holds a password. An ssh
/// login without a password (`ssh://git@host/…`) is no secret and stays.
pub fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let http = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    if http || rest[..at].contains(':') {
        format!("{scheme}://{}", &rest[at + 1..])
    } else {
        url.to_string()
    }
}

/// The secret parts of `url`'s credentials (what [`without_credentials`]
/// removes), each split at `:` (a user and a password), for redacting
/// them wherever else they appear.
pub fn credentials(url: &str) -> Vec<String> {
    let clean = without_credentials(url);
    if clean == url {
        return Vec::new();
    }
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return Vec::new();
    };
    rest[..at]
        .split(':')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_and_nothing_else_changes() {
        for (url, clean) in [
            ("https://bob:pw@h.example/f.txt", "https://h.example/f.txt"),
            ("https://token@h.example/f", "https://h.example/f"),
            (
                "http://a:b@127.0.0.1:8080/x?y=1",
                "http://127.0.0.1:8080/x?y=1",
            ),
            ("https://h.example/a@b", "https://h.example/a@b"),
            ("https://h.example/?q=a@b", "https://h.example/?q=a@b"),
            ("ssh://git@h.example/r.git", "ssh://git@h.example/r.git"),
            ("ssh://git:pw@h.example/r.git", "ssh://h.example/r.git"),
            ("git@h.example:r.git", "git@h.example:r.git"),
            ("https://h.example/f", "https://h.example/f"),
        ] {
            assert_eq!(without_credentials(url), clean, "{url}");
        }
        assert_eq!(credentials("https://bob:pw@h/f"), ["bob", "pw"]);
        assert_eq!(credentials("https://tok@h/f"), ["tok"]);
        assert!(credentials("https://h/f").is_empty());
        assert!(credentials("ssh://git@h/r").is_empty());
    }
}
