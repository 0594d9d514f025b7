//! The instruction layer: a parsed line becomes a typed instruction, with
//! the checks the reference implementation makes at this stage (argument
//! counts, known flags, `FROM … AS name`, `ONBUILD` restrictions,
//! `HEALTHCHECK` options). Word expansion happens later, when stages are
//! lowered, because it depends on `ARG` and `ENV` scoping.

use super::parse::{Args, Heredoc, Instruction, ParseError};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inst {
    From {
        image: String,
        name: Option<String>,
        platform: Option<String>,
    },
    /// `NAME` or `NAME=default`, still unexpanded.
    Arg(Vec<(String, Option<String>)>),
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    Workdir(String),
    User(String),
    Maintainer(String),
    Stopsignal(String),
    Copy(CopyInst),
    Add(CopyInst),
    Run {
        command: Command,
        flags: Vec<(String, String)>,
        heredocs: Vec<Heredoc>,
    },
    Cmd(Command),
    Entrypoint(Command),
    Shell(Vec<String>),
    Expose(Vec<String>),
    Volume(Vec<String>),
    Healthcheck(Healthcheck),
    Onbuild(Box<Inst>),
}

/// An exec-form (JSON) or shell-form command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Exec(Vec<String>),
    Shell(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyInst {
    pub sources: Vec<String>,
    pub dest: String,
    /// Flags by name (`from`, `chown`, `chmod`, `link`, `exclude`, …), in order.
    pub flags: Vec<(String, String)>,
    pub heredocs: Vec<Heredoc>,
    /// Once expanded: the sources and the destination as the spec writes
    /// them, with references to kept args (`sources` and `dest` hold their
    /// values at import, for the import's own decisions).
    pub refs: Option<(Vec<String>, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    None,
    Check {
        test: Vec<String>,
        interval: Option<Duration>,
        timeout: Option<Duration>,
        start_period: Option<Duration>,
        start_interval: Option<Duration>,
        retries: Option<u32>,
    },
}

fn fail<T>(line: usize, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        message: message.into(),
        line,
    })
}

/// Flags an instruction accepts.
fn allowed_flags(keyword: &str) -> &'static [&'static str] {
    match keyword {
        "from" => &["platform"],
        "copy" => &["from", "chown", "chmod", "link", "exclude", "parents"],
        "add" => &[
            "chown",
            "chmod",
            "link",
            "exclude",
            "checksum",
            "keep-git-dir",
        ],
        "run" => &["mount", "network", "security"],
        "healthcheck" => &[
            "interval",
            "timeout",
            "start-period",
            "start-interval",
            "retries",
        ],
        _ => &[],
    }
}

fn flags(inst: &Instruction, keyword: &str) -> Result<Vec<(String, String)>, ParseError> {
    let allowed = allowed_flags(keyword);
    let mut out = Vec::new();
    for f in &inst.flags {
        let body = f.trim_start_matches("--");
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, v.to_string()),
            None => (body, "true".to_string()),
        };
        if !allowed.contains(&name) {
            return fail(
                inst.start_line,
                format!(
                    "unknown flag: --{name} (for {})",
                    keyword.to_ascii_uppercase()
                ),
            );
        }
        out.push((name.to_string(), value));
    }
    Ok(out)
}

fn list(inst: &Instruction) -> &[String] {
    match &inst.args {
        Args::List(v) => v,
        Args::Onbuild(_) => &[],
    }
}

pub fn check(inst: &Instruction) -> Result<Inst, ParseError> {
    check_at(inst, false)
}

fn check_at(inst: &Instruction, in_onbuild: bool) -> Result<Inst, ParseError> {
    let kw = inst.keyword.to_ascii_lowercase();
    let line = inst.start_line;
    let upper = kw.to_ascii_uppercase();
    let args = list(inst);
    let one = |args: &[String]| -> Result<String, ParseError> {
        match args {
            [a] => Ok(a.clone()),
            _ => fail(line, format!("{upper} requires exactly one argument")),
        }
    };
    let at_least_one = |args: &[String]| -> Result<(), ParseError> {
        if args.is_empty() {
            fail(line, format!("{upper} requires at least one argument"))
        } else {
            Ok(())
        }
    };
    let command = |args: &[String]| {
        if inst.json {
            Command::Exec(args.to_vec())
        } else {
            Command::Shell(args.first().cloned().unwrap_or_default())
        }
    };
    let pairs = |args: &[String]| -> Vec<(String, String)> {
        args.chunks(3)
            .map(|c| (c[0].clone(), c.get(1).cloned().unwrap_or_default()))
            .collect()
    };
    let f = flags(inst, &kw)?;
    Ok(match kw.as_str() {
        "from" => {
            if in_onbuild {
                return fail(line, "FROM isn't allowed as an ONBUILD trigger");
            }
            from(args, &f, line)?
        }
        "arg" => {
            at_least_one(args)?;
            Inst::Arg(
                args.iter()
                    .map(|a| match a.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (a.clone(), None),
                    })
                    .collect(),
            )
        }
        "env" => {
            at_least_one(args)?;
            Inst::Env(pairs(args))
        }
        "label" => {
            at_least_one(args)?;
            Inst::Label(pairs(args))
        }
        "workdir" => Inst::Workdir(one(args)?),
        "user" => Inst::User(one(args)?),
        "stopsignal" => Inst::Stopsignal(one(args)?),
        "maintainer" => {
            if in_onbuild {
                return fail(line, "MAINTAINER isn't allowed as an ONBUILD trigger");
            }
            Inst::Maintainer(one(args)?)
        }
        "copy" | "add" => copy(inst, &kw, f)?,
        "run" => {
            at_least_one(args)?;
            Inst::Run {
                command: command(args),
                flags: f,
                heredocs: inst.heredocs.clone(),
            }
        }
        "cmd" => Inst::Cmd(command(args)),
        "entrypoint" => Inst::Entrypoint(command(args)),
        "shell" => {
            if !inst.json {
                return fail(line, "SHELL requires the arguments to be in JSON form");
            }
            at_least_one(args)?;
            Inst::Shell(args.to_vec())
        }
        "expose" => {
            at_least_one(args)?;
            Inst::Expose(args.to_vec())
        }
        "volume" => {
            at_least_one(args)?;
            Inst::Volume(args.to_vec())
        }
        "healthcheck" => {
            at_least_one(args)?;
            healthcheck(inst, &f)?
        }
        "onbuild" => {
            if in_onbuild {
                return fail(line, "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed");
            }
            match &inst.args {
                Args::Onbuild(inner) => Inst::Onbuild(Box::new(check_at(inner, true)?)),
                Args::List(_) => return fail(line, "ONBUILD requires at least one argument"),
            }
        }
        _ => return fail(line, format!("unknown instruction: {}", inst.keyword)),
    })
}

/// `FROM IMAGE [AS NAME]`, with `--platform`.
fn from(args: &[String], f: &[(String, String)], line: usize) -> Result<Inst, ParseError> {
    let platform = f
        .iter()
        .find(|(n, _)| n == "platform")
        .map(|(_, v)| v.clone());
    match args {
        [image] => Ok(Inst::From {
            image: image.clone(),
            name: None,
            platform,
        }),
        [image, as_, name] if as_.eq_ignore_ascii_case("as") => {
            let name = name.to_ascii_lowercase();
            let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
            if !valid {
                return fail(
                    line,
                    format!(
                        "invalid name for build stage: \"{name}\", name can't start with a number or contain symbols"
                    ),
                );
            }
            Ok(Inst::From {
                image: image.clone(),
                name: Some(name),
                platform,
            })
        }
        _ => fail(line, "FROM requires either one or three arguments"),
    }
}

/// `COPY`/`ADD SOURCE... DEST`, whose sources may be heredocs.
fn copy(inst: &Instruction, kw: &str, f: Vec<(String, String)>) -> Result<Inst, ParseError> {
    let (line, args) = (inst.start_line, list(inst));
    let upper = kw.to_ascii_uppercase();
    if args.len() < 2 {
        return fail(
            line,
            format!(
                "{upper} requires at least two arguments, but only one was provided. Destination could not be determined"
            ),
        );
    }
    let dest = args[args.len() - 1].clone();
    if inst.heredocs.iter().any(|h| {
        dest.contains(&format!("<<{}", h.name)) || dest.contains(&format!("<<-{}", h.name))
    }) {
        return fail(
            line,
            format!("{upper} cannot use a heredoc as its destination"),
        );
    }
    let c = CopyInst {
        sources: args[..args.len() - 1].to_vec(),
        dest,
        flags: f,
        heredocs: inst.heredocs.clone(),
        refs: None,
    };
    Ok(if kw == "copy" {
        Inst::Copy(c)
    } else {
        Inst::Add(c)
    })
}

/// `HEALTHCHECK NONE` or `HEALTHCHECK [--interval=… …] CMD …`.
fn healthcheck(inst: &Instruction, f: &[(String, String)]) -> Result<Inst, ParseError> {
    let (line, args) = (inst.start_line, list(inst));
    let kind = args[0].to_ascii_uppercase();
    match kind.as_str() {
        "NONE" => {
            if args.len() > 1 || !f.is_empty() {
                return fail(line, "HEALTHCHECK NONE takes no arguments");
            }
            Ok(Inst::Healthcheck(Healthcheck::None))
        }
        "CMD" => {
            let test = if inst.json {
                let mut t = vec!["CMD".to_string()];
                t.extend(args[1..].iter().cloned());
                t
            } else {
                vec![
                    "CMD-SHELL".to_string(),
                    args.get(1).cloned().unwrap_or_default(),
                ]
            };
            if test.len() < 2 || test[1].is_empty() {
                return fail(line, "Missing command after HEALTHCHECK CMD");
            }
            let get = |name: &str| {
                f.iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
            };
            let dur = |name: &str| -> Result<Option<Duration>, ParseError> {
                match get(name) {
                    None => Ok(None),
                    Some(v) => match crate::units::parse_duration(&v) {
                        Some(d) if d.is_zero() || d >= Duration::from_millis(1) => Ok(Some(d)),
                        Some(_) => {
                            fail(line, format!("Interval \"{name}\" cannot be less than 1ms"))
                        }
                        None => fail(line, format!("invalid duration for --{name}: {v}")),
                    },
                }
            };
            let retries = match get("retries") {
                None => None,
                Some(v) => match v.parse::<u32>() {
                    Ok(n) => Some(n),
                    Err(_) => return fail(line, format!("invalid --retries value: {v}")),
                },
            };
            Ok(Inst::Healthcheck(Healthcheck::Check {
                test,
                interval: dur("interval")?,
                timeout: dur("timeout")?,
                start_period: dur("start-period")?,
                start_interval: dur("start-interval")?,
                retries,
            }))
        }
        other => fail(
            line,
            format!("Unknown type \"{other}\" in HEALTHCHECK (try CMD)"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::dockerfile::parse::parse;

    fn first(text: &str) -> Result<Inst, ParseError> {
        check(&parse(text).expect("parses").instructions[0])
    }

    #[track_caller]
    fn rejects(text: &str, needle: &str) {
        let e = first(text).expect_err(text);
        assert!(e.message.contains(needle), "{text:?}: {}", e.message);
    }

    #[test]
    fn reference_rejections() {
        rejects("MAINTAINER\n", "requires exactly one argument");
        rejects("WORKDIR\n", "requires exactly one argument");
        rejects("USER\n", "requires exactly one argument");
        rejects("STOPSIGNAL\n", "requires exactly one argument");
        rejects("EXPOSE\n", "requires at least one argument");
        rejects("VOLUME\n", "requires at least one argument");
        rejects("LABEL\n", "requires at least one argument");
        rejects("HEALTHCHECK\n", "requires at least one argument");
        rejects("ONBUILD\n", "requires at least one argument");
        rejects("COPY onlyone\n", "requires at least two arguments");
        rejects("ONBUILD FROM x\n", "isn't allowed as an ONBUILD trigger");
        rejects(
            "ONBUILD MAINTAINER x\n",
            "isn't allowed as an ONBUILD trigger",
        );
        rejects("ONBUILD ONBUILD RUN x\n", "Chaining ONBUILD");
        rejects("MAINTAINER --boo x\n", "unknown flag: --boo");
        rejects("FOO bar\n", "unknown instruction: FOO");
        rejects("FROM a b\n", "either one or three");
        rejects("FROM a AS 1x\n", "invalid name for build stage");
        rejects(
            "HEALTHCHECK --interval=1ns CMD x\n",
            "cannot be less than 1ms",
        );
        rejects(
            "COPY <<EOF <<EOF2\nx\nEOF\ny\nEOF2\n",
            "heredoc as its destination",
        );
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(
            first("FROM --platform=linux/amd64 img AS Build\n").unwrap(),
            Inst::From {
                image: "img".into(),
                name: Some("build".into()),
                platform: Some("linux/amd64".into())
            }
        );
        match first("HEALTHCHECK --interval=0 --retries=3 CMD a b\n").unwrap() {
            Inst::Healthcheck(Healthcheck::Check {
                test,
                interval,
                retries,
                ..
            }) => {
                assert_eq!(test, ["CMD-SHELL", "a b"]);
                assert_eq!(interval, Some(Duration::ZERO));
                assert_eq!(retries, Some(3));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            crate::units::parse_duration("1m30s"),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            first("ARG a b=c\n").unwrap(),
            Inst::Arg(vec![("a".into(), None), ("b".into(), Some("c".into()))])
        );
        assert_eq!(
            first("ENV a=1 b=2\n").unwrap(),
            Inst::Env(vec![("a".into(), "1".into()), ("b".into(), "2".into())])
        );
        assert_eq!(
            first("ENV a 1 2\n").unwrap(),
            Inst::Env(vec![("a".into(), "1 2".into())])
        );
        assert!(matches!(
            first("ONBUILD RUN x\n").unwrap(),
            Inst::Onbuild(_)
        ));
        assert!(matches!(
            first("COPY <<EOF /dest\nx\nEOF\n").unwrap(),
            Inst::Copy(_)
        ));
    }
}
