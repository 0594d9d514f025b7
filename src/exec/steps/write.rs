//! `write PATH CONTENT`: a file with the given content.

use super::{Prepared, StepCx, StepKind, Work, tree_err};
use crate::diag::Diagnostic;
use crate::ir::{Names, Write};
use crate::model::tree::{self, Entry, Kind, Links};
use serde_json::json;

impl StepKind for Write {
    fn canonical(&self, _names: Names<'_>) -> serde_json::Value {
        json!({"write": {"path": self.path, "content": self.content, "mode": self.mode}})
    }

    fn describe(&self, _names: Names<'_>) -> String {
        format!("write {:?}", self.path)
    }

    fn run(&self, cx: &StepCx<'_>, work: Work<'_>, _prepared: Prepared) -> Result<(), Diagnostic> {
        let span = cx.span();
        let p = tree::normalize(&self.path, work.config.workdir());
        let dir = work
            .tree
            .resolve(tree::parent(&p), true, Links::Rootfs)
            .map_err(|e| tree_err("cannot write", span, e))?;
        let at = tree::join(&dir, tree::basename(&p));
        let blob = cx.content().put_blob(self.content.as_bytes())?;
        work.tree
            .mkdir_all(&dir, &Entry::dir(0o755, 0, 0))
            .map_err(|e| tree_err("cannot write", span, e))?;
        let entry = Entry {
            kind: Kind::File {
                blob,
                size: self.content.len() as u64,
            },
            mode: self.mode.unwrap_or(0o644),
            uid: 0,
            gid: 0,
        };
        work.tree
            .put(&at, entry, false)
            .map_err(|e| tree_err("cannot write", span, e))
    }
}
