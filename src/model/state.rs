//! A stage's state between steps: its tree and its image config.

use super::digest::{StateDigest, TreeDigest};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Image metadata recorded on a stage (what an OCI image config carries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// In order of first definition; a later `env` of the same name replaces the value in place.
    pub env: Vec<(String, String)>,
    /// The working directory, absolute; `/` when unset.
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub exposed_ports: BTreeSet<String>,
    pub volumes: BTreeSet<String>,
    pub stop_signal: Option<String>,
    /// The shell for shell-form commands; `/bin/sh -c` when unset.
    pub shell: Option<Vec<String>>,
    pub healthcheck: Option<Healthcheck>,
    /// Instructions recorded for images built on this one.
    pub onbuild: Vec<String>,
    pub author: Option<String>,
}

/// A container health check, as Docker's image config has it (durations in
/// nanoseconds; `None` leaves the runtime's default).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", prog, arg…]` or `["CMD-SHELL", script]`.
    pub test: Vec<String>,
    pub interval: Option<u64>,
    pub timeout: Option<u64>,
    pub start_period: Option<u64>,
    pub start_interval: Option<u64>,
    pub retries: Option<u32>,
}

impl ImageConfig {
    pub fn workdir(&self) -> &str {
        self.workdir.as_deref().unwrap_or("/")
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        match self.env.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.to_string(),
            None => self.env.push((key.to_string(), value.to_string())),
        }
    }
}

/// What a step starts from and produces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub tree: TreeDigest,
    pub config: Box<ImageConfig>,
}

impl State {
    /// The content address of the state; a stage built on another starts
    /// from this, so an upstream rebuild with equal output keeps the cache.
    pub fn digest(&self) -> StateDigest {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        StateDigest::from_hash(blake3::hash(&bytes))
    }
}

/// What the action cache records for a step: the config after it, and the
/// tree after it when that tree was stored (the last step of a stage, or a
/// step that leaves the tree as it was).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    pub tree: Option<TreeDigest>,
    pub config: ImageConfig,
    /// A test step's run (only passed tests are cached). Last, and left
    /// out when there is none (see [`Action::from_postcard`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<TestRun>,
}

/// How a `test` step's command ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestRun {
    pub passed: bool,
    /// How the command ended: `exit 0`, `exit 2` (`exit 137`: killed by
    /// signal 9, as a shell says), `ran longer than its time limit of 5s`.
    pub status: String,
    /// How long the command ran, in milliseconds (of the run that made
    /// the result, for a cached one).
    pub ms: u64,
    /// The last lines of its output, secrets masked.
    pub tail: String,
}

/// An action's fields before `test`, as postcard writes them.
#[derive(Deserialize)]
struct Stored {
    tree: Option<TreeDigest>,
    config: ImageConfig,
}

impl Action {
    /// Decode an action postcard wrote. `test` is left out when there is
    /// none, so an action of any other step reads (and is written) as one
    /// stored before tests existed; a test's run follows it.
    pub fn from_postcard(bytes: &[u8]) -> Option<Action> {
        let (stored, rest) = postcard::take_from_bytes::<Stored>(bytes).ok()?;
        let test = if rest.is_empty() {
            None
        } else {
            postcard::from_bytes::<Option<TestRun>>(rest).ok()?
        };
        Some(Action {
            tree: stored.tree,
            config: stored.config,
            test,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_replaces_in_place() {
        let mut c = ImageConfig::default();
        c.set_env("A", "1");
        c.set_env("B", "2");
        c.set_env("A", "3");
        assert_eq!(
            c.env,
            vec![("A".into(), "3".into()), ("B".into(), "2".into())]
        );
    }

    #[test]
    fn actions_read_with_and_without_a_test() {
        let plain = Action {
            tree: Some(TreeDigest([2; 32])),
            config: ImageConfig::default(),
            test: None,
        };
        let bytes = postcard::to_stdvec(&plain).unwrap();
        // The shape stored before tests existed: no trailing field.
        let before = postcard::to_stdvec(&(Some(TreeDigest([2; 32])), ImageConfig::default()));
        assert_eq!(bytes, before.unwrap());
        assert_eq!(Action::from_postcard(&bytes), Some(plain.clone()));
        let tested = Action {
            test: Some(TestRun {
                passed: true,
                status: "exit 0".into(),
                ms: 12,
                tail: "ok\n".into(),
            }),
            ..plain
        };
        let bytes = postcard::to_stdvec(&tested).unwrap();
        assert_eq!(Action::from_postcard(&bytes), Some(tested.clone()));
        assert_eq!(Action::from_postcard(&bytes[..bytes.len() - 1]), None);
        let json = serde_json::to_string(&tested).unwrap();
        assert_eq!(serde_json::from_str::<Action>(&json).unwrap(), tested);
    }

    #[test]
    fn digest_depends_on_config() {
        let tree = TreeDigest([1; 32]);
        let a = State {
            tree,
            config: Box::default(),
        };
        let mut b = a.clone();
        b.config.user = Some("app".into());
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.digest(), a.clone().digest());
    }
}
