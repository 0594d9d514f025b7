//! Git sources (`git URL DEST`, Dockerfile `ADD https://…/r.git#ref`),
//! with gix, a pure-Rust git. Each repository a build reads is fetched
//! into a bare repository of the state directory (`STATE/git/`), by URL:
//! its branches, tags and `HEAD`. A ref resolves to a commit once (the
//! lock file keeps it); after that the commit is read from the local
//! repository, and the network is needed only when it lacks the commit.

pub mod changes;

use crate::model::digest::Sha256;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot fetch `{url}`: {why}")]
    Fetch { url: String, why: String },
    #[error("`{url}` has no ref `{reference}`")]
    NoRef { url: String, reference: String },
    #[error("`{url}` does not have the commit {commit}")]
    NoCommit { url: String, commit: String },
    #[error("the commit {commit} has no directory `{subdir}`")]
    NoSubdir { commit: String, subdir: String },
    #[error("cannot read the repository of `{url}`: {why}")]
    Local { url: String, why: String },
}

/// What a path of a checked-out commit is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    File {
        data: Vec<u8>,
        executable: bool,
    },
    Symlink(String),
    Dir,
    /// A submodule (a gitlink): its commit, not checked out.
    Submodule(String),
}

/// A path of a `.git` directory: `None` for a directory, else a file's bytes.
pub type DotGitItem = Option<Vec<u8>>;

/// A git object for a `.git` directory: its id, kind and contents.
struct Object {
    id: String,
    kind: &'static str,
    data: Vec<u8>,
}

/// The local bare repository of one URL.
pub struct Repo {
    repo: gix::Repository,
    url: String,
    /// `<dir>.lock`: touched when the repository is used (so `kiln gc`
    /// keeps it), held while fetching (one fetch at a time).
    lock: std::fs::File,
}

/// Where the repository of `url` is kept under `root` (`STATE/git`).
pub fn dir_for(root: &Path, url: &str) -> PathBuf {
    let h = Sha256::of(url.as_bytes());
    root.join(format!("{}.git", &h.hex()[..32]))
}

/// Whether `s` is a full commit id.
pub fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Repo {
    /// Open the repository of `url` under `root` (`STATE/git`), making it
    /// if need be.
    pub fn open(root: &Path, url: &str) -> Result<Repo, GitError> {
        let local = |e: &dyn std::fmt::Display| GitError::Local {
            url: without_credentials(url),
            why: e.to_string(),
        };
        let dir = &dir_for(root, url);
        std::fs::create_dir_all(root).map_err(|e| local(&e))?;
        let lock_path = dir.with_extension("lock");
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| local(&e))?;
        let _ = lock.set_modified(std::time::SystemTime::now());
        let repo = if dir.join("HEAD").exists() {
            gix::open(dir).map_err(|e| local(&e))?
        } else {
            // Made aside and renamed, so a half-made repository is never
            // found by another build.
            let tmp = dir.with_extension(format!("new-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            gix::init_bare(&tmp).map_err(|e| local(&e))?;
            match std::fs::rename(&tmp, dir) {
                Ok(()) => {}
                // Another build made it first.
                Err(_) if dir.join("HEAD").exists() => {
                    let _ = std::fs::remove_dir_all(&tmp);
                }
                Err(e) => return Err(local(&e)),
            }
            gix::open(dir).map_err(|e| local(&e))?
        };
        Ok(Repo {
            repo,
            url: url.to_string(),
            lock,
        })
    }

    /// Fetch every branch and tag, and `HEAD` (as `refs/kiln/HEAD`).
    pub fn fetch(&self, cancel: &AtomicBool) -> Result<(), GitError> {
        // gix's messages may quote the URL: its credentials are masked.
        let secrets = crate::model::url::credentials(&self.url);
        let fail = |e: &dyn std::error::Error| GitError::Fetch {
            url: without_credentials(&self.url),
            why: secrets
                .iter()
                .fold(chain(e), |t, s| t.replace(s.as_str(), "***")),
        };
        self.lock.lock().map_err(|e| fail(&e))?;
        let result = self.fetch_locked(cancel, &fail);
        let _ = self.lock.unlock();
        result
    }

    fn fetch_locked(
        &self,
        cancel: &AtomicBool,
        fail: &dyn Fn(&dyn std::error::Error) -> GitError,
    ) -> Result<(), GitError> {
        let remote = self
            .repo
            .remote_at(self.url.as_str())
            .map_err(|e| fail(&e))?
            .with_refspecs(
                [
                    "+HEAD:refs/kiln/HEAD",
                    "+refs/heads/*:refs/heads/*",
                    "+refs/tags/*:refs/tags/*",
                ],
                gix::remote::Direction::Fetch,
            )
            .map_err(|e| fail(&e))?;
        remote
            .connect(gix::remote::Direction::Fetch)
            .map_err(|e| fail(&e))?
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| fail(&e))?
            .receive(gix::progress::Discard, cancel)
            .map_err(|e| fail(&e))?;
        // Another handle on the repository sees the new objects and refs.
        Ok(())
    }

    /// The commit a ref names in the local repository: a branch, a tag,
    /// a full ref name, or `HEAD` (the remote's default branch).
    pub fn resolve(&self, reference: &str) -> Option<String> {
        if is_commit(reference) {
            return Some(reference.to_ascii_lowercase());
        }
        let names = if reference == "HEAD" {
            vec!["refs/kiln/HEAD".to_string()]
        } else if reference.starts_with("refs/") {
            vec![reference.to_string()]
        } else {
            vec![
                format!("refs/tags/{reference}"),
                format!("refs/heads/{reference}"),
            ]
        };
        for name in names {
            if let Ok(Some(mut r)) = self.repo.try_find_reference(name.as_str())
                && let Ok(id) = r.peel_to_id()
                && let Ok(obj) = self.repo.find_object(id.detach())
                && let Ok(commit) = obj.peel_to_commit()
            {
                return Some(commit.id.to_string());
            }
        }
        None
    }

    /// Whether the local repository has `commit`.
    pub fn has(&self, commit: &str) -> bool {
        gix::ObjectId::from_hex(commit.as_bytes())
            .ok()
            .is_some_and(|id| self.repo.find_commit(id).is_ok())
    }

    fn commit(&self, commit: &str) -> Result<gix::Commit<'_>, GitError> {
        let missing = || GitError::NoCommit {
            url: without_credentials(&self.url),
            commit: commit.to_string(),
        };
        let id = gix::ObjectId::from_hex(commit.as_bytes()).map_err(|_| missing())?;
        self.repo.find_commit(id).map_err(|_| missing())
    }

    /// The file at `path` (from the repository's root) in `commit`, if it
    /// has one.
    pub fn file_at(&self, commit: &str, path: &str) -> Result<Option<Vec<u8>>, GitError> {
        let local = |e: &dyn std::fmt::Display| GitError::Local {
            url: without_credentials(&self.url),
            why: e.to_string(),
        };
        let tree = self.commit(commit)?.tree().map_err(|e| local(&e))?;
        let Some(entry) = tree.lookup_entry_by_path(path).map_err(|e| local(&e))? else {
            return Ok(None);
        };
        if !entry.mode().is_blob() {
            return Ok(None);
        }
        Ok(Some(entry.object().map_err(|e| local(&e))?.detach().data))
    }

    /// Every path of `commit` (below `subdir`, relative to it), sorted.
    pub fn checkout(
        &self,
        commit: &str,
        subdir: Option<&str>,
    ) -> Result<Vec<(String, Item)>, GitError> {
        let local = |e: &dyn std::fmt::Display| GitError::Local {
            url: without_credentials(&self.url),
            why: e.to_string(),
        };
        let mut tree = self.commit(commit)?.tree().map_err(|e| local(&e))?;
        if let Some(sub) = subdir
            .map(|s| s.trim_matches('/'))
            .filter(|s| !s.is_empty())
        {
            let no = || GitError::NoSubdir {
                commit: commit.to_string(),
                subdir: sub.to_string(),
            };
            let entry = tree
                .lookup_entry_by_path(sub)
                .map_err(|e| local(&e))?
                .ok_or_else(no)?;
            if !entry.mode().is_tree() {
                return Err(no());
            }
            tree = entry
                .object()
                .map_err(|e| local(&e))?
                .peel_to_tree()
                .map_err(|e| local(&e))?;
        }
        let mut rec = gix::traverse::tree::Recorder::default();
        tree.traverse()
            .breadthfirst(&mut rec)
            .map_err(|e| local(&e))?;
        let mut out = Vec::with_capacity(rec.records.len());
        for e in rec.records {
            let path = e.filepath.to_string();
            let mode = e.mode;
            let item = if mode.is_tree() {
                Item::Dir
            } else if mode.is_commit() {
                Item::Submodule(e.oid.to_string())
            } else {
                let data = self
                    .repo
                    .find_object(e.oid)
                    .map_err(|e| local(&e))?
                    .detach()
                    .data;
                if mode.is_link() {
                    Item::Symlink(String::from_utf8_lossy(&data).into_owned())
                } else {
                    Item::File {
                        data,
                        executable: mode.is_executable(),
                    }
                }
            };
            out.push((path, item));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The commit and every tree and blob it reaches.
    fn objects(&self, commit: &str) -> Result<Vec<Object>, GitError> {
        let local = |e: &dyn std::fmt::Display| GitError::Local {
            url: without_credentials(&self.url),
            why: e.to_string(),
        };
        let c = self.commit(commit)?;
        let mut out = vec![Object {
            id: c.id.to_string(),
            kind: "commit",
            data: c.data.clone(),
        }];
        let tree = c.tree().map_err(|e| local(&e))?;
        out.push(Object {
            id: tree.id.to_string(),
            kind: "tree",
            data: tree.data.clone(),
        });
        let mut rec = gix::traverse::tree::Recorder::default();
        tree.traverse()
            .breadthfirst(&mut rec)
            .map_err(|e| local(&e))?;
        let mut seen = std::collections::HashSet::new();
        for e in rec.records {
            if e.mode.is_commit() || !seen.insert(e.oid) {
                continue;
            }
            let obj = self.repo.find_object(e.oid).map_err(|e| local(&e))?;
            out.push(Object {
                id: e.oid.to_string(),
                kind: if e.mode.is_tree() { "tree" } else { "blob" },
                data: obj.detach().data,
            });
        }
        Ok(out)
    }

    /// A `.git` directory with `commit` checked out (a detached `HEAD`, a
    /// shallow history of that one commit, `origin` the URL), as paths
    /// relative to it: `None` for a directory, else a file's bytes. The
    /// index is written when the checkout is the whole tree (`index`),
    /// so `git status` is clean. The same commit gives the same bytes.
    pub fn dot_git(
        &self,
        commit: &str,
        index: bool,
    ) -> Result<Vec<(String, DotGitItem)>, GitError> {
        use std::io::Write;
        let local = |e: &dyn std::fmt::Display| GitError::Local {
            url: without_credentials(&self.url),
            why: e.to_string(),
        };
        let mut out: Vec<(String, DotGitItem)> = Vec::new();
        let mut file = |p: &str, data: Vec<u8>| out.push((p.to_string(), Some(data)));
        file("HEAD", format!("{commit}\n").into_bytes());
        file("shallow", format!("{commit}\n").into_bytes());
        file(
            "config",
            format!(
                "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n[remote \"origin\"]\n\turl = {}\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n",
                without_credentials(&self.url)
            )
            .into_bytes(),
        );
        file(
            "description",
            b"Unnamed repository; edit this file 'description' to name the repository.\n".to_vec(),
        );
        if index {
            let tree = self
                .commit(commit)?
                .tree_id()
                .map_err(|e| local(&e))?
                .detach();
            let state = gix::index::State::from_tree(&tree, &self.repo.objects, Default::default())
                .map_err(|e| local(&e))?;
            let mut bytes = Vec::new();
            gix::index::File::from_state(state, self.repo.path().join("index"))
                .write_to(&mut bytes, Default::default())
                .map_err(|e| local(&e))?;
            file("index", bytes);
        }
        let mut dirs = std::collections::BTreeSet::new();
        for d in [
            "objects",
            "objects/info",
            "objects/pack",
            "refs",
            "refs/heads",
            "refs/tags",
        ] {
            dirs.insert(d.to_string());
        }
        for o in self.objects(commit)? {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            let compressed = z
                .write_all(format!("{} {}\0", o.kind, o.data.len()).as_bytes())
                .and_then(|_| z.write_all(&o.data))
                .and_then(|_| z.finish())
                .map_err(|e| local(&e))?;
            dirs.insert(format!("objects/{}", &o.id[..2]));
            file(
                &format!("objects/{}/{}", &o.id[..2], &o.id[2..]),
                compressed,
            );
        }
        out.extend(dirs.into_iter().map(|d| (d, None)));
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

pub use crate::model::url::without_credentials;

/// The submodules a `.gitmodules` file declares: (path, URL), relative
/// URLs (`../lib.git`, `./lib`) resolved against `base`, the URL of the
/// repository that has the file, as git does. A path must stay inside the
/// checkout, and a URL must be remote (`https://`, `http://`, `ssh://`,
/// `git://` or `user@host:path`): a repository cannot make kiln read the
/// machine's own files.
pub fn submodules(gitmodules: &[u8], base: &str) -> Result<Vec<(String, String)>, String> {
    let text =
        std::str::from_utf8(gitmodules).map_err(|_| "`.gitmodules` is not UTF-8".to_string())?;
    let config: gix::config::File = text
        .parse()
        .map_err(|e: gix::config::parse::Error| format!("cannot read `.gitmodules`: {e}"))?;
    let mut out = Vec::new();
    for section in config.sections_by_name("submodule").into_iter().flatten() {
        let name = section
            .header()
            .subsection_name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        let (Some(path), Some(url)) = (section.value("path"), section.value("url")) else {
            return Err(format!("the submodule `{name}` has no `path` or no `url`"));
        };
        let path = path.to_string().trim_matches('/').to_string();
        if path.is_empty()
            || path.starts_with('/')
            || path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(format!(
                "the submodule `{name}` has the path `{path}`, which leaves the checkout"
            ));
        }
        let url = url.to_string();
        let url = if url.starts_with("../") || url.starts_with("./") {
            relative_url(base, &url)
        } else {
            url
        };
        let remote = ["https://", "http://", "ssh://", "git://"]
            .iter()
            .any(|s| url.starts_with(s))
            || (!url.contains("://") && url.split_once(':').is_some_and(|(h, _)| h.contains('@')));
        if !remote {
            return Err(format!(
                "the submodule `{name}` has the URL `{url}`, which is not a remote repository"
            ));
        }
        out.push((path, url));
    }
    Ok(out)
}

/// `rel` (`../x`, `./x`) against the URL `base`, as git resolves a
/// submodule's relative URL against its superproject's.
fn relative_url(base: &str, rel: &str) -> String {
    let mut base = base.trim_end_matches('/').to_string();
    let mut rest = rel;
    loop {
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("../") {
            rest = r;
            if let Some(i) = base.rfind('/').filter(|i| !base[..*i].ends_with('/')) {
                base.truncate(i);
            }
        } else {
            break;
        }
    }
    format!("{base}/{rest}")
}

/// An error with its causes, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_stay_out_of_trees() {
        assert_eq!(
            without_credentials("https://bot:s3cret@example.com/o/r.git"),
            "https://example.com/o/r.git"
        );
        assert_eq!(
            without_credentials("https://example.com/o/r.git"),
            "https://example.com/o/r.git"
        );
        assert_eq!(
            without_credentials("git@github.com:o/r.git"),
            "git@github.com:o/r.git"
        );
        assert_eq!(
            without_credentials("ssh://git@example.com/o/r.git"),
            "ssh://git@example.com/o/r.git"
        );
        assert_eq!(
            without_credentials("ssh://git:pw@example.com/o/r.git"),
            "ssh://example.com/o/r.git"
        );
        assert_eq!(
            without_credentials("https://TOKEN@example.com/o/r.git"),
            "https://example.com/o/r.git"
        );
    }

    #[test]
    fn submodules_resolve_relative_urls_and_stay_inside() {
        let modules = b"[submodule \"lib\"]\n\tpath = vendor/lib\n\turl = ../lib.git\n[submodule \"x\"]\n\tpath = x\n\turl = https://example.com/x.git\n";
        assert_eq!(
            submodules(modules, "https://example.com/o/app.git").unwrap(),
            [
                (
                    "vendor/lib".to_string(),
                    "https://example.com/o/lib.git".to_string()
                ),
                ("x".to_string(), "https://example.com/x.git".to_string())
            ]
        );
        assert_eq!(
            relative_url("https://h/a/b.git", "./sub"),
            "https://h/a/b.git/sub"
        );
        assert_eq!(
            relative_url("https://h/a/b.git", "../../c.git"),
            "https://h/c.git"
        );
        for bad in [
            "[submodule \"a\"]\npath = ../out\nurl = https://h/a.git\n",
            "[submodule \"a\"]\npath = a\nurl = /etc\n",
            "[submodule \"a\"]\npath = a\nurl = file:///etc\n",
            "[submodule \"a\"]\npath = a\n",
        ] {
            assert!(
                submodules(bad.as_bytes(), "https://h/r.git").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn commit_ids() {
        assert!(is_commit("1098e05e93c787431dd85695ea5905a4bf7fba0c"));
        assert!(!is_commit("v1.2.3"));
    }
}
