//! Where an export may go.
//!
//! A destination is resolved once, before anything is written: made
//! absolute, every existing parent resolved physically (symlinks followed,
//! as the kernel will follow them), and `..` after a component that does
//! not exist yet collapsed lexically (the exporter creates those
//! components as plain directories, so that is where the path will lead).
//! The final component is never followed: an export replaces what is
//! there, not what a symlink there points to. Every later operation uses
//! the resolved path, so the path checked is the path written.
//!
//! A resolved destination is refused when it equals or contains a
//! protected path (the filesystem root, the home and working directories,
//! the project, every spec file and context, the state directory), or lies
//! inside the state directory. And an export replaces only what kiln
//! exported itself (recorded in the state dir, or marked with the
//! `user.kiln.export` extended attribute), an empty directory, or nothing.

use crate::diag::Code;
use crate::diag::Diagnostic;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// The extended attribute kiln puts on the root of every export.
pub const MARKER: &str = "user.kiln.export";

/// Paths an export must never replace or contain.
#[derive(Clone, Debug, Default)]
pub struct Protected {
    /// (resolved path, what it is), e.g. `("/p/ctx", "the context")`.
    paths: Vec<(PathBuf, String)>,
    /// The state directory: nothing inside it is a destination.
    state: Option<PathBuf>,
}

impl Protected {
    pub fn new() -> Protected {
        let mut p = Protected::default();
        p.add(Path::new("/"), "the filesystem root");
        if let Some(home) = std::env::var_os("HOME") {
            p.add(Path::new(&home), "your home directory");
        }
        if let Ok(cwd) = std::env::current_dir() {
            p.add(&cwd, "the working directory");
        }
        p
    }

    /// Protect `path` (resolved here), described as `what`.
    pub fn add(&mut self, path: &Path, what: impl Into<String>) {
        if let Ok(r) = resolve_lexically(path) {
            let r = fs::canonicalize(&r).unwrap_or(r);
            self.paths.push((r, what.into()));
        }
    }

    pub fn state_dir(&mut self, path: &Path) {
        self.add(path, "the state directory");
        if let Ok(r) = resolve_lexically(path) {
            self.state = Some(fs::canonicalize(&r).unwrap_or(r));
        }
    }
}

fn refuse(shown: &str, why: String, help: &str) -> Diagnostic {
    Diagnostic::new(
        Code::EXPORT_DANGEROUS,
        format!("refusing to export to `{shown}`: {why}"),
    )
    .with_help(help.to_string())
}

const PICK_NEW: &str =
    "an export replaces its destination whole; pick a new directory such as `dist/`";

/// Resolve `dest` and check it against `protected`. Returns the resolved
/// path to write to.
pub fn check(dest: &Path, protected: &Protected) -> Result<PathBuf, Diagnostic> {
    let shown = dest.display().to_string();
    if dest.as_os_str().is_empty() {
        return Err(
            Diagnostic::new(Code::EXPORT_EMPTY, "the export destination is empty")
                .with_help("name a directory or file, e.g. `-o dist` or `to=\"dist/app.tar\"`"),
        );
    }
    let resolved = resolve(dest).map_err(|e| {
        Diagnostic::io("cannot resolve the export destination", dest, &e)
            .with_help("check that the destination's directories exist and can be read")
    })?;
    if resolved.file_name().is_none() {
        return Err(refuse(&shown, "it is the filesystem root".into(), PICK_NEW));
    }
    if let Some(state) = &protected.state
        && resolved.starts_with(state)
        && resolved != *state
    {
        return Err(refuse(
            &shown,
            format!("it is inside the state directory `{}`", state.display()),
            "the state directory belongs to kiln; export somewhere else, such as `dist/`",
        ));
    }
    for (p, what) in &protected.paths {
        if *p == resolved {
            return Err(refuse(
                &shown,
                format!("it is {what} (`{}`)", p.display()),
                PICK_NEW,
            ));
        }
        if p.starts_with(&resolved) {
            return Err(refuse(
                &shown,
                format!("it contains {what} (`{}`)", p.display()),
                PICK_NEW,
            ));
        }
    }
    Ok(resolved)
}

/// Refuse a spec's export that would land outside its project (the
/// spec's directory, resolved).
pub fn check_inside(dest: &Path, resolved: &Path, project: &Path) -> Result<(), Diagnostic> {
    let project = resolve_lexically(project)
        .map(|p| fs::canonicalize(&p).unwrap_or(p))
        .unwrap_or_else(|_| project.to_path_buf());
    if resolved.starts_with(&project) {
        return Ok(());
    }
    Err(Diagnostic::new(
        Code::EXPORT_OUTSIDE,
        format!(
            "refusing to export to `{}` (`{}`): it is outside the project `{}`",
            dest.display(),
            resolved.display(),
            project.display()
        ),
    )
    .with_note("a spec's exports stay below its directory, so a spec from anywhere cannot write elsewhere on this machine"))
}

/// Refuse a destination whose directories another user could change
/// while kiln builds (and so redirect the export): every existing
/// directory above it must be kiln's user's or root's, and not writable
/// by every user unless sticky (`fsutil::trusted_path`).
pub fn check_trusted(dest: &Path, resolved: &Path) -> Result<(), Diagnostic> {
    let Some(parent) = resolved.parent() else {
        return Ok(());
    };
    match crate::fsutil::trusted_path(parent) {
        Ok(p) if p == parent => Ok(()),
        Ok(p) => Err(Diagnostic::new(
            Code::EXPORT_UNTRUSTED,
            format!(
                "refusing to export to `{}`: its directory changed while it was checked (now `{}`)",
                dest.display(),
                p.display()
            ),
        )
        .with_help("build again; if it happens again, another program is moving the destination's directories")),
        Err(u) => Err(Diagnostic::new(
            Code::EXPORT_UNTRUSTED,
            format!(
                "refusing to export to `{}`: `{}` cannot be trusted ({})",
                dest.display(),
                u.path.display(),
                u.why
            ),
        )
        .with_note("another user could move or replace it while kiln builds, and so make kiln write where they choose")
        .with_help("export into a directory of your own (as the user who owns the project), or build as that user")),
    }
}

/// Whether what is at `resolved` may be replaced: nothing, an empty
/// directory, or an export kiln wrote (`recorded`: the state dir's record
/// matches it; otherwise the marker attribute decides).
pub fn check_replaceable(dest: &Path, resolved: &Path, recorded: bool) -> Result<(), Diagnostic> {
    let meta = match fs::symlink_metadata(resolved) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Diagnostic::io(
                "cannot inspect the export destination",
                dest,
                &e,
            ));
        }
    };
    if recorded || has_marker(resolved) {
        return Ok(());
    }
    if meta.is_dir() && fs::read_dir(resolved).is_ok_and(|mut rd| rd.next().is_none()) {
        return Ok(());
    }
    let kind = if meta.is_dir() {
        "a directory"
    } else if meta.file_type().is_symlink() {
        "a symlink"
    } else {
        "a file"
    };
    Err(Diagnostic::new(
        Code::EXPORT_EXISTS,
        format!(
            "refusing to export to `{}`: it is {kind} that kiln did not export",
            dest.display()
        ),
    )
    .with_help(
        "an export replaces its destination whole, so kiln replaces only what it exported itself; remove it or pick another destination",
    ))
}

/// Whether the root of an export carries kiln's marker.
pub fn has_marker(path: &Path) -> bool {
    let mut buf = [0u8; 16];
    rustix::fs::lgetxattr(path, MARKER, &mut buf).is_ok()
}

/// Mark the root of an export as kiln's (where the filesystem allows).
pub fn set_marker(path: &Path) {
    let _ = rustix::fs::lsetxattr(path, MARKER, b"1", rustix::fs::XattrFlags::empty());
}

/// `dest` made absolute with `..` and `.` collapsed, without looking at
/// the filesystem.
fn resolve_lexically(dest: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(dest)?;
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    Ok(out)
}

/// See the module documentation.
pub fn resolve(dest: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(dest)?;
    let comps: Vec<Component> = abs.components().collect();
    let mut cur = PathBuf::from("/");
    // Whether `cur` exists (then it is canonical).
    let mut exists = true;
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        match c {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                cur.pop();
                if !exists {
                    exists = cur.exists();
                    if exists {
                        cur = fs::canonicalize(&cur)?;
                    }
                }
            }
            Component::Normal(n) => {
                let next = cur.join(n);
                if exists && !last {
                    match fs::canonicalize(&next) {
                        Ok(c) => cur = c,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            // A dangling symlink here would be created through.
                            if fs::symlink_metadata(&next).is_ok() {
                                return Err(io::Error::other(format!(
                                    "`{}` is a symlink to a place that does not exist",
                                    next.display()
                                )));
                            }
                            exists = false;
                            cur = next;
                        }
                        Err(e) => return Err(e),
                    }
                } else {
                    cur = next;
                }
            }
        }
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_dot_after_a_missing_component_is_collapsed() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        fs::create_dir(root.join("ctx")).unwrap();
        std::os::unix::fs::symlink(root.join("ctx"), root.join("link")).unwrap();
        let cases = [
            ("nx/../ctx", root.join("ctx")),
            ("nx/deeper/../../ctx", root.join("ctx")),
            ("ctx/./sub/../out", root.join("ctx/out")),
            ("link/out", root.join("ctx/out")),
            // The last component is not followed.
            ("link", root.join("link")),
            ("nx/..", root.clone()),
        ];
        for (rel, want) in cases {
            assert_eq!(resolve(&root.join(rel)).unwrap(), want, "{rel}");
        }
    }

    #[test]
    fn protected_paths_cannot_be_replaced_or_contained() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        let project = root.join("p");
        fs::create_dir_all(project.join("ctx/src")).unwrap();
        fs::create_dir_all(project.join(".kiln")).unwrap();
        fs::write(project.join("kiln.kdl"), "").unwrap();
        let mut protected = Protected::default();
        protected.add(&project, "the project");
        protected.add(&project.join("ctx"), "the context");
        protected.add(&project.join("kiln.kdl"), "the spec file");
        protected.state_dir(&project.join(".kiln"));
        for bad in [
            "p/nx/../ctx",
            "p/nx/../../p",
            "p/nx/../../../",
            "p/kiln.kdl",
            "p/.kiln",
            "p/.kiln/blobs",
            "p/.kiln/lock",
            "p",
        ] {
            assert!(check(&root.join(bad), &protected).is_err(), "{bad}");
        }
        for good in ["p/dist", "p/ctx/dist", "p/nx/../dist", "elsewhere"] {
            assert!(check(&root.join(good), &protected).is_ok(), "{good}");
        }
        assert_eq!(
            check(Path::new(""), &protected).unwrap_err().code,
            Code::EXPORT_EMPTY
        );
    }

    #[test]
    fn only_nothing_empty_dirs_and_kiln_exports_are_replaceable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        fs::create_dir(p.join("empty")).unwrap();
        fs::create_dir_all(p.join("src/x")).unwrap();
        fs::write(p.join("file"), "mine").unwrap();
        assert!(check_replaceable(&p.join("none"), &p.join("none"), false).is_ok());
        assert!(check_replaceable(&p.join("empty"), &p.join("empty"), false).is_ok());
        assert!(check_replaceable(&p.join("src"), &p.join("src"), false).is_err());
        assert!(check_replaceable(&p.join("file"), &p.join("file"), false).is_err());
        assert!(check_replaceable(&p.join("src"), &p.join("src"), true).is_ok());
        set_marker(&p.join("file"));
        if has_marker(&p.join("file")) {
            assert!(check_replaceable(&p.join("file"), &p.join("file"), false).is_ok());
        }
    }
}
