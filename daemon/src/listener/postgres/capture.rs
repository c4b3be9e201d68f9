//! [`StatementTap`]: watches the client → server bytes of an authenticated session and
//! reports the SQL the client sends, for the audit log.
//!
//! After startup and authentication every frontend message is a type byte followed by an
//! Int32 length that counts itself but not the type byte (PostgreSQL protocol, "Message
//! Formats"). The tap is fed the relay's chunks as they come, split anywhere, and reports:
//!
//! - `Query` (`Q`): the query string (a C string) → [`Captured::Query`];
//! - `Parse` (`P`): the prepared statement name, then the query string (both C strings),
//!   then parameter types (ignored) → [`Captured::Parse`];
//! - `Bind` (`B`) and `Execute` (`E`): counted ([`StatementTap::binds`],
//!   [`StatementTap::executes`]); parameter values are not captured;
//! - `FunctionCall` (`F`): the function OID, the argument count and each argument's size
//!   (never a value) → [`Captured::FunctionCall`].
//!
//! Memory is bounded: at most `max_text_bytes` of statement text (plus
//! [`NAME_ALLOWANCE`] bytes for a statement name) is kept of a `Q`/`P` body; the rest is
//! skipped and the result marked `truncated`, with an [`Overflow`]: the last
//! `max_text_bytes / 2` bytes (so a long leading comment cannot hide the statement), and
//! the whole text's length and SHA-256, hashed as it streams by without holding it. Every other message (a 100 MB CopyData, say)
//! is skipped by counting its bytes, without allocating. Text is decoded as UTF-8 lossily
//! (invalid sequences become U+FFFD); a cut never splits a valid UTF-8 character.
//!
//! The tap only observes: it never changes the bytes the relay forwards. Do not feed it the
//! StartupMessage, SSLRequest or authentication messages (the StartupMessage has no type
//! byte). A message length below 4 makes [`StatementTap::feed`] return
//! [`TapError::BadLength`]; after that the tap is stopped (every later feed returns
//! [`TapError::Stopped`]). The relay should then stop tapping that session (and record that
//! it did) but keep relaying: the server, which sees the same bytes, will end the session
//! with its own protocol error.

/// Default cap on captured statement text per message, in bytes (8 KiB).
pub const DEFAULT_MAX_TEXT_BYTES: usize = 8 * 1024;

/// Bytes of a Parse message's statement name kept (PostgreSQL itself keeps 63).
pub const NAME_ALLOWANCE: usize = 256;

/// Most FunctionCall argument sizes recorded per call (the count is always exact).
pub const MAX_FUNCTION_ARGS_RECORDED: usize = 100;

/// What is kept of a statement text longer than the cap, besides its head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overflow {
    /// The text's last bytes (at most half the cap, after the head; lossy UTF-8, not
    /// starting inside a character).
    pub tail: String,
    /// The whole text's length, in bytes.
    pub bytes: u64,
    /// SHA-256 of the whole text's bytes, lowercase hex.
    pub sha256: String,
}

/// A statement seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Captured {
    /// A simple-protocol Query message.
    Query {
        /// The SQL text, at most `max_text_bytes` bytes of it.
        text: String,
        /// Whether `text` was cut.
        truncated: bool,
        /// Tail, length and hash when the text was longer than the cap.
        overflow: Option<Overflow>,
    },
    /// An extended-protocol Parse message.
    Parse {
        /// The prepared statement name (empty for the unnamed statement).
        statement: String,
        /// The SQL text, at most `max_text_bytes` bytes of it.
        text: String,
        /// Whether `text` (or the name) was cut.
        truncated: bool,
        /// Tail, length and hash when the text was longer than the cap.
        overflow: Option<Overflow>,
    },
    /// A FunctionCall message (the protocol's "fast path").
    FunctionCall {
        /// The function's OID.
        oid: u32,
        /// The argument count the message declares.
        args: u16,
        /// Each argument's size in bytes (-1 for NULL), the first
        /// [`MAX_FUNCTION_ARGS_RECORDED`]; values are never kept.
        arg_bytes: Vec<i32>,
    },
}

/// Follows the statement text inside a Q/P body as it streams by: length, SHA-256 and the
/// last `tail_cap` bytes, without holding the text.
#[derive(Debug, Clone)]
struct TextTracker {
    /// 0: in a Parse's name, 1: in the text, 2: after the text.
    phase: u8,
    hasher: sha2::Sha256,
    len: u64,
    tail: Vec<u8>,
    tail_cap: usize,
}

impl TextTracker {
    fn new(kind: u8, tail_cap: usize) -> Self {
        use sha2::Digest as _;
        Self {
            phase: if kind == b'P' { 0 } else { 1 },
            hasher: sha2::Sha256::new(),
            len: 0,
            tail: Vec::new(),
            tail_cap,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        use sha2::Digest as _;
        while !bytes.is_empty() && self.phase < 2 {
            let nul = bytes.iter().position(|&b| b == 0);
            let (part, rest) = match nul {
                Some(i) => (&bytes[..i], &bytes[i + 1..]),
                None => (bytes, &[][..]),
            };
            if self.phase == 1 {
                self.hasher.update(part);
                self.len += part.len() as u64;
                // Keeps at most 3 × tail_cap bytes (reserved once): the last tail_cap bytes
                // are always there.
                if self.tail.capacity() == 0 {
                    self.tail.reserve_exact(3 * self.tail_cap.max(1));
                }
                if part.len() >= self.tail_cap {
                    self.tail.clear();
                    self.tail
                        .extend_from_slice(&part[part.len() - self.tail_cap..]);
                } else {
                    if self.tail.len() + part.len() > 3 * self.tail_cap {
                        let excess = self.tail.len() - self.tail_cap;
                        self.tail.drain(..excess);
                    }
                    self.tail.extend_from_slice(part);
                }
            }
            if nul.is_some() {
                self.phase += 1;
            }
            bytes = rest;
        }
    }

    /// The [`Overflow`] for a text whose head kept `head_len` bytes.
    fn overflow(self, head_len: usize) -> Overflow {
        use sha2::Digest as _;
        let after_head = usize::try_from(self.len)
            .unwrap_or(usize::MAX)
            .saturating_sub(head_len);
        let keep = after_head.min(self.tail_cap).min(self.tail.len());
        let mut tail = &self.tail[self.tail.len() - keep..];
        // Do not start inside a UTF-8 character.
        while let Some((&b, rest)) = tail.split_first() {
            if b & 0xC0 != 0x80 {
                break;
            }
            tail = rest;
        }
        let digest = self.hasher.finalize();
        Overflow {
            tail: String::from_utf8_lossy(tail).into_owned(),
            bytes: self.len,
            sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// Streams a FunctionCall body: OID, format codes, arguments (sizes only), result format.
#[derive(Debug, Clone, Default)]
struct FunctionParser {
    /// Bytes of the current fixed-size field collected so far.
    field: [u8; 4],
    have: usize,
    /// 0 OID, 1 format-code count, 2 format codes, 3 argument count, 4 argument length,
    /// 5 argument value, 6 result format and after.
    step: u8,
    /// Format codes (step 2) or argument bytes (step 5) still to skip; arguments left.
    skip: usize,
    args_left: u16,
    oid: u32,
    args: u16,
    arg_bytes: Vec<i32>,
}

impl FunctionParser {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.step {
                2 | 5 => {
                    let n = self.skip.min(bytes.len());
                    self.skip -= n;
                    bytes = &bytes[n..];
                    if self.skip == 0 {
                        self.step = if self.step == 2 { 3 } else { self.next_arg() };
                    }
                    continue;
                }
                6.. => return,
                _ => {}
            }
            let width = if matches!(self.step, 0 | 4) { 4 } else { 2 };
            let n = (width - self.have).min(bytes.len());
            self.field[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < width {
                return;
            }
            self.have = 0;
            let [a, b, c, d] = self.field;
            match self.step {
                0 => {
                    self.oid = u32::from_be_bytes([a, b, c, d]);
                    self.step = 1;
                }
                1 => {
                    self.skip = 2 * usize::from(u16::from_be_bytes([a, b]));
                    self.step = if self.skip == 0 { 3 } else { 2 };
                }
                3 => {
                    self.args = u16::from_be_bytes([a, b]);
                    self.args_left = self.args;
                    self.step = if self.args == 0 { 6 } else { 4 };
                }
                _ => {
                    let len = i32::from_be_bytes([a, b, c, d]);
                    if self.arg_bytes.len() < MAX_FUNCTION_ARGS_RECORDED {
                        self.arg_bytes.push(len);
                    }
                    self.skip = usize::try_from(len).unwrap_or(0);
                    self.step = if self.skip == 0 { self.next_arg() } else { 5 };
                }
            }
        }
    }

    /// After one argument: the next one's length, or the result format.
    fn next_arg(&mut self) -> u8 {
        self.args_left = self.args_left.saturating_sub(1);
        if self.args_left == 0 {
            6
        } else {
            4
        }
    }
}

/// Why the tap stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TapError {
    /// A message declared a length below 4 (its length field alone takes 4 bytes).
    #[error("frontend message type {kind:#04x} declares an invalid length {len}")]
    BadLength {
        /// The message type byte.
        kind: u8,
        /// The declared length.
        len: i32,
    },
    /// The tap stopped at an earlier error and no longer parses.
    #[error("statement tap stopped after an earlier protocol error")]
    Stopped,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Collecting the 5-byte header (`have` bytes so far, in `header`).
    Header { have: usize },
    /// Inside a Q/P body: `remaining` bytes still to come, `total` in all.
    Capture {
        kind: u8,
        remaining: usize,
        total: usize,
    },
    /// Inside a FunctionCall body (`function` parses it).
    Function { remaining: usize },
    /// Inside any other body.
    Skip { kind: u8, remaining: usize },
    /// After an error.
    Stopped,
}

/// Parses frontend messages out of a byte stream split anywhere; see the module docs.
#[derive(Debug)]
pub struct StatementTap {
    max_text: usize,
    state: State,
    header: [u8; 5],
    body: Vec<u8>,
    text: Option<TextTracker>,
    function: FunctionParser,
    binds: u64,
    executes: u64,
    statements: u64,
}

impl Default for StatementTap {
    fn default() -> Self {
        StatementTap::new(DEFAULT_MAX_TEXT_BYTES)
    }
}

impl StatementTap {
    /// A tap that keeps at most `max_text_bytes` bytes of each statement's text.
    pub fn new(max_text_bytes: usize) -> StatementTap {
        StatementTap {
            max_text: max_text_bytes,
            state: State::Header { have: 0 },
            header: [0; 5],
            body: Vec::new(),
            text: None,
            function: FunctionParser::default(),
            binds: 0,
            executes: 0,
            statements: 0,
        }
    }

    /// Bind messages seen so far.
    pub fn binds(&self) -> u64 {
        self.binds
    }

    /// Execute messages seen so far.
    pub fn executes(&self) -> u64 {
        self.executes
    }

    /// Statements (Query and Parse messages) reported so far.
    pub fn statements(&self) -> u64 {
        self.statements
    }

    /// Whether the tap stopped at a protocol error.
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, State::Stopped)
    }

    /// Bytes the capture buffer may hold for one message.
    fn capture_limit(&self) -> usize {
        NAME_ALLOWANCE + 1 + self.max_text + 1
    }

    /// Consume the next `chunk` of client → server bytes, calling `emit` for each Query or
    /// Parse message completed by it, in order.
    ///
    /// Errors: [`TapError::BadLength`] on a message length below 4; [`TapError::Stopped`]
    /// on every call after an error.
    pub fn feed(&mut self, chunk: &[u8], emit: &mut impl FnMut(Captured)) -> Result<(), TapError> {
        let mut input = chunk;
        loop {
            match self.state {
                State::Stopped => return Err(TapError::Stopped),
                State::Header { have } => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    let n = (5 - have).min(input.len());
                    self.header[have..have + n].copy_from_slice(&input[..n]);
                    input = &input[n..];
                    if have + n < 5 {
                        self.state = State::Header { have: have + n };
                        return Ok(());
                    }
                    let kind = self.header[0];
                    let len = i32::from_be_bytes([
                        self.header[1],
                        self.header[2],
                        self.header[3],
                        self.header[4],
                    ]);
                    let Some(total) = len.checked_sub(4).and_then(|b| usize::try_from(b).ok())
                    else {
                        self.state = State::Stopped;
                        return Err(TapError::BadLength { kind, len });
                    };
                    if kind == b'Q' || kind == b'P' {
                        self.body.clear();
                        let want = self.capture_limit().min(total);
                        if self.body.capacity() < want {
                            self.body.reserve_exact(want);
                        }
                        // Only a body longer than the cap can hold a text longer than it.
                        self.text = (total > self.max_text)
                            .then(|| TextTracker::new(kind, self.max_text / 2));
                        self.state = State::Capture {
                            kind,
                            remaining: total,
                            total,
                        };
                    } else if kind == b'F' {
                        self.function = FunctionParser::default();
                        self.state = State::Function { remaining: total };
                    } else {
                        self.state = State::Skip {
                            kind,
                            remaining: total,
                        };
                    }
                }
                State::Capture {
                    kind,
                    remaining,
                    total,
                } => {
                    let n = remaining.min(input.len());
                    let keep = n.min(self.capture_limit().saturating_sub(self.body.len()));
                    self.body.extend_from_slice(&input[..keep]);
                    if let Some(text) = self.text.as_mut() {
                        text.feed(&input[..n]);
                    }
                    input = &input[n..];
                    if n < remaining {
                        self.state = State::Capture {
                            kind,
                            remaining: remaining - n,
                            total,
                        };
                        return Ok(());
                    }
                    let whole = self.body.len() == total;
                    emit(self.finish(kind, whole));
                    self.statements += 1;
                    self.state = State::Header { have: 0 };
                }
                State::Function { remaining } => {
                    let n = remaining.min(input.len());
                    self.function.feed(&input[..n]);
                    input = &input[n..];
                    if n < remaining {
                        self.state = State::Function {
                            remaining: remaining - n,
                        };
                        return Ok(());
                    }
                    let f = std::mem::take(&mut self.function);
                    emit(Captured::FunctionCall {
                        oid: f.oid,
                        args: f.args,
                        arg_bytes: f.arg_bytes,
                    });
                    self.statements += 1;
                    self.state = State::Header { have: 0 };
                }
                State::Skip { kind, remaining } => {
                    let n = remaining.min(input.len());
                    input = &input[n..];
                    if n < remaining {
                        self.state = State::Skip {
                            kind,
                            remaining: remaining - n,
                        };
                        return Ok(());
                    }
                    match kind {
                        b'B' => self.binds += 1,
                        b'E' => self.executes += 1,
                        _ => {}
                    }
                    self.state = State::Header { have: 0 };
                }
            }
        }
    }

    /// Decode the captured body of a finished Q/P message (`whole`: nothing was skipped).
    fn finish(&mut self, kind: u8, whole: bool) -> Captured {
        let tracker = self.text.take();
        let body = self.body.as_slice();
        // The tail, length and hash of a text longer than the cap (the head keeps
        // `head.len()` bytes of it).
        let overflow = |head: &str, tracker: Option<TextTracker>| {
            tracker
                .filter(|t| t.len > self.max_text as u64)
                .map(|t| t.overflow(head.len()))
        };
        if kind == b'Q' {
            let (text, truncated) = self.text(body, whole);
            let overflow = overflow(&text, tracker);
            return Captured::Query {
                text,
                truncated,
                overflow,
            };
        }
        match body.iter().position(|&b| b == 0) {
            Some(nul) => {
                let (name, name_cut) = cut(&body[..nul], NAME_ALLOWANCE);
                let (text, truncated) = self.text(&body[nul + 1..], whole);
                let overflow = overflow(&text, tracker);
                Captured::Parse {
                    statement: name,
                    text,
                    truncated: truncated || name_cut,
                    overflow,
                }
            }
            None => {
                // No end of the name within what we kept: a (malformed or absurd) name.
                let (name, name_cut) = cut(body, NAME_ALLOWANCE);
                let overflow = overflow("", tracker);
                Captured::Parse {
                    statement: name,
                    text: String::new(),
                    truncated: name_cut || !whole,
                    overflow,
                }
            }
        }
    }

    /// The C string at the start of `bytes`, cut to `max_text`.
    fn text(&self, bytes: &[u8], whole: bool) -> (String, bool) {
        let (raw, terminated) = match bytes.iter().position(|&b| b == 0) {
            Some(nul) => (&bytes[..nul], true),
            None => (bytes, false),
        };
        let (text, cut_here) = cut(raw, self.max_text);
        (text, cut_here || !(terminated || whole))
    }
}

/// At most `max` bytes of `raw` (not splitting a valid UTF-8 character), decoded lossily;
/// and whether anything was cut.
fn cut(raw: &[u8], max: usize) -> (String, bool) {
    if raw.len() <= max {
        return (String::from_utf8_lossy(raw).into_owned(), false);
    }
    let mut end = max;
    if let Err(e) = std::str::from_utf8(&raw[..end]) {
        if e.error_len().is_none() {
            end = e.valid_up_to(); // a character cut in half at the end
        }
    }
    (String::from_utf8_lossy(&raw[..end]).into_owned(), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use postgres_protocol::message::frontend;
    use postgres_protocol::IsNull;

    fn run(tap: &mut StatementTap, stream: &[u8], chunk: usize) -> Vec<Captured> {
        let mut out = Vec::new();
        for piece in stream.chunks(chunk) {
            tap.feed(piece, &mut |c| out.push(c)).unwrap();
        }
        out
    }

    fn bind(statement: &str, buf: &mut BytesMut) {
        frontend::bind(
            "",
            statement,
            [1i16],
            [7i32, 8],
            |v, buf| {
                buf.put_i32(v);
                Ok(IsNull::No)
            },
            [1i16],
            buf,
        )
        .map_err(|_| "bind")
        .unwrap();
    }

    /// A mixed session and what the tap must report for it.
    fn session() -> (BytesMut, Vec<Captured>) {
        let mut buf = BytesMut::new();
        frontend::query("SELECT 1", &mut buf).unwrap();
        frontend::parse("s1", "SELECT $1::int + $2", [23, 23], &mut buf).unwrap();
        frontend::describe(b'S', "s1", &mut buf).unwrap();
        bind("s1", &mut buf);
        frontend::execute("", 0, &mut buf).unwrap();
        frontend::sync(&mut buf);
        frontend::query("", &mut buf).unwrap();
        frontend::parse("", "INSERT INTO t VALUES ('é')", None, &mut buf).unwrap();
        bind("", &mut buf);
        frontend::execute("", 10, &mut buf).unwrap();
        frontend::flush(&mut buf);
        frontend::query("COPY t FROM STDIN", &mut buf).unwrap();
        frontend::CopyData::new(&[b'x'; 1000][..])
            .unwrap()
            .write(&mut buf);
        frontend::copy_done(&mut buf);
        frontend::close(b'S', "s1", &mut buf).unwrap();
        frontend::sync(&mut buf);
        frontend::terminate(&mut buf);
        let expected = vec![
            Captured::Query {
                text: "SELECT 1".into(),
                truncated: false,
                overflow: None,
            },
            Captured::Parse {
                statement: "s1".into(),
                text: "SELECT $1::int + $2".into(),
                truncated: false,
                overflow: None,
            },
            Captured::Query {
                text: String::new(),
                truncated: false,
                overflow: None,
            },
            Captured::Parse {
                statement: String::new(),
                text: "INSERT INTO t VALUES ('é')".into(),
                truncated: false,
                overflow: None,
            },
            Captured::Query {
                text: "COPY t FROM STDIN".into(),
                truncated: false,
                overflow: None,
            },
        ];
        (buf, expected)
    }

    #[test]
    fn every_chunk_size() {
        let (stream, expected) = session();
        for chunk in 1..=stream.len() {
            let mut tap = StatementTap::default();
            let got = run(&mut tap, &stream, chunk);
            assert_eq!(got, expected, "chunk size {chunk}");
            assert_eq!((tap.binds(), tap.executes(), tap.statements()), (2, 2, 5));
        }
    }

    #[test]
    fn pipelined_extended_protocol() {
        let mut buf = BytesMut::new();
        let mut expected = Vec::new();
        for i in 0..50 {
            let name = format!("st{i}");
            let sql = format!("SELECT {i} WHERE $1 = $2");
            frontend::parse(&name, &sql, [23, 23], &mut buf).unwrap();
            bind(&name, &mut buf);
            frontend::execute("", 0, &mut buf).unwrap();
            bind(&name, &mut buf);
            frontend::execute("", 0, &mut buf).unwrap();
            expected.push(Captured::Parse {
                statement: name,
                text: sql,
                truncated: false,
                overflow: None,
            });
        }
        frontend::sync(&mut buf);
        for chunk in [1, 7, 64, 1500, buf.len()] {
            let mut tap = StatementTap::default();
            assert_eq!(run(&mut tap, &buf, chunk), expected);
            assert_eq!(
                (tap.binds(), tap.executes(), tap.statements()),
                (100, 100, 50)
            );
        }
    }

    #[test]
    fn huge_copy_data_is_skipped_without_allocating() {
        let mut tap = StatementTap::default();
        let mut out = Vec::new();
        let mut buf = BytesMut::new();
        frontend::query("COPY big FROM STDIN", &mut buf).unwrap();
        tap.feed(&buf, &mut |c| out.push(c)).unwrap();
        let cap_before = tap.body.capacity();

        let body_len: usize = 150 * 1024 * 1024;
        let mut header = vec![b'd'];
        header.extend_from_slice(&i32::try_from(body_len + 4).unwrap().to_be_bytes());
        tap.feed(&header, &mut |c| out.push(c)).unwrap();
        let block = vec![b'q'; 64 * 1024];
        let mut left = body_len;
        while left > 0 {
            let n = left.min(block.len());
            tap.feed(&block[..n], &mut |c| out.push(c)).unwrap();
            left -= n;
        }
        assert_eq!(tap.body.capacity(), cap_before);
        let mut tail = BytesMut::new();
        frontend::copy_done(&mut tail);
        frontend::query("SELECT 2", &mut tail).unwrap();
        tap.feed(&tail, &mut |c| out.push(c)).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[1],
            Captured::Query {
                text: "SELECT 2".into(),
                truncated: false,
                overflow: None,
            }
        );
        assert!(tap.body.capacity() <= DEFAULT_MAX_TEXT_BYTES + NAME_ALLOWANCE + 2);
    }

    /// The expected [`Overflow`] of `text` keeping its last `tail` bytes.
    fn overflow(text: &str, tail: usize) -> Overflow {
        use sha2::Digest as _;
        Overflow {
            tail: text[text.len() - tail..].to_owned(),
            bytes: text.len() as u64,
            sha256: sha2::Sha256::digest(text.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        }
    }

    /// A long leading comment cannot hide the statement: the tail keeps it, and the
    /// length and hash cover the whole text, whatever the chunking (memory stays bounded:
    /// the tail buffer never exceeds twice its cap).
    #[test]
    fn over_cap_statements_keep_head_tail_length_and_hash() {
        let max = 64;
        let sql = format!("/* {} */ DROP TABLE orders", "padding ".repeat(5000));
        let mut buf = BytesMut::new();
        frontend::query(&sql, &mut buf).unwrap();
        frontend::parse("st", &sql, [23], &mut buf).unwrap();
        for chunk in [1, 7, 4096, buf.len()] {
            let mut tap = StatementTap::new(max);
            let mut got = Vec::new();
            for piece in buf.chunks(chunk) {
                tap.feed(piece, &mut |c| got.push(c)).unwrap();
                let held = tap.text.as_ref().map_or(0, |t| t.tail.capacity());
                assert!(held <= 4 * max, "tail buffer grew to {held}");
            }
            for c in got {
                let (Captured::Query { overflow, .. } | Captured::Parse { overflow, .. }) = c
                else {
                    panic!("unexpected {c:?}");
                };
                let o = overflow.unwrap();
                assert_eq!(o, overflow_of(&sql, max / 2), "chunk {chunk}");
                assert!(o.tail.ends_with("DROP TABLE orders"));
            }
        }
        fn overflow_of(text: &str, tail: usize) -> Overflow {
            overflow(text, tail)
        }
    }

    /// FunctionCall: OID, argument count and sizes (NULL is -1), never the values.
    #[test]
    fn function_calls_record_oid_and_argument_sizes_only() {
        let mut body = Vec::new();
        body.extend_from_slice(&1234u32.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes()); // one format code
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&3i16.to_be_bytes()); // three arguments
        body.extend_from_slice(&6i32.to_be_bytes());
        body.extend_from_slice(b"secret");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0i32.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes()); // result format
        let mut msg = vec![b'F'];
        msg.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        msg.extend_from_slice(&body);
        frontend::query("SELECT 1", &mut BytesMut::new()).unwrap();
        let mut after = BytesMut::new();
        frontend::query("SELECT 1", &mut after).unwrap();
        msg.extend_from_slice(&after);
        for chunk in 1..=msg.len() {
            let mut tap = StatementTap::default();
            let got = run(&mut tap, &msg, chunk);
            assert_eq!(
                got[0],
                Captured::FunctionCall {
                    oid: 1234,
                    args: 3,
                    arg_bytes: vec![6, -1, 0],
                },
                "chunk {chunk}"
            );
            assert!(!format!("{got:?}").contains("secret"));
            assert_eq!(got.len(), 2);
        }
    }

    #[test]
    fn long_statements_are_truncated_with_bounded_memory() {
        let max = 100;
        let long = "x".repeat(10_000);
        let mut buf = BytesMut::new();
        frontend::query(&long, &mut buf).unwrap();
        frontend::parse("p", &long, None, &mut buf).unwrap();
        frontend::query(&"y".repeat(max), &mut buf).unwrap();
        frontend::query(&"z".repeat(max + 1), &mut buf).unwrap();
        for chunk in [1, 33, buf.len()] {
            let mut tap = StatementTap::new(max);
            let got = run(&mut tap, &buf, chunk);
            assert_eq!(
                got,
                vec![
                    Captured::Query {
                        text: "x".repeat(max),
                        truncated: true,
                        overflow: Some(overflow(&long, max / 2)),
                    },
                    Captured::Parse {
                        statement: "p".into(),
                        text: "x".repeat(max),
                        truncated: true,
                        overflow: Some(overflow(&long, max / 2)),
                    },
                    Captured::Query {
                        text: "y".repeat(max),
                        truncated: false,
                        overflow: None,
                    },
                    Captured::Query {
                        text: "z".repeat(max),
                        truncated: true,
                        overflow: Some(overflow(&"z".repeat(max + 1), 1)),
                    },
                ]
            );
            assert!(tap.body.capacity() <= max + NAME_ALLOWANCE + 2);
            assert!(tap.text.is_none());
        }
    }

    #[test]
    fn truncation_does_not_split_a_character() {
        let mut buf = BytesMut::new();
        frontend::query("ééé", &mut buf).unwrap();
        let mut tap = StatementTap::new(5);
        assert_eq!(
            run(&mut tap, &buf, 2),
            vec![Captured::Query {
                text: "éé".into(),
                truncated: true,
                overflow: Some(overflow("ééé", 2)),
            }]
        );
    }

    #[test]
    fn invalid_utf8_is_decoded_lossily() {
        let body = b"SELECT '\xff\xfe'\0";
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        msg.extend_from_slice(body);
        let mut tap = StatementTap::default();
        assert_eq!(
            run(&mut tap, &msg, 3),
            vec![Captured::Query {
                text: "SELECT '\u{fffd}\u{fffd}'".into(),
                truncated: false,
                overflow: None,
            }]
        );
    }

    #[test]
    fn bad_length_stops_the_tap() {
        let mut tap = StatementTap::default();
        let mut out = Vec::new();
        let err = tap
            .feed(b"Q\0\0\0\x03abc", &mut |c| out.push(c))
            .unwrap_err();
        assert_eq!(err, TapError::BadLength { kind: b'Q', len: 3 });
        assert!(tap.is_stopped());
        assert_eq!(tap.feed(b"x", &mut |c| out.push(c)), Err(TapError::Stopped));
        let mut tap = StatementTap::default();
        let err = tap
            .feed(&[b'd', 0xff, 0xff, 0xff, 0xff], &mut |c| out.push(c))
            .unwrap_err();
        assert_eq!(
            err,
            TapError::BadLength {
                kind: b'd',
                len: -1
            }
        );
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_bodies_do_not_panic() {
        // A Query without its NUL and a Parse that is only a name, whole or cut short.
        let mut tap = StatementTap::new(4);
        let mut out = Vec::new();
        tap.feed(b"Q\0\0\0\x06ab", &mut |c| out.push(c)).unwrap();
        tap.feed(b"P\0\0\0\x06st", &mut |c| out.push(c)).unwrap();
        tap.feed(b"P\0\0\x01\x06", &mut |c| out.push(c)).unwrap();
        tap.feed(&[b'n'; 258], &mut |c| out.push(c)).unwrap();
        assert_eq!(
            out,
            vec![
                Captured::Query {
                    text: "ab".into(),
                    truncated: false,
                    overflow: None,
                },
                Captured::Parse {
                    statement: "st".into(),
                    text: String::new(),
                    truncated: false,
                    overflow: None,
                },
                Captured::Parse {
                    statement: "n".repeat(NAME_ALLOWANCE),
                    text: String::new(),
                    truncated: true,
                    overflow: None,
                },
            ]
        );
    }
}
