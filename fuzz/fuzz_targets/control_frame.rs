//! The control socket's decoder: 4-byte big-endian length framing with the 1 MiB cap
//! (`framing::recv`) and the serde `Envelope<Request>` body, as the daemon reads it from a
//! client. Invariants: never panics; every frame decoded fits the cap; a decoded request
//! serialises back to JSON that decodes to the same value.
#![no_main]

use agentd_proto::framing::{self, FrameError};
use agentd_proto::{Envelope, Request};
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut framed = framing::framed(tokio::io::join(Cursor::new(data), tokio::io::sink()));
        loop {
            match framing::recv::<_, Envelope<Request>>(&mut framed).await {
                Ok(env) => {
                    let json = serde_json::to_vec(&env).expect("serialise");
                    assert!(json.len() <= framing::MAX_FRAME_BYTES * 6 + 64);
                    let again: Envelope<Request> =
                        serde_json::from_slice(&json).expect("round trip");
                    assert_eq!(again, env);
                }
                Err(FrameError::Json(_)) => continue,
                Err(_) => break,
            }
        }
    });
    // The body decoder alone, on the raw bytes.
    let _ = serde_json::from_slice::<Envelope<Request>>(data);
});
