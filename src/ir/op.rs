//! What a step does, after substitution: plain data, one type per step
//! kind. No type here holds a [`crate::diag::Span`]: locations live in the
//! graph's [`super::SourceMap`], so no location can reach a cache key,
//! by construction. How each kind is keyed, described and run is
//! `exec::steps`' business.

use super::{ContextId, PluginId, StageId};
use crate::model::state::Healthcheck;
use serde::Serialize;

#[derive(Clone, Debug)]
pub enum Op {
    Copy(Copy),
    Fetch(Fetch),
    Git(Git),
    Write(Write),
    Mkdir(Mkdir),
    Rm(Rm),
    Symlink(Symlink),
    Meta(Meta),
    Wasm(WasmOp),
    Run(RunOp),
}

/// What a step reads besides its stage's own tree: the one list that
/// compile-time dependencies, `kiln check`'s preflight, the build memo,
/// provenance and `kiln graph` ask, so none of them matches step kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read<'a> {
    /// Another stage's result, and how it is read.
    Stage(StageId, Via),
    /// A context's files.
    Context(ContextId),
    /// A plugin's module (which may be a stage's result: see
    /// [`super::Plugin::from_stage`]).
    Plugin(PluginId),
    /// A host file whose digest joins the key (`host-inputs`).
    HostFile(&'a str),
    /// A remote source, pinned by the spec or the lock file (`fetch`, `git`).
    Remote(&'a str),
}

/// How a step reads another stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// `copy from=`.
    Copy,
    /// A bind mount (`run`) or a read-only mount (`wasm`).
    Mount,
    /// What a new cache mount starts with.
    CacheSeed,
}

impl Via {
    pub fn label(self) -> &'static str {
        match self {
            Via::Copy => "copy",
            Via::Mount | Via::CacheSeed => "mount",
        }
    }
}

impl Op {
    /// Calls `read` with everything the step reads (see [`Read`]), in the
    /// order the step declares it. Every kind answers here, exhaustively.
    pub fn reads<'a>(&'a self, read: &mut dyn FnMut(Read<'a>)) {
        fn from<'a>(f: CopyFrom, via: Via) -> Read<'a> {
            match f {
                CopyFrom::Stage(s) => Read::Stage(s, via),
                CopyFrom::Context(c) => Read::Context(c),
            }
        }
        match self {
            Op::Copy(c) => read(from(c.from, Via::Copy)),
            Op::Fetch(f) => read(Read::Remote(&f.url)),
            Op::Git(g) => read(Read::Remote(&g.url)),
            Op::Write(_) | Op::Mkdir(_) | Op::Rm(_) | Op::Symlink(_) | Op::Meta(_) => {}
            Op::Wasm(w) => {
                read(Read::Plugin(w.plugin));
                for m in &w.mounts {
                    read(from(m.from, Via::Mount));
                }
            }
            Op::Run(r) => {
                for m in &r.mounts {
                    match &m.kind {
                        MountKind::Bind { from: f, .. } => read(from(*f, Via::Mount)),
                        MountKind::Cache { from: Some(f), .. } => read(from(*f, Via::CacheSeed)),
                        MountKind::Cache { from: None, .. } => {}
                        MountKind::Tmpfs { .. }
                        | MountKind::Secret { .. }
                        | MountKind::Ssh { .. } => {}
                    }
                }
                for h in &r.host_inputs {
                    read(Read::HostFile(h));
                }
            }
        }
    }
}

/// Where a copy or a mount reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyFrom {
    Context(ContextId),
    Stage(StageId),
}

/// `chown=`: numeric ids, or names looked up in the stage's `/etc/passwd` and `/etc/group`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub user: String,
    pub group: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Copy {
    /// Source paths or globs (their locations: the step's parts, in order).
    pub sources: Vec<String>,
    pub dest: String,
    pub from: CopyFrom,
    pub chmod: Option<u32>,
    pub chown: Option<Owner>,
    /// Patterns of entries left out, matched against source paths.
    pub exclude: Vec<String>,
    /// Keep each source's parent directories below the destination.
    pub parents: bool,
    /// Extract sources that are tar archives.
    pub unpack: bool,
}

/// A remote file, pinned by its sha256: in the spec, or (`None`) in the
/// lock file on first use.
#[derive(Clone, Debug, Serialize)]
pub struct Fetch {
    pub url: String,
    pub dest: String,
    pub sha256: Option<String>,
    pub chmod: Option<u32>,
    pub chown: Option<Owner>,
}

/// A git repository's tree at a commit: named by a full commit id, or
/// by a ref pinned in the lock file on first use.
#[derive(Clone, Debug, Serialize)]
pub struct Git {
    pub url: String,
    /// A branch, a tag, `HEAD`, a full ref name or a commit id.
    pub reference: String,
    /// Only this directory of the repository.
    pub subdir: Option<String>,
    pub dest: String,
    /// Also a `.git` directory, with the commit checked out.
    pub keep_git_dir: bool,
    pub chmod: Option<u32>,
    pub chown: Option<Owner>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Write {
    pub path: String,
    pub content: String,
    pub mode: Option<u32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Mkdir {
    pub paths: Vec<String>,
    pub mode: Option<u32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Rm {
    /// Paths (their locations: the step's parts, in order).
    pub paths: Vec<String>,
    pub force: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Symlink {
    pub target: String,
    pub link: String,
}

/// Image metadata steps: they change the stage's config, not its tree
/// (`workdir` also creates its directory).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Meta {
    Env(Vec<(String, String)>),
    Workdir(String),
    User(String),
    Label(Vec<(String, String)>),
    Entrypoint(Vec<String>),
    Cmd(Vec<String>),
    Expose(Vec<String>),
    Volume(Vec<String>),
    Stopsignal(String),
    Shell(Vec<String>),
    Healthcheck(Healthcheck),
    Onbuild(String),
    Maintainer(String),
}

/// A plugin step after substitution.
#[derive(Clone, Debug)]
pub struct WasmOp {
    pub plugin: PluginId,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Read-only mounts (their locations: the step's parts, in order).
    pub mounts: Vec<WasmMount>,
    pub timeout: std::time::Duration,
    /// Bytes of linear memory the guest may use.
    pub memory: u64,
}

/// A read-only directory a plugin sees at `guest`.
#[derive(Clone, Debug)]
pub struct WasmMount {
    pub guest: String,
    pub from: CopyFrom,
    /// The directory in the stage or context, `/` for all of it.
    pub source: String,
}

/// A `run` step after substitution.
#[derive(Clone, Debug)]
pub struct RunOp {
    pub command: Vec<String>,
    /// Exec form: `command` is the program and its arguments; otherwise
    /// its one element is a script for the stage's shell.
    pub exec: bool,
    pub env: Vec<(String, String)>,
    /// Mounts (their locations: the step's parts, in order).
    pub mounts: Vec<RunMount>,
    pub network: Network,
    pub security: Security,
    /// How long the command may run (`None`: as long as it takes).
    pub timeout: Option<std::time::Duration>,
    pub sandbox: Sandbox,
    /// Host files whose digests join the key (for `sandbox="host"`).
    pub host_inputs: Vec<String>,
    /// A `test` step: the command's failure is recorded (the stage goes
    /// on with what it left) instead of stopping the stage.
    pub test: Option<Test>,
}

/// What makes a `run` step a test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Test {
    /// Its name in reports; `None`: its stage's name (with its step's
    /// number when the stage holds several tests).
    pub name: Option<String>,
}

/// The network a `run` step sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Docker's default (`network="default"`, what an imported `RUN` says):
    /// the host's network.
    Default,
    /// No network, only a loopback device: a spec's `run` unless it says.
    None,
    /// The host's network.
    Host,
}

impl Network {
    /// Whether the command can reach the network (and so is not hermetic).
    pub fn reaches_out(self) -> bool {
        !matches!(self, Network::None)
    }
}

/// What a `run` step sees as its file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sandbox {
    /// The stage's tree as `/`.
    Image,
    /// The host's root, read-only, with the stage's tree (writable) at the
    /// stage's working directory: for host toolchains. Not hermetic.
    Host,
}

impl Network {
    pub fn parse(s: &str) -> Option<Network> {
        match s {
            "default" => Some(Network::Default),
            "none" => Some(Network::None),
            "host" => Some(Network::Host),
            _ => None,
        }
    }
}

/// `security=`: Docker's `RUN --security`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    Sandbox,
    Insecure,
}

impl Security {
    pub fn parse(s: &str) -> Option<Security> {
        match s {
            "sandbox" => Some(Security::Sandbox),
            "insecure" => Some(Security::Insecure),
            _ => None,
        }
    }
}

/// One mount of a `run` step (Docker's `RUN --mount`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunMount {
    /// Where the command sees it (absolute).
    pub target: String,
    pub kind: MountKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountKind {
    /// A directory of a stage or context; writes are thrown away unless `rw`.
    Bind {
        from: CopyFrom,
        source: String,
        rw: bool,
    },
    /// A directory kept in the state dir across builds, by `id`; never in
    /// the tree or the key.
    Cache {
        /// Empty when not given: the target, as the command sees it.
        id: String,
        sharing: Sharing,
        readonly: bool,
        /// What a new cache starts with.
        from: Option<CopyFrom>,
        source: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// An empty in-memory directory.
    Tmpfs { size: Option<u64> },
    /// A secret given on the command line (`--secret id=…`), as a file or
    /// an environment variable; never in a key, a tree, a log or an export.
    Secret {
        id: String,
        required: bool,
        env: Option<String>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// The SSH agent socket given on the command line (`--ssh`).
    Ssh {
        id: String,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// How builds at the same time share a cache mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

/// A `--mount` specification as written (`type=cache,target=/x,…`), its
/// keys and values split and checked, stage and context names not yet
/// resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: MountType,
    pub target: Option<String>,
    /// `from=`: a stage (or, with `context=`, a named context).
    pub from: Option<String>,
    pub context: Option<String>,
    pub source: Option<String>,
    pub id: Option<String>,
    pub rw: bool,
    pub readonly: bool,
    pub required: bool,
    pub sharing: Sharing,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub env: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

impl MountSpec {
    /// Parse Docker's `--mount` syntax. The error says what is wrong and
    /// how to write it.
    pub fn parse(text: &str) -> Result<MountSpec, (String, String)> {
        let mut kind = None;
        let mut m = MountSpec {
            kind: MountType::Bind,
            target: None,
            from: None,
            context: None,
            source: None,
            id: None,
            rw: false,
            readonly: false,
            required: false,
            sharing: Sharing::Shared,
            mode: None,
            uid: None,
            gid: None,
            size: None,
            env: None,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
                None => (part.to_ascii_lowercase(), None),
            };
            m.option(&key, value, &mut kind)?;
        }
        m.kind = kind.unwrap_or(MountType::Bind);
        m.check()?;
        Ok(m)
    }

    /// One `KEY[=VALUE]` of the spec (`type=` goes to `kind`).
    fn option(
        &mut self,
        key: &str,
        value: Option<&str>,
        kind: &mut Option<MountType>,
    ) -> Result<(), (String, String)> {
        let need = |v: Option<&str>| -> Result<String, (String, String)> {
            v.map(str::to_string).ok_or_else(|| {
                (
                    format!("`{key}` needs a value"),
                    format!("write `{key}=VALUE`"),
                )
            })
        };
        match key {
            "type" => {
                let t = need(value)?;
                *kind = Some(match t.as_str() {
                    "bind" => MountType::Bind,
                    "cache" => MountType::Cache,
                    "tmpfs" => MountType::Tmpfs,
                    "secret" => MountType::Secret,
                    "ssh" => MountType::Ssh,
                    other => {
                        return Err((
                            format!("`{other}` is not a mount type"),
                            "mount types are bind, cache, tmpfs, secret and ssh".into(),
                        ));
                    }
                })
            }
            "target" | "dst" | "destination" => self.target = Some(need(value)?),
            "source" | "src" => self.source = Some(need(value)?),
            "from" => self.from = Some(need(value)?),
            "context" => self.context = Some(need(value)?),
            "id" => self.id = Some(need(value)?),
            "env" => self.env = Some(need(value)?),
            "rw" | "readwrite" => self.rw = flag(value, key)?,
            "ro" | "readonly" => self.readonly = flag(value, key)?,
            "required" => self.required = flag(value, key)?,
            "sharing" => {
                self.sharing = match need(value)?.as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    other => {
                        return Err((
                            format!("`sharing={other}` is not a sharing mode"),
                            "write `sharing=shared`, `private` or `locked`".into(),
                        ));
                    }
                }
            }
            "mode" => {
                let v = need(value)?;
                self.mode = Some(
                    u32::from_str_radix(&v, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| {
                            (
                                format!("`mode={v}` is not an octal mode"),
                                "write `mode=0755`".to_string(),
                            )
                        })?,
                )
            }
            "uid" => self.uid = Some(number(&need(value)?, "uid")?),
            "gid" => self.gid = Some(number(&need(value)?, "gid")?),
            "size" | "tmpfs-size" => {
                let v = need(value)?;
                self.size = Some(crate::units::parse_size(&v).ok_or_else(|| {
                    (
                        format!("`size={v}` is not a size"),
                        "write `size=64MiB`".to_string(),
                    )
                })?)
            }
            other => {
                return Err((
                    format!("`{other}` is not a mount option"),
                    "options are type, target, source, from, id, sharing, mode, uid, gid, rw, readonly, required, size and env".into(),
                ));
            }
        }
        Ok(())
    }

    /// What the options say together: those a mount type takes no part
    /// in, and a target that would cover the whole tree.
    fn check(&self) -> Result<(), (String, String)> {
        let ty = match self.kind {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        };
        let refuse = |opt: &str| {
            Err((
                format!("a {ty} mount takes no `{opt}`"),
                format!("remove `{opt}`"),
            ))
        };
        match self.kind {
            // Without a target, the working directory (BuildKit's rule).
            MountType::Bind | MountType::Cache | MountType::Tmpfs => {}
            MountType::Secret | MountType::Ssh => {
                if self.from.is_some() {
                    return refuse("from");
                }
                if self.rw {
                    return refuse("rw");
                }
            }
        }
        if self.kind == MountType::Tmpfs && (self.from.is_some() || self.source.is_some()) {
            return refuse(if self.from.is_some() {
                "from"
            } else {
                "source"
            });
        }
        if self.kind != MountType::Tmpfs && self.size.is_some() {
            return refuse("size");
        }
        if self.kind != MountType::Secret && self.env.is_some() {
            return refuse("env");
        }
        if self.kind != MountType::Cache && self.sharing != Sharing::Shared {
            return refuse("sharing");
        }
        // A relative target is joined to the working directory when the
        // command runs (BuildKit's rule); only the root itself is refused.
        if let Some(t) = &self.target
            && t.starts_with('/')
            && crate::model::tree::normalize(t, "/").is_empty()
        {
            return Err((
                format!("the mount target `{t}` is the root: a mount cannot cover the stage's tree"),
                "mount below the root, such as `/src` (a relative target is below the working directory)".into(),
            ));
        }
        Ok(())
    }
}

/// A `KEY[=true|false|1|0]` flag.
fn flag(v: Option<&str>, key: &str) -> Result<bool, (String, String)> {
    match v {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(other) => Err((
            format!("`{key}={other}` is not true or false"),
            format!("write `{key}` or `{key}=false`"),
        )),
    }
}

fn number(v: &str, key: &str) -> Result<u32, (String, String)> {
    v.parse().map_err(|_| {
        (
            format!("`{key}={v}` is not a number"),
            format!("write `{key}=1000`"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_mount_specs_parse() {
        let m = MountSpec::parse("type=cache,target=/root/.cache,sharing=locked,id=x").unwrap();
        assert_eq!(m.kind, MountType::Cache);
        assert_eq!(m.target.as_deref(), Some("/root/.cache"));
        assert_eq!(m.sharing, Sharing::Locked);
        let m = MountSpec::parse("type=bind,from=build,source=/out,target=/in,rw").unwrap();
        assert!(m.rw);
        assert_eq!(m.from.as_deref(), Some("build"));
        let m = MountSpec::parse("type=secret,id=token,required").unwrap();
        assert!(m.required && m.target.is_none());
        assert_eq!(
            MountSpec::parse("target=/x").unwrap().kind,
            MountType::Bind,
            "bind is the default"
        );
        let m = MountSpec::parse("type=tmpfs,target=/tmp,size=64MiB").unwrap();
        assert_eq!(m.size, Some(64 << 20));
        // Relative and absent targets are the working directory's (BuildKit).
        for spec in [
            "target=.",
            "type=bind,target=github.com/x",
            "from=build",
            "type=cache",
        ] {
            MountSpec::parse(spec).unwrap();
        }
    }

    #[test]
    fn bad_mount_specs_say_what_is_wrong() {
        for (spec, says) in [
            ("type=volume,target=/x", "not a mount type"),
            ("type=cache,target=/", "is the root"),
            ("type=bind,target=/a/..", "is the root"),
            (
                "type=cache,target=/x,sharing=sometimes",
                "not a sharing mode",
            ),
            ("type=cache,target=/x,mode=999", "not an octal mode"),
            ("type=cache,target=/x,uid=me", "not a number"),
            ("type=bind,target=/x,colour=red", "not a mount option"),
            ("type=secret,id=a,from=b", "takes no `from`"),
            ("type=tmpfs,target=/x,source=/y", "takes no `source`"),
            ("type=bind,target=/x,sharing=locked", "takes no `sharing`"),
            ("type=bind,target=/x,rw=maybe", "not true or false"),
        ] {
            let (msg, help) = MountSpec::parse(spec).unwrap_err();
            assert!(msg.contains(says), "{spec}: {msg}");
            assert!(!help.is_empty());
        }
    }
}
