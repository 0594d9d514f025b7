//! `kiln verify`: is the build reproducible? Every exported stage is built
//! twice: as usual (from the cache), and from nothing in a fresh state
//! directory, without the cache. Their results (trees and configs) must
//! be equal; an image's bytes follow from them. On a difference, the
//! first differing file and how it differs, and the step that made it:
//! the first step both builds ran with the same key and that gave
//! different results (the next step's key differs), which a tool that
//! compares only outputs cannot name.

use super::{Failure, SpecArgs, outln};
use crate::build::{self, Request};
use crate::diag::{Diagnostic, Sources};
use crate::model::digest::StepKey;
use crate::model::state::Action;
use crate::model::state::State;
use crate::model::tree::{Entry, Kind, Tree};
use crate::progress::{self, Progress};
use crate::store::records::StepRecord;
use crate::store::{Access, ActionCache, ContentStore, Store};
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Verify these stages instead of the exported ones (repeatable)
    #[arg(long = "target", value_name = "STAGE")]
    pub targets: Vec<String>,
    /// Where the cache lives [default: ~/.cache/kiln, or a .kiln directory beside the spec]
    #[arg(long, env = "KILN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How to show the two builds' progress
    #[arg(long, value_enum, default_value = "plain")]
    pub progress: progress::Mode,
}

/// One build of the stages, in a state directory; nothing is exported.
fn build_once(
    req: &Request,
    sources: &Sources,
    mode: progress::Mode,
) -> Result<build::Report, Failure> {
    let plan = build::plan(req, sources)?;
    let reporter = progress::reporter(mode);
    let progress = Progress::new(reporter.as_ref());
    let report = build::run(
        plan,
        req,
        sources,
        &progress,
        super::build::cancel_flag(),
        &super::waiting,
    );
    progress.finish();
    let report = report.map_err(Failure::from)?;
    if !report.failures.is_empty() || report.interrupted {
        let mut failures = report.failures;
        if failures.is_empty() {
            failures.push(Diagnostic::user(
                "kiln::interrupted",
                "the build was interrupted",
            ));
        }
        let code = super::exit_code(&failures);
        return Err(Failure {
            diagnostics: failures,
            code,
        });
    }
    Ok(report)
}

pub fn run(args: &VerifyArgs, sources: &Sources) -> Result<(), Failure> {
    super::build::fixed_umask();
    let spec = args.spec.input()?;
    // The stages to verify: the exported ones, or the targets.
    let mut targets = args.targets.clone();
    if targets.is_empty() {
        let probe = Request {
            spec: spec.clone(),
            state_dir: args.state_dir.clone(),
            ..Request::default()
        };
        let plan = build::plan(&probe, sources)?;
        let graph = &plan.loaded.graph;
        for e in &graph.exports {
            let name = graph.stage(e.stage).name.clone();
            if !targets.contains(&name) {
                targets.push(name);
            }
        }
    }
    let base = Request {
        spec,
        targets: targets.clone(),
        epoch: Request::epoch_from_env(),
        // `kiln build`'s default `--max-unpack-size`.
        unpack_limit: 8 << 30,
        ..Request::default()
    };
    let usual = Request {
        state_dir: args.state_dir.clone(),
        ..base.clone()
    };
    outln!("verify: building {} as usual", describe(&targets));
    let first = build_once(&usual, sources, args.progress)?;
    let fresh_dir = tempfile::Builder::new()
        .prefix("kiln-verify-")
        .tempdir()
        .map_err(|e| {
            Diagnostic::io(
                "cannot make a fresh state directory in",
                &std::env::temp_dir(),
                &e,
            )
        })?;
    let fresh = Request {
        state_dir: Some(fresh_dir.path().to_path_buf()),
        no_cache: true,
        ..base
    };
    outln!("verify: building them again from nothing, in a fresh state directory");
    let second = build_once(&fresh, sources, args.progress)?;

    let usual_state = crate::build::load::state_dir(&args.state_dir, &usual.spec.spec_path());
    let a = Store::open_waiting(&usual_state, Access::Shared, &super::waiting)?;
    let b = Store::open_waiting(fresh_dir.path(), Access::Shared, &super::waiting)?;
    let again: BTreeMap<&String, &State> = second.states.iter().map(|(n, s)| (n, s)).collect();
    let mut differ = Vec::new();
    for (name, s1) in &first.states {
        let Some(s2) = again.get(name) else { continue };
        if s1 == *s2 {
            outln!("  {name}: same ({})", &s1.digest().hex()[..16]);
            continue;
        }
        differ.push(name.clone());
        outln!("  {name}: DIFFERENT");
        if s1.config != s2.config {
            outln!("    the image config differs");
        }
        if s1.tree != s2.tree {
            let (t1, t2) = (a.get_tree(s1.tree), b.get_tree(s2.tree));
            match (t1, t2) {
                (Ok(t1), Ok(t2)) => match first_difference(&t1, &t2) {
                    Some((path, how)) => outln!("    first difference: /{path}: {how}"),
                    None => outln!("    the trees differ"),
                },
                _ => outln!("    the trees differ (one could not be read)"),
            }
        }
        let in_a = |k: &str| StepKey::parse(k).and_then(|k| a.get(k));
        let in_b = |k: &str| StepKey::parse(k).and_then(|k| b.get(k));
        if let Some(step) = culprit(&first.records, &second.records, &in_a, &in_b) {
            outln!(
                "    made by step {} of `{}`: {}",
                step.step + 1,
                step.stage,
                step.text
            );
        }
    }
    if differ.is_empty() {
        outln!("verify: reproducible: every result is the same when built from nothing");
        return Ok(());
    }
    Err(Failure {
        diagnostics: vec![
            Diagnostic::build(
                "kiln::verify::differs",
                format!(
                    "{} not reproducible: built from nothing, {} a different result",
                    describe(&differ),
                    if differ.len() == 1 { "it gives" } else { "they give" }
                ),
            )
            .with_help("make the step named above deterministic: no clock, no randomness, no network, sorted output"),
        ],
        code: 1,
    })
}

fn describe(stages: &[String]) -> String {
    match stages {
        [one] => format!("stage `{one}`"),
        many => format!(
            "stages {}",
            many.iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
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
        };
        let a = vec![rec(0, "k0"), rec(1, "k1"), rec(2, "k2")];
        let b = a.clone();
        let tree = |n: u8| Action {
            tree: Some(TreeDigest::from_hash(blake3::hash(&[n]))),
            config: Default::default(),
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
