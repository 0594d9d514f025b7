//! `${NAME}` substitution in spec strings.
//!
//! Forms: `${NAME}`, `${NAME:-default}` (default when unset or empty),
//! `${NAME:+alt}` (alt when set and non-empty, else empty), and `$$` for a
//! literal `$`. A `$` followed by anything else is kept as is, so shell text
//! in `run` steps passes through. Defaults and alternatives may themselves
//! contain substitutions. Every name must be a declared `arg`.

use std::collections::BTreeMap;

/// Why a substitution failed, with the byte offset in the input.
#[derive(Debug, PartialEq, Eq)]
pub enum SubstError {
    Unknown {
        name: String,
        offset: usize,
    },
    Unterminated {
        offset: usize,
    },
    BadName {
        text: String,
        offset: usize,
    },
    /// Defaults and alternatives nested deeper than [`MAX_DEPTH`].
    TooDeep {
        offset: usize,
    },
}

/// How deep defaults and alternatives may nest (`${A:-${B:-…}}`): far past
/// any real use, and short of what would exhaust the stack.
pub const MAX_DEPTH: usize = 32;

/// Declared args: `None` is declared without a value.
pub type ArgValues = BTreeMap<String, Option<String>>;

pub fn substitute(input: &str, args: &ArgValues) -> Result<String, SubstError> {
    let mut out = String::with_capacity(input.len());
    expand(input, 0, args, &mut out, 0)?;
    Ok(out)
}

fn expand(
    input: &str,
    base: usize,
    args: &ArgValues,
    out: &mut String,
    depth: usize,
) -> Result<(), SubstError> {
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < input.len() {
        let Some(rel) = input[i..].find('$') else {
            out.push_str(&input[i..]);
            break;
        };
        out.push_str(&input[i..i + rel]);
        i += rel;
        match bytes.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => {
                let start = i;
                if depth >= MAX_DEPTH {
                    return Err(SubstError::TooDeep {
                        offset: base + start,
                    });
                }
                let close = matching_brace(input, i + 1).ok_or(SubstError::Unterminated {
                    offset: base + start,
                })?;
                let body = &input[i + 2..close];
                let body_base = base + i + 2;
                let (name, op, word) = match body.find(':') {
                    Some(c) if body[c..].starts_with(":-") || body[c..].starts_with(":+") => {
                        (&body[..c], &body[c..c + 2], Some(&body[c + 2..]))
                    }
                    _ => (body, "", None),
                };
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
                {
                    return Err(SubstError::BadName {
                        text: body.to_string(),
                        offset: body_base,
                    });
                }
                let value = match args.get(name) {
                    Some(v) => v.as_deref(),
                    None => {
                        return Err(SubstError::Unknown {
                            name: name.to_string(),
                            offset: body_base,
                        });
                    }
                };
                let set = value.is_some_and(|v| !v.is_empty());
                let word_base = body_base + name.len() + 2;
                match (op, word) {
                    (":-", Some(w)) if !set => expand(w, word_base, args, out, depth + 1)?,
                    (":+", Some(w)) if set => expand(w, word_base, args, out, depth + 1)?,
                    (":+", _) => {}
                    _ => out.push_str(value.unwrap_or("")),
                }
                i = close + 1;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Ok(())
}

/// Index of the `}` closing the `{` at `open`, honouring nesting.
fn matching_brace(input: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (j, c) in input[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + j);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ArgValues {
        let mut a = ArgValues::new();
        a.insert("V".into(), Some("1.0".into()));
        a.insert("EMPTY".into(), Some(String::new()));
        a.insert("UNSET".into(), None);
        a
    }

    #[track_caller]
    fn check(input: &str, expected: &str) {
        assert_eq!(
            substitute(input, &args()).as_deref(),
            Ok(expected),
            "input {input:?}"
        );
    }

    #[test]
    fn forms() {
        check("v${V}", "v1.0");
        check("${UNSET}", "");
        check("${UNSET:-d}", "d");
        check("${EMPTY:-d}", "d");
        check("${V:-d}", "1.0");
        check("${V:+alt}", "alt");
        check("${EMPTY:+alt}", "");
        check("${UNSET:-${V}}", "1.0");
        check("${UNSET:-a{b}c}", "a{b}c");
        check("$$V $${V}", "$V ${V}");
        check("echo $HOME $1", "echo $HOME $1");
        check("trailing $", "trailing $");
        check("", "");
        check("ünïcödé ${V}", "ünïcödé 1.0");
    }

    #[test]
    fn errors_carry_offsets() {
        assert_eq!(
            substitute("ab${NOPE}", &args()),
            Err(SubstError::Unknown {
                name: "NOPE".into(),
                offset: 4
            })
        );
        assert_eq!(
            substitute("x${V", &args()),
            Err(SubstError::Unterminated { offset: 1 })
        );
        assert!(matches!(
            substitute("${}", &args()),
            Err(SubstError::BadName { .. })
        ));
        assert!(matches!(
            substitute("${A B}", &args()),
            Err(SubstError::BadName { .. })
        ));
        // Nesting is bounded (50,000 levels overflowed the stack).
        let deep = format!("{}x{}", "${UNSET:-".repeat(50_000), "}".repeat(50_000));
        assert!(matches!(
            substitute(&deep, &args()),
            Err(SubstError::TooDeep { .. })
        ));
        let ok = format!(
            "{}x{}",
            "${UNSET:-".repeat(MAX_DEPTH),
            "}".repeat(MAX_DEPTH)
        );
        assert_eq!(substitute(&ok, &args()).as_deref(), Ok("x"));
        assert_eq!(
            substitute("${UNSET:-${NOPE}}", &args()),
            Err(SubstError::Unknown {
                name: "NOPE".into(),
                offset: 11
            })
        );
    }
}
