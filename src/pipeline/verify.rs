//! Comparing two builds of the same stages (`kiln verify`): the usual one
//! and one from nothing. For each stage, whether the results are the
//! same; when not, the first differing path and how it differs, and the
//! step that made the difference: the first step both builds ran with the
//! same key and that gave different results (the next step's key
//! differs), which a tool that compares only outputs cannot name.

use super::Report;
use crate::model::digest::{StateDigest, StepKey};
use crate::model::state::Action;
use crate::model::tree::{Entry, Kind, Tree};
use crate::store::records::StepRecord;
use crate::store::{ActionCache, ContentStore};
use std::collections::BTreeMap;

/// How one stage's two results compare.
#[derive(Debug)]
pub enum Verdict {
    Same(StateDigest),
    Different {
        config_differs: bool,
        /// `None` when the trees are equal.
        tree: Option<TreeDifference>,
        /// The step that made the difference, when it can be named.
        culprit: Option<Box<StepRecord>>,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum TreeDifference {
    /// The first differing path (in order), and how it differs.
    At { path: String, how: String },
    /// The trees differ, though no path does (they cannot: a digest of
    /// equal entries is equal; kept for a store that answers oddly).
    Somewhere,
    /// One of the trees could not be read.
    Unreadable,
}

/// Every stage both builds made, in the first build's order. `a` and `b`
/// are the stores the builds used (their action caches name each step's
/// result).
pub fn compare<S: ContentStore + ActionCache>(
    first: &Report,
    second: &Report,
    a: &S,
    b: &S,
) -> Vec<(String, Verdict)> {
    let again: BTreeMap<&String, &crate::model::state::State> =
        second.states.iter().map(|(n, s)| (n, s)).collect();
    let in_a = |k: &str| StepKey::parse(k).and_then(|k| a.get(k));
    let in_b = |k: &str| StepKey::parse(k).and_then(|k| b.get(k));
    let mut out = Vec::new();
    for (name, s1) in &first.states {
        let Some(s2) = again.get(name) else { continue };
        if s1 == *s2 {
            out.push((name.clone(), Verdict::Same(s1.digest())));
            continue;
        }
        let tree = (s1.tree != s2.tree).then(|| match (a.get_tree(s1.tree), b.get_tree(s2.tree)) {
            (Ok(t1), Ok(t2)) => match first_difference(&t1, &t2) {
                Some((path, how)) => TreeDifference::At { path, how },
                None => TreeDifference::Somewhere,
            },
            _ => TreeDifference::Unreadable,
        });
        out.push((
            name.clone(),
            Verdict::Different {
                config_differs: s1.config != s2.config,
                tree,
                culprit: culprit(&first.records, &second.records, &in_a, &in_b)
                    .cloned()
                    .map(Box::new),
            },
        ));
    }
    out
}

/// The first path (in order) where two trees differ, and how.
pub fn first_difference(a: &Tree, b: &Tree) -> Option<(String, String)> {
    let mut paths: Vec<&String> = a.entries.keys().chain(b.entries.keys()).collect();
    paths.sort();
    paths.dedup();
    for p in paths {
        let how = match (a.entries.get(p), b.entries.get(p)) {
            (Some(_), None) => "only in the usual build".to_string(),
            (None, Some(_)) => "only in the build from nothing".to_string(),
            (Some(x), Some(y)) if x == y => continue,
            (Some(x), Some(y)) => how_differs(x, y),
            (None, None) => continue,
        };
        return Some((p.clone(), how));
    }
    None
}

fn how_differs(x: &Entry, y: &Entry) -> String {
    let kind = |e: &Entry| match &e.kind {
        Kind::File { .. } => "a file",
        Kind::Dir => "a directory",
        Kind::Symlink { .. } => "a symlink",
        Kind::Device {
            class: crate::model::tree::DeviceClass::Block,
            ..
        } => "a block device",
        Kind::Device {
            class: crate::model::tree::DeviceClass::Char,
            ..
        } => "a character device",
        Kind::Fifo => "a FIFO",
    };
    match (&x.kind, &y.kind) {
        (Kind::File { blob: b1, size: s1 }, Kind::File { blob: b2, size: s2 }) if b1 != b2 => {
            format!(
                "content differs ({s1} bytes, blake3 {}… / {s2} bytes, blake3 {}…)",
                &b1.hex()[..12],
                &b2.hex()[..12]
            )
        }
        (Kind::Symlink { target: t1 }, Kind::Symlink { target: t2 }) if t1 != t2 => {
            format!("symlink target differs (`{t1}` / `{t2}`)")
        }
        (
            Kind::Device {
                major: a, minor: b, ..
            },
            Kind::Device {
                major: c, minor: d, ..
            },
        ) if (a, b) != (c, d) => format!("device number differs ({a}:{b} / {c}:{d})"),
        (k1, k2) if std::mem::discriminant(k1) != std::mem::discriminant(k2) => {
            format!("{} / {}", kind(x), kind(y))
        }
        _ if x.mode != y.mode => format!("mode differs ({:o} / {:o})", x.mode, y.mode),
        _ => format!("owner differs ({}:{} / {}:{})", x.uid, x.gid, y.uid, y.gid),
    }
}

/// The step that made a difference: the first step (in build order)
/// that both builds ran with the same key and whose results differ. A
/// step's result is what the action cache holds for its key in each
/// state directory: steps that run programs (`run`, plugins, `git`) and
/// the last step of each stage keep their trees, and every other step
/// is a pure function of the tree before it, so a difference starts at
/// one of those.
fn culprit<'r>(
    a: &'r [StepRecord],
    b: &[StepRecord],
    result_a: &dyn Fn(&str) -> Option<Action>,
    result_b: &dyn Fn(&str) -> Option<Action>,
) -> Option<&'r StepRecord> {
    let key_b: BTreeMap<(&str, usize), &str> = b
        .iter()
        .map(|r| ((r.stage.as_str(), r.step), r.key.as_str()))
        .collect();
    a.iter().find(|r| {
        key_b.get(&(r.stage.as_str(), r.step)) == Some(&r.key.as_str())
            && match (result_a(&r.key), result_b(&r.key)) {
                (Some(x), Some(y)) => match (x.tree, y.tree) {
                    (Some(t1), Some(t2)) => t1 != t2 || x.config != y.config,
                    _ => x.config != y.config,
                },
                _ => false,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::digest::BlobDigest;

    fn file(n: u8) -> Entry {
        Entry {
            kind: Kind::File {
                blob: BlobDigest::from_hash(blake3::hash(&[n])),
                size: 1,
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn the_first_difference_says_how() {
        let mut a = Tree::default();
        let mut b = Tree::default();
        a.entries.insert("a".into(), file(1));
        b.entries.insert("a".into(), file(1));
        a.entries.insert("b".into(), file(1));
        b.entries.insert("b".into(), file(2));
        let (p, how) = first_difference(&a, &b).unwrap();
        assert_eq!(p, "b");
        assert!(how.starts_with("content differs"), "{how}");
        let mut c = file(1);
        c.mode = 0o755;
        b.entries.insert("b".into(), c);
        assert_eq!(
            first_difference(&a, &b).unwrap().1,
            "mode differs (644 / 755)"
        );
        b.entries.remove("b");
        assert_eq!(
            first_difference(&a, &b).unwrap().1,
            "only in the usual build"
        );
        b.entries.insert("b".into(), file(1));
        assert_eq!(first_difference(&a, &b), None);
    }

    #[test]
    fn the_culprit_is_the_first_step_whose_result_differs() {
        use crate::model::digest::TreeDigest;
        let rec = |step: usize, key: &str| StepRecord {
            stage: "s".into(),
            step,
            text: format!("step {step}"),
            key: key.into(),
            cached: false,
            inputs: Vec::new(),
            non_hermetic: None,
            result: None,
            remote: false,
            test: None,
        };
        let a = vec![rec(0, "k0"), rec(1, "k1"), rec(2, "k2")];
        let b = a.clone();
        let tree = |n: u8| Action {
            tree: Some(TreeDigest::from_hash(blake3::hash(&[n]))),
            config: Default::default(),
            test: None,
        };
        let same = |k: &str| (k != "k0").then(|| tree(1));
        let other = |k: &str| match k {
            "k1" => Some(tree(2)),
            "k2" => Some(tree(3)),
            _ => None,
        };
        assert_eq!(culprit(&a, &b, &same, &other).unwrap().step, 1);
        assert!(culprit(&a, &b, &same, &same).is_none());
        // A step the other build ran under another key is not compared.
        let b2 = vec![rec(0, "k0"), rec(1, "x"), rec(2, "k2")];
        assert_eq!(culprit(&a, &b2, &same, &other).unwrap().step, 2);
    }
}
