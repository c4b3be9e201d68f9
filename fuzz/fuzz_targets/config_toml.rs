//! The config parser (`Config::parse`): TOML with `deny_unknown_fields`, time windows,
//! durations, validation. Invariants: never panics; an error message names the file.
#![no_main]

use agentd::config::Config;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse(text, Path::new("fuzz.toml")) {
        assert!(e.to_string().contains("fuzz.toml"));
    }
});
