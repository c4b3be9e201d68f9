use super::*;

/// Hostile and ordinary forms: (input, expected). Every `sekrit` must be gone.
const TABLE: &[(&str, &str)] = &[
    (
        "CREATE ROLE x PASSWORD 'sekrit'",
        "CREATE ROLE x PASSWORD '[REDACTED]'",
    ),
    (
        "ALTER USER x WITH ENCRYPTED PASSWORD 'SCRAM-SHA-256$4096:sekrit==$a2V5:c2Vy'",
        "ALTER USER x WITH ENCRYPTED PASSWORD '[REDACTED]'",
    ),
    (
        "alter role x password 'a''sekrit' valid until 'infinity'",
        "alter role x password '[REDACTED]' valid until 'infinity'",
    ),
    (
        "CREATE USER a PASSWORD 'sekrit'; CREATE USER b PassWord 'sekrit';",
        "CREATE USER a PASSWORD '[REDACTED]'; CREATE USER b PassWord '[REDACTED]';",
    ),
    (
        "ALTER ROLE x PASSWORD/**/'sekrit'",
        "ALTER ROLE x PASSWORD/**/'[REDACTED]'",
    ),
    (
        "ALTER ROLE x PASSWORD /* a /* nested */ c */ -- line\n 'sekrit' LOGIN",
        "ALTER ROLE x PASSWORD /* a /* nested */ c */ -- line\n '[REDACTED]' LOGIN",
    ),
    // A backslash after the literal's start: the rest goes (standard_conforming_strings).
    (
        r"ALTER ROLE x PASSWORD E'a\'sekrit''c' LOGIN",
        "ALTER ROLE x PASSWORD '[REDACTED]'",
    ),
    (
        "ALTER ROLE x PASSWORD $$p'sekrit$$;",
        "ALTER ROLE x PASSWORD '[REDACTED]';",
    ),
    (
        "ALTER ROLE x PASSWORD $pw$a$$sekrit'$pw$ LOGIN",
        "ALTER ROLE x PASSWORD '[REDACTED]' LOGIN",
    ),
    (
        "ALTER ROLE x PASSWORD U&'sekrit' LOGIN",
        "ALTER ROLE x PASSWORD '[REDACTED]' LOGIN",
    ),
    (
        "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password 'sekrit')",
        "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password '[REDACTED]')",
    ),
    (
        "ALTER USER MAPPING FOR bob SERVER s OPTIONS (SET \"password\" 'sekrit')",
        "ALTER USER MAPPING FOR bob SERVER s OPTIONS (SET \"password\" '[REDACTED]')",
    ),
    (
        "SELECT * FROM dblink('host=h dbname=d user=u password=sekrit', 'SELECT 1') AS t(a int)",
        "SELECT * FROM dblink('[REDACTED]', 'SELECT 1') AS t(a int)",
    ),
    (
        "CREATE SUBSCRIPTION s CONNECTION 'host=h PassWord = sekrit' PUBLICATION p",
        "CREATE SUBSCRIPTION s CONNECTION '[REDACTED]' PUBLICATION p",
    ),
    (
        "SELECT dblink_connect($$postgresql://u:sekrit@h/d$$)",
        "SELECT dblink_connect('[REDACTED]')",
    ),
    (
        "SELECT dblink_connect(E'password=sekrit')",
        "SELECT dblink_connect('[REDACTED]')",
    ),
    // standard_conforming_strings = off: the server reads \' as an escaped quote, so the
    // secret may run past where the scanner thinks the literal ends.
    (
        "SET standard_conforming_strings = off; ALTER ROLE x PASSWORD 'a\\' sekrit'",
        "SET standard_conforming_strings = off; ALTER ROLE x [REDACTED]",
    ),
    (
        "SET standard_conforming_strings = off; ALTER ROLE x PASSWORD 'a\\' sekrit' LOGIN'",
        "SET standard_conforming_strings = off; ALTER ROLE x PASSWORD '[REDACTED]'",
    ),
    (
        "CREATE ROLE x WITH LOGIN\n  PASSWORD\n\t'sekrit'\n  VALID UNTIL '2030-01-01'",
        "CREATE ROLE x WITH LOGIN\n  PASSWORD\n\t'[REDACTED]'\n  VALID UNTIL '2030-01-01'",
    ),
    // Unterminated: from the first mention on.
    ("CREATE ROLE x PASSWORD 'sekrit", "CREATE ROLE x [REDACTED]"),
    (
        "CREATE ROLE x PASSWORD $$sekrit",
        "CREATE ROLE x [REDACTED]",
    ),
    (
        "CREATE ROLE x PASSWORD E'sekrit\\'",
        "CREATE ROLE x [REDACTED]",
    ),
    (
        "CREATE ROLE \"pässword\" PASSWORD 'ñ€sekrit'",
        "CREATE ROLE \"pässword\" PASSWORD '[REDACTED]'",
    ),
    ("SELECT 1;PASSWORD'sekrit'", "SELECT 1;PASSWORD'[REDACTED]'"),
];

#[test]
fn table() {
    for (input, expected) in TABLE {
        let got = redact_secrets(input);
        assert!(matches!(got, Cow::Owned(_)), "{input}");
        assert_eq!(&got, expected, "input: {input}");
        assert!(!got.contains("sekrit"), "leaked: {input}");
    }
}

#[test]
fn left_alone() {
    let cases = [
        "SELECT 1",
        "",
        "SELECT password_hash FROM users WHERE password_hash = 'x'",
        "SELECT t.password FROM t WHERE note = 'forgot my password'",
        "ALTER ROLE x PASSWORD NULL",
        "ALTER ROLE x PASSWORD $1",
        "SELECT 'password ''x'''",
        "SELECT $$ password 'x' $$",
        "SELECT \"password\" FROM t WHERE a = 'b'",
        "SELECT 1 -- password 'x'\n",
        "SELECT /* password /* 'x' */ password */ 1",
        "SELECT 'https://example.com/a@b'",
        "SET password_encryption = 'scram-sha-256'",
    ];
    for input in cases {
        let got = redact_secrets(input);
        assert!(matches!(got, Cow::Borrowed(_)), "changed: {input} -> {got}");
    }
}

#[test]
fn stops_at_comments_and_literals_correctly() {
    // A PASSWORD after a comment or literal that contains quotes is still found.
    let input = "/* it's */ SELECT 'a''b', $$x'$$; -- don't\nALTER ROLE r PASSWORD 'p'";
    assert_eq!(
        redact_secrets(input),
        "/* it's */ SELECT 'a''b', $$x'$$; -- don't\nALTER ROLE r PASSWORD '[REDACTED]'"
    );
}
