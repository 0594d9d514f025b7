//! Compiling one step: a function per step kind, each substituting,
//! checking and resolving what its node says into its [`Op`], plus the
//! spans of its list items for the source map.

use super::super::*;
use super::{Compiler, DEFAULT_MEMORY, DEFAULT_TIMEOUT};
use crate::diag::Code;
use crate::diag::{Diagnostic, Span, Spanned, did_you_mean};
use crate::frontend::ast::{self, RunDecl, StepKind, Str, WasmDecl};
use std::collections::HashMap;

/// What a step may refer to, and the stages it reads (collected).
pub(super) struct Refs<'a> {
    pub names: &'a HashMap<String, StageId>,
    pub contexts: &'a [Context],
    pub plugins: &'a [Plugin],
}

type Compiled = Option<(Op, Vec<Span>)>;

/// Where a git ref was written: its own `ref=`, or the URL.
fn reference_span(reference: Option<&Str>, url: &Str) -> Span {
    reference.map_or(url.span, |r| r.span)
}

fn plain(op: Op) -> Compiled {
    Some((op, Vec::new()))
}

impl Compiler<'_> {
    pub(super) fn op(&mut self, kind: &StepKind, refs: &mut Refs<'_>) -> Compiled {
        match kind {
            StepKind::Copy { .. } => self.copy(kind, refs),
            StepKind::Fetch {
                url,
                dest,
                checksum,
                chmod,
                chown,
            } => self.fetch(url, dest, checksum, chmod, chown),
            StepKind::Git { .. } => self.git(kind),
            StepKind::Write {
                path,
                content,
                mode,
            } => {
                let p = self.subst(path);
                let c = self.subst(content);
                let mode = self.mode(mode).ok()?;
                let (p, c) = (p?, c?);
                if !self.non_empty(path, &p, "the path") {
                    return None;
                }
                plain(Op::Write(Write {
                    path: p,
                    content: c,
                    mode,
                }))
            }
            StepKind::Mkdir { paths, mode } => {
                let p = self.strings(paths);
                let mode = self.mode(mode).ok()?;
                plain(Op::Mkdir(Mkdir { paths: p?, mode }))
            }
            StepKind::Rm { paths, force } => Some((
                Op::Rm(Rm {
                    paths: self.strings(paths)?,
                    force: *force,
                }),
                paths.iter().map(|p| p.span).collect(),
            )),
            StepKind::Symlink { target, link } => {
                let t = self.subst(target);
                let l = self.subst(link);
                plain(Op::Symlink(Symlink {
                    target: t?,
                    link: l?,
                }))
            }
            StepKind::Wasm(w) => self.wasm(w, refs),
            StepKind::Run(r) => self.run(r, refs),
            StepKind::Env(_)
            | StepKind::Workdir(_)
            | StepKind::User(_)
            | StepKind::Label(_)
            | StepKind::Entrypoint(_)
            | StepKind::Cmd(_)
            | StepKind::Expose(_)
            | StepKind::Volume(_)
            | StepKind::Stopsignal(_)
            | StepKind::Shell(_)
            | StepKind::Healthcheck(_)
            | StepKind::Onbuild(_)
            | StepKind::Maintainer(_) => self.meta(kind).map(|m| (Op::Meta(m), Vec::new())),
        }
    }

    fn copy(&mut self, kind: &StepKind, refs: &mut Refs<'_>) -> Compiled {
        let StepKind::Copy {
            sources,
            dest,
            from,
            context,
            chmod,
            chown,
            exclude,
            parents,
            unpack,
        } = kind
        else {
            return None;
        };
        let srcs = self.strings(sources);
        let excluded = self.strings(exclude)?;
        for (pat, decl) in excluded.iter().zip(exclude) {
            if let Err(e) = crate::model::tree::glob(crate::model::tree::exclude_pattern(pat)) {
                self.diags.push(
                    Diagnostic::new(
                        Code::SPEC_GLOB,
                        format!("bad exclude pattern `{pat}`: {}", e.kind()),
                    )
                    .with_label(decl.span, "not a valid pattern"),
                );
                return None;
            }
        }
        if *unpack && let Some(f) = from {
            self.diags.push(
                Diagnostic::new(
                    Code::SPEC_UNPACK,
                    "`unpack=#true` extracts archives from a context, not from a stage",
                )
                .with_label(f.span, "from a stage"),
            );
            return None;
        }
        let dest_v = self.subst(dest);
        let from = self.source(from, context, refs, "to copy from")?;
        let chmod = self.mode(chmod).ok()?;
        let chown = match chown {
            Some(c) => Some(self.owner(c)?),
            None => None,
        };
        let (srcs, dest_v) = (srcs?, dest_v?);
        for (s, v) in sources.iter().zip(&srcs) {
            self.non_empty(&Spanned::new(s.span, String::new()), v, "a copy source");
        }
        if !self.non_empty(dest, &dest_v, "the copy destination") {
            return None;
        }
        if srcs.len() > 1 && !dest_v.ends_with('/') {
            self.diags.push(
                Diagnostic::new(
                    Code::SPEC_COPY_DEST,
                    "copying several sources needs a directory destination",
                )
                .with_label(dest.span, "does not end with `/`")
                .with_help(format!("write `\"{dest_v}/\"`")),
            );
            return None;
        }
        Some((
            Op::Copy(Copy {
                sources: srcs,
                dest: dest_v,
                from,
                chmod,
                chown,
                exclude: excluded,
                parents: *parents,
                unpack: *unpack,
            }),
            sources.iter().map(|s| s.span).collect(),
        ))
    }

    /// `from=STAGE` or `context=NAME` (or the default context).
    fn source(
        &mut self,
        from: &Option<Str>,
        context: &Option<Str>,
        refs: &mut Refs<'_>,
        what: &str,
    ) -> Option<CopyFrom> {
        Some(match (from, context) {
            (Some(f), _) => {
                let f_v = Spanned::new(f.span, self.subst(f)?);
                CopyFrom::Stage(self.stage_ref(&f_v, refs.names, what)?)
            }
            (None, Some(c)) => CopyFrom::Context(self.context_ref(c, refs.contexts)?),
            (None, None) => CopyFrom::Context(ContextId(0)),
        })
    }

    fn fetch(
        &mut self,
        url: &Str,
        dest: &Str,
        checksum: &Option<Str>,
        chmod: &Option<Str>,
        chown: &Option<Str>,
    ) -> Compiled {
        let u = self.subst(url);
        let dest_v = self.subst(dest);
        let sum = self.opt(checksum);
        let chmod = self.mode(chmod).ok()?;
        let chown = match chown {
            Some(c) => Some(self.owner(c)?),
            None => None,
        };
        let (u, dest_v, sum) = (u?, dest_v?, sum?);
        let lower = u.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            self.diags.push(
                Diagnostic::new(Code::SPEC_FETCH, format!("`{u}` is not an http(s) URL"))
                    .with_label(url.span, "expected http:// or https://"),
            );
            return None;
        }
        let hex = match (&sum, checksum) {
            (Some(v), Some(decl)) => match v.strip_prefix("sha256:") {
                Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    Some(h.to_ascii_lowercase())
                }
                _ => {
                    self.diags.push(
                        Diagnostic::new(
                            Code::SPEC_CHECKSUM,
                            format!("`{v}` is not a sha256 checksum"),
                        )
                        .with_label(decl.span, "expected sha256: and 64 hex digits"),
                    );
                    return None;
                }
            },
            // Pinned on first use, in the lock file.
            _ => None,
        };
        if !self.non_empty(dest, &dest_v, "the fetch destination") {
            return None;
        }
        plain(Op::Fetch(Fetch {
            url: u,
            dest: dest_v,
            sha256: hex,
            chmod,
            chown,
        }))
    }

    fn git(&mut self, kind: &StepKind) -> Compiled {
        let StepKind::Git {
            url,
            dest,
            reference: ref_decl,
            subdir,
            keep_git_dir,
            chmod,
            chown,
        } = kind
        else {
            return None;
        };
        let u = self.subst(url);
        let dest_v = self.subst(dest);
        let r = self.opt(ref_decl);
        let sub = self.opt(subdir);
        let chmod = self.mode(chmod).ok()?;
        let chown = match chown {
            Some(c) => Some(self.owner(c)?),
            None => None,
        };
        let (u, dest_v, r, sub) = (u?, dest_v?, r?, sub?);
        let lower = u.to_ascii_lowercase();
        let scp_like = !lower.contains("://")
            && u.split_once(':')
                .is_some_and(|(host, _)| host.contains('@') && !host.contains('/'));
        if !(["https://", "http://", "git://", "ssh://", "file://"]
            .iter()
            .any(|p| lower.starts_with(p))
            || scp_like)
        {
            self.diags.push(
                Diagnostic::new(
                    Code::SPEC_GIT_URL,
                    format!("`{u}` is not a git URL kiln can fetch"),
                )
                .with_label(
                    url.span,
                    "expected https://, http://, ssh://, git://, file:// or USER@HOST:PATH",
                ),
            );
            return None;
        }
        let reference = r.unwrap_or_else(|| "HEAD".to_string());
        let bad_ref = reference.is_empty()
            || reference.starts_with('-')
            || reference.contains("..")
            || reference
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
        if bad_ref {
            let at = reference_span(ref_decl.as_ref(), url);
            self.diags.push(
                Diagnostic::new(
                    Code::SPEC_GIT_REF,
                    format!("`{reference}` is not a git ref"),
                )
                .with_label(at, "expected a branch, a tag, HEAD, refs/… or a commit id"),
            );
            return None;
        }
        let subdir = match (sub, subdir) {
            (Some(v), Some(decl)) => {
                let t = v.trim_matches('/').to_string();
                if t.split('/').any(|c| c == "..") {
                    self.diags.push(
                        Diagnostic::new(
                            Code::SPEC_GIT_SUBDIR,
                            format!("`{v}` leaves the repository"),
                        )
                        .with_label(decl.span, "a path inside the repository is needed"),
                    );
                    return None;
                }
                (!t.is_empty() && t != ".").then_some(t)
            }
            _ => None,
        };
        if !self.non_empty(dest, &dest_v, "the git destination") {
            return None;
        }
        plain(Op::Git(Git {
            url: u,
            reference,
            subdir,
            dest: dest_v,
            keep_git_dir: *keep_git_dir,
            chmod,
            chown,
        }))
    }

    fn meta(&mut self, kind: &StepKind) -> Option<Meta> {
        Some(match kind {
            StepKind::Env(kv) => {
                let pairs = self.pairs(kv)?;
                for ((k, _), (name, _)) in kv.iter().zip(&pairs) {
                    if name.is_empty() || name.contains('=') {
                        self.diags.push(
                            Diagnostic::new(
                                Code::SPEC_ENV_NAME,
                                format!("`{name}` is not an environment variable name"),
                            )
                            .with_label(k.span, "bad name"),
                        );
                        return None;
                    }
                }
                Meta::Env(pairs)
            }
            StepKind::Label(kv) => Meta::Label(self.pairs(kv)?),
            StepKind::Workdir(p) => Meta::Workdir(self.subst(p)?),
            StepKind::User(u) => Meta::User(self.subst(u)?),
            StepKind::Stopsignal(s) => {
                let v = self.subst(s)?;
                let name = v.strip_prefix("SIG").unwrap_or(&v);
                let ok = !name.is_empty()
                    && (name.bytes().all(|b| b.is_ascii_digit())
                        || name.bytes().all(|b| {
                            b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'+' || b == b'-'
                        }));
                if !ok {
                    self.diags.push(
                        Diagnostic::new(Code::SPEC_SIGNAL, format!("`{v}` is not a signal"))
                            .with_label(s.span, "expected a signal name or number"),
                    );
                    return None;
                }
                Meta::Stopsignal(v)
            }
            StepKind::Entrypoint(a) => Meta::Entrypoint(self.strings(a)?),
            StepKind::Cmd(a) => Meta::Cmd(self.strings(a)?),
            StepKind::Expose(ports) => {
                let values = self.strings(ports)?;
                for (s, v) in ports.iter().zip(&values) {
                    let (port, proto) = v.split_once('/').unwrap_or((v, "tcp"));
                    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0)
                        || port.split_once('-').is_some_and(|(a, b)| {
                            a.parse::<u16>().is_ok() && b.parse::<u16>().is_ok()
                        });
                    if !port_ok
                        || !["tcp", "udp", "sctp"].contains(&proto.to_ascii_lowercase().as_str())
                    {
                        self.diags.push(
                            Diagnostic::new(Code::SPEC_PORT, format!("`{v}` is not a port"))
                                .with_label(s.span, "expected PORT or PORT/PROTO"),
                        );
                        return None;
                    }
                }
                Meta::Expose(values)
            }
            StepKind::Volume(v) => Meta::Volume(self.strings(v)?),
            StepKind::Shell(a) => Meta::Shell(self.strings(a)?),
            StepKind::Onbuild(i) => Meta::Onbuild(self.subst(i)?),
            StepKind::Maintainer(m) => Meta::Maintainer(self.subst(m)?),
            StepKind::Healthcheck(h) => Meta::Healthcheck(self.healthcheck(h)?),
            // Every other kind is compiled by `op`.
            StepKind::Copy { .. }
            | StepKind::Fetch { .. }
            | StepKind::Git { .. }
            | StepKind::Write { .. }
            | StepKind::Mkdir { .. }
            | StepKind::Rm { .. }
            | StepKind::Symlink { .. }
            | StepKind::Wasm(_)
            | StepKind::Run(_) => return None,
        })
    }

    /// A step's `timeout=`: a duration above zero.
    fn time_limit(&mut self, t: &Str) -> Option<std::time::Duration> {
        let v = self.subst(t)?;
        match crate::units::parse_duration(&v) {
            Some(d) if !d.is_zero() => Some(d),
            _ => {
                self.diags.push(
                    Diagnostic::new(Code::SPEC_DURATION, format!("`{v}` is not a time limit"))
                        .with_label(t.span, "expected a duration above zero")
                        .with_help("write a duration like \"30s\", \"5m\" or \"1h\""),
                );
                None
            }
        }
    }

    fn healthcheck(
        &mut self,
        h: &ast::HealthcheckDecl,
    ) -> Option<crate::model::state::Healthcheck> {
        let test = self.strings(&h.test)?;
        let mut dur = |d: &Option<Str>| -> Result<Option<u64>, ()> {
            let Some(d) = d else { return Ok(None) };
            let v = self.subst(d).ok_or(())?;
            match crate::units::parse_duration(&v) {
                Some(t) => Ok(Some(t.as_nanos() as u64)),
                None => {
                    self.diags.push(
                        Diagnostic::new(Code::SPEC_DURATION, format!("`{v}` is not a duration"))
                            .with_label(d.span, "expected a duration")
                            .with_help("write a duration like \"30s\", \"1m30s\" or \"500ms\""),
                    );
                    Err(())
                }
            }
        };
        let interval = dur(&h.interval).ok()?;
        let timeout = dur(&h.timeout).ok()?;
        let start_period = dur(&h.start_period).ok()?;
        let start_interval = dur(&h.start_interval).ok()?;
        let retries = match &h.retries {
            None => None,
            Some(r) => {
                let v = self.subst(r)?;
                match v.parse::<u32>() {
                    Ok(n) => Some(n),
                    Err(_) => {
                        self.diags.push(
                            Diagnostic::new(
                                Code::SPEC_RETRIES,
                                format!("`{v}` is not a retry count"),
                            )
                            .with_label(r.span, "expected a whole number"),
                        );
                        return None;
                    }
                }
            }
        };
        Some(crate::model::state::Healthcheck {
            test,
            interval,
            timeout,
            start_period,
            start_interval,
            retries,
        })
    }

    fn wasm(&mut self, w: &WasmDecl, refs: &mut Refs<'_>) -> Compiled {
        let plugin = &w.plugin;
        let args = self.strings(&w.args);
        let env = self.pairs(&w.env);
        let Some(p) = refs.plugins.iter().find(|p| p.name == plugin.value) else {
            let mut d = Diagnostic::new(
                Code::SPEC_UNKNOWN_PLUGIN,
                format!("unknown plugin `{}`", plugin.value),
            )
            .with_label(plugin.span, "no plugin of this name");
            d = match did_you_mean(&plugin.value, refs.plugins.iter().map(|p| p.name.as_str())) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None => d.with_help(format!(
                    "declare it with `plugin {} path=\"FILE.wasm\" blake3=\"…\"`",
                    plugin.value
                )),
            };
            self.diags.push(d);
            return None;
        };
        let plugin_id = p.id;
        let mut mounts = Vec::new();
        let mut spans = Vec::new();
        for m in &w.mounts {
            let guest = self.subst(&m.guest)?;
            if !guest.starts_with('/') || guest == "/" {
                self.diags.push(
                    Diagnostic::new(Code::SPEC_MOUNT, format!("`{guest}` is not a mount point"))
                        .with_label(m.guest.span, "expected an absolute path below `/`"),
                );
                return None;
            }
            let from = self.source(&m.from, &m.context, refs, "to mount")?;
            let source = match &m.source {
                Some(s) => self.subst(s)?,
                None => "/".to_string(),
            };
            mounts.push(WasmMount {
                guest,
                from,
                source,
            });
            spans.push(m.span);
        }
        let timeout = match &w.timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) => self.time_limit(t)?,
        };
        let memory = match &w.memory {
            None => DEFAULT_MEMORY,
            Some(m) => {
                let v = self.subst(m)?;
                match crate::units::parse_size(&v) {
                    Some(n) if ((1 << 16)..=(1 << 32)).contains(&n) => n,
                    _ => {
                        self.diags.push(
                            Diagnostic::new(
                                Code::SPEC_MEMORY,
                                format!("`{v}` is not a memory limit"),
                            )
                            .with_label(m.span, "expected a size from 64KiB to 4GiB"),
                        );
                        return None;
                    }
                }
            }
        };
        Some((
            Op::Wasm(WasmOp {
                plugin: plugin_id,
                args: args?,
                env: env?,
                mounts,
                timeout,
                memory,
            }),
            spans,
        ))
    }

    fn run(&mut self, r: &RunDecl, refs: &mut Refs<'_>) -> Compiled {
        let command = self.strings(&r.command);
        let env = self.pairs(&r.env);
        let network = self.opt(&r.network);
        let security = self.opt(&r.security);
        let sandbox = self.opt(&r.sandbox);
        let host_inputs = self.strings(&r.host_inputs);
        let modes_ok =
            self.choice(
                &r.network,
                &network,
                &["default", "none", "host"],
                "network",
            ) & self.choice(&r.security, &security, &["sandbox", "insecure"], "security")
                & self.choice(&r.sandbox, &sandbox, &["image", "host"], "sandbox");
        let timeout = match &r.timeout {
            None => None,
            Some(t) => Some(self.time_limit(t)?),
        };
        let mut mounts = Vec::new();
        let mut ok = true;
        for m in &r.mounts {
            match self.run_mount(m, refs) {
                Some(mount) => mounts.push(mount),
                None => ok = false,
            }
        }
        if !modes_ok || !ok {
            return None;
        }
        // A spec's `run` is hermetic unless it says otherwise.
        let network = network?
            .as_deref()
            .and_then(Network::parse)
            .unwrap_or(Network::None);
        let security = security?
            .as_deref()
            .and_then(Security::parse)
            .unwrap_or(Security::Sandbox);
        let sandbox = match sandbox?.as_deref() {
            Some("host") => Sandbox::Host,
            _ => Sandbox::Image,
        };
        let host_inputs = host_inputs?;
        let test = match &r.test {
            None => None,
            Some(t) => Some(Test {
                name: self.opt(&t.name)?,
            }),
        };
        if let Some(bad) = host_inputs.iter().position(|h| !h.starts_with('/')) {
            self.diags.push(
                Diagnostic::new(
                    Code::SPEC_HOST_INPUT,
                    format!("`{}` is not an absolute host path", host_inputs[bad]),
                )
                .with_label(r.host_inputs[bad].span, "expected an absolute path")
                .with_help("name host files by their absolute paths, such as \"/usr/bin/gcc\""),
            );
            return None;
        }
        if !host_inputs.is_empty() && sandbox != Sandbox::Host {
            self.diags.push(
                Diagnostic::new(
                    Code::SPEC_HOST_INPUT,
                    "`host-inputs` are for steps that see the host",
                )
                .with_label(r.host_inputs[0].span, "host files")
                .with_help("add `sandbox=\"host\"` to the step, or remove `host-inputs`"),
            );
            return None;
        }
        Some((
            Op::Run(RunOp {
                command: command?,
                exec: r.exec,
                env: env?,
                mounts,
                network,
                security,
                timeout,
                sandbox,
                host_inputs,
                test,
            }),
            r.mounts.iter().map(|m| m.span).collect(),
        ))
    }

    /// One `mount "type=…,…"` of a `run` step, checked and resolved.
    fn run_mount(&mut self, decl: &Str, refs: &mut Refs<'_>) -> Option<RunMount> {
        let text = self.subst(decl)?;
        let spec = match MountSpec::parse(&text) {
            Ok(s) => s,
            Err((message, help)) => {
                self.diags.push(
                    Diagnostic::new(Code::SPEC_RUN_MOUNT, format!("bad mount: {message}"))
                        .with_label(decl.span, "in this mount")
                        .with_help(help),
                );
                return None;
            }
        };
        let at = |s: Option<String>| s.map(|v| Spanned::new(decl.span, v));
        let from = match (&spec.from, &spec.context) {
            (None, None) => None,
            _ => Some(self.source(
                &at(spec.from.clone()),
                &at(spec.context.clone()),
                refs,
                "to mount",
            )?),
        };
        let source = spec.source.clone().unwrap_or_else(|| "/".into());
        let (uid, gid) = (spec.uid.unwrap_or(0), spec.gid.unwrap_or(0));
        let kind = match spec.kind {
            MountType::Bind => MountKind::Bind {
                from: from.unwrap_or(CopyFrom::Context(ContextId(0))),
                source,
                rw: spec.rw,
            },
            MountType::Cache => MountKind::Cache {
                // Without an id: the target, joined to the working
                // directory when the command runs (BuildKit's default).
                id: spec.id.clone().unwrap_or_default(),
                sharing: spec.sharing,
                readonly: spec.readonly,
                from,
                source,
                mode: spec.mode.unwrap_or(0o755),
                uid,
                gid,
            },
            MountType::Tmpfs => MountKind::Tmpfs { size: spec.size },
            MountType::Secret => {
                let id = match (&spec.id, &spec.target) {
                    (Some(id), _) => id.clone(),
                    (None, Some(t)) => crate::model::tree::basename(t).to_string(),
                    (None, None) => {
                        self.diags.push(
                            Diagnostic::new(
                                Code::SPEC_RUN_MOUNT,
                                "a secret mount needs an `id` (or a `target`)",
                            )
                            .with_label(decl.span, "in this mount")
                            .with_help("write `type=secret,id=NAME`, and give the secret with `kiln build --secret id=NAME,src=FILE`"),
                        );
                        return None;
                    }
                };
                MountKind::Secret {
                    id,
                    required: spec.required,
                    env: spec.env.clone(),
                    mode: spec.mode.unwrap_or(0o400),
                    uid,
                    gid,
                }
            }
            MountType::Ssh => MountKind::Ssh {
                id: spec.id.clone().unwrap_or_else(|| "default".into()),
                required: spec.required,
                mode: spec.mode.unwrap_or(0o600),
                uid,
                gid,
            },
        };
        let target = match (&kind, &spec.target) {
            (_, Some(t)) => t.clone(),
            (MountKind::Secret { id, env: None, .. }, None) => format!("/run/secrets/{id}"),
            (MountKind::Secret { .. }, None) => String::new(),
            (MountKind::Ssh { id, .. }, None) => format!("/run/buildkit/ssh_agent.{id}"),
            // The working directory, when the command runs.
            (_, None) => ".".to_string(),
        };
        Some(RunMount { target, kind })
    }
}
