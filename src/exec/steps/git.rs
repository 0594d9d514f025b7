//! `git URL DEST`: a repository's tree at one commit, placed at `DEST`.
//! The commit is the spec's (a full commit id) or the lock file's (a ref
//! pinned on first use), and it is a key input: a cached build never
//! touches the network, and a moved branch changes nothing until
//! `kiln lock --update URL`. The repository is fetched into the state
//! directory once (`STATE/git/`) and read from there.

use super::copy_rules::{self, Overrides, Picked};
use super::{StepCx, StepKind, Work, resolve_owner};
use crate::diag::Code;
use crate::diag::Diagnostic;
use crate::git::{self, Item, Repo};
use crate::ir::{Git, Names};
use crate::model::key::{KeyBuilder, KeyInput};
use crate::model::tree::{Entry, Kind};
use crate::progress::Event;
use serde_json::json;
use std::sync::atomic::AtomicBool;

impl StepKind for Git {
    fn canonical(&self, _names: Names<'_>) -> serde_json::Value {
        json!({"git": {
            // Without credentials: a rotated token checks out the same tree.
            "url": git::without_credentials(&self.url), "ref": self.reference, "subdir": self.subdir,
            "dest": self.dest, "keep_git_dir": self.keep_git_dir,
            "chmod": self.chmod, "chown": self.chown,
        }})
    }

    fn describe(&self, _names: Names<'_>) -> String {
        let url = git::without_credentials(&self.url);
        match &self.subdir {
            Some(s) => format!("git {url}#{}:{s}", self.reference),
            None => format!("git {url}#{}", self.reference),
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
                source: format!("{}#{}", git::without_credentials(&self.url), self.reference),
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
            Diagnostic::new(Code::GIT_CHECKOUT, e.to_string())
                .with_label(span, "in this git step")
                .with_help(help)
        };
        let root = cx.env.local.layout().git();
        let repo = fetched(cx, &root, &self.url, &commit).map_err(failed)?;
        let mut checkouts = Checkouts {
            cx,
            root: &root,
            entries: Vec::new(),
        };
        checkouts
            .add(&repo, &self.url, &commit, self.subdir.as_deref(), "", 0)
            .map_err(|e| match e {
                Nested::Git(e) => failed(e),
                Nested::Module(why) => {
                    Diagnostic::new(Code::GIT_SUBMODULE, why).with_label(span, "in this git step")
                }
                Nested::Store(d) => d,
            })?;
        let mut entries = checkouts.entries;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
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
        let picked = [Picked {
            name: String::new(),
            path: git::without_credentials(&self.url),
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

/// Submodules inside submodules are followed this deep.
const MAX_NESTING: usize = 8;

/// Why a checkout with its submodules failed.
enum Nested {
    Git(git::GitError),
    /// A `.gitmodules` kiln will not follow.
    Module(String),
    Store(Diagnostic),
}

impl From<git::GitError> for Nested {
    fn from(e: git::GitError) -> Nested {
        Nested::Git(e)
    }
}

/// The local repository of `url`, fetched if it lacks `commit`.
fn fetched(
    cx: &StepCx<'_>,
    root: &std::path::Path,
    url: &str,
    commit: &str,
) -> Result<Repo, git::GitError> {
    let repo = Repo::open(root, url)?;
    if !repo.has(commit) {
        cx.env.progress.emit(Event::Notice {
            message: format!(
                "fetching {} for the commit {commit}",
                git::without_credentials(url)
            ),
        });
        repo.fetch(&AtomicBool::new(false))?;
    }
    Ok(repo)
}

/// A checkout's entries, submodules included.
struct Checkouts<'a, 'b> {
    cx: &'a StepCx<'b>,
    /// Where the local repositories are (`STATE/git`).
    root: &'a std::path::Path,
    entries: Vec<(String, Entry)>,
}

impl Checkouts<'_, '_> {
    /// Add `commit` of `repo` (below `subdir`) to the entries under `prefix`,
    /// with its submodules checked out at the commits it records for them
    /// (fetched from the URLs its `.gitmodules` gives, as `git clone
    /// --recurse-submodules` does). The superproject's commit pins them all,
    /// so the step's key stays the one commit.
    fn add(
        &mut self,
        repo: &Repo,
        url: &str,
        commit: &str,
        subdir: Option<&str>,
        prefix: &str,
        depth: usize,
    ) -> Result<(), Nested> {
        let cx = self.cx;
        let at = |path: &str| {
            if prefix.is_empty() {
                path.to_string()
            } else {
                format!("{prefix}/{path}")
            }
        };
        let mut modules: Vec<(String, String)> = Vec::new();
        for (path, item) in repo.checkout(commit, subdir)? {
            let entry = match item {
                Item::Dir => Entry::dir(0o755, 0, 0),
                Item::Submodule(sub_commit) => {
                    modules.push((path.clone(), sub_commit));
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
                        blob: cx
                            .content()
                            .put_blob(&data)
                            .map_err(|e| Nested::Store(e.into()))?,
                        size: data.len() as u64,
                    },
                    mode: if executable { 0o755 } else { 0o644 },
                    uid: 0,
                    gid: 0,
                },
            };
            self.entries.push((at(&path), entry));
        }
        if modules.is_empty() {
            return Ok(());
        }
        if depth >= MAX_NESTING {
            return Err(Nested::Module(format!(
                "{}: submodules nest more than {MAX_NESTING} deep",
                git::without_credentials(url)
            )));
        }
        // `.gitmodules` names paths from the repository's root.
        let declared = match repo.file_at(commit, ".gitmodules")? {
            Some(bytes) => git::submodules(&bytes, url).map_err(|why| {
                Nested::Module(format!("{}: {why}", git::without_credentials(url)))
            })?,
            None => Vec::new(),
        };
        let from_root = |path: &str| match subdir
            .map(|s| s.trim_matches('/'))
            .filter(|s| !s.is_empty())
        {
            Some(s) => format!("{s}/{path}"),
            None => path.to_string(),
        };
        for (path, sub_commit) in modules {
            let full = from_root(&path);
            let Some((_, sub_url)) = declared.iter().find(|(p, _)| *p == full) else {
                return Err(Nested::Module(format!(
                    "{}: the submodule at `{full}` is not in `.gitmodules`",
                    git::without_credentials(url)
                )));
            };
            let sub_repo = fetched(cx, self.root, sub_url, &sub_commit)?;
            self.add(&sub_repo, sub_url, &sub_commit, None, &at(&path), depth + 1)?;
        }
        Ok(())
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
                    git::without_credentials(&self.url),
                    self.reference
                ))
            })
    }
}
