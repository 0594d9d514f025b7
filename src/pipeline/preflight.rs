//! What `kiln check` can tell, without building, that a build would
//! refuse: a context that is not a directory, a plugin module that cannot
//! be read or does not match its pin, a local base image that is not
//! there, and `run` steps this machine cannot run (no bubblewrap; a user
//! other than root when kiln is not root). Export destinations a build
//! would not write are refused by [`super::plan`] itself. Nothing is
//! fetched, and nothing runs.

use crate::diag::Code;
use crate::diag::Diagnostic;
use crate::ir::{Base, Graph, Meta, Op, PluginSource, Read};

/// Every refusal found, located.
pub fn check(graph: &Graph) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    contexts(graph, &mut out);
    plugins(graph, &mut out);
    images(graph, &mut out);
    runs(graph, &mut out);
    out
}

/// Whether some step reads what `want` accepts.
fn reads_any(graph: &Graph, want: impl Fn(Read<'_>) -> bool) -> bool {
    let mut found = false;
    for step in graph.stages.iter().flat_map(|s| &s.steps) {
        step.op.reads(&mut |r| found |= want(r));
    }
    found
}

fn contexts(graph: &Graph, out: &mut Vec<Diagnostic>) {
    for c in &graph.contexts {
        // Only contexts some step reads (a copy, or a mount) matter to a
        // build.
        let used = reads_any(graph, |r| r == Read::Context(c.id));
        if !used || c.path.is_dir() {
            continue;
        }
        let mut d = Diagnostic::new(
            Code::CONTEXT_MISSING,
            format!("the context `{}` is not a directory", c.path.display()),
        )
        .with_help("point `path=` at an existing directory (relative to the spec file)");
        if let Some(span) = c.span {
            d = d.with_label(span, "declared here");
        }
        out.push(d);
    }
}

fn plugins(graph: &Graph, out: &mut Vec<Diagnostic>) {
    for p in &graph.plugins {
        let used = reads_any(graph, |r| r == Read::Plugin(p.id));
        if !used {
            continue;
        }
        let path = match &p.source {
            PluginSource::Host(path) => path,
            // A download a build would refuse: not pinned (nothing is
            // fetched here).
            PluginSource::Url(url) => {
                if p.blake3.is_none() {
                    out.push(
                        Diagnostic::new(
                            Code::WASM_UNPINNED,
                            format!("plugin `{}` downloads `{url}`, which is not pinned", p.name),
                        )
                        .with_label(p.span, "declared here")
                        .with_help("run `kiln plugin pin`: it downloads the module once and writes its blake3"),
                    );
                }
                continue;
            }
            // (A plugin a stage builds is not there before the build.)
            PluginSource::Stage { .. } => continue,
        };
        match std::fs::read(path) {
            Err(e) => out.push(
                Diagnostic::new(
                    Code::WASM_MODULE,
                    format!(
                        "cannot read the module of plugin `{}` (`{}`): {e}",
                        p.name,
                        path.display()
                    ),
                )
                .with_label(p.span, "declared here")
                .with_help("build the plugin, or fix its `path=` (relative to the spec file)"),
            ),
            Ok(bytes) => {
                if let Some(pin) = &p.blake3 {
                    let actual = blake3::hash(&bytes).to_hex().to_string();
                    if !pin.eq_ignore_ascii_case(&actual) {
                        out.push(
                            Diagnostic::new(
                                Code::WASM_PIN,
                                format!(
                                    "the module of plugin `{}` does not match its pin: pinned blake3 {pin}, the file has {actual}",
                                    p.name
                                ),
                            )
                            .with_label(p.span, "pinned here"),
                        );
                    }
                }
            }
        }
    }
}

fn images(graph: &Graph, out: &mut Vec<Diagnostic>) {
    use crate::image::reference::{ImageRef, parse};
    for s in &graph.stages {
        let Base::Image(i) = &s.base else { continue };
        let label = s.from_span.unwrap_or(s.span);
        let missing = match parse(&i.reference, &i.dir) {
            Err(e) => Some(e.to_string()),
            Ok(ImageRef::Registry(_)) => None,
            Ok(ImageRef::Layout { dir, .. }) => (!dir.join("index.json").is_file()).then(|| {
                format!(
                    "`{}` is not an OCI image layout (no index.json)",
                    dir.display()
                )
            }),
            Ok(ImageRef::OciArchive { file, .. } | ImageRef::DockerArchive { file, .. }) => {
                (!file.is_file()).then(|| format!("`{}` is not a file", file.display()))
            }
        };
        if let Some(why) = missing {
            out.push(
                Diagnostic::new(
                    Code::IMAGE_RESOLVE,
                    format!("cannot use the image `{}`: {why}", i.reference),
                )
                .with_label(label, "built on this image")
                .with_help(
                    "check the reference; a local image's path is relative to the spec file",
                ),
            );
        }
    }
}

fn runs(graph: &Graph, out: &mut Vec<Diagnostic>) {
    let root = rustix::process::geteuid().is_root();
    let mut bwrap: Option<Result<(), String>> = None;
    for s in &graph.stages {
        // The user a `user` step of this stage set (an image's own user
        // is not known without fetching it).
        let mut user: Option<&str> = None;
        for (i, st) in s.steps.iter().enumerate() {
            if let Op::Meta(Meta::User(u)) = &st.op {
                user = Some(u);
            } else if let Op::Run(_) = &st.op {
                {
                    let span = graph.source_map.step(s.id, i).span;
                    if let Err(why) = bwrap.get_or_insert_with(crate::sandbox::check_bwrap) {
                        out.push(
                            Diagnostic::new(
                                Code::RUN_SANDBOX,
                                format!("`run` steps cannot run here: {why}"),
                            )
                            .with_label(span, "this step")
                            .with_help("install Debian's `bubblewrap` (0.5 or later)"),
                        );
                        return;
                    }
                    let name = user.map(|u| u.split(':').next().unwrap_or(u));
                    if !root && name.is_some_and(|n| n != "root" && n != "0") {
                        out.push(
                            Diagnostic::new(
                                Code::RUN_USER_WITHOUT_ROOT,
                                format!(
                                    "running a command as user `{}` needs kiln to run as root",
                                    user.unwrap_or_default()
                                ),
                            )
                            .with_label(span, "this step"),
                        );
                    }
                }
            }
        }
    }
}
