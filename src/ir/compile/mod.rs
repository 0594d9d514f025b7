//! AST → [`Graph`]: resolution, substitution, validation. The steps of a
//! stage are compiled in `steps.rs`, one function per step kind.

mod steps;

use super::subst::{ArgValues, SubstError, substitute};
use super::*;
use crate::diag::Code;
use crate::diag::{Diagnostic, Diagnostics, Sources, Span, Spanned, did_you_mean};
use crate::frontend::ast::{self, Spec, Str};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

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
    let names = c.stage_names(spec);
    let plugins = c.plugins(spec, &names);
    let mut stages = Vec::with_capacity(spec.stages.len());
    let mut source_map = SourceMap::default();
    for (i, decl) in spec.stages.iter().enumerate() {
        let (stage, locs) = c.stage(StageId(i as u32), decl, &names, &contexts, &plugins);
        stages.push(stage);
        source_map.push_stage(locs);
    }
    let exports = c.exports(spec, &names);
    let graph = Graph {
        stages,
        contexts,
        plugins,
        exports,
        args: c.args.clone(),
        source_map,
    };
    c.cycles(&graph);
    if c.diags.is_empty() {
        Ok((graph, c.warnings))
    } else {
        Err(c.diags)
    }
}

pub(super) struct Compiler<'a> {
    pub(super) sources: &'a Sources,
    pub(super) diags: Diagnostics,
    pub(super) warnings: Diagnostics,
    pub(super) args: ArgValues,
}

impl Compiler<'_> {
    fn args(&mut self, spec: &Spec, options: &CompileOptions) {
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for a in &spec.args {
            if let Some(prev) = seen.insert(&a.name.value, a.name.span) {
                self.diags.push(
                    Diagnostic::new(
                        Code::SPEC_DUPLICATE_ARG,
                        format!("arg `{}` is declared twice", a.name.value),
                    )
                    .with_label(a.name.span, "declared again here")
                    .with_label(prev, "first declared here"),
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
                    Code::CLI_UNUSED_ARG,
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
    pub(super) fn subst(&mut self, s: &Str) -> Option<String> {
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
                    SubstError::TooDeep { .. } => (
                        "${".to_string(),
                        format!(
                            "substitutions nested more than {} deep",
                            crate::ir::subst::MAX_DEPTH
                        ),
                        "nested too deep".to_string(),
                        "nest defaults (`${A:-${B}}`) a few levels at most; declare an `arg` with the value instead".to_string(),
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
                    Diagnostic::new(Code::SPEC_SUBSTITUTION, msg)
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
                let mut d = Diagnostic::new(
                    Code::SPEC_DUPLICATE_CONTEXT,
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

    fn plugins(&mut self, spec: &Spec, names: &HashMap<String, StageId>) -> Vec<Plugin> {
        let mut out: Vec<Plugin> = Vec::new();
        for decl in &spec.plugins {
            if let Some(prev) = out.iter().find(|p| p.name == decl.name.value) {
                self.diags.push(
                    Diagnostic::new(
                        Code::SPEC_DUPLICATE_PLUGIN,
                        format!("plugin `{}` is declared twice", decl.name.value),
                    )
                    .with_label(decl.name.span, "declared again here")
                    .with_label(prev.span, "first declared here"),
                );
                continue;
            }
            let blake3 = decl.blake3.as_ref().map(|b| b.value.to_ascii_lowercase());
            let unpinned = |what: &str, help: &str| {
                Diagnostic::warning(
                    Code::SPEC_UNPINNED,
                    format!("plugin `{}` {what}", decl.name.value),
                )
                .with_label(decl.span, "no blake3=")
                .with_help(help.to_string())
            };
            let source = if let Some(url) = &decl.url {
                let Some(url) = self.subst(url) else { continue };
                if blake3.is_none() {
                    self.warnings.push(unpinned(
                        "downloads a module that is not pinned",
                        "run `kiln plugin pin`: it downloads the module once and writes its blake3; a build refuses to run an unpinned download",
                    ));
                }
                PluginSource::Url(url)
            } else {
                let Some(path) = decl.path.as_ref() else {
                    continue;
                };
                let Some(path) = self.subst(path) else {
                    continue;
                };
                match &decl.from {
                    // A plugin a stage builds: its bytes are that stage's
                    // result, pinned by it.
                    Some(f) => {
                        let Some(f_v) = self.subst(f) else { continue };
                        let Some(stage) = self.stage_ref(
                            &Spanned::new(f.span, f_v),
                            names,
                            "to take the plugin from",
                        ) else {
                            continue;
                        };
                        PluginSource::Stage {
                            stage,
                            path: format!("/{}", path.trim_start_matches('/')),
                        }
                    }
                    None => {
                        if blake3.is_none() {
                            self.warnings.push(unpinned(
                                "is not pinned",
                                "run `kiln plugin pin` to pin the module by its content; a changed module is then an error, not a surprise",
                            ));
                        }
                        PluginSource::Host(join(&decl.dir, &path))
                    }
                }
            };
            out.push(Plugin {
                id: PluginId(out.len() as u32),
                name: decl.name.value.clone(),
                source,
                blake3,
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
                    Diagnostic::new(
                        Code::SPEC_DUPLICATE_STAGE,
                        format!("stage `{}` is defined twice", s.name.value),
                    )
                    .with_label(s.name.span, "defined again here")
                    .with_label(first.name.span, "first defined here"),
                );
            } else {
                names.insert(s.name.value.clone(), StageId(i as u32));
            }
        }
        names
    }

    pub(super) fn stage_ref(
        &mut self,
        name: &Str,
        names: &HashMap<String, StageId>,
        what: &str,
    ) -> Option<StageId> {
        if let Some(id) = names.get(&name.value) {
            return Some(*id);
        }
        let mut d = Diagnostic::new(
            Code::SPEC_UNKNOWN_STAGE,
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
    ) -> (Stage, Vec<StepLoc>) {
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
        let spec_dir = self
            .sources
            .get(decl.span.source)
            .and_then(|f| f.path.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let base = match &from {
            None if image.is_some() => Base::Image(ImageBase {
                reference: image.map(|i| i.value).unwrap_or_default(),
                dir: spec_dir,
            }),
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
        let mut steps = Vec::with_capacity(decl.steps.len());
        let mut locs = Vec::with_capacity(decl.steps.len());
        let mut refs = steps::Refs {
            names,
            contexts,
            plugins,
        };
        for step in &decl.steps {
            if let Some((op, parts)) = self.op(&step.kind, &mut refs) {
                // The stages it reads, and the one that builds a plugin
                // it runs, are built first.
                op.reads(&mut |r| match r {
                    Read::Stage(s, _) => deps.push(s),
                    Read::Plugin(p) => deps.extend(plugins[p.0 as usize].from_stage()),
                    Read::Context(_) | Read::HostFile(_) | Read::Remote(_) => {}
                });
                steps.push(Step { op });
                locs.push(StepLoc {
                    span: step.span,
                    parts,
                });
            }
        }
        deps.sort();
        deps.dedup();
        let stage = Stage {
            id,
            from_span: decl.from.as_ref().or(decl.image.as_ref()).map(|f| f.span),
            name: decl.name.value.clone(),
            span: decl.name.span,
            base,
            steps,
            deps,
        };
        self.test_names(&stage, &locs);
        (stage, locs)
    }

    /// A stage's tests have names, each its own: reports tell them apart
    /// by them.
    fn test_names(&mut self, stage: &Stage, locs: &[StepLoc]) {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, name) in stage.tests() {
            let Some(at) = locs.get(i).map(|l| l.span) else {
                continue;
            };
            if name.is_empty() {
                self.diags.push(
                    Diagnostic::new(Code::SPEC_TEST_NAME, "a test's name is empty")
                        .with_label(at, "this test")
                        .with_help(
                            "give it a name, or leave out `name=` to name it after its stage",
                        ),
                );
            } else if let Some(first) = seen.get(&name).and_then(|j| locs.get(*j)) {
                self.diags.push(
                    Diagnostic::new(
                        Code::SPEC_TEST_NAME,
                        format!("two tests of stage `{}` are named `{name}`", stage.name),
                    )
                    .with_label(first.span, "the first")
                    .with_label(at, "the second")
                    .with_help("give each test of a stage its own `name=`"),
                );
            }
            seen.insert(name, i);
        }
    }

    pub(super) fn strings(&mut self, v: &[Str]) -> Option<Vec<String>> {
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

    pub(super) fn pairs(&mut self, v: &[ast::Pair]) -> Option<Vec<(String, String)>> {
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

    pub(super) fn mode(&mut self, m: &Option<Str>) -> Result<Option<u32>, ()> {
        let Some(m) = m else { return Ok(None) };
        let Some(text) = self.subst(m) else {
            return Err(());
        };
        match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
            Ok(v) if v <= 0o7777 && !text.is_empty() => Ok(Some(v)),
            _ => {
                self.diags.push(
                    Diagnostic::new(Code::SPEC_MODE, format!("`{text}` is not a file mode"))
                        .with_label(m.span, "expected octal digits, at most 7777")
                        .with_help("write a mode like \"0644\" or 0o755"),
                );
                Err(())
            }
        }
    }

    /// A `context=NAME` reference.
    pub(super) fn context_ref(&mut self, c: &Str, contexts: &[Context]) -> Option<ContextId> {
        let name = self.subst(c)?;
        if let Some(ctx) = contexts.iter().find(|x| x.name == name && !name.is_empty()) {
            return Some(ctx.id);
        }
        let mut d = Diagnostic::new(
            Code::SPEC_UNKNOWN_CONTEXT,
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
    pub(super) fn choice(
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
            Diagnostic::new(Code::SPEC_RUN_MODE, format!("`{v}` is not a {what} mode"))
                .with_label(d.span, format!("expected {}", allowed.join(", ")))
                .with_help(format!("write `{what}=\"{}\"`", allowed[0])),
        );
        false
    }

    /// Substitute an optional string: `Some(None)` when absent, `None` on error.
    pub(super) fn opt(&mut self, s: &Option<Str>) -> Option<Option<String>> {
        match s {
            None => Some(None),
            Some(s) => self.subst(s).map(Some),
        }
    }

    pub(super) fn non_empty(&mut self, s: &Str, value: &str, what: &str) -> bool {
        if value.is_empty() {
            self.diags.push(
                Diagnostic::new(Code::SPEC_EMPTY, format!("{what} is empty"))
                    .with_label(s.span, "empty after substitution"),
            );
            false
        } else {
            true
        }
    }

    pub(super) fn owner(&mut self, s: &Str) -> Option<Owner> {
        let v = self.subst(s)?;
        let (user, group) = match v.split_once(':') {
            Some((u, g)) => (u.to_string(), Some(g.to_string())),
            None => (v.clone(), None),
        };
        if user.is_empty() || group.as_deref() == Some("") {
            self.diags.push(
                Diagnostic::new(Code::SPEC_OWNER, format!("`{v}` is not an owner"))
                    .with_label(s.span, "expected USER or USER:GROUP"),
            );
            return None;
        }
        Some(Owner { user, group })
    }

    fn exports(&mut self, spec: &Spec, names: &HashMap<String, StageId>) -> Vec<Export> {
        let mut out = Vec::new();
        for e in &spec.exports {
            let stage = self.stage_ref(&e.stage, names, "to export");
            if let Some(image) = &e.image {
                if let Some(push) = self.push_export(e, image, stage) {
                    out.push(push);
                }
                continue;
            }
            let Some(to_decl) = &e.to else { continue };
            let to = self.subst(to_decl);
            let format = match &e.format {
                None => Some(ExportFormat::Dir),
                Some(f) => match ExportFormat::parse(&f.value) {
                    Some(format) => Some(format),
                    None => {
                        let other = f.value.as_str();
                        let help = "formats are `dir`, `tar`, `oci` (an OCI image layout), `oci-archive` (the same as one tar) and `docker-archive` (for `docker load`)".to_string();
                        self.diags.push(
                            Diagnostic::new(
                                Code::SPEC_EXPORT_FORMAT,
                                format!("unknown export format `{other}`"),
                            )
                            .with_label(f.span, "not a format")
                            .with_help(help),
                        );
                        None
                    }
                },
            };
            let when = self.export_when(e);
            let is_image = format.is_some_and(ExportFormat::is_image);
            let tag = match &e.tag {
                Some(t) if !is_image && format.is_some() => {
                    self.diags.push(
                        Diagnostic::new(
                            Code::SPEC_EXPORT_TAG,
                            "`tag=` names an image; this export is not one",
                        )
                        .with_label(t.span, "not used by `dir` or `tar`")
                        .with_help("export an image (`format=\"oci\"`, `\"oci-archive\"` or `\"docker-archive\"`), or remove `tag=`"),
                    );
                    None
                }
                Some(t) => match self.subst(t) {
                    Some(v) if valid_tag(&v) => Some(Some(v)),
                    Some(v) => {
                        self.diags.push(
                            Diagnostic::new(
                                Code::SPEC_EXPORT_TAG,
                                format!("`{v}` is not an image name"),
                            )
                            .with_label(t.span, "expected NAME[:TAG]")
                            .with_help("write a name as Docker does: lower-case `registry/path/name:tag`, e.g. `app:1.0`"),
                        );
                        None
                    }
                    None => None,
                },
                None => Some(None),
            };
            if e.squash && !is_image && format.is_some() {
                self.diags.push(
                    Diagnostic::new(
                        Code::SPEC_EXPORT_SQUASH,
                        "`squash=` applies to image exports: a directory or tar has no layers",
                    )
                    .with_label(e.span, "this export"),
                );
                continue;
            }
            let compression = match &e.compression {
                Some(c) if !is_image && format.is_some() => {
                    self.diags.push(
                        Diagnostic::new(
                            Code::SPEC_EXPORT_COMPRESSION,
                            "`compression=` applies to image exports",
                        )
                        .with_label(c.span, "not used by `dir` or `tar`")
                        .with_help("remove `compression=`"),
                    );
                    None
                }
                _ => self.export_compression(e),
            };
            if let (Some(stage), Some(to), Some(format), Some(when), Some(tag), Some(compression)) =
                (stage, to, format, when, tag, compression)
            {
                if !self.non_empty(to_decl, &to, "the export destination") {
                    continue;
                }
                out.push(Export {
                    stage,
                    dest: join(&e.dir, &to),
                    format,
                    when,
                    tag,
                    compression,
                    provenance: e.provenance,
                    squash: e.squash,
                    span: Some(e.span),
                });
            }
        }
        out
    }

    /// An export entry's `when=`.
    fn export_when(&mut self, e: &ast::ExportDecl) -> Option<When> {
        match e.when.as_ref().map(|w| (w.value.as_str(), w.span)) {
            None | Some(("success", _)) => Some(When::Success),
            Some(("always", _)) => Some(When::Always),
            Some((other, span)) => {
                self.diags.push(
                    Diagnostic::new(
                        Code::SPEC_EXPORT_WHEN,
                        format!("unknown `when` value `{other}`"),
                    )
                    .with_label(span, "not a condition"),
                );
                None
            }
        }
    }

    /// An image export's `compression=` (gzip by default).
    fn export_compression(&mut self, e: &ast::ExportDecl) -> Option<Compression> {
        let Some(c) = &e.compression else {
            return Some(Compression::Gzip);
        };
        let parsed = Compression::parse(&c.value);
        if parsed.is_none() {
            self.diags.push(
                Diagnostic::new(
                    Code::SPEC_EXPORT_COMPRESSION,
                    format!("unknown compression `{}`", c.value),
                )
                .with_label(c.span, "not a compression")
                .with_help("write `compression=\"gzip\"` (the default), `\"zstd\"` or `\"none\"`"),
            );
        }
        parsed
    }

    /// `STAGE image="REF"`: the stage's image pushed to a registry.
    fn push_export(
        &mut self,
        e: &ast::ExportDecl,
        image: &Str,
        stage: Option<StageId>,
    ) -> Option<Export> {
        for (prop, what) in [(&e.format, "format"), (&e.tag, "tag")] {
            if let Some(p) = prop {
                self.diags.push(
                    Diagnostic::new(
                        Code::SPEC_EXPORT_IMAGE,
                        format!("`{what}=` does not apply to a push: `image=` names the image and where it goes"),
                    )
                    .with_label(p.span, "not used by a push")
                    .with_help(format!("remove `{what}=`, or export to a file with `to=` in another entry")),
                );
                return None;
            }
        }
        let reference = self.subst(image)?;
        if !valid_tag(&reference) || reference.contains('@') {
            self.diags.push(
                Diagnostic::new(
                    Code::SPEC_EXPORT_IMAGE,
                    format!("`{reference}` is not an image reference to push to"),
                )
                .with_label(image.span, "expected REGISTRY/NAME[:TAG]")
                .with_help(
                    "write a registry, a lower-case name and a tag, e.g. `localhost:5000/app:1.0`",
                ),
            );
            return None;
        }
        let when = self.export_when(e)?;
        let compression = self.export_compression(e)?;
        Some(Export {
            stage: stage?,
            dest: PathBuf::new(),
            format: ExportFormat::Push,
            provenance: e.provenance,
            squash: e.squash,
            when,
            tag: Some(reference),
            compression,
            span: Some(e.span),
        })
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
        let mut d = Diagnostic::new(
            Code::SPEC_CYCLE,
            format!("dependency cycle: {}", names.join(" → ")),
        );
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

/// How long a plugin step may run when the spec does not say.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// How much memory a plugin step may use when the spec does not say.
pub const DEFAULT_MEMORY: u64 = 1 << 30;

/// Whether `s` is an image name as Docker reads one (the distribution
/// grammar, see `model::name`): `[HOST[:PORT]/]PATH[:TAG]`, lower-case
/// path components, a tag of at most 128 word characters.
pub fn valid_tag(s: &str) -> bool {
    crate::model::name::canonical(s).is_ok()
}
