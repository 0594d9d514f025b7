//! `checksum`: a manifest of every file below directories.
//!
//! ```text
//! checksum [--algorithm sha256|blake3] [--out FILE] DIR...
//! ```
//!
//! One line per file, `HEX  PATH`, sorted by path: the format `sha256sum
//! -c` and `b3sum -c` read. Paths are relative to each `DIR`, prefixed with
//! it when there are several. Symlinks are not followed or listed. Without
//! `--out` the manifest goes to stdout.

use kiln_plugin_sdk::{Args, Error, manifest, run, tree};
use sha2::Digest;

manifest! {
    name: "checksum",
    description: "Write a sha256sum/b3sum manifest of the files below directories",
    options: [
        "--algorithm sha256|blake3: the hash (default sha256)",
        "--out FILE: where to write the manifest (default stdout)",
    ],
}

fn main() {
    run(|| {
        let mut args = Args::from_env(&["--algorithm", "--out"], &[])?;
        let algo = args.value("--algorithm").unwrap_or_else(|| "sha256".into());
        if algo != "sha256" && algo != "blake3" {
            return Err(Error::usage(format!(
                "--algorithm {algo}: expected sha256 or blake3"
            )));
        }
        let out = args.value("--out");
        let dirs = args.rest();
        if dirs.is_empty() {
            return Err(Error::usage("missing argument DIR"));
        }
        let mut lines = Vec::new();
        for dir in &dirs {
            for e in tree::walk(dir)? {
                if e.kind != tree::Kind::File {
                    continue;
                }
                let bytes = tree::read(&e.path)?;
                let hex = if algo == "sha256" {
                    hex(&sha2::Sha256::digest(&bytes))
                } else {
                    blake3::hash(&bytes).to_hex().to_string()
                };
                let name = if dirs.len() > 1 {
                    format!("{}/{}", dir.trim_end_matches('/'), e.rel)
                } else {
                    e.rel
                };
                lines.push(format!("{hex}  {name}\n"));
            }
        }
        lines.sort_by(|a, b| a[a.find("  ").unwrap_or(0)..].cmp(&b[b.find("  ").unwrap_or(0)..]));
        let text = lines.concat();
        match out {
            Some(path) => tree::write(path, text),
            None => {
                print!("{text}");
                Ok(())
            }
        }
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
