//! How long a build's stages took, and the chain of them that decided
//! how long the build took (its critical path): what `--trace` draws and
//! `kiln explain --critical-path` prints.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A stage's span in a build, as the critical path sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Span {
    pub stage: String,
    pub start_ms: f64,
    pub end_ms: f64,
    /// Every step was cached.
    pub cached: bool,
    /// The stages it needs, by name.
    pub needs: Vec<String>,
}

/// The chain of stages that decided how long a build took: from the
/// stage that ended last, back through the stage it needed that ended
/// last, to one that needed nothing (or nothing built). Each stage of it
/// could start only when the one before it ended, so making any other
/// stage faster does not make the build faster. First stage first.
pub fn critical_path(spans: &[Span]) -> Vec<&Span> {
    let by_name: HashMap<&str, &Span> = spans.iter().map(|s| (s.stage.as_str(), s)).collect();
    let last = spans.iter().max_by(|a, b| a.end_ms.total_cmp(&b.end_ms));
    let mut path = Vec::new();
    let mut cur = last;
    while let Some(s) = cur {
        path.push(s);
        cur = s
            .needs
            .iter()
            .filter_map(|n| by_name.get(n.as_str()).copied())
            .max_by(|a, b| a.end_ms.total_cmp(&b.end_ms));
        // A span list is acyclic (stages are), but a bad record must not
        // loop forever.
        if path.len() > spans.len() {
            break;
        }
    }
    path.reverse();
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(stage: &str, start: f64, end: f64, needs: &[&str]) -> Span {
        Span {
            stage: stage.into(),
            start_ms: start,
            end_ms: end,
            cached: false,
            needs: needs.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn the_critical_path_follows_the_need_that_ended_last() {
        let spans = vec![
            span("toolchain", 0.0, 50.0, &[]),
            span("docs", 0.0, 10.0, &[]),
            span("lib-a", 50.0, 70.0, &["toolchain"]),
            span("lib-b", 50.0, 90.0, &["toolchain"]),
            span("app", 90.0, 100.0, &["lib-a", "lib-b", "docs"]),
        ];
        let path: Vec<&str> = critical_path(&spans)
            .iter()
            .map(|s| s.stage.as_str())
            .collect();
        assert_eq!(path, ["toolchain", "lib-b", "app"]);
        assert!(critical_path(&[]).is_empty());
    }
}
