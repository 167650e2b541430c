//! The ACME challenge path: HTTP-01 answers looked up from arbitrary request paths (only the exact
//! pending token is answered), TLS-ALPN-01 certificates built for arbitrary names.
#![no_main]
use libfuzzer_sys::fuzz_target;
use scoregate::acme::challenge::{Challenges, HTTP01_PREFIX};

const TOKEN: &str = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA";
const KEY_AUTH: &str =
    "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI";

fuzz_target!(|data: &[u8]| {
    scoregate::tls::install_default_provider();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ch = Challenges::new();
    ch.put_http(TOKEN, KEY_AUTH);
    match ch.answer_path(text) {
        None => assert!(!text.starts_with(HTTP01_PREFIX)),
        Some(Some(ka)) => {
            assert_eq!(text, format!("{HTTP01_PREFIX}{TOKEN}"));
            assert_eq!(ka, KEY_AUTH);
        }
        Some(None) => assert_ne!(text, format!("{HTTP01_PREFIX}{TOKEN}")),
    }
    // An SNI name as the TLS-ALPN-01 identifier: building refuses or succeeds, never panics.
    if text.len() <= 253 && ch.put_alpn(text, &[7u8; 32]).is_ok() {
        assert!(ch.alpn(&text.to_ascii_lowercase()).is_some());
    }
    ch.clear();
    assert!(ch.answer_path(&format!("{HTTP01_PREFIX}{TOKEN}")) == Some(None));
});
