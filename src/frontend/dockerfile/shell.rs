//! Dockerfile word expansion, as the reference implementation (BuildKit's
//! shell lexer) does it: quotes, the escape character, `$VAR`, `${VAR}`
//! and the modifiers `:-` `-` `:+` `+` `:?` `?`, prefix and suffix removal
//! (`#` `##` `%` `%%`) and substitution (`/` `//`), in one word or split
//! into words.
//!
//! Rules worth knowing:
//! - Single quotes take everything literally; double quotes allow `$` and
//!   let the escape character escape only `"`, `$` and itself.
//! - Outside quotes the escape character escapes anything; a trailing one
//!   is dropped.
//! - `$1`, `$@`, `$$` and the other positional and special parameters are
//!   never set, so they expand to nothing.
//! - When splitting into words, whitespace from an unquoted expansion
//!   splits words too; whitespace inside quotes never does.

use std::fmt;

/// Why a word could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellError {
    pub message: String,
}

impl fmt::Display for ShellError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ShellError {}

fn err<T>(message: impl Into<String>) -> Result<T, ShellError> {
    Err(ShellError {
        message: message.into(),
    })
}

/// Where variables come from: the value of a name, if it is set.
///
/// A value may hold references to build args that the spec keeps as
/// `arg`s (see [`REF_OPEN`]); an expansion copies them as they are, and a
/// modifier that the spec's `${…}` cannot write works on the value the
/// reference has at import ([`Env::resolve`]), which it reports
/// ([`Env::baked`]).
pub trait Env {
    fn get(&self, name: &str) -> Option<String>;
    /// A value with every reference replaced by its value at import
    /// (`None` for a reference to an arg that is unset).
    fn resolve(&self, value: Option<String>) -> Option<String> {
        value
    }
    /// Whether `value` is exactly a reference to the arg `name`.
    fn is_reference(&self, _name: &str, _value: &str) -> bool {
        false
    }
    /// The variable `name` was used by its value at import.
    fn baked(&self, _name: &str) {}
}

/// Start and end of a reference to a kept build arg inside an expanded
/// value: `REF_OPEN NAME REF_CLOSE`, or `REF_OPEN NAME:-WORD REF_CLOSE`
/// (`:+` likewise), written out as `${NAME…}`. Private-use characters, so
/// no Dockerfile text is mistaken for one (a Dockerfile holding them keeps
/// no args).
pub const REF_OPEN: char = '\u{E000}';
pub const REF_CLOSE: char = '\u{E001}';

/// `value` with its references replaced by what `args` gives them (an
/// unset arg as empty).
pub fn resolve_refs(value: &str, args: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find(REF_OPEN) {
        out.push_str(&rest[..i]);
        let body_start = i + REF_OPEN.len_utf8();
        let mut depth = 1;
        let mut end = rest.len();
        for (j, c) in rest[body_start..].char_indices() {
            match c {
                REF_OPEN => depth += 1,
                REF_CLOSE => {
                    depth -= 1;
                    if depth == 0 {
                        end = body_start + j;
                        break;
                    }
                }
                _ => {}
            }
        }
        let body = &rest[body_start..end];
        let (name, op, word) = match body.find(':') {
            Some(c) => (&body[..c], &body[c..c + 2], &body[c + 2..]),
            None => (body, "", ""),
        };
        let value = args(name).unwrap_or_default();
        match op {
            ":-" if value.is_empty() => out.push_str(&resolve_refs(word, args)),
            ":+" if !value.is_empty() => out.push_str(&resolve_refs(word, args)),
            ":+" => {}
            _ => out.push_str(&value),
        }
        rest = rest.get(end + REF_CLOSE.len_utf8()..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

/// `NAME=VALUE` pairs; a later pair of the same name wins.
impl Env for [(String, String)] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

impl Env for &[(String, String)] {
    fn get(&self, name: &str) -> Option<String> {
        Env::get(*self, name)
    }
}

impl Env for Vec<(String, String)> {
    fn get(&self, name: &str) -> Option<String> {
        Env::get(self.as_slice(), name)
    }
}

/// Expand `input` as one word: quotes removed, escapes applied, variables
/// expanded; whitespace stays as it is.
pub fn process_word(input: &str, env: &dyn Env, escape: char) -> Result<String, ShellError> {
    let mut lx = Lexer::new(input, env, escape);
    let (word, _) = lx.process_until(None)?;
    Ok(word)
}

/// Expand `input` and split it into words, as a shell would.
pub fn process_words(input: &str, env: &dyn Env, escape: char) -> Result<Vec<String>, ShellError> {
    let mut lx = Lexer::new(input, env, escape);
    let (_, words) = lx.process_until(None)?;
    Ok(words)
}

/// Expand variables in a heredoc body: quotes are kept as they are, and the
/// escape character only protects a `$`.
pub fn expand_heredoc(input: &str, env: &dyn Env, escape: char) -> Result<String, ShellError> {
    let mut lx = Lexer::new(input, env, escape);
    let mut out = String::new();
    while let Some(c) = lx.peek() {
        if c == '$' {
            out.push_str(&lx.dollar()?);
            continue;
        }
        lx.next();
        if c == escape && lx.peek() == Some('$') {
            lx.next();
            out.push('$');
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// The most that expanding variables may produce in one word (or heredoc).
pub const MAX_EXPANSION: usize = 4 << 20;

/// How deep `${…}` may nest (`${A:-${B:-…}}`), as in spec strings: far
/// past real use, short of exhausting the stack.
pub const MAX_NESTING: usize = 32;

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    env: &'a dyn Env,
    escape: char,
    /// Bytes produced by expansions so far.
    produced: usize,
    /// `${…}` being expanded around the current position.
    depth: usize,
}

/// Words being collected: unquoted whitespace ends a word.
#[derive(Default)]
struct Words {
    words: Vec<String>,
    word: String,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, c: char) {
        if c.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(c);
        }
    }

    fn add_raw_char(&mut self, c: char) {
        self.word.push(c);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        for c in s.chars() {
            self.add_char(c);
        }
    }

    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(self.word);
        }
        self.words
    }
}

impl<'a> Lexer<'a> {
    fn new(input: &str, env: &'a dyn Env, escape: char) -> Lexer<'a> {
        Lexer {
            chars: input.chars().collect(),
            pos: 0,
            env,
            escape,
            produced: 0,
            depth: 0,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Process up to `stop` (consumed) or the end. Returns the text and the
    /// words it splits into.
    fn process_until(&mut self, stop: Option<char>) -> Result<(String, Vec<String>), ShellError> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.next();
                return Ok((result, words.finish()));
            }
            match c {
                '\'' => {
                    let s = self.single_quoted()?;
                    words.add_raw_string(&s);
                    result.push_str(&s);
                }
                '"' => {
                    let s = self.double_quoted()?;
                    words.add_raw_string(&s);
                    result.push_str(&s);
                }
                '$' => {
                    let s = self.dollar()?;
                    words.add_string(&s);
                    result.push_str(&s);
                }
                _ => {
                    self.next();
                    if c == self.escape {
                        // The escape character escapes anything; a trailing one is dropped.
                        let Some(escaped) = self.next() else { break };
                        words.add_raw_char(escaped);
                        result.push(escaped);
                    } else {
                        words.add_char(c);
                        result.push(c);
                    }
                }
            }
        }
        if let Some(stop) = stop {
            return err(format!(
                "unexpected end of statement while looking for matching {stop}"
            ));
        }
        Ok((result, words.finish()))
    }

    fn single_quoted(&mut self) -> Result<String, ShellError> {
        self.next();
        let mut s = String::new();
        loop {
            match self.next() {
                None => {
                    return err(
                        "unexpected end of statement while looking for matching single-quote",
                    );
                }
                Some('\'') => return Ok(s),
                Some(c) => s.push(c),
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, ShellError> {
        self.next();
        let mut s = String::new();
        loop {
            match self.peek() {
                None => {
                    return err(
                        "unexpected end of statement while looking for matching double-quote",
                    );
                }
                Some('"') => {
                    self.next();
                    return Ok(s);
                }
                Some('$') => s.push_str(&self.dollar()?),
                Some(c) => {
                    self.next();
                    if c == self.escape {
                        match self.peek() {
                            // A trailing escape: the missing quote is reported next.
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.escape => {
                                self.next();
                                s.push(n);
                                continue;
                            }
                            _ => {}
                        }
                    }
                    s.push(c);
                }
            }
        }
    }

    /// A variable name: letters, digits and `_`; or a run of digits
    /// (positional); or one special parameter character.
    fn name(&mut self) -> String {
        let mut name = String::new();
        if let Some(c) = self.peek() {
            if c.is_ascii_digit() {
                while let Some(d) = self.peek().filter(|d| d.is_ascii_digit()) {
                    self.next();
                    name.push(d);
                }
                return name;
            }
            if "@*#?-$!0".contains(c) {
                self.next();
                name.push(c);
                return name;
            }
        }
        while let Some(c) = self.peek() {
            if !(c.is_alphanumeric() || c == '_') {
                break;
            }
            self.next();
            name.push(c);
        }
        name
    }

    fn lookup(&self, name: &str) -> Option<String> {
        // Positional and special parameters are never set.
        if name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || "@*#?-$!".contains(c))
        {
            return None;
        }
        self.env.get(name)
    }

    /// A pattern as text to match: its references by their values.
    fn concrete(&self, text: String) -> String {
        if text.contains(REF_OPEN) {
            self.env.resolve(Some(text)).unwrap_or_default()
        } else {
            text
        }
    }

    /// The word after a modifier, up to the closing `}`.
    fn word(&mut self) -> Result<String, ShellError> {
        let at_end = |lx: &Lexer| lx.pos >= lx.chars.len();
        match self.process_until(Some('}')) {
            Ok((w, _)) => Ok(w),
            Err(_) if at_end(self) => err("syntax error: missing '}'"),
            Err(e) => Err(e),
        }
    }

    /// Expand one `$…`, counting what expansions produce: a chain of
    /// variables that doubles at every step (`ARG B=$A$A`, `ARG C=$B$B`, …)
    /// is stopped at [`MAX_EXPANSION`] instead of exhausting memory.
    fn dollar(&mut self) -> Result<String, ShellError> {
        if self.depth >= MAX_NESTING {
            return err(format!("substitutions nested more than {MAX_NESTING} deep"));
        }
        self.depth += 1;
        let s = self.dollar_inner();
        self.depth -= 1;
        let s = s?;
        self.produced += s.len();
        if self.produced > MAX_EXPANSION {
            return err(format!(
                "variables here expand to more than {} bytes",
                MAX_EXPANSION
            ));
        }
        Ok(s)
    }

    fn dollar_inner(&mut self) -> Result<String, ShellError> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(self.lookup(&name).unwrap_or_default());
        }
        self.next();
        let name = self.name();
        let Some(op) = self.next() else {
            return err("syntax error: missing '}'");
        };
        if name.is_empty() {
            return err(format!(
                "bad substitution: empty or invalid name before `{op}`"
            ));
        }
        let value = self.lookup(&name);
        // A reference to a kept arg stays one where the spec can write the
        // same (`${NAME}`, `${NAME:-…}`, `${NAME:+…}`); elsewhere the value
        // at import is used.
        if op == ':' && matches!(self.peek(), Some('-' | '+')) {
            let reference = value
                .as_deref()
                .is_some_and(|v| self.env.is_reference(&name, v));
            if reference {
                let Some(sign) = self.next() else {
                    return err("syntax error: missing '}'");
                };
                let word = self.word()?;
                if !word.contains(['{', '}']) {
                    return Ok(format!("{REF_OPEN}{name}:{sign}{word}{REF_CLOSE}"));
                }
                self.env.baked(&name);
                let value = self.env.resolve(value).unwrap_or_default();
                let word = self.env.resolve(Some(word)).unwrap_or_default();
                return Ok(match (sign, value.is_empty()) {
                    ('-', true) => word,
                    ('-', false) => value,
                    (_, true) => String::new(),
                    (_, false) => word,
                });
            }
        }
        let value = match value {
            Some(v) if op != '}' && v.contains(REF_OPEN) => {
                self.env.baked(&name);
                self.env.resolve(Some(v))
            }
            other => other,
        };
        match op {
            '}' => Ok(value.unwrap_or_default()),
            '?' => {
                let word = self.word()?;
                match value {
                    Some(v) => Ok(v),
                    None => err(format!(
                        "{name}: {}",
                        if word.is_empty() {
                            "is not allowed to be unset"
                        } else {
                            &word
                        }
                    )),
                }
            }
            '-' => {
                let word = self.word()?;
                Ok(value.unwrap_or(word))
            }
            '+' => {
                let word = self.word()?;
                Ok(if value.is_some() { word } else { String::new() })
            }
            ':' => {
                let Some(op) = self.next() else {
                    return err("syntax error: missing '}'");
                };
                let set = value.as_deref().is_some_and(|v| !v.is_empty());
                match op {
                    '-' => {
                        let word = self.word()?;
                        Ok(if set { value.unwrap_or_default() } else { word })
                    }
                    '+' => {
                        let word = self.word()?;
                        Ok(if set { word } else { String::new() })
                    }
                    '?' => {
                        let word = self.word()?;
                        if set {
                            Ok(value.unwrap_or_default())
                        } else {
                            err(format!(
                                "{name}: {}",
                                if word.is_empty() {
                                    "is not allowed to be unset or empty"
                                } else {
                                    &word
                                }
                            ))
                        }
                    }
                    other => err(format!("unsupported modifier (:{other}) in substitution")),
                }
            }
            '#' | '%' => {
                let longest = self.peek() == Some(op);
                if longest {
                    self.next();
                }
                let pattern = self.word()?;
                let pattern = self.concrete(pattern);
                let v = value.unwrap_or_default();
                if op == '#' {
                    remove_prefix(&v, &pattern, longest)
                } else {
                    remove_suffix(&v, &pattern, longest)
                }
            }
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.next();
                }
                let pattern = self.pattern_until_slash()?;
                let pattern = self.concrete(pattern);
                let replacement = self.word()?;
                substitute(&value.unwrap_or_default(), &pattern, &replacement, all)
            }
            other => err(format!("unsupported modifier ({other}) in substitution")),
        }
    }

    /// The pattern of `${VAR/pattern/replacement}`: up to an unescaped `/`
    /// (or `}`, when there is no replacement).
    fn pattern_until_slash(&mut self) -> Result<String, ShellError> {
        let mut p = String::new();
        loop {
            match self.peek() {
                None => return err("syntax error: missing '}'"),
                Some('/') => {
                    self.next();
                    return Ok(p);
                }
                Some('}') => return Ok(p),
                Some(c) if c == self.escape => {
                    self.next();
                    if let Some(n) = self.next() {
                        p.push(self.escape);
                        p.push(n);
                    }
                }
                Some(_) => {
                    if let Some(c) = self.next() {
                        p.push(c);
                    }
                }
            }
        }
    }
}

/// One element of a shell pattern.
#[derive(Debug, PartialEq)]
enum Atom {
    /// `*`: any run of characters.
    Star,
    /// `?`: one character.
    Any,
    /// `[…]`: one character of a class (`!` or `^` first negates it).
    Class {
        negate: bool,
        items: Vec<(char, char)>,
    },
    /// Itself (also `\x`).
    Lit(char),
}

impl Atom {
    fn matches(&self, c: char) -> bool {
        match self {
            Atom::Star | Atom::Any => true,
            Atom::Class { negate, items } => {
                items.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negate
            }
            Atom::Lit(l) => *l == c,
        }
    }
}

/// A shell pattern (`*`, `?`, `[…]`, `\x`) as atoms.
fn atoms(pattern: &[char]) -> Vec<Atom> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            '*' => {
                // `**` is `*`.
                if out.last() != Some(&Atom::Star) {
                    out.push(Atom::Star);
                }
            }
            '?' => out.push(Atom::Any),
            '[' => {
                let close = pattern[i + 1..]
                    .iter()
                    .skip(1)
                    .position(|&c| c == ']')
                    .map(|j| i + 2 + j);
                let Some(close) = close else {
                    out.push(Atom::Lit('['));
                    i += 1;
                    continue;
                };
                let mut class = &pattern[i + 1..close];
                let negate = matches!(class.first(), Some('!') | Some('^'));
                if negate {
                    class = &class[1..];
                }
                let mut items = Vec::new();
                let mut j = 0;
                while j < class.len() {
                    if j + 2 < class.len() && class[j + 1] == '-' {
                        items.push((class[j], class[j + 2]));
                        j += 3;
                    } else {
                        items.push((class[j], class[j]));
                        j += 1;
                    }
                }
                out.push(Atom::Class { negate, items });
                i = close;
            }
            '\\' if i + 1 < pattern.len() => {
                i += 1;
                out.push(Atom::Lit(pattern[i]));
            }
            c => out.push(Atom::Lit(c)),
        }
        i += 1;
    }
    out
}

/// Which match at the start of a text a pattern operation wants.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pick {
    Shortest,
    Longest,
}

/// How many automaton steps (positions of the pattern, per character of
/// the text) one expansion may take: far past what real values need,
/// short of a stall.
const MATCH_BUDGET: u64 = 1 << 28;

fn too_long() -> ShellError {
    ShellError {
        message: "the value and the pattern are too long to match (a pattern removal or replacement that would take hundreds of millions of steps)".into(),
    }
}

/// The length of the shortest or longest prefix of `s` the pattern
/// matches. The pattern runs as an automaton over `s` (the set of pattern
/// positions reached), never backtracking: each character costs the
/// pattern's length, taken from `budget`, and the run stops as soon as the
/// answer is known (the shortest match, or no position left).
fn match_prefix(
    atoms: &[Atom],
    s: &[char],
    pick: Pick,
    budget: &mut u64,
) -> Result<Option<usize>, ShellError> {
    let m = atoms.len();
    let close = |active: &mut [bool]| {
        for p in 0..m {
            if active[p] && atoms[p] == Atom::Star {
                active[p + 1] = true;
            }
        }
    };
    let mut active = vec![false; m + 1];
    active[0] = true;
    close(&mut active);
    let mut found = active[m].then_some(0);
    if found.is_some() && pick == Pick::Shortest {
        return Ok(found);
    }
    let mut next = vec![false; m + 1];
    for (i, &c) in s.iter().enumerate() {
        *budget = budget.checked_sub(m as u64 + 1).ok_or_else(too_long)?;
        next.fill(false);
        let mut any = false;
        for p in 0..m {
            if !active[p] {
                continue;
            }
            if atoms[p] == Atom::Star {
                next[p] = true;
                any = true;
            } else if atoms[p].matches(c) {
                next[p + 1] = true;
                any = true;
            }
        }
        if !any {
            break;
        }
        std::mem::swap(&mut active, &mut next);
        close(&mut active);
        if active[m] {
            found = Some(i + 1);
            if pick == Pick::Shortest {
                break;
            }
        }
    }
    Ok(found)
}

/// Does the shell pattern match all of `s`?
#[cfg(test)]
fn pattern_matches(pattern: &[char], s: &[char]) -> bool {
    let mut budget = MATCH_BUDGET;
    match_prefix(&atoms(pattern), s, Pick::Longest, &mut budget).ok() == Some(Some(s.len()))
}

fn remove_prefix(v: &str, pattern: &str, longest: bool) -> Result<String, ShellError> {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), v.chars().collect());
    let pick = if longest {
        Pick::Longest
    } else {
        Pick::Shortest
    };
    let mut budget = MATCH_BUDGET;
    Ok(match match_prefix(&atoms(&p), &s, pick, &mut budget)? {
        Some(i) => s[i..].iter().collect(),
        None => v.to_string(),
    })
}

fn remove_suffix(v: &str, pattern: &str, longest: bool) -> Result<String, ShellError> {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), v.chars().collect());
    // A suffix of `s` is a prefix of `s` reversed, for the pattern reversed.
    let back: Vec<char> = s.iter().rev().copied().collect();
    let mut reversed = atoms(&p);
    reversed.reverse();
    let pick = if longest {
        Pick::Longest
    } else {
        Pick::Shortest
    };
    let mut budget = MATCH_BUDGET;
    Ok(match match_prefix(&reversed, &back, pick, &mut budget)? {
        Some(k) => s[..s.len() - k].iter().collect(),
        None => v.to_string(),
    })
}

/// `${VAR/pattern/replacement}`: the first (or every) longest match replaced.
fn substitute(v: &str, pattern: &str, replacement: &str, all: bool) -> Result<String, ShellError> {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), v.chars().collect());
    if p.is_empty() {
        return Ok(v.to_string());
    }
    let atoms = atoms(&p);
    // A pattern of plain characters is a substring search.
    if atoms.iter().all(|a| matches!(a, Atom::Lit(_))) {
        let needle: String = atoms
            .iter()
            .map(|a| match a {
                Atom::Lit(c) => *c,
                _ => '\0',
            })
            .collect();
        return Ok(if all {
            v.replace(&needle, replacement)
        } else {
            v.replacen(&needle, replacement, 1)
        });
    }
    let mut budget = MATCH_BUDGET;
    let mut out = String::new();
    let mut i = 0;
    let mut replaced = false;
    while i < s.len() {
        if !replaced || all {
            let len = match_prefix(&atoms, &s[i..], Pick::Longest, &mut budget)?;
            if let Some(len) = len.filter(|len| *len > 0) {
                out.push_str(replacement);
                i += len;
                replaced = true;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_the_shell_does() {
        let m = |p: &str, s: &str| {
            pattern_matches(
                &p.chars().collect::<Vec<_>>(),
                &s.chars().collect::<Vec<_>>(),
            )
        };
        for (p, s, want) in [
            ("*", "", true),
            ("*", "abc", true),
            ("a*c", "abbbc", true),
            ("a*c", "abbbd", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[a-c]x", "bx", true),
            ("[!a-c]x", "bx", false),
            ("[^a-c]x", "dx", true),
            ("[x", "[x", true),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("a**b", "ab", true),
            ("*.tar.gz", "file.tar.gz", true),
            ("", "", true),
            ("", "a", false),
        ] {
            assert_eq!(m(p, s), want, "{p:?} against {s:?}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let env: Vec<(String, String)> = Vec::new();
        let deep = format!("{}v{}", "${X:-".repeat(1500), "}".repeat(1500));
        let e = process_word(&deep, &env, '\\').unwrap_err();
        assert!(e.to_string().contains("nested more than"), "{e}");
        let ok = format!(
            "{}v{}",
            "${X:-".repeat(MAX_NESTING),
            "}".repeat(MAX_NESTING)
        );
        assert_eq!(process_word(&ok, &env, '\\').unwrap(), "v");
    }

    #[test]
    fn a_pattern_that_backtracks_is_matched_in_linear_time() {
        // Exponential with a backtracking matcher: over 20 s before.
        let v = "a".repeat(59);
        let env = vec![("V".to_string(), v)];
        let got = process_word("${V#*a*a*a*a*a*a*ab}", &env, '\\').unwrap();
        assert_eq!(got, "a".repeat(59));
        let got = process_word("${V//*a*a*a*a*a*a*ab/x}", &env, '\\').unwrap();
        assert_eq!(got, "a".repeat(59));
        // Long values with plain patterns cost what the search costs...
        let long = vec![("V".to_string(), "a,".repeat(100_000))];
        let got = process_word("${V//,/_}", &long, '\\').unwrap();
        assert_eq!(got.len(), 200_000);
        assert!(!got.contains(','));
        let got = process_word("${V%%,*}", &long, '\\').unwrap();
        assert_eq!(got, "a");
        // ...and what could stall is refused.
        let long = vec![("V".to_string(), "a".repeat(200_000))];
        assert!(process_word("${V//*b/x}", &long, '\\').is_err());
    }

    fn env() -> Vec<(String, String)> {
        vec![
            ("A".into(), "path/to/file.tar.gz".into()),
            ("E".into(), String::new()),
        ]
    }

    #[track_caller]
    fn check(input: &str, expected: &str) {
        assert_eq!(
            process_word(input, &env(), '\\').as_deref(),
            Ok(expected),
            "{input}"
        );
    }

    #[test]
    fn pattern_operators() {
        check("${A#*/}", "to/file.tar.gz");
        check("${A##*/}", "file.tar.gz");
        check("${A%.*}", "path/to/file.tar");
        check("${A%%.*}", "path/to/file");
        check("${A/t/T}", "paTh/to/file.tar.gz");
        check("${A//t/T}", "paTh/To/file.Tar.gz");
        check("${A/[ft]*./X}", "paXgz");
        check("${A#nomatch}", "path/to/file.tar.gz");
        check("${E:-x}${E-y}", "x");
    }

    #[test]
    fn backtick_escape() {
        assert_eq!(process_word("a`$b`\"", &env(), '`').unwrap(), "a$b\"");
    }

    #[test]
    fn heredoc_bodies_keep_quotes() {
        let env = vec![("A".to_string(), "1".to_string())];
        assert_eq!(
            expand_heredoc("echo \"$A\" '${A}' \\$A \\n ${B:-x}\n", &env, '\\').unwrap(),
            "echo \"1\" '1' $A \\n x\n"
        );
    }
}
