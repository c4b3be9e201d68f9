//! What the password-change guard adds to the client → server relay path, per message and
//! per byte, without a harness: `cargo bench -p agentd --bench guard`. Each case feeds the
//! guard the way the relay does (one read = one chunk: `pass_prefix`, then `feed` for the
//! rest) and prints nanoseconds per chunk, next to a plain copy of the same bytes.

use agentd::listener::postgres::guard::StatementGuard;
use std::hint::black_box;
use std::time::Instant;

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

fn parse_bind_execute_sync(sql: &str) -> Vec<u8> {
    let mut p = vec![0u8];
    p.extend_from_slice(sql.as_bytes());
    p.extend_from_slice(&[0, 0, 1, 0, 0, 0, 23]);
    let mut out = message(b'P', &p);
    out.extend(message(b'B', b"\0\0\0\0\0\x01\0\0\0\x0512345\0\0"));
    out.extend(message(b'E', b"\0\0\0\0\0"));
    out.extend(message(b'S', b""));
    out
}

fn bench(name: &str, chunk: &[u8], iterations: u32) {
    let mut out = Vec::with_capacity(chunk.len() * 2);
    let mut refused = Vec::new();
    let mut guard = StatementGuard::default();
    let start = Instant::now();
    for _ in 0..iterations {
        out.clear();
        let n = guard.pass_prefix(black_box(chunk));
        if n < chunk.len() {
            guard.feed(&chunk[n..], &mut out, &mut refused);
        }
        refused.clear();
        black_box(&out);
    }
    let guarded = start.elapsed().as_nanos() as f64 / f64::from(iterations);
    let start = Instant::now();
    for _ in 0..iterations {
        out.clear();
        out.extend_from_slice(black_box(chunk));
        black_box(&out);
    }
    let copy = start.elapsed().as_nanos() as f64 / f64::from(iterations);
    println!(
        "{name:<52} {:>7} B  guard {guarded:>10.0} ns/chunk   plain copy {copy:>8.0} ns/chunk",
        chunk.len()
    );
}

fn main() {
    let build = if cfg!(debug_assertions) {
        "debug build (cargo test --bench): upper bounds"
    } else {
        "release build"
    };
    println!("agentd guard cost ({build}; one chunk per relay read)");
    bench(
        "simple Query (pgbench -S -M simple)",
        &query("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"),
        200_000,
    );
    bench(
        "Parse+Bind+Execute+Sync (pgbench -S -M extended)",
        &parse_bind_execute_sync("SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
        200_000,
    );
    let bind_execute = {
        let mut m = message(b'B', b"\0P0_1\0\0\0\0\x01\0\0\0\x0512345\0\0");
        m.extend(message(b'E', b"\0\0\0\0\0"));
        m.extend(message(b'S', b""));
        m
    };
    bench(
        "Bind+Execute+Sync (pgbench -M prepared)",
        &bind_execute,
        200_000,
    );
    bench(
        "CopyData 32 KiB",
        &message(b'd', &[b'x'; 32 * 1024 - 5]),
        50_000,
    );
    let big = format!(
        "INSERT INTO t VALUES {}",
        "(1, 'abc'),".repeat(2900) + "(1, 'abc')"
    );
    bench("32 KiB INSERT (Query held whole)", &query(&big), 20_000);
    bench(
        "Query naming a password column (parsed twice)",
        &query("SELECT id FROM users WHERE password_hash = crypt('x', password_hash)"),
        20_000,
    );
    bench(
        "refused ALTER ROLE ... PASSWORD (parse + rewrite)",
        &query("ALTER ROLE CURRENT_USER PASSWORD 'x'"),
        20_000,
    );
}
