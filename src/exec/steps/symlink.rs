//! `symlink TARGET LINK`: a symbolic link (the target is kept as written).

use super::{Prepared, StepCx, StepKind, Work, tree_err};
use crate::diag::Diagnostic;
use crate::ir::{Names, Symlink};
use crate::model::tree::{self, Entry, Kind, Links};
use serde_json::json;

impl StepKind for Symlink {
    fn canonical(&self, _names: Names<'_>) -> serde_json::Value {
        json!({"symlink": {"target": self.target, "link": self.link}})
    }

    fn describe(&self, _names: Names<'_>) -> String {
        format!("symlink {:?} {:?}", self.target, self.link)
    }

    fn run(&self, cx: &StepCx<'_>, work: Work<'_>, _prepared: Prepared) -> Result<(), Diagnostic> {
        let span = cx.span();
        let p = tree::normalize(&self.link, work.config.workdir());
        let dir = work
            .tree
            .resolve(tree::parent(&p), true, Links::Rootfs)
            .map_err(|e| tree_err("cannot create symlink", span, e))?;
        work.tree
            .mkdir_all(&dir, &Entry::dir(0o755, 0, 0))
            .map_err(|e| tree_err("cannot create symlink", span, e))?;
        let entry = Entry {
            kind: Kind::Symlink {
                target: self.target.clone(),
            },
            mode: 0o777,
            uid: 0,
            gid: 0,
        };
        work.tree
            .put(&tree::join(&dir, tree::basename(&p)), entry, false)
            .map_err(|e| tree_err("cannot create symlink", span, e))
    }
}
