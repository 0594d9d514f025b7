//! kiln's settings file: what a machine or a CI sets once instead of on
//! every command line (today the remote cache). KDL, read with the same
//! checks and diagnostics as a spec:
//!
//! ```kdl
//! remote-cache "grpc://cache.example:8980" instance="main" upload=#true timeout=10 {
//!     header "authorization" "$KILN_CACHE_TOKEN"
//! }
//! ```

use crate::diag::{Code, Diagnostic, Diagnostics, SourceId, Sources, Spanned, did_you_mean};
use ::kdl::KdlDocument;
use std::path::Path;

use super::node::Node;

/// The nodes a settings file may hold.
const NODES: &[&str] = &["remote-cache", "cache-from", "cache-to"];

/// The remote cache as a settings file gives it. A value is `None` when
/// the file leaves it to the default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteConfig {
    pub url: Spanned<String>,
    pub instance: Option<String>,
    /// `NAME` and `VALUE` as written (a value `$VAR` names an
    /// environment variable, read when the settings are used).
    pub headers: Vec<(Spanned<String>, Spanned<String>)>,
    pub upload: Option<bool>,
    pub timeout: Option<Spanned<u64>>,
}

/// What a settings file says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub remote: Option<RemoteConfig>,
    /// `cache-from "type=registry,ref=…"`, as written.
    pub cache_from: Option<Spanned<String>>,
    /// `cache-to "type=registry,ref=…"`, as written.
    pub cache_to: Option<Spanned<String>>,
}

/// Read the settings file at `path` (added to `sources`, so errors show
/// its text); every problem in it is reported.
pub fn load(path: &Path, sources: &Sources) -> Result<Config, Diagnostics> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![Diagnostic::io("cannot read the settings file", path, &e)])?;
    let id = sources.add(path.display().to_string(), path.to_path_buf(), text);
    parse(id, sources)
}

/// Read settings from `text`, named `name` in diagnostics.
pub fn parse_str(name: &str, text: &str, sources: &Sources) -> Result<Config, Diagnostics> {
    let id = sources.add(name.into(), name.into(), text.into());
    parse(id, sources)
}

fn parse(id: SourceId, sources: &Sources) -> Result<Config, Diagnostics> {
    let Some(file) = sources.get(id) else {
        return Err(vec![Diagnostic::internal("a settings file went missing")]);
    };
    let doc =
        KdlDocument::parse_v2(&file.text).map_err(|e| super::syntax_errors(id, &e, sources))?;
    let mut d = Diagnostics::new();
    let mut config = Config::default();
    for node in doc.nodes() {
        let n = Node::new(node, id, sources);
        match node.name().value() {
            "remote-cache" => {
                if config.remote.is_some() {
                    d.push(
                        Diagnostic::new(Code::CONFIG, "`remote-cache` is set twice")
                            .with_label(n.name_span(), "the second one")
                            .with_help("keep one `remote-cache` node"),
                    );
                }
                config.remote = remote(&n, &mut d);
            }
            name @ ("cache-from" | "cache-to") => {
                let usage = format!("{name} \"type=registry,ref=REG/NAME:TAG\"");
                n.arity(1, Some(1), &usage, &mut d);
                n.no_props(&mut d);
                n.no_children(&mut d);
                // Read as `--cache-from`/`--cache-to` are, where they are used.
                let value = n.str_arg(0, &mut d);
                let slot = if name == "cache-from" {
                    &mut config.cache_from
                } else {
                    &mut config.cache_to
                };
                if slot.is_some() {
                    d.push(
                        Diagnostic::new(Code::CONFIG, format!("`{name}` is set twice"))
                            .with_label(n.name_span(), "the second one"),
                    );
                }
                *slot = value;
            }
            other => {
                let mut diag = Diagnostic::new(Code::CONFIG, format!("unknown setting `{other}`"))
                    .with_label(n.name_span(), "not a setting");
                diag = match did_you_mean(other, NODES.iter().copied()) {
                    Some(s) => diag.with_help(format!("did you mean `{s}`?")),
                    None => diag.with_help(format!("settings are: {}", NODES.join(", "))),
                };
                d.push(diag);
            }
        }
    }
    if d.is_empty() { Ok(config) } else { Err(d) }
}

const USAGE: &str = "remote-cache \"grpc://HOST:PORT\" instance=\"NAME\" upload=#true timeout=10 { header \"NAME\" \"VALUE\" }";

fn remote(n: &Node, d: &mut Diagnostics) -> Option<RemoteConfig> {
    n.arity(1, Some(1), USAGE, d);
    n.allow_props(&["instance", "upload", "timeout"], d);
    let url = n.str_arg(0, d)?;
    let timeout = n
        .int_prop("timeout", d)
        .and_then(|t| match u64::try_from(t.value) {
            Ok(s) if s > 0 => Some(Spanned::new(t.span, s)),
            _ => {
                d.push(
                    Diagnostic::new(
                        Code::CONFIG,
                        format!("`timeout={}` is not a number of seconds", t.value),
                    )
                    .with_label(t.span, "not a whole number of seconds above 0")
                    .with_help("write `timeout=10`"),
                );
                None
            }
        });
    let mut headers = Vec::new();
    for h in n.children(&["header"], d) {
        h.arity(2, Some(2), "header \"NAME\" \"VALUE\"", d);
        h.no_props(d);
        h.no_children(d);
        if let (Some(name), Some(value)) = (h.str_arg(0, d), h.str_arg(1, d)) {
            headers.push((name, value));
        }
    }
    Some(RemoteConfig {
        url,
        instance: n.str_prop("instance", d).map(|s| s.value),
        headers,
        upload: n.bool_prop("upload", d),
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> (Result<Config, Diagnostics>, Sources) {
        let sources = Sources::new();
        (parse_str("config.kdl", text, &sources), sources)
    }

    #[test]
    fn a_remote_cache_with_every_setting() {
        let (c, _) = read(
            "remote-cache \"grpc://cache:8980\" instance=\"main\" upload=#false timeout=5 {\n    header \"authorization\" \"$TOKEN\"\n    header \"x-team\" \"build\"\n}\n",
        );
        let r = c.unwrap().remote.unwrap();
        assert_eq!(r.url.value, "grpc://cache:8980");
        assert_eq!(r.instance.as_deref(), Some("main"));
        assert_eq!(r.upload, Some(false));
        assert_eq!(r.timeout.map(|t| t.value), Some(5));
        let names: Vec<(&str, &str)> = r
            .headers
            .iter()
            .map(|(n, v)| (n.value.as_str(), v.value.as_str()))
            .collect();
        assert_eq!(names, [("authorization", "$TOKEN"), ("x-team", "build")]);
    }

    #[test]
    fn mistakes_are_named_where_they_are() {
        let (c, sources) = read(
            "remote-cahce \"grpc://a:1\"\nremote-cache \"grpc://a:1\" timeout=0 uplaod=#true {\n    header \"only-a-name\"\n}\n",
        );
        let d = c.unwrap_err();
        let text: Vec<String> = d
            .iter()
            .map(|d| crate::diag::render(d, &sources, crate::diag::RenderOptions::default()))
            .collect();
        let all = text.join("\n");
        assert!(all.contains("unknown setting `remote-cahce`"), "{all}");
        assert!(all.contains("did you mean `remote-cache`?"), "{all}");
        assert!(
            all.contains("`timeout=0` is not a number of seconds"),
            "{all}"
        );
        assert!(all.contains("uplaod"), "{all}");
        assert!(all.contains("config.kdl:3:"), "{all}");
        // An empty file sets nothing.
        assert_eq!(read("").0.unwrap(), Config::default());
    }

    #[test]
    fn a_file_that_is_not_kdl_says_where() {
        let (c, sources) = read("remote-cache \"grpc://a:1\n");
        let d = c.unwrap_err();
        let r = crate::diag::render(&d[0], &sources, crate::diag::RenderOptions::default());
        assert!(r.contains("config.kdl:1:"), "{r}");
    }
}
