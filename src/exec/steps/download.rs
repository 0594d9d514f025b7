//! `fetch`: a file over HTTP(S), checked against its pinned sha256. Only a
//! cache miss gets here: the step's key holds the digest, so a cached build
//! never touches the network.

use crate::diag::Code;
use crate::diag::{Diagnostic, Span};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::time::Duration;

/// Largest download kept in memory.
const MAX_SIZE: u64 = 4 << 30;

/// Download `url`, and check it against `sha256` (lowercase hex) when
/// given.
pub fn fetch(url: &str, sha256: Option<&str>, span: Span) -> Result<Vec<u8>, Diagnostic> {
    // Messages name the URL without its credentials, and never repeat
    // them from an error's text.
    let secrets = crate::model::url::credentials(url);
    let redact = |text: String| {
        secrets
            .iter()
            .fold(text, |t, s| t.replace(s.as_str(), "***"))
    };
    let shown = crate::model::url::without_credentials(url);
    let url_for_request = url;
    let url = shown.as_str();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_body(Some(Duration::from_secs(300)))
        .http_status_as_error(false)
        .build()
        .into();
    let network =
        |what: String| Diagnostic::new(Code::FETCH_NETWORK, what).with_label(span, "fetching this");
    let response = agent
        .get(url_for_request)
        .call()
        .map_err(|e| network(redact(format!("cannot fetch `{url}`: {e}"))))?;
    let status = response.status();
    if !status.is_success() {
        return Err(network(format!("fetching `{url}` answered {status}")));
    }
    let mut body = Vec::new();
    response
        .into_body()
        .into_reader()
        .take(MAX_SIZE + 1)
        .read_to_end(&mut body)
        .map_err(|e| network(redact(format!("cannot read `{url}`: {e}"))))?;
    if body.len() as u64 > MAX_SIZE {
        return Err(network(format!(
            "`{url}` is larger than {} GiB",
            MAX_SIZE >> 30
        )));
    }
    let got = crate::model::digest::hex(&Sha256::digest(&body));
    if let Some(sha256) = sha256
        && got != sha256
    {
        return Err(Diagnostic::new(
            Code::FETCH_CHECKSUM,
            format!(
                "`{url}` does not match its checksum: expected sha256:{sha256}, got sha256:{got}"
            ),
        )
        .with_label(span, "pinned here"));
    }
    Ok(body)
}

/// The file name a URL gives a download copied into a directory: the last
/// segment of its path.
pub fn file_name(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.split(['?', '#']).next().unwrap_or("");
    let path = path.split_once('/').map_or("", |(_, p)| p);
    let name = path.rsplit('/').next().unwrap_or("");
    (!name.is_empty() && name != "." && name != "..").then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_url_path() {
        assert_eq!(
            file_name("https://example.com/a/b.tar.gz?x=1").as_deref(),
            Some("b.tar.gz")
        );
        assert_eq!(file_name("http://example.com/").as_deref(), None);
        assert_eq!(file_name("http://example.com").as_deref(), None);
    }
}
