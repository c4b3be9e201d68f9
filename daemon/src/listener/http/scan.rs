//! Keeps the upstream secret from coming back: response headers and body chunks are scanned
//! for the secret and its encoded forms and each occurrence is replaced by `[REDACTED]`.
//!
//! Forms scanned: the secret itself; its base64 (standard, padded and unpadded, and
//! URL-safe unpadded); its percent-encoding (upper- and lower-case hex); for basic auth the
//! base64 of `username:secret`. Bodies are scanned as they stream: a chunk's tail that is a
//! proper prefix of some form is held back and joined with the next chunk, so an occurrence
//! split across chunk boundaries is still found, while a chunk ending in anything else (an
//! SSE event's blank line) is passed on at once.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use zeroize::Zeroizing;

/// What replaces each occurrence.
pub const REDACTED: &[u8] = b"[REDACTED]";

/// The compiled forms of one grant's secret. `Debug` shows only the number of forms.
pub struct Scanner {
    ac: AhoCorasick,
    forms: Vec<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("forms", &self.forms.len())
            .finish()
    }
}

fn percent_encode(b: &[u8], upper: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() * 3);
    for &c in b {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(c);
        } else if upper {
            out.extend_from_slice(format!("%{c:02X}").as_bytes());
        } else {
            out.extend_from_slice(format!("%{c:02x}").as_bytes());
        }
    }
    out
}

impl Scanner {
    /// Compiles the forms of each of `secrets` (and of `username:secret` for the first one
    /// when `basic_user` is given).
    ///
    /// # Errors
    /// The automaton could not be built (not expected for these sizes).
    pub fn new(secrets: &[&[u8]], basic_user: Option<&str>) -> Result<Self, String> {
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
        let mut forms: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        for secret in secrets {
            forms.extend([
                Zeroizing::new(secret.to_vec()),
                Zeroizing::new(STANDARD.encode(secret).into_bytes()),
                Zeroizing::new(STANDARD_NO_PAD.encode(secret).into_bytes()),
                Zeroizing::new(URL_SAFE_NO_PAD.encode(secret).into_bytes()),
                Zeroizing::new(percent_encode(secret, true)),
                Zeroizing::new(percent_encode(secret, false)),
            ]);
        }
        if let (Some(user), Some(secret)) = (basic_user, secrets.first()) {
            let pair = Zeroizing::new([user.as_bytes(), b":", secret].concat());
            forms.push(Zeroizing::new(STANDARD.encode(&*pair).into_bytes()));
            forms.push(Zeroizing::new(STANDARD_NO_PAD.encode(&*pair).into_bytes()));
        }
        forms.retain(|f| !f.is_empty());
        forms.sort_by(|a, b| a.as_slice().cmp(b.as_slice()));
        forms.dedup_by(|a, b| a.as_slice() == b.as_slice());
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(forms.iter().map(|f| f.as_slice()))
            .map_err(|e| format!("secret scanner: {e}"))?;
        Ok(Self { ac, forms })
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

    /// The length of the longest tail of `buf` that is a proper prefix of some form.
    fn held_tail(&self, buf: &[u8]) -> usize {
        let longest = self.forms.iter().map(|f| f.len()).max().unwrap_or(0);
        let max = longest.saturating_sub(1).min(buf.len());
        (1..=max)
            .rev()
            .find(|&k| {
                let tail = &buf[buf.len() - k..];
                self.forms
                    .iter()
                    .any(|f| f.len() > k && f.starts_with(tail))
            })
            .unwrap_or(0)
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
            percent_encode(SECRET, false),
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
}
