use super::*;

fn q(text: &str) -> Vec<u8> {
    let mut m = vec![b'Q'];
    m.extend_from_slice(&((text.len() + 5) as i32).to_be_bytes());
    m.extend_from_slice(text.as_bytes());
    m.push(0);
    m
}

fn p(name: &str, text: &str, types: &[u32]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    body.extend_from_slice(text.as_bytes());
    body.push(0);
    body.extend_from_slice(&(types.len() as i16).to_be_bytes());
    for t in types {
        body.extend_from_slice(&t.to_be_bytes());
    }
    let mut m = vec![b'P'];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(&body);
    m
}

fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

const REFUSED: &[&str] = &[
    "ALTER ROLE CURRENT_USER PASSWORD 'mine'",
    "alter user current_user with encrypted password 'mine'",
    "ALTER USER SESSION_USER PASSWORD 'mine'",
    "ALTER ROLE \"App User\" WITH PASSWORD 'x' VALID UNTIL 'infinity'",
    "ALTER ROLE other PASSWORD NULL",
    "ALTER USER app PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2Vy'",
    "SELECT 1; ALTER ROLE CURRENT_USER PASSWORD 'x'; SELECT 2",
    "ALTER/**/ROLE/* c */CURRENT_USER--x\nPASSWORD/**/'x'",
    "ALTER\tROLE CURRENT_USER LOGIN ENCRYPTED\nPASSWORD $$x$$",
    "ALTER ROLE CURRENT_USER PASSWORD E'it''s\\'x'",
    "ALTER ROLE CURRENT_USER PASSWORD U&'\\0061'",
    "alter role current_role password 'x'",
    "BEGIN; ALTER ROLE CURRENT_USER PASSWORD 'x'; COMMIT",
    // standard_conforming_strings = off reads this as a string, then the ALTER.
    "SELECT 'a\\''; ALTER ROLE CURRENT_USER PASSWORD 'p' --'",
    // Unparseable either way, but it names the statement: refused by the token scan.
    "ALTER ROLE CURRENT_USER PASSWORD 'x' garbage (",
];

const ALLOWED: &[&str] = &[
    "SELECT 1",
    "SELECT password FROM users",
    "UPDATE users SET password_hash = 'x' WHERE id = 1",
    "SELECT 'ALTER ROLE CURRENT_USER PASSWORD ''x'''",
    "-- ALTER ROLE x PASSWORD 'y'\nSELECT 1",
    "CREATE ROLE x PASSWORD 'y'",
    "ALTER ROLE x VALID UNTIL 'infinity'",
    "SELECT \"password\" FROM t",
    "SELECT $$ALTER ROLE x PASSWORD 'y'$$",
    "CREATE USER MAPPING FOR CURRENT_USER SERVER s OPTIONS (password 'x')",
    "SELECT 1 FROM (",
];

#[test]
fn decides_with_the_grammar() {
    for sql in REFUSED {
        assert!(
            matches!(decide(sql.as_bytes()), Verdict::Refuse(_)),
            "should refuse: {sql}"
        );
    }
    for sql in ALLOWED {
        assert_eq!(
            decide(sql.as_bytes()),
            Verdict::Allow,
            "should allow: {sql}"
        );
    }
    // Not UTF-8 and mentions the keyword: refused (SJIS-style trailing bytes).
    let mut sjis = b"SELECT '\x81\\'; ALTER ROLE x PASSWORD 'y' --'".to_vec();
    sjis.push(0xff);
    assert!(matches!(decide(&sjis), Verdict::Refuse(_)));
    assert_eq!(decide(b"SELECT '\xff'"), Verdict::Allow);
}

/// Runs `stream` through a guard in chunks of `size`, returning the output and refusals.
fn run(stream: &[u8], size: usize, cap: usize) -> (Vec<u8>, Vec<Refused>, Flow) {
    let mut g = StatementGuard::new(cap);
    let mut out = Vec::new();
    let mut refused = Vec::new();
    let mut flow = Flow::Continue;
    for chunk in stream.chunks(size) {
        let n = g.pass_prefix(chunk);
        out.extend_from_slice(&chunk[..n]);
        flow = g.feed(&chunk[n..], &mut out, &mut refused);
        if flow == Flow::Close {
            break;
        }
    }
    (out, refused, flow)
}

#[test]
fn clean_streams_pass_byte_for_byte_at_any_split() {
    let mut stream = Vec::new();
    stream.extend(q("SELECT password FROM users"));
    stream.extend(p("s1", "SELECT $1::text", &[25]));
    stream.extend(msg(b'B', b"\0s1\0\0\0\0\x01\0\0\0\x01x\0\0"));
    stream.extend(msg(b'd', &[7u8; 300]));
    stream.extend(msg(b'E', b"\0\0\0\0\0"));
    stream.extend(msg(b'S', b""));
    for size in 1..40 {
        let (out, refused, flow) = run(&stream, size, 1024);
        assert_eq!(out, stream, "split {size}");
        assert!(refused.is_empty());
        assert_eq!(flow, Flow::Continue);
    }
}

#[test]
fn refused_messages_are_rewritten_in_place() {
    let mut stream = Vec::new();
    stream.extend(q("SELECT 1"));
    stream.extend(q("ALTER ROLE CURRENT_USER PASSWORD 'hunter2-canary'"));
    stream.extend(p(
        "st",
        "ALTER USER CURRENT_USER PASSWORD 'hunter2-canary'",
        &[25],
    ));
    stream.extend(msg(b'S', b""));
    let mut expected = Vec::new();
    expected.extend(q("SELECT 1"));
    expected.extend(q(&refusal_sql()));
    expected.extend(p("st", &refusal_sql(), &[25]));
    expected.extend(msg(b'S', b""));
    for size in 1..60 {
        let (out, refused, flow) = run(&stream, size, 1024);
        assert_eq!(out, expected, "split {size}");
        assert_eq!(flow, Flow::Continue);
        assert_eq!(refused.len(), 2);
        assert_eq!(refused[0].kind, "query");
        assert_eq!(refused[1].kind, "parse");
        for r in &refused {
            assert!(
                !r.text.contains("hunter2"),
                "refusal text leaked a password"
            );
            assert!(r.text.contains("[REDACTED]"));
        }
    }
    assert!(!String::from_utf8_lossy(&expected).contains("hunter2"));
}

#[test]
fn over_cap_statements_stream_or_close() {
    let long_clean = format!("SELECT '{}'", "x".repeat(500));
    let long_bad = format!("ALTER ROLE CURRENT_USER PASSWORD '{}'", "x".repeat(500));
    let mut stream = q(&long_clean);
    stream.extend(q("SELECT 1"));
    for size in [1, 7, 64, 1000] {
        let (out, refused, flow) = run(&stream, size, 100);
        assert_eq!(out, stream);
        assert!(refused.is_empty());
        assert_eq!(flow, Flow::Continue);
        let bad = q(&long_bad);
        let (out, refused, flow) = run(&bad, size, 100);
        assert_eq!(flow, Flow::Close);
        assert_eq!(out.len(), bad.len() - 1, "the last byte is withheld");
        assert_eq!(refused.len(), 1);
    }
    // The keyword straddling two reads is still found.
    let text = format!("{}PASS", "y".repeat(200 - 10));
    let bad = q(&format!("{text}WORD"));
    let (_, refused, flow) = run(&bad, 200 - 10 + 5 + 2, 100);
    assert_eq!(flow, Flow::Close);
    assert_eq!(refused.len(), 1);
}

#[test]
fn a_broken_length_is_left_to_the_server() {
    let mut stream = q("SELECT 1");
    stream.extend([b'X', 0, 0, 0, 1, 1, 2, 3]);
    let (out, _, flow) = run(&stream, 3, 1024);
    assert_eq!(out, stream);
    assert_eq!(flow, Flow::Continue);
    let mut stream = vec![b'Q', 0, 0, 0, 2];
    stream.extend(q("ALTER ROLE x PASSWORD 'y'"));
    let (out, _, _) = run(&stream, 4, 1024);
    assert_eq!(out, stream);
}

#[tokio::test]
async fn guarded_stream_rewrites_reads_and_passes_writes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (client, server) = tokio::io::duplex(64);
    let mut refusals = Vec::new();
    let mut input = Vec::new();
    input.extend(q("ALTER ROLE CURRENT_USER PASSWORD 'x'"));
    input.extend(msg(b'X', b""));
    let writer = tokio::spawn(async move {
        let mut client = client;
        for chunk in input.chunks(5) {
            client.write_all(chunk).await.unwrap();
        }
        let mut echo = [0u8; 2];
        client.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ok");
    });
    let mut guarded = GuardedStream::new(server, |r| refusals.push(r));
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    let mut expected = q(&refusal_sql());
    expected.extend(msg(b'X', b""));
    while got.len() < expected.len() {
        let n = guarded.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    guarded.write_all(b"ok").await.unwrap();
    writer.await.unwrap();
    assert_eq!(got, expected);
    drop(guarded);
    assert_eq!(refusals.len(), 1);
}

#[test]
fn the_keyword_is_found_in_any_case_and_only_whole() {
    for text in [
        "alter role x PASSWORD 'y'",
        "alter role x pAsSwOrD 'y'",
        "/* password */ select 1",
    ] {
        assert!(has_keyword(text.as_bytes()), "{text}");
    }
    for text in ["select 1", "select 'passw' || 'ord'", "pass word", ""] {
        assert!(!has_keyword(text.as_bytes()), "{text}");
    }
    let mut big = vec![b'x'; 1 << 20];
    assert!(!has_keyword(&big));
    big[(1 << 20) - 8..].copy_from_slice(b"PASSWORD");
    assert!(has_keyword(&big));
}
