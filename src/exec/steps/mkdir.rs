//! `mkdir PATH…`: directories, with their parents.

use super::{Prepared, StepCx, StepKind, Work, quote, tree_err};
use crate::diag::Diagnostic;
use crate::ir::{Mkdir, Names};
use crate::model::tree::{self, Entry, Links};
use serde_json::json;

impl StepKind for Mkdir {
    fn canonical(&self, _names: Names<'_>) -> serde_json::Value {
        json!({"mkdir": {"paths": self.paths, "mode": self.mode}})
    }

    fn describe(&self, _names: Names<'_>) -> String {
        format!("mkdir {}", quote(&self.paths))
    }

    fn run(&self, cx: &StepCx<'_>, work: Work<'_>, _prepared: Prepared) -> Result<(), Diagnostic> {
        let span = cx.span();
        for path in &self.paths {
            let p = tree::normalize(path, work.config.workdir());
            let p = work
                .tree
                .resolve(&p, true, Links::Rootfs)
                .map_err(|e| tree_err("cannot create directory", span, e))?;
            work.tree
                .mkdir_all(&p, &Entry::dir(0o755, 0, 0))
                .map_err(|e| tree_err("cannot create directory", span, e))?;
            if let (Some(m), Some(e)) = (self.mode, work.tree.entries.get_mut(&p)) {
                e.mode = m;
            }
        }
        Ok(())
    }
}
