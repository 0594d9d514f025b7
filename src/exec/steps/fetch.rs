//! `fetch`: a file over HTTP(S), pinned by its sha256: in the spec (in
//! the canonical form), or by the lock file on first use (a key input).
//! Keyed by the pin, so a cached build never touches the network; a
//! download that does not match is an error that shows both digests.

use super::copy_rules::{self, Overrides, Picked};
use super::{StepCx, StepKind, Work, resolve_owner};
use crate::diag::Code;
use crate::diag::Diagnostic;
use crate::ir::{Fetch, Names};
use crate::model::key::{KeyBuilder, KeyInput};
use crate::model::tree::{self, Entry, Kind};
use crate::model::url::without_credentials;
use serde_json::json;

impl StepKind for Fetch {
    fn canonical(&self, _names: Names<'_>) -> serde_json::Value {
        json!({"fetch": {
            // Without credentials: a rotated token fetches the same file.
            "url": without_credentials(&self.url), "dest": self.dest, "sha256": self.sha256,
            "chmod": self.chmod, "chown": self.chown,
        }})
    }

    fn describe(&self, _names: Names<'_>) -> String {
        format!("fetch {}", without_credentials(&self.url))
    }

    fn prepare(
        &self,
        cx: &StepCx<'_>,
        key: Option<&mut KeyBuilder>,
    ) -> Result<super::Prepared, Diagnostic> {
        if self.sha256.is_none()
            && let Some(key) = key
        {
            key.input(KeyInput::Pinned {
                source: without_credentials(&self.url),
                digest: format!("sha256:{}", self.pin(cx)?.sha256),
            });
        }
        Ok(super::Prepared::Nothing)
    }

    fn run(
        &self,
        cx: &StepCx<'_>,
        work: Work<'_>,
        _prepared: super::Prepared,
    ) -> Result<(), Diagnostic> {
        let span = cx.span();
        let owner = match &self.chown {
            Some(o) => Some(resolve_owner(cx.content(), work.tree, o, span)?),
            None => None,
        };
        let name = super::download::file_name(&self.url);
        let into_dir = self.dest.ends_with('/');
        let name = match (name, into_dir) {
            (Some(n), _) => n,
            (None, false) => tree::basename(&self.dest).to_string(),
            (None, true) => {
                return Err(Diagnostic::new(
                    Code::FETCH_NAME,
                    format!(
                        "`{}` has no file name to copy into `{}`",
                        without_credentials(&self.url),
                        self.dest
                    ),
                )
                .with_label(span, "destination is a directory"));
            }
        };
        let (blob, size) = match &self.sha256 {
            Some(sum) => {
                let body = super::download::fetch(&self.url, Some(sum), span)?;
                (cx.content().put_blob(&body)?, body.len() as u64)
            }
            None => {
                let pin = self.pin(cx)?;
                // Fetched while pinning, in this build: no second download.
                match pin.blob {
                    Some((b, size)) if cx.content().has_blob(b) => (b, size),
                    _ => {
                        let body = super::download::fetch(&self.url, Some(&pin.sha256), span)?;
                        (cx.content().put_blob(&body)?, body.len() as u64)
                    }
                }
            }
        };
        // Docker gives downloaded files mode 0600.
        let entry = Entry {
            kind: Kind::File { blob, size },
            mode: 0o600,
            uid: 0,
            gid: 0,
        };
        let picked = [Picked {
            name,
            path: self.url.clone(),
            is_dir: false,
            items: vec![(String::new(), entry)],
            pivot: String::new(),
        }];
        let ov = Overrides {
            chmod: self.chmod,
            owner,
        };
        let workdir = work.config.workdir().to_string();
        copy_rules::place(work.tree, &picked, &self.dest, &workdir, ov, false, span)
    }
}

impl Fetch {
    /// What the lock file pins this download to (resolved before the build).
    fn pin(&self, cx: &StepCx<'_>) -> Result<crate::exec::UrlPin, Diagnostic> {
        cx.env
            .options
            .pins
            .urls
            .get(&self.url)
            .cloned()
            .ok_or_else(|| {
                Diagnostic::internal(format!(
                    "`{}` was not pinned before the build",
                    without_credentials(&self.url)
                ))
            })
    }
}
