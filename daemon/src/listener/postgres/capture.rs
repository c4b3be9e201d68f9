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
//!   [`StatementTap::executes`]); parameter values are not captured.
//!
//! Memory is bounded: at most `max_text_bytes` of statement text (plus
//! [`NAME_ALLOWANCE`] bytes for a statement name) is kept of a `Q`/`P` body; the rest is
//! skipped and the result marked `truncated`. Every other message (a 100 MB CopyData, say)
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

/// A statement seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Captured {
    /// A simple-protocol Query message.
    Query {
        /// The SQL text, at most `max_text_bytes` bytes of it.
        text: String,
        /// Whether `text` was cut.
        truncated: bool,
    },
    /// An extended-protocol Parse message.
    Parse {
        /// The prepared statement name (empty for the unnamed statement).
        statement: String,
        /// The SQL text, at most `max_text_bytes` bytes of it.
        text: String,
        /// Whether `text` (or the name) was cut.
        truncated: bool,
    },
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
                        self.state = State::Capture {
                            kind,
                            remaining: total,
                            total,
                        };
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
    fn finish(&self, kind: u8, whole: bool) -> Captured {
        let body = self.body.as_slice();
        if kind == b'Q' {
            let (text, truncated) = self.text(body, whole);
            return Captured::Query { text, truncated };
        }
        match body.iter().position(|&b| b == 0) {
            Some(nul) => {
                let (name, name_cut) = cut(&body[..nul], NAME_ALLOWANCE);
                let (text, truncated) = self.text(&body[nul + 1..], whole);
                Captured::Parse {
                    statement: name,
                    text,
                    truncated: truncated || name_cut,
                }
            }
            None => {
                // No end of the name within what we kept: a (malformed or absurd) name.
                let (name, name_cut) = cut(body, NAME_ALLOWANCE);
                Captured::Parse {
                    statement: name,
                    text: String::new(),
                    truncated: name_cut || !whole,
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
            },
            Captured::Parse {
                statement: "s1".into(),
                text: "SELECT $1::int + $2".into(),
                truncated: false,
            },
            Captured::Query {
                text: String::new(),
                truncated: false,
            },
            Captured::Parse {
                statement: String::new(),
                text: "INSERT INTO t VALUES ('é')".into(),
                truncated: false,
            },
            Captured::Query {
                text: "COPY t FROM STDIN".into(),
                truncated: false,
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
                truncated: false
            }
        );
        assert!(tap.body.capacity() <= DEFAULT_MAX_TEXT_BYTES + NAME_ALLOWANCE + 2);
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
                        truncated: true
                    },
                    Captured::Parse {
                        statement: "p".into(),
                        text: "x".repeat(max),
                        truncated: true
                    },
                    Captured::Query {
                        text: "y".repeat(max),
                        truncated: false
                    },
                    Captured::Query {
                        text: "z".repeat(max),
                        truncated: true
                    },
                ]
            );
            assert!(tap.body.capacity() <= max + NAME_ALLOWANCE + 2);
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
                truncated: true
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
                truncated: false
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
                    truncated: false
                },
                Captured::Parse {
                    statement: "st".into(),
                    text: String::new(),
                    truncated: false
                },
                Captured::Parse {
                    statement: "n".repeat(NAME_ALLOWANCE),
                    text: String::new(),
                    truncated: true
                },
            ]
        );
    }
}
