//! `kiln build`: arguments into a [`pipeline::Request`], the report rendered.

use super::outln;
use super::{Failure, SpecArgs, exit_code, render_all};
use crate::diag::Code;
use crate::diag::{Diagnostic, Sources};
use crate::pipeline::{self, Request};
use crate::progress::{self, Progress};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Args, Debug)]
pub struct BuildArgs {
    #[command(flatten)]
    pub building: Building,
    /// Export the target: `DIR`, `type=local,dest=DIR`, `type=tar,dest=FILE`, `type=oci,dest=FILE[,tar=false]`, `type=docker,dest=FILE`, `type=image,name=REF,push=true` (repeatable; with several `--target`s, each `-o` exports the `--target` before it)
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub outputs: Vec<String>,
    /// For each `-o`, the `--target` given before it on the command line.
    #[arg(skip)]
    pub output_targets: Vec<Option<String>>,
    /// Name the target's image in the local image store (repeatable): `kiln images` lists it, `from image="NAME"` builds on it
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    pub tags: Vec<String>,
    /// Say which steps would run and why, and which are cached (locally or in the remote cache); run, export and record nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Let the spec's export block write outside the spec's directory (read it first: a spec from anywhere could name `/root/.ssh`)
    #[arg(long)]
    pub allow_export_outside: bool,
    /// Docker's `--load`: refused (kiln has no Docker daemon to load into); see the message
    #[arg(long, hide = true)]
    pub load: bool,
    /// Docker's `--network`: refused (kiln sets the network per `run` step); see the message
    #[arg(long, hide = true, value_name = "MODE")]
    pub network: Option<String>,
    /// Docker's `--iidfile`: refused (name the image with `-t`); see the message
    #[arg(long, hide = true, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
}

/// What `kiln build` and `kiln test` share: the spec, the stages and how
/// they are built.
#[derive(Args, Debug)]
pub struct Building {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Build this stage (repeatable; a glob such as `'test-*'`, or `NAME/...` for every stage below `NAME/`); replaces the export block
    #[arg(long = "target", value_name = "STAGE")]
    pub targets: Vec<String>,
    /// Run every step and hash every context file, ignoring the cache (results are still stored)
    #[arg(long)]
    pub no_cache: bool,
    /// Build and export only the targets or exports a change since the git commit REF may change (see `kiln affected`)
    #[arg(long, value_name = "REF")]
    pub affected: Option<String>,
    /// How many stages run at once [default: number of CPUs; at most 256]
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub jobs: Option<usize>,
    /// How to show progress
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: progress::Mode,
    /// Write a Chrome trace of the build here (open it in Perfetto or chrome://tracing): stages and steps on their threads, cache hits, the critical path
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Where the cache lives [default: ~/.cache/kiln, or a .kiln directory beside the spec]
    #[arg(long, env = "KILN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The most an archive (or an image layer) may expand to when extracted
    #[arg(long, value_name = "SIZE", default_value = pipeline::DEFAULT_UNPACK_SIZE)]
    pub max_unpack_size: String,
    /// The platform of the images stages are built on [default: this machine's]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Speak to this registry over plain HTTP (repeatable; loopback registries always may)
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Use only what kiln.lock records: fail if an image is not locked (for CI)
    #[arg(long)]
    pub locked: bool,
    /// A secret for `run` steps' `type=secret` mounts: `id=NAME,src=FILE` or `id=NAME,env=VAR` (repeatable)
    #[arg(long = "secret", value_name = "id=NAME,src=FILE")]
    pub secrets: Vec<String>,
    /// An SSH agent for `type=ssh` mounts: `default` ($SSH_AUTH_SOCK) or `ID=SOCKET` (repeatable)
    #[arg(long = "ssh", value_name = "default|ID=SOCKET")]
    pub ssh: Vec<String>,
    /// A Remote Execution API cache to share results through: `grpc://HOST:PORT` or `grpcs://HOST:PORT` (looked in after the local cache; results built here are uploaded). Also set in a settings file (`remote-cache`, see spec/language.md)
    #[arg(long, env = "KILN_REMOTE_CACHE", value_name = "URL")]
    pub remote_cache: Option<String>,
    /// The REAPI instance name on the remote cache (default: the server's default instance)
    #[arg(long, env = "KILN_REMOTE_INSTANCE", value_name = "NAME")]
    pub remote_instance: Option<String>,
    /// A header sent to the remote cache (repeatable): `NAME=VALUE`, or `NAME=$VAR` to take the value from an environment variable
    #[arg(long = "remote-header", value_name = "NAME=VALUE")]
    pub remote_headers: Vec<String>,
    /// Upload results built here to the remote cache (`false` for machines that only read; default true)
    #[arg(long, env = "KILN_REMOTE_UPLOAD", value_name = "BOOL", action = clap::ArgAction::Set)]
    pub remote_upload: Option<bool>,
    /// The longest the remote cache may take to answer before the build goes on without it (default 10)
    #[arg(long, value_name = "SECONDS")]
    pub remote_timeout: Option<u64>,
    /// Look results up in a cache kept in a registry, as buildx does: `type=registry,ref=REG/NAME:TAG`
    #[arg(long, value_name = "type=registry,ref=REF")]
    pub cache_from: Option<String>,
    /// Write this build's results to a cache kept in a registry: `type=registry,ref=REG/NAME:TAG`
    #[arg(long, value_name = "type=registry,ref=REF")]
    pub cache_to: Option<String>,
}

/// Docker flags kiln takes the words of but not the meaning: each refused
/// with what to write instead.
fn docker_flags(args: &BuildArgs) -> Result<(), Diagnostic> {
    if args.load {
        return Err(Diagnostic::new(
            Code::CLI_DOCKER_FLAG,
            "`--load` loads into a Docker daemon, and kiln does not talk to one",
        )
        .with_help("write a `docker load` archive with `-o type=docker,dest=image.tar,name=NAME:TAG` and run `docker load -i image.tar`, or keep the image in kiln's own store with `-t NAME`"));
    }
    if let Some(n) = &args.network {
        return Err(Diagnostic::new(
            Code::CLI_DOCKER_FLAG,
            format!("`--network {n}` sets the network of every RUN; kiln sets it per step"),
        )
        .with_help("write `network=\"host\"` on a spec's `run` (the default is none), or `RUN --network=host` in the Dockerfile (Docker's default, network on, is kept for imported RUNs)"));
    }
    if let Some(f) = &args.iidfile {
        return Err(Diagnostic::new(
            Code::CLI_DOCKER_FLAG,
            format!("`--iidfile {}` writes the ID of an image docker keeps; kiln names images instead", f.display()),
        )
        .with_help("use `-t NAME` (`kiln images` shows its digest), or export the image (`-o type=oci,dest=image.tar`) and read its digest from `image_tagged`/`export_written` events with `--progress json`"));
    }
    Ok(())
}

/// `--secret id=NAME,src=FILE` (or `env=VAR`, Docker's forms) read now.
fn secrets(given: &[String]) -> Result<crate::exec::Secrets, Diagnostic> {
    let bad =
        |s: &str, why: &str| Diagnostic::new(Code::CLI_SECRET, format!("`--secret {s}`: {why}"));
    let mut out = std::collections::HashMap::new();
    for s in given {
        let (mut id, mut src, mut env) = (None, None, None);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("id", v)) => id = Some(v.to_string()),
                Some(("src" | "source", v)) => src = Some(v.to_string()),
                Some(("env", v)) => env = Some(v.to_string()),
                Some(("type", "file" | "env")) => {}
                _ => return Err(bad(s, &format!("`{part}` is not understood"))),
            }
        }
        let id = id
            .or_else(|| env.clone())
            .or_else(|| {
                src.as_deref()
                    .and_then(|p| Path::new(p).file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .ok_or_else(|| bad(s, "it has no `id=`"))?;
        let value = match (&src, &env) {
            (Some(path), _) => std::fs::read(path)
                .map_err(|e| Diagnostic::io("cannot read the secret", Path::new(path), &e))?,
            (None, Some(var)) => std::env::var_os(var)
                .ok_or_else(|| bad(s, &format!("the environment has no `{var}`")))?
                .into_encoded_bytes(),
            (None, None) => std::env::var_os(&id)
                .ok_or_else(|| bad(s, "give `src=FILE` or `env=VAR`"))?
                .into_encoded_bytes(),
        };
        out.insert(id, value);
    }
    Ok(crate::exec::Secrets(std::sync::Arc::new(out)))
}

/// `--ssh default` ($SSH_AUTH_SOCK) or `--ssh ID=SOCKET`.
fn ssh(given: &[String]) -> Result<std::collections::HashMap<String, PathBuf>, Diagnostic> {
    let mut out = std::collections::HashMap::new();
    for s in given {
        let (id, socket) = match s.split_once('=') {
            Some((id, sock)) => (id.to_string(), PathBuf::from(sock)),
            None => {
                let sock = std::env::var_os("SSH_AUTH_SOCK").ok_or_else(|| {
                    Diagnostic::new(
                        Code::CLI_SSH,
                        format!("`--ssh {s}`: `SSH_AUTH_SOCK` is not set"),
                    )
                })?;
                (s.to_string(), PathBuf::from(sock))
            }
        };
        out.insert(id, socket);
    }
    Ok(out)
}

pub(super) fn cancel_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let _ = ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            // Second Ctrl-C: leave now. Every store write is a rename of a
            // finished file, so nothing half-written is ever trusted.
            std::process::exit(130);
        }
    });
    flag
}

impl BuildArgs {
    /// Note, for each `-o`, the `--target` before it on the command line.
    pub fn place_outputs(&mut self, m: &clap::ArgMatches) {
        let targets: Vec<usize> = m
            .indices_of("targets")
            .map(Iterator::collect)
            .unwrap_or_default();
        self.output_targets = m
            .indices_of("outputs")
            .map(|outs| {
                outs.map(|o| {
                    let before = targets.iter().rposition(|t| *t < o)?;
                    self.building.targets.get(before).cloned()
                })
                .collect()
            })
            .unwrap_or_default();
    }
}

/// The request the arguments describe.
fn request(args: &BuildArgs) -> Result<Request, Diagnostic> {
    let outputs = args
        .outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let mut out = super::output::parse(o)?;
            out.target = args.output_targets.get(i).cloned().flatten();
            Ok(out)
        })
        .collect::<Result<Vec<_>, Diagnostic>>()?;
    Ok(Request {
        outputs,
        tags: args.tags.clone(),
        allow_export_outside: args.allow_export_outside,
        dry_run: args.dry_run,
        ..args.building.request()?
    })
}

impl Building {
    /// The request these arguments describe, exporting what the spec
    /// says (or nothing, with `--target`s).
    pub fn request(&self) -> Result<Request, Diagnostic> {
        let unpack_limit = crate::units::parse_size(&self.max_unpack_size).ok_or_else(|| {
            Diagnostic::new(
                Code::CLI_SIZE,
                format!("`--max-unpack-size {}` is not a size", self.max_unpack_size),
            )
        })?;
        Ok(Request {
            targets: self.targets.clone(),
            no_cache: self.no_cache,
            jobs: self.jobs,
            state_dir: self.state_dir.clone(),
            unpack_limit,
            platform: self.platform.clone(),
            insecure_registries: self.insecure_registries.clone(),
            lock: if self.locked {
                crate::image::set::LockMode::Locked
            } else {
                crate::image::set::LockMode::Normal
            },
            secrets: secrets(&self.secrets)?,
            ssh: ssh(&self.ssh)?,
            affected: self.affected.clone(),
            ..Request::new(self.spec.input()?)
        })
    }
}

/// The remote cache's settings: `--remote-*` (and their environment
/// variables) over the settings file's `remote-cache`, which counts only
/// for the server it names (its headers may hold another server's
/// token). Header values `$VAR` are read from the environment, so a token
/// stays out of command lines and files.
pub(super) fn remote(
    args: &Building,
    sources: &Sources,
) -> Result<Option<crate::store::remote::Settings>, Failure> {
    // `--remote-cache ''` (or `KILN_REMOTE_CACHE=`): no remote cache,
    // whatever the settings file says.
    if args.remote_cache.as_deref() == Some("") {
        return Ok(None);
    }
    let config = settings_file(sources)?.unwrap_or_default();
    let cli_url = args.remote_cache.clone();
    if let Some(registry) = registry_cache(args, &config, cli_url.is_some())? {
        let settings = crate::store::remote::Settings {
            url: match (&registry.from, &registry.to) {
                (Some(f), Some(t)) if f != t => format!("{f}` and `{t}"),
                (Some(r), _) | (None, Some(r)) => r.clone(),
                (None, None) => String::new(),
            },
            instance: String::new(),
            headers: Vec::new(),
            upload: registry.to.is_some(),
            timeout: std::time::Duration::from_secs(
                args.remote_timeout.unwrap_or(10).clamp(1, MAX_TIMEOUT),
            ),
            registry: Some(registry),
        };
        return Ok(Some(settings));
    }
    let file = config.remote;
    let file = file.filter(|f| {
        cli_url
            .as_ref()
            .is_none_or(|u| same_server(u, &f.url.value))
    });
    let Some(url) = cli_url.or_else(|| file.as_ref().map(|f| f.url.value.clone())) else {
        return Ok(None);
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: String| {
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        headers.push((name.to_string(), value));
    };
    for (name, value) in file.iter().flat_map(|f| &f.headers) {
        let value = header_value(&value.value).map_err(|(var, help)| {
            Diagnostic::new(
                Code::CONFIG,
                format!(
                    "header `{}` names the environment variable `{var}`, which is not set",
                    name.value
                ),
            )
            .with_label(value.span, "read from the environment")
            .with_help(help)
        })?;
        set(&name.value, value);
    }
    for h in &args.remote_headers {
        let Some((name, value)) = h.split_once('=').filter(|(n, _)| !n.trim().is_empty()) else {
            return Err(Diagnostic::new(
                Code::CLI_REMOTE,
                format!("`--remote-header {h}` is not NAME=VALUE"),
            )
            .into());
        };
        let value = header_value(value).map_err(|(var, help)| {
            Diagnostic::new(
                Code::CLI_REMOTE,
                format!(
                    "`--remote-header {h}` names the environment variable `{var}`, which is not set"
                ),
            )
            .with_help(help)
        })?;
        set(name.trim(), value);
    }
    let settings = crate::store::remote::Settings {
        url,
        instance: args
            .remote_instance
            .clone()
            .or_else(|| file.as_ref().and_then(|f| f.instance.clone()))
            .unwrap_or_default(),
        headers,
        upload: args
            .remote_upload
            .or_else(|| file.as_ref().and_then(|f| f.upload))
            .unwrap_or(true),
        timeout: std::time::Duration::from_secs(
            args.remote_timeout
                .or_else(|| {
                    file.as_ref()
                        .and_then(|f| f.timeout.as_ref().map(|t| t.value))
                })
                .unwrap_or(10)
                .clamp(1, MAX_TIMEOUT),
        ),
        registry: None,
    };
    if let Err(e) = settings.check() {
        let d = match file.filter(|f| f.url.value == settings.url) {
            Some(f) => Diagnostic::new(Code::CONFIG, e)
                .with_label(f.url.span, "the settings file's remote cache")
                .with_help("write `remote-cache \"grpc://HOST:PORT\"` (or grpcs://)"),
            None => Diagnostic::new(Code::CLI_REMOTE, e),
        };
        return Err(d.into());
    }
    Ok(Some(settings))
}

/// The registry cache: `--cache-from`/`--cache-to`, else the settings
/// file's `cache-from`/`cache-to` when the command line names no cache.
/// One remote cache at a time: a registry's or a REAPI server's.
fn registry_cache(
    args: &Building,
    config: &crate::frontend::kdl::config::Config,
    cli_url: bool,
) -> Result<Option<crate::store::remote::registry::RegistryCache>, Failure> {
    use crate::store::remote::registry::RegistryCache;
    let cli = |flag: &str, v: &Option<String>| -> Result<Option<String>, Failure> {
        v.as_deref()
            .filter(|v| !v.is_empty())
            .map(|v| {
                cache_ref(v).map_err(|e| {
                    Failure::from(
                        Diagnostic::new(Code::CLI_REMOTE, format!("`--{flag} {v}`: {e}"))
                            .with_help(format!(
                                "write `--{flag} type=registry,ref=REG/NAME:TAG`, as with buildx"
                            )),
                    )
                })
            })
            .transpose()
    };
    let (from, to) = (
        cli("cache-from", &args.cache_from)?,
        cli("cache-to", &args.cache_to)?,
    );
    let (from, to) = if from.is_some() || to.is_some() {
        if cli_url {
            return Err(Diagnostic::new(
                Code::CLI_REMOTE,
                "`--remote-cache` and `--cache-from`/`--cache-to` name two remote caches: kiln uses one at a time",
            )
            .into());
        }
        (from, to)
    } else if cli_url {
        return Ok(None);
    } else {
        let file = |name: &str, v: &Option<crate::diag::Spanned<String>>| {
            v.as_ref()
                .map(|v| {
                    cache_ref(&v.value).map_err(|e| {
                        Failure::from(
                            Diagnostic::new(Code::CONFIG, e)
                                .with_label(v.span, "not a registry cache")
                                .with_help(format!(
                                    "write `{name} \"type=registry,ref=REG/NAME:TAG\"`"
                                )),
                        )
                    })
                })
                .transpose()
        };
        let (from, to) = (
            file("cache-from", &config.cache_from)?,
            file("cache-to", &config.cache_to)?,
        );
        if let (Some(r), true) = (&config.remote, from.is_some() || to.is_some()) {
            return Err(Diagnostic::new(
                Code::CONFIG,
                "the settings file names two remote caches (`remote-cache` and `cache-from`/`cache-to`): kiln uses one at a time",
            )
            .with_label(r.url.span, "one")
            .into());
        }
        (from, to)
    };
    if from.is_none() && to.is_none() {
        return Ok(None);
    }
    Ok(Some(RegistryCache {
        from,
        to: to.filter(|_| args.remote_upload != Some(false)),
    }))
}

/// The reference of a `--cache-from`/`--cache-to` value, as buildx
/// writes it: `type=registry,ref=REG/NAME:TAG` (`mode=max` is taken: kiln
/// keeps every step). An error says what is wrong.
fn cache_ref(value: &str) -> Result<String, String> {
    // buildx's shorthand: a bare reference.
    if !value.contains('=') && !value.contains(',') {
        return cache_ref(&format!("type=registry,ref={value}"));
    }
    let mut pairs = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not KEY=VALUE"))?;
        pairs.push((k.trim(), v.trim()));
    }
    let get = |key: &str| pairs.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v);
    match get("type") {
        Some("registry") => {}
        Some(other) => {
            return Err(format!(
                "`type={other}` is not a cache kiln keeps: use `type=registry,ref=REG/NAME:TAG`, or `--remote-cache` for a Remote Execution API server"
            ));
        }
        None => return Err("no `type=registry`".into()),
    }
    for (k, v) in &pairs {
        match *k {
            // kiln keeps every step's result (`mode=max`) in its own
            // format, which needs none of buildx's format options.
            "type" | "ref" | "ignore-error" | "image-manifest" | "oci-mediatypes"
            | "compression" | "compression-level" | "force-compression" => {}
            "mode" if matches!(*v, "max" | "min") => {}
            "mode" => return Err(format!("`mode={v}` is neither `max` nor `min`")),
            other => {
                return Err(format!(
                    "`{other}=` is not a cache option kiln takes (type, ref, mode; buildx's format options are taken and need nothing)"
                ));
            }
        }
    }
    let reference = get("ref")
        .filter(|r| !r.is_empty())
        .ok_or("no `ref=REG/NAME:TAG`")?;
    let parsed = crate::image::reference::parse_registry(reference).map_err(|e| e.0)?;
    if parsed.digest.is_some() {
        return Err(format!(
            "`ref={reference}` names a digest: a cache is kept under a tag (`REG/NAME:TAG`)"
        ));
    }
    Ok(reference.to_string())
}

/// The longest timeout a remote cache gets, in seconds (a day).
const MAX_TIMEOUT: u64 = 86_400;

/// Whether two remote cache URLs name the same server (`grpc://h:1` and
/// `grpc://h:1/` do).
fn same_server(a: &str, b: &str) -> bool {
    use crate::store::remote::endpoint;
    let normal = |url: &str| endpoint(url).map(|e| e.to_ascii_lowercase());
    a == b || matches!((normal(a), normal(b)), (Ok(x), Ok(y)) if x == y)
}

/// A header's value: `$VAR` read from the environment (else the
/// variable's name and what to do), or the value itself.
fn header_value(value: &str) -> Result<String, (String, String)> {
    match value.strip_prefix('$').filter(|v| !v.is_empty()) {
        Some(var) => std::env::var(var).map_err(|_| {
            (
                var.to_string(),
                format!("set it (`export {var}=…`), or write the value itself"),
            )
        }),
        None => Ok(value.to_string()),
    }
}

/// The settings file: `KILN_CONFIG` when set (it must exist), else the
/// user's (`$XDG_CONFIG_HOME/kiln/config.kdl`, `~/.config/kiln/…`) or the
/// machine's (`/etc/kiln/config.kdl`), the first that exists.
fn settings_file(
    sources: &Sources,
) -> Result<Option<crate::frontend::kdl::config::Config>, Failure> {
    let path = match std::env::var_os("KILN_CONFIG") {
        // Set and empty: no settings file.
        Some(p) if p.is_empty() => None,
        Some(p) => Some(std::path::PathBuf::from(p)),
        None => {
            let user = std::env::var_os("XDG_CONFIG_HOME")
                .filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".config"))
                })
                .map(|d| d.join("kiln").join("config.kdl"));
            user.into_iter()
                .chain([std::path::PathBuf::from("/etc/kiln/config.kdl")])
                .find(|p| p.is_file())
        }
    };
    let Some(path) = path else {
        return Ok(None);
    };
    crate::frontend::kdl::config::load(&path, sources)
        .map(Some)
        .map_err(Failure::from)
}

/// A build's files get the same modes whatever umask kiln was started
/// with: what `run` steps create (as under Docker, whose runtimes use
/// 022), and the state directory. Set before any thread starts; exports
/// and the files kiln writes for the user set their modes themselves.
pub(super) fn fixed_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
}

/// The display, and the trace `--trace` asks for.
pub(super) enum Shown {
    Display(Box<dyn progress::Reporter>),
    Traced(progress::trace::Trace),
}

impl Shown {
    pub(super) fn new(b: &Building) -> Shown {
        let display = progress::reporter(b.progress);
        match b.trace {
            Some(_) => Shown::Traced(progress::trace::Trace::new(display)),
            None => Shown::Display(display),
        }
    }

    pub(super) fn reporter(&self) -> &dyn progress::Reporter {
        match self {
            Shown::Display(d) => d.as_ref(),
            Shown::Traced(t) => t,
        }
    }

    /// Write the trace (when asked for) of a build of `graph`.
    pub(super) fn write_trace(
        &self,
        b: &Building,
        title: &str,
        needs: &std::collections::HashMap<String, Vec<String>>,
    ) -> Result<(), Diagnostic> {
        match (self, &b.trace) {
            (Shown::Traced(t), Some(path)) => {
                super::write_whole(path, &t.chrome(title, needs), "the trace")
            }
            _ => Ok(()),
        }
    }
}

/// Each stage's dependencies by name (what a trace's critical path
/// follows).
pub(super) fn needs(graph: &crate::ir::Graph) -> std::collections::HashMap<String, Vec<String>> {
    graph
        .stages
        .iter()
        .map(|s| {
            let deps = s.deps.iter().map(|d| graph.stage(*d).name.clone());
            (s.name.clone(), deps.collect())
        })
        .collect()
}

/// A dry run's answer: each step, cached or why it would run, then the
/// counts.
fn print_plan(planned: &[pipeline::Planned]) {
    for p in planned {
        outln!("{:<9}  {} [{}] {}", p.status, p.stage, p.step + 1, p.text);
        for why in &p.why {
            outln!("           {why}");
        }
    }
    let count = |status: &str| planned.iter().filter(|p| p.status == status).count();
    let (run, cached, remote) = (count("would run"), count("cached"), count("remote"));
    let remote = if remote > 0 {
        format!(", {remote} in the remote cache")
    } else {
        String::new()
    };
    outln!(
        "dry run: {run} step{} would run, {cached} cached{remote}",
        if run == 1 { "" } else { "s" }
    );
}

pub fn run(args: &BuildArgs, sources: &Sources) -> Result<(), Failure> {
    fixed_umask();
    docker_flags(args)?;
    let mut req = request(args)?;
    req.remote = remote(&args.building, sources)?;
    let plan = pipeline::plan(&req, sources)?;
    let shown = Shown::new(&args.building);
    let needs = needs(&plan.loaded.graph);
    let progress = Progress::new(shown.reporter());
    if !plan.loaded.warnings.is_empty() {
        progress.println(&render_all(&plan.loaded.warnings, sources));
    }
    let report = pipeline::run(
        plan,
        &req,
        sources,
        &progress,
        cancel_flag(),
        &super::waiting,
    );
    let report = match report {
        Ok(r) => r,
        Err(d) => {
            progress.finish();
            let _ = shown.write_trace(&args.building, "kiln build", &needs);
            return Err(d.into());
        }
    };
    if !report.notices.is_empty() {
        progress.println(&render_all(&report.notices, sources));
    }
    if !report.tests.is_empty() {
        let (passed, cached, failed, not_run) = pipeline::testing::counts(&report.tests);
        progress.println(&format!(
            "tests: {passed} passed ({cached} cached), {failed} failed, {not_run} not run (`kiln test` lists each)"
        ));
    }
    progress.finish();
    if req.dry_run {
        print_plan(&report.planned);
    }
    let mut failures = report.failures;
    if let Err(d) = shown.write_trace(&args.building, "kiln build", &needs) {
        failures.push(d);
    }
    if report.interrupted {
        failures.push(Diagnostic::interrupted());
        return Err(Failure {
            diagnostics: failures,
            code: 130,
        });
    }
    if !failures.is_empty() {
        let code = exit_code(&failures);
        return Err(Failure {
            diagnostics: failures,
            code,
        });
    }
    // With `-o -`, standard output is the tar and nothing else.
    let tar_on_stdout = req
        .outputs
        .iter()
        .any(|o| o.dest.as_os_str() == "-" && o.format == crate::ir::ExportFormat::Tar);
    if !tar_on_stdout && !req.dry_run {
        for (stage, digest) in &report.results {
            outln!("{stage}\t{}", digest.hex());
        }
    }
    Ok(())
}
