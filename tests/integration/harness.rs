//! A builder for running `kiln` in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Project {
    pub dir: tempfile::TempDir,
    /// `XDG_CACHE_HOME` for the kiln this project runs: the machine's
    /// state directory when the project has no `.kiln` of its own.
    pub cache: std::sync::Arc<tempfile::TempDir>,
}

pub fn kiln_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

impl Project {
    /// A project with a state directory of its own (`.kiln`, as kiln
    /// keeps using one that is there): tests look into it, and no two
    /// tests share a store unless they ask to.
    pub fn new() -> Project {
        let p = Project::bare();
        std::fs::create_dir(p.path().join(".kiln")).expect("make .kiln");
        p
    }

    /// A project without `.kiln`: kiln uses the machine's state directory,
    /// here [`Project::machine_state`].
    pub fn bare() -> Project {
        Project {
            dir: tempfile::tempdir().expect("temp dir"),
            cache: std::sync::Arc::new(tempfile::tempdir().expect("temp dir")),
        }
    }

    /// Another project (without `.kiln`) on the same machine as `self`.
    pub fn beside(&self) -> Project {
        Project {
            dir: tempfile::tempdir().expect("temp dir"),
            cache: self.cache.clone(),
        }
    }

    /// The state directory kiln picks when there is no `.kiln`.
    pub fn machine_state(&self) -> PathBuf {
        self.cache.path().join("kiln")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    #[track_caller]
    pub fn file(&self, rel: &str, content: &str) -> &Project {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
        self
    }

    pub fn spec(&self, text: &str) -> &Project {
        self.file("kiln.kdl", text)
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path().join(rel).symlink_metadata().is_ok()
    }

    /// Run kiln with `args` in the project dir.
    pub fn kiln(&self, args: &[&str]) -> Run {
        self.kiln_env(args, &[])
    }

    /// [`Project::kiln`] with more environment variables set.
    pub fn kiln_env(&self, args: &[&str], vars: &[(&str, &str)]) -> Run {
        let out = Command::new(kiln_bin())
            .args(args)
            .envs(vars.iter().copied())
            .current_dir(self.path())
            .env_remove("KILN_STATE_DIR")
            .env_remove("SOURCE_DATE_EPOCH")
            .env("XDG_CACHE_HOME", self.cache.path())
            .env("NO_COLOR", "1")
            .env("COLUMNS", "80")
            .output()
            .expect("run kiln");
        Run::from(out)
    }

    /// `kiln build --progress json` plus `extra`.
    pub fn build(&self, extra: &[&str]) -> Run {
        let mut args = vec!["build", "--progress", "json"];
        args.extend_from_slice(extra);
        self.kiln(&args)
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn ok(&self) -> &Run {
        assert_eq!(
            self.code, 0,
            "kiln failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "unexpected exit code:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// The JSON events on stderr.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn events_of(&self, kind: &str) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    }

    /// `(stage, step)` of every step that ran (not cached).
    pub fn ran(&self) -> Vec<(String, u64)> {
        self.events_of("step_finished")
            .iter()
            .map(|e| {
                (
                    e["stage"].as_str().unwrap_or("").to_string(),
                    e["step"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    pub fn cached(&self) -> usize {
        self.events_of("step_cached").len()
    }
}

/// Where a state directory keeps a blob's bytes: a file of its own, or a
/// stretch of a pack (`offset`, `len`; see `store::packs`).
pub struct StoredBlob {
    pub path: PathBuf,
    pub offset: u64,
    pub len: usize,
}

impl StoredBlob {
    pub fn read(&self) -> Vec<u8> {
        let bytes = std::fs::read(&self.path).unwrap();
        bytes[self.offset as usize..self.offset as usize + self.len].to_vec()
    }
}

/// Find the stored copy of `content` in the state directory `state`.
pub fn stored_blob(state: &Path, content: &[u8]) -> Option<StoredBlob> {
    let hash = blake3::hash(content);
    let hex = hash.to_hex().to_string();
    let loose = state.join("blobs").join(&hex[..2]).join(&hex);
    if loose.exists() {
        return Some(StoredBlob {
            path: loose,
            offset: 0,
            len: content.len(),
        });
    }
    for e in std::fs::read_dir(state.join("packs")).ok()?.flatten() {
        let bytes = std::fs::read(e.path()).ok()?;
        // The footer: table offset, count, sum, "KILNPEND".
        let n = bytes.len();
        if n < 72 || &bytes[n - 8..] != b"KILNPEND" {
            continue;
        }
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let (table, count) = (word(n - 56) as usize, word(n - 48) as usize);
        for i in 0..count {
            let row = &bytes[table + 44 * i..table + 44 * (i + 1)];
            if &row[..32] == hash.as_bytes() {
                return Some(StoredBlob {
                    path: e.path(),
                    offset: u64::from_le_bytes(row[32..40].try_into().unwrap()),
                    len: u32::from_le_bytes(row[40..44].try_into().unwrap()) as usize,
                });
            }
        }
    }
    None
}
