//! `run`: a command in a sandbox over the stage's tree (Docker's `RUN`).
//! Its canonical form holds the command, its environment, mounts, network
//! and security settings, all typed.

use super::{Prepared, StepCx, StepKind, Work, quote};
use crate::diag::Diagnostic;
use crate::ir::{Graph, RunOp};
use serde_json::json;

impl StepKind for RunOp {
    fn canonical(&self, _graph: &Graph) -> serde_json::Value {
        json!({ "run": self })
    }

    fn describe(&self, _graph: &Graph) -> String {
        format!("run {}", quote(&self.command))
    }

    fn stores_tree(&self) -> bool {
        true
    }

    fn run(&self, cx: &StepCx<'_>, _work: Work<'_>, _prepared: Prepared) -> Result<(), Diagnostic> {
        Err(Diagnostic::build(
            "kiln::exec::unsupported",
            "`run` steps cannot run in this version of kiln",
        )
        .with_label(cx.span(), "a `run` step")
        .with_help("remove the step, or build the stage with a kiln that runs sandboxed commands"))
    }
}
