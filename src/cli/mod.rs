//! The command line: parse arguments, run a command, print results and
//! diagnostics, choose the exit code. The only module that prints
//! diagnostics.
//!
//! Exit codes: 0 success, 1 a build step failed, 2 bad input (spec, command
//! line, context path), 3 environment (disk, permissions), 70 a kiln bug,
//! 130 interrupted.

mod build;
mod commands;
mod lock;
mod output;
mod plugin;
mod query;
mod test;
mod verify;

use crate::diag::Code;
use crate::diag::{Class, Diagnostic, RenderOptions, Sources, render};
use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    about = "Hermetic, parallel, cached builds from KDL specs",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build the stages a spec exports (or `--target`s)
    Build(Box<build::BuildArgs>),
    /// Build every test (or those `--target`s or `--affected` pick), go on past failures, report each (exit 1 if any failed)
    Test(Box<test::TestArgs>),
    /// Check a spec without building anything
    Check(SpecArgs),
    /// Write the KDL spec equivalent to a Dockerfile
    Import(commands::ImportArgs),
    /// Work with plugins: pin them, inspect a module, start a new one
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Print the stage graph (text, or Graphviz with `--format dot`)
    Graph(commands::GraphArgs),
    /// Ask the stage graph: deps, rdeps, path, reads FILE, exports (text, JSON or Graphviz)
    Query(query::QueryArgs),
    /// The stages a change since a git commit may change (their steps read a changed file, or they need such a stage)
    Affected(query::AffectedArgs),
    /// Resolve the images stages are built on and write kiln.lock (`--update` resolves again)
    Lock(lock::LockArgs),
    /// Show, for each step of the last build, whether it was cached and why it ran
    Explain(commands::ExplainArgs),
    /// Remove cache entries no longer needed, down to a size budget
    Gc(commands::GcArgs),
    /// Build every export again from nothing in a fresh state directory and compare (exit 1 on a difference)
    Verify(verify::VerifyArgs),
    /// List the images named with `kiln build -t` (the local image store, in the state directory)
    Images(commands::ImagesArgs),
    /// Remove names from the local image store (`kiln gc` then drops what nothing uses)
    Rmi(commands::RmiArgs),
    /// Hash a context directory as a build would (uses and updates the stat index)
    HashContext(commands::HashArgs),
}

/// Where the spec and context are.
#[derive(Args, Debug, Clone)]
pub struct SpecArgs {
    /// The build context: the directory `copy` reads from [default: the directory of the `-f` file, else .]
    pub context: Option<PathBuf>,
    /// The spec file: KDL, or a Dockerfile [default: CONTEXT/kiln.kdl, else CONTEXT/Dockerfile]
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Set an arg declared in the spec (repeatable)
    #[arg(long = "arg", visible_alias = "build-arg", value_name = "NAME=VALUE")]
    pub args: Vec<String>,
    /// The directory spec files may `include` from [default: the version-control checkout around the spec, else its directory]
    #[arg(long, env = "KILN_PROJECT_ROOT", value_name = "DIR")]
    pub project_root: Option<PathBuf>,
}

impl SpecArgs {
    /// The context: as given; else the directory of the spec file named
    /// with `-f` (as for `kiln.kdl`, so `kiln build -f app/Dockerfile`
    /// from anywhere reads `app/`); else the working directory.
    pub fn context(&self) -> PathBuf {
        if let Some(c) = &self.context {
            return c.clone();
        }
        match self.file.as_deref().and_then(std::path::Path::parent) {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    pub fn spec_path(&self) -> PathBuf {
        crate::pipeline::load::SpecInput {
            context: self.context(),
            file: self.file.clone(),
            ..Default::default()
        }
        .spec_path()
    }

    /// The spec input these arguments name.
    pub fn input(&self) -> Result<crate::pipeline::load::SpecInput, Diagnostic> {
        let context = self.context();
        // The file system's root is no context: walking it reads /proc.
        if std::fs::canonicalize(&context).is_ok_and(|c| c == std::path::Path::new("/")) {
            return Err(Diagnostic::new(
                Code::CLI_CONTEXT,
                format!(
                    "`{}` is the file system's root, which cannot be a build context",
                    context.display()
                ),
            ));
        }
        Ok(crate::pipeline::load::SpecInput {
            context,
            file: self.file.clone(),
            args: self.arg_pairs()?,
            project_root: self.project_root.clone(),
        })
    }

    /// `--arg` values as pairs.
    pub fn arg_pairs(&self) -> Result<Vec<(String, String)>, Diagnostic> {
        self.args
            .iter()
            .map(|a| match a.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => Err(Diagnostic::new(
                    Code::CLI_ARG,
                    format!("`--arg {a}` is not NAME=VALUE"),
                )),
            })
            .collect()
    }
}

/// Everything a command reports: diagnostics in order, then an exit code.
pub struct Failure {
    pub diagnostics: Vec<Diagnostic>,
    pub code: u8,
}

impl From<Diagnostic> for Failure {
    fn from(d: Diagnostic) -> Failure {
        let code = d.class().exit_code();
        Failure {
            diagnostics: vec![d],
            code,
        }
    }
}

impl From<Vec<Diagnostic>> for Failure {
    fn from(ds: Vec<Diagnostic>) -> Failure {
        let code = exit_code(&ds);
        Failure {
            diagnostics: ds,
            code,
        }
    }
}

/// The exit code for a set of errors: the most serious class wins.
pub fn exit_code(ds: &[Diagnostic]) -> u8 {
    let errors = ds.iter().filter(|d| !d.warning);
    let worst = errors.map(|d| d.class()).max_by_key(|c| match c {
        Class::Build => 0,
        Class::User => 1,
        Class::Environment => 2,
        Class::Internal => 3,
    });
    worst.map_or(0, Class::exit_code)
}

/// Render diagnostics for stderr.
pub fn render_all(ds: &[Diagnostic], sources: &Sources) -> String {
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(100);
    ds.iter()
        .map(|d| render(d, sources, RenderOptions { color, width }))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Write to stdout; a closed pipe (`kiln graph | head`) ends kiln quietly
/// instead of panicking.
pub fn write_out(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|_| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("kiln: cannot write to stdout: {e}");
        std::process::exit(3);
    }
}

/// `println!` for command output, through [`write_out`].
macro_rules! outln {
    () => { $crate::cli::write_out(format_args!("\n")) };
    ($($t:tt)*) => { $crate::cli::write_out(format_args!("{}\n", format_args!($($t)*))) };
}

/// `print!` for command output, through [`write_out`].
macro_rules! out {
    ($($t:tt)*) => { $crate::cli::write_out(format_args!($($t)*)) };
}
pub(crate) use {out, outln};

/// Write a file the user asked for (a report, a trace) whole: a temp file
/// beside it, renamed over it, so a reader never sees half of one.
pub fn write_whole(path: &std::path::Path, text: &str, what: &str) -> Result<(), Diagnostic> {
    use std::path::Path;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let fail = |e: std::io::Error| Diagnostic::io(&format!("cannot write {what}"), path, &e);
    std::fs::create_dir_all(dir).map_err(fail)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(fail)?;
    // As any file a user's program writes (the temp file is private).
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

/// Tell the user why kiln is waiting for the store lock.
pub fn waiting(why: &str) {
    eprintln!("kiln: waiting for the state directory lock ({why})");
}

pub fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|c| (c, m)));
    let cli = match parsed {
        Ok((mut c, m)) => {
            // Which `--target` each `-o` follows (an `-o` per target).
            if let (Command::Build(a), Some(("build", m))) = (&mut c.command, m.subcommand()) {
                a.place_outputs(m);
            }
            c
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let sources = Sources::new();
    let result = match cli.command {
        Command::Build(a) => build::run(&a, &sources),
        Command::Test(a) => test::run(&a, &sources),
        Command::Check(a) => commands::check(&a, &sources),
        Command::Import(a) => commands::import(&a, &sources),
        Command::Lock(a) => lock::run(&a, &sources),
        Command::Plugin(c) => plugin::run(&c, &sources),
        Command::Graph(a) => commands::graph(&a, &sources),
        Command::Query(a) => query::run(&a, &sources),
        Command::Affected(a) => query::affected(&a, &sources),
        Command::Explain(a) => commands::explain(&a, &sources),
        Command::Gc(a) => commands::gc(&a, &sources),
        Command::Images(a) => commands::images(&a),
        Command::Verify(a) => verify::run(&a, &sources),
        Command::Rmi(a) => commands::rmi(&a),
        Command::HashContext(a) => commands::hash_context(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.diagnostics.is_empty() {
                eprint!("{}", render_all(&f.diagnostics, &sources));
            }
            ExitCode::from(f.code)
        }
    }
}
