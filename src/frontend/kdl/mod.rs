//! KDL text → spec AST.
//!
//! Parses `kiln.kdl` files (KDL v2, falling back to v1) with the `kdl` crate
//! and lowers the document by hand into [`ast::Spec`], keeping a span for
//! every node, argument and property. Follows `include`s. Reports every
//! problem it finds, not just the first. Knows nothing of stages' meaning:
//! name resolution and substitution happen in `ir`.

pub mod config;
mod depth;
pub mod emit;
mod node;
mod steps;

use crate::diag::Code;
use crate::diag::{Diagnostic, Diagnostics, SourceId, Sources, Span, Spanned, did_you_mean};
use crate::frontend::ParseCache;
use crate::frontend::ast::{
    ArgDecl, ContextDecl, ExportDecl, Fragment, PluginDecl, Spec, StageDecl, StepDecl, Str,
};
use ::kdl::KdlDocument;
use node::Node;
use std::path::{Path, PathBuf};

/// Top-level node names.
const TOP_NODES: &[&str] = &[
    "kiln", "arg", "context", "plugin", "stage", "export", "include",
];

/// Step node names inside a stage.
pub const STEP_NODES: &[&str] = &[
    "from",
    "copy",
    "fetch",
    "git",
    "write",
    "mkdir",
    "rm",
    "symlink",
    "env",
    "workdir",
    "user",
    "label",
    "entrypoint",
    "cmd",
    "expose",
    "volume",
    "stopsignal",
    "shell",
    "healthcheck",
    "onbuild",
    "maintainer",
    "wasm",
    "run",
    "test",
];

/// Read a spec file and everything it includes.
///
/// `name` is how the file is shown in diagnostics.
pub fn load(
    path: &Path,
    name: &str,
    sources: &Sources,
    cache: Option<&dyn ParseCache>,
) -> Result<Spec, LoadError> {
    load_with(
        path,
        name,
        sources,
        LoadOptions {
            cache,
            project_root: None,
        },
    )
}

/// How to read a spec.
#[derive(Clone, Copy, Default)]
pub struct LoadOptions<'a> {
    /// Lowered files from earlier builds.
    pub cache: Option<&'a dyn ParseCache>,
    /// The directory includes must stay in; `None` finds it
    /// ([`crate::frontend::project_root`]).
    pub project_root: Option<&'a Path>,
}

/// [`load`] with options.
pub fn load_with(
    path: &Path,
    name: &str,
    sources: &Sources,
    options: LoadOptions<'_>,
) -> Result<Spec, LoadError> {
    let LoadOptions {
        cache,
        project_root,
    } = options;
    let text = crate::frontend::read_spec_file(path).map_err(|e| LoadError {
        partial: None,
        diagnostics: vec![
            Diagnostic::new(
                Code::SPEC_READ,
                format!("cannot read spec file `{name}`: {e}"),
            )
            .with_help(
                "pass the spec with `-f FILE`, or run kiln in a directory with a `kiln.kdl`",
            ),
        ],
    })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let project = match project_root {
        Some(p) => canonical(p),
        None => crate::frontend::project_root(&canonical(&dir)),
    };
    let id = sources.add(name.to_string(), canonical(path), text);
    let mut spec = Spec {
        dir: dir.clone(),
        ..Spec::default()
    };
    let mut loader = Loader {
        sources,
        spec: &mut spec,
        frag: Fragment::default(),
        diags: Vec::new(),
        stack: Vec::new(),
        cache,
        project,
    };
    loader.file(id, &dir);
    let diags = loader.diags;
    finish(spec, diags)
}

/// Parse one spec text on its own (no includes are followed). For tests and fuzzing.
pub fn parse_str(name: &str, text: &str, sources: &Sources) -> Result<Spec, LoadError> {
    let id = sources.add(name.to_string(), PathBuf::from(name), text.to_string());
    let mut spec = Spec::default();
    let mut loader = Loader {
        sources,
        spec: &mut spec,
        frag: Fragment::default(),
        diags: Vec::new(),
        stack: vec![PathBuf::from(name)],
        cache: None,
        project: PathBuf::from("/"),
    };
    loader.document(id, Path::new(""), false);
    let frag = std::mem::take(&mut loader.frag);
    loader.merge(id, frag, Path::new(""));
    let diags = loader.diags;
    finish(spec, diags)
}

/// Why a spec could not be read: every diagnostic, and the spec as far as
/// it could be read when the files were valid KDL (so later phases can
/// report their errors too, in the same run).
#[derive(Debug)]
pub struct LoadError {
    pub diagnostics: Diagnostics,
    pub partial: Option<Box<Spec>>,
}

fn finish(mut spec: Spec, diags: Diagnostics) -> Result<Spec, LoadError> {
    if !diags.iter().any(|d| !d.warning) {
        spec.warnings = diags;
        return Ok(spec);
    }
    let syntax = diags.iter().any(|d| {
        matches!(
            d.code,
            Code::SPEC_SYNTAX | Code::SPEC_READ | Code::SPEC_INCLUDE | Code::SPEC_INCLUDE_CYCLE
        )
    });
    Err(LoadError {
        diagnostics: diags,
        partial: (!syntax).then(|| Box::new(spec)),
    })
}

struct Loader<'a> {
    sources: &'a Sources,
    /// The whole spec, as files are merged into it.
    spec: &'a mut Spec,
    /// What the file being lowered declares.
    frag: Fragment,
    diags: Diagnostics,
    /// Files being loaded, outermost first, to catch include cycles.
    stack: Vec<PathBuf>,
    cache: Option<&'a dyn ParseCache>,
    /// Includes must lie below this directory (see [`crate::frontend::project_root`]).
    project: PathBuf,
}

impl Loader<'_> {
    fn file(&mut self, id: SourceId, dir: &Path) {
        let path = self
            .sources
            .get(id)
            .map(|f| f.path.clone())
            .unwrap_or_default();
        let key = self.sources.get(id).map(|f| {
            let mut h = blake3::Hasher::new();
            h.update(env!("CARGO_PKG_VERSION").as_bytes());
            // Bump when `Fragment` changes shape: old entries then miss.
            h.update(b"fragment-v5");
            h.update(&[0]);
            h.update(f.path.as_os_str().as_encoded_bytes());
            h.update(&[0]);
            // Paths in a fragment (plugins, contexts, exports) are joined to
            // the directory the file was read from, as the build names it:
            // two builds reaching one file by different paths (a monorepo's
            // root and a package sharing a state dir) get their own entries.
            h.update(dir.as_os_str().as_encoded_bytes());
            h.update(&[0]);
            h.update(&id.0.to_le_bytes());
            h.update(f.text.as_bytes());
            h.finalize().to_hex().to_string()
        });
        self.stack.push(path);
        let cached = match (self.cache, &key) {
            (Some(c), Some(k)) => c
                .get(k)
                .and_then(|b| postcard::from_bytes::<Fragment>(&b).ok()),
            _ => None,
        };
        let frag = match cached {
            Some(f) => f,
            None => {
                let outer = std::mem::take(&mut self.frag);
                let before = self.diags.len();
                self.document(id, dir, true);
                let frag = std::mem::replace(&mut self.frag, outer);
                // Only clean files are cached: warnings and errors must show again.
                if let (Some(c), Some(k), true) = (self.cache, &key, self.diags.len() == before)
                    && let Ok(bytes) = postcard::to_stdvec(&frag)
                {
                    c.put(k, &bytes);
                }
                frag
            }
        };
        self.merge(id, frag, dir);
        self.stack.pop();
    }

    /// Add a file's declarations to the spec, reading its includes where
    /// they stand among its stages.
    fn merge(&mut self, id: SourceId, frag: Fragment, dir: &Path) {
        self.spec.files.push(id);
        let decls = frag.decls;
        if self.spec.version.is_none() {
            self.spec.version = decls.version;
        }
        self.spec.args.extend(decls.args);
        self.spec.contexts.extend(decls.contexts);
        self.spec.plugins.extend(decls.plugins);
        self.spec.exports.extend(decls.exports);
        let mut includes = frag.includes.into_iter().peekable();
        for (i, stage) in decls.stages.into_iter().enumerate() {
            while let Some((rel, _)) = includes.next_if(|(_, at)| *at <= i) {
                self.include(&rel, dir);
            }
            self.spec.stages.push(stage);
        }
        for (rel, _) in includes {
            self.include(&rel, dir);
        }
    }

    fn document(&mut self, id: SourceId, dir: &Path, follow_includes: bool) {
        let Some(file) = self.sources.get(id) else {
            return;
        };
        if let Some(at) = depth::too_deep(&file.text, depth::MAX_DEPTH) {
            self.diags.push(
                Diagnostic::new(
                    Code::SPEC_TOO_DEEP,
                    format!("children blocks nest more than {} deep", depth::MAX_DEPTH),
                )
                .with_label(Span::new(id, at, 1), "this block is too deep"),
            );
            return;
        }
        let doc = match KdlDocument::parse_v2(&file.text) {
            Ok(doc) => doc,
            Err(v2_err) => match KdlDocument::parse(&file.text) {
                Ok(doc) => {
                    let first = doc.nodes().first().map(|n| n.span());
                    let mut w = Diagnostic::warning(
                        Code::SPEC_KDL_V1,
                        format!("`{}` is written in KDL v1", file.name),
                    );
                    if let Some(s) = first {
                        w = w.with_label(
                            Span::new(id, s.offset(), s.len().min(1)),
                            "read as KDL v1",
                        );
                    }
                    self.diags.push(w);
                    doc
                }
                Err(_) => {
                    self.kdl_error(id, &v2_err);
                    return;
                }
            },
        };
        for node in doc.nodes() {
            let n = Node::new(node, id, self.sources);
            match node.name().value() {
                "kiln" => self.version(&n),
                "arg" => self.arg(&n),
                "context" => self.context(&n, dir),
                "plugin" => self.plugin(&n, dir),
                "stage" => self.stage(&n),
                "export" => self.export(&n, dir),
                "include" => {
                    n.arity(1, Some(1), "include \"FILE.kdl\"", &mut self.diags);
                    n.no_props(&mut self.diags);
                    n.no_children(&mut self.diags);
                    if let Some(rel) = n.str_arg(0, &mut self.diags)
                        && follow_includes
                    {
                        self.frag.includes.push((rel, self.frag.decls.stages.len()));
                    }
                }
                other => {
                    let mut d =
                        Diagnostic::new(Code::SPEC_UNKNOWN_NODE, format!("unknown node `{other}`"))
                            .with_label(n.name_span(), "not a top-level node");
                    d = match did_you_mean(other, TOP_NODES.iter().copied()) {
                        Some(s) => d.with_help(format!("did you mean `{s}`?")),
                        None if STEP_NODES.contains(&other) => d.with_help(format!(
                            "`{other}` is a step: put it inside a `stage NAME {{ … }}` block"
                        )),
                        None => {
                            d.with_help(format!("top-level nodes are: {}", TOP_NODES.join(", ")))
                        }
                    };
                    self.diags.push(d);
                }
            }
        }
    }

    fn kdl_error(&mut self, id: SourceId, err: &::kdl::KdlError) {
        self.diags.extend(syntax_errors(id, err, self.sources));
    }

    fn version(&mut self, n: &Node) {
        n.arity(1, Some(1), "kiln 1", &mut self.diags);
        n.no_props(&mut self.diags);
        n.no_children(&mut self.diags);
        if let Some(v) = n.int_arg(0, &mut self.diags) {
            if v.value != 1 {
                self.diags.push(
                    Diagnostic::new(
                        Code::SPEC_VERSION,
                        format!("unsupported spec version {}", v.value),
                    )
                    .with_label(v.span, "this kiln reads version 1"),
                );
            }
            if let Some(prev) = &self.frag.decls.version {
                self.diags.push(
                    Diagnostic::new(Code::SPEC_DUPLICATE_VERSION, "`kiln` is given twice")
                        .with_label(v.span, "second version")
                        .with_label(prev.span, "first version"),
                );
            }
            if self.frag.decls.version.is_none() {
                self.frag.decls.version = Some(v);
            }
        }
    }

    fn arg(&mut self, n: &Node) {
        n.arity(1, Some(1), "arg NAME default=\"VALUE\"", &mut self.diags);
        n.allow_props(&["default"], &mut self.diags);
        n.no_children(&mut self.diags);
        let Some(name) = n.str_arg(0, &mut self.diags) else {
            return;
        };
        check_name(&name, "arg", &mut self.diags);
        let default = n.str_prop("default", &mut self.diags);
        self.frag.decls.args.push(ArgDecl {
            span: n.span(),
            name,
            default,
        });
    }

    fn context(&mut self, n: &Node, dir: &Path) {
        n.arity(1, Some(1), "context NAME path=\"DIR\"", &mut self.diags);
        n.allow_props(&["path"], &mut self.diags);
        n.no_children(&mut self.diags);
        let name = n.str_arg(0, &mut self.diags);
        let path = n.required_str_prop("path", "context NAME path=\"DIR\"", &mut self.diags);
        if let (Some(name), Some(path)) = (name, path) {
            check_name(&name, "context", &mut self.diags);
            self.frag.decls.contexts.push(ContextDecl {
                span: n.span(),
                name,
                path,
                dir: dir.to_path_buf(),
            });
        }
    }

    fn plugin(&mut self, n: &Node, dir: &Path) {
        let usage = "plugin NAME path=\"FILE.wasm\" blake3=\"HEX\" (or url=\"https://…\" blake3=\"HEX\", or from=STAGE path=\"/IN/STAGE.wasm\")";
        n.arity(1, Some(1), usage, &mut self.diags);
        n.allow_props(&["path", "url", "blake3", "from"], &mut self.diags);
        n.no_children(&mut self.diags);
        let name = n.str_arg(0, &mut self.diags);
        let path = n.str_prop("path", &mut self.diags);
        let url = n.str_prop("url", &mut self.diags);
        let from = n.str_prop("from", &mut self.diags);
        let blake3 = n.str_prop("blake3", &mut self.diags);
        let mut ok = true;
        match (&path, &url) {
            (Some(_), Some(u)) => {
                ok = false;
                self.diags.push(
                    Diagnostic::new(
                        Code::SPEC_PLUGIN_SOURCE,
                        "a plugin has one module: `path=` or `url=`, not both",
                    )
                    .with_label(n.prop_value_span("url").unwrap_or(u.span), "second source")
                    .with_help("keep `url=` for a module downloaded once into the store, or `path=` for a file"),
                );
            }
            (None, None)
                if n.prop_value_span("path").is_none() && n.prop_value_span("url").is_none() =>
            {
                ok = false;
                self.diags.push(
                    Diagnostic::new(
                        Code::SPEC_MISSING_PROPERTY,
                        "`plugin` needs `path=` or `url=`",
                    )
                    .with_label(n.span(), "no module named here")
                    .with_help(format!("usage: `{usage}`")),
                );
            }
            _ => {}
        }
        if let (Some(u), Some(_)) = (&url, &from) {
            ok = false;
            self.diags.push(
                Diagnostic::new(
                    Code::SPEC_PLUGIN_SOURCE,
                    "a plugin built by a stage is read from its result, not downloaded",
                )
                .with_label(n.prop_value_span("url").unwrap_or(u.span), "`url=` with `from=`")
                .with_help("use `from=STAGE path=\"/IN/STAGE.wasm\"`, or drop `from=` to download the module"),
            );
        }
        if let Some(u) = &url
            && !(u.value.starts_with("https://") || u.value.starts_with("http://"))
        {
            ok = false;
            self.diags.push(
                Diagnostic::new(
                    Code::SPEC_PLUGIN_URL,
                    format!("`{}` is not an http(s) URL", u.value),
                )
                .with_label(
                    n.prop_value_span("url").unwrap_or(u.span),
                    "not http:// or https://",
                ),
            );
        }
        if let Some(pin) = &blake3
            && (pin.value.len() != 64 || !pin.value.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            self.diags.push(
                Diagnostic::new(Code::SPEC_BAD_PIN, "a plugin pin must be 64 hex digits")
                    .with_label(
                        n.prop_value_span("blake3").unwrap_or(pin.span),
                        "not a blake3 digest",
                    ),
            );
        }
        if let Some(name) = name
            && ok
            && (path.is_some() || url.is_some())
        {
            check_name(&name, "plugin", &mut self.diags);
            self.frag.decls.plugins.push(PluginDecl {
                span: n.span(),
                name,
                path,
                url,
                blake3,
                from,
                dir: dir.to_path_buf(),
            });
        }
    }

    fn include(&mut self, rel: &Str, dir: &Path) {
        let path = dir.join(&rel.value);
        let abs = canonical(&path);
        if self.stack.contains(&abs) {
            self.diags.push(
                Diagnostic::new(
                    Code::SPEC_INCLUDE_CYCLE,
                    format!("`{}` includes itself", rel.value),
                )
                .with_label(rel.span, "this include leads back to a file being read")
                .with_help("remove one of the includes that form the loop"),
            );
            return;
        }
        if self.sources.find(&abs).is_some() {
            // Included twice through different paths (a diamond): read once.
            return;
        }
        if !abs.starts_with(&self.project) {
            self.diags.push(
                Diagnostic::new(
                    Code::SPEC_INCLUDE,
                    format!(
                        "cannot include `{}`: it is outside the project `{}`",
                        rel.value,
                        self.project.display()
                    ),
                )
                .with_label(rel.span, "included here")
                .with_help("a spec includes only files inside its project (the version-control checkout around it, or the directory of the spec built); name a wider project with `--project-root DIR`"),
            );
            return;
        }
        let text = match crate::frontend::read_spec_file(&path) {
            Ok(t) => t,
            Err(e) => {
                self.diags.push(
                    Diagnostic::new(
                        Code::SPEC_INCLUDE,
                        format!("cannot read included file `{}`: {e}", rel.value),
                    )
                    .with_label(rel.span, "included here")
                    .with_help("include paths are relative to the file that includes them"),
                );
                return;
            }
        };
        let shown = display_path(&path);
        let id = self.sources.add(shown, abs, text);
        let sub_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        self.file(id, &sub_dir);
    }

    fn export(&mut self, n: &Node, dir: &Path) {
        n.arity(
            0,
            Some(0),
            "export { STAGE to=\"PATH\" … }",
            &mut self.diags,
        );
        n.no_props(&mut self.diags);
        let Some(children) = n.node.children() else {
            return;
        };
        let usage = "STAGE to=\"PATH\" [format=dir|tar|oci|oci-archive|docker-archive] [when=success|always], or STAGE image=\"REGISTRY/NAME:TAG\"";
        for child in children.nodes() {
            let c = Node::new(child, n.source, self.sources);
            c.arity(0, Some(0), usage, &mut self.diags);
            c.allow_props(
                &[
                    "to",
                    "image",
                    "format",
                    "when",
                    "tag",
                    "compression",
                    "provenance",
                    "squash",
                ],
                &mut self.diags,
            );
            c.no_children(&mut self.diags);
            let stage = c.name();
            let image = c.str_prop("image", &mut self.diags);
            let to = if image.is_some() {
                c.str_prop("to", &mut self.diags)
            } else {
                match c.required_str_prop("to", usage, &mut self.diags) {
                    Some(t) => Some(t),
                    None => continue,
                }
            };
            if let (Some(t), Some(i)) = (&to, &image) {
                self.diags.push(
                    Diagnostic::new(
                        Code::SPEC_EXPORT_IMAGE,
                        "an export entry goes to a path (`to=`) or a registry (`image=`), not both",
                    )
                    .with_label(t.span, "a path")
                    .with_label(i.span, "a registry")
                    .with_help(
                        "write two entries for the same stage: one with `to=`, one with `image=`",
                    ),
                );
                continue;
            }
            self.frag.decls.exports.push(ExportDecl {
                span: c.span(),
                stage,
                to,
                image,
                format: c.str_prop("format", &mut self.diags),
                when: c.str_prop("when", &mut self.diags),
                tag: c.str_prop("tag", &mut self.diags),
                compression: c.str_prop("compression", &mut self.diags),
                provenance: c.bool_prop("provenance", &mut self.diags).unwrap_or(false),
                squash: c.bool_prop("squash", &mut self.diags).unwrap_or(false),
                dir: dir.to_path_buf(),
            });
        }
    }

    fn stage(&mut self, n: &Node) {
        n.arity(1, Some(1), "stage NAME { … }", &mut self.diags);
        n.no_props(&mut self.diags);
        let Some(name) = n.str_arg(0, &mut self.diags) else {
            return;
        };
        check_name(&name, "stage", &mut self.diags);
        let mut stage = StageDecl {
            span: n.span(),
            name,
            from: None,
            image: None,
            steps: Vec::new(),
        };
        if let Some(children) = n.node.children() {
            for child in children.nodes() {
                self.step(&Node::new(child, n.source, self.sources), &mut stage);
            }
        }
        self.frag.decls.stages.push(stage);
    }

    fn step(&mut self, n: &Node, stage: &mut StageDecl) {
        let d = &mut self.diags;
        let name = n.node.name().value();
        if name == "from" {
            n.no_children(d);
            Self::base(n, stage, d);
            return;
        }
        let Some(syntax) = steps::syntax(name) else {
            let mut diag =
                Diagnostic::new(Code::SPEC_UNKNOWN_STEP, format!("unknown step `{name}`"))
                    .with_label(n.name_span(), "not a step");
            diag = match did_you_mean(name, STEP_NODES.iter().copied()) {
                Some(s) => diag.with_help(format!("did you mean `{s}`?")),
                None => diag.with_help(format!("steps are: {}", STEP_NODES.join(", "))),
            };
            d.push(diag);
            return;
        };
        if !syntax.children {
            n.no_children(d);
        }
        if let Some(kind) = (syntax.parse)(n, d) {
            stage.steps.push(StepDecl {
                span: n.span(),
                kind,
            });
        }
    }

    /// `from scratch|STAGE` or `from image="REF"`: the stage's base.
    fn base(n: &Node, stage: &mut StageDecl, d: &mut Diagnostics) {
        let usage = "from scratch|STAGE | from image=\"REF\"";
        n.allow_props(&["image"], d);
        let image = n.str_prop("image", d);
        let base = if image.is_some() {
            n.arity(0, Some(0), usage, d);
            image.clone()
        } else {
            n.arity(1, Some(1), usage, d);
            n.str_arg(0, d)
        };
        if let Some(base) = base {
            let prev = stage.from.as_ref().or(stage.image.as_ref());
            if let Some(prev) = prev {
                d.push(
                    Diagnostic::new(Code::SPEC_DUPLICATE_FROM, "a stage has one `from`")
                        .with_label(base.span, "second base")
                        .with_label(prev.span, "first base"),
                );
            } else if !stage.steps.is_empty() {
                d.push(
                    Diagnostic::new(Code::SPEC_LATE_FROM, "`from` must come before the steps")
                        .with_label(n.span(), "after a step"),
                );
            } else if image.is_some() {
                stage.image = Some(base);
            } else {
                stage.from = Some(base);
            }
        }
    }
}

/// Whether a stage, arg, context or plugin name is valid: letters,
/// digits, `-`, `_`, `.`, not starting with `-` or `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with(['-', '.'])
}

fn check_name(name: &Spanned<String>, what: &str, d: &mut Diagnostics) {
    if !valid_name(&name.value) {
        d.push(
            Diagnostic::new(Code::SPEC_BAD_NAME, format!("`{}` is not a valid {what} name", name.value))
                .with_label(name.span, "invalid name")
                .with_help("names use letters, digits, `-`, `_` and `.`, and start with a letter, digit or `_`"),
        );
    }
    if what == "stage" && name.value == "scratch" {
        d.push(
            Diagnostic::new(
                Code::SPEC_BAD_NAME,
                "`scratch` is reserved for the empty base",
            )
            .with_label(name.span, "reserved name")
            .with_help("pick another stage name"),
        );
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// The canonical path of a file, or its absolute path if it cannot be resolved.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// A path shown relative to the working directory when it is below it.
pub fn display_path(path: &Path) -> String {
    let cwd = std::env::current_dir().ok();
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    if let Some(cwd) = cwd
        && let Ok(rel) = abs.strip_prefix(&cwd)
    {
        return rel.display().to_string();
    }
    path.display().to_string()
}

/// A KDL syntax error of the file `id`, one diagnostic per problem.
pub(crate) fn syntax_errors(id: SourceId, err: &::kdl::KdlError, sources: &Sources) -> Diagnostics {
    let name = sources.get(id).map(|f| f.name.clone()).unwrap_or_default();
    let mut out = Diagnostics::new();
    if err.diagnostics.is_empty() {
        out.push(Diagnostic::new(
            Code::SPEC_SYNTAX,
            format!("`{name}` is not valid KDL"),
        ));
    }
    for kd in &err.diagnostics {
        let message = kd
            .message
            .clone()
            .unwrap_or_else(|| "invalid KDL syntax".to_string());
        let d = Diagnostic::new(
            Code::SPEC_SYNTAX,
            format!("KDL syntax: {}", lower_first(&message)),
        )
        .with_label(
            Span::new(id, kd.span.offset(), kd.span.len()),
            kd.label.clone().unwrap_or_else(|| "here".into()),
        )
        .with_help(kd.help.clone().unwrap_or_else(|| {
            "see spec/language.md for the syntax; strings need double quotes when they contain spaces or special characters".to_string()
        }));
        out.push(d);
    }
    out
}

#[cfg(test)]
mod tests;
