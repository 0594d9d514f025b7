//! `kiln plugin`: pin modules in a spec, inspect a module, start a new plugin.

use super::commands::load;
use super::outln;
use super::{Failure, SpecArgs};
use crate::diag::Code;
use crate::diag::{Diagnostic, Sources};
use crate::ir::PluginSource;
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Fill in or update the blake3 pin of every plugin a spec declares
    Pin(SpecArgs),
    /// Show a module's imports, exports, size, digest and manifest
    Inspect(InspectArgs),
    /// Create a plugin crate that builds with `cargo build`
    New(NewArgs),
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The module (`.wasm`)
    pub path: PathBuf,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct NewArgs {
    /// The plugin's name (also the crate's and the directory's)
    pub name: String,
    /// Where to create it [default: ./NAME]
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub fn run(cmd: &PluginCommand, sources: &Sources) -> Result<(), Failure> {
    match cmd {
        PluginCommand::Pin(a) => pin(a, sources),
        PluginCommand::Inspect(a) => inspect(a),
        PluginCommand::New(a) => new(a),
    }
}

/// `kiln plugin pin`: write each module's blake3 into its declaration,
/// editing only the `blake3=` value (or adding it), so the rest of the file
/// keeps its formatting and comments.
fn pin(args: &SpecArgs, sources: &Sources) -> Result<(), Failure> {
    let (spec, graph, _) = load(args, sources)?;
    // Edits per file: (byte range, replacement).
    let mut edits: BTreeMap<crate::diag::SourceId, Vec<(usize, usize, String)>> = BTreeMap::new();
    let mut report = Vec::new();
    let mut errors = Vec::new();
    for decl in &spec.plugins {
        // A plugin a stage builds is pinned by that stage's result.
        let Some(p) = graph
            .plugins
            .iter()
            .find(|p| p.name == decl.name.value && p.from_stage().is_none())
        else {
            continue;
        };
        let bytes = match &p.source {
            PluginSource::Host(path) => match std::fs::read(path) {
                Ok(b) => b,
                Err(e) => {
                    errors.push(
                        Diagnostic::new(
                            Code::WASM_MODULE,
                            format!(
                                "cannot read the module of plugin `{}` ({}): {e}",
                                p.name,
                                path.display()
                            ),
                        )
                        .with_label(
                            decl.path.as_ref().map_or(decl.span, |p| p.span),
                            "this path",
                        )
                        .with_help("build the plugin first; paths are relative to the spec file"),
                    );
                    continue;
                }
            },
            // A pinned download is checked against its pin by every build
            // that fetches it; an unpinned one is downloaded here once to
            // learn its digest.
            PluginSource::Url(_) if decl.blake3.is_some() => {
                report.push(format!(
                    "{}: already pinned (a build checks the download against it)",
                    p.name
                ));
                continue;
            }
            PluginSource::Url(url) => {
                let span = decl.url.as_ref().map_or(decl.span, |u| u.span);
                match crate::exec::steps::download::fetch(url, None, span) {
                    Ok(b) => {
                        // Kept in the store the build reads (its pin is
                        // its blake3), so the build does not download it
                        // again.
                        let state_dir = crate::pipeline::load::state_dir(
                            &std::env::var_os("KILN_STATE_DIR").map(PathBuf::from),
                            &args.input()?.spec_path(),
                        );
                        if let Ok(store) =
                            crate::store::Store::open(&state_dir, crate::store::Access::Shared)
                        {
                            use crate::store::ContentStore;
                            let _ = store.put_blob(&b);
                        }
                        b
                    }
                    Err(d) => {
                        errors.push(d);
                        continue;
                    }
                }
            }
            PluginSource::Stage { .. } => continue,
        };
        let hex = blake3::hash(&bytes).to_hex().to_string();
        let file = decl.span.source;
        match &decl.blake3 {
            Some(old) if old.value == hex => report.push(format!("{}: already pinned", p.name)),
            Some(old) => {
                edits.entry(file).or_default().push((
                    old.span.start as usize,
                    old.span.end as usize,
                    format!("\"{hex}\""),
                ));
                report.push(format!("{}: pin updated {} -> {hex}", p.name, old.value));
            }
            None => {
                let end = decl.span.end as usize;
                edits
                    .entry(file)
                    .or_default()
                    .push((end, end, format!(" blake3=\"{hex}\"")));
                report.push(format!("{}: pinned {hex}", p.name));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors.into());
    }
    for (id, mut list) in edits {
        let Some(file) = sources.get(id) else {
            continue;
        };
        let mut text = file.text.to_string();
        list.sort_by_key(|e| std::cmp::Reverse(e.0));
        for (start, end, with) in list {
            // A string value's span covers its quotes.
            let (start, end) = quoted_range(&text, start, end);
            text.replace_range(start..end, &with);
        }
        let tmp = file.path.with_extension("kdl.pin-tmp");
        std::fs::write(&tmp, &text)
            .and_then(|_| std::fs::rename(&tmp, &file.path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Diagnostic::io("cannot write the spec", &file.path, &e)
            })?;
    }
    for line in report {
        outln!("{line}");
    }
    if spec.plugins.is_empty() {
        outln!("the spec declares no plugins");
    }
    Ok(())
}

/// Widen a value span to its surrounding quotes when it does not cover them.
fn quoted_range(text: &str, start: usize, end: usize) -> (usize, usize) {
    if start == end {
        return (start, end);
    }
    let covers = text.get(start..start + 1) == Some("\"");
    if covers {
        (start, end)
    } else if start > 0 && text.get(start - 1..start) == Some("\"") {
        (start - 1, (end + 1).min(text.len()))
    } else {
        (start, end)
    }
}

/// What `kiln plugin inspect` finds in a module.
#[derive(serde::Serialize)]
struct Inspection {
    path: String,
    size: u64,
    blake3: String,
    kind: &'static str,
    imports: Vec<String>,
    exports: Vec<String>,
    manifest: Vec<(String, String)>,
    custom_sections: Vec<String>,
}

fn inspect(args: &InspectArgs) -> Result<(), Failure> {
    let bytes = std::fs::read(&args.path)
        .map_err(|e| Diagnostic::io("cannot read the module", &args.path, &e))?;
    let bad = |msg: String| -> Failure {
        Diagnostic::new(
            Code::WASM_MODULE,
            format!(
                "`{}` is not a WebAssembly module: {msg}",
                args.path.display()
            ),
        )
        .with_help("pass a `.wasm` file built for wasm32-wasip1")
        .into()
    };
    let mut out = Inspection {
        path: args.path.display().to_string(),
        size: bytes.len() as u64,
        blake3: blake3::hash(&bytes).to_hex().to_string(),
        kind: if crate::plugin::is_component(&bytes) {
            "WASI preview 2 component"
        } else {
            "core module"
        },
        imports: Vec::new(),
        exports: Vec::new(),
        manifest: Vec::new(),
        custom_sections: Vec::new(),
    };
    for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
        let payload = payload.map_err(|e| bad(e.to_string()))?;
        match payload {
            wasmparser::Payload::ImportSection(s) => {
                for imp in s.into_imports() {
                    let imp = imp.map_err(|e| bad(e.to_string()))?;
                    out.imports.push(format!("{}::{}", imp.module, imp.name));
                }
            }
            wasmparser::Payload::ExportSection(s) => {
                for exp in s {
                    let exp = exp.map_err(|e| bad(e.to_string()))?;
                    out.exports
                        .push(format!("{} ({:?})", exp.name, exp.kind).to_lowercase());
                }
            }
            wasmparser::Payload::CustomSection(c) => {
                out.custom_sections.push(c.name().to_string());
                if c.name() == "kiln-plugin" {
                    for line in String::from_utf8_lossy(c.data()).lines() {
                        if let Some((k, v)) = line.split_once('=') {
                            out.manifest.push((k.to_string(), v.to_string()));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(());
    }
    outln!("{}", out.path);
    outln!("  kind     {}", out.kind);
    outln!("  size     {} bytes", out.size);
    outln!("  blake3   {}", out.blake3);
    if out.manifest.is_empty() {
        outln!("  manifest none (the SDK's `manifest!` writes one)");
    } else {
        outln!("  manifest");
        for (k, v) in &out.manifest {
            outln!("    {k:<12} {v}");
        }
    }
    outln!("  imports ({})", out.imports.len());
    for i in &out.imports {
        outln!("    {i}");
    }
    outln!("  exports ({})", out.exports.len());
    for e in &out.exports {
        outln!("    {e}");
    }
    if !out.custom_sections.is_empty() {
        outln!("  custom sections: {}", out.custom_sections.join(", "));
    }
    Ok(())
}

/// The SDK, vendored into every new plugin so it builds anywhere, offline.
const SDK_LIB: &str = include_str!("../../plugins/sdk/src/lib.rs");
const SDK_TREE: &str = include_str!("../../plugins/sdk/src/tree.rs");
const SDK_TOML: &str = "[package]
name = \"kiln-plugin-sdk\"
edition = \"2024\"
version = \"0.1.0\"
publish = false
";

fn new(args: &NewArgs) -> Result<(), Failure> {
    let name = &args.name;
    let ok = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        return Err(
            Diagnostic::new(Code::PLUGIN_NAME, format!("`{name}` is not a plugin name")).into(),
        );
    }
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        return Err(Diagnostic::new(
            Code::PLUGIN_EXISTS,
            format!("`{}` already exists", dir.display()),
        )
        .into());
    }
    let files: Vec<(PathBuf, String)> = vec![
        (
            "Cargo.toml".into(),
            format!(
                "[package]\nname = \"{name}\"\nedition = \"2024\"\nversion = \"0.1.0\"\npublish = false\n\n\
                 [dependencies]\nkiln-plugin-sdk = {{ path = \"sdk\" }}\n\n\
                 # Its own workspace: it builds for wasm32-wasip1, not the host.\n[workspace]\n\n\
                 [profile.release]\nopt-level = \"s\"\nlto = true\ncodegen-units = 1\npanic = \"abort\"\nstrip = \"debuginfo\"\n"
            ),
        ),
        (
            ".cargo/config.toml".into(),
            "[build]\ntarget = \"wasm32-wasip1\"\n".into(),
        ),
        (".gitignore".into(), "/target/\n".into()),
        ("src/main.rs".into(), main_rs(name)),
        ("sdk/Cargo.toml".into(), SDK_TOML.into()),
        ("sdk/src/lib.rs".into(), SDK_LIB.into()),
        ("sdk/src/tree.rs".into(), SDK_TREE.into()),
        (
            "kiln.kdl".into(),
            format!(
                "// Try the plugin: `cargo build --release`, then `kiln plugin pin` and `kiln build`.\n\
                 kiln 1\n\n\
                 plugin {name} path=\"target/wasm32-wasip1/release/{name}.wasm\"\n\n\
                 stage demo {{\n    wasm {name} \"--greeting\" \"hello\" \"/out/greeting.txt\"\n}}\n\n\
                 export {{\n    demo to=\"out\"\n}}\n"
            ),
        ),
        (
            "README.md".into(),
            format!(
                "# {name}\n\nA kiln plugin.\n\n```sh\nrustup target add wasm32-wasip1   # once\n\
                 cargo build --release              # target/wasm32-wasip1/release/{name}.wasm\n\
                 kiln plugin pin                    # pin the module in kiln.kdl\n\
                 kiln build                         # run it: out/out/greeting.txt\n\
                 kiln plugin inspect target/wasm32-wasip1/release/{name}.wasm\n```\n\n\
                 `sdk/` is kiln's plugin SDK; the plugin ABI is in kiln's `spec/plugins.md`.\n"
            ),
        ),
    ];
    for (rel, text) in files {
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Diagnostic::io("cannot create", parent, &e))?;
        }
        std::fs::write(&path, text).map_err(|e| Diagnostic::io("cannot write", &path, &e))?;
    }
    outln!(
        "created {} (a plugin crate; see its README.md)",
        dir.display()
    );
    Ok(())
}

fn main_rs(name: &str) -> String {
    format!(
        r#"//! `{name}`: a kiln plugin.
//!
//! ```text
//! {name} [--greeting WORD] OUT
//! ```

use kiln_plugin_sdk::{{Args, Result, manifest, run, tree}};

manifest! {{
    name: "{name}",
    description: "Write a greeting to a file",
    options: ["--greeting WORD: the word to write (default hello)"],
}}

fn main() {{
    run(|| -> Result<()> {{
        let mut args = Args::from_env(&["--greeting"], &[])?;
        let greeting = args.value("--greeting").unwrap_or_else(|| "hello".into());
        let out = args.positional("OUT")?;
        args.finish()?;
        tree::write(&out, format!("{{greeting}} from {name}\n"))
    }})
}}
"#
    )
}
