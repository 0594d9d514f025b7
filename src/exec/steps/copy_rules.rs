//! `copy` semantics, following Docker's COPY: which source entries a
//! pattern picks, and where they land in the destination tree.
//!
//! - A source directory copies its contents, not itself.
//! - A file goes to `DEST` itself, unless `DEST` ends with `/`, is an
//!   existing directory, or several sources are copied: then to `DEST/name`.
//! - Globs (`*`, `?`, `[…]`, `**`) match within the source; matching
//!   nothing is an error.
//! - A leading `/` in a source means the source's root.

use crate::diag::Code;
use crate::diag::{Diagnostic, Span, Spanned};
use crate::model::tree::{self, Entry, Kind, Links, Tree, TreeError};

/// What one source pattern picked: a file (or symlink) or a directory's contents.
#[derive(Clone, Debug)]
pub struct Picked {
    /// Base name of the matched path, for `DEST/name`.
    pub name: String,
    /// The path matched in the source.
    pub path: String,
    pub is_dir: bool,
    /// For a file: `("", entry)`. For a directory: every entry below it,
    /// relative to it, in order.
    pub items: Vec<(String, Entry)>,
    /// With `parents`, the leading part of `path` that is not kept: what
    /// came before a `/./` in the source (BuildKit's pivot), or nothing.
    pub pivot: String,
}

fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

fn tree_error(e: TreeError, span: Span, source: &str) -> Diagnostic {
    match e {
        TreeError::Escapes { .. } | TreeError::DotDotEscapes(_) => {
            Diagnostic::new(Code::COPY_ESCAPE, format!("{e}"))
                .with_label(span, format!("leads outside {source}"))
        }
        other => {
            Diagnostic::new(Code::COPY_SOURCE, format!("{other}")).with_label(span, "this source")
        }
    }
}

/// What picking some patterns reads of a stage's tree, when that is a few
/// paths: every path on the way to each pattern's fixed part (its
/// components before the first one with a glob) and everything below
/// that part.
#[derive(Debug, PartialEq, Eq)]
pub struct Reads {
    ways: Vec<String>,
    /// Each fixed part, and whether a glob follows it.
    below: Vec<(String, bool)>,
}

/// What [`pick`] reads for `patterns`; `None` when it may read anything (a
/// glob in a first component, the root itself, a path that is not one).
pub fn reads(patterns: &[Spanned<String>], links: Links) -> Option<Reads> {
    let mut r = Reads {
        ways: Vec::new(),
        below: Vec::new(),
    };
    for pat in patterns {
        let parts = tree::components(&pat.value, links).ok()?;
        let fixed = parts
            .iter()
            .take_while(|p| !p.contains(['*', '?', '[', '{', '\\']))
            .count();
        if fixed == 0 {
            return None;
        }
        for i in 1..=fixed {
            r.ways.push(parts[..i].join("/"));
        }
        r.below
            .push((parts[..fixed].join("/"), fixed < parts.len()));
    }
    Some(r)
}

impl Reads {
    /// The paths read, as ranges `[from, to)` in path order.
    pub fn ranges(&self) -> Vec<(String, String)> {
        let ways = self.ways.iter().map(|w| (w.clone(), format!("{w}\0")));
        // '0' sorts right after '/'.
        let below = self
            .below
            .iter()
            .map(|(b, _)| (format!("{b}/"), format!("{b}0")));
        ways.chain(below).collect()
    }

    /// Whether picking in `part`, a tree holding the entries of
    /// [`Reads::ranges`] of a larger one, reads nothing else: no link on
    /// the way to a fixed part, and none a glob below one may match (a
    /// link leads anywhere).
    pub fn enough(&self, part: &Tree) -> bool {
        let link = |e: &Entry| matches!(e.kind, Kind::Symlink { .. });
        !self.ways.iter().any(|w| part.get(w).is_some_and(link))
            && !self
                .below
                .iter()
                .any(|(b, glob)| *glob && part.descendants(b).any(|(_, e)| link(e)))
    }
}

/// Pick the entries each source pattern names. `source` names the place
/// for messages ("the context", "stage `build`").
pub fn pick(
    tree: &Tree,
    patterns: &[Spanned<String>],
    links: Links,
    source: &str,
) -> Result<Vec<Picked>, Diagnostic> {
    let mut out = Vec::new();
    for pat in patterns {
        // `a/b/./c/*.txt`: with `parents`, paths are kept from `c` on.
        let pivot = match pat.value.split_once("/./") {
            Some((before, _)) => tree::components(before, links)
                .map_err(|e| tree_error(e, pat.span, source))?
                .join("/"),
            None => String::new(),
        };
        let clean = tree::components(&pat.value, links)
            .map_err(|e| tree_error(e, pat.span, source))?
            .join("/");
        let mut matched: Vec<String> = Vec::new();
        if is_glob(&clean) {
            let glob = tree::glob(&clean)
                .map_err(|e| {
                    Diagnostic::new(
                        Code::COPY_GLOB,
                        format!("bad pattern `{}`: {}", pat.value, e.kind()),
                    )
                    .with_label(pat.span, "not a valid glob")
                    .with_help("use `*`, `?`, `[abc]` and `**`; escape a literal `*` as `\\*`")
                })?
                .compile_matcher();
            for path in tree.entries.keys() {
                if glob.is_match(path)
                    && !matched.iter().any(|m| path.starts_with(&format!("{m}/")))
                {
                    matched.push(path.clone());
                }
            }
        } else {
            matched.push(clean.clone());
        }
        if matched.is_empty() {
            return Err(Diagnostic::new(
                Code::COPY_NO_MATCH,
                format!("`{}` matched nothing in {source}", pat.value),
            )
            .with_label(pat.span, "no file matches"));
        }
        for m in matched {
            let resolved = tree
                .resolve(&m, true, links)
                .map_err(|e| tree_error(e, pat.span, source))?;
            let (is_dir, items) = if resolved.is_empty() {
                (
                    true,
                    tree.entries
                        .iter()
                        .map(|(p, e)| (p.clone(), e.clone()))
                        .collect(),
                )
            } else {
                match tree.get(&resolved) {
                    None => {
                        return Err(Diagnostic::new(
                            Code::COPY_NO_MATCH,
                            format!("`{}` does not exist in {source}", pat.value),
                        )
                        .with_label(pat.span, "not found"));
                    }
                    Some(e) if e.is_dir() => {
                        let prefix = resolved.len() + 1;
                        (
                            true,
                            tree.descendants(&resolved)
                                .map(|(p, e)| (p[prefix..].to_string(), e.clone()))
                                .collect(),
                        )
                    }
                    Some(e) => (false, vec![(String::new(), e.clone())]),
                }
            };
            out.push(Picked {
                name: tree::basename(&m).to_string(),
                path: resolved,
                is_dir,
                items,
                pivot: pivot.clone(),
            });
        }
    }
    Ok(out)
}

/// Leave out what Docker's `--exclude` patterns name. A pattern is matched
/// against each entry's path below its source (a file source: its name);
/// matching a directory leaves out everything in it.
pub fn exclude(picked: &mut Vec<Picked>, patterns: &[String]) -> Result<(), Diagnostic> {
    if patterns.is_empty() {
        return Ok(());
    }
    let mut set = globset::GlobSetBuilder::new();
    for p in patterns {
        let glob = tree::glob(tree::exclude_pattern(p)).map_err(|e| {
            Diagnostic::new(
                Code::COPY_GLOB,
                format!("bad exclude pattern `{p}`: {}", e.kind()),
            )
        })?;
        set.add(glob);
    }
    let set = set
        .build()
        .map_err(|e| Diagnostic::new(Code::COPY_GLOB, format!("bad exclude pattern: {e}")))?;
    let excluded = |path: &str| {
        let mut prefix = path;
        loop {
            if set.is_match(prefix) {
                return true;
            }
            match prefix.rfind('/') {
                Some(i) => prefix = &prefix[..i],
                None => return false,
            }
        }
    };
    picked.retain_mut(|p| {
        if p.is_dir {
            p.items.retain(|(rel, _)| rel.is_empty() || !excluded(rel));
            true
        } else {
            !excluded(&p.name)
        }
    });
    Ok(())
}

/// Metadata a copy imposes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Overrides {
    pub chmod: Option<u32>,
    pub owner: Option<(u32, u32)>,
}

impl Overrides {
    fn apply(&self, mut e: Entry) -> Entry {
        if let Some(m) = self.chmod
            && !matches!(e.kind, Kind::Symlink { .. })
        {
            e.mode = m;
        }
        if let Some((u, g)) = self.owner {
            e.uid = u;
            e.gid = g;
        }
        e
    }
}

/// Place picked entries into `tree` at `dest` (already substituted;
/// relative to `workdir`).
pub fn place(
    tree: &mut Tree,
    picked: &[Picked],
    dest: &str,
    workdir: &str,
    ov: Overrides,
    parents: bool,
    span: Span,
) -> Result<(), Diagnostic> {
    let fail = |e: TreeError| {
        Diagnostic::new(Code::COPY_DEST, format!("cannot copy to `{dest}`: {e}"))
            .with_label(span, "in this copy")
            .with_help("the destination path crosses a file where a directory is needed, or replaces a directory with a file")
    };
    let target = tree::normalize(dest, workdir);
    let target = tree.resolve(&target, true, Links::Rootfs).map_err(fail)?;
    let several = picked.len() > 1;
    let into_dir = parents
        || dest.ends_with('/')
        || dest.ends_with("/.")
        || dest == "."
        || tree.is_dir(&target);
    if several && !into_dir {
        return Err(Diagnostic::new(
            Code::COPY_DEST,
            format!(
                "`{dest}` must be a directory: the sources matched {} entries",
                picked.len()
            ),
        )
        .with_label(span, "several sources")
        .with_help(format!("end the destination with `/`: `\"{dest}/\"`")));
    }
    let dir_template = Entry::dir(
        0o755,
        ov.owner.map_or(0, |o| o.0),
        ov.owner.map_or(0, |o| o.1),
    );
    for p in picked {
        // `--parents`: each source keeps its path below the destination
        // (from its pivot on, when it has one).
        let kept = match p.path.strip_prefix(&p.pivot) {
            Some(rest) if !p.pivot.is_empty() => rest.trim_start_matches('/'),
            _ => p.path.as_str(),
        };
        let base = if parents && p.is_dir {
            tree::join(&target, kept)
        } else {
            target.clone()
        };
        if p.is_dir {
            tree.mkdir_all(&base, &dir_template).map_err(fail)?;
            for (rel, e) in &p.items {
                let at = tree::join(&base, rel);
                tree.put(&at, ov.apply(e.clone()), true).map_err(fail)?;
            }
        } else {
            let at = if parents {
                tree::join(&target, kept)
            } else if into_dir {
                tree::join(&target, &p.name)
            } else {
                target.clone()
            };
            tree.mkdir_all(tree::parent(&at), &dir_template)
                .map_err(fail)?;
            let Some((_, e)) = p.items.first() else {
                continue;
            };
            tree.put(&at, ov.apply(e.clone()), false).map_err(fail)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::SourceId;
    use crate::model::digest::BlobDigest;

    fn file(n: u8) -> Entry {
        Entry {
            kind: Kind::File {
                blob: BlobDigest([n; 32]),
                size: 1,
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    fn ctx() -> Tree {
        let mut t = Tree::new();
        let d = Entry::dir(0o755, 0, 0);
        t.mkdir_all("src/sub", &d).unwrap();
        t.put("src/a.c", file(1), false).unwrap();
        t.put("src/b.c", file(2), false).unwrap();
        t.put("src/sub/c.h", file(3), false).unwrap();
        t.put("README", file(4), false).unwrap();
        t
    }

    fn sp(s: &str) -> Spanned<String> {
        Spanned::new(Span::new(SourceId(0), 0, 1), s.to_string())
    }

    #[track_caller]
    fn check(sources: &[&str], dest: &str, workdir: &str, expected: &[&str]) {
        let pats: Vec<_> = sources.iter().map(|s| sp(s)).collect();
        let picked = pick(&ctx(), &pats, Links::Confined, "the context").unwrap();
        let mut out = Tree::new();
        place(
            &mut out,
            &picked,
            dest,
            workdir,
            Overrides::default(),
            false,
            Span::new(SourceId(0), 0, 1),
        )
        .unwrap();
        let got: Vec<&str> = out.entries.keys().map(String::as_str).collect();
        assert_eq!(got, expected, "copy {sources:?} {dest:?}");
    }

    /// Picking in the entries a pattern reads gives what picking in the
    /// whole tree gives, whenever they are said to be enough.
    #[test]
    fn what_a_pick_reads_is_enough_to_pick() {
        let mut t = ctx();
        let d = Entry::dir(0o755, 0, 0);
        t.mkdir_all("out/bin", &d).unwrap();
        t.put("out/bin/app", file(5), false).unwrap();
        t.put("out/bin.txt", file(6), false).unwrap();
        t.put("out/lib", file(7), false).unwrap();
        let link = |to: &str| Entry {
            kind: Kind::Symlink { target: to.into() },
            mode: 0o777,
            uid: 0,
            gid: 0,
        };
        t.put("via", link("/src"), false).unwrap();
        t.put("out/latest", link("/src/a.c"), false).unwrap();
        let within = |ranges: &[(String, String)]| {
            let mut part = Tree::new();
            for (p, e) in &t.entries {
                if ranges.iter().any(|(from, to)| p >= from && p < to) {
                    part.entries.insert(p.clone(), e.clone());
                }
            }
            part
        };
        let cases: &[(&[&str], bool)] = &[
            (&["/out/bin/app"], true),
            (&["/out/bin"], true),
            (&["out/bin/*"], true),
            (&["/out/bin/**/app", "/src/sub/c.h"], true),
            (&["/out/**/app"], false),
            (&["/out/bin/app", "/out/missing"], true),
            (&["/via/a.c"], false),
            (&["/out/latest"], false),
            (&["/out/*"], false),
            (&["/out"], true),
        ];
        for (sources, enough) in cases {
            let pats: Vec<_> = sources.iter().map(|s| sp(s)).collect();
            let reads = reads(&pats, Links::Rootfs).unwrap();
            let part = within(&reads.ranges());
            assert_eq!(reads.enough(&part), *enough, "{sources:?}");
            if *enough {
                let whole = pick(&t, &pats, Links::Rootfs, "s").map_err(|e| e.message);
                let partly = pick(&part, &pats, Links::Rootfs, "s").map_err(|e| e.message);
                assert_eq!(format!("{whole:?}"), format!("{partly:?}"), "{sources:?}");
                assert!(part.entries.len() < t.entries.len(), "{sources:?}");
            }
        }
        for any in [&["*.c"][..], &["/"], &["/src", "[ab]/x"], &["/{a,b}/x"]] {
            let pats: Vec<_> = any.iter().map(|s| sp(s)).collect();
            assert_eq!(reads(&pats, Links::Rootfs), None, "{any:?}");
        }
    }

    #[test]
    fn docker_copy_rules() {
        check(&["README"], "doc", "/", &["doc"]);
        check(&["README"], "doc/", "/", &["doc", "doc/README"]);
        check(&["/README"], "x", "/app", &["app", "app/x"]);
        check(
            &["src"],
            "out",
            "/",
            &["out", "out/a.c", "out/b.c", "out/sub", "out/sub/c.h"],
        );
        check(&["src/"], "/", "/", &["a.c", "b.c", "sub", "sub/c.h"]);
        check(&["src/*.c"], "o/", "/", &["o", "o/a.c", "o/b.c"]);
        check(&["src/**/*.h"], "o/", "/", &["o", "o/c.h"]);
        check(
            &["README", "src/a.c"],
            "o/",
            "/",
            &["o", "o/README", "o/a.c"],
        );
        check(
            &["."],
            "/",
            "/",
            &[
                "README",
                "src",
                "src/a.c",
                "src/b.c",
                "src/sub",
                "src/sub/c.h",
            ],
        );
    }

    #[test]
    fn no_match_and_escape_are_errors() {
        let t = ctx();
        let e = pick(&t, &[sp("nope/*.c")], Links::Confined, "the context").unwrap_err();
        assert_eq!(e.code, Code::COPY_NO_MATCH);
        let e = pick(&t, &[sp("missing")], Links::Confined, "the context").unwrap_err();
        assert_eq!(e.code, Code::COPY_NO_MATCH);
        let e = pick(&t, &[sp("../etc/passwd")], Links::Confined, "the context").unwrap_err();
        assert_eq!(e.code, Code::COPY_ESCAPE);
    }

    #[test]
    fn several_files_need_a_directory() {
        let picked = pick(&ctx(), &[sp("src/*.c")], Links::Confined, "the context").unwrap();
        let mut out = Tree::new();
        let e = place(
            &mut out,
            &picked,
            "one",
            "/",
            Overrides::default(),
            false,
            Span::new(SourceId(0), 0, 1),
        )
        .unwrap_err();
        assert!(e.message.contains("must be a directory"), "{}", e.message);
    }

    #[test]
    fn chmod_and_chown_apply_to_files_and_created_dirs() {
        let picked = pick(&ctx(), &[sp("src/a.c")], Links::Confined, "the context").unwrap();
        let mut out = Tree::new();
        let ov = Overrides {
            chmod: Some(0o600),
            owner: Some((10, 20)),
        };
        place(
            &mut out,
            &picked,
            "/d/e/",
            "/",
            ov,
            false,
            Span::new(SourceId(0), 0, 1),
        )
        .unwrap();
        let f = out.get("d/e/a.c").unwrap();
        assert_eq!((f.mode, f.uid, f.gid), (0o600, 10, 20));
        assert_eq!(out.get("d").unwrap().uid, 10);
    }

    #[test]
    fn exclude_matches_below_each_source() {
        let mut picked = pick(&ctx(), &[sp("src"), sp("README")], Links::Confined, "ctx").unwrap();
        exclude(&mut picked, &["*.c".to_string(), "README".to_string()]).unwrap();
        assert_eq!(picked.len(), 1);
        let rels: Vec<&str> = picked[0].items.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(rels, ["sub", "sub/c.h"]);
        // A directory pattern leaves out everything in it.
        let mut picked = pick(&ctx(), &[sp("src")], Links::Confined, "ctx").unwrap();
        exclude(&mut picked, &["sub/".to_string()]).unwrap();
        let rels: Vec<&str> = picked[0].items.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(rels, ["a.c", "b.c"]);
    }

    #[test]
    fn parents_keep_source_paths() {
        let picked = pick(
            &ctx(),
            &[sp("src/*.c"), sp("src/sub")],
            Links::Confined,
            "ctx",
        )
        .unwrap();
        let mut out = Tree::new();
        let span = Span::new(SourceId(0), 0, 1);
        place(
            &mut out,
            &picked,
            "/o",
            "/",
            Overrides::default(),
            true,
            span,
        )
        .unwrap();
        let got: Vec<&str> = out.entries.keys().map(String::as_str).collect();
        assert_eq!(
            got,
            [
                "o",
                "o/src",
                "o/src/a.c",
                "o/src/b.c",
                "o/src/sub",
                "o/src/sub/c.h"
            ]
        );
    }

    #[test]
    fn a_pivot_keeps_paths_from_where_it_stands() {
        let picked = pick(
            &ctx(),
            &[sp("src/./*.c"), sp("./src/./sub"), sp("src/sub/./c.h")],
            Links::Confined,
            "ctx",
        )
        .unwrap();
        let mut out = Tree::new();
        let span = Span::new(SourceId(0), 0, 1);
        place(
            &mut out,
            &picked,
            "/o/",
            "/",
            Overrides::default(),
            true,
            span,
        )
        .unwrap();
        let got: Vec<&str> = out.entries.keys().map(String::as_str).collect();
        assert_eq!(got, ["o", "o/a.c", "o/b.c", "o/c.h", "o/sub", "o/sub/c.h"]);
        // Without `parents`, a `/./` is only a path component.
        let picked = pick(&ctx(), &[sp("src/./a.c")], Links::Confined, "ctx").unwrap();
        let mut out = Tree::new();
        place(
            &mut out,
            &picked,
            "/o/",
            "/",
            Overrides::default(),
            false,
            span,
        )
        .unwrap();
        assert!(out.get("o/a.c").is_some());
    }
}
