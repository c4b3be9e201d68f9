//! Keeps the upstream secret from coming back: response headers and body chunks are scanned
//! for the secret and its encoded forms and each occurrence is replaced by `[REDACTED]`.
//!
//! Forms scanned, all in one aho-corasick automaton (case-sensitive, so its prefilter keeps
//! secret-free text at memory speed; case variants are spelled out as forms):
//! - the secret itself, upper-cased and lower-cased (a hex or case-insensitive token
//!   changed in case is still the token);
//! - hex (two digits a byte), percent-encoded (reserved bytes only, as URL encoders do, and
//!   every byte: `%73%6b…`), every byte as `\u00XX` (JSON) and as `\xXX` (C, Python byte
//!   strings) — each with lower-case and with upper-case hex digits;
//! - base64, standard and URL-safe, padded and unpadded; and, because the secret can sit
//!   at any of three alignments inside a longer base64 text (`Bearer <secret>` encoded
//!   whole, an echoed header block), for each alignment the run of base64 characters
//!   that depends only on the secret's bytes (the "core": all but at most two characters
//!   at each end, whose bits mix with the neighbours). Cores shorter than
//!   [`MIN_CORE`] characters are left out (they would match ordinary text);
//! - for basic auth, the base64 of `username:secret`;
//! - JSON string escapes of each of the above as common encoders write them: `\/` for `/`
//!   (PHP), `\u002b`-style escapes of `+ < > & ' "` and backquote (.NET, Go), and `\\` / `\"`;
//!   and HTML escapes as Go's `html/template` writes them (`&#43;` for `+`).
//!
//! Not found (see SECURITY.md): transformations beyond these (hex or escapes with mixed-case
//! digits, hashes, encryption, other escapings (other HTML entity spellings), MIME base64 with line breaks inside the
//! secret, compression inside a JSON field), and a secret the upstream returns in pieces
//! (split across headers, fields, `Range` responses or pages).
//!
//! Bodies are scanned as they stream: a chunk's tail that is a proper prefix of some form
//! is held back and joined with the next chunk, so an occurrence split across chunk
//! boundaries is still found, while a chunk ending in anything else (an SSE event's blank
//! line) is passed on at once.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use zeroize::Zeroizing;

/// What replaces each occurrence.
pub const REDACTED: &[u8] = b"[REDACTED]";

/// The shortest base64 core (characters) scanned for; shorter ones would match ordinary
/// text. A 9-byte secret has cores of at least 10 characters.
pub const MIN_CORE: usize = 10;

/// The compiled forms of one grant's secret. `Debug` shows only the number of forms.
pub struct Scanner {
    ac: AhoCorasick,
    forms: Vec<Zeroizing<Vec<u8>>>,
    /// The longest form's length.
    longest: usize,
    /// Bytes (both cases) some form starts with: where a held tail can begin.
    first: [bool; 256],
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("forms", &self.forms.len())
            .finish()
    }
}

/// RFC 3986 unreserved bytes, which URL encoders leave as they are.
fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// Each byte `b` of `input` written as `template(b)`, or kept when `keep(b)`.
fn per_byte(input: &[u8], keep: impl Fn(u8) -> bool, write: impl Fn(u8) -> String) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() * 6);
    for &c in input {
        if keep(c) {
            out.push(c);
        } else {
            out.extend_from_slice(write(c).as_bytes());
        }
    }
    out
}

/// The base64 characters of `secret` placed `align` bytes into a longer text that do not
/// depend on the bytes around it (see the module docs).
fn base64_core(secret: &[u8], align: usize, engine: &impl base64::Engine) -> Vec<u8> {
    let mut bytes = Zeroizing::new(vec![0u8; align]);
    bytes.extend_from_slice(secret);
    bytes.extend_from_slice(&[0, 0]);
    let text = Zeroizing::new(engine.encode(&*bytes).into_bytes());
    let (lo, hi) = (8 * align, 8 * (align + secret.len()));
    let first = lo.div_ceil(6);
    let last = hi / 6; // exclusive: character i covers bits 6i..6i+6
    text.get(first..last.max(first))
        .unwrap_or_default()
        .to_vec()
}

/// Escaped spellings of `form` in JSON strings and HTML text: PHP (`\\/`), the `\\u00xx`
/// style of Go (lower-case hex) and .NET (upper-case), plain JSON (`\\\\`, `\\"`), and
/// HTML as Go's `html/template` writes it (`+` → `&#43;`, `"` → `&#34;`, `'` → `&#39;`,
/// `&amp;`, `&lt;`, `&gt;`). Equal spellings are removed later.
fn escaped_spellings(form: &[u8]) -> [Vec<u8>; 5] {
    let plain = |c: u8| !matches!(c, b'"' | b'\\');
    let quote = |c: u8| match c {
        b'"' => "\\\"".to_owned(),
        _ => "\\\\".to_owned(),
    };
    let escaped = |c: u8| plain(c) && !matches!(c, b'+' | b'<' | b'>' | b'&' | b'\'' | b'`');
    let html = |c: u8| match c {
        b'+' => "&#43;".to_owned(),
        b'"' => "&#34;".to_owned(),
        b'\'' => "&#39;".to_owned(),
        b'&' => "&amp;".to_owned(),
        b'<' => "&lt;".to_owned(),
        _ => "&gt;".to_owned(),
    };
    [
        per_byte(
            form,
            |c| plain(c) && c != b'/',
            |c| match c {
                b'/' => "\\/".to_owned(),
                c => quote(c),
            },
        ),
        per_byte(form, escaped, |c| format!("\\u{c:04x}")),
        per_byte(form, escaped, |c| format!("\\u{c:04X}")),
        per_byte(form, plain, quote),
        per_byte(
            form,
            |c| !matches!(c, b'+' | b'"' | b'\'' | b'&' | b'<' | b'>'),
            html,
        ),
    ]
}

impl Scanner {
    /// Compiles the forms of each of `secrets` (and of `username:secret` for the first one
    /// when `basic_user` is given).
    ///
    /// # Errors
    /// The automaton could not be built (not expected for these sizes).
    pub fn new(secrets: &[&[u8]], basic_user: Option<&str>) -> Result<Self, String> {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        let mut base: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        for secret in secrets {
            base.extend([
                Zeroizing::new(secret.to_vec()),
                Zeroizing::new(STANDARD.encode(secret).into_bytes()),
                Zeroizing::new(STANDARD_NO_PAD.encode(secret).into_bytes()),
                Zeroizing::new(URL_SAFE.encode(secret).into_bytes()),
                Zeroizing::new(URL_SAFE_NO_PAD.encode(secret).into_bytes()),
            ]);
            for align in 0..3 {
                for core in [
                    base64_core(secret, align, &STANDARD),
                    base64_core(secret, align, &URL_SAFE),
                ] {
                    if core.len() >= MIN_CORE {
                        base.push(Zeroizing::new(core));
                    }
                }
            }
        }
        if let (Some(user), Some(secret)) = (basic_user, secrets.first()) {
            let pair = Zeroizing::new([user.as_bytes(), b":", secret].concat());
            base.push(Zeroizing::new(STANDARD.encode(&*pair).into_bytes()));
            base.push(Zeroizing::new(STANDARD_NO_PAD.encode(&*pair).into_bytes()));
        }
        let mut forms: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        for secret in secrets {
            forms.push(Zeroizing::new(secret.to_ascii_uppercase()));
            forms.push(Zeroizing::new(secret.to_ascii_lowercase()));
            // Hex digits in either case (one case per form: mixed case is not scanned).
            for upper in [false, true] {
                let hex = move |c: u8| {
                    if upper {
                        format!("{c:02X}")
                    } else {
                        format!("{c:02x}")
                    }
                };
                forms.extend(
                    [
                        per_byte(secret, |_| false, hex),
                        per_byte(secret, unreserved, |c| format!("%{}", hex(c))),
                        per_byte(secret, |_| false, |c| format!("%{}", hex(c))),
                        per_byte(secret, |_| false, |c| format!("\\u00{}", hex(c))),
                        per_byte(secret, |_| false, |c| format!("\\x{}", hex(c))),
                    ]
                    .map(Zeroizing::new),
                );
            }
        }
        for form in &base {
            forms.extend(escaped_spellings(form).map(Zeroizing::new));
        }
        forms.extend(base);
        forms.retain(|f| !f.is_empty());
        forms.sort_by(|a, b| a.as_slice().cmp(b.as_slice()));
        forms.dedup_by(|a, b| a.as_slice() == b.as_slice());
        // Case-sensitive: the automaton's prefilter (memchr / Teddy) keeps the common,
        // secret-free chunk at memory speed; ASCII-case-insensitive matching turns it off
        // (measured: 7× slower), so the case variants above are spelled out instead.
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(forms.iter().map(|f| f.as_slice()))
            .map_err(|e| format!("secret scanner: {e}"))?;
        let mut first = [false; 256];
        for f in &forms {
            if let Some(&b) = f.first() {
                first[usize::from(b)] = true;
            }
        }
        let longest = forms.iter().map(|f| f.len()).max().unwrap_or(0);
        Ok(Self {
            ac,
            forms,
            longest,
            first,
        })
    }

    /// `input` with every occurrence replaced, and how many there were (`None` when there
    /// were none, so the caller can keep the original).
    pub fn redact(&self, input: &[u8]) -> Option<(Vec<u8>, usize)> {
        let mut out = Vec::new();
        let mut pos = 0;
        let mut n = 0;
        for m in self.ac.find_iter(input) {
            out.extend_from_slice(&input[pos..m.start()]);
            out.extend_from_slice(REDACTED);
            pos = m.end();
            n += 1;
        }
        if n == 0 {
            return None;
        }
        out.extend_from_slice(&input[pos..]);
        Some((out, n))
    }

    /// The length of the longest tail of `buf` that is a proper prefix of some form. Looks
    /// only at tails starting with a byte some form starts with.
    fn held_tail(&self, buf: &[u8]) -> usize {
        let max = self.longest.saturating_sub(1).min(buf.len());
        let from = buf.len() - max;
        for start in from..buf.len() {
            if !self.first[usize::from(buf[start])] {
                continue;
            }
            let tail = &buf[start..];
            if self
                .forms
                .iter()
                .any(|f| f.len() > tail.len() && f.starts_with(tail))
            {
                return tail.len();
            }
        }
        0
    }
}

/// The streaming state of one body: the held-back tail and the occurrences found so far.
#[derive(Default)]
pub struct StreamScan {
    carry: BytesMut,
    /// Occurrences replaced so far.
    pub found: usize,
}

impl std::fmt::Debug for StreamScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamScan")
            .field("held", &self.carry.len())
            .field("found", &self.found)
            .finish()
    }
}

impl StreamScan {
    /// Scans the next chunk; returns what may be sent now (possibly empty).
    pub fn push(&mut self, scanner: &Scanner, chunk: Bytes) -> Bytes {
        if self.carry.is_empty() {
            // Fast path: nothing held, no occurrence, nothing to hold: pass the chunk as is.
            if scanner.ac.find(&chunk[..]).is_none() && scanner.held_tail(&chunk) == 0 {
                return chunk;
            }
            self.carry.extend_from_slice(&chunk);
        } else {
            self.carry.extend_from_slice(&chunk);
        }
        let buf = std::mem::take(&mut self.carry);
        let hold = scanner.held_tail(&buf);
        let safe = buf.len() - hold;
        let mut out = BytesMut::with_capacity(buf.len());
        let mut pos = 0;
        for m in scanner.ac.find_iter(&buf[..]) {
            if m.start() >= safe {
                break;
            }
            out.extend_from_slice(&buf[pos..m.start()]);
            out.extend_from_slice(REDACTED);
            pos = m.end();
            self.found += 1;
        }
        let cut = pos.max(safe);
        out.extend_from_slice(&buf[pos..cut]);
        self.carry.extend_from_slice(&buf[cut..]);
        out.freeze()
    }

    /// The end of the body: whatever is still held, scanned.
    pub fn finish(&mut self, scanner: &Scanner) -> Bytes {
        let buf = std::mem::take(&mut self.carry);
        match scanner.redact(&buf) {
            Some((out, n)) => {
                self.found += n;
                Bytes::from(out)
            }
            None => buf.freeze(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"sk-live-0123456789abcdef/+=";

    fn stream(scanner: &Scanner, chunks: &[&[u8]]) -> (Vec<u8>, usize) {
        let mut s = StreamScan::default();
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&s.push(scanner, Bytes::copy_from_slice(c)));
        }
        out.extend_from_slice(&s.finish(scanner));
        (out, s.found)
    }

    #[test]
    fn every_split_of_every_form_is_redacted() {
        use base64::Engine as _;
        let scanner = Scanner::new(&[SECRET], Some("bot")).unwrap();
        let forms: Vec<Vec<u8>> = vec![
            SECRET.to_vec(),
            base64::engine::general_purpose::STANDARD
                .encode(SECRET)
                .into_bytes(),
            per_byte(SECRET, unreserved, |c| format!("%{c:02x}")),
            base64::engine::general_purpose::STANDARD
                .encode(b"bot:sk-live-0123456789abcdef/+=")
                .into_bytes(),
        ];
        for form in forms {
            let body = [b"data: {\"x\": \"".as_slice(), &form, b"\"}\n\n"].concat();
            for a in 0..body.len() {
                for b in a..body.len() {
                    let (out, n) = stream(&scanner, &[&body[..a], &body[a..b], &body[b..]]);
                    assert_eq!(n, 1, "split {a}/{b}");
                    assert_eq!(out, b"data: {\"x\": \"[REDACTED]\"}\n\n".to_vec());
                }
            }
        }
    }

    #[test]
    fn chunks_without_a_prefix_pass_at_once() {
        let scanner = Scanner::new(&[SECRET], None).unwrap();
        let mut s = StreamScan::default();
        let out = s.push(&scanner, Bytes::from_static(b"data: one\n\n"));
        assert_eq!(&out[..], b"data: one\n\n");
        // A tail that could start the secret is held until the next chunk says otherwise.
        let out = s.push(&scanner, Bytes::from_static(b"data: sk-li"));
        assert_eq!(&out[..], b"data: ");
        let out = s.push(&scanner, Bytes::from_static(b"ke\n\n"));
        assert_eq!(&out[..], b"sk-like\n\n");
        assert_eq!(s.found, 0);
        assert_eq!(
            format!("{scanner:?}"),
            "Scanner { forms: 8 }".replace('8', &scanner.forms.len().to_string())
        );
    }

    /// The transformations an echoing upstream might apply to a header holding the secret,
    /// written independently of the scanner.
    fn transformed(value: &[u8]) -> Vec<(String, Vec<u8>)> {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let hex = |upper: bool| {
            value
                .iter()
                .map(|b| {
                    if upper {
                        format!("{b:02X}")
                    } else {
                        format!("{b:02x}")
                    }
                })
                .collect::<String>()
                .into_bytes()
        };
        let mut out = vec![
            ("hex".to_owned(), hex(false)),
            ("HEX".to_owned(), hex(true)),
            ("upper".to_owned(), value.to_ascii_uppercase()),
            (
                "pct-all".to_owned(),
                value
                    .iter()
                    .flat_map(|b| format!("%{b:02x}").into_bytes())
                    .collect(),
            ),
            (
                "pct-all-upper".to_owned(),
                value
                    .iter()
                    .flat_map(|b| format!("%{b:02X}").into_bytes())
                    .collect(),
            ),
            ("lower".to_owned(), value.to_ascii_lowercase()),
            (
                "gohtml".to_owned(),
                String::from_utf8_lossy(value)
                    .replace('&', "&amp;")
                    .replace('+', "&#43;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
                    .into_bytes(),
            ),
            (
                "json-u".to_owned(),
                value
                    .iter()
                    .flat_map(|b| format!("\\u{b:04X}").into_bytes())
                    .collect(),
            ),
            (
                "c-x".to_owned(),
                value
                    .iter()
                    .flat_map(|b| format!("\\x{b:02x}").into_bytes())
                    .collect(),
            ),
        ];
        for k in 0..6 {
            let shifted = [vec![b'x'; k], value.to_vec()].concat();
            out.push((format!("b64-{k}"), STANDARD.encode(&shifted).into_bytes()));
            out.push((
                format!("b64url-{k}"),
                URL_SAFE_NO_PAD.encode(&shifted).into_bytes(),
            ));
            out.push((
                format!("php-{k}"),
                STANDARD.encode(&shifted).replace('/', "\\/").into_bytes(),
            ));
            out.push((
                format!("gohtml-{k}"),
                STANDARD.encode(&shifted).replace('+', "&#43;").into_bytes(),
            ));
            out.push((
                format!("dotnet-{k}"),
                STANDARD
                    .encode(&shifted)
                    .replace('+', "\\u002B")
                    .into_bytes(),
            ));
        }
        out
    }

    #[test]
    fn transformed_reflections_are_redacted_and_unrecoverable() {
        for secret in [
            SECRET,
            b"canary-0123456789abcdef0123456789abcdef".as_slice(),
            b"a/b+c/d+e/f+g?h&i<j>k".as_slice(),
        ] {
            let scanner = Scanner::new(&[secret], None).unwrap();
            // What the agent could decode back (letter case aside).
            let recoverable: Vec<Vec<u8>> = transformed(secret)
                .into_iter()
                .filter(|(name, _)| {
                    !name.starts_with("b64")
                        && !name.starts_with("php")
                        && !name.starts_with("gohtml")
                        && !name.starts_with("dotnet")
                })
                .map(|(_, t)| t.to_ascii_lowercase())
                .chain((0..3).flat_map(|a| {
                    [
                        base64_core(secret, a, &base64::engine::general_purpose::STANDARD),
                        base64_core(secret, a, &base64::engine::general_purpose::URL_SAFE),
                    ]
                    .map(|c| c.to_ascii_lowercase())
                }))
                .collect();
            for prefix in [b"Bearer ".as_slice(), b"token=", b""] {
                let value = [prefix, secret].concat();
                for (name, t) in transformed(&value) {
                    let body = [b"{\"echo\": \"".as_slice(), &t, b"\"}"].concat();
                    let (out, n) = stream(
                        &scanner,
                        &[&body[..body.len() / 3], &body[body.len() / 3..]],
                    );
                    assert!(n >= 1, "{name}: not found");
                    let lower = out.to_ascii_lowercase();
                    for r in &recoverable {
                        assert!(
                            r.len() < MIN_CORE
                                || !lower.windows(r.len()).any(|w| w == r.as_slice()),
                            "{name}: a recoverable form is left"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        let scanner = Scanner::new(
            &[b"canary-0123456789abcdef0123456789abcdef".as_slice()],
            Some("bot"),
        )
        .unwrap();
        let mut text = Vec::new();
        for i in 0..20_000u32 {
            text.extend_from_slice(
                format!(
                    "{{\"id\": {i}, \"sha\": \"{:08x}{:08x}\", \"b64\": \"{}\"}}\n",
                    i.wrapping_mul(2_654_435_761),
                    i ^ 0xdead_beef,
                    base64::engine::general_purpose::STANDARD.encode(i.to_le_bytes().repeat(5))
                )
                .as_bytes(),
            );
        }
        assert!(scanner.redact(&text).is_none());
    }

    /// Throughput of the streaming scan on 64 KiB chunks (run with `--ignored --nocapture`).
    #[test]
    #[ignore = "a measurement, not a check"]
    fn scan_throughput() {
        let scanner = Scanner::new(
            &[b"canary-0123456789abcdef0123456789abcdef".as_slice()],
            Some("bot"),
        )
        .unwrap();
        let mut body = Vec::new();
        while body.len() < 64 << 20 {
            body.extend_from_slice(b"{\"id\": 12345, \"name\": \"repository-name\", \"url\": \"https://api.example.com/repos/o/r\", \"sha\": \"9fceb02d0ae598e95dc970b74767f19372d61af8\"},\n");
        }
        for (label, data) in [("json", body.clone()), ("x", vec![b'x'; 64 << 20])] {
            let chunks: Vec<Bytes> = data.chunks(64 << 10).map(Bytes::copy_from_slice).collect();
            let started = std::time::Instant::now();
            let mut s = StreamScan::default();
            let mut n = 0;
            for c in chunks {
                n += s.push(&scanner, c).len();
            }
            n += s.finish(&scanner).len();
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{label}: {:.0} MiB/s ({n} bytes)",
                data.len() as f64 / secs / f64::from(1u32 << 20)
            );
        }
    }
}
