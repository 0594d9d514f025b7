//! Records of past builds, kept in `records/`: the steps of the last build
//! (for `kiln explain`), the latest run of every step (to compare a miss
//! against), and what each export destination holds (gc keeps those
//! longest; a build leaves an export alone when it is intact). Every file
//! is checksummed ([`super::checked`]): a damaged record reads as absent.
//!
//! A step's inputs can be many (one per context file it copies): they are
//! kept apart from the step history, one file per step key
//! (`inputs/<key>`, binary), written once when the key first runs and read
//! only to explain a miss, so a build pays for the inputs of the steps
//! that ran, not of every step.

use super::Store;
use crate::model::digest::TreeDigest;
use crate::model::key::{KeyInput, Start};
use crate::model::state::TestRun;
use crate::model::timing::Span;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// What one step of a build did: its key, whether it was cached, and the
/// inputs its key was made from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepRecord {
    pub stage: String,
    pub step: usize,
    pub text: String,
    pub key: String,
    pub cached: bool,
    pub inputs: Vec<KeyInput>,
    /// Why the step is not hermetic, if it is not. (Always written: the
    /// build memo's encoding is not self-describing.)
    #[serde(default)]
    pub non_hermetic: Option<String>,
    /// The digest of the state (tree and config) the step left, when its
    /// tree was stored: a step that ran again and left the same state cut
    /// the build off there.
    #[serde(default)]
    pub result: Option<String>,
    /// Cached, from the remote cache.
    #[serde(default)]
    pub remote: bool,
    /// A test step's run (for a cached test, the run that made it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<TestRun>,
}

/// The last build, as `kiln explain` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LastBuild {
    pub spec: String,
    pub no_cache: bool,
    pub steps: Vec<ExplainedStep>,
    /// When each stage started and ended, for its critical path.
    #[serde(default)]
    pub stages: Vec<Span>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExplainedStep {
    pub stage: String,
    pub step: usize,
    pub text: String,
    pub key: String,
    pub cached: bool,
    /// For a miss: why, one reason per line.
    pub why: Vec<String>,
    /// Why the step is not hermetic, if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_hermetic: Option<String>,
    /// It ran, and left the same tree and config as its previous run: the
    /// steps after it kept their keys (early cutoff).
    #[serde(default)]
    pub same_result: bool,
    /// Cached, from the remote cache.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remote: bool,
}

/// What an export destination holds, as kiln wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRecord {
    /// The destination, absolute and resolved.
    pub dest: String,
    pub stage: String,
    pub tree: TreeDigest,
    pub at_unix: u64,
    /// What else decides the bytes written: format, timestamps, owners.
    pub settings: String,
    /// Every path written (`""` is the destination itself), with its stat
    /// just after writing, so a later build can tell an untouched export
    /// from one someone changed.
    pub stamps: Vec<(String, Stamp)>,
}

/// What `lstat` says of a written file: any write, rename, chmod or chown
/// changes at least its ctime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl Stamp {
    pub fn of_stat(st: &rustix::fs::Stat) -> Stamp {
        Stamp {
            dev: st.st_dev,
            ino: st.st_ino,
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            mtime_ns: st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128,
            ctime_ns: st.st_ctime as i128 * 1_000_000_000 + st.st_ctime_nsec as i128,
        }
    }
}

/// Leads every record file; bump when a record changes shape.
const MAGIC: &[u8] = b"KILNREC3";

/// Leads a file of step inputs.
const INPUTS_MAGIC: &[u8] = b"KILNINP1";

/// Where the inputs of the step keyed `key` are kept (None for a key that
/// is not one).
fn inputs_file(store: &Store, scope: &str, key: &str) -> Option<std::path::PathBuf> {
    (key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit())).then(|| {
        store
            .layout()
            .project_record(scope, &format!("inputs/{key}"))
    })
}

/// The inputs a step keyed `key` was made from, if they were kept. A
/// file found damaged (or of another version) is removed, and with it
/// the digest that lets a build of the same keys skip its records, so
/// that the next build that keys the step keeps its inputs again.
fn load_inputs(store: &Store, scope: &str, key: &str) -> Option<Vec<KeyInput>> {
    let path = inputs_file(store, scope, key)?;
    let inputs = super::checked::read(&path, INPUTS_MAGIC)
        .and_then(|bytes| postcard::from_bytes(&bytes).ok());
    if inputs.is_none() && std::fs::remove_file(&path).is_ok() {
        let _ = std::fs::remove_file(store.layout().project_record(scope, "last.digest"));
    }
    inputs
}

/// Keep a step's inputs, unless they are kept already.
fn save_inputs(store: &Store, scope: &str, r: &StepRecord) -> std::io::Result<()> {
    let Some(path) = inputs_file(store, scope, &r.key) else {
        return Ok(());
    };
    // Kept already. (Not read back to check: a damaged file only costs
    // `explain` its detail, and reading it would cost every build the
    // inputs of every step.)
    if r.inputs.is_empty() || path.exists() {
        return Ok(());
    }
    let body = postcard::to_stdvec(&r.inputs).map_err(std::io::Error::other)?;
    super::checked::write(&path, INPUTS_MAGIC, &body)
}

/// A record of the project `scope`.
fn read<T: for<'de> Deserialize<'de> + Default>(store: &Store, scope: &str, name: &str) -> T {
    super::checked::read(&store.layout().project_record(scope, name), MAGIC)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write<T: Serialize>(store: &Store, scope: &str, name: &str, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    super::checked::write(&store.layout().project_record(scope, name), MAGIC, &bytes)
}

/// `records` with their inputs: those that lack them (a build answered
/// from the memo keeps none) get them from the last run of the same step
/// under the same key, if there is one.
pub fn with_inputs(
    store: &Store,
    scope: &str,
    spec: &str,
    records: &[StepRecord],
) -> Vec<StepRecord> {
    let _ = spec;
    records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if r.inputs.is_empty()
                && let Some(inputs) = load_inputs(store, scope, &r.key)
            {
                r.inputs = inputs;
            }
            r
        })
        .collect()
}

fn step_id(spec: &str, stage: &str, step: usize) -> String {
    format!("{spec}\u{1f}{stage}\u{1f}{step}")
}

/// Record a build's steps: explain each miss against the step's previous
/// run, then remember this run.
pub fn save_build(
    store: &Store,
    scope: &str,
    spec: &str,
    no_cache: bool,
    records: &[StepRecord],
    stages: &[Span],
) -> std::io::Result<()> {
    // A build that only hit the cache, with the same steps and keys as the
    // build before it, would write the same records again: skip the work.
    let mut digest = blake3::Hasher::new();
    digest.update(spec.as_bytes());
    for r in records {
        digest.update(r.stage.as_bytes());
        digest.update(&(r.step as u64).to_le_bytes());
        digest.update(r.key.as_bytes());
    }
    let digest = digest.finalize().to_hex().to_string();
    let digest_path = store.layout().project_record(scope, "last.digest");
    let all_cached = !no_cache && records.iter().all(|r| r.cached);
    if all_cached
        && super::checked::read(&digest_path, MAGIC).is_some_and(|d| d == digest.as_bytes())
    {
        return Ok(());
    }
    // The latest run of every step, without its inputs (kept by key).
    let mut history: BTreeMap<String, StepRecord> = read(store, scope, "steps.json");
    let mut last = LastBuild {
        spec: spec.to_string(),
        no_cache,
        steps: Vec::new(),
        stages: stages.to_vec(),
    };
    let whys = reasons(store, scope, spec, no_cache, records, &history);
    for (r, why) in records.iter().zip(whys) {
        let id = step_id(spec, &r.stage, r.step);
        let prev = history.get(&id);
        let same_result =
            !r.cached && r.result.is_some() && prev.is_some_and(|p| p.result == r.result);
        last.steps.push(ExplainedStep {
            stage: r.stage.clone(),
            step: r.step,
            text: r.text.clone(),
            key: r.key.clone(),
            cached: r.cached,
            why,
            non_hermetic: r.non_hermetic.clone(),
            same_result,
            remote: r.remote,
        });
        // A record without inputs (from the build memo) has nothing to add.
        if !r.inputs.is_empty() {
            save_inputs(store, scope, r)?;
            history.insert(
                id,
                StepRecord {
                    inputs: Vec::new(),
                    ..r.clone()
                },
            );
        }
    }
    write(store, scope, "steps.json", &history)?;
    forget_inputs(store, scope, &history);
    write(store, scope, "last.json", &last)?;
    // Only a build that ran nothing can be skipped next time.
    let mark = if all_cached { digest } else { String::new() };
    super::checked::write(&digest_path, MAGIC, mark.as_bytes())
}

/// Why each of `records` missed the cache (nothing for a hit), against
/// the previous run of the same step in `history` (the project's
/// `steps.json`).
fn reasons(
    store: &Store,
    scope: &str,
    spec: &str,
    no_cache: bool,
    records: &[StepRecord],
    history: &BTreeMap<String, StepRecord>,
) -> Vec<Vec<String>> {
    // Keys of steps that missed in this build, and the states they left,
    // to point at the first cause.
    let missed: BTreeMap<&str, (&str, usize)> = records
        .iter()
        .filter(|r| !r.cached)
        .flat_map(|r| {
            let at = (r.stage.as_str(), r.step);
            std::iter::once((r.key.as_str(), at)).chain(r.result.as_deref().map(|d| (d, at)))
        })
        .collect();
    records
        .iter()
        .map(|r| {
            let prev = history.get(&step_id(spec, &r.stage, r.step));
            if r.cached {
                return Vec::new();
            }
            if no_cache {
                return vec!["`--no-cache` was given".to_string()];
            }
            // (Records of older kiln kept the inputs in the history.)
            let inputs = prev.and_then(|p| match p.inputs.is_empty() {
                true => load_inputs(store, scope, &p.key),
                false => Some(p.inputs.clone()),
            });
            match (prev, inputs) {
                (Some(p), Some(inputs)) => {
                    let prev = StepRecord {
                        inputs,
                        ..p.clone()
                    };
                    explain(Some(&prev), r, &missed)
                }
                (Some(_), None) => vec![
                    "the inputs of its previous run are no longer recorded, so what changed cannot be said".to_string(),
                ],
                (None, _) => explain(None, r, &missed),
            }
        })
        .collect()
}

/// Why each of `records` would miss the cache, as [`save_build`] would
/// say it, recording nothing (a dry run).
pub fn would_miss(
    store: &Store,
    scope: &str,
    spec: &str,
    no_cache: bool,
    records: &[StepRecord],
) -> Vec<Vec<String>> {
    let history: BTreeMap<String, StepRecord> = read(store, scope, "steps.json");
    reasons(store, scope, spec, no_cache, records, &history)
}

/// Remove the kept inputs of keys no step's latest run has.
fn forget_inputs(store: &Store, scope: &str, history: &BTreeMap<String, StepRecord>) {
    let dir = store.layout().project_record(scope, "inputs");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    let keys: std::collections::HashSet<&str> = history.values().map(|r| r.key.as_str()).collect();
    for e in rd.flatten() {
        // Only inputs files (named by a key): another build's temp file
        // being written here is not ours to remove.
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_key = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if is_key && !keys.contains(name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The last build of the project `scope`.
pub fn load_last(store: &Store, scope: &str) -> Option<LastBuild> {
    let l: LastBuild = read(store, scope, "last.json");
    (!l.spec.is_empty()).then_some(l)
}

/// Why a step missed, compared with its previous run.
fn explain(
    prev: Option<&StepRecord>,
    now: &StepRecord,
    missed: &BTreeMap<&str, (&str, usize)>,
) -> Vec<String> {
    let Some(prev) = prev else {
        return vec!["first build of this step".to_string()];
    };
    // Only the inputs not found unchanged on the other side are named and
    // paired (a step can have 100,000 context files, and one changed).
    let (old_set, new_set): (HashSet<&KeyInput>, HashSet<&KeyInput>) =
        (prev.inputs.iter().collect(), now.inputs.iter().collect());
    let map = |inputs: &'_ [KeyInput],
               other: &HashSet<&KeyInput>|
     -> BTreeMap<String, (String, KeyInput)> {
        inputs
            .iter()
            .filter(|i| !other.contains(i))
            .map(|i| (i.id(), (i.value(), i.clone())))
            .collect()
    };
    let (old, new) = (map(&prev.inputs, &new_set), map(&now.inputs, &old_set));
    let start = |inputs: &[KeyInput]| {
        inputs.iter().find_map(|i| match i {
            KeyInput::Start(s) => Some(s.clone()),
            _ => None,
        })
    };
    let step = |inputs: &[KeyInput]| {
        inputs.iter().find_map(|i| match i {
            KeyInput::Step(s) => Some(s.clone()),
            _ => None,
        })
    };
    let mut why = Vec::new();
    let (old_start, new_start) = (start(&prev.inputs), start(&now.inputs));
    if old_start != new_start {
        let upstream = match &new_start {
            Some(Start::Step(k)) => missed.get(k.hex().as_str()),
            Some(Start::State(d)) => missed.get(d.hex().as_str()),
            _ => None,
        };
        if let (
            Some(Start::Image {
                reference,
                digest: new,
            }),
            Some(Start::Image { digest: old, .. }),
        ) = (&new_start, &old_start)
        {
            why.push(format!(
                "its base image `{reference}` changed: was {old}, now {new}"
            ));
        } else if let Some((stage, step)) = upstream {
            why.push(format!(
                "it starts from step {} of `{stage}`, which ran again",
                step + 1
            ));
        } else if matches!(new_start, Some(Start::Stage(_)))
            || matches!(old_start, Some(Start::Stage(_)))
        {
            why.push("its base stage produced a different result".to_string());
        } else if matches!(new_start, Some(Start::Scratch))
            || matches!(old_start, Some(Start::Scratch))
        {
            why.push("its base changed".to_string());
        } else {
            why.push("the step before it has a different result".to_string());
        }
    }
    let (old_step, new_step) = (step(&prev.inputs), step(&now.inputs));
    if old_step != new_step {
        why.push(format!(
            "the step itself changed: was `{}`, now `{}`",
            old_step.unwrap_or_default(),
            new_step.unwrap_or_default()
        ));
    }
    let ordinary = |i: &KeyInput| !matches!(i, KeyInput::Start(_) | KeyInput::Step(_));
    let mut changes = Vec::new();
    for (id, (value, input)) in &new {
        if !ordinary(input) {
            continue;
        }
        match old.get(id) {
            None => changes.push(format!("{} is new", input.describe())),
            // A pin names what it was and is (a digest, a commit).
            Some((v, _)) if v != value && matches!(input, KeyInput::Pinned { .. }) => changes.push(
                format!("{} changed: was `{v}`, now `{value}`", input.describe()),
            ),
            Some((v, _)) if v != value => changes.push(format!("{} changed", input.describe())),
            _ => {}
        }
    }
    for (id, (_, input)) in &old {
        if ordinary(input) && !new.contains_key(id) {
            changes.push(format!("{} is gone", input.describe()));
        }
    }
    const MAX: usize = 20;
    let extra = changes.len().saturating_sub(MAX);
    why.extend(changes.into_iter().take(MAX));
    if extra > 0 {
        why.push(format!("… and {extra} more inputs changed"));
    }
    if why.is_empty() && prev.test.as_ref().is_some_and(|t| !t.passed) {
        why.push("the test failed last time, and a failed test is not cached".to_string());
    }
    if why.is_empty() {
        why.push("its inputs are the same as last time, but the result was not in the cache (removed by `kiln gc`, or never stored)".to_string());
    }
    why
}

/// Export records live one per destination, named by a hash of it.
fn export_file(layout: &super::layout::Layout, dest: &str) -> std::path::PathBuf {
    let name = blake3::hash(dest.as_bytes()).to_hex();
    layout.record("exports").join(&name[..32])
}

const EXPORT_MAGIC: &[u8] = b"KILNEXP1";

/// What kiln last wrote at `dest` (absolute, resolved), if it is recorded.
pub fn load_export(layout: &super::layout::Layout, dest: &str) -> Option<ExportRecord> {
    let bytes = super::checked::read(&export_file(layout, dest), EXPORT_MAGIC)?;
    let r: ExportRecord = postcard::from_bytes(&bytes).ok()?;
    (r.dest == dest).then_some(r)
}

/// Whether kiln 0.1's single `records/exports.json` names `dest`: an
/// export written before records were kept per destination still counts
/// as kiln's own.
pub fn legacy_export_recorded(layout: &super::layout::Layout, dest: &str) -> bool {
    std::fs::read(layout.record("exports.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<BTreeMap<String, serde_json::Value>>(&b).ok())
        .is_some_and(|m| m.contains_key(dest))
}

/// Every export record (gc keeps their trees first).
pub fn load_exports(store: &Store) -> Vec<ExportRecord> {
    let Ok(rd) = std::fs::read_dir(store.layout().record("exports")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| super::checked::read(&e.path(), EXPORT_MAGIC))
        .filter_map(|b| postcard::from_bytes(&b).ok())
        .collect()
}

pub fn save_export(layout: &super::layout::Layout, record: &ExportRecord) -> std::io::Result<()> {
    let bytes = postcard::to_stdvec(record).map_err(std::io::Error::other)?;
    super::checked::write(&export_file(layout, &record.dest), EXPORT_MAGIC, &bytes)
}

pub fn forget_export(layout: &super::layout::Layout, dest: &str) {
    let _ = std::fs::remove_file(export_file(layout, dest));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::digest::StepKey;

    fn rec(key: &str, start: Start, step: &str, files: &[(&str, &str)]) -> StepRecord {
        let mut inputs = vec![KeyInput::Start(start), KeyInput::Step(step.into())];
        for (n, v) in files {
            inputs.push(KeyInput::ContextFile {
                path: n.to_string(),
                value: v.to_string(),
            });
        }
        StepRecord {
            stage: "s".into(),
            step: 0,
            text: "copy".into(),
            key: key.into(),
            cached: false,
            inputs,
            non_hermetic: None,
            result: None,
            remote: false,
            test: None,
        }
    }

    #[test]
    fn inputs_are_kept_once_per_key_and_explain_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), crate::store::Access::Shared).unwrap();
        let (k1, k2) = ("1".repeat(64), "2".repeat(64));
        let first = rec(&k1, Start::Scratch, "c", &[("a", "1"), ("b", "2")]);
        save_build(
            &store,
            "p",
            "spec",
            false,
            std::slice::from_ref(&first),
            &[],
        )
        .unwrap();
        let file = inputs_file(&store, "p", &k1).unwrap();
        let written = std::fs::metadata(&file).unwrap().modified().unwrap();
        // The history holds no inputs; the inputs file holds them.
        let history: BTreeMap<String, StepRecord> = read(&store, "p", "steps.json");
        assert!(history.values().all(|r| r.inputs.is_empty()));
        assert_eq!(load_inputs(&store, "p", &k1).unwrap(), first.inputs);
        // The same key again (cached) writes no inputs again; a build
        // answered from the memo gets them back.
        let cached = StepRecord {
            cached: true,
            ..first.clone()
        };
        save_build(&store, "p", "spec", false, &[cached], &[]).unwrap();
        assert_eq!(
            std::fs::metadata(&file).unwrap().modified().unwrap(),
            written
        );
        let memo = StepRecord {
            inputs: Vec::new(),
            ..first.clone()
        };
        assert_eq!(
            with_inputs(&store, "p", "spec", std::slice::from_ref(&memo))[0].inputs,
            first.inputs
        );
        // Damaged: not believed, and kept again by the next build that
        // keys the step (cached or not).
        std::fs::write(&file, b"damaged").unwrap();
        assert!(
            with_inputs(&store, "p", "spec", &[memo])[0]
                .inputs
                .is_empty()
        );
        let cached = StepRecord {
            cached: true,
            ..first.clone()
        };
        save_build(&store, "p", "spec", false, &[cached], &[]).unwrap();
        assert_eq!(load_inputs(&store, "p", &k1).unwrap(), first.inputs);
        // A miss is explained against the kept inputs; the old key's go.
        let second = rec(&k2, Start::Scratch, "c", &[("a", "1"), ("b", "3")]);
        save_build(
            &store,
            "p",
            "spec",
            false,
            std::slice::from_ref(&second),
            &[],
        )
        .unwrap();
        let last = load_last(&store, "p").unwrap();
        assert_eq!(last.steps[0].why, vec!["context file `b` changed"]);
        assert!(!file.exists());
        // Inputs lost: said so, not guessed.
        std::fs::remove_file(inputs_file(&store, "p", &k2).unwrap()).unwrap();
        let third = rec(&"3".repeat(64), Start::Scratch, "c", &[]);
        save_build(&store, "p", "spec", false, &[third], &[]).unwrap();
        let why = &load_last(&store, "p").unwrap().steps[0].why;
        assert!(why[0].contains("no longer recorded"), "{why:?}");
    }

    #[test]
    fn names_the_changed_file() {
        let prev = rec("k1", Start::Scratch, "c", &[("a", "1"), ("b", "2")]);
        let now = rec(
            "k2",
            Start::Scratch,
            "c",
            &[("a", "1"), ("b", "3"), ("c", "4")],
        );
        let why = explain(Some(&prev), &now, &BTreeMap::new());
        assert_eq!(
            why,
            vec!["context file `b` changed", "context file `c` is new"]
        );
    }

    #[test]
    fn names_a_changed_base_image() {
        use crate::model::digest::Sha256;
        let start = |d: &[u8]| Start::Image {
            reference: "debian:bookworm".into(),
            digest: Sha256::of(d),
        };
        let prev = rec("k1", start(b"old"), "run", &[]);
        let now = rec("k2", start(b"new"), "run", &[]);
        let why = explain(Some(&prev), &now, &BTreeMap::new());
        assert_eq!(why.len(), 1);
        assert!(
            why[0].starts_with("its base image `debian:bookworm` changed: was sha256:"),
            "{why:?}"
        );
    }

    #[test]
    fn names_the_step_that_left_another_state() {
        use crate::model::digest::StateDigest;
        let (s1, s2) = (StateDigest([1; 32]), StateDigest([2; 32]));
        let prev = rec("k1", Start::State(s1), "run", &[]);
        let now = rec("k2", Start::State(s2), "run", &[]);
        let s2_hex = s2.hex();
        let mut missed = BTreeMap::new();
        missed.insert(s2_hex.as_str(), ("build", 0));
        let why = explain(Some(&prev), &now, &missed);
        assert_eq!(
            why,
            vec!["it starts from step 1 of `build`, which ran again"]
        );
    }

    #[test]
    fn names_the_step_change_and_the_upstream_step() {
        let (p1, p2) = (StepKey([1; 32]), StepKey([2; 32]));
        let prev = rec("k1", Start::Step(p1), "write a", &[]);
        let now = rec("k2", Start::Step(p2), "write b", &[]);
        let p2_hex = p2.hex();
        let mut missed = BTreeMap::new();
        missed.insert(p2_hex.as_str(), ("build", 2));
        let why = explain(Some(&prev), &now, &missed);
        assert_eq!(why[0], "it starts from step 3 of `build`, which ran again");
        assert!(why[1].starts_with("the step itself changed"));
        assert_eq!(
            explain(None, &now, &missed),
            vec!["first build of this step"]
        );
    }
}
