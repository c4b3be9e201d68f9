//! [`redact_secrets`]: take password literals out of SQL text before it is audited.
//!
//! `CREATE ROLE … PASSWORD 'secret'`, `ALTER USER … WITH ENCRYPTED PASSWORD 'SCRAM-…'`
//! (what psql's `\password` sends), `CREATE USER MAPPING … OPTIONS (password '…')`,
//! `dblink('host=… password=…')` and `CREATE SUBSCRIPTION … CONNECTION '… password=…'` would
//! otherwise put a credential (or a verifier that can be attacked offline) into the audit log.
//!
//! The text is split into tokens by PostgreSQL's own scanner (the `pg_query` crate), so
//! string literals of every form (`'…'`, `E'…'`, `U&'…'`, `$$…$$`, `$tag$…$tag$`), quoted
//! identifiers and comments are what the server sees. Redacted, each replaced by
//! `'[REDACTED]'`:
//! - the literal after a `PASSWORD` keyword (or a `"password"` identifier, as in
//!   `OPTIONS ("password" '…')`), comments between them allowed (`PASSWORD/**/'x'`);
//! - every literal holding a connection string with a password: `password=` (any case,
//!   spaces allowed before `=`) or a URI with `user:secret@`.
//!
//! `standard_conforming_strings = off` makes the server read a backslash in a plain `'…'`
//! literal as an escape, so where a literal ends depends on a session setting the scanner
//! does not know. Whenever a backslash follows a redacted literal's start, everything from
//! that literal to the end of the text is redacted, whatever the quoting. Text the scanner
//! cannot split (an unterminated literal) is redacted from the first place that names a
//! password to its end. `PASSWORD NULL` and `PASSWORD $1` are left alone; secrets passed any
//! other way (a function argument, a bind parameter's value) are not recognised.

use pg_query::protobuf::Token;
use std::borrow::Cow;

/// What a redacted literal becomes.
pub const REDACTED_LITERAL: &str = "'[REDACTED]'";

/// `sql` with password literals replaced by `'[REDACTED]'` (see the module docs). Returns
/// `Cow::Borrowed(sql)` when nothing was replaced; text that names no password (no
/// `password`, no `://`) is returned without being scanned.
pub fn redact_secrets(sql: &str) -> Cow<'_, str> {
    let lower_has = |needle: &[u8]| {
        sql.as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    if !lower_has(b"password") && !sql.contains("://") {
        return Cow::Borrowed(sql);
    }
    let Ok(tokens) = pg_query::scan_tokens(sql) else {
        return redact_from_first_mention(sql);
    };
    // Byte ranges of literals to redact, in order.
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut after_password = false;
    for t in &tokens {
        let (Ok(start), Ok(end)) = (usize::try_from(t.start), usize::try_from(t.end)) else {
            continue;
        };
        let Some(text) = sql.get(start..end) else {
            continue;
        };
        let token = Token::try_from(t.token).unwrap_or(Token::Nul);
        match token {
            Token::SqlComment | Token::CComment => continue,
            Token::Sconst | Token::Usconst if after_password || names_connection_password(text) => {
                spans.push((start, end));
            }
            _ => {}
        }
        after_password = matches!(token, Token::Password)
            || (token == Token::Ident && text.trim_matches('"').eq_ignore_ascii_case("password"));
    }
    if spans.is_empty() {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0;
    for (start, end) in spans {
        if sql[start..].contains('\\') {
            // Where this literal ends depends on standard_conforming_strings: redact the rest.
            out.push_str(&sql[copied..start]);
            out.push_str(REDACTED_LITERAL);
            return Cow::Owned(out);
        }
        out.push_str(&sql[copied..start]);
        out.push_str(REDACTED_LITERAL);
        copied = end;
    }
    out.push_str(&sql[copied..]);
    Cow::Owned(out)
}

/// Whether a literal's text holds a connection-string password: `password =` (any case)
/// or a URI whose user info has a `:` (`postgres://user:secret@host`).
fn names_connection_password(literal: &str) -> bool {
    let b = literal.as_bytes();
    let key = b"password";
    let mut i = 0;
    while i + key.len() <= b.len() {
        if b[i..i + key.len()].eq_ignore_ascii_case(key) {
            let rest = b[i + key.len()..].iter().find(|c| !c.is_ascii_whitespace());
            if rest == Some(&b'=') {
                return true;
            }
        }
        i += 1;
    }
    if let Some(scheme) = literal.find("://") {
        let after = &literal[scheme + 3..];
        if let Some(at) = after.find('@') {
            return after[..at].contains(':');
        }
    }
    false
}

/// For text the scanner cannot split: everything from the first `password` (any case) or
/// `://` on becomes `[REDACTED]`.
fn redact_from_first_mention(sql: &str) -> Cow<'_, str> {
    let b = sql.as_bytes();
    let key = b"password";
    let by_word = b
        .windows(key.len())
        .position(|w| w.eq_ignore_ascii_case(key));
    let by_uri = sql.find("://");
    let Some(at) = [by_word, by_uri].into_iter().flatten().min() else {
        return Cow::Borrowed(sql);
    };
    let mut out = String::with_capacity(at + 12);
    out.push_str(&sql[..at]);
    out.push_str("[REDACTED]");
    Cow::Owned(out)
}

#[cfg(test)]
mod tests;
