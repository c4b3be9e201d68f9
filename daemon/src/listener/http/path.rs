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
//!   resolving dot segments);
//! - refused, because a decoder that folds them turns them into `.`, `/` or `\` after the
//!   allow list has seen them: percent-encoded bytes that are not UTF-8 (over-long forms
//!   such as `%c0%ae` for `.`, lone or truncated sequences, `%ff`), and the Unicode
//!   look-alikes that NFKC or Windows "best fit" mapping fold to those characters
//!   ([`LOOKALIKES`]: full-width `．／＼`, `․ ‥ …`, `﹒ ﹨`, `∕ ⁄ ∖ ⧸ ⧹`).

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
    /// Percent-encoded bytes that are not UTF-8 (over-long forms included).
    #[error("percent-encoded bytes that are not valid UTF-8 (e.g. over-long %c0%ae) are refused")]
    BadUtf8,
    /// A Unicode look-alike of `.`, `/` or `\`.
    #[error("a Unicode look-alike of '.', '/' or '\\' is refused (some servers fold it to the ASCII character)")]
    Lookalike,
}

/// Characters that Unicode compatibility normalisation (NFKC) or Windows "best fit"
/// mapping turn into `.`, `/` or `\` (or runs of dots).
pub const LOOKALIKES: [char; 13] = [
    '\u{2024}', // ONE DOT LEADER → .
    '\u{2025}', // TWO DOT LEADER → ..
    '\u{2026}', // HORIZONTAL ELLIPSIS → ...
    '\u{FE52}', // SMALL FULL STOP → .
    '\u{FF0E}', // FULLWIDTH FULL STOP → .
    '\u{FF0F}', // FULLWIDTH SOLIDUS → /
    '\u{FF3C}', // FULLWIDTH REVERSE SOLIDUS → \
    '\u{FE68}', // SMALL REVERSE SOLIDUS → \
    '\u{2215}', // DIVISION SLASH → / (best fit)
    '\u{2044}', // FRACTION SLASH → / (best fit)
    '\u{2216}', // SET MINUS → \ (best fit)
    '\u{29F8}', // BIG SOLIDUS → /
    '\u{29F9}', // BIG REVERSE SOLIDUS → \
];

/// Checks a segment holding bytes ≥ 0x80 (raw or percent-encoded): its decoded bytes must
/// be UTF-8 without [`LOOKALIKES`].
fn check_non_ascii(raw: &[u8]) -> Result<(), PathError> {
    let decoded: Vec<u8> = percent_encoding::percent_decode(raw).collect();
    let text = std::str::from_utf8(&decoded).map_err(|_| PathError::BadUtf8)?;
    if text.chars().any(|c| LOOKALIKES.contains(&c)) {
        return Err(PathError::Lookalike);
    }
    Ok(())
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
    let mut non_ascii = false;
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
            non_ascii |= v >= 0x80;
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
            0x80.. => {
                // Not expected from hyper (it refuses such targets); kept whole if it comes.
                non_ascii = true;
                out.push_str(&format!("%{b:02X}"));
            }
            _ => out.push(char::from(b)),
        }
        i += 1;
    }
    if non_ascii {
        check_non_ascii(raw)?;
    }
    Ok(out)
}

/// Normalises an origin-form path (without the query). Returns the path to match and
/// forward, always starting with `/`.
///
/// # Errors
/// [`PathError`] for what cannot be normalised unambiguously.
pub fn normalise(raw: &str) -> Result<String, PathError> {
    if already_normal(raw) {
        return Ok(raw.to_owned());
    }
    normalise_segments(raw)
}

/// True for a path the segment-by-segment normalisation returns unchanged: it starts with
/// `/`, every byte is printable ASCII other than `%` and `\`, and it has no empty segment
/// (`//`) and no segment starting with `.`. (The common case; the unit test
/// `fast_path_agrees_with_the_full_normalisation` checks the two agree.)
fn already_normal(raw: &str) -> bool {
    let b = raw.as_bytes();
    b.first() == Some(&b'/')
        && b.iter()
            .all(|&c| (0x21..=0x7e).contains(&c) && c != b'%' && c != b'\\')
        && !b
            .windows(2)
            .any(|w| w[0] == b'/' && (w[1] == b'/' || w[1] == b'.'))
}

/// The full normalisation, segment by segment (module docs).
fn normalise_segments(raw: &str) -> Result<String, PathError> {
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
    fn fast_path_agrees_with_the_full_normalisation() {
        // Every path of up to 4 characters over an alphabet with each kind of byte the
        // fast path decides on, plus longer realistic ones.
        let alphabet = ["/", ".", "a", "%", "2", "e", "\\", ";", "~", "-"];
        let mut paths = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for p in &frontier {
                for c in alphabet {
                    next.push(format!("{p}{c}"));
                }
            }
            paths.extend(next.iter().cloned());
            frontier = next;
        }
        paths.extend(
            [
                "/repos/a/b/issues/1",
                "/v1/chat/completions",
                "/a/b/",
                "/a/./b",
                "/a/../b",
                "/a//b",
                "/a/.;/b",
                "/a/b/..;/c",
                "/caf%c3%a9",
                "/%2e%2e/x",
                "/a/.hidden",
                "/a.b/c.d",
            ]
            .map(str::to_owned),
        );
        let mut fast = 0;
        for p in &paths {
            if already_normal(p) {
                fast += 1;
                assert_eq!(normalise_segments(p).as_deref(), Ok(p.as_str()), "{p:?}");
            }
            assert_eq!(normalise(p), normalise_segments(p), "{p:?}");
        }
        assert!(fast > 100, "the fast path was taken for {fast} paths only");
    }

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
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/%E6%97%A5%E6%9C%AC", "/%E6%97%A5%E6%9C%AC"),
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
            ("/a/%c0%ae%c0%ae/b", PathError::BadUtf8),
            ("/a/%C0%AFb", PathError::BadUtf8),
            ("/a/%e0%80%ae/b", PathError::BadUtf8),
            ("/a/%ff", PathError::BadUtf8),
            ("/a/%c3", PathError::BadUtf8),
            ("/a/%EF%BC%8E%EF%BC%8E/b", PathError::Lookalike),
            ("/a/..%ef%bc%8fb", PathError::Lookalike),
            ("/a/%E2%80%A5", PathError::Lookalike),
            ("/a/x%E2%88%95y", PathError::Lookalike),
        ];
        for (raw, want) in bad {
            assert_eq!(normalise(raw), Err(want), "{raw}");
        }
    }
}
