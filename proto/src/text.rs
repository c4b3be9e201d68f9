//! Terminal-safe rendering of text that came from an agent or a client.
//!
//! Justifications, MCP client names, agent types and anything else a client sends reach a
//! human's terminal (the approval prompt, `agentd requests`, `agentd status`, `agentd audit`)
//! and desktop notifications. Raw, such text can move the cursor, clear lines, rewrite the
//! clipboard (OSC 52), hide links (OSC 8) or reorder what the human reads (bidi overrides).
//! [`terminal_safe`] is the one function every human-facing output uses for such text.

use std::fmt::Write as _;

/// Marker appended when [`terminal_safe`] cuts text: `…[cut, N more chars]`.
pub const CUT_MARKER_PREFIX: &str = "…[cut, ";

/// Renders `text` so that printing it cannot control a terminal or hide what it says, cut
/// to at most `max_chars` characters of the input.
///
/// Shape of the result: one line. Every character for which [`is_unsafe`] holds is shown
/// as a visible escape instead: `\n`, `\r`, `\t` for those three, `\xHH` for other C0
/// controls and DEL (`\x1b` for ESC, so an escape sequence shows as `\x1b[2K`), and
/// `\u{HHHH}` for C1 controls and invisible or direction-changing characters (`\u{9b}`,
/// `\u{202e}`, `\u{200b}`). Everything else is kept as is (letters of any script, emoji,
/// backslashes). When `text` has more than `max_chars` characters, the first `max_chars`
/// are rendered and `…[cut, N more chars]` is appended, N counting the characters left out.
pub fn terminal_safe(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars.saturating_mul(4)) + 16);
    let mut chars = text.chars();
    for c in chars.by_ref().take(max_chars) {
        push_safe(&mut out, c);
    }
    let rest = chars.count();
    if rest > 0 {
        let _ = write!(out, "{CUT_MARKER_PREFIX}{rest} more chars]");
    }
    out
}

fn push_safe(out: &mut String, c: char) {
    if !is_unsafe(c) {
        out.push(c);
        return;
    }
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// True for characters [`terminal_safe`] escapes: C0 controls (U+0000–U+001F, including
/// newline and tab), DEL (U+007F), C1 controls (U+0080–U+009F), line and paragraph
/// separators (U+2028, U+2029), bidi marks, embeddings, overrides and isolates (U+061C,
/// U+200E, U+200F, U+202A–U+202E, U+2066–U+2069), zero-width and other invisible format
/// characters (soft hyphen U+00AD, U+180E, U+200B–U+200D, U+2060–U+2064, U+206A–U+206F,
/// U+FEFF, U+FFF9–U+FFFB, Hangul fillers, variation selectors, Unicode tag characters
/// U+E0000–U+E007F) and noncharacters U+FFFE/U+FFFF. The list follows Unicode's general
/// category Cf ("format") and the characters the Trojan Source paper (CVE-2021-42574)
/// names.
pub fn is_unsafe(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{ad}'
        | '\u{34f}'
        | '\u{61c}'
        | '\u{115f}' | '\u{1160}'
        | '\u{17b4}' | '\u{17b5}'
        | '\u{180b}'..='\u{180f}'
        | '\u{200b}'..='\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}'
        | '\u{3164}'
        | '\u{fe00}'..='\u{fe0f}'
        | '\u{feff}'
        | '\u{ffa0}'
        | '\u{fff0}'..='\u{fffb}'
        | '\u{fffe}' | '\u{ffff}'
        | '\u{1d173}'..='\u{1d17a}'
        | '\u{e0000}'..='\u{e007f}'
        | '\u{e0100}'..='\u{e01ef}'
    )
}

/// How humans read who asked: `OS user alice (uid 1000) pid 42, claimed agent cursor
/// (client "Cursor 1.2")`. The OS facts come first; the agent type and client name are the
/// client's claims, labelled so and rendered with [`terminal_safe`] (each cut at its
/// length bound). Without a requester (records of an older daemon) the daemon-stamped pid
/// in `agent`, if any, is shown.
pub fn who_asked(agent: &crate::AgentInfo, requester: Option<&crate::Requester>) -> String {
    let mut s = String::new();
    match requester {
        Some(r) => {
            let _ = write!(
                s,
                "OS user {} (uid {}) pid {}, ",
                terminal_safe(&r.user, 64),
                r.uid,
                r.pid
            );
        }
        None => {
            if let Some(pid) = agent.pid {
                let _ = write!(s, "pid {pid}, ");
            }
        }
    }
    let _ = write!(
        s,
        "claimed agent {}",
        terminal_safe(&agent.agent_type, MAX_AGENT_TYPE_CHARS)
    );
    if let Some(client) = &agent.client_name {
        let _ = write!(
            s,
            " (client \"{}\")",
            terminal_safe(client, MAX_CLIENT_NAME_CHARS).replace('"', "\\\"")
        );
    }
    s
}

/// Longest justification the daemon accepts, in characters.
pub const MAX_JUSTIFICATION_CHARS: usize = 1_000;
/// Longest agent type the daemon accepts, in characters.
pub const MAX_AGENT_TYPE_CHARS: usize = 64;
/// Longest MCP client name (with version) the daemon accepts, in characters.
pub const MAX_CLIENT_NAME_CHARS: usize = 200;
/// Longest deny reason the daemon accepts, in characters.
pub const MAX_REASON_CHARS: usize = 1_000;

/// A log sink that renders what it is given through [`terminal_safe`] (uncut), line by
/// line: `tracing-subscriber`'s fmt layer writes one formatted event per `write` call, so a
/// value that came from a client (an agent type, a client name, a protocol error that
/// quotes input) can neither forge a log line with an embedded newline nor send escape
/// sequences to the terminal of whoever tails the log. The newline that ends each write is
/// kept; every other unsafe character becomes a visible escape. Invalid UTF-8 is replaced
/// (U+FFFD). Use it with ANSI colours off: colour codes would be escaped too.
///
/// Shape: `SafeLines(std::io::stderr())`, or `Mutex::new(SafeLines(file))` as a
/// `MakeWriter`.
#[derive(Debug)]
pub struct SafeLines<W>(pub W);

impl<W: std::io::Write> std::io::Write for SafeLines<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let (body, newline) = match text.strip_suffix('\n') {
            Some(body) => (body, true),
            None => (text.as_ref(), false),
        };
        let mut line = terminal_safe(body, usize::MAX);
        if newline {
            line.push('\n');
        }
        self.0.write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hostile strings the end-to-end test also sends through a real MCP client.
    const HOSTILE: &[&str] = &[
        "\x1b[4A\r\x1b[2K  resource:      staging",
        "\x1b]52;c;ZXZpbA==\x07",
        "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\",
        "\u{9b}31m red via C1 CSI",
        "safe \u{202e}gnp.exe\u{202c} \u{2066}iso\u{2069}",
        "zero\u{200b}width\u{feff}\u{2060}",
        "del\x7f nul\0 bell\x07 bs\x08",
        "mark\u{200e}\u{200f}\u{61c}",
    ];

    #[test]
    fn hostile_strings_come_out_without_controls_or_bidi() {
        for h in HOSTILE {
            let safe = terminal_safe(h, 1_000);
            assert!(!safe.chars().any(is_unsafe), "{safe:?}");
            assert!(!safe.contains('\x1b') && !safe.contains('\r') && !safe.contains('\n'));
        }
        assert_eq!(
            terminal_safe("\x1b[4A\r\x1b[2Kx", 100),
            "\\x1b[4A\\r\\x1b[2Kx"
        );
        assert_eq!(terminal_safe("a\u{9b}b", 100), "a\\u{9b}b");
        assert_eq!(
            terminal_safe("\u{202e}x\u{2066}", 100),
            "\\u{202e}x\\u{2066}"
        );
        assert_eq!(terminal_safe("a\u{200b}b", 100), "a\\u{200b}b");
        assert_eq!(terminal_safe("l1\nl2\tx", 100), "l1\\nl2\\tx");
    }

    #[test]
    fn ordinary_text_is_kept() {
        let s = "Zähle Bestellungen — 注文を数える 🚀 C:\\path 100%";
        assert_eq!(terminal_safe(s, 1_000), s);
    }

    #[test]
    fn long_text_is_cut_with_a_marker() {
        let long = "a".repeat(100 * 1024);
        let safe = terminal_safe(&long, 200);
        assert_eq!(
            safe,
            format!("{}…[cut, {} more chars]", "a".repeat(200), 100 * 1024 - 200)
        );
        assert_eq!(terminal_safe("abc", 3), "abc");
        assert_eq!(terminal_safe("abcd", 3), "abc…[cut, 1 more chars]");
    }

    #[test]
    fn safe_lines_keep_one_line_per_write_and_escape_the_rest() {
        use std::io::Write as _;
        let mut sink = SafeLines(Vec::new());
        sink.write_all(b"INFO agent=evil\n2026 FORGED line \x1b[2J\xe2\x80\xae\n")
            .unwrap();
        sink.write_all(b"next\n").unwrap();
        let out = String::from_utf8(sink.0).unwrap();
        assert_eq!(
            out,
            "INFO agent=evil\\n2026 FORGED line \\x1b[2J\\u{202e}\nnext\n"
        );
    }
}
