//! The listener's first bytes from an unauthenticated client: SSLRequest / GSSENCRequest
//! (answered `N`), CancelRequest and StartupMessage (`startup::read_startup`), then the
//! SCRAM phase's bounded typed-message reads (`wire::read_message`) on whatever follows.
//! Invariants: never panics, never allocates beyond the caps, a parsed StartupMessage has a
//! non-empty user.
#![no_main]

use agentd::listener::postgres::{startup, wire};
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut stream = tokio::io::join(Cursor::new(data), tokio::io::sink());
        match startup::read_startup(&mut stream).await {
            Ok(startup::Startup::Session(params)) => {
                assert!(!params.user.is_empty());
                // What a client sends next: SASLInitialResponse / SASLResponse.
                while let Ok(msg) =
                    wire::read_message(&mut stream, wire::MAX_AUTH_MESSAGE_BYTES).await
                {
                    assert!(msg.body.len() + 4 <= wire::MAX_AUTH_MESSAGE_BYTES);
                }
            }
            Ok(startup::Startup::Cancel(_)) | Err(_) => {}
        }
    });
});
