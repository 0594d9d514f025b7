//! Typed blake3 digests: one type per thing addressed.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

macro_rules! digest_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            pub fn from_hash(h: blake3::Hash) -> Self {
                $name(*h.as_bytes())
            }

            pub fn hex(&self) -> String {
                hex(&self.0)
            }

            pub fn short(&self) -> String {
                self.hex()[..12].to_string()
            }

            /// From 64 hex digits (either case).
            pub fn parse(s: &str) -> Option<Self> {
                let mut bytes = [0u8; 32];
                (s.len() == 64 && faster_hex::hex_decode(s.as_bytes(), &mut bytes).is_ok())
                    .then_some($name(bytes))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.hex())
            }
        }

        /// Hex in text formats (JSON), 32 raw bytes in binary ones.
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.hex())
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                    $name::parse(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
                } else {
                    <[u8; 32]>::deserialize(d).map($name)
                }
            }
        }
    };
}

digest_type!(
    /// The content address of a file's bytes.
    BlobDigest
);
digest_type!(
    /// The content address of a tree manifest.
    TreeDigest
);
digest_type!(
    /// The cache key of a step: what it starts from, what it does, what it reads.
    StepKey
);
digest_type!(
    /// The content address of a whole state: tree plus image config.
    StateDigest
);

/// A sha256 digest, as OCI images and registries address content
/// (`sha256:<hex>`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256(String);

impl Sha256 {
    /// Parse `sha256:<64 hex digits>`.
    pub fn parse(s: &str) -> Option<Sha256> {
        let hex = s.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Sha256(hex.to_ascii_lowercase()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Sha256 {
        use sha2::Digest;
        Sha256::from_bytes(&sha2::Sha256::digest(bytes))
    }

    /// From the 32 bytes a hasher produced.
    pub fn from_bytes(bytes: &[u8]) -> Sha256 {
        Sha256(hex(bytes))
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

impl TryFrom<String> for Sha256 {
    type Error = String;
    fn try_from(s: String) -> Result<Sha256, String> {
        Sha256::parse(&s).ok_or_else(|| format!("`{s}` is not a sha256 digest"))
    }
}

impl From<Sha256> for String {
    fn from(d: Sha256) -> String {
        d.to_string()
    }
}

/// A digest with the size of what it names, as registries and the Remote
/// Execution API want content described.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sized<D> {
    pub digest: D,
    pub size: u64,
}

/// Lowercase hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    faster_hex::hex_string(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let d = BlobDigest::from_hash(blake3::hash(b"abc"));
        assert_eq!(BlobDigest::parse(&d.hex()), Some(d));
        assert_eq!(
            d.hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<BlobDigest>(&json).unwrap(), d);
        let bin = postcard::to_stdvec(&d).unwrap();
        assert_eq!(bin.len(), 32);
        assert_eq!(postcard::from_bytes::<BlobDigest>(&bin).unwrap(), d);
        assert!(BlobDigest::parse("xyz").is_none());
        assert_eq!(BlobDigest::parse(&d.hex().to_uppercase()), Some(d));
        assert!(BlobDigest::parse(&d.hex()[..62]).is_none());
        assert!(BlobDigest::parse(&format!("{}00", d.hex())).is_none());
        let mut bad = d.hex();
        bad.replace_range(10..11, "g");
        assert!(BlobDigest::parse(&bad).is_none());
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }

    #[test]
    fn sha256_digests() {
        let d = Sha256::of(b"abc");
        assert_eq!(
            d.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Sha256::parse(&d.to_string()), Some(d.clone()));
        assert_eq!(Sha256::parse("sha256:XYZ"), None);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Sha256>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Sha256>("\"md5:1\"").is_err());
    }
}
