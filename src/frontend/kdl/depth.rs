//! How deeply a KDL text nests its children blocks, found without parsing.
//!
//! The `kdl` crate parses children blocks recursively, so a spec of a few
//! kilobytes made of nothing but `{` overflows the stack. Before a text
//! reaches the parser, this scanner finds the first `{` that opens a block
//! deeper than [`MAX_DEPTH`], skipping strings (quoted, raw and multi-line)
//! and comments the way KDL (v2, and v1's raw strings) writes them.

/// Deeper than any spec needs; far shallower than what overflows the stack.
pub const MAX_DEPTH: usize = 64;

/// The byte offset of the first `{` that opens a block deeper than `max`.
pub fn too_deep(text: &str, max: usize) -> Option<usize> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut depth = 0usize;
    while i < b.len() {
        match b[i] {
            b'{' => {
                depth += 1;
                if depth > max {
                    return Some(i);
                }
                i += 1;
            }
            b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Block comments nest.
                let mut level = 0usize;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        level += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        level -= 1;
                        i += 2;
                        if level == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'#' | b'r' if raw_start(b, i).is_some() => {
                let (hashes, open) = raw_start(b, i).unwrap_or((0, i));
                i = skip_raw(b, open, hashes);
            }
            b'"' => i = skip_quoted(b, i),
            _ => i += 1,
        }
    }
    None
}

/// A raw string starts here: `#…#"` (v2) or `r#…#"` / `r"` (v1) at the
/// start of a token. Returns the number of `#` and the index of the `"`.
fn raw_start(b: &[u8], i: usize) -> Option<(usize, usize)> {
    let token_start = i == 0 || !is_ident(b[i - 1]);
    if !token_start {
        return None;
    }
    let mut j = i;
    if b[j] == b'r' {
        j += 1;
    }
    let hashes_from = j;
    while b.get(j) == Some(&b'#') {
        j += 1;
    }
    let hashes = j - hashes_from;
    if b.get(j) != Some(&b'"') || (b[i] == b'#' && hashes == 0) {
        return None;
    }
    if b[i] == b'#' || b[i] == b'r' {
        Some((hashes, j))
    } else {
        None
    }
}

fn is_ident(c: u8) -> bool {
    !(c.is_ascii_whitespace() || b"(){}[]/\\\"#;=".contains(&c))
}

/// Skip a raw string whose opening quote is at `open`: no escapes; it
/// ends at `"` followed by `hashes` `#` (`"""` forms end the same way).
fn skip_raw(b: &[u8], open: usize, hashes: usize) -> usize {
    let triple = b[open..].starts_with(b"\"\"\"");
    let quote: &[u8] = if triple { b"\"\"\"" } else { b"\"" };
    let mut i = open + quote.len();
    while i < b.len() {
        if b[i..].starts_with(quote)
            && b[i + quote.len()..]
                .iter()
                .take(hashes)
                .filter(|c| **c == b'#')
                .count()
                == hashes
        {
            return i + quote.len() + hashes;
        }
        i += 1;
    }
    b.len()
}

/// Skip a quoted string starting at `i` (`"…"` or `"""…"""`), with escapes.
fn skip_quoted(b: &[u8], i: usize) -> usize {
    let triple = b[i..].starts_with(b"\"\"\"");
    let mut j = i + if triple { 3 } else { 1 };
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' if !triple => return j + 1,
            b'"' if b[j..].starts_with(b"\"\"\"") => return j + 3,
            _ => j += 1,
        }
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_brace_too_deep() {
        let deep = format!("a{}{}", " b {".repeat(70), "}".repeat(70));
        let at = too_deep(&deep, 64).expect("too deep");
        assert_eq!(deep[..at].matches('{').count(), 64);
        assert_eq!(too_deep("a { b { c {} } }", 3), None);
        assert!(too_deep("a { b { c {} } }", 2).is_some());
    }

    #[test]
    fn braces_in_strings_and_comments_do_not_count() {
        let text = r####"
            a "{{{{" #"{{{{"# r#"{{{{"# r"{{{{" """
            {{{{
            """ #"""
            {{{{ "
            """# // {{{{
            /* {{{{ /* {{{{ */ {{{{ */ "\"{{{{" b {}
        "####;
        assert_eq!(too_deep(text, 1), None);
        assert!(too_deep(&format!("{text} x {{ y {{}} }}"), 1).is_some());
    }
}
