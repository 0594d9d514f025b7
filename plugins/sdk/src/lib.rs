//! Write kiln plugins in Rust.
//!
//! A kiln plugin is a WASI preview 1 program. kiln runs it with the stage
//! tree as `/` (read-write), the step's mounts read-only, the step's args
//! and env, a fixed clock and a seeded random source (see the plugin ABI in
//! kiln's `spec/plugins.md`). This crate adds what every plugin needs:
//!
//! - [`run`]: the entry point. It moves to the stage's working directory
//!   (`PWD`), runs your `main`, prints an [`Error`] as
//!   `NAME: error: MESSAGE` and exits with its code.
//! - [`Args`]: `--name VALUE`, `--name=VALUE`, `--flag` and positionals,
//!   with errors for unknown options and missing values.
//! - [`tree`]: walk a directory in a stable order, read and write files
//!   (creating parents).
//! - [`manifest!`]: embed the plugin's name, version, description and
//!   options in a `kiln-plugin` custom section, which `kiln plugin inspect`
//!   shows.
//!
//! ```no_run
//! use kiln_plugin_sdk::{Args, Result, manifest, run};
//!
//! manifest! {
//!     name: "hello",
//!     description: "Write a greeting",
//!     options: ["--to NAME: who to greet"],
//! }
//!
//! fn main() {
//!     run(|| -> Result<()> {
//!         let mut args = Args::from_env(&["--to"], &[])?;
//!         let to = args.value("--to").unwrap_or_else(|| "world".into());
//!         let out = args.positional("OUT")?;
//!         args.finish()?;
//!         kiln_plugin_sdk::tree::write(&out, format!("hello, {to}\n"))?;
//!         Ok(())
//!     })
//! }
//! ```

use std::fmt;

pub mod tree;

/// A plugin failure: a message for the build log and an exit code.
#[derive(Debug)]
pub struct Error {
    pub message: String,
    pub code: i32,
}

impl Error {
    /// A failure with exit code 1.
    pub fn new(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
            code: 1,
        }
    }

    /// Bad usage: exit code 2, as command-line tools do.
    pub fn usage(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
            code: 2,
        }
    }

    /// The same error with more context in front: `context: message`.
    pub fn context(self, context: impl fmt::Display) -> Error {
        Error {
            message: format!("{context}: {}", self.message),
            code: self.code,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::new(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Add context to any error: `fs::read(p).context(p.display())?`.
pub trait Context<T> {
    fn context(self, context: impl fmt::Display) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(context))
    }
}

/// The program's name (its first argument, the plugin's name in the spec).
pub fn program() -> String {
    std::env::args().next().unwrap_or_else(|| "plugin".into())
}

/// Run a plugin's `main`: move to the stage's working directory, run, and
/// turn an error into a message on stderr and an exit code.
pub fn run(main: impl FnOnce() -> Result<()>) -> ! {
    if let Ok(pwd) = std::env::var("PWD") {
        // A stage without the directory (it is created by `workdir`) keeps `/`.
        let _ = std::env::set_current_dir(pwd);
    }
    match main() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("{}: error: {}", program(), e.message);
            std::process::exit(e.code)
        }
    }
}

/// Command-line arguments: options that take a value, flags, positionals.
#[derive(Debug)]
pub struct Args {
    values: Vec<(String, String)>,
    flags: Vec<String>,
    positionals: std::collections::VecDeque<String>,
}

impl Args {
    /// Parse the process's arguments (after the program name). `valued`
    /// options take a value (`--set K=V` or `--set=K=V`, repeatable);
    /// `flags` take none. Anything else starting with `--` is an error; `--`
    /// ends the options.
    pub fn from_env(valued: &[&str], flags: &[&str]) -> Result<Args> {
        Args::parse(std::env::args().skip(1), valued, flags)
    }

    pub fn parse(
        args: impl IntoIterator<Item = String>,
        valued: &[&str],
        flags: &[&str],
    ) -> Result<Args> {
        let mut out = Args {
            values: Vec::new(),
            flags: Vec::new(),
            positionals: Default::default(),
        };
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            if a == "--" {
                out.positionals.extend(it.by_ref());
                break;
            }
            if !a.starts_with("--") || a == "-" {
                out.positionals.push_back(a);
                continue;
            }
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (a.clone(), None),
            };
            if valued.contains(&name.as_str()) {
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .ok_or_else(|| Error::usage(format!("{name} needs a value")))?,
                };
                out.values.push((name, value));
            } else if flags.contains(&name.as_str()) {
                if inline.is_some() {
                    return Err(Error::usage(format!("{name} takes no value")));
                }
                out.flags.push(name);
            } else {
                let mut known: Vec<&str> = valued.to_vec();
                known.extend(flags);
                return Err(Error::usage(if known.is_empty() {
                    format!("unknown option {name}: this plugin takes no options")
                } else {
                    format!("unknown option {name} (options: {})", known.join(", "))
                }));
            }
        }
        Ok(out)
    }

    /// The last value of an option.
    pub fn value(&self, name: &str) -> Option<String> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    /// Every value of a repeatable option, in order.
    pub fn values(&self, name: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Whether a flag was given.
    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    /// The next positional argument; `what` names it in the error.
    pub fn positional(&mut self, what: &str) -> Result<String> {
        self.positionals
            .pop_front()
            .ok_or_else(|| Error::usage(format!("missing argument {what}")))
    }

    /// The positional arguments not taken yet.
    pub fn rest(&mut self) -> Vec<String> {
        self.positionals.drain(..).collect()
    }

    /// Fail if positional arguments are left over.
    pub fn finish(self) -> Result<()> {
        match self.positionals.front() {
            None => Ok(()),
            Some(extra) => Err(Error::usage(format!("unexpected argument {extra}"))),
        }
    }
}

/// Embed the plugin's manifest in a `kiln-plugin` custom section:
/// `name`, `description`, and optionally `options` (one string each).
/// The version is the crate's.
#[macro_export]
macro_rules! manifest {
    (name: $name:literal, description: $desc:literal $(, options: [$($opt:literal),* $(,)?])? $(,)?) => {
        const _: () = {
            const TEXT: &str = concat!(
                "name=", $name, "\n",
                "version=", env!("CARGO_PKG_VERSION"), "\n",
                "description=", $desc, "\n",
                $($("option=", $opt, "\n",)*)?
            );
            const LEN: usize = TEXT.len();
            #[used]
            #[unsafe(link_section = "kiln-plugin")]
            static MANIFEST: [u8; LEN] = {
                let bytes = TEXT.as_bytes();
                let mut out = [0u8; LEN];
                let mut i = 0;
                while i < LEN {
                    out[i] = bytes[i];
                    i += 1;
                }
                out
            };
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &[&str]) -> Result<Args> {
        Args::parse(a.iter().map(|s| s.to_string()), &["--set"], &["--check"])
    }

    #[test]
    fn options_flags_and_positionals() {
        let mut a = parse(&["--set", "a=1", "in", "--set=b=2", "--check", "out"]).unwrap();
        assert_eq!(a.values("--set"), ["a=1", "b=2"]);
        assert!(a.flag("--check"));
        assert_eq!(a.positional("IN").unwrap(), "in");
        assert_eq!(a.positional("OUT").unwrap(), "out");
        assert!(a.positional("MORE").is_err());
        a.finish().unwrap();
    }

    #[test]
    fn mistakes_are_usage_errors() {
        assert_eq!(parse(&["--nope"]).unwrap_err().code, 2);
        assert!(
            parse(&["--set"])
                .unwrap_err()
                .message
                .contains("needs a value")
        );
        assert!(parse(&["--check=1"]).is_err());
        let a = parse(&["x", "y"]).unwrap();
        assert!(a.finish().is_err());
        let mut a = parse(&["--", "--set"]).unwrap();
        assert_eq!(a.positional("X").unwrap(), "--set");
    }
}
