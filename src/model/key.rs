//! Step keys: blake3 over what a step starts from, its canonical form and
//! the digest of everything it reads. The inputs are also kept by name, so
//! `kiln explain` can say which one changed.

use crate::store::digest::StepKey;
use serde::{Deserialize, Serialize};

/// Bump to invalidate every cached step when the meaning of keys changes.
const KEY_VERSION: &str = "kiln-step-v2";

/// One named input of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInput {
    pub name: String,
    pub value: String,
}

pub struct KeyBuilder {
    hasher: blake3::Hasher,
    inputs: Vec<KeyInput>,
}

impl KeyBuilder {
    /// `start` identifies the state the step starts from; `canonical` is
    /// the step's canonical form.
    pub fn new(start: &str, canonical: &str) -> KeyBuilder {
        let mut k = KeyBuilder {
            hasher: blake3::Hasher::new(),
            inputs: Vec::new(),
        };
        k.field(KEY_VERSION);
        k.input("start", start);
        k.input("step", canonical);
        k
    }

    fn field(&mut self, s: &str) {
        self.hasher.update(&(s.len() as u64).to_le_bytes());
        self.hasher.update(s.as_bytes());
    }

    pub fn input(&mut self, name: &str, value: &str) {
        self.field(name);
        self.field(value);
        self.inputs.push(KeyInput {
            name: name.to_string(),
            value: value.to_string(),
        });
    }

    pub fn finish(self) -> (StepKey, Vec<KeyInput>) {
        (StepKey::from_hash(self.hasher.finalize()), self.inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_cannot_run_together() {
        let mut a = KeyBuilder::new("s", "x");
        a.input("ab", "c");
        let mut b = KeyBuilder::new("s", "x");
        b.input("a", "bc");
        assert_ne!(a.finish().0, b.finish().0);
    }

    #[test]
    fn same_inputs_same_key() {
        let k = |v: &str| {
            let mut b = KeyBuilder::new("s", "x");
            b.input("file:a", v);
            b.finish().0
        };
        assert_eq!(k("1"), k("1"));
        assert_ne!(k("1"), k("2"));
    }
}
