//! The Dockerfile line parser: text → instructions, as the reference
//! implementation's parser reads them (before any instruction semantics).
//!
//! Handles the byte-order mark, parser directives (`syntax`, `escape`,
//! `check`) at the top only, whole-line comments, line continuations
//! (comments and blank lines inside them skipped), leading `--flags`, the
//! per-instruction argument forms (JSON arrays with fallback, whitespace
//! splits, quote-aware `ARG`/`ENV`/`LABEL` words, the legacy `ENV k v`),
//! nested `ONBUILD` and heredocs on `RUN`/`COPY`/`ADD`. Every instruction
//! keeps its byte span and lines. [`Dockerfile::dump`] writes the
//! reference's AST dump format, which the conformance corpus compares.

use std::fmt::Write;

/// A parse error at a 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub message: String,
    pub line: usize,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

fn fail<T>(line: usize, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        message: message.into(),
        line,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    pub escape: char,
    pub syntax: Option<String>,
    pub check: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    pub name: String,
    pub body: String,
    /// Variables in the body are expanded (the name was not quoted).
    pub expand: bool,
    /// `<<-`: leading tabs are stripped.
    pub chomp: bool,
    pub fd: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    List(Vec<String>),
    /// `ONBUILD`'s trigger, parsed as an instruction of its own.
    Onbuild(Box<Instruction>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// As written (`FROM`, `from`, `From`).
    pub keyword: String,
    pub flags: Vec<String>,
    pub args: Args,
    /// Whether the arguments came from a JSON array.
    pub json: bool,
    /// 1-based first and last physical line.
    pub start_line: usize,
    pub end_line: usize,
    /// Byte range in the file.
    pub start: usize,
    pub end: usize,
    pub heredocs: Vec<Heredoc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub directives: Directives,
    pub instructions: Vec<Instruction>,
    /// Lines where an instruction's continuation held an empty line.
    pub empty_continuation_lines: Vec<usize>,
}

const MAX_LINE: usize = 65535;

struct Line<'a> {
    text: &'a str,
    start: usize,
    end: usize,
}

fn split_lines(text: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    for piece in text.split_inclusive('\n') {
        let end = start + piece.len();
        out.push(Line {
            text: piece.trim_end_matches(['\n', '\r']),
            start,
            end,
        });
        start = end;
    }
    out
}

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{b}' | '\u{c}' | '\r')
}

/// `# key = value` at the top of the file.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix('#')?.trim_start();
    let key_len = rest
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    let key = &rest[..key_len];
    if key.is_empty() || !key.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = rest[key_len..].trim_start().strip_prefix('=')?.trim();
    if value.is_empty() {
        return None;
    }
    Some((key.to_ascii_lowercase(), value.to_string()))
}

/// A continued line: ends with the escape character (then only blanks),
/// not itself escaped. Returns the line without them.
fn continued(line: &str, escape: char) -> Option<&str> {
    let t = line.trim_end_matches([' ', '\t']);
    let before = t.strip_suffix(escape)?;
    if before.is_empty() || !before.ends_with(escape) {
        Some(before)
    } else {
        None
    }
}

pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines = split_lines(text);
    let mut directives = Directives {
        escape: '\\',
        syntax: None,
        check: None,
    };
    let mut seen: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some((key, value)) = directive(lines[i].text) else {
            break;
        };
        if !matches!(key.as_str(), "syntax" | "escape" | "check") {
            break;
        }
        if seen.contains(&key) {
            return fail(
                i + 1,
                format!("only one {key} parser directive can be used"),
            );
        }
        match key.as_str() {
            "escape" => match value.as_str() {
                "\\" => directives.escape = '\\',
                "`" => directives.escape = '`',
                other => {
                    return fail(
                        i + 1,
                        format!("invalid escape token '{other}' does not match ` or \\"),
                    );
                }
            },
            "syntax" => directives.syntax = Some(value),
            _ => directives.check = Some(value),
        }
        seen.push(key);
        i += 1;
    }
    let escape = directives.escape;
    let mut instructions = Vec::new();
    let mut empty_continuation_lines = Vec::new();
    while i < lines.len() {
        let line = &lines[i];
        if line.text.len() > MAX_LINE {
            return fail(
                i + 1,
                format!("dockerfile line greater than max allowed size of {MAX_LINE}"),
            );
        }
        let first = line.text.trim_start();
        if first.is_empty() || first.starts_with('#') {
            i += 1;
            continue;
        }
        let start_line = i + 1;
        let start = line.start + (line.text.len() - first.len());
        let mut logical = String::new();
        let mut end_line = start_line;
        let mut end = line.end;
        match continued(first, escape) {
            None => logical.push_str(first),
            Some(head) => {
                logical.push_str(head);
                let mut had_empty = false;
                loop {
                    i += 1;
                    let Some(next) = lines.get(i) else { break };
                    if next.text.len() > MAX_LINE {
                        return fail(
                            i + 1,
                            format!("dockerfile line greater than max allowed size of {MAX_LINE}"),
                        );
                    }
                    end_line = i + 1;
                    end = next.end;
                    let t = next.text.trim_start();
                    if t.starts_with('#') {
                        continue;
                    }
                    if t.is_empty() {
                        had_empty = true;
                        continue;
                    }
                    match continued(next.text, escape) {
                        Some(part) => logical.push_str(part),
                        None => {
                            logical.push_str(next.text);
                            break;
                        }
                    }
                }
                if had_empty {
                    empty_continuation_lines.push(start_line);
                }
            }
        }
        i += 1;
        let mut inst = instruction(logical.trim(), escape, start_line)?;
        // Heredoc bodies follow the instruction's last line.
        let wanted = heredoc_names(&inst, escape, start_line)?;
        for (name, expand, chomp, fd) in wanted {
            let mut body = String::new();
            let mut found = false;
            while let Some(l) = lines.get(i) {
                i += 1;
                end_line = i;
                end = l.end;
                let candidate = if chomp {
                    l.text.trim_start_matches('\t')
                } else {
                    l.text
                };
                if candidate == name {
                    found = true;
                    break;
                }
                body.push_str(l.text);
                body.push('\n');
            }
            if !found {
                return fail(start_line, format!("unterminated heredoc {name}"));
            }
            inst.heredocs.push(Heredoc {
                name,
                body,
                expand,
                chomp,
                fd,
            });
        }
        inst.start_line = start_line;
        inst.end_line = end_line;
        inst.start = start;
        inst.end = end;
        instructions.push(inst);
    }
    if instructions.is_empty() {
        return fail(1, "file with no instructions");
    }
    Ok(Dockerfile {
        directives,
        instructions,
        empty_continuation_lines,
    })
}

/// Parse one logical line (already trimmed) into an instruction.
fn instruction(line: &str, escape: char, at: usize) -> Result<Instruction, ParseError> {
    let key_end = line.find(is_blank).unwrap_or(line.len());
    let keyword = line[..key_end].to_string();
    let rest = line[key_end..].trim_start_matches(is_blank);
    let (flags, text) = extract_flags(rest, escape, at)?;
    let text = text.trim_matches(is_blank);
    let lower = keyword.to_ascii_lowercase();
    let mut json = false;
    let args = match lower.as_str() {
        "from" | "expose" => Args::List(split_blank(text)),
        "add" | "copy" | "volume" => match json_array(text, at)? {
            Some(v) => {
                json = true;
                Args::List(v)
            }
            None => Args::List(split_blank(text)),
        },
        "run" | "cmd" | "entrypoint" | "shell" => match json_array(text, at)? {
            Some(v) => {
                json = true;
                Args::List(v)
            }
            None if text.is_empty() => Args::List(Vec::new()),
            None => Args::List(vec![text.to_string()]),
        },
        "healthcheck" => {
            if text.is_empty() {
                Args::List(Vec::new())
            } else {
                let end = text.find(is_blank).unwrap_or(text.len());
                let mut v = vec![text[..end].to_string()];
                let rest = text[end..].trim_matches(is_blank);
                match json_array(rest, at)? {
                    Some(more) => {
                        json = true;
                        v.extend(more);
                    }
                    None if rest.is_empty() => {}
                    None => v.push(rest.to_string()),
                }
                Args::List(v)
            }
        }
        "maintainer" | "user" | "workdir" | "stopsignal" => Args::List(if text.is_empty() {
            Vec::new()
        } else {
            vec![text.to_string()]
        }),
        "arg" => Args::List(quoted_words(text, escape)),
        "env" | "label" => Args::List(name_values(&lower, text, escape, at)?),
        "onbuild" => {
            if text.is_empty() {
                Args::List(Vec::new())
            } else {
                Args::Onbuild(Box::new(instruction(text, escape, at)?))
            }
        }
        _ => Args::List(vec![String::new()]),
    };
    Ok(Instruction {
        keyword,
        flags,
        args,
        json,
        start_line: at,
        end_line: at,
        start: 0,
        end: 0,
        heredocs: Vec::new(),
    })
}

fn split_blank(text: &str) -> Vec<String> {
    text.split(is_blank)
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// `[ "a", "b" ]` → its strings; `None` when the text is not a JSON array
/// (the caller falls back); an error when the array holds a non-string.
fn json_array(text: &str, at: usize) -> Result<Option<Vec<String>>, ParseError> {
    if !text.starts_with('[') {
        return Ok(None);
    }
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(text)
    else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            serde_json::Value::String(s) => out.push(s),
            other => {
                return fail(
                    at,
                    format!("JSON arrays may only hold strings, found `{other}`"),
                );
            }
        }
    }
    Ok(Some(out))
}

/// Leading `--flag[=value]` words, with quotes and escapes removed, and the
/// text after them. A bare `--` ends the flags.
fn extract_flags(text: &str, escape: char, at: usize) -> Result<(Vec<String>, &str), ParseError> {
    let mut flags = Vec::new();
    let mut rest = text;
    loop {
        let trimmed = rest.trim_start_matches(is_blank);
        if !trimmed.starts_with("--") {
            return Ok((flags, trimmed));
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut chars = trimmed.char_indices().peekable();
        let mut end = trimmed.len();
        while let Some((idx, c)) = chars.next() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) if c == escape && quote == Some('"') => {
                    if let Some((_, n)) = chars.next() {
                        word.push(n);
                    }
                }
                Some(_) => word.push(c),
                None if is_blank(c) => {
                    end = idx;
                    break;
                }
                None if c == '"' || c == '\'' => quote = Some(c),
                None if c == escape => {
                    if let Some((_, n)) = chars.next() {
                        word.push(n);
                    }
                }
                None => word.push(c),
            }
        }
        if quote.is_some() {
            return fail(at, "unterminated quote in a flag");
        }
        rest = &trimmed[end..];
        if word == "--" {
            return Ok((flags, rest.trim_start_matches(is_blank)));
        }
        flags.push(word);
    }
}

/// Words separated by unquoted blanks; quotes and escapes stay in the text.
fn quoted_words(text: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                word.push(c);
                if c == q {
                    quote = None;
                } else if c == escape
                    && q == '"'
                    && let Some(n) = chars.next()
                {
                    word.push(n);
                }
            }
            None => {
                if is_blank(c) {
                    if in_word {
                        words.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                    continue;
                }
                in_word = true;
                if c == escape {
                    // A lone escape at the very end is dropped.
                    if let Some(n) = chars.next() {
                        word.push(c);
                        word.push(n);
                    }
                    continue;
                }
                if c == '"' || c == '\'' {
                    quote = Some(c);
                }
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// `ENV`/`LABEL` arguments: `name value ""` (legacy) or `name value "="` triples.
fn name_values(
    keyword: &str,
    text: &str,
    escape: char,
    at: usize,
) -> Result<Vec<String>, ParseError> {
    let words = quoted_words(text, escape);
    let Some(first) = words.first() else {
        return Ok(Vec::new());
    };
    if !first.contains('=') {
        let end = text.find(is_blank).unwrap_or(text.len());
        let value = text[end..].trim_start_matches(is_blank);
        if value.is_empty() {
            return fail(
                at,
                format!("{} must have two arguments", keyword.to_ascii_uppercase()),
            );
        }
        return Ok(vec![
            text[..end].to_string(),
            value.to_string(),
            String::new(),
        ]);
    }
    let mut out = Vec::new();
    for w in &words {
        let Some((k, v)) = w.split_once('=') else {
            return fail(
                at,
                format!("syntax error - can't find = in \"{w}\". Must be of the form: name=value"),
            );
        };
        out.extend([k.to_string(), v.to_string(), "=".to_string()]);
    }
    Ok(out)
}

/// A heredoc an instruction opens: `(name, expand, chomp, fd)`.
type Opened = (String, bool, bool, Option<u32>);

/// Heredocs an instruction opens.
fn heredoc_names(inst: &Instruction, escape: char, at: usize) -> Result<Vec<Opened>, ParseError> {
    let target = match &inst.args {
        Args::Onbuild(inner) => inner,
        Args::List(_) => inst,
    };
    let kw = target.keyword.to_ascii_lowercase();
    if !matches!(kw.as_str(), "run" | "copy" | "add") || target.json {
        return Ok(Vec::new());
    }
    let Args::List(args) = &target.args else {
        return Ok(Vec::new());
    };
    let words: Vec<String> = match kw.as_str() {
        "run" => args.iter().flat_map(|a| quoted_words(a, escape)).collect(),
        _ => args.clone(),
    };
    let mut out = Vec::new();
    let mut k = 0;
    while k < words.len() {
        let w = &words[k];
        let digits = w.chars().take_while(char::is_ascii_digit).count();
        if let Some(rest) = w[digits..].strip_prefix("<<") {
            let (chomp, rest) = match rest.strip_prefix('-') {
                Some(r) => (true, r),
                None => (false, rest),
            };
            let raw = if rest.is_empty() {
                k += 1;
                match words.get(k) {
                    Some(n) => n.clone(),
                    None => return fail(at, "a heredoc needs a name after `<<`"),
                }
            } else {
                rest.to_string()
            };
            let mut name = String::new();
            let mut quote: Option<char> = None;
            let mut quoted = false;
            for c in raw.chars() {
                match quote {
                    Some(q) if c == q => quote = None,
                    Some(_) => name.push(c),
                    None if c == '\'' || c == '"' => {
                        quote = Some(c);
                        quoted = true;
                    }
                    None => name.push(c),
                }
            }
            if quote.is_some() {
                return fail(at, format!("unbalanced quote in heredoc name `{raw}`"));
            }
            if !name.is_empty() {
                let fd = if digits > 0 {
                    w[..digits].parse().ok()
                } else {
                    None
                };
                out.push((name, !quoted, chomp, fd));
            }
        }
        k += 1;
    }
    Ok(out)
}

/// Go's `strconv.Quote`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// Go's `unicode.IsPrint`, closely enough: graphic characters and the ASCII
/// space, but no other spaces, controls or format characters.
fn is_go_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    let u = c as u32;
    let format = matches!(u, 0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x180e | 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2064 | 0x2066..=0x206f | 0xfeff | 0xfff9..=0xfffb);
    let private = matches!(u, 0xe000..=0xf8ff | 0xf0000..=0x10ffff);
    !format && !private && !(0xd800..=0xdfff).contains(&u)
}

impl Instruction {
    /// The reference AST dump of this instruction (without its parentheses).
    pub fn dump(&self) -> String {
        let mut out = self.keyword.to_ascii_lowercase();
        if !self.flags.is_empty() {
            out.push_str(" [");
            out.push_str(
                &self
                    .flags
                    .iter()
                    .map(|f| go_quote(f))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
            out.push(']');
        }
        match &self.args {
            Args::List(v) => {
                for a in v {
                    out.push(' ');
                    out.push_str(&go_quote(a));
                }
            }
            Args::Onbuild(inner) => {
                out.push_str(" (");
                out.push_str(&inner.dump());
                out.push(')');
            }
        }
        out
    }
}

impl Dockerfile {
    /// The reference AST dump: one `(instruction)` line each.
    pub fn dump(&self) -> String {
        self.instructions
            .iter()
            .map(|i| format!("({})\n", i.dump()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(text: &str, expected: &str) {
        assert_eq!(
            parse(text).map(|d| d.dump()).as_deref(),
            Ok(expected),
            "{text:?}"
        );
    }

    #[test]
    fn instructions_and_continuations() {
        check(
            "FROM a\nRUN echo \\\n  hi\n",
            "(from \"a\")\n(run \"echo   hi\")\n",
        );
        check(
            "# escape=`\nFROM a\nRUN dir `\n c:\\\n",
            "(from \"a\")\n(run \"dir  c:\\\\\")\n",
        );
        check(
            "from a\nrun x \\\n# comment\n\n y\n",
            "(from \"a\")\n(run \"x  y\")\n",
        );
        check(
            "COPY --from=b -- a c\n",
            "(copy [\"--from=b\"] \"a\" \"c\")\n",
        );
        check(
            "ONBUILD RUN [\"a\", \"b\"]\n",
            "(onbuild (run \"a\" \"b\"))\n",
        );
        check("FOO bar baz\n", "(foo \"\")\n");
    }

    #[test]
    fn heredocs_are_read_and_left_out_of_the_dump() {
        let d =
            parse("FROM a\nRUN <<EOF cat <<-'END'\nhello $X\nEOF\n\tbye\n\tEND\nCMD x\n").unwrap();
        assert_eq!(
            d.dump(),
            "(from \"a\")\n(run \"<<EOF cat <<-'END'\")\n(cmd \"x\")\n"
        );
        let hd = &d.instructions[1].heredocs;
        assert_eq!(hd.len(), 2);
        assert_eq!(
            (hd[0].name.as_str(), hd[0].body.as_str(), hd[0].expand),
            ("EOF", "hello $X\n", true)
        );
        assert_eq!(
            (hd[1].name.as_str(), hd[1].chomp, hd[1].expand),
            ("END", true, false)
        );
        assert_eq!(d.instructions[1].end_line, 6);
        assert!(parse("RUN <<EOF\nnever ends\n").is_err());
        assert!(parse("RUN <<'EOF\nx\nEOF\n").is_err());
        // Quoted, or in a JSON form: not a heredoc.
        assert_eq!(
            parse("RUN echo '<<EOF'\n").unwrap().instructions[0]
                .heredocs
                .len(),
            0
        );
        assert_eq!(
            parse("USER <<X\n").unwrap().instructions[0].heredocs.len(),
            0
        );
    }

    #[test]
    fn directives_only_at_the_top() {
        assert_eq!(
            parse("# ESCAPE=`\nFROM a\n").unwrap().directives.escape,
            '`'
        );
        assert_eq!(
            parse("# hello\n# escape=`\nFROM a\n")
                .unwrap()
                .directives
                .escape,
            '\\'
        );
        assert!(parse("# escape=x\nFROM a\n").is_err());
        assert!(parse("# syntax=a\n# syntax=b\nFROM a\n").is_err());
    }

    #[test]
    fn go_quoting() {
        assert_eq!(
            go_quote("a\"b\\c\n\u{0}♥\u{a0}"),
            "\"a\\\"b\\\\c\\n\\x00♥\\u00a0\""
        );
    }
}
