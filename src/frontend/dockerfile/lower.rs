//! Lowering a Dockerfile to the spec AST, with Docker's semantics carried
//! over: stages by name and index, `ARG`/`ENV` values expanded as Docker
//! expands them, `COPY`/`ADD` flags, heredoc files, image metadata, `RUN`
//! as a `run` step. Spans point into the Dockerfile, so every later error
//! names its line.
//!
//! Every string put into the AST has `${` and `$$` escaped (`$${`, `$$$$`):
//! Docker's expansion is done here, and kiln's own substitution must leave
//! the text alone. `kiln import` writes the same AST as KDL, so building
//! the Dockerfile and building its import compile to the same graph.

use super::instructions::{Command, CopyInst, Healthcheck, Inst};
use super::parse::{Dockerfile, Heredoc, Instruction, ParseError, parse};
use super::scope::Scope;
use super::scope::{StageSource, stages};
use super::shell::{REF_CLOSE, REF_OPEN, expand_heredoc};
use crate::diag::Code;
use crate::diag::{Diagnostic, SourceId, Sources, Span, Spanned};
use crate::frontend::ast::{
    HealthcheckDecl, Pair, RunDecl, Spec, StageDecl, StepDecl, StepKind, Str,
};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;

/// A Dockerfile lowered to a spec.
#[derive(Debug)]
pub struct Imported {
    pub spec: Spec,
    /// For each stage of `spec`, the Dockerfile line it comes from and the
    /// line's text (for `kiln import`'s comments).
    pub origins: Vec<(usize, String)>,
    /// What the import could not carry over exactly, located (in the
    /// Dockerfile's order); shown by `kiln import`, and by `kiln build`
    /// only when it matters.
    pub notes: Vec<Diagnostic>,
    /// The index in `spec.stages` of the default target: the Dockerfile's
    /// last stage.
    pub default_target: usize,
}

/// Escape a string so kiln's `${…}` substitution gives it back unchanged,
/// except for references to kept args (see [`REF_OPEN`]), which are
/// written as the `${NAME}` (`${NAME:-…}`, `${NAME:+…}`) they stand for.
pub fn escape_subst(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            REF_OPEN => out.push_str("${"),
            REF_CLOSE => out.push('}'),
            _ => {
                out.push(c);
                if c == '$' && matches!(chars.peek(), Some('$' | '{' | &REF_OPEN)) {
                    out.push('$');
                }
            }
        }
    }
    out
}

/// Whether a Dockerfile path names a Dockerfile (rather than a KDL spec).
pub fn is_dockerfile(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    name == "dockerfile"
        || name == "containerfile"
        || name.starts_with("dockerfile.")
        || name.ends_with(".dockerfile")
        || name.starts_with("containerfile.")
        || name.ends_with(".containerfile")
}

/// Read and lower a Dockerfile. `name` is how it is shown in diagnostics.
pub fn load(
    path: &Path,
    name: &str,
    sources: &Sources,
    build_args: &[(String, String)],
) -> Result<Imported, Vec<Diagnostic>> {
    let text = crate::frontend::read_spec_file(path).map_err(|e| {
        vec![Diagnostic::new(
            Code::DOCKERFILE_READ,
            format!("cannot read Dockerfile `{name}`: {e}"),
        )]
    })?;
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let id = sources.add(name.to_string(), abs, text.clone());
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    lower_text(&text, id, &dir, build_args)
}

/// Lower a Dockerfile already in `sources` as `id`.
pub fn lower_text(
    text: &str,
    id: SourceId,
    dir: &Path,
    build_args: &[(String, String)],
) -> Result<Imported, Vec<Diagnostic>> {
    let lines = LineIndex::new(text, id);
    let located = |e: ParseError| {
        vec![
            Diagnostic::new(Code::DOCKERFILE_SYNTAX, e.message.clone())
                .with_label(lines.span(e.line), "here"),
        ]
    };
    let d = parse(text).map_err(located)?;
    // A Dockerfile (or build arg) holding the characters references are
    // made of keeps no args: its text could be mistaken for them.
    let keep_args = !text.contains([REF_OPEN, REF_CLOSE])
        && !build_args
            .iter()
            .any(|(k, v)| k.contains([REF_OPEN, REF_CLOSE]) || v.contains([REF_OPEN, REF_CLOSE]));
    // An arg used by its value somewhere (where the spec cannot refer to
    // it) is written as a value everywhere: one `--arg` must never change
    // some of its uses and not others. Lowered again without it.
    let mut demoted: Vec<(usize, String)> = Vec::new();
    loop {
        let input = Input {
            d: &d,
            text,
            lines: &lines,
            id,
            dir,
            build_args,
            keep_args,
        };
        let Lowered { imported, baked } = lower_with(&input, &demoted)?;
        let new: Vec<(usize, String)> = baked
            .into_iter()
            .filter(|(_, n)| !demoted.iter().any(|(_, d)| d == n))
            .collect();
        if new.is_empty() {
            return imported;
        }
        for (line, name) in new {
            if !demoted.iter().any(|(_, d)| *d == name) {
                demoted.push((line, name));
            }
        }
    }
}

/// What one lowering reads.
struct Input<'a> {
    d: &'a Dockerfile,
    text: &'a str,
    lines: &'a LineIndex<'a>,
    id: SourceId,
    dir: &'a Path,
    build_args: &'a [(String, String)],
    keep_args: bool,
}

/// One lowering's result, and the kept args it had to use by value:
/// (line, name).
struct Lowered {
    imported: Result<Imported, Vec<Diagnostic>>,
    baked: Vec<(usize, String)>,
}

/// One lowering, with the args in `demoted` written as values.
fn lower_with(input: &Input<'_>, demoted: &[(usize, String)]) -> Result<Lowered, Vec<Diagnostic>> {
    let Input {
        d,
        text,
        lines,
        id,
        dir,
        build_args,
        keep_args,
    } = *input;
    let located = |e: ParseError| {
        vec![
            Diagnostic::new(Code::DOCKERFILE_SYNTAX, e.message.clone())
                .with_label(lines.span(e.line), "here"),
        ]
    };
    let (globals, sources) = stages(d, build_args, keep_args, demoted).map_err(located)?;
    let mut baked = globals.baked.clone();
    let mut l = Lowerer {
        d,
        text,
        lines,
        sources: &sources,
        names: Vec::new(),
        spec: Spec {
            dir: dir.to_path_buf(),
            files: vec![id],
            ..Spec::default()
        },
        origins: Vec::new(),
        notes: Vec::new(),
        errors: Vec::new(),
        image_stages: Vec::new(),
        noted_network: false,
        kept: globals.kept.clone(),
        baked: RefCell::new(BTreeSet::new()),
        noted_baked: Vec::new(),
        shells: Vec::with_capacity(sources.len()),
        by_name: std::collections::HashMap::new(),
    };
    for (i, s) in sources.iter().enumerate() {
        if let Some(n) = &s.name {
            l.by_name.entry(n.clone()).or_insert(i);
        }
    }
    l.directives();
    l.args(&globals);
    l.names = stage_names(&sources);
    for (i, s) in sources.iter().enumerate() {
        l.stage(i, s);
    }
    // Stages made for `COPY --from=IMAGE` go first, so the Dockerfile's
    // last stage stays the last one, the default target (references by
    // index were resolved to names already).
    let made = std::mem::take(&mut l.image_stages);
    let count = made.len();
    for (i, (name, image, span)) in made.into_iter().enumerate() {
        let line = lines.line_of(span);
        l.origins.insert(i, (line, lines.text(line).to_string()));
        l.spec.stages.insert(
            i,
            StageDecl {
                span,
                name: Spanned::new(span, name),
                from: None,
                image: Some(Spanned::new(span, escape_subst(&image))),
                steps: Vec::new(),
            },
        );
    }
    // Build args nothing declares are reported, as Docker warns of them.
    let mut declared: Vec<&str> = globals.args.iter().map(|(n, _)| n.as_str()).collect();
    for s in &sources {
        for (_, inst) in &s.items {
            if let Inst::Arg(decls) = inst {
                declared.extend(decls.iter().map(|(n, _)| n.as_str()));
            }
        }
    }
    for (k, _) in build_args {
        if !declared.contains(&k.as_str()) {
            l.notes.push(
                Diagnostic::warning(
                    Code::DOCKERFILE_UNUSED_ARG,
                    format!("the build arg `{k}` is not declared by any `ARG` in the Dockerfile"),
                )
                .with_help("check its spelling, or declare it with `ARG`"),
            );
        }
    }
    baked.extend(l.noted_baked.iter().cloned());
    if !l.errors.is_empty() {
        return Ok(Lowered {
            imported: Err(l.errors),
            baked,
        });
    }
    // In the Dockerfile's order (a stable sort: notes on one line keep
    // theirs); notes without a place first.
    l.notes
        .sort_by_key(|n| n.labels.first().map(|lb| lb.span.start));
    let imported = Imported {
        spec: l.spec,
        origins: l.origins,
        notes: l.notes,
        default_target: count + sources.len() - 1,
    };
    Ok(Lowered {
        imported: Ok(imported),
        baked,
    })
}

/// Line numbers to byte ranges.
struct LineIndex<'a> {
    text: &'a str,
    id: SourceId,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str, id: SourceId) -> LineIndex<'a> {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, id, starts }
    }

    /// The text of a 1-based line, without its newline.
    fn text(&self, line: usize) -> &'a str {
        let start = self
            .starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let rest = self.text.get(start..).unwrap_or("");
        rest.split('\n').next().unwrap_or("").trim_end_matches('\r')
    }

    /// A span over a line's text.
    fn span(&self, line: usize) -> Span {
        let start = self
            .starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        Span::new(self.id, start, self.text(line).len().max(1))
    }

    fn line_of(&self, span: Span) -> usize {
        match self.starts.binary_search(&(span.start as usize)) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

/// Each Docker stage's name in the spec: its `AS` name, or `stage-N`.
fn stage_names(sources: &[StageSource]) -> Vec<String> {
    let taken: Vec<&str> = sources.iter().filter_map(|s| s.name.as_deref()).collect();
    sources
        .iter()
        .map(|s| match &s.name {
            Some(n) => n.clone(),
            None => {
                let mut name = format!("stage-{}", s.index);
                while taken.contains(&name.as_str()) {
                    name.push('_');
                }
                name
            }
        })
        .collect()
}

struct Lowerer<'a> {
    d: &'a Dockerfile,
    text: &'a str,
    lines: &'a LineIndex<'a>,
    sources: &'a [StageSource],
    names: Vec<String>,
    spec: Spec,
    origins: Vec<(usize, String)>,
    notes: Vec<Diagnostic>,
    errors: Vec<Diagnostic>,
    /// Stages standing for images that `COPY --from` names: (name, image, span).
    image_stages: Vec<(String, String, Span)>,
    /// Whether the note on `RUN`'s network was given.
    noted_network: bool,
    /// The `ARG`s the spec keeps as `arg`s, with their values at import.
    kept: Vec<(String, Option<String>)>,
    /// Kept args used by value in the instruction being lowered.
    baked: RefCell<BTreeSet<String>>,
    /// (line, name) of the notes on args used by value.
    noted_baked: Vec<(usize, String)>,
    /// The shell each stage lowered so far ends with (what `FROM stage`
    /// starts with), by index.
    shells: Vec<Vec<String>>,
    /// The first stage of each (lower-cased) name, by name.
    by_name: std::collections::HashMap<String, usize>,
}

/// What one stage has seen so far, for the instructions after.
#[derive(Default)]
struct StageState {
    /// `ARG`s in scope with values, for `RUN`'s environment.
    args: Vec<(String, String)>,
    /// `ENV` names set in this stage or inherited (an `ENV` hides an `ARG`).
    env: Vec<(String, String)>,
    /// The last `CMD` of this stage, which a later `ENTRYPOINT` keeps.
    cmd: Option<Vec<Str>>,
    /// The shell for shell-form commands.
    shell: Vec<String>,
}

impl Lowerer<'_> {
    fn span(&self, line: usize) -> Span {
        self.lines.span(line)
    }

    fn s(&self, line: usize, value: &str) -> Str {
        Spanned::new(self.span(line), escape_subst(value))
    }

    fn note(&mut self, line: usize, message: String, help: &str) {
        self.notes.push(
            Diagnostic::warning(Code::DOCKERFILE_IMPORT, message)
                .with_label(self.span(line), "here")
                .with_help(help.to_string()),
        );
    }

    fn error(&mut self, line: usize, message: String, label: &str, help: &str) {
        self.errors.push(
            Diagnostic::new(Code::DOCKERFILE_UNSUPPORTED, message)
                .with_label(self.span(line), label.to_string())
                .with_help(help.to_string()),
        );
    }

    /// The kept `ARG`s as `arg`s (their values at import as defaults), and
    /// notes on those written as values.
    fn args(&mut self, globals: &super::scope::Globals) {
        for (name, value) in &globals.kept {
            let line = self
                .d
                .instructions
                .iter()
                .find(|i| {
                    matches!(super::instructions::check(i), Ok(Inst::Arg(ds)) if ds.iter().any(|(n, _)| n == name))
                })
                .map_or(1, |i| i.start_line);
            let span = self.span(line);
            self.spec.args.push(crate::frontend::ast::ArgDecl {
                span,
                name: Spanned::new(span, name.clone()),
                default: value.as_ref().map(|v| Spanned::new(span, v.clone())),
            });
        }
        for (line, name, why) in &globals.fixed {
            self.note(
                *line,
                format!("`ARG {name}` is written into the spec as its value: {why}"),
                "`kiln build --arg` cannot change it; re-import with `--build-arg` to change it",
            );
        }
    }

    /// A kept arg used by its value at `line` (in a form kiln's `${…}`
    /// cannot write, or where the import needs the value): the lowering
    /// is done again with it written as a value everywhere.
    fn note_baked(&mut self, line: usize, name: &str) {
        if !self.noted_baked.iter().any(|(_, n)| n == name) {
            self.noted_baked.push((line, name.to_string()));
        }
    }

    /// Text with its references to kept args replaced by their values at
    /// import, for a decision the import makes (not a use by value).
    fn value_of(&self, text: &str) -> String {
        super::shell::resolve_refs(text, &|name| {
            self.kept
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.clone())
        })
    }

    /// Expand with `vars`: references to kept args stay references
    /// (`symbolic`, for text the spec substitutes), or are replaced by
    /// their values (text the import inspects).
    fn expand_with(
        &mut self,
        line: usize,
        vars: &[(String, String)],
        symbolic: bool,
        expand: impl FnOnce(&Scope<'_>) -> Result<String, super::shell::ShellError>,
    ) -> Result<String, super::shell::ShellError> {
        let kept = std::mem::take(&mut self.kept);
        let scope = Scope {
            vars,
            kept: &kept,
            symbolic,
            baked: &self.baked,
        };
        let result = expand(&scope);
        self.kept = kept;
        let names = std::mem::take(&mut *self.baked.borrow_mut());
        for name in names {
            self.note_baked(line, &name);
        }
        result
    }

    fn directives(&mut self) {
        if let Some(syntax) = &self.d.directives.syntax {
            self.note(
                1,
                format!("the `syntax={syntax}` directive picks a BuildKit frontend image; kiln reads the Dockerfile itself"),
                "the whole Dockerfile language is read; the directive has no effect",
            );
        }
    }

    /// The instruction that starts on `line`.
    fn instruction(&self, line: usize) -> Option<&Instruction> {
        self.d.instructions.iter().find(|i| i.start_line == line)
    }

    /// A stage reference (`FROM x`, `COPY --from=x`): the index of an
    /// earlier stage (by name or number), or `None` for an image.
    fn stage_ref(&self, reference: &str, before: usize) -> Option<usize> {
        let lower = reference.to_ascii_lowercase();
        self.by_name
            .get(&lower)
            .copied()
            .filter(|i| *i < before)
            .or_else(|| reference.parse::<usize>().ok().filter(|i| *i < before))
    }

    fn stage(&mut self, index: usize, src: &StageSource) {
        let line = src.line;
        let span = self.span(line);
        self.origins.push((line, self.lines.text(line).to_string()));
        let mut decl = StageDecl {
            span,
            name: Spanned::new(span, self.names[index].clone()),
            from: None,
            image: None,
            steps: Vec::new(),
        };
        let mut st = StageState {
            shell: vec!["/bin/sh".into(), "-c".into()],
            ..StageState::default()
        };
        if src.base.eq_ignore_ascii_case("scratch") {
            decl.from = Some(self.s(line, "scratch"));
        } else if let Some(b) = self.stage_ref(&src.base, index) {
            decl.from = Some(self.s(line, &self.names[b]));
            st.env = self.sources[b].env.clone();
            st.shell = self.shells[b].clone();
        } else {
            decl.image = Some(self.s(line, &src.image));
        }
        if src.image != src.base && decl.image.is_none() {
            // A stage chosen by an arg stays the stage chosen at import.
            let names: Vec<String> = self
                .kept
                .iter()
                .filter(|(k, _)| src.image.contains(&super::scope::reference(k)))
                .map(|(k, _)| k.clone())
                .collect();
            for name in names {
                self.note_baked(line, &name);
            }
        }
        if let Some(p) = &src.platform {
            self.note(
                line,
                format!(
                    "`--platform={p}` is not carried over: kiln builds for one platform"
                ),
                "images are picked for the machine's platform, or for the one `kiln build --platform` names",
            );
        }
        for (line, inst) in &src.items {
            self.inst(*line, inst, index, &mut st, &mut decl.steps);
        }
        self.spec.stages.push(decl);
        self.shells.push(st.shell);
    }

    fn strs(&self, line: usize, values: &[String]) -> Vec<Str> {
        values.iter().map(|v| self.s(line, v)).collect()
    }

    fn pairs(&self, line: usize, kv: &[(String, String)]) -> Vec<Pair> {
        kv.iter()
            .map(|(k, v)| (self.s(line, k), self.s(line, v)))
            .collect()
    }

    /// A shell-form command as the image config holds it: the shell, then the text.
    fn command(&self, line: usize, c: &Command, shell: &[String]) -> Vec<Str> {
        match c {
            Command::Exec(args) => self.strs(line, args),
            Command::Shell(text) => {
                let mut v = shell.to_vec();
                v.push(text.clone());
                self.strs(line, &v)
            }
        }
    }

    fn inst(
        &mut self,
        line: usize,
        inst: &Inst,
        index: usize,
        st: &mut StageState,
        steps: &mut Vec<StepDecl>,
    ) {
        let span = self.span(line);
        let mut push = |kind: StepKind| steps.push(StepDecl { span, kind });
        match inst {
            Inst::From { .. } => {}
            Inst::Arg(decls) => {
                for (name, value) in decls {
                    if let Some(v) = value {
                        st.args.retain(|(k, _)| k != name);
                        st.args.push((name.clone(), v.clone()));
                    }
                }
            }
            Inst::Env(kv) => {
                for (k, v) in kv {
                    st.env.retain(|(n, _)| n != k);
                    st.env.push((k.clone(), v.clone()));
                }
                push(StepKind::Env(self.pairs(line, kv)));
            }
            Inst::Label(kv) => push(StepKind::Label(self.pairs(line, kv))),
            Inst::Workdir(p) => push(StepKind::Workdir(self.s(line, p))),
            Inst::User(u) => push(StepKind::User(self.s(line, u))),
            Inst::Maintainer(m) => push(StepKind::Maintainer(self.s(line, m))),
            Inst::Stopsignal(s) => push(StepKind::Stopsignal(self.s(line, s))),
            Inst::Expose(p) => push(StepKind::Expose(self.strs(line, p))),
            Inst::Volume(v) => push(StepKind::Volume(self.strs(line, v))),
            Inst::Shell(sh) => {
                st.shell = sh.clone();
                push(StepKind::Shell(self.strs(line, sh)));
            }
            Inst::Cmd(c) => {
                let args = self.command(line, c, &st.shell);
                st.cmd = Some(args.clone());
                push(StepKind::Cmd(args));
            }
            Inst::Entrypoint(c) => {
                push(StepKind::Entrypoint(self.command(line, c, &st.shell)));
                // Docker keeps a `CMD` set earlier in the same stage.
                if let Some(cmd) = &st.cmd {
                    push(StepKind::Cmd(cmd.clone()));
                }
            }
            Inst::Healthcheck(h) => {
                let decl = match h {
                    Healthcheck::None => HealthcheckDecl {
                        test: vec![self.s(line, "NONE")],
                        interval: None,
                        timeout: None,
                        start_period: None,
                        start_interval: None,
                        retries: None,
                    },
                    Healthcheck::Check {
                        test,
                        interval,
                        timeout,
                        start_period,
                        start_interval,
                        retries,
                    } => {
                        let dur = |d: &Option<std::time::Duration>| {
                            d.map(|d| self.s(line, &crate::units::format_duration(d)))
                        };
                        HealthcheckDecl {
                            test: self.strs(line, test),
                            interval: dur(interval),
                            timeout: dur(timeout),
                            start_period: dur(start_period),
                            start_interval: dur(start_interval),
                            retries: retries.map(|r| self.s(line, &r.to_string())),
                        }
                    }
                };
                push(StepKind::Healthcheck(decl));
            }
            Inst::Onbuild(_) => {
                let text = self
                    .instruction(line)
                    .map(|i| onbuild_text(&self.text[i.start..i.end]))
                    .unwrap_or_default();
                push(StepKind::Onbuild(self.s(line, &text)));
            }
            Inst::Run {
                command,
                flags,
                heredocs,
            } => {
                let run = self.run(line, command, flags, heredocs, index, st);
                push(StepKind::Run(run));
            }
            Inst::Copy(c) => {
                for kind in self.copy(line, c, false, index, st) {
                    push(kind);
                }
            }
            Inst::Add(c) => {
                for kind in self.copy(line, c, true, index, st) {
                    push(kind);
                }
            }
        }
    }

    fn run(
        &mut self,
        line: usize,
        command: &Command,
        flags: &[(String, String)],
        heredocs: &[Heredoc],
        index: usize,
        st: &StageState,
    ) -> RunDecl {
        let (exec, command) = match command {
            Command::Exec(args) => (true, self.strs(line, args)),
            Command::Shell(text) => {
                let script = match heredocs {
                    // `RUN <<EOF` alone: the heredoc is the script.
                    [h] if is_marker(text.trim(), &h.name) => {
                        if h.body.starts_with("#!") {
                            self.note(
                                line,
                                format!("the heredoc `{}` starts with `#!`; kiln runs it with the stage's shell", h.name),
                                "write the interpreter into the command: `RUN python3 <<EOF`",
                            );
                        }
                        if h.chomp {
                            h.body
                                .split_inclusive('\n')
                                .map(|l| l.trim_start_matches('\t'))
                                .collect()
                        } else {
                            h.body.clone()
                        }
                    }
                    // Otherwise heredocs go back after the command line: the
                    // shell reads them as the here-documents they are.
                    _ => {
                        let mut script = text.clone();
                        for h in heredocs {
                            script.push('\n');
                            script.push_str(&h.body);
                            script.push_str(&h.name);
                        }
                        script
                    }
                };
                (false, vec![self.s(line, &script)])
            }
        };
        let env: Vec<(String, String)> = st
            .args
            .iter()
            .filter(|(k, _)| !st.env.iter().any(|(n, _)| n == k))
            .cloned()
            .collect();
        let mut vars = st.env.clone();
        vars.extend(env.iter().cloned());
        let mut mounts = Vec::new();
        let (mut network, mut security) = (None, None);
        for (k, v) in flags {
            let escape = self.d.directives.escape;
            // With references to kept args as the spec writes it; the
            // import decides on the values.
            let v_ref = match self.expand_with(line, &vars, true, |sc| {
                super::shell::process_word(v, sc, escape)
            }) {
                Ok(v) => v,
                Err(e) => {
                    self.error(
                        line,
                        format!("cannot expand `--{k}={v}`: {e}"),
                        "in this flag",
                        "fix the variable reference",
                    );
                    continue;
                }
            };
            let v = self.value_of(&v_ref);
            match k.as_str() {
                "mount" => {
                    let kind = v
                        .split(',')
                        .find_map(|p| p.strip_prefix("type="))
                        .unwrap_or("bind");
                    if !["bind", "cache", "tmpfs", "secret", "ssh"].contains(&kind) {
                        self.error(
                            line,
                            format!("`--mount` has an unknown type `{kind}`"),
                            "in this mount",
                            "mount types are bind, cache, tmpfs, secret and ssh",
                        );
                        continue;
                    }
                    let resolved = self.mount_from(line, &v, index);
                    // Every option keeps its references but `from=`, a
                    // stage the import resolves.
                    let parts: Vec<&str> = resolved.split(',').collect();
                    let refs: Vec<&str> = v_ref.split(',').collect();
                    let mount = if parts.len() == refs.len() {
                        let mut kept = Vec::new();
                        for (p, r) in parts.iter().zip(&refs) {
                            if p.starts_with("from=") {
                                for name in super::scope::referenced(r) {
                                    self.note_baked(line, &name);
                                }
                                kept.push(p.to_string());
                            } else {
                                kept.push(r.to_string());
                            }
                        }
                        kept.join(",")
                    } else {
                        for name in super::scope::referenced(&v_ref) {
                            self.note_baked(line, &name);
                        }
                        resolved
                    };
                    mounts.push(self.s(line, &mount));
                }
                "network" => network = Some(self.s(line, &v_ref)),
                "security" => security = Some(self.s(line, &v_ref)),
                _ => {}
            }
        }
        // Docker's RUN reaches the network unless told not to; the spec says
        // so, since a spec's own `run` has none by default.
        if network.is_none() {
            if !self.noted_network {
                self.noted_network = true;
                self.note(
                    line,
                    "`RUN` keeps Docker's default network (`network=\"default\"`): its commands can reach the network, so they are not hermetic".to_string(),
                    "add `--network=none` to a `RUN` that needs no network (a spec's `run` has none unless it says `network=`)",
                );
            }
            network = Some(self.s(line, "default"));
        }
        RunDecl {
            command,
            exec,
            env: self.pairs(line, &env),
            mounts,
            network,
            security,
            timeout: None,
            sandbox: None,
            host_inputs: Vec::new(),
            test: None,
        }
    }

    fn copy(
        &mut self,
        line: usize,
        c: &CopyInst,
        add: bool,
        index: usize,
        st: &StageState,
    ) -> Vec<StepKind> {
        let what = if add { "ADD" } else { "COPY" };
        let exclude: Vec<Str> = c
            .flags
            .iter()
            .filter(|(k, _)| k == "exclude")
            .map(|(_, v)| self.s(line, v))
            .collect();
        let parents = copy_flag(c, "parents").is_some_and(|v| v != "false");
        if copy_flag(c, "link").is_some_and(|v| v != "false") {
            self.note(
                line,
                format!("`{what} --link` needs no flag in kiln"),
                "every kiln copy is already independent of the layers below it; the result is the same",
            );
        }
        let from = match copy_flag(c, "from") {
            None => None,
            Some(f) => match self.stage_ref(&f, index) {
                Some(i) => Some(self.s(line, &self.names[i])),
                None => {
                    let name = self.image_stage(line, &f);
                    Some(self.s(line, &name))
                }
            },
        };
        // As the spec writes them: with references to kept args.
        let (src_refs, dest_ref) = match &c.refs {
            Some((s, d)) => (s.clone(), d.clone()),
            None => (c.sources.clone(), c.dest.clone()),
        };
        let to = Dest {
            c,
            several: c.sources.len() > 1,
            dest_ref,
            chmod: copy_flag(c, "chmod").map(|v| self.s(line, &v)),
            chown: copy_flag(c, "chown").map(|v| self.s(line, &v)),
        };
        let mut out = Vec::new();
        let mut files = Vec::new();
        for (i, src) in c.sources.iter().enumerate() {
            let src_ref = src_refs.get(i).unwrap_or(src);
            // Heredoc sources become files written in place.
            if let Some(h) = c.heredocs.iter().find(|h| is_marker(src, &h.name)) {
                out.extend(self.copy_heredoc(line, h, &to, st));
            } else if add && (is_url(src) || is_git(src)) && src_ref != src {
                // A download chosen by an arg: the import decides what it
                // is from its value, so the arg is written as a value.
                for name in super::scope::referenced(src_ref) {
                    self.note_baked(line, &name);
                }
            } else if add && is_url(src) && !is_git(src) {
                out.extend(self.add_url(line, src, &to));
            } else if add && is_git(src) {
                out.extend(self.add_git(line, src, &to));
            } else {
                files.push(self.s(line, src_ref));
            }
        }
        if add
            && copy_flag(c, "checksum").is_some()
            && !c.sources.iter().any(|s| is_url(s) || is_git(s))
        {
            self.error(
                line,
                "`ADD --checksum` applies to remote sources only".into(),
                "local sources",
                "remove `--checksum`",
            );
        }
        if !files.is_empty() {
            if to.several && !c.dest.ends_with('/') {
                // Docker requires it too; report it the same way.
                self.error(
                    line,
                    format!("`{what}` with several sources needs a destination ending in `/`"),
                    "several sources",
                    &format!("write `{}/`", c.dest),
                );
                return out;
            }
            out.insert(
                0,
                StepKind::Copy {
                    sources: files,
                    dest: self.s(line, &to.dest_ref),
                    from,
                    context: None,
                    chmod: to.chmod,
                    chown: to.chown,
                    exclude,
                    parents,
                    unpack: add,
                },
            );
        }
        out
    }

    /// A heredoc source: a file written in place (its variables expanded
    /// unless its marker is quoted).
    fn copy_heredoc(
        &mut self,
        line: usize,
        h: &Heredoc,
        to: &Dest<'_>,
        st: &StageState,
    ) -> Option<StepKind> {
        let mut body = h.body.clone();
        if h.chomp {
            body = body
                .split_inclusive('\n')
                .map(|l| l.trim_start_matches('\t'))
                .collect();
        }
        if h.expand {
            let mut vars = st.env.clone();
            vars.extend(st.args.iter().cloned());
            let escape = self.d.directives.escape;
            match self.expand_with(line, &vars, true, |sc| expand_heredoc(&body, sc, escape)) {
                Ok(b) => body = b,
                Err(e) => {
                    self.error(
                        line,
                        format!("cannot expand the heredoc `{}`: {e}", h.name),
                        "in this heredoc",
                        "fix the variable reference",
                    );
                    return None;
                }
            }
        }
        let dest = if to.c.dest.ends_with('/') || to.several {
            format!("{}/{}", to.dest_ref.trim_end_matches('/'), h.name)
        } else {
            to.dest_ref.clone()
        };
        let step = StepKind::Write {
            path: self.s(line, &dest),
            content: self.s(line, &body),
            mode: to.chmod.clone(),
        };
        if let Some(owner) = &to.chown {
            self.note(
                line,
                format!("`--chown={}` is not applied to the heredoc file `{}`", owner.value, h.name),
                "kiln's `write` creates files owned by root; use numeric ownership in a later step if it matters",
            );
        }
        Some(step)
    }

    /// `ADD URL DEST`: a fetch, pinned by `--checksum` or by the lock file.
    fn add_url(&mut self, line: usize, src: &str, to: &Dest<'_>) -> Option<StepKind> {
        let checksum = match copy_flag(to.c, "checksum") {
            Some(_) if to.several => {
                self.error(
                    line,
                    "`ADD --checksum` pins one source; this `ADD` has several".into(),
                    "several sources",
                    "split it into one `ADD --checksum=… URL DEST` per URL",
                );
                return None;
            }
            Some(sum) => Some(self.s(line, &sum)),
            None => {
                self.note(
                    line,
                    format!("`ADD {src}` has no checksum: the first build pins what it fetches in the lock file, and later builds check against it"),
                    "pin it in the Dockerfile with `ADD --checksum=sha256:… URL DEST` to fix it for every checkout",
                );
                None
            }
        };
        Some(StepKind::Fetch {
            url: self.s(line, src),
            dest: self.s(line, &to.dest_ref),
            checksum,
            chmod: to.chmod.clone(),
            chown: to.chown.clone(),
        })
    }

    /// `ADD GIT-URL DEST`: a checkout, pinned by a commit in the source or
    /// by the lock file.
    fn add_git(&mut self, line: usize, src: &str, to: &Dest<'_>) -> Option<StepKind> {
        let (url, reference, subdir, keep) = git_source(src);
        if copy_flag(to.c, "checksum").is_some() {
            self.error(
                line,
                format!("`ADD --checksum` pins a download; `{src}` is a git source"),
                "a git source",
                "pin the commit in the source instead: `URL#COMMIT` (40 hex digits)",
            );
            return None;
        }
        let keep = keep || copy_flag(to.c, "keep-git-dir").is_some_and(|v| v != "false");
        if reference.as_ref().is_none_or(|r| !is_commit(r)) {
            self.note(
                line,
                format!("`ADD {src}` names a git ref: the first build pins its commit in the lock file, and later builds use that commit"),
                "`kiln lock --update URL` moves it; a commit in the source (`URL#COMMIT`) pins it for every checkout",
            );
        }
        Some(StepKind::Git {
            url: self.s(line, &url),
            dest: self.s(line, &to.dest_ref),
            reference: reference.map(|r| self.s(line, &r)),
            subdir: subdir.map(|d| self.s(line, &d)),
            keep_git_dir: keep,
            chmod: to.chmod.clone(),
            chown: to.chown.clone(),
        })
    }

    /// A `--mount` spec with its `from=` naming the stage by its spec name
    /// (Docker also accepts an index or an image).
    fn mount_from(&mut self, line: usize, spec: &str, index: usize) -> String {
        let mut parts: Vec<String> = spec.split(',').map(str::to_string).collect();
        for p in &mut parts {
            if let Some(f) = p.strip_prefix("from=") {
                let name = match self.stage_ref(f, index) {
                    Some(i) => self.names[i].clone(),
                    None => self.image_stage(line, f),
                };
                *p = format!("from={name}");
            }
        }
        parts.join(",")
    }

    /// A stage standing for an image that `COPY --from` names.
    fn image_stage(&mut self, line: usize, image: &str) -> String {
        if let Some((name, _, _)) = self.image_stages.iter().find(|(_, i, _)| i == image) {
            return name.clone();
        }
        let mut name = format!("image-{}", self.image_stages.len());
        while self.names.contains(&name) {
            name.push('_');
        }
        self.image_stages
            .push((name.clone(), image.to_string(), self.span(line)));
        name
    }
}

/// Whether `word` is the heredoc marker for `name` (`<<EOF`, `<<-"EOF"`).
fn is_marker(word: &str, name: &str) -> bool {
    word.trim_start_matches(|c: char| c.is_ascii_digit())
        .strip_prefix("<<")
        .map(|r| r.trim_start_matches('-').trim_matches(['\'', '"']))
        == Some(name)
}

fn is_url(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

fn is_git(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    l.starts_with("git@")
        || l.starts_with("git://")
        || l.starts_with("ssh://")
        || (is_url(&l) && (l.ends_with(".git") || l.contains(".git#") || l.contains(".git?")))
}

fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A git source as Docker writes it: `URL#REF:SUBDIR` (BuildKit's
/// fragment) or `URL?ref=REF&subdir=DIR&keep-git-dir=1` (its query form).
/// The URL, the ref, the subdirectory and keep-git-dir.
fn git_source(s: &str) -> (String, Option<String>, Option<String>, bool) {
    let (base, fragment) = match s.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (s, None),
    };
    let (mut url, query) = match base.split_once('?') {
        Some((u, q)) => (u.to_string(), Some(q)),
        None => (base.to_string(), None),
    };
    let (mut reference, mut subdir, mut keep) = (None, None, false);
    if let Some(f) = fragment.filter(|f| !f.is_empty()) {
        match f.split_once(':') {
            Some((r, d)) => {
                reference = (!r.is_empty()).then(|| r.to_string());
                subdir = (!d.is_empty()).then(|| d.to_string());
            }
            None => reference = Some(f.to_string()),
        }
    }
    let mut rest = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("ref" | "tag" | "branch" | "commit", v)) => reference = Some(v.to_string()),
            Some(("subdir", v)) => subdir = Some(v.to_string()),
            Some(("keep-git-dir", v)) => keep = matches!(v, "1" | "true"),
            _ => rest.push(pair),
        }
    }
    if !rest.is_empty() {
        url.push('?');
        url.push_str(&rest.join("&"));
    }
    (url, reference, subdir, keep)
}

/// `ONBUILD RUN x` → `RUN x`: the trigger as Docker records it.
fn onbuild_text(instruction: &str) -> String {
    let rest = instruction.trim_start();
    let rest = rest.get(7..).unwrap_or("");
    rest.trim().to_string()
}

/// A `COPY`/`ADD` flag's value (the last one given).
fn copy_flag(c: &CopyInst, name: &str) -> Option<String> {
    c.flags
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// Where a `COPY`/`ADD`'s sources go, and how.
struct Dest<'c> {
    c: &'c CopyInst,
    several: bool,
    /// The destination as the spec writes it.
    dest_ref: String,
    chmod: Option<Str>,
    chown: Option<Str>,
}

#[cfg(test)]
mod tests;
