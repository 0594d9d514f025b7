//! Questions the stage graph answers alone (`kiln query`): what a stage
//! needs, what needs it, and how one leads to another. Every edge counts:
//! a base, a `copy from=`, a mount, a plugin a stage builds.

use super::{Graph, StageId};
use std::collections::VecDeque;

impl Graph {
    /// The stages that read `id` themselves.
    pub fn dependants(&self, id: StageId) -> Vec<StageId> {
        self.stages
            .iter()
            .filter(|s| s.deps.contains(&id))
            .map(|s| s.id)
            .collect()
    }

    /// `roots` and every stage that depends on one of them, in dependency
    /// order (a stage comes after all of its dependencies that are listed).
    pub fn dependants_of(&self, roots: &[StageId]) -> Vec<StageId> {
        let mut hit = vec![false; self.stages.len()];
        for r in roots {
            hit[r.0 as usize] = true;
        }
        // In build order, a stage's dependencies are decided before it.
        let all: Vec<StageId> = self.stages.iter().map(|s| s.id).collect();
        let mut out = Vec::new();
        for id in self.ancestors(&all) {
            if hit[id.0 as usize] || self.stage(id).deps.iter().any(|d| hit[d.0 as usize]) {
                hit[id.0 as usize] = true;
                out.push(id);
            }
        }
        out
    }

    /// A shortest chain of stages from `from` to `to`, each reading the
    /// next (`from` needs `to` through them); `None` when `from` does not
    /// need `to`.
    pub fn chain(&self, from: StageId, to: StageId) -> Option<Vec<StageId>> {
        let mut came: Vec<Option<StageId>> = vec![None; self.stages.len()];
        let mut queue = VecDeque::from([from]);
        let mut seen = vec![false; self.stages.len()];
        seen[from.0 as usize] = true;
        while let Some(at) = queue.pop_front() {
            if at == to {
                let mut out = vec![to];
                let mut back = to;
                while let Some(prev) = came[back.0 as usize] {
                    out.push(prev);
                    back = prev;
                }
                out.reverse();
                return Some(out);
            }
            for &d in &self.stage(at).deps {
                if !seen[d.0 as usize] {
                    seen[d.0 as usize] = true;
                    came[d.0 as usize] = Some(at);
                    queue.push_back(d);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use crate::ir::{CompileOptions, StageId, compile};

    fn graph(text: &str) -> crate::ir::Graph {
        let sources = crate::diag::Sources::new();
        let spec = crate::frontend::kdl::parse_str("kiln.kdl", text, &sources).unwrap();
        compile(&spec, &CompileOptions::default(), &sources)
            .unwrap()
            .0
    }

    fn names(g: &crate::ir::Graph, ids: &[StageId]) -> Vec<String> {
        ids.iter().map(|i| g.stage(*i).name.clone()).collect()
    }

    #[test]
    fn dependants_and_chains_follow_every_edge() {
        let g = graph(
            r#"kiln 1
stage app {
    from lib
    copy from=tool "/t" "/t"
}
stage lib {
    copy "a" "/a"
}
stage tool {
    run "true" {
        mount "type=bind,from=lib,target=/lib"
    }
}
stage docs {
    copy "d" "/d"
}
"#,
        );
        let lib = g.find_stage("lib").unwrap();
        let app = g.find_stage("app").unwrap();
        let docs = g.find_stage("docs").unwrap();
        assert_eq!(names(&g, &g.dependants(lib)), ["app", "tool"]);
        assert_eq!(names(&g, &g.dependants_of(&[lib])), ["lib", "tool", "app"]);
        assert_eq!(names(&g, &g.dependants_of(&[docs])), ["docs"]);
        assert_eq!(names(&g, &g.chain(app, lib).unwrap()), ["app", "lib"]);
        let tool = g.find_stage("tool").unwrap();
        assert_eq!(names(&g, &g.chain(tool, lib).unwrap()), ["tool", "lib"]);
        assert_eq!(g.chain(lib, app), None);
        assert_eq!(names(&g, &g.chain(app, app).unwrap()), ["app"]);
    }
}
