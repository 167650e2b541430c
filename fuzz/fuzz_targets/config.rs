//! The configuration file: parse + validate arbitrary text. Never panics; every refusal is a
//! list of errors naming fields.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Relative paths resolve under a directory that does not exist: no file is ever read.
    let base = std::path::Path::new("/nonexistent-scoregate-fuzz");
    if let Err(e) = scoregate::config::from_toml(text, base) {
        assert!(!e.to_string().is_empty());
    }
    if let Err(e) = scoregate::config::services_from_toml(text, true) {
        assert!(!e.to_string().is_empty());
    }
});
