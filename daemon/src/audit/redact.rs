//! [`redact_secrets`]: take password literals out of SQL text before it is audited.
//!
//! `CREATE ROLE … PASSWORD 'secret'` and `ALTER USER … WITH ENCRYPTED PASSWORD 'SCRAM-…'`
//! (what psql's `\password` sends) would otherwise put a credential (or a verifier that can
//! be attacked offline) into the audit log. The literal after the keyword `PASSWORD` is
//! replaced with `'[REDACTED]'`.
//!
//! The scan is a small lexer: it skips string literals (`'…'` with `''`, `E'…'` with
//! backslash escapes, `U&'…'`), quoted identifiers, dollar-quoted strings (`$$…$$`,
//! `$tag$…$tag$`), `--` and nested `/* */` comments, so the word `password` inside them, or
//! inside a longer identifier such as `password_hash`, is left alone. After the keyword only
//! whitespace may precede the literal (`PASSWORD /*c*/ 'x'` is not recognised), and only a
//! literal is redacted (`PASSWORD NULL`, `PASSWORD $1` are left as they are).
//!
//! Limits: it assumes `standard_conforming_strings = on` (the default since PostgreSQL 9.1);
//! with it off, a backslash-escaped quote inside a plain `'…'` literal can desynchronise
//! the scan. Secrets passed any other way (a function argument, a bind parameter's value)
//! are not recognised.

use std::borrow::Cow;

/// What a redacted literal becomes.
pub const REDACTED_LITERAL: &str = "'[REDACTED]'";

/// `sql` with the literal after every `PASSWORD` keyword (case-insensitive, whole word)
/// replaced by `'[REDACTED]'`. An unterminated literal is redacted to the end of the text.
/// Returns `Cow::Borrowed(sql)` when nothing was replaced.
pub fn redact_secrets(sql: &str) -> Cow<'_, str> {
    let b = sql.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        match c {
            b'\'' => i = skip_quoted(b, i + 1, b'\'', false),
            b'"' => i = skip_quoted(b, i + 1, b'"', false),
            b'-' if next == Some(b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .map_or(b.len(), |p| i + p + 1);
            }
            b'/' if next == Some(b'*') => i = skip_block_comment(b, i + 2),
            b'$' => i = dollar_literal_end(b, i).unwrap_or(i + 1),
            c if is_ident_start(c) || c.is_ascii_digit() => {
                let start = i;
                while i < b.len() && is_ident_cont(b[i]) {
                    i += 1;
                }
                let word = &b[start..i];
                if let Some(end) = prefixed_literal_end(b, start, i) {
                    i = end; // E'…', U&'…' (B'…', X'…', N'…' are plain quotes next round)
                } else if word.eq_ignore_ascii_case(b"password") {
                    let mut j = i;
                    while j < b.len() && b[j].is_ascii_whitespace() {
                        j += 1;
                    }
                    if let Some(end) = literal_end(b, j) {
                        let buf = out.get_or_insert_with(|| String::with_capacity(sql.len()));
                        buf.push_str(&sql[copied..j]);
                        buf.push_str(REDACTED_LITERAL);
                        copied = end;
                        i = end;
                    }
                }
            }
            _ => i += 1,
        }
    }
    match out {
        None => Cow::Borrowed(sql),
        Some(mut buf) => {
            buf.push_str(&sql[copied..]);
            Cow::Owned(buf)
        }
    }
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// The end (exclusive) of the literal starting at `j`, if one starts there.
fn literal_end(b: &[u8], j: usize) -> Option<usize> {
    match b.get(j)? {
        b'\'' => Some(skip_quoted(b, j + 1, b'\'', false)),
        b'$' => dollar_literal_end(b, j),
        c if is_ident_start(*c) => {
            let mut k = j;
            while k < b.len() && is_ident_cont(b[k]) {
                k += 1;
            }
            prefixed_literal_end(b, j, k)
        }
        _ => None,
    }
}

/// For a word `b[start..end]` of `E`/`e` followed by `'`, or `U`/`u` followed by `&'`: the
/// end of that escape-string or Unicode-string literal.
fn prefixed_literal_end(b: &[u8], start: usize, end: usize) -> Option<usize> {
    let word = &b[start..end];
    if word.eq_ignore_ascii_case(b"e") && b.get(end) == Some(&b'\'') {
        Some(skip_quoted(b, end + 1, b'\'', true))
    } else if word.eq_ignore_ascii_case(b"u") && b[end..].starts_with(b"&'") {
        Some(skip_quoted(b, end + 2, b'\'', false))
    } else {
        None
    }
}

/// From just inside an opening `quote`, the index after the closing one (doubled quotes
/// are escapes; with `backslash`, so is `\x`), or the end of the text when unterminated.
fn skip_quoted(b: &[u8], mut i: usize, quote: u8, backslash: bool) -> usize {
    while i < b.len() {
        let c = b[i];
        if backslash && c == b'\\' {
            i += 2;
        } else if c == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// From just inside `/*`, the index after the matching `*/` (comments nest), or the end.
fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    let mut depth = 1;
    while i < b.len() {
        if b[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else if b[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else {
            i += 1;
        }
    }
    b.len()
}

/// If a dollar quote (`$$` or `$tag$`) opens at `i`, the index after its closing
/// delimiter (or the end of the text when unterminated); `None` when `$` at `i` is not an
/// opening delimiter (e.g. the parameter `$1`).
fn dollar_literal_end(b: &[u8], i: usize) -> Option<usize> {
    let mut k = i + 1;
    if k < b.len() && b[k] != b'$' {
        if !is_ident_start(b[k]) {
            return None;
        }
        while k < b.len() && is_ident_cont(b[k]) && b[k] != b'$' {
            k += 1;
        }
    }
    if b.get(k) != Some(&b'$') {
        return None;
    }
    let delimiter = &b[i..=k];
    let body = k + 1;
    Some(
        b[body..]
            .windows(delimiter.len())
            .position(|w| w == delimiter)
            .map_or(b.len(), |p| body + p + delimiter.len()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&str, &str)] = &[
            (
                "CREATE ROLE x PASSWORD 'p'",
                "CREATE ROLE x PASSWORD '[REDACTED]'",
            ),
            (
                "ALTER USER x WITH ENCRYPTED PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2Vy'",
                "ALTER USER x WITH ENCRYPTED PASSWORD '[REDACTED]'",
            ),
            (
                "alter role x password 'a''b' valid until 'infinity'",
                "alter role x password '[REDACTED]' valid until 'infinity'",
            ),
            (
                "CREATE USER a PASSWORD 'x'; CREATE USER b PassWord 'y';",
                "CREATE USER a PASSWORD '[REDACTED]'; CREATE USER b PassWord '[REDACTED]';",
            ),
            (
                r"ALTER ROLE x PASSWORD E'a\'b''c' LOGIN",
                "ALTER ROLE x PASSWORD '[REDACTED]' LOGIN",
            ),
            (
                "ALTER ROLE x PASSWORD e'\\\\'",
                "ALTER ROLE x PASSWORD '[REDACTED]'",
            ),
            (
                "ALTER ROLE x PASSWORD $$p'w$$;",
                "ALTER ROLE x PASSWORD '[REDACTED]';",
            ),
            (
                "ALTER ROLE x PASSWORD $pw$a$$b'$pw$ LOGIN",
                "ALTER ROLE x PASSWORD '[REDACTED]' LOGIN",
            ),
            (
                "ALTER ROLE x PASSWORD U&'d\\0061t' LOGIN",
                "ALTER ROLE x PASSWORD '[REDACTED]' LOGIN",
            ),
            (
                "CREATE ROLE x WITH LOGIN\n  PASSWORD\n\t'p'\n  VALID UNTIL '2030-01-01'",
                "CREATE ROLE x WITH LOGIN\n  PASSWORD\n\t'[REDACTED]'\n  VALID UNTIL '2030-01-01'",
            ),
            (
                "CREATE ROLE x PASSWORD 'unterminated",
                "CREATE ROLE x PASSWORD '[REDACTED]'",
            ),
            (
                "CREATE ROLE x PASSWORD $$open",
                "CREATE ROLE x PASSWORD '[REDACTED]'",
            ),
            (
                "CREATE ROLE x PASSWORD E'open\\'",
                "CREATE ROLE x PASSWORD '[REDACTED]'",
            ),
            (
                "CREATE ROLE \"pässword\" PASSWORD 'ñ€'",
                "CREATE ROLE \"pässword\" PASSWORD '[REDACTED]'",
            ),
            ("SELECT 1;PASSWORD'x'", "SELECT 1;PASSWORD'[REDACTED]'"),
        ];
        for (input, expected) in cases {
            let got = redact_secrets(input);
            assert!(matches!(got, Cow::Owned(_)), "{input}");
            assert_eq!(&got, expected, "input: {input}");
        }
    }

    #[test]
    fn left_alone() {
        let cases = [
            "SELECT 1",
            "",
            "SELECT password_hash FROM users WHERE password_hash = 'x'",
            "SELECT mypassword 'x'",
            "SELECT t.password FROM t",
            "ALTER ROLE x PASSWORD NULL",
            "ALTER ROLE x PASSWORD $1",
            "ALTER ROLE x PASSWORD /* c */ 'x'",
            "SELECT 'password ''x'''",
            "SELECT E'password \\' ', 'y'",
            "SELECT $$ password 'x' $$",
            "SELECT $q$ password 'x' $q$",
            "SELECT \"password\" FROM t WHERE a = 'b'",
            "SELECT 1 -- password 'x'\n",
            "SELECT /* password /* 'x' */ password */ 1",
            "SELECT password$x 'y'",
            "SELECT 1password",
        ];
        for input in cases {
            let got = redact_secrets(input);
            assert!(matches!(got, Cow::Borrowed(_)), "changed: {input} -> {got}");
        }
    }

    #[test]
    fn stops_at_comments_and_literals_correctly() {
        // A PASSWORD after a comment or literal that contains quotes is still found.
        let input = "/* it's */ SELECT 'a''b', $$x'$$; -- don't\nALTER ROLE r PASSWORD 'p'";
        assert_eq!(
            redact_secrets(input),
            "/* it's */ SELECT 'a''b', $$x'$$; -- don't\nALTER ROLE r PASSWORD '[REDACTED]'"
        );
    }
}
