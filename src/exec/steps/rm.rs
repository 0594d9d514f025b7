//! `rm PATH…`: remove entries (and what is below them).

use super::{Prepared, StepCx, StepKind, Work, quote, tree_err};
use crate::diag::Code;
use crate::diag::Diagnostic;
use crate::ir::{Names, Rm};
use crate::model::tree::{self, Links};
use serde_json::json;

impl StepKind for Rm {
    fn canonical(&self, _names: Names<'_>) -> serde_json::Value {
        json!({"rm": {"paths": self.paths, "force": self.force}})
    }

    fn describe(&self, _names: Names<'_>) -> String {
        format!("rm {}", quote(&self.paths))
    }

    fn run(&self, cx: &StepCx<'_>, work: Work<'_>, _prepared: Prepared) -> Result<(), Diagnostic> {
        let span = cx.span();
        for (i, path) in self.paths.iter().enumerate() {
            let p = tree::normalize(path, work.config.workdir());
            let dir = work
                .tree
                .resolve(tree::parent(&p), true, Links::Rootfs)
                .map_err(|e| tree_err("cannot remove", span, e))?;
            let at = tree::join(&dir, tree::basename(&p));
            if p.is_empty() {
                work.tree.entries.clear();
            } else if !work.tree.remove_all(&at) && !self.force {
                return Err(Diagnostic::new(
                    Code::STEP_RM,
                    format!("cannot remove `{path}`: it does not exist"),
                )
                .with_label(cx.loc.part(i), "not in the stage"));
            }
        }
        Ok(())
    }
}
