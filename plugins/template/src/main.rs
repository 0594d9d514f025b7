//! `template`: fill `{{ NAME }}` placeholders in a text file.
//!
//! ```text
//! template [--set NAME=VALUE]... [--vars FILE] [--keep-unknown] IN OUT
//! ```
//!
//! Values come from `--set` (repeatable) and from `--vars FILE` (lines of
//! `NAME=VALUE`; `#` starts a comment); `--set` wins. A placeholder with no
//! value is an error naming its line and column, unless `--keep-unknown`
//! leaves it as written. `{{{{` writes a literal `{{`.

use kiln_plugin_sdk::{Args, Error, Result, manifest, run, tree};
use std::collections::BTreeMap;

manifest! {
    name: "template",
    description: "Fill {{ NAME }} placeholders in a text file",
    options: [
        "--set NAME=VALUE: a value (repeatable)",
        "--vars FILE: values from NAME=VALUE lines",
        "--keep-unknown: leave placeholders without a value as written",
    ],
}

fn main() {
    run(|| {
        let mut args = Args::from_env(&["--set", "--vars"], &["--keep-unknown"])?;
        let mut vars = BTreeMap::new();
        if let Some(file) = args.value("--vars") {
            for (n, line) in tree::read_to_string(&file)?.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (k, v) = line
                    .split_once('=')
                    .ok_or_else(|| Error::new(format!("{file}:{}: expected NAME=VALUE", n + 1)))?;
                vars.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        for s in args.values("--set") {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| Error::usage(format!("--set {s}: expected NAME=VALUE")))?;
            vars.insert(k.to_string(), v.to_string());
        }
        let keep = args.flag("--keep-unknown");
        let input = args.positional("IN")?;
        let output = args.positional("OUT")?;
        args.finish()?;
        let text = tree::read_to_string(&input)?;
        let out = render(&text, &vars, keep).map_err(|e| e.context(&input))?;
        tree::write(&output, out)
    })
}

fn render(text: &str, vars: &BTreeMap<String, String>, keep: bool) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        if let Some(lit) = after.strip_prefix("{{") {
            out.push_str("{{");
            rest = lit;
            continue;
        }
        let (line, col) = position(text, text.len() - rest.len() + i);
        let end = after
            .find("}}")
            .ok_or_else(|| Error::new(format!("{line}:{col}: unclosed {{{{")))?;
        let name = after[..end].trim();
        match vars.get(name) {
            Some(v) => out.push_str(v),
            None if keep => out.push_str(&rest[i..i + 2 + end + 2]),
            None => {
                return Err(Error::new(format!(
                    "{line}:{col}: no value for {{{{ {name} }}}} (give it with --set {name}=VALUE)"
                )));
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// 1-based line and column of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_and_reports() {
        let vars: BTreeMap<String, String> = [("a".to_string(), "1".to_string())].into();
        assert_eq!(
            render("x {{ a }} {{a}} {{{{ y", &vars, false).unwrap(),
            "x 1 1 {{ y"
        );
        let e = render("ok\n  {{ b }}", &vars, false).unwrap_err();
        assert!(e.message.starts_with("2:3:"), "{}", e.message);
        assert_eq!(render("{{ b }}", &vars, true).unwrap(), "{{ b }}");
    }
}
