//! Reading a spec: pick the front end (KDL or Dockerfile), read the files,
//! compile the graph. Lowered KDL files come from the parse cache when
//! their text is unchanged.

use crate::diag::Code;
use crate::diag::{Diagnostic, Sources};
use crate::frontend::ast::Spec;
use crate::frontend::kdl::display_path;
use crate::ir::{Graph, compile};
use std::path::{Path, PathBuf};

/// Where the spec and its context are, and the args given to it.
#[derive(Clone, Debug, Default)]
pub struct SpecInput {
    /// The build context: the directory `copy` reads from.
    pub context: PathBuf,
    /// The spec file; `None` looks in the context for `kiln.kdl`, then
    /// `Dockerfile`, then `Containerfile`.
    pub file: Option<PathBuf>,
    /// `--arg NAME=VALUE`s.
    pub args: Vec<(String, String)>,
    /// `--project-root`: where includes may come from.
    pub project_root: Option<PathBuf>,
}

impl SpecInput {
    pub fn spec_path(&self) -> PathBuf {
        if let Some(f) = &self.file {
            return f.clone();
        }
        let kdl = self.context.join("kiln.kdl");
        if kdl.exists() {
            return kdl;
        }
        ["Dockerfile", "Containerfile"]
            .iter()
            .map(|n| self.context.join(n))
            .find(|p| p.is_file())
            .unwrap_or(kdl)
    }
}

/// A spec read and compiled; warnings for the caller to show.
pub struct Loaded {
    pub spec: Spec,
    pub graph: Graph,
    pub warnings: Vec<Diagnostic>,
}

/// The state directory: the one given (`--state-dir`, `KILN_STATE_DIR`);
/// else a `.kiln` directory beside the spec, where one already is (kiln
/// kept a state directory per project before it had one per machine);
/// else the user's cache directory, shared by all their projects
/// (`$XDG_CACHE_HOME/kiln`, `~/.cache/kiln`); else, with no home to put
/// it in, a new `.kiln` beside the spec.
pub fn state_dir(given: &Option<PathBuf>, spec_path: &Path) -> PathBuf {
    let xdg = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    // `HOME`, else the user's entry in the password database.
    state_dir_in(given, spec_path, xdg, std::env::home_dir())
}

fn state_dir_in(
    given: &Option<PathBuf>,
    spec_path: &Path,
    xdg_cache: Option<PathBuf>,
    home: Option<PathBuf>,
) -> PathBuf {
    if let Some(g) = given {
        return g.clone();
    }
    let beside = spec_dir(spec_path).join(".kiln");
    // Only a directory: a `.kiln` symlink a project carries is not
    // followed to wherever it points.
    if std::fs::symlink_metadata(&beside).is_ok_and(|m| m.is_dir()) {
        return beside;
    }
    // The XDG base directory rules: a relative value is ignored.
    let cache = xdg_cache
        .filter(|p| p.is_absolute())
        .or_else(|| home.filter(|p| p.is_absolute()).map(|h| h.join(".cache")));
    match cache {
        Some(c) => c.join("kiln"),
        None => beside,
    }
}

/// The directory a spec is in (`.` for a bare file name).
fn spec_dir(spec_path: &Path) -> &Path {
    match spec_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// What names one project inside a shared state directory: its spec's
/// absolute path, hashed. Its build records, memo and kept copies live
/// under this name; everything content-addressed is shared.
pub fn project_scope(spec_path: &Path) -> String {
    // One project whichever way its spec is named (`../p/kiln.kdl`, a
    // symlinked folder): the spec's directory with links and `..` resolved.
    let path = match (
        std::fs::canonicalize(spec_dir(spec_path)),
        spec_path.file_name(),
    ) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => std::path::absolute(spec_path).unwrap_or(spec_path.to_path_buf()),
    };
    blake3::hash(path.as_os_str().as_encoded_bytes()).to_hex()[..32].to_string()
}

/// Lowered spec files in the state dir's `parse/` (emptied by `kiln gc`).
/// Each entry carries its key and a checksum (see `store::checked`): an
/// entry that was damaged, or copied under another key, reads as absent
/// and the file is parsed again.
pub struct DirParseCache(pub crate::store::layout::Layout);

const PARSE_MAGIC: &[u8] = b"KILNPARSE3";

impl crate::frontend::ParseCache for DirParseCache {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let body = crate::store::checked::read(&self.0.parse_entry(key), PARSE_MAGIC)?;
        let rest = body.strip_prefix(key.as_bytes())?.strip_prefix(&[0])?;
        Some(rest.to_vec())
    }

    fn put(&self, key: &str, bytes: &[u8]) {
        let mut body = key.as_bytes().to_vec();
        body.push(0);
        body.extend_from_slice(bytes);
        let _ = crate::store::checked::write(&self.0.parse_entry(key), PARSE_MAGIC, &body);
    }
}

/// Read and compile a spec.
pub fn load(
    input: &SpecInput,
    sources: &Sources,
    cache: Option<&dyn crate::frontend::ParseCache>,
) -> Result<Loaded, Vec<Diagnostic>> {
    let path = input.spec_path();
    let options = crate::ir::CompileOptions {
        args: input.args.clone(),
        context_dir: input.context.clone(),
        ignore_file: None,
    };
    if crate::frontend::dockerfile::lower::is_dockerfile(&path) {
        let imported = crate::frontend::dockerfile::lower::load(
            &path,
            &display_path(&path),
            sources,
            &options.args,
        )?;
        // Build args went to the Dockerfile's `ARG`s; the spec declares none.
        // `NAME.dockerignore` beside the Dockerfile wins over the context's.
        let own = PathBuf::from(format!("{}.dockerignore", path.display()));
        let options = crate::ir::CompileOptions {
            args: Vec::new(),
            ignore_file: std::fs::symlink_metadata(&own).is_ok().then_some(own),
            ..options
        };
        let (graph, mut warnings) = compile(&imported.spec, &options, sources)?;
        // Of the import's notes, only unused build args matter to a build;
        // the rest are located errors when the stage concerned is built.
        warnings.extend(
            imported
                .notes
                .into_iter()
                .filter(|n| n.code == Code::DOCKERFILE_UNUSED_ARG),
        );
        return Ok(Loaded {
            spec: imported.spec,
            graph,
            warnings,
        });
    }
    let reading = crate::frontend::kdl::LoadOptions {
        cache,
        project_root: input.project_root.as_deref(),
    };
    let spec = match crate::frontend::kdl::load_with(&path, &display_path(&path), sources, reading)
    {
        Ok(spec) => spec,
        Err(e) => {
            // Report the compiler's errors with the reader's, in one run.
            let mut diags = e.diagnostics;
            if let Some(partial) = e.partial
                && let Err(more) = compile(&partial, &options, sources)
            {
                diags.extend(more);
            }
            return Err(diags);
        }
    };
    let (graph, mut warnings) = compile(&spec, &options, sources)?;
    warnings.splice(0..0, spec.warnings.iter().cloned());
    Ok(Loaded {
        spec,
        graph,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::ParseCache;

    #[test]
    fn parse_cache_entries_are_checked_against_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DirParseCache(crate::store::layout::Layout::new(dir.path()));
        cache.put("k1", b"fragment one");
        assert_eq!(cache.get("k1").as_deref(), Some(&b"fragment one"[..]));
        // Copied under another key: not trusted.
        std::fs::create_dir_all(dir.path().join("parse")).unwrap();
        std::fs::copy(dir.path().join("parse/k1"), dir.path().join("parse/k2")).unwrap();
        assert_eq!(cache.get("k2"), None);
        // Edited in place: not trusted.
        let p = dir.path().join("parse/k1");
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - 3] = b'X';
        std::fs::write(&p, bytes).unwrap();
        assert_eq!(cache.get("k1"), None);
    }

    #[test]
    fn the_state_directory_is_the_machine_s_unless_a_project_has_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("kiln.kdl");
        let xdg = Some(PathBuf::from("/x/cache"));
        let home = Some(PathBuf::from("/home/u"));
        let given = Some(PathBuf::from("/given"));
        assert_eq!(
            state_dir_in(&given, &spec, xdg.clone(), home.clone()),
            PathBuf::from("/given")
        );
        assert_eq!(
            state_dir_in(&None, &spec, xdg.clone(), home.clone()),
            PathBuf::from("/x/cache/kiln")
        );
        assert_eq!(
            state_dir_in(&None, &spec, None, home.clone()),
            PathBuf::from("/home/u/.cache/kiln")
        );
        // A relative XDG_CACHE_HOME is ignored, as the XDG rules say.
        let relative = Some(PathBuf::from("cache"));
        assert_eq!(
            state_dir_in(&None, &spec, relative, home.clone()),
            PathBuf::from("/home/u/.cache/kiln")
        );
        assert_eq!(
            state_dir_in(&None, &spec, None, None),
            dir.path().join(".kiln")
        );
        assert_eq!(
            state_dir_in(&None, Path::new("kiln.kdl"), None, None),
            PathBuf::from("./.kiln")
        );
        // An existing `.kiln` directory beside the spec wins; a symlink does not.
        std::os::unix::fs::symlink("/tmp", dir.path().join(".kiln")).unwrap();
        assert_eq!(
            state_dir_in(&None, &spec, xdg.clone(), home.clone()),
            PathBuf::from("/x/cache/kiln")
        );
        std::fs::remove_file(dir.path().join(".kiln")).unwrap();
        std::fs::create_dir(dir.path().join(".kiln")).unwrap();
        assert_eq!(
            state_dir_in(&None, &spec, xdg, home),
            dir.path().join(".kiln")
        );
    }

    #[test]
    fn a_project_is_named_by_its_spec_s_absolute_path() {
        let a = project_scope(Path::new("/p/kiln.kdl"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, project_scope(Path::new("/q/kiln.kdl")));
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            project_scope(Path::new("kiln.kdl")),
            project_scope(&cwd.join("kiln.kdl"))
        );
        // `..` and symlinked folders name the same project.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("p")).unwrap();
        std::os::unix::fs::symlink("p", dir.path().join("link")).unwrap();
        let direct = project_scope(&dir.path().join("p/kiln.kdl"));
        assert_eq!(project_scope(&dir.path().join("link/kiln.kdl")), direct);
        assert_eq!(project_scope(&dir.path().join("p/../p/kiln.kdl")), direct);
    }
}
