//! `ARG` and `ENV` scoping, and the word expansion each instruction gets,
//! as Docker does it:
//!
//! - `ARG`s before the first `FROM` are global: only `FROM` lines see them,
//!   unless a stage declares `ARG NAME` again (then it takes the global
//!   value, or the build arg).
//! - A build arg (`--build-arg NAME=VALUE`) overrides an `ARG`'s default.
//! - `ENV` is visible to later instructions of its stage and to stages
//!   built `FROM` it, and wins over an `ARG` of the same name.
//! - Words of `ADD`, `COPY` (and their `--from`, `--chown`, `--chmod`),
//!   `ENV`, `LABEL`, `EXPOSE`, `VOLUME`, `USER`, `WORKDIR`, `STOPSIGNAL`,
//!   `ARG` and `FROM` are expanded; `RUN`, `CMD`, `ENTRYPOINT`, `SHELL`
//!   and `HEALTHCHECK` are left to the shell that runs them.

use super::instructions::{CopyInst, Inst, check};
use super::parse::{Dockerfile, ParseError};
use super::shell::{Env, REF_CLOSE, REF_OPEN, process_word, process_words, resolve_refs};
use std::cell::RefCell;
use std::collections::BTreeSet;

/// One `FROM` and the instructions up to the next, with words expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSource {
    /// `AS name`, lower-cased.
    pub name: Option<String>,
    pub index: usize,
    /// The base, expanded: `scratch`, an earlier stage's name or index, or an image.
    pub base: String,
    /// The base as the spec writes an image reference: with references to
    /// kept args.
    pub image: String,
    pub platform: Option<String>,
    pub line: usize,
    pub items: Vec<(usize, Inst)>,
    /// The `ENV` environment at the end of the stage (what a stage built
    /// on it starts with; `ARG`s do not carry over).
    pub env: Vec<(String, String)>,
    /// What words are expanded with at the current point: `ENV`s and `ARG`s.
    vars: Vec<(String, String)>,
}

/// The platform args BuildKit defines without a declaration: visible to
/// `FROM`, and to a stage that declares them with `ARG NAME`.
pub fn platform_args() -> Vec<(String, String)> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    let platform = format!("linux/{arch}");
    let mut out = Vec::new();
    for prefix in ["BUILD", "TARGET"] {
        out.push((format!("{prefix}PLATFORM"), platform.clone()));
        out.push((format!("{prefix}OS"), "linux".to_string()));
        out.push((format!("{prefix}ARCH"), arch.to_string()));
        out.push((format!("{prefix}VARIANT"), String::new()));
    }
    out
}

/// What a Dockerfile declares before its first stage, and what the spec
/// keeps of its `ARG`s.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Globals {
    pub args: Vec<(String, Option<String>)>,
    /// The `ARG`s the spec keeps as `arg`s, in the order first declared,
    /// with their values at import (the build arg, or the default).
    pub kept: Vec<(String, Option<String>)>,
    /// `ARG`s written as values, at their first declaration: their defaults
    /// differ between declarations, or refer to other variables.
    pub fixed: Vec<(usize, String, &'static str)>,
    /// Where a kept arg was used by its value at import: (line, name).
    pub baked: Vec<(usize, String)>,
}

/// The variables a word is expanded with: references to kept args stay
/// references (`symbolic`), or are replaced by their values at import.
pub struct Scope<'a> {
    pub vars: &'a [(String, String)],
    pub kept: &'a [(String, Option<String>)],
    pub symbolic: bool,
    /// Kept args used by value.
    pub baked: &'a RefCell<BTreeSet<String>>,
}

impl Scope<'_> {
    fn kept_value(&self, name: &str) -> Option<String> {
        self.kept
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.clone())
    }

    /// Text with its references replaced by their values at import.
    pub fn text(&self, value: &str) -> String {
        resolve_refs(value, &|name| {
            self.baked.borrow_mut().insert(name.to_string());
            self.kept_value(name)
        })
    }
}

/// The kept args `text` refers to.
pub fn referenced(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices(REF_OPEN) {
        let rest = &text[i + REF_OPEN.len_utf8()..];
        let end = rest.find([':', REF_OPEN, REF_CLOSE]).unwrap_or(rest.len());
        let name = rest[..end].to_string();
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// A reference to the kept arg `name`, as an expansion produces it.
pub fn reference(name: &str) -> String {
    format!("{REF_OPEN}{name}{REF_CLOSE}")
}

impl Env for Scope<'_> {
    fn get(&self, name: &str) -> Option<String> {
        let v = Env::get(self.vars, name)?;
        if self.symbolic || !v.contains(REF_OPEN) {
            return Some(v);
        }
        self.resolve(Some(v))
    }

    fn resolve(&self, value: Option<String>) -> Option<String> {
        let v = value?;
        // A reference to an unset arg is unset, not empty.
        if let Some(name) = v
            .strip_prefix(REF_OPEN)
            .and_then(|r| r.strip_suffix(REF_CLOSE))
            .filter(|n| !n.contains([REF_OPEN, ':']))
        {
            self.baked.borrow_mut().insert(name.to_string());
            return self.kept_value(name);
        }
        Some(self.text(&v))
    }

    fn is_reference(&self, name: &str, value: &str) -> bool {
        self.symbolic && value == reference(name)
    }

    fn baked(&self, name: &str) {
        if self.kept.iter().any(|(k, _)| k == name) {
            self.baked.borrow_mut().insert(name.to_string());
        }
    }
}

/// Why an arg is written as a value when one of its uses needs its value.
pub const USED_BY_VALUE: &str = "it is used here where the spec cannot refer to an arg (a `%`, `#`, `/` or `?` operator, a stage name, a path or a flag), and one `--arg` must change every use of it or none";

/// The kept args with their values, and the others with where and why.
type KeptArgs = (
    Vec<(String, Option<String>)>,
    Vec<(usize, String, &'static str)>,
);

/// Which `ARG`s the spec keeps as `arg`s: every declaration of the name
/// gives it the same default (a stage's `ARG NAME` without one takes the
/// global's), and no default refers to a variable, so one `arg` with one
/// default means what every declaration means. BuildKit's platform args
/// stay values. Returns the kept names with their values at import, and
/// the others with the line of their first declaration.
fn kept_args(
    d: &Dockerfile,
    build_arg: &dyn Fn(&str) -> Option<String>,
) -> Result<KeptArgs, ParseError> {
    let platform: Vec<String> = platform_args().into_iter().map(|(k, _)| k).collect();
    // (name, first line, effective defaults, refers to a variable)
    let mut seen: Vec<(String, usize, Vec<Option<String>>, bool)> = Vec::new();
    let mut globals: Vec<(String, Option<String>)> = Vec::new();
    let mut in_stage = false;
    for inst in &d.instructions {
        match check(inst)? {
            Inst::From { .. } => in_stage = true,
            Inst::Arg(decls) => {
                for (name, default) in decls {
                    let dynamic = default
                        .as_deref()
                        .is_some_and(|v| v.contains('$') || v.contains(d.directives.escape));
                    let default = match default {
                        Some(v) => Some(expand(
                            &v,
                            &Vec::new(),
                            d.directives.escape,
                            inst.start_line,
                        )?),
                        None => None,
                    };
                    let effective = match (&default, in_stage) {
                        (Some(v), _) => Some(v.clone()),
                        (None, true) => globals
                            .iter()
                            .rev()
                            .find(|(k, _)| *k == name)
                            .and_then(|(_, v)| v.clone()),
                        (None, false) => None,
                    };
                    if !in_stage {
                        globals.push((name.clone(), default));
                    }
                    match seen.iter_mut().find(|(k, ..)| *k == name) {
                        Some(entry) => {
                            entry.2.push(effective);
                            entry.3 |= dynamic;
                        }
                        None => seen.push((name, inst.start_line, vec![effective], dynamic)),
                    }
                }
            }
            _ => {}
        }
    }
    let mut kept = Vec::new();
    let mut fixed = Vec::new();
    for (name, line, defaults, dynamic) in seen {
        if platform.contains(&name) {
            continue;
        }
        let why = if dynamic {
            "its default refers to other variables"
        } else if !defaults.windows(2).all(|w| w[0] == w[1]) {
            "its declarations give it different defaults (one `arg` has one)"
        } else if !crate::frontend::kdl::valid_name(&name) {
            "its name is not a valid arg name"
        } else {
            let value = build_arg(&name).or_else(|| defaults.into_iter().next().flatten());
            kept.push((name, value));
            continue;
        };
        fixed.push((line, name, why));
    }
    Ok((kept, fixed))
}

fn expand(word: &str, env: &dyn Env, escape: char, line: usize) -> Result<String, ParseError> {
    process_word(word, env, escape).map_err(|e| ParseError {
        message: e.message,
        line,
    })
}

fn expand_words(
    word: &str,
    env: &dyn Env,
    escape: char,
    line: usize,
) -> Result<Vec<String>, ParseError> {
    process_words(word, env, escape).map_err(|e| ParseError {
        message: e.message,
        line,
    })
}

/// How one instruction's words are expanded: `value` keeps references to
/// kept args (for what the spec writes as a string it substitutes), `fixed`
/// uses their values at import (names, flags, paths the import inspects).
struct Words<'a> {
    vars: Vec<(String, String)>,
    kept: &'a [(String, Option<String>)],
    baked: &'a RefCell<BTreeSet<String>>,
    escape: char,
    line: usize,
}

impl Words<'_> {
    fn scope(&self, symbolic: bool) -> Scope<'_> {
        Scope {
            vars: &self.vars,
            kept: self.kept,
            symbolic,
            baked: self.baked,
        }
    }

    fn value(&self, w: &str) -> Result<String, ParseError> {
        expand(w, &self.scope(true), self.escape, self.line)
    }

    fn fixed(&self, w: &str) -> Result<String, ParseError> {
        expand(w, &self.scope(false), self.escape, self.line)
    }

    /// The value at import, for a decision the import makes while the
    /// spec writes the reference ([`Words::value`]): not a use by value.
    fn peek(&self, w: &str) -> Result<String, ParseError> {
        let ignored = RefCell::new(BTreeSet::new());
        let scope = Scope {
            vars: &self.vars,
            kept: self.kept,
            symbolic: false,
            baked: &ignored,
        };
        expand(w, &scope, self.escape, self.line)
    }

    fn fixed_words(&self, w: &str) -> Result<Vec<String>, ParseError> {
        expand_words(w, &self.scope(false), self.escape, self.line)
    }
}

/// Split a Dockerfile into stages with their words expanded. With
/// `keep_args`, `ARG`s the spec can keep as `arg`s stay references in the
/// words the spec substitutes (see [`Globals::kept`]).
pub fn stages(
    d: &Dockerfile,
    build_args: &[(String, String)],
    keep_args: bool,
    demoted: &[(usize, String)],
) -> Result<(Globals, Vec<StageSource>), ParseError> {
    let escape = d.directives.escape;
    let build_arg = |name: &str| {
        build_args
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut globals = Globals::default();
    if keep_args {
        (globals.kept, globals.fixed) = kept_args(d, &build_arg)?;
        // Used by value somewhere: a value everywhere.
        for (line, name) in demoted {
            if let Some(i) = globals.kept.iter().position(|(k, _)| k == name) {
                globals.kept.remove(i);
                globals.fixed.push((*line, name.clone(), USED_BY_VALUE));
            }
        }
    }
    let kept = globals.kept.clone();
    let is_kept = |name: &str| kept.iter().any(|(k, _)| k == name);
    let baked = RefCell::new(BTreeSet::new());
    // Global args with their values, as `FROM` lines see them.
    let mut meta: Vec<(String, String)> = platform_args();
    let mut out: Vec<StageSource> = Vec::new();
    // The first stage of each name, so a `FROM` finds its base at once.
    let mut by_name: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for inst in &d.instructions {
        let line = inst.start_line;
        let typed = check(inst)?;
        let words = |vars: Vec<(String, String)>| Words {
            vars,
            kept: &kept,
            baked: &baked,
            escape,
            line,
        };
        match typed {
            Inst::Arg(decls) if out.is_empty() => {
                for (name, default) in decls {
                    let default = match default {
                        Some(v) => Some(words(meta.clone()).value(&v)?),
                        None => None,
                    };
                    if is_kept(&name) {
                        meta.push((name.clone(), reference(&name)));
                    } else if let Some(v) = build_arg(&name).or_else(|| default.clone()) {
                        meta.push((name.clone(), v));
                    }
                    globals.args.push((name, default));
                }
            }
            Inst::From {
                image,
                name,
                platform,
            } => {
                let w = words(meta.clone());
                // The base decides (a stage or an image) on its value; an
                // image keeps its references (`image`).
                let base = w.peek(&image)?;
                let image = w.value(&image)?;
                if base.is_empty() {
                    return Err(ParseError {
                        message: format!("base name ({image}) should not be blank"),
                        line,
                    });
                }
                let platform = match platform {
                    Some(p) => Some(w.peek(&p)?),
                    None => None,
                };
                // A stage built on an earlier one starts with its
                // environment, and runs its `ONBUILD` triggers first (as if
                // the earlier stage were an image; they are not passed on).
                let lower = base.to_ascii_lowercase();
                let parent = by_name
                    .get(&lower)
                    .copied()
                    .or_else(|| base.parse::<usize>().ok())
                    .and_then(|i| out.get(i));
                let env = parent.map(|s| s.env.clone()).unwrap_or_default();
                let triggers: Vec<Inst> = parent
                    .map(|s| {
                        s.items
                            .iter()
                            .filter_map(|(_, i)| match i {
                                Inst::Onbuild(t) => Some((**t).clone()),
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let mut stage = StageSource {
                    name,
                    index: out.len(),
                    base,
                    image,
                    platform,
                    line,
                    items: Vec::new(),
                    vars: env.clone(),
                    env,
                };
                for t in triggers {
                    let item = expand_inst(t, &mut stage, &meta, &build_arg, &is_kept, &words)?;
                    stage.items.push((line, item));
                }
                if let Some(n) = &stage.name {
                    by_name.entry(n.clone()).or_insert(stage.index);
                }
                out.push(stage);
            }
            _ if out.is_empty() => {
                return Err(ParseError { message: "no build stage in current context: instructions before the first FROM must be ARG".into(), line });
            }
            other => {
                let Some(stage) = out.last_mut() else {
                    continue;
                };
                let item = expand_inst(other, stage, &meta, &build_arg, &is_kept, &words)?;
                stage.items.push((line, item));
            }
        }
        for name in std::mem::take(&mut *baked.borrow_mut()) {
            if !globals.baked.contains(&(line, name.clone())) {
                globals.baked.push((line, name));
            }
        }
    }
    if out.is_empty() {
        return Err(ParseError {
            message: "the Dockerfile has no FROM".into(),
            line: 1,
        });
    }
    Ok((globals, out))
}

fn expand_inst<'a>(
    inst: Inst,
    stage: &mut StageSource,
    meta: &[(String, String)],
    build_arg: &dyn Fn(&str) -> Option<String>,
    is_kept: &dyn Fn(&str) -> bool,
    words: &dyn Fn(Vec<(String, String)>) -> Words<'a>,
) -> Result<Inst, ParseError> {
    let w = words(stage.vars.clone());
    Ok(match inst {
        Inst::Arg(decls) => {
            let mut out = Vec::new();
            for (name, default) in decls {
                let default = match default {
                    Some(v) => Some(w.value(&v)?),
                    None => None,
                };
                let global = meta
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone());
                let value = if is_kept(&name) {
                    Some(reference(&name))
                } else {
                    build_arg(&name).or(default.clone()).or(global)
                };
                // An ARG is visible like an ENV, but never overrides one.
                if let Some(v) = &value
                    && !stage.env.iter().any(|(k, _)| *k == name)
                {
                    stage.vars.retain(|(k, _)| *k != name);
                    stage.vars.push((name.clone(), v.clone()));
                }
                out.push((name, value));
            }
            Inst::Arg(out)
        }
        Inst::Env(pairs) => {
            let mut out = Vec::new();
            for (k, v) in pairs {
                let k = w.fixed(&k)?;
                // Every word sees the environment from before the instruction.
                let v = w.value(&v)?;
                stage.env.retain(|(n, _)| *n != k);
                stage.env.push((k.clone(), v.clone()));
                stage.vars.retain(|(n, _)| *n != k);
                stage.vars.push((k.clone(), v.clone()));
                out.push((k, v));
            }
            Inst::Env(out)
        }
        Inst::Label(pairs) => {
            let mut out = Vec::new();
            for (k, v) in pairs {
                out.push((w.fixed(&k)?, w.value(&v)?));
            }
            Inst::Label(out)
        }
        Inst::Workdir(p) => Inst::Workdir(w.value(&p)?),
        Inst::User(u) => Inst::User(w.value(&u)?),
        Inst::Stopsignal(s) => Inst::Stopsignal(w.fixed(&s)?),
        Inst::Expose(ports) => {
            let mut out = Vec::new();
            for p in ports {
                out.extend(w.fixed_words(&p)?);
            }
            Inst::Expose(out)
        }
        Inst::Volume(v) => Inst::Volume(v.iter().map(|p| w.fixed(p)).collect::<Result<_, _>>()?),
        Inst::Copy(c) => Inst::Copy(expand_copy(c, &w)?),
        Inst::Add(c) => Inst::Add(expand_copy(c, &w)?),
        other => other,
    })
}

fn expand_copy(c: CopyInst, w: &Words<'_>) -> Result<CopyInst, ParseError> {
    let heredoc_word = |word: &str| {
        c.heredocs.iter().any(|h| {
            word.trim_start_matches(|ch: char| ch.is_ascii_digit())
                .trim_start_matches("<<")
                .trim_start_matches('-')
                .trim_matches(['\'', '"'])
                == h.name
        })
    };
    // Paths keep references to kept args (kiln substitutes them); the
    // import decides on their values (a URL or a file, a directory).
    let mut sources = Vec::new();
    let mut refs = Vec::new();
    for s in &c.sources {
        // Heredoc markers name inline files; they are not paths to expand.
        if heredoc_word(s) {
            sources.push(s.clone());
            refs.push(s.clone());
        } else {
            sources.push(w.peek(s)?);
            refs.push(w.value(s)?);
        }
    }
    let mut flags = Vec::new();
    for (k, v) in &c.flags {
        let v = match k.as_str() {
            // A stage name: the import resolves it.
            "from" => w.fixed(v)?,
            "chown" | "chmod" => w.value(v)?,
            _ => v.clone(),
        };
        flags.push((k.clone(), v));
    }
    Ok(CopyInst {
        sources,
        dest: w.peek(&c.dest)?,
        flags,
        heredocs: c.heredocs,
        refs: Some((refs, w.value(&c.dest)?)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::dockerfile::parse::parse;

    fn run(text: &str, args: &[(&str, &str)]) -> (Globals, Vec<StageSource>) {
        let args: Vec<(String, String)> = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        stages(&parse(text).unwrap(), &args, false, &[]).unwrap()
    }

    #[test]
    fn global_args_reach_from_only_unless_redeclared() {
        let text =
            "ARG BASE=scratch\nARG V=1\nFROM ${BASE} AS first\nARG V\nENV A=$V B=${BASE:-none}\n";
        let (g, s) = run(text, &[]);
        assert_eq!(g.args.len(), 2);
        assert_eq!(s[0].base, "scratch");
        assert_eq!(
            s[0].items[1].1,
            Inst::Env(vec![("A".into(), "1".into()), ("B".into(), "none".into())])
        );
        let (_, s) = run(text, &[("V", "2")]);
        assert_eq!(
            s[0].items[1].1,
            Inst::Env(vec![("A".into(), "2".into()), ("B".into(), "none".into())])
        );
    }

    #[test]
    fn env_carries_into_stages_built_on_it_and_wins_over_args() {
        let text = "FROM scratch AS a\nENV X=from-a\nFROM a\nARG X=arg\nWORKDIR /$X\nCOPY --from=a --chown=$X src/$X /dst/\n";
        let (_, s) = run(text, &[]);
        assert_eq!(s[1].items[1].1, Inst::Workdir("/from-a".into()));
        match &s[1].items[2].1 {
            Inst::Copy(c) => {
                assert_eq!(c.sources, ["src/from-a"]);
                assert!(c.flags.contains(&("chown".into(), "from-a".into())));
                assert!(c.flags.contains(&("from".into(), "a".into())));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn run_and_cmd_are_left_to_the_shell() {
        let (_, s) = run(
            "FROM scratch\nENV A=1\nRUN echo $A\nCMD [\"$A\"]\nEXPOSE ${P:-80} 443\n",
            &[],
        );
        assert!(
            matches!(&s[0].items[1].1, Inst::Run { command: crate::frontend::dockerfile::instructions::Command::Shell(c), .. } if c == "echo $A")
        );
        assert_eq!(
            s[0].items[3].1,
            Inst::Expose(vec!["80".into(), "443".into()])
        );
    }

    #[test]
    fn errors_carry_lines() {
        let d = parse("ARG A\nRUN x\n").unwrap();
        assert_eq!(stages(&d, &[], false, &[]).unwrap_err().line, 2);
        let d = parse("FROM scratch\nENV A=\"${B:?needs B}\"\n").unwrap();
        let e = stages(&d, &[], false, &[]).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("needs B"), "{}", e.message);
        let d = parse("ARG X\nFROM $X\n").unwrap();
        assert!(
            stages(&d, &[], false, &[])
                .unwrap_err()
                .message
                .contains("should not be blank")
        );
    }

    #[test]
    fn env_words_see_the_environment_before_the_instruction() {
        let (_, s) = run(
            "FROM scratch\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n",
            &[],
        );
        assert_eq!(
            s[0].items[1].1,
            Inst::Env(vec![
                ("abc".into(), "bye".into()),
                ("def".into(), "hello".into())
            ])
        );
        assert_eq!(
            s[0].items[2].1,
            Inst::Env(vec![("ghi".into(), "bye".into())])
        );
    }

    #[test]
    fn args_do_not_carry_into_stages_built_on_them() {
        let (_, s) = run(
            "FROM scratch AS a\nARG X=1\nENV Y=2\nFROM a\nWORKDIR /${X:-none}/$Y\n",
            &[],
        );
        assert_eq!(s[1].items[0].1, Inst::Workdir("/none/2".into()));
        assert_eq!(s[0].env, vec![("Y".to_string(), "2".to_string())]);
    }

    #[test]
    fn platform_args_are_predefined() {
        let (_, s) = run(
            "FROM scratch\nARG TARGETOS\nARG BUILDOS=other\nWORKDIR /$TARGETOS/$BUILDOS\n",
            &[],
        );
        assert_eq!(s[0].items[2].1, Inst::Workdir("/linux/other".into()));
    }

    #[test]
    fn onbuild_triggers_run_in_stages_built_on_the_stage() {
        let (_, s) = run(
            "FROM scratch AS base\nONBUILD ENV X=1\nONBUILD WORKDIR /$X\nFROM base AS child\nFROM child\n",
            &[],
        );
        assert_eq!(
            s[1].items,
            vec![
                (4, Inst::Env(vec![("X".into(), "1".into())])),
                (4, Inst::Workdir("/1".into()))
            ]
        );
        // Triggers are not passed on to grandchildren.
        assert!(s[2].items.is_empty());
    }

    fn kept(text: &str, args: &[(&str, &str)]) -> (Globals, Vec<StageSource>) {
        let args: Vec<(String, String)> = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        stages(&parse(text).unwrap(), &args, true, &[]).unwrap()
    }

    #[test]
    fn args_the_spec_can_keep_stay_references() {
        let r = |n: &str| reference(n);
        let (g, s) = kept(
            "ARG V=1.2\nARG B=scratch\nFROM $B\nARG V\nENV A=$V C=${V:-x} D=${V%.*} E=v${V}\nWORKDIR /$A\n",
            &[("V", "3.4")],
        );
        assert_eq!(
            g.kept,
            vec![
                ("V".to_string(), Some("3.4".to_string())),
                ("B".to_string(), Some("scratch".to_string()))
            ]
        );
        assert_eq!(s[0].base, "scratch");
        assert_eq!(s[0].image, r("B"));
        assert_eq!(
            s[0].items[1].1,
            Inst::Env(vec![
                ("A".into(), r("V")),
                ("C".into(), format!("{REF_OPEN}V:-x{REF_CLOSE}")),
                ("D".into(), "3".into()),
                ("E".into(), format!("v{}", r("V"))),
            ])
        );
        assert_eq!(s[0].items[2].1, Inst::Workdir(format!("/{}", r("V"))));
        // `%` used the value: reported (the lowering then writes `V` as a
        // value everywhere). The base is a stage or an image by its value;
        // the lowering decides which.
        assert_eq!(g.baked, vec![(5, "V".to_string())]);
    }

    #[test]
    fn args_whose_declarations_disagree_or_refer_to_variables_are_values() {
        let (g, s) = kept(
            "ARG G=1\nARG H=${G}x\nFROM scratch\nARG G=2\nARG H\nENV A=$G B=$H\n",
            &[],
        );
        assert!(g.kept.is_empty(), "{:?}", g.kept);
        assert_eq!(g.fixed.len(), 2);
        assert_eq!(
            s[0].items[2].1,
            Inst::Env(vec![("A".into(), "2".into()), ("B".into(), "1x".into())])
        );
        // A stage `ARG` without a default where another stage has one: an
        // unset arg in one, a value in the other.
        let (g, _) = kept("FROM scratch\nARG X\nFROM scratch\nARG X=1\n", &[]);
        assert!(g.kept.is_empty());
    }

    #[test]
    fn references_resolve_like_kiln_substitution() {
        let v = |n: &str| match n {
            "A" => Some("a".to_string()),
            "E" => Some(String::new()),
            _ => None,
        };
        let t = format!(
            "{REF_OPEN}A{REF_CLOSE}-{REF_OPEN}E:-d{REF_OPEN}A{REF_CLOSE}{REF_CLOSE}-{REF_OPEN}U:+x{REF_CLOSE}."
        );
        assert_eq!(resolve_refs(&t, &v), "a-da-.");
        assert_eq!(
            crate::frontend::dockerfile::lower::escape_subst(&format!("$$ ${{ ${}", r_ref("A"))),
            "$$$ $${ $$${A}"
        );
    }

    fn r_ref(n: &str) -> String {
        reference(n)
    }
}
