//! AST → [`Graph`]: resolution, substitution, validation.

use super::subst::{ArgValues, SubstError, substitute};
use super::*;
use crate::diag::{Diagnostic, Diagnostics, Sources, Span, Spanned, did_you_mean};
use crate::frontend::ast::{self, Spec, StepKind, Str};
use std::collections::HashMap;
use std::path::Path;

/// What the command line adds to a spec.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// `--arg NAME=VALUE` overrides, in order.
    pub args: Vec<(String, String)>,
    /// The default context directory.
    pub context_dir: PathBuf,
    /// An ignore file for the default context that replaces its own
    /// (Docker's `Dockerfile.dockerignore` beside a Dockerfile).
    pub ignore_file: Option<PathBuf>,
}

/// Compile a spec into a graph, or return every error found.
/// Warnings (an unused `--arg`, say) come back in the second slot.
pub fn compile(
    spec: &Spec,
    options: &CompileOptions,
    sources: &Sources,
) -> Result<(Graph, Diagnostics), Diagnostics> {
    let mut c = Compiler {
        sources,
        diags: Vec::new(),
        warnings: Vec::new(),
        args: ArgValues::new(),
    };
    c.args(spec, options);
    let contexts = c.contexts(spec, options);
    let plugins = c.plugins(spec);
    let names = c.stage_names(spec);
    let mut stages = Vec::new();
    for (i, decl) in spec.stages.iter().enumerate() {
        stages.push(c.stage(StageId(i as u32), decl, &names, &contexts, &plugins));
    }
    let exports = c.exports(spec, &names);
    let graph = Graph {
        stages,
        contexts,
        plugins,
        exports,
        args: c.args.clone(),
    };
    c.cycles(&graph);
    if c.diags.is_empty() {
        Ok((graph, c.warnings))
    } else {
        Err(c.diags)
    }
}

struct Compiler<'a> {
    sources: &'a Sources,
    diags: Diagnostics,
    warnings: Diagnostics,
    args: ArgValues,
}

impl Compiler<'_> {
    fn args(&mut self, spec: &Spec, options: &CompileOptions) {
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for a in &spec.args {
            if let Some(prev) = seen.insert(&a.name.value, a.name.span) {
                self.diags.push(
                    Diagnostic::user(
                        "kiln::spec::duplicate-arg",
                        format!("arg `{}` is declared twice", a.name.value),
                    )
                    .with_label(a.name.span, "declared again here")
                    .with_label(prev, "first declared here")
                    .with_help("remove one declaration"),
                );
                continue;
            }
            self.args.insert(
                a.name.value.clone(),
                a.default.as_ref().map(|d| d.value.clone()),
            );
        }
        for (k, v) in &options.args {
            if self.args.contains_key(k) {
                self.args.insert(k.clone(), Some(v.clone()));
            } else {
                let mut w = Diagnostic::warning(
                    "kiln::cli::unused-arg",
                    format!("`--arg {k}` is not declared by the spec and was ignored"),
                );
                w = match did_you_mean(k, self.args.keys().map(String::as_str)) {
                    Some(s) => w.with_help(format!("did you mean `{s}`?")),
                    None => w.with_help(format!("declare it with `arg {k}` to use it")),
                };
                self.warnings.push(w);
            }
        }
    }

    /// Substitute `${}` in a spec string; on error, report and return `None`.
    fn subst(&mut self, s: &Str) -> Option<String> {
        match substitute(&s.value, &self.args) {
            Ok(v) => Some(v),
            Err(e) => {
                let raw = self.sources.text(s.span);
                let (needle, msg, label, help) = match &e {
                    SubstError::Unknown { name, .. } => {
                        let help = match did_you_mean(name, self.args.keys().map(String::as_str)) {
                            Some(c) => format!(
                                "did you mean `{c}`? (write `$${{{name}}}` for a literal `${{{name}}}`)"
                            ),
                            None => format!(
                                "declare it with `arg {name} default=\"…\"`, or write `$${{{name}}}` for a literal text"
                            ),
                        };
                        (
                            format!("${{{name}"),
                            format!("unknown arg `{name}`"),
                            "not declared".to_string(),
                            help,
                        )
                    }
                    SubstError::Unterminated { .. } => (
                        "${".to_string(),
                        "unterminated `${`".to_string(),
                        "no closing `}`".to_string(),
                        "close it with `}`, or write `$$` for a literal `$`".to_string(),
                    ),
                    SubstError::BadName { text, .. } => (
                        format!("${{{text}"),
                        format!("`${{{text}}}` is not a valid substitution"),
                        "bad substitution".to_string(),
                        "write `${NAME}`, `${NAME:-default}` or `${NAME:+alt}`".to_string(),
                    ),
                };
                let span = match raw.find(&needle) {
                    Some(i) => s.span.sub(
                        i,
                        needle.len() + usize::from(matches!(e, SubstError::Unknown { .. })),
                    ),
                    None => s.span,
                };
                self.diags.push(
                    Diagnostic::user("kiln::spec::substitution", msg)
                        .with_label(span, label)
                        .with_help(help),
                );
                None
            }
        }
    }

    fn contexts(&mut self, spec: &Spec, options: &CompileOptions) -> Vec<Context> {
        let mut out = vec![Context {
            id: ContextId(0),
            name: String::new(),
            path: options.context_dir.clone(),
            span: None,
            ignore_file: options.ignore_file.clone(),
        }];
        for decl in &spec.contexts {
            if let Some(prev) = out.iter().find(|c| c.name == decl.name.value) {
                let mut d = Diagnostic::user(
                    "kiln::spec::duplicate-context",
                    format!("context `{}` is declared twice", decl.name.value),
                )
                .with_label(decl.name.span, "declared again here");
                if let Some(s) = prev.span {
                    d = d.with_label(s, "first declared here");
                }
                self.diags
                    .push(d.with_help("give each context its own name"));
                continue;
            }
            let Some(path) = self.subst(&decl.path) else {
                continue;
            };
            out.push(Context {
                id: ContextId(out.len() as u32),
                name: decl.name.value.clone(),
                path: join(&decl.dir, &path),
                span: Some(decl.name.span),
                ignore_file: None,
            });
        }
        out
    }

    fn plugins(&mut self, spec: &Spec) -> Vec<Plugin> {
        let mut out: Vec<Plugin> = Vec::new();
        for decl in &spec.plugins {
            if let Some(prev) = out.iter().find(|p| p.name == decl.name.value) {
                self.diags.push(
                    Diagnostic::user(
                        "kiln::spec::duplicate-plugin",
                        format!("plugin `{}` is declared twice", decl.name.value),
                    )
                    .with_label(decl.name.span, "declared again here")
                    .with_label(prev.span, "first declared here")
                    .with_help("give each plugin its own name"),
                );
                continue;
            }
            let Some(path) = self.subst(&decl.path) else {
                continue;
            };
            if decl.blake3.is_none() {
                self.warnings.push(
                    Diagnostic::warning(
                        "kiln::spec::unpinned",
                        format!("plugin `{}` is not pinned", decl.name.value),
                    )
                    .with_label(decl.span, "no blake3=")
                    .with_help("run `kiln plugin pin` to pin the module by its content; a changed module is then an error, not a surprise"),
                );
            }
            out.push(Plugin {
                id: PluginId(out.len() as u32),
                name: decl.name.value.clone(),
                path: join(&decl.dir, &path),
                blake3: decl.blake3.as_ref().map(|b| b.value.to_ascii_lowercase()),
                span: decl.name.span,
            });
        }
        out
    }

    fn stage_names(&mut self, spec: &Spec) -> HashMap<String, StageId> {
        let mut names: HashMap<String, StageId> = HashMap::new();
        for (i, s) in spec.stages.iter().enumerate() {
            if let Some(prev) = names.get(&s.name.value) {
                let first = &spec.stages[prev.0 as usize];
                self.diags.push(
                    Diagnostic::user(
                        "kiln::spec::duplicate-stage",
                        format!("stage `{}` is defined twice", s.name.value),
                    )
                    .with_label(s.name.span, "defined again here")
                    .with_label(first.name.span, "first defined here")
                    .with_help("stage names are shared by every included file: rename one of them"),
                );
            } else {
                names.insert(s.name.value.clone(), StageId(i as u32));
            }
        }
        names
    }

    fn stage_ref(
        &mut self,
        name: &Str,
        names: &HashMap<String, StageId>,
        what: &str,
    ) -> Option<StageId> {
        if let Some(id) = names.get(&name.value) {
            return Some(*id);
        }
        let mut d = Diagnostic::user(
            "kiln::spec::unknown-stage",
            format!("unknown stage `{}`", name.value),
        )
        .with_label(name.span, format!("no stage of this name {what}"));
        d = match did_you_mean(&name.value, names.keys().map(String::as_str)) {
            Some(s) => d.with_help(format!("did you mean `{s}`?")),
            None if name.value.contains([':', '/', '@']) => d.with_help(
                "image bases are not supported yet: start `from scratch` or from a stage of this spec",
            ),
            None => d.with_help("define it with `stage NAME { … }`, or use `scratch` for an empty base"),
        };
        self.diags.push(d);
        None
    }

    fn stage(
        &mut self,
        id: StageId,
        decl: &ast::StageDecl,
        names: &HashMap<String, StageId>,
        contexts: &[Context],
        plugins: &[Plugin],
    ) -> Stage {
        let mut deps = Vec::new();
        // `from ${BASE}` picks a stage by arg, as Docker's `FROM ${BASE}` does.
        let from = decl
            .from
            .as_ref()
            .and_then(|f| self.subst(f).map(|v| Spanned::new(f.span, v)));
        let image = decl
            .image
            .as_ref()
            .and_then(|i| self.subst(i).map(|v| Spanned::new(i.span, v)));
        let base = match &from {
            None if image.is_some() => Base::Image(image.map(|i| i.value).unwrap_or_default()),
            None => Base::Scratch,
            Some(f) if f.value == "scratch" => Base::Scratch,
            Some(f) => match self.stage_ref(f, names, "to build on") {
                Some(b) => {
                    deps.push(b);
                    Base::Stage(b)
                }
                None => Base::Scratch,
            },
        };
        let mut steps = Vec::new();
        for step in &decl.steps {
            if let Some(op) = self.op(&step.kind, names, contexts, plugins, &mut deps) {
                steps.push(Step {
                    span: step.span,
                    op,
                });
            }
        }
        deps.sort();
        deps.dedup();
        Stage {
            id,
            from_span: decl.from.as_ref().or(decl.image.as_ref()).map(|f| f.span),
            name: decl.name.value.clone(),
            span: decl.name.span,
            base,
            steps,
            deps,
        }
    }

    fn strings(&mut self, v: &[Str]) -> Option<Vec<String>> {
        let mut out = Vec::with_capacity(v.len());
        let mut ok = true;
        for s in v {
            match self.subst(s) {
                Some(x) => out.push(x),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn spanned_strings(&mut self, v: &[Str]) -> Option<Vec<Spanned<String>>> {
        let values = self.strings(v)?;
        Some(
            v.iter()
                .zip(values)
                .map(|(s, x)| Spanned::new(s.span, x))
                .collect(),
        )
    }

    fn pairs(&mut self, v: &[ast::Pair]) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut ok = true;
        for (k, val) in v {
            match (self.subst(k), self.subst(val)) {
                (Some(k), Some(val)) => out.push((k, val)),
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn mode(&mut self, m: &Option<Str>) -> Result<Option<u32>, ()> {
        let Some(m) = m else { return Ok(None) };
        let Some(text) = self.subst(m) else {
            return Err(());
        };
        match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
            Ok(v) if v <= 0o7777 && !text.is_empty() => Ok(Some(v)),
            _ => {
                self.diags.push(
                    Diagnostic::user("kiln::spec::mode", format!("`{text}` is not a file mode"))
                        .with_label(m.span, "expected octal digits, at most 7777")
                        .with_help("write a mode like \"0644\" or 0o755"),
                );
                Err(())
            }
        }
    }

    /// A `context=NAME` reference.
    fn context_ref(&mut self, c: &Str, contexts: &[Context]) -> Option<ContextId> {
        let name = self.subst(c)?;
        if let Some(ctx) = contexts.iter().find(|x| x.name == name && !name.is_empty()) {
            return Some(ctx.id);
        }
        let mut d = Diagnostic::user(
            "kiln::spec::unknown-context",
            format!("unknown context `{name}`"),
        )
        .with_label(c.span, "no context of this name");
        d = match did_you_mean(&name, contexts.iter().map(|x| x.name.as_str())) {
            Some(s) => d.with_help(format!("did you mean `{s}`?")),
            None => d.with_help(format!("declare it with `context {name} path=\"DIR\"`")),
        };
        self.diags.push(d);
        None
    }

    /// Check a substituted value against the words it may be.
    fn choice(
        &mut self,
        decl: &Option<Str>,
        value: &Option<Option<String>>,
        allowed: &[&str],
        what: &str,
    ) -> bool {
        let (Some(d), Some(Some(v))) = (decl, value) else {
            return true;
        };
        if allowed.contains(&v.as_str()) {
            return true;
        }
        self.diags.push(
            Diagnostic::user(
                "kiln::spec::run-mode",
                format!("`{v}` is not a {what} mode"),
            )
            .with_label(d.span, format!("expected {}", allowed.join(", ")))
            .with_help(format!("write `{what}=\"{}\"`", allowed[0])),
        );
        false
    }

    /// Substitute an optional string: `Some(None)` when absent, `None` on error.
    fn opt(&mut self, s: &Option<Str>) -> Option<Option<String>> {
        match s {
            None => Some(None),
            Some(s) => self.subst(s).map(Some),
        }
    }

    fn non_empty(&mut self, s: &Str, value: &str, what: &str) -> bool {
        if value.is_empty() {
            self.diags.push(
                Diagnostic::user("kiln::spec::empty", format!("{what} is empty"))
                    .with_label(s.span, "empty after substitution")
                    .with_help("give a path, or set the arg it uses"),
            );
            false
        } else {
            true
        }
    }

    fn op(
        &mut self,
        kind: &StepKind,
        names: &HashMap<String, StageId>,
        contexts: &[Context],
        plugins: &[Plugin],
        deps: &mut Vec<StageId>,
    ) -> Option<Op> {
        Some(match kind {
            StepKind::Copy {
                sources,
                dest,
                from,
                context,
                chmod,
                chown,
                exclude,
                parents,
                unpack,
            } => {
                let srcs = self.spanned_strings(sources);
                let exclude = self.strings(exclude)?;
                for (pat, decl) in exclude.iter().zip(exclude_spans(kind)) {
                    if let Err(e) =
                        crate::store::tree::glob(crate::store::tree::exclude_pattern(pat))
                    {
                        self.diags.push(
                            Diagnostic::user(
                                "kiln::spec::glob",
                                format!("bad exclude pattern `{pat}`: {}", e.kind()),
                            )
                            .with_label(decl, "not a valid pattern")
                            .with_help("use `*`, `?`, `[abc]` and `**`"),
                        );
                        return None;
                    }
                }
                if *unpack && let Some(f) = from {
                    self.diags.push(
                        Diagnostic::user(
                            "kiln::spec::unpack",
                            "`unpack=#true` extracts archives from a context, not from a stage",
                        )
                        .with_label(f.span, "from a stage")
                        .with_help(
                            "copy the archive from the stage, then extract it with a plugin",
                        ),
                    );
                    return None;
                }
                let dest_v = self.subst(dest);
                let from = match (from, context) {
                    (Some(f), _) => {
                        let f_v = Spanned::new(f.span, self.subst(f)?);
                        let sid = self.stage_ref(&f_v, names, "to copy from")?;
                        deps.push(sid);
                        CopyFrom::Stage(sid)
                    }
                    (None, Some(c)) => CopyFrom::Context(self.context_ref(c, contexts)?),
                    (None, None) => CopyFrom::Context(ContextId(0)),
                };
                let chmod = self.mode(chmod).ok()?;
                let chown = match chown {
                    Some(c) => Some(self.owner(c)?),
                    None => None,
                };
                let (srcs, dest_v) = (srcs?, dest_v?);
                for s in &srcs {
                    self.non_empty(
                        &Spanned::new(s.span, String::new()),
                        &s.value,
                        "a copy source",
                    );
                }
                if !self.non_empty(dest, &dest_v, "the copy destination") {
                    return None;
                }
                if srcs.len() > 1 && !dest_v.ends_with('/') {
                    self.diags.push(
                        Diagnostic::user(
                            "kiln::spec::copy-dest",
                            "copying several sources needs a directory destination",
                        )
                        .with_label(dest.span, "does not end with `/`")
                        .with_help(format!("write `\"{dest_v}/\"`")),
                    );
                    return None;
                }
                Op::Copy(Copy {
                    sources: srcs,
                    dest: dest_v,
                    from,
                    chmod,
                    chown,
                    exclude,
                    parents: *parents,
                    unpack: *unpack,
                })
            }
            StepKind::Fetch {
                url,
                dest,
                checksum,
                chmod,
                chown,
            } => {
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
                        Diagnostic::user(
                            "kiln::spec::fetch",
                            format!("`{u}` is not an http(s) URL"),
                        )
                        .with_label(url.span, "expected http:// or https://")
                        .with_help("fetch downloads over HTTP; copy local files with `copy`"),
                    );
                    return None;
                }
                let hex = match (&sum, checksum) {
                    (Some(v), Some(decl)) => match v.strip_prefix("sha256:") {
                        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                            h.to_ascii_lowercase()
                        }
                        _ => {
                            self.diags.push(
                                Diagnostic::user("kiln::spec::checksum", format!("`{v}` is not a sha256 checksum"))
                                    .with_label(decl.span, "expected sha256: and 64 hex digits")
                                    .with_help("write `checksum=\"sha256:…\"`; `sha256sum FILE` prints the digits"),
                            );
                            return None;
                        }
                    },
                    _ => {
                        self.diags.push(
                            Diagnostic::user("kiln::spec::checksum", "a fetch needs a checksum")
                                .with_label(url.span, "not pinned")
                                .with_help("add `checksum=\"sha256:…\"`: the digest keys the cache, so a cached build never touches the network, and a changed download is an error"),
                        );
                        return None;
                    }
                };
                if !self.non_empty(dest, &dest_v, "the fetch destination") {
                    return None;
                }
                Op::Fetch {
                    url: u,
                    dest: dest_v,
                    sha256: hex,
                    chmod,
                    chown,
                }
            }
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
                Op::Write {
                    path: p,
                    content: c,
                    mode,
                }
            }
            StepKind::Mkdir { paths, mode } => {
                let p = self.strings(paths);
                let mode = self.mode(mode).ok()?;
                Op::Mkdir { paths: p?, mode }
            }
            StepKind::Rm { paths, force } => Op::Rm {
                paths: self.spanned_strings(paths)?,
                force: *force,
            },
            StepKind::Symlink { target, link } => {
                let t = self.subst(target);
                let l = self.subst(link);
                Op::Symlink {
                    target: t?,
                    link: l?,
                }
            }
            StepKind::Env(kv) => {
                let pairs = self.pairs(kv)?;
                for ((k, _), (name, _)) in kv.iter().zip(&pairs) {
                    if name.is_empty() || name.contains('=') {
                        self.diags.push(
                            Diagnostic::user(
                                "kiln::spec::env-name",
                                format!("`{name}` is not an environment variable name"),
                            )
                            .with_label(k.span, "bad name")
                            .with_help("names are non-empty and contain no `=`"),
                        );
                        return None;
                    }
                }
                Op::Meta(Meta::Env(pairs))
            }
            StepKind::Label(kv) => Op::Meta(Meta::Label(self.pairs(kv)?)),
            StepKind::Workdir(p) => Op::Meta(Meta::Workdir(self.subst(p)?)),
            StepKind::User(u) => Op::Meta(Meta::User(self.subst(u)?)),
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
                        Diagnostic::user("kiln::spec::signal", format!("`{v}` is not a signal"))
                            .with_label(s.span, "expected a signal name or number")
                            .with_help("write a name like `SIGTERM` or a number like `15`"),
                    );
                    return None;
                }
                Op::Meta(Meta::Stopsignal(v))
            }
            StepKind::Entrypoint(a) => Op::Meta(Meta::Entrypoint(self.strings(a)?)),
            StepKind::Cmd(a) => Op::Meta(Meta::Cmd(self.strings(a)?)),
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
                            Diagnostic::user("kiln::spec::port", format!("`{v}` is not a port"))
                                .with_label(s.span, "expected PORT or PORT/PROTO")
                                .with_help("write `8080`, `8080/tcp` or `53/udp`"),
                        );
                        return None;
                    }
                }
                Op::Meta(Meta::Expose(values))
            }
            StepKind::Volume(v) => Op::Meta(Meta::Volume(self.strings(v)?)),
            StepKind::Wasm(w) => {
                let plugin = &w.plugin;
                let args = self.strings(&w.args);
                let env = self.pairs(&w.env);
                let Some(p) = plugins.iter().find(|p| p.name == plugin.value) else {
                    let mut d = Diagnostic::user(
                        "kiln::spec::unknown-plugin",
                        format!("unknown plugin `{}`", plugin.value),
                    )
                    .with_label(plugin.span, "no plugin of this name");
                    d = match did_you_mean(&plugin.value, plugins.iter().map(|p| p.name.as_str())) {
                        Some(s) => d.with_help(format!("did you mean `{s}`?")),
                        None => d.with_help(format!(
                            "declare it with `plugin {} path=\"FILE.wasm\" blake3=\"…\"`",
                            plugin.value
                        )),
                    };
                    self.diags.push(d);
                    return None;
                };
                let mut mounts = Vec::new();
                for m in &w.mounts {
                    let guest = self.subst(&m.guest)?;
                    if !guest.starts_with('/') || guest == "/" {
                        self.diags.push(
                            Diagnostic::user(
                                "kiln::spec::mount",
                                format!("`{guest}` is not a mount point"),
                            )
                            .with_label(m.guest.span, "expected an absolute path below `/`")
                            .with_help(
                                "mount at a path such as \"/mnt/src\"; `/` is the stage itself",
                            ),
                        );
                        return None;
                    }
                    let from = match (&m.from, &m.context) {
                        (Some(f), _) => {
                            let f_v = Spanned::new(f.span, self.subst(f)?);
                            let sid = self.stage_ref(&f_v, names, "to mount")?;
                            deps.push(sid);
                            CopyFrom::Stage(sid)
                        }
                        (None, Some(c)) => CopyFrom::Context(self.context_ref(c, contexts)?),
                        (None, None) => CopyFrom::Context(ContextId(0)),
                    };
                    let source = match &m.source {
                        Some(s) => self.subst(s)?,
                        None => "/".to_string(),
                    };
                    mounts.push(WasmMount {
                        guest,
                        from,
                        source,
                        span: m.span,
                    });
                }
                let timeout = match &w.timeout {
                    None => DEFAULT_TIMEOUT,
                    Some(t) => {
                        let v = self.subst(t)?;
                        match crate::units::parse_duration(&v) {
                            Some(d) if !d.is_zero() => d,
                            _ => {
                                self.diags.push(
                                    Diagnostic::user(
                                        "kiln::spec::duration",
                                        format!("`{v}` is not a time limit"),
                                    )
                                    .with_label(t.span, "expected a duration above zero")
                                    .with_help("write a duration like \"30s\", \"5m\" or \"1h\""),
                                );
                                return None;
                            }
                        }
                    }
                };
                let memory = match &w.memory {
                    None => DEFAULT_MEMORY,
                    Some(m) => {
                        let v = self.subst(m)?;
                        match crate::units::parse_size(&v) {
                            Some(n) if ((1 << 16)..=(1 << 32)).contains(&n) => n,
                            _ => {
                                self.diags.push(
                                    Diagnostic::user(
                                        "kiln::spec::memory",
                                        format!("`{v}` is not a memory limit"),
                                    )
                                    .with_label(m.span, "expected a size from 64KiB to 4GiB")
                                    .with_help("write a size like \"256MiB\" or \"1GiB\""),
                                );
                                return None;
                            }
                        }
                    }
                };
                Op::Wasm(WasmOp {
                    plugin: p.id,
                    args: args?,
                    env: env?,
                    mounts,
                    timeout,
                    memory,
                })
            }
            StepKind::Run(r) => {
                let command = self.strings(&r.command);
                let env = self.pairs(&r.env);
                let mounts = self.strings(&r.mounts);
                let network = self.opt(&r.network);
                let security = self.opt(&r.security);
                let modes_ok =
                    self.choice(
                        &r.network,
                        &network,
                        &["default", "none", "host"],
                        "network",
                    ) & self.choice(&r.security, &security, &["sandbox", "insecure"], "security");
                if !modes_ok {
                    return None;
                }
                Op::Run(RunOp {
                    command: command?,
                    exec: r.exec,
                    env: env?,
                    mounts: mounts?,
                    network: network?,
                    security: security?,
                })
            }
            StepKind::Shell(a) => Op::Meta(Meta::Shell(self.strings(a)?)),
            StepKind::Onbuild(i) => Op::Meta(Meta::Onbuild(self.subst(i)?)),
            StepKind::Maintainer(m) => Op::Meta(Meta::Maintainer(self.subst(m)?)),
            StepKind::Healthcheck(h) => {
                let test = self.strings(&h.test)?;
                let mut dur = |d: &Option<Str>| -> Result<Option<u64>, ()> {
                    let Some(d) = d else { return Ok(None) };
                    let v = self.subst(d).ok_or(())?;
                    match crate::units::parse_duration(&v) {
                        Some(t) => Ok(Some(t.as_nanos() as u64)),
                        None => {
                            self.diags.push(
                                Diagnostic::user(
                                    "kiln::spec::duration",
                                    format!("`{v}` is not a duration"),
                                )
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
                                    Diagnostic::user(
                                        "kiln::spec::retries",
                                        format!("`{v}` is not a retry count"),
                                    )
                                    .with_label(r.span, "expected a whole number")
                                    .with_help("write `retries=3`"),
                                );
                                return None;
                            }
                        }
                    }
                };
                Op::Meta(Meta::Healthcheck(crate::store::state::Healthcheck {
                    test,
                    interval,
                    timeout,
                    start_period,
                    start_interval,
                    retries,
                }))
            }
        })
    }

    fn owner(&mut self, s: &Str) -> Option<Owner> {
        let v = self.subst(s)?;
        let (user, group) = match v.split_once(':') {
            Some((u, g)) => (u.to_string(), Some(g.to_string())),
            None => (v.clone(), None),
        };
        if user.is_empty() || group.as_deref() == Some("") {
            self.diags.push(
                Diagnostic::user("kiln::spec::owner", format!("`{v}` is not an owner"))
                    .with_label(s.span, "expected USER or USER:GROUP")
                    .with_help("write `1000:1000` or `app:app`"),
            );
            return None;
        }
        Some(Owner { user, group })
    }

    fn exports(&mut self, spec: &Spec, names: &HashMap<String, StageId>) -> Vec<Export> {
        let mut out = Vec::new();
        for e in &spec.exports {
            let stage = self.stage_ref(&e.stage, names, "to export");
            let to = self.subst(&e.to);
            let format = match &e.format {
                None => Some(ExportFormat::Dir),
                Some(f) => match ExportFormat::parse(&f.value) {
                    Some(format) => Some(format),
                    None => {
                        let other = f.value.as_str();
                        let help = if other == "oci" {
                            "the `oci` format is not available in this version: export `dir` or `tar`".to_string()
                        } else {
                            "formats are `dir` and `tar`".to_string()
                        };
                        self.diags.push(
                            Diagnostic::user(
                                "kiln::spec::export-format",
                                format!("unknown export format `{other}`"),
                            )
                            .with_label(f.span, "not a format")
                            .with_help(help),
                        );
                        None
                    }
                },
            };
            let when = match &e.when {
                None => Some(When::Success),
                Some(w) => match w.value.as_str() {
                    "success" => Some(When::Success),
                    "always" => Some(When::Always),
                    other => {
                        self.diags.push(
                            Diagnostic::user(
                                "kiln::spec::export-when",
                                format!("unknown `when` value `{other}`"),
                            )
                            .with_label(w.span, "not a condition")
                            .with_help(
                                "write `when=\"success\"` (the default) or `when=\"always\"`",
                            ),
                        );
                        None
                    }
                },
            };
            if let Some(tag) = &e.tag {
                self.diags.push(
                    Diagnostic::user(
                        "kiln::spec::export-tag",
                        "`tag=` applies to `oci` exports, which this version cannot write",
                    )
                    .with_label(tag.span, "not used by `dir` or `tar`")
                    .with_help("remove `tag=`"),
                );
            }
            if let (Some(stage), Some(to), Some(format), Some(when)) = (stage, to, format, when) {
                if !self.non_empty(&e.to, &to, "the export destination") {
                    continue;
                }
                out.push(Export {
                    stage,
                    dest: join(&e.dir, &to),
                    format,
                    when,
                    span: Some(e.span),
                });
            }
        }
        out
    }

    fn cycles(&mut self, graph: &Graph) {
        // Iterative DFS with colours; report each cycle once, by its first stage.
        let n = graph.stages.len();
        let mut colour = vec![0u8; n]; // 0 new, 1 on stack, 2 done
        let mut reported = vec![false; n];
        for start in 0..n {
            if colour[start] != 0 {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            colour[start] = 1;
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                let deps = &graph.stages[node].deps;
                if *next < deps.len() {
                    let dep = deps[*next].0 as usize;
                    *next += 1;
                    match colour[dep] {
                        0 => {
                            colour[dep] = 1;
                            stack.push((dep, 0));
                        }
                        1 => {
                            let pos = stack.iter().position(|(s, _)| *s == dep).unwrap_or(0);
                            let cycle: Vec<usize> = stack[pos..].iter().map(|(s, _)| *s).collect();
                            if cycle.iter().any(|s| reported[*s]) {
                                continue;
                            }
                            for s in &cycle {
                                reported[*s] = true;
                            }
                            self.report_cycle(graph, &cycle);
                        }
                        _ => {}
                    }
                } else {
                    colour[node] = 2;
                    stack.pop();
                }
            }
        }
    }

    fn report_cycle(&mut self, graph: &Graph, cycle: &[usize]) {
        let mut names: Vec<&str> = cycle
            .iter()
            .map(|s| graph.stages[*s].name.as_str())
            .collect();
        names.push(names[0]);
        let mut d = Diagnostic::user(
            "kiln::spec::cycle",
            format!("dependency cycle: {}", names.join(" → ")),
        )
        .with_help("a stage cannot depend on itself, directly or through others: break the loop");
        for (i, s) in cycle.iter().enumerate() {
            let next = &graph.stages[cycle[(i + 1) % cycle.len()]];
            d = d.with_label(
                graph.stages[*s].span,
                format!("`{}` needs `{}`", graph.stages[*s].name, next.name),
            );
        }
        self.diags.push(d);
    }
}

fn join(dir: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    }
}

/// The spans of a copy step's exclude patterns.
fn exclude_spans(kind: &StepKind) -> Vec<crate::diag::Span> {
    match kind {
        StepKind::Copy { exclude, .. } => exclude.iter().map(|e| e.span).collect(),
        _ => Vec::new(),
    }
}

/// How long a plugin step may run when the spec does not say.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// How much memory a plugin step may use when the spec does not say.
pub const DEFAULT_MEMORY: u64 = 1 << 30;
