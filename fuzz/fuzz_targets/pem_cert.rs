//! Certificate loading and validation: arbitrary bytes as a combined PEM file (chain + key), as
//! the CA bundle, through the validator with a name and roots. Never panics.
#![no_main]
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use scoregate::tls;

fuzz_target!(|data: &[u8]| {
    tls::install_default_provider();
    let roots = tls::roots_from_pem(data).ok().map(Arc::new);
    let Ok(loaded) = tls::load_pem_pair(data, data, "cert", "key") else {
        return;
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    for policy in [
        tls::Policy {
            cname: None,
            roots: None,
        },
        tls::Policy {
            cname: Some("scoring.example.com".into()),
            roots: roots.clone(),
        },
    ] {
        let _ = tls::validate(&loaded, &policy, now);
    }
});
