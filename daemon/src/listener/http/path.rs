//! Request-target normalisation before the allow list is consulted.
//!
//! The listener matches and forwards the same string, so what the upstream sees is exactly
//! what was checked. Rules (RFC 3986 §6.2.2 plus refusals where servers disagree):
//! - percent-encoded unreserved characters (`ALPHA DIGIT - . _ ~`, so `%2e`) are decoded;
//!   other escapes are kept, with upper-case hex;
//! - empty segments (`//`) are dropped, `.` segments removed, `..` removes the previous
//!   segment; a trailing `/` is kept;
//! - refused, because servers and frameworks read them differently: an encoded `/` or `\`
//!   (`%2f`, `%5c`), a raw `\`, double encoding (`%25` followed by two hex digits), a
//!   malformed escape, control characters (`%00`–`%1f`, `%7f`), `..` above the root, and
//!   `.`/`..` followed by `;` (matrix parameters, which some servers strip before
//!   resolving dot segments).

/// Why a path was refused; the text is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not origin-form.
    #[error("the request target must be a path starting with '/'")]
    NotOriginForm,
    /// `%2f` or `%5c`.
    #[error("an encoded '/' or '\\' (%2f, %5c) is ambiguous and refused")]
    EncodedSeparator,
    /// A raw backslash.
    #[error("'\\' in a path is ambiguous and refused")]
    Backslash,
    /// `%25XX`.
    #[error("double percent-encoding (%25 followed by hex) is refused")]
    DoubleEncoding,
    /// `%` not followed by two hex digits.
    #[error("malformed percent-encoding")]
    BadEscape,
    /// A control character.
    #[error("control characters in a path are refused")]
    Control,
    /// `..` past the root.
    #[error("'..' above the root is refused")]
    AboveRoot,
    /// `..;` or `.;`.
    #[error("dot segments with ';' parameters are refused")]
    DotParameter,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes one raw segment as described in the module docs.
fn segment(raw: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let v = h << 4 | l;
            match v {
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                0..=0x1f | 0x7f => return Err(PathError::Control),
                b'%' if raw.get(i + 3).copied().and_then(hex).is_some()
                    && raw.get(i + 4).copied().and_then(hex).is_some() =>
                {
                    return Err(PathError::DoubleEncoding)
                }
                v if unreserved(v) => out.push(char::from(v)),
                v => {
                    out.push('%');
                    out.push_str(&format!("{v:02X}"));
                }
            }
            i += 3;
            continue;
        }
        match b {
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::Control),
            _ => out.push(char::from(b)),
        }
        i += 1;
    }
    Ok(out)
}

/// Normalises an origin-form path (without the query). Returns the path to match and
/// forward, always starting with `/`.
///
/// # Errors
/// [`PathError`] for what cannot be normalised unambiguously.
pub fn normalise(raw: &str) -> Result<String, PathError> {
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(PathError::NotOriginForm);
    };
    // hyper hands us only valid URI characters; anything else (bytes ≥ 0x80) is kept as is.
    let raw_segments: Vec<&[u8]> = rest.as_bytes().split(|&b| b == b'/').collect();
    let last = raw_segments.len().saturating_sub(1);
    let mut out: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for (i, raw) in raw_segments.into_iter().enumerate() {
        let seg = segment(raw)?;
        let is_last = i == last;
        if seg.starts_with(".;") || seg.starts_with("..;") {
            return Err(PathError::DotParameter);
        }
        match seg.as_str() {
            "" => trailing_slash = is_last && !out.is_empty(),
            "." => trailing_slash = is_last && !out.is_empty(),
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = is_last && !out.is_empty();
            }
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut path = String::with_capacity(raw.len());
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_dot_segments_escapes_and_slashes() {
        let ok = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/a//b", "/a/b"),
            ("//a///b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E/b", "/a/b"),
            ("/a/.%2e/b", "/b"),
            ("/%61%62c", "/abc"),
            ("/a%20b", "/a%20b"),
            ("/a%3ab", "/a%3Ab"),
            ("/v1/chat/completions", "/v1/chat/completions"),
        ];
        for (raw, want) in ok {
            assert_eq!(normalise(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn refuses_ambiguous_paths() {
        let bad = [
            ("a/b", PathError::NotOriginForm),
            ("*", PathError::NotOriginForm),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%2Fb", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a\\b", PathError::Backslash),
            ("/a/%252e%252e/b", PathError::DoubleEncoding),
            ("/a%2", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
            ("/a%00b", PathError::Control),
            ("/..", PathError::AboveRoot),
            ("/a/../..", PathError::AboveRoot),
            ("/%2e%2e/etc", PathError::AboveRoot),
            ("/a/..;/b", PathError::DotParameter),
            ("/a/.;x/b", PathError::DotParameter),
        ];
        for (raw, want) in bad {
            assert_eq!(normalise(raw), Err(want), "{raw}");
        }
    }
}
