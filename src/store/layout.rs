//! Every path inside the state directory, named in one place.
//!
//! ```text
//! .gitignore             `*`: a state directory inside a project stays out of git
//! lock                   flock: builds share it, `kiln gc` takes it alone
//! blobs/ab/<blake3>      file contents over 64 KiB, read-only, named by
//!                        their digest
//! packs/<token>-<n>.pack file contents of at most 64 KiB, many to a file,
//!                        with a table of where each is (see `packs`)
//! trees/ab/<blake3>      tree manifests (JSON), named by their digest
//! actions.log            action cache: step key -> resulting state (see `actions`)
//! index/<hash>.bin       stat index of a context directory (checksummed)
//! records/               what builds did: `exports` (what each destination
//!                        holds), `used/` (keys recent builds used, for gc),
//!   projects/<scope>/    one project's own (its spec's path, hashed: see
//!                        `build::load::project_scope`): `last`, `steps`
//!                        (explain), `memo` (the no-op build's shortcut)
//! parse/<key>            lowered spec files, so a no-op build skips KDL parsing
//! logs/<step key>.log    the whole output of plugin steps
//! wasm-cache/            compiled plugin modules, when the machine has no cache
//!                        directory for them (see `plugin::machine_cache_dir`)
//! images/                an OCI image layout: blobs of pulled and tagged
//!                        images (`blobs/sha256/`), `index.json` naming them
//! sandbox/               only its owner may enter (files below have the
//!                        owners commands gave them), per id mapping
//!                        (`ids-…`, see `sandbox::ids`):
//!   ids-…/rootfs/        stage trees on disk for `run` steps: layer
//!                        directories stacked by overlayfs, by tree digest
//!                        (`l/`), their seals (`s/`), the stacks (`t/`);
//!                        without root, private copies kept per project
//!                        (`copies/<project>/<id>/`)
//!   ids-…/cache/<id>/    `run` cache mounts (`type=cache`)
//! rootfs/, cache/        the same, from kiln before 2026-12: never used,
//!                        closed to others on open, removed by `kiln gc`
//! git/                   bare repositories of git sources, one per URL
//! layers/<key>.json      image layers made for exports, by the trees they join
//! inflight/<key>.lock    flock'ed by the build running that step, so another
//!                        build that needs it waits and takes its result
//! owners/<token>         one file per running kiln process, flock'ed while it
//!                        lives; `<token>.exports` lists its export temp paths
//! quarantine/            damaged objects moved out of the way, for inspection
//! tmp/<token>-…          files being written; renamed into place when whole
//! ```
//!
//! Nothing outside `store` builds a path below the state dir by hand.

use crate::model::digest::{BlobDigest, StepKey, TreeDigest};
use std::path::{Path, PathBuf};

/// The state directory's layout.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

/// Directories created when a store is opened.
pub const DIRS: &[&str] = &[
    "blobs",
    "packs",
    "trees",
    "index",
    "records",
    "tmp",
    "owners",
    "quarantine",
];

impl Layout {
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn shard(&self, kind: &str, hex: &str) -> PathBuf {
        self.root.join(kind).join(&hex[..2]).join(hex)
    }

    pub fn lock(&self) -> PathBuf {
        self.root.join("lock")
    }

    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    pub fn packs(&self) -> PathBuf {
        self.root.join("packs")
    }

    pub fn blob(&self, d: BlobDigest) -> PathBuf {
        self.shard("blobs", &d.hex())
    }

    pub fn trees(&self) -> PathBuf {
        self.root.join("trees")
    }

    pub fn tree(&self, d: TreeDigest) -> PathBuf {
        self.shard("trees", &d.hex())
    }

    pub fn actions_log(&self) -> PathBuf {
        self.root.join("actions.log")
    }

    /// The stat index of the context whose canonical root is `context`.
    pub fn index(&self, context: &Path) -> PathBuf {
        let name = blake3::hash(context.as_os_str().as_encoded_bytes()).to_hex();
        self.root.join("index").join(format!("{}.bin", &name[..32]))
    }

    pub fn records(&self) -> PathBuf {
        self.root.join("records")
    }

    /// A record file shared by all projects (`exports`, …).
    pub fn record(&self, name: &str) -> PathBuf {
        self.records().join(name)
    }

    /// The records of every project.
    pub fn projects(&self) -> PathBuf {
        self.records().join("projects")
    }

    /// A record file of one project (`last`, `steps`, `memo`, …).
    pub fn project_record(&self, scope: &str, name: &str) -> PathBuf {
        self.projects().join(scope).join(name)
    }

    /// The lists of keys recent builds used.
    pub fn used(&self) -> PathBuf {
        self.records().join("used")
    }

    pub fn parse(&self) -> PathBuf {
        self.root.join("parse")
    }

    pub fn parse_entry(&self, key: &str) -> PathBuf {
        self.parse().join(key)
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn log(&self, key: StepKey) -> PathBuf {
        self.logs().join(format!("{}.log", key.hex()))
    }

    pub fn wasm_cache(&self) -> PathBuf {
        self.root.join("wasm-cache")
    }

    /// Steps being run, by key (see [`super::local::Store::claim`]).
    pub fn inflight(&self) -> PathBuf {
        self.root.join("inflight")
    }

    pub fn owners(&self) -> PathBuf {
        self.root.join("owners")
    }

    pub fn owner(&self, token: &str) -> PathBuf {
        self.owners().join(token)
    }

    /// The export temp paths a process announced before creating them.
    pub fn owner_exports(&self, token: &str) -> PathBuf {
        self.owners().join(format!("{token}.exports"))
    }

    pub fn quarantine(&self) -> PathBuf {
        self.root.join("quarantine")
    }

    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The local image store: an OCI image layout.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    /// A blob of the image store, by its sha256 (hex).
    pub fn image_blob(&self, sha256_hex: &str) -> PathBuf {
        self.images().join("blobs").join("sha256").join(sha256_hex)
    }

    /// Layer directories and the stacks that give trees, for `run` steps.
    pub fn layer_cache(&self) -> PathBuf {
        self.root.join("layers")
    }

    /// The SHA-256 of blobs this machine hashed for a remote cache.
    pub fn remote_map(&self) -> PathBuf {
        self.root.join("remote").join("sha256")
    }

    /// What each top-level entry of the state directory holds, for `kiln
    /// gc`'s accounting (everything else is records and indexes).
    pub fn part_of(name: &str) -> &'static str {
        match name {
            "blobs" | "packs" | "trees" | "actions.log" => "cache",
            "logs" => "step logs",
            "images" => "images",
            "wasm-cache" => "compiled plugin modules",
            "sandbox" => "trees on disk and cache mounts for run steps",
            "rootfs" | "cache" => "old trees on disk and cache mounts",
            "layers" => "image layer cache",
            "git" => "git repositories",
            "remote" => "digests for the remote cache",
            "quarantine" => "quarantine",
            _ => "records and indexes",
        }
    }

    /// What `run` steps keep on disk (trees, cache mounts), per id mapping
    /// (`ids`): only the state dir's owner may enter it.
    pub fn sandbox(&self) -> PathBuf {
        self.root.join("sandbox")
    }

    /// Trees on disk for `run` steps under the id mapping `ids`.
    pub fn rootfs(&self, ids: &str) -> PathBuf {
        self.sandbox().join(ids).join("rootfs")
    }

    /// Where `run` cache mounts are kept under the id mapping `ids`.
    pub fn cache_mounts(&self, ids: &str) -> PathBuf {
        self.sandbox().join(ids).join("cache")
    }

    /// What kiln before 2026-12 kept for `run` steps, unconfined: never
    /// used again, and removed by `kiln gc`.
    pub fn old_sandbox(&self) -> [PathBuf; 2] {
        [self.root.join("rootfs"), self.root.join("cache")]
    }

    /// Create `dir` (and its parents) below [`Layout::sandbox`], which is
    /// made enterable by its owner alone (so nothing a command leaves there
    /// is usable by another user, setuid files included).
    pub fn private_dir(&self, dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let top = self.sandbox();
        if !top.is_dir() {
            match std::fs::create_dir(&top) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        if std::fs::symlink_metadata(&top)?.permissions().mode() & 0o777 != 0o700 {
            std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o700))?;
        }
        std::fs::create_dir_all(dir)
    }

    /// Bare repositories of git sources, one per URL (each with a `.lock`
    /// touched when used).
    pub fn git(&self) -> PathBuf {
        self.root.join("git")
    }
}
