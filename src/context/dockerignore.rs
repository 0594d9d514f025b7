//! `.dockerignore`, read as Docker reads it (not as gitignore):
//!
//! - One pattern per line; surrounding whitespace is trimmed; blank lines
//!   and lines starting with `#` are skipped.
//! - Patterns are cleaned like a path (`./a`, `a/../b`, a trailing `/`)
//!   and anchored at the context root; a leading `/` changes nothing.
//! - `*` and `?` do not cross `/`; `**` matches any number of directories;
//!   `[…]` classes and `\` escapes work as in Go's `filepath.Match`.
//! - A pattern excludes what it matches and everything below it.
//! - `!` re-includes; the last pattern that matches a path (or one of its
//!   parent directories) decides, so a file can be re-included inside an
//!   excluded directory.

use globset::{GlobBuilder, GlobMatcher};

pub struct DockerIgnore {
    patterns: Vec<(GlobMatcher, bool)>,
    exceptions: bool,
}

/// A line that is not a valid pattern: its 1-based number and why.
#[derive(Debug, PartialEq, Eq)]
pub struct BadPattern {
    pub line: usize,
    pub message: String,
}

/// Clean a pattern as Go's `filepath.Clean` would, without the leading `/`.
fn clean(pattern: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !pattern.starts_with('/') {
                    out.push("..");
                }
            }
            p => out.push(p),
        }
    }
    out.join("/")
}

fn compile(pattern: &str) -> Result<GlobMatcher, globset::Error> {
    let build = |p: &str| {
        GlobBuilder::new(p)
            .literal_separator(true)
            .backslash_escape(true)
            .empty_alternates(true)
            .build()
    };
    match build(pattern) {
        Ok(g) => Ok(g.compile_matcher()),
        // Docker accepts `**` inside a component (`a**`), where it means `*`
        // crossing nothing more than a component here.
        Err(e) if pattern.contains("**") => {
            let relaxed = pattern
                .split('/')
                .map(|c| {
                    if c != "**" && c.contains("**") {
                        c.replace("**", "*")
                    } else {
                        c.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            build(&relaxed).map(|g| g.compile_matcher()).map_err(|_| e)
        }
        Err(e) => Err(e),
    }
}

impl DockerIgnore {
    pub fn parse(text: &str) -> Result<DockerIgnore, BadPattern> {
        let mut patterns = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pat) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let pat = clean(pat);
            if pat.is_empty() {
                continue;
            }
            // Braces are literal in Docker's patterns.
            let escaped = pat.replace('{', "\\{").replace('}', "\\}");
            let glob = compile(&escaped).map_err(|e| BadPattern {
                line: n + 1,
                message: format!("bad pattern `{line}`: {}", e.kind()),
            })?;
            patterns.push((glob, exception));
        }
        let exceptions = patterns.iter().any(|(_, e)| *e);
        Ok(DockerIgnore {
            patterns,
            exceptions,
        })
    }

    /// Whether any pattern re-includes (then excluded directories must
    /// still be walked, for what is re-included inside them).
    pub fn has_exceptions(&self) -> bool {
        self.exceptions
    }

    /// Whether `path` (relative to the context root, `/`-separated) is left out.
    pub fn excluded(&self, path: &str) -> bool {
        let mut excluded = false;
        for (glob, exception) in &self.patterns {
            if excluded != *exception {
                // This pattern cannot change the outcome.
                continue;
            }
            let mut matched = glob.is_match(path);
            if !matched {
                let mut end = 0;
                while let Some(i) = path[end..].find('/') {
                    end += i;
                    if glob.is_match(&path[..end]) {
                        matched = true;
                        break;
                    }
                    end += 1;
                }
            }
            if matched {
                excluded = !exception;
            }
        }
        excluded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ig(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).expect("valid")
    }

    #[test]
    fn patterns_are_anchored_and_cover_what_is_below() {
        let d = ig("# comment\n  docs  \n/build/\n*.log\n");
        assert!(d.excluded("docs"));
        assert!(d.excluded("docs/a/b.md"));
        assert!(d.excluded("build/x"));
        assert!(d.excluded("a.log"));
        // Not gitignore: `*.log` is anchored at the root.
        assert!(!d.excluded("sub/a.log"));
        assert!(!d.excluded("documents"));
    }

    #[test]
    fn double_star_crosses_directories() {
        let d = ig("**/*.o\nsrc/**/gen\n");
        assert!(d.excluded("a.o"));
        assert!(d.excluded("x/y/z.o"));
        assert!(d.excluded("src/gen/file"));
        assert!(d.excluded("src/a/b/gen"));
        assert!(!d.excluded("src/a/b/generated"));
    }

    #[test]
    fn exceptions_reinclude_even_inside_excluded_directories() {
        let d = ig("docs\n!docs/keep.md\n*.md\n!README.md\n");
        assert!(d.excluded("docs/other.txt"));
        // Excluded again by `*.md`? No: that pattern is anchored at the root.
        assert!(!d.excluded("docs/keep.md"));
        assert!(d.excluded("CHANGES.md"));
        assert!(!d.excluded("README.md"));
        assert!(d.has_exceptions());
        let d = ig("*\n!src\nsrc/*.tmp\n");
        assert!(d.excluded("Makefile"));
        assert!(!d.excluded("src/main.c"));
        assert!(d.excluded("src/x.tmp"));
    }

    #[test]
    fn patterns_are_cleaned_like_paths() {
        let d = ig("./a/../b/\n!./b/c\n");
        assert!(d.excluded("b/x"));
        assert!(!d.excluded("b/c"));
        assert!(!d.excluded("a"));
        assert_eq!(clean("/a/./b/"), "a/b");
        assert_eq!(clean("../a"), "../a");
    }

    #[test]
    fn classes_escapes_and_literal_braces() {
        let d = ig("file[0-9].txt\nfile\\*\n{a,b}\n");
        assert!(d.excluded("file3.txt"));
        assert!(!d.excluded("filex.txt"));
        assert!(d.excluded("file*"));
        assert!(!d.excluded("filez"));
        assert!(d.excluded("{a,b}"));
        assert!(!d.excluded("a"));
    }

    #[test]
    fn bad_patterns_name_their_line() {
        let e = DockerIgnore::parse("ok\n[unclosed\n")
            .err()
            .expect("an error");
        assert_eq!(e.line, 2);
    }
}
