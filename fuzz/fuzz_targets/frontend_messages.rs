//! The relay's statement tap (`capture::StatementTap`) fed an authenticated client's byte
//! stream split at arbitrary points. The first byte picks a small text cap; the next 8 bytes
//! pick chunk sizes. Invariants: never panics; the statements, Bind/Execute counts and the
//! error are the same whatever the chunking (compared with one whole feed); captured text
//! stays within the cap.
#![no_main]

use agentd::listener::postgres::capture::{Captured, StatementTap};
use libfuzzer_sys::fuzz_target;

fn run(stream: &[u8], cap: usize, cuts: &[u8]) -> (Vec<Captured>, u64, u64, bool) {
    let mut tap = StatementTap::new(cap);
    let mut got = Vec::new();
    let mut rest = stream;
    let mut failed = false;
    let mut i = 0;
    while !rest.is_empty() {
        let n = if cuts.is_empty() {
            rest.len()
        } else {
            (usize::from(cuts[i % cuts.len()]) % 17 + 1).min(rest.len())
        };
        i += 1;
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        if tap.feed(chunk, &mut |c| got.push(c)).is_err() {
            failed = true;
            break;
        }
    }
    (got, tap.binds(), tap.executes(), failed)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let cap = usize::from(data[0]) * 4;
    let (cuts, stream) = data[1..].split_at(8);
    let whole = run(stream, cap, &[]);
    let chunked = run(stream, cap, cuts);
    assert_eq!(whole, chunked);
    for c in &whole.0 {
        let (text, overflow) = match c {
            Captured::Query { text, overflow, .. } | Captured::Parse { text, overflow, .. } => {
                (text, overflow)
            }
            Captured::FunctionCall { arg_bytes, .. } => {
                assert!(
                    arg_bytes.len()
                        <= agentd::listener::postgres::capture::MAX_FUNCTION_ARGS_RECORDED
                );
                continue;
            }
        };
        // Lossy decoding may turn one invalid byte into the 3-byte U+FFFD.
        assert!(text.len() <= cap * 3);
        if let Some(o) = overflow {
            assert!(o.tail.len() <= cap / 2 * 3);
        }
    }
});
