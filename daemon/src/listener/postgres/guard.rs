//! The password-change guard: refuses `ALTER ROLE|USER … [ENCRYPTED] PASSWORD …` before it
//! reaches the server.
//!
//! A grant's upstream login is agentd's: if a session could change that role's password, the
//! agent would hold a login of its own choosing (no TTL, no revoke, no audit) and agentd's
//! stored secret would stop working. The guard sits on the client → server byte stream of an
//! authenticated session ([`GuardedStream`] wraps the client socket, so the relay itself is
//! unchanged) and decides every simple Query (`Q`) and extended-protocol Parse (`P`) with
//! PostgreSQL's own grammar (the `pg_query` crate wraps the server's parser).
//!
//! **Buffering.** Only `Q` and `P` are held until whole; every other message streams through
//! untouched (a 100 MB CopyData costs no memory). A `Q`/`P` whose length is at most
//! [`MAX_INSPECTED_MESSAGE_BYTES`] is held whole (that much memory per session at most), then
//! forwarded or replaced. A longer one cannot be held: it streams through except its last
//! byte (the server does not run a message it has not received whole) while an ASCII scan
//! looks for the keyword `password`; without the keyword the last byte follows and the
//! statement runs; with it, the session is closed before the message completes, so the
//! server never runs it (recorded as `statement_refused`).
//!
//! **Deciding.** A fast pre-filter first: statements without the ASCII bytes `password` (any
//! case) pass at once. This is sound because SQL keywords cannot be quoted or escaped
//! (`"password"` or `U&"…"` is an identifier, never the keyword). Text with the keyword is
//! parsed twice, with `standard_conforming_strings` on and off (a client may turn it off, and
//! the same bytes then lex differently), and refused when either parse holds an
//! `AlterRoleStmt` with a `password` option (that covers `ALTER USER`, `ENCRYPTED`,
//! `PASSWORD NULL`, every role specification, multi-statement strings and comments between
//! tokens). When neither parse succeeds the server cannot parse it either (its session is in
//! one of the two modes), but as a second line the token stream is scanned and the text is
//! refused when it holds the keywords `ALTER`, `ROLE`/`USER` and `PASSWORD`. Text that is not
//! valid UTF-8 and holds the keyword is refused: in client encodings such as SJIS or GBK an
//! ASCII byte (a backslash, a quote) can be the second half of a character, so our reading of
//! the bytes could differ from the server's.
//!
//! **Refusing.** The refused message is rewritten, not dropped: a `Q` becomes a `Q` and a `P`
//! a `P` (same statement name, same declared parameter types) holding a `DO` block that makes
//! the *server* raise the error (SQLSTATE 42501, our message and hint). So ReadyForQuery and
//! its transaction status, the error-skips-to-Sync rule of the extended protocol, and a failed
//! transaction block all stay the server's own; the guard tracks no protocol state. A whole
//! multi-statement `Q` is refused, which is what the server does with a multi-statement string
//! when one of its statements fails (it runs as one implicit transaction). A refused `P`
//! parses fine (`ParseComplete`) and raises when executed, so clients see the error at
//! Execute. The audit's `statement` record shows the `DO` text the server received; the
//! `statement_refused` record holds the original, redacted.
//!
//! **Not covered.** Dynamic SQL (`DO` blocks, `EXECUTE` in functions, `format()`) builds the
//! statement on the server where no wire inspection can see it; the broker's login check
//! after each grant catches the result.

use crate::audit::redact::redact_secrets;
use pg_query::protobuf::Token;
use pg_query::{NodeRef, ParserOptions};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest `Q`/`P` message held whole for inspection, in bytes (1 MiB); see the module docs
/// for what happens to longer ones.
pub const MAX_INSPECTED_MESSAGE_BYTES: usize = 1024 * 1024;

/// SQLSTATE of a refusal: `insufficient_privilege`.
pub const REFUSED_SQLSTATE: &str = "42501";

/// What the client reads when a statement is refused.
pub const REFUSED_MESSAGE: &str = "agentd refused this statement: it changes a role's password (ALTER ROLE/USER ... PASSWORD). The login this grant uses belongs to agentd; changing it would let a session outlive the grant and escape its audit";

/// The hint that goes with [`REFUSED_MESSAGE`].
pub const REFUSED_HINT: &str = "Do not retry or work around it. The session is still usable. Passwords of this resource are managed by its admin (agentd secret set ...); if the task needs a different role, ask for it with request_access";

/// A statement the guard refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// `query` (simple protocol) or `parse` (extended protocol).
    pub kind: &'static str,
    /// The statement text with password literals redacted (at most 8 KiB of it).
    pub text: String,
    /// Why, in words.
    pub reason: &'static str,
}

/// Bytes of refused text kept for the audit record.
const MAX_REFUSED_TEXT_BYTES: usize = 8 * 1024;

/// The verdict on one statement text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it.
    Allow,
    /// Refuse it, for this reason.
    Refuse(&'static str),
}

/// Decides one statement text (the body of a `Q`, or the query string of a `P`); see the
/// module docs for the rules.
pub fn decide(text: &[u8]) -> Verdict {
    if !has_keyword(text) {
        return Verdict::Allow;
    }
    let Ok(sql) = std::str::from_utf8(text) else {
        return Verdict::Refuse(
            "mentions PASSWORD and is not valid UTF-8, so it cannot be inspected",
        );
    };
    let mut parsed_any = false;
    for options in [
        ParserOptions::DEFAULT,
        ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS,
    ] {
        if let Ok(result) = pg_query::parse(sql, options) {
            parsed_any = true;
            if changes_password(&result) {
                return Verdict::Refuse("ALTER ROLE/USER ... PASSWORD");
            }
        }
    }
    if !parsed_any && tokens_look_like_password_change(sql) {
        return Verdict::Refuse("looks like ALTER ROLE/USER ... PASSWORD and could not be parsed");
    }
    Verdict::Allow
}

/// Whether `text` holds the ASCII bytes `password` in any case. Keywords cannot be quoted or
/// escaped, so a statement without these bytes cannot use the keyword `PASSWORD`.
/// One ASCII-case-insensitive searcher (aho-corasick's SIMD prefilter), built once.
fn has_keyword(text: &[u8]) -> bool {
    static KEYWORD: std::sync::LazyLock<Option<aho_corasick::AhoCorasick>> =
        std::sync::LazyLock::new(|| {
            aho_corasick::AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(["password"])
                .ok()
        });
    match KEYWORD.as_ref() {
        Some(searcher) => searcher.is_match(text),
        // Building a one-pattern searcher does not fail; if it ever did, inspect everything.
        None => true,
    }
}

fn changes_password(result: &pg_query::ParseResult) -> bool {
    result.protobuf.nodes().iter().any(|(node, ..)| match node {
        NodeRef::AlterRoleStmt(stmt) => stmt.options.iter().any(|option| {
            matches!(
                option.node.as_ref(),
                Some(pg_query::NodeEnum::DefElem(d)) if d.defname == "password"
            )
        }),
        _ => false,
    })
}

/// The scanner's fallback: keywords `ALTER`, then `ROLE` or `USER`, then `PASSWORD`, in that
/// order, anywhere in the text (strings, comments and identifiers are separate tokens).
fn tokens_look_like_password_change(sql: &str) -> bool {
    let tokens = [
        pg_query::scan_tokens(sql).ok(),
        pg_query::scan(sql).ok().map(|r| r.tokens),
    ];
    let Some(tokens) = tokens.into_iter().flatten().next() else {
        // Not even scannable: a keyword we cannot place; refuse rather than guess.
        return true;
    };
    let mut stage = 0;
    for t in &tokens {
        let tok = Token::try_from(t.token).unwrap_or(Token::Nul);
        stage = match (stage, tok) {
            (0, Token::Alter) => 1,
            (1, Token::Role | Token::User) => 2,
            (2, Token::Password) => return true,
            (s, _) => s,
        };
    }
    false
}

/// The body of a `Q` whose server-side execution raises our refusal.
fn refusal_sql() -> String {
    // Both texts are ours: no `$agentd$` and no quote inside; quote anyway.
    let q = |s: &str| s.replace('\'', "''");
    format!(
        "DO $agentd$BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = '{}', HINT = '{}'; END$agentd$",
        REFUSED_SQLSTATE,
        q(REFUSED_MESSAGE),
        q(REFUSED_HINT)
    )
}

/// Stream state of [`StatementGuard`].
#[derive(Debug)]
enum State {
    /// At a message start, or inside the header of a message that is not `Q`/`P` (its
    /// bytes already forwarded): `have` header bytes in `header`.
    Header { header: [u8; 5], have: usize },
    /// Inside the body of a forwarded message: `remaining` bytes pass through.
    Skip { remaining: usize },
    /// Holding a `Q`/`P` (header included) until it is whole.
    Hold { buf: Vec<u8> },
    /// Streaming an over-cap `Q`/`P`: `remaining` body bytes to come (the last is withheld
    /// until the scan is done), `tail` the last bytes seen (the keyword may straddle reads).
    OverCap {
        kind: u8,
        remaining: usize,
        found: bool,
        tail: Vec<u8>,
    },
    /// The stream broke (a length below 4): everything passes; the server ends the session
    /// at that length and interprets nothing after it.
    Raw,
    /// An over-cap statement was refused: nothing more is forwarded.
    Stopped,
}

/// The guard's state machine over client → server bytes (after authentication), split
/// anywhere; see the module docs.
#[derive(Debug)]
pub struct StatementGuard {
    state: State,
    cap: usize,
}

impl Default for StatementGuard {
    fn default() -> Self {
        Self::new(MAX_INSPECTED_MESSAGE_BYTES)
    }
}

/// What [`StatementGuard::feed`] says about the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep relaying.
    Continue,
    /// Close the session now: an over-cap statement was refused, or the stream broke. The
    /// bytes already in `out` may still be forwarded (they hold no complete refused message).
    Close,
}

impl StatementGuard {
    /// A guard that holds `Q`/`P` messages of at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            state: State::Header {
                header: [0; 5],
                have: 0,
            },
            cap,
        }
    }

    /// How many leading bytes of `input` pass through untouched; the guard's state moves past
    /// them. Stops at the first byte of a `Q`/`P` (or anything the guard must hold), so the
    /// caller can hand the rest to [`StatementGuard::feed`]. The relay's fast path.
    pub fn pass_prefix(&mut self, input: &[u8]) -> usize {
        let mut i = 0;
        loop {
            match &mut self.state {
                State::Skip { remaining } => {
                    let n = (*remaining).min(input.len() - i);
                    *remaining -= n;
                    i += n;
                    if *remaining == 0 {
                        self.state = State::Header {
                            header: [0; 5],
                            have: 0,
                        };
                    }
                    if i == input.len() {
                        return i;
                    }
                }
                State::Header { header, have } => {
                    if i == input.len() {
                        return i;
                    }
                    if *have == 0 && matches!(input[i], b'Q' | b'P') {
                        return i;
                    }
                    let n = (5 - *have).min(input.len() - i);
                    header[*have..*have + n].copy_from_slice(&input[i..i + n]);
                    *have += n;
                    if *have < 5 {
                        return i + n;
                    }
                    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                    match usize::try_from(len).ok().and_then(|l| l.checked_sub(4)) {
                        None => {
                            self.state = State::Raw;
                            return input.len();
                        }
                        Some(body) => {
                            i += n;
                            self.state = State::Skip { remaining: body };
                        }
                    }
                }
                State::Raw => return input.len(),
                _ => return i,
            }
        }
    }

    /// Consumes `input`, appending what may be forwarded to `out` (the input itself, or a
    /// refusal in place of a refused message) and each refusal to `refused`.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        refused: &mut Vec<Refused>,
    ) -> Flow {
        while !input.is_empty() {
            let n = self.pass_prefix(input);
            out.extend_from_slice(&input[..n]);
            input = &input[n..];
            if input.is_empty() {
                break;
            }
            match &mut self.state {
                State::Stopped => return Flow::Close,
                // pass_prefix stops in Header state only at the first byte of a Q/P.
                State::Header { .. } => {
                    self.state = State::Hold {
                        buf: Vec::with_capacity(64),
                    };
                }
                State::Hold { buf } => {
                    if buf.len() < 5 {
                        let n = (5 - buf.len()).min(input.len());
                        buf.extend_from_slice(&input[..n]);
                        input = &input[n..];
                        if buf.len() < 5 {
                            continue;
                        }
                    }
                    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
                    let Some(total) = usize::try_from(len).ok().filter(|&l| l >= 4).map(|l| l + 1)
                    else {
                        // A broken stream: forward it; the server ends the session at the
                        // bad length and runs nothing after it.
                        out.extend_from_slice(buf);
                        self.state = State::Raw;
                        continue;
                    };
                    if total > self.cap {
                        let kind = buf[0];
                        out.extend_from_slice(buf);
                        self.state = State::OverCap {
                            kind,
                            remaining: total - 5,
                            found: false,
                            tail: Vec::new(),
                        };
                        continue;
                    }
                    let n = (total - buf.len()).min(input.len());
                    buf.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if buf.len() == total {
                        let message = std::mem::take(buf);
                        self.state = State::Header {
                            header: [0; 5],
                            have: 0,
                        };
                        match inspect(&message) {
                            None => out.extend_from_slice(&message),
                            Some((replacement, refusal)) => {
                                out.extend_from_slice(&replacement);
                                refused.push(refusal);
                            }
                        }
                    }
                }
                State::OverCap {
                    kind,
                    remaining,
                    found,
                    tail,
                } => {
                    let n = (*remaining).min(input.len());
                    let chunk = &input[..n];
                    if !*found {
                        let mut window = std::mem::take(tail);
                        window.extend_from_slice(chunk);
                        *found = has_keyword(&window);
                        let keep = window.len().min(7);
                        *tail = window[window.len() - keep..].to_vec();
                    }
                    input = &input[n..];
                    *remaining -= n;
                    if *remaining > 0 {
                        out.extend_from_slice(chunk);
                        continue;
                    }
                    // `chunk` ends the message: withhold its last byte unless it is clean.
                    if *found {
                        out.extend_from_slice(&chunk[..n.saturating_sub(1)]);
                        refused.push(Refused {
                            kind: kind_name(*kind),
                            text: String::new(),
                            reason: "longer than the guard inspects and mentions PASSWORD; the session was closed before the statement reached the server",
                        });
                        self.state = State::Stopped;
                        return Flow::Close;
                    }
                    out.extend_from_slice(chunk);
                    self.state = State::Header {
                        header: [0; 5],
                        have: 0,
                    };
                }
                State::Skip { .. } | State::Raw => {}
            }
        }
        Flow::Continue
    }
}

fn kind_name(kind: u8) -> &'static str {
    if kind == b'Q' {
        "query"
    } else {
        "parse"
    }
}

/// Decides a whole `Q`/`P` message (type byte, length, body). `None`: forward it as it is
/// (including a malformed one, which the server rejects itself); otherwise the replacement
/// message and the refusal.
fn inspect(message: &[u8]) -> Option<(Vec<u8>, Refused)> {
    let kind = message[0];
    let body = &message[5..];
    let (name, text, rest) = if kind == b'Q' {
        let end = body.iter().position(|&b| b == 0)?;
        (&[][..], &body[..end], &[][..])
    } else {
        let name_end = body.iter().position(|&b| b == 0)?;
        let after = &body[name_end + 1..];
        let text_end = after.iter().position(|&b| b == 0)?;
        (
            &body[..name_end],
            &after[..text_end],
            &after[text_end + 1..],
        )
    };
    let Verdict::Refuse(reason) = decide(text) else {
        return None;
    };
    let sql = refusal_sql();
    let mut new_body = Vec::with_capacity(name.len() + sql.len() + rest.len() + 2);
    if kind == b'P' {
        new_body.extend_from_slice(name);
        new_body.push(0);
    }
    new_body.extend_from_slice(sql.as_bytes());
    new_body.push(0);
    // Parse: the same declared parameter types, so the client's Bind still fits.
    new_body.extend_from_slice(rest);
    let mut replacement = Vec::with_capacity(new_body.len() + 5);
    replacement.push(kind);
    // Our body is the original's tail plus a fixed text: far below 2 GiB.
    replacement.extend_from_slice(&((new_body.len() + 4) as i32).to_be_bytes());
    replacement.extend_from_slice(&new_body);
    let lossy = String::from_utf8_lossy(text);
    let mut redacted = redact_secrets(&lossy).into_owned();
    if redacted.len() > MAX_REFUSED_TEXT_BYTES {
        let mut cut = MAX_REFUSED_TEXT_BYTES;
        while !redacted.is_char_boundary(cut) {
            cut -= 1;
        }
        redacted.truncate(cut);
    }
    Some((
        replacement,
        Refused {
            kind: kind_name(kind),
            text: redacted,
            reason,
        },
    ))
}

/// The client socket with the guard on its read side: reads come out with refused `Q`/`P`
/// messages replaced (see the module docs); writes pass straight through. `on_refusal` is
/// called once per refusal, from the read path (it must not block for long).
pub struct GuardedStream<S, F> {
    inner: S,
    guard: StatementGuard,
    /// Rewritten bytes waiting for the reader.
    pending: Vec<u8>,
    pending_at: usize,
    /// Close after `pending` drains.
    closing: bool,
    on_refusal: F,
}

impl<S, F: FnMut(Refused)> GuardedStream<S, F> {
    /// Wraps `inner` (the client side of an authenticated session).
    pub fn new(inner: S, on_refusal: F) -> Self {
        Self::with_guard(inner, StatementGuard::default(), on_refusal)
    }

    /// Wraps `inner` with a given guard (tests use a small cap).
    pub fn with_guard(inner: S, guard: StatementGuard, on_refusal: F) -> Self {
        Self {
            inner,
            guard,
            pending: Vec::new(),
            pending_at: 0,
            closing: false,
            on_refusal,
        }
    }
}

impl<S: AsyncRead + Unpin, F: FnMut(Refused) + Unpin> AsyncRead for GuardedStream<S, F> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pending_at < this.pending.len() {
                let n = (this.pending.len() - this.pending_at).min(buf.remaining());
                buf.put_slice(&this.pending[this.pending_at..this.pending_at + n]);
                this.pending_at += n;
                if this.pending_at == this.pending.len() {
                    this.pending.clear();
                    this.pending_at = 0;
                    if this.pending.capacity() > 64 * 1024 {
                        this.pending = Vec::new();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if this.closing {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "agentd guard closed the session",
                )));
            }
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let after = buf.filled().len();
            if after == before {
                return Poll::Ready(Ok(())); // EOF
            }
            let passed = this.guard.pass_prefix(&buf.filled()[before..after]);
            if before + passed == after {
                return Poll::Ready(Ok(()));
            }
            let rest = buf.filled()[before + passed..after].to_vec();
            buf.set_filled(before + passed);
            let mut refused = Vec::new();
            let flow = this.guard.feed(&rest, &mut this.pending, &mut refused);
            for r in refused {
                (this.on_refusal)(r);
            }
            if flow == Flow::Close {
                this.closing = true;
            }
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            // Nothing forwardable yet (a statement still arriving): pending or read again.
        }
    }
}

impl<S: AsyncWrite + Unpin, F: Unpin> AsyncWrite for GuardedStream<S, F> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
