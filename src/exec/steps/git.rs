//! `git URL DEST`: a repository's tree at one commit, placed at `DEST`.
//! The commit is the spec's (a full commit id) or the lock file's (a ref
//! pinned on first use), and it is a key input: a cached build never
//! touches the network, and a moved branch changes nothing until
//! `kiln lock --update URL`. The repository is fetched into the state
//! directory once (`STATE/git/`) and read from there.

use super::copy_rules::{self, Overrides, Picked};
use super::{StepCx, StepKind, Work, resolve_owner};
use crate::diag::Diagnostic;
use crate::git::{self, Item, Repo};
use crate::ir::{Git, Graph};
use crate::model::key::{KeyBuilder, KeyInput};
use crate::model::tree::{Entry, Kind};
use crate::progress::Event;
use serde_json::json;
use std::sync::atomic::AtomicBool;

impl StepKind for Git {
    fn canonical(&self, _graph: &Graph) -> serde_json::Value {
        json!({"git": {
            "url": self.url, "ref": self.reference, "subdir": self.subdir,
            "dest": self.dest, "keep_git_dir": self.keep_git_dir,
            "chmod": self.chmod, "chown": self.chown,
        }})
    }

    fn describe(&self, _graph: &Graph) -> String {
        match &self.subdir {
            Some(s) => format!("git {}#{}:{s}", self.url, self.reference),
            None => format!("git {}#{}", self.url, self.reference),
        }
    }

    /// The checkout is kept, so a replay needs neither the network nor
    /// the local repository.
    fn stores_tree(&self) -> bool {
        true
    }

    fn prepare(
        &self,
        cx: &StepCx<'_>,
        key: Option<&mut KeyBuilder>,
    ) -> Result<super::Prepared, Diagnostic> {
        if !git::is_commit(&self.reference)
            && let Some(key) = key
        {
            key.input(KeyInput::Pinned {
                source: format!("{}#{}", self.url, self.reference),
                digest: format!("git:{}", self.commit(cx)?),
            });
        }
        Ok(super::Prepared::Nothing)
    }

    fn run(
        &self,
        cx: &StepCx<'_>,
        work: Work<'_>,
        _prepared: super::Prepared,
    ) -> Result<(), Diagnostic> {
        let span = cx.span();
        let owner = match &self.chown {
            Some(o) => Some(resolve_owner(cx.content(), work.tree, o, span)?),
            None => None,
        };
        let commit = self.commit(cx)?;
        let failed = |e: git::GitError| {
            let help = match &e {
                git::GitError::NoSubdir { .. } => {
                    "name a directory the commit has, or leave `subdir=` out"
                }
                git::GitError::NoCommit { .. } => {
                    "check the commit id; a commit only on a deleted branch cannot be fetched"
                }
                _ => "check that the repository can be reached (the URL, the network, credentials)",
            };
            Diagnostic::env("kiln::git::checkout", e.to_string())
                .with_label(span, "in this git step")
                .with_help(help)
        };
        let root = cx.env.local.layout().git();
        let repo = Repo::open(&root, &self.url).map_err(failed)?;
        if !repo.has(&commit) {
            cx.env.progress.emit(Event::Notice {
                message: format!(
                    "fetching {} for the commit {commit}",
                    git::without_credentials(&self.url)
                ),
            });
            repo.fetch(&AtomicBool::new(false)).map_err(failed)?;
        }
        let items = repo
            .checkout(&commit, self.subdir.as_deref())
            .map_err(failed)?;
        let mut entries = Vec::with_capacity(items.len());
        let mut submodules = Vec::new();
        for (path, item) in items {
            let entry = match item {
                Item::Dir => Entry::dir(0o755, 0, 0),
                Item::Submodule(_) => {
                    submodules.push(path.clone());
                    Entry::dir(0o755, 0, 0)
                }
                Item::Symlink(target) => Entry {
                    kind: Kind::Symlink { target },
                    mode: 0o777,
                    uid: 0,
                    gid: 0,
                },
                Item::File { data, executable } => Entry {
                    kind: Kind::File {
                        blob: cx.content().put_blob(&data)?,
                        size: data.len() as u64,
                    },
                    mode: if executable { 0o755 } else { 0o644 },
                    uid: 0,
                    gid: 0,
                },
            };
            entries.push((path, entry));
        }
        if self.keep_git_dir {
            let dot_git = repo
                .dot_git(&commit, self.subdir.is_none())
                .map_err(failed)?;
            entries.push((".git".to_string(), Entry::dir(0o755, 0, 0)));
            for (path, file) in dot_git {
                let entry = match file {
                    None => Entry::dir(0o755, 0, 0),
                    Some(data) => Entry {
                        kind: Kind::File {
                            blob: cx.content().put_blob(&data)?,
                            size: data.len() as u64,
                        },
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                    },
                };
                entries.push((format!(".git/{path}"), entry));
            }
            entries.sort_by(|a, b| a.0.cmp(&b.0));
        }
        if !submodules.is_empty() {
            cx.env.progress.emit(Event::Notice {
                message: format!(
                    "{}: the submodules {} are left empty; fetch each with a `git` step of its own",
                    git::without_credentials(&self.url),
                    submodules.join(", ")
                ),
            });
        }
        let picked = [Picked {
            name: String::new(),
            path: self.url.clone(),
            is_dir: true,
            items: entries,
            pivot: String::new(),
        }];
        let ov = Overrides {
            chmod: self.chmod,
            owner,
        };
        let workdir = work.config.workdir().to_string();
        copy_rules::place(work.tree, &picked, &self.dest, &workdir, ov, false, span)
    }
}

impl Git {
    /// The commit: the spec's, or what the lock file pins the ref to
    /// (resolved before the build).
    fn commit(&self, cx: &StepCx<'_>) -> Result<String, Diagnostic> {
        if git::is_commit(&self.reference) {
            return Ok(self.reference.to_ascii_lowercase());
        }
        cx.env
            .options
            .pins
            .gits
            .get(&(self.url.clone(), self.reference.clone()))
            .cloned()
            .ok_or_else(|| {
                Diagnostic::internal(format!(
                    "`{}#{}` was not pinned before the build",
                    self.url, self.reference
                ))
            })
    }
}
