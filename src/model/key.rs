//! Step keys: blake3 over what a step starts from, its canonical form and
//! the digest of everything it reads. Each input is a [`KeyInput`], kept
//! with the key so `kiln explain` can pair it with the same input of the
//! step's previous run and say, in words, which one changed.

use super::digest::{Sha256, StateDigest, StepKey, TreeDigest};
use serde::{Deserialize, Serialize};

/// Bump to invalidate every cached step when the meaning of keys changes.
const KEY_VERSION: &str = "kiln-step-v4";

/// What a step starts from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Start {
    /// The empty tree: the first step of a stage `from scratch`.
    Scratch,
    /// The result of the stage this one is built on.
    Stage(StateDigest),
    /// The step before it in the same stage, when that step's tree is not
    /// stored (a builtin step between two stored trees: its key stands
    /// for the tree, which is made again from the stored one when needed).
    Step(StepKey),
    /// The tree and config the step before it left, when the tree is
    /// stored: a step that ran again and made the same tree leaves the
    /// keys of the steps after it as they were (early cutoff).
    State(StateDigest),
    /// An image, by the digest its reference resolved to (the reference is
    /// kept to name it; only the digest is keyed).
    Image { reference: String, digest: Sha256 },
}

/// One input of a step key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyInput {
    Start(Start),
    /// The step's canonical form.
    Step(String),
    /// A context entry a step reads: a file (`"<blob> <mode>"`), a
    /// directory (`"dir <mode>"`) or a symlink (`"-> target"`).
    ContextFile {
        path: String,
        value: String,
    },
    /// What one source of a copy matched: its name and whether it is a directory.
    Picked {
        name: String,
        is_dir: bool,
    },
    /// What a copy takes from another stage: a digest of the entries its
    /// sources matched (paths, kinds, modes, owners, contents), so a
    /// change elsewhere in that stage leaves the copy's key as it was.
    Selected {
        stage: String,
        digest: String,
    },
    /// A plugin's module, by digest.
    Module {
        plugin: String,
        digest: String,
    },
    /// A stage mounted read-only at `guest`.
    Mount {
        guest: String,
        stage: String,
        tree: TreeDigest,
    },
    /// The time a program is shown (`SOURCE_DATE_EPOCH`, or 0).
    Epoch(u64),
    /// A host file a `sandbox="host"` step names (`host-inputs`), by digest.
    HostFile {
        path: String,
        digest: String,
    },
    /// What the lock file pins a source the spec does not pin to (a
    /// download's sha256).
    Pinned {
        source: String,
        digest: String,
    },
}

impl KeyInput {
    /// The name and value hashed into the key.
    fn fields(&self) -> (String, String) {
        match self {
            KeyInput::Start(s) => (
                "start".into(),
                match s {
                    Start::Scratch => "scratch".into(),
                    Start::Stage(d) => format!("stage:{}", d.hex()),
                    Start::Step(k) => k.hex(),
                    Start::State(d) => format!("state:{}", d.hex()),
                    Start::Image { digest, .. } => format!("image:{digest}"),
                },
            ),
            KeyInput::Step(c) => ("step".into(), c.clone()),
            KeyInput::ContextFile { path, value } => (format!("file:{path}"), value.clone()),
            KeyInput::Picked { name, is_dir } => ("picked".into(), format!("{name} {is_dir}")),
            KeyInput::Selected { stage, digest } => (format!("stage:{stage}"), digest.clone()),
            KeyInput::Module { plugin, digest } => (format!("module:{plugin}"), digest.clone()),
            KeyInput::Mount { guest, stage, tree } => (
                format!("mount:{guest}"),
                format!("stage:{stage} {}", tree.hex()),
            ),
            KeyInput::Epoch(e) => ("epoch".into(), e.to_string()),
            KeyInput::HostFile { path, digest } => (format!("host:{path}"), digest.clone()),
            KeyInput::Pinned { source, digest } => (format!("pin:{source}"), digest.clone()),
        }
    }

    /// What identifies the input across runs of a step: two inputs with
    /// the same id are the same thing, perhaps with another value.
    pub fn id(&self) -> String {
        match self {
            KeyInput::Picked { name, .. } => format!("picked:{name}"),
            other => other.fields().0,
        }
    }

    /// The value compared across runs.
    pub fn value(&self) -> String {
        self.fields().1
    }

    /// How `kiln explain` names the input.
    pub fn describe(&self) -> String {
        match self {
            KeyInput::Start(_) => "what the step starts from".into(),
            KeyInput::Step(_) => "the step itself".into(),
            KeyInput::ContextFile { path, .. } => format!("context file `{path}`"),
            KeyInput::Picked { name, .. } => format!("what the source `{name}` matched"),
            KeyInput::Selected { stage, .. } => format!("what it copies from stage `{stage}`"),
            KeyInput::Module { plugin, .. } => format!("the module of plugin `{plugin}`"),
            KeyInput::Mount { guest, stage, .. } => {
                format!("the tree of stage `{stage}` mounted at `{guest}`")
            }
            KeyInput::Epoch(_) => "the time programs are shown (SOURCE_DATE_EPOCH)".into(),
            KeyInput::HostFile { path, .. } => format!("the host file `{path}`"),
            KeyInput::Pinned { source, .. } => {
                format!("what the lock file pins `{source}` to")
            }
        }
    }
}

/// Builds a step key from its inputs, in order.
pub struct KeyBuilder {
    hasher: blake3::Hasher,
    inputs: Vec<KeyInput>,
}

impl KeyBuilder {
    /// A key for a step starting from `start`, whose canonical form is `canonical`.
    pub fn new(start: Start, canonical: &str) -> KeyBuilder {
        let mut k = KeyBuilder {
            hasher: blake3::Hasher::new(),
            inputs: Vec::new(),
        };
        k.field(KEY_VERSION);
        k.input(KeyInput::Start(start));
        k.input(KeyInput::Step(canonical.to_string()));
        k
    }

    fn field(&mut self, s: &str) {
        self.hasher.update(&(s.len() as u64).to_le_bytes());
        self.hasher.update(s.as_bytes());
    }

    pub fn input(&mut self, input: KeyInput) {
        let (name, value) = input.fields();
        self.field(&name);
        self.field(&value);
        self.inputs.push(input);
    }

    pub fn finish(self) -> (StepKey, Vec<KeyInput>) {
        (StepKey::from_hash(self.hasher.finalize()), self.inputs)
    }
}

/// The action-cache key of an image's whole tree, by its manifest digest
/// (what `kiln gc` keeps an image's blobs for).
pub fn image_rootfs_key(digest: &super::digest::Sha256) -> StepKey {
    let mut h = blake3::Hasher::new();
    h.update(b"kiln-image-rootfs-v2\0");
    h.update(digest.to_string().as_bytes());
    StepKey::from_hash(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, value: &str) -> KeyInput {
        KeyInput::ContextFile {
            path: path.into(),
            value: value.into(),
        }
    }

    #[test]
    fn fields_cannot_run_together() {
        let mut a = KeyBuilder::new(Start::Scratch, "x");
        a.input(file("ab", "c"));
        let mut b = KeyBuilder::new(Start::Scratch, "x");
        b.input(file("a", "bc"));
        assert_ne!(a.finish().0, b.finish().0);
    }

    #[test]
    fn same_inputs_same_key() {
        let k = |v: &str| {
            let mut b = KeyBuilder::new(Start::Scratch, "x");
            b.input(file("a", v));
            b.finish().0
        };
        assert_eq!(k("1"), k("1"));
        assert_ne!(k("1"), k("2"));
    }

    #[test]
    fn keys_are_stable_across_releases() {
        // A key computed by this version; changing how inputs are hashed
        // invalidates every cache, so it must be done on purpose (bump
        // KEY_VERSION).
        let mut b = KeyBuilder::new(Start::Step(StepKey([1; 32])), "{\"write\":{}}");
        b.input(file("a.txt", "00 644"));
        b.input(KeyInput::Epoch(0));
        assert_eq!(
            b.finish().0.hex(),
            "8fb4997bb6ab68e23658d995b957a6e48202f4ced00c070e119d7b0514e66742"
        );
    }

    #[test]
    fn every_input_says_what_it_is() {
        let inputs = [
            KeyInput::Start(Start::Scratch),
            KeyInput::Step("x".into()),
            file("a", "1"),
            KeyInput::Picked {
                name: "src".into(),
                is_dir: true,
            },
            KeyInput::Selected {
                stage: "b".into(),
                digest: "d".into(),
            },
            KeyInput::Module {
                plugin: "p".into(),
                digest: "d".into(),
            },
            KeyInput::Mount {
                guest: "/m".into(),
                stage: "b".into(),
                tree: TreeDigest([0; 32]),
            },
            KeyInput::Epoch(5),
            KeyInput::HostFile {
                path: "/usr/bin/gcc".into(),
                digest: "d".into(),
            },
        ];
        let ids: std::collections::BTreeSet<String> = inputs.iter().map(|i| i.id()).collect();
        assert_eq!(ids.len(), inputs.len());
        assert!(inputs.iter().all(|i| !i.describe().is_empty()));
    }
}
