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
use super::shell::{process_word, process_words};

/// One `FROM` and the instructions up to the next, with words expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSource {
    /// `AS name`, lower-cased.
    pub name: Option<String>,
    pub index: usize,
    /// The base, expanded: `scratch`, an earlier stage's name or index, or an image.
    pub base: String,
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

/// What a Dockerfile declares before its first stage.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Globals {
    pub args: Vec<(String, Option<String>)>,
}

fn expand(
    word: &str,
    env: &[(String, String)],
    escape: char,
    line: usize,
) -> Result<String, ParseError> {
    process_word(word, &env, escape).map_err(|e| ParseError {
        message: e.message,
        line,
    })
}

fn expand_words(
    word: &str,
    env: &[(String, String)],
    escape: char,
    line: usize,
) -> Result<Vec<String>, ParseError> {
    process_words(word, &env, escape).map_err(|e| ParseError {
        message: e.message,
        line,
    })
}

/// Split a Dockerfile into stages with their words expanded.
pub fn stages(
    d: &Dockerfile,
    build_args: &[(String, String)],
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
    // Global args with their values, as `FROM` lines see them.
    let mut meta: Vec<(String, String)> = platform_args();
    let mut out: Vec<StageSource> = Vec::new();
    for inst in &d.instructions {
        let line = inst.start_line;
        let typed = check(inst)?;
        match typed {
            Inst::Arg(decls) if out.is_empty() => {
                for (name, default) in decls {
                    let default = match default {
                        Some(v) => Some(expand(&v, &meta, escape, line)?),
                        None => None,
                    };
                    if let Some(v) = build_arg(&name).or_else(|| default.clone()) {
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
                let base = expand(&image, &meta, escape, line)?;
                if base.is_empty() {
                    return Err(ParseError {
                        message: format!("base name ({image}) should not be blank"),
                        line,
                    });
                }
                let platform = match platform {
                    Some(p) => Some(expand(&p, &meta, escape, line)?),
                    None => None,
                };
                // A stage built on an earlier one starts with its
                // environment, and runs its `ONBUILD` triggers first (as if
                // the earlier stage were an image; they are not passed on).
                let parent = out.iter().find(|s| {
                    s.name.as_deref() == Some(base.to_ascii_lowercase().as_str())
                        || s.index.to_string() == base
                });
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
                    platform,
                    line,
                    items: Vec::new(),
                    vars: env.clone(),
                    env,
                };
                for t in triggers {
                    let item = expand_inst(t, &mut stage, &meta, &build_arg, escape, line)?;
                    stage.items.push((line, item));
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
                let item = expand_inst(other, stage, &meta, &build_arg, escape, line)?;
                stage.items.push((line, item));
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

fn expand_inst(
    inst: Inst,
    stage: &mut StageSource,
    meta: &[(String, String)],
    build_arg: &dyn Fn(&str) -> Option<String>,
    escape: char,
    line: usize,
) -> Result<Inst, ParseError> {
    let env = stage.vars.clone();
    let one = |w: &str| expand(w, &env, escape, line);
    Ok(match inst {
        Inst::Arg(decls) => {
            let mut out = Vec::new();
            for (name, default) in decls {
                let default = match default {
                    Some(v) => Some(one(&v)?),
                    None => None,
                };
                let global = meta
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone());
                let value = build_arg(&name).or(default.clone()).or(global);
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
                let k = one(&k)?;
                // Every word sees the environment from before the instruction.
                let v = expand(&v, &env, escape, line)?;
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
                out.push((one(&k)?, one(&v)?));
            }
            Inst::Label(out)
        }
        Inst::Workdir(p) => Inst::Workdir(one(&p)?),
        Inst::User(u) => Inst::User(one(&u)?),
        Inst::Stopsignal(s) => Inst::Stopsignal(one(&s)?),
        Inst::Expose(ports) => {
            let mut out = Vec::new();
            for p in ports {
                out.extend(expand_words(&p, &env, escape, line)?);
            }
            Inst::Expose(out)
        }
        Inst::Volume(v) => Inst::Volume(v.iter().map(|p| one(p)).collect::<Result<_, _>>()?),
        Inst::Copy(c) => Inst::Copy(expand_copy(c, &env, escape, line)?),
        Inst::Add(c) => Inst::Add(expand_copy(c, &env, escape, line)?),
        other => other,
    })
}

fn expand_copy(
    c: CopyInst,
    env: &[(String, String)],
    escape: char,
    line: usize,
) -> Result<CopyInst, ParseError> {
    let heredoc_word = |w: &str| {
        c.heredocs.iter().any(|h| {
            w.trim_start_matches(|ch: char| ch.is_ascii_digit())
                .trim_start_matches("<<")
                .trim_start_matches('-')
                .trim_matches(['\'', '"'])
                == h.name
        })
    };
    let mut sources = Vec::new();
    for s in &c.sources {
        // Heredoc markers name inline files; they are not paths to expand.
        sources.push(if heredoc_word(s) {
            s.clone()
        } else {
            expand(s, env, escape, line)?
        });
    }
    let mut flags = Vec::new();
    for (k, v) in &c.flags {
        let v = if matches!(k.as_str(), "from" | "chown" | "chmod") {
            expand(v, env, escape, line)?
        } else {
            v.clone()
        };
        flags.push((k.clone(), v));
    }
    Ok(CopyInst {
        sources,
        dest: expand(&c.dest, env, escape, line)?,
        flags,
        heredocs: c.heredocs,
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
        stages(&parse(text).unwrap(), &args).unwrap()
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
        assert_eq!(stages(&d, &[]).unwrap_err().line, 2);
        let d = parse("FROM scratch\nENV A=\"${B:?needs B}\"\n").unwrap();
        let e = stages(&d, &[]).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("needs B"), "{}", e.message);
        let d = parse("ARG X\nFROM $X\n").unwrap();
        assert!(
            stages(&d, &[])
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
}
