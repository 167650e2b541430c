//! The TLS settings as a real scanner sees them: Debian's `sslscan` against the running gateway,
//! with the default settings and with `min_version = "1.3"`. No SSL, TLS 1.0 or 1.1; only AEAD
//! ciphers with forward secrecy and ≥ 128-bit keys; no renegotiation; not vulnerable to
//! heartbleed; TLS 1.3 preferred. (testssl.sh and sslyze were run by hand; see the README.)
#![cfg(feature = "peer-tests")]

mod common;

use std::process::Command;

use common::*;

struct Scan {
    xml: String,
}

impl Scan {
    fn run(addr: std::net::SocketAddr) -> Scan {
        let out = Command::new("sslscan")
            .args(["--no-colour", "--xml=-"])
            .arg(addr.to_string())
            .output()
            .expect("sslscan is installed (scripts/test.sh installs the Debian package)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Scan {
            xml: String::from_utf8_lossy(&out.stdout).into_owned(),
        }
    }

    /// The elements named `tag`, as attribute lists.
    fn elements(&self, tag: &str) -> Vec<Vec<(String, String)>> {
        let open = format!("<{tag} ");
        self.xml
            .lines()
            .filter_map(|l| l.trim().strip_prefix(&open))
            .map(|attrs| {
                attrs
                    .split('"')
                    .collect::<Vec<_>>()
                    .chunks(2)
                    .filter(|kv| kv.len() == 2)
                    .map(|kv| {
                        (
                            kv[0].trim().trim_end_matches('=').to_string(),
                            kv[1].to_string(),
                        )
                    })
                    .collect()
            })
            .collect()
    }

    fn protocols(&self) -> Vec<(String, bool)> {
        self.elements("protocol")
            .into_iter()
            .map(|a| {
                let get = |k: &str| {
                    a.iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                (
                    format!("{} {}", get("type"), get("version")),
                    get("enabled") == "1",
                )
            })
            .collect()
    }
}

fn attr<'a>(a: &'a [(String, String)], k: &str) -> &'a str {
    a.iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

fn audit(scan: &Scan, tls12: bool) {
    let protocols = scan.protocols();
    assert_eq!(protocols.len(), 6, "{}", scan.xml);
    for (p, enabled) in &protocols {
        let expected = p == "tls 1.3" || (tls12 && p == "tls 1.2");
        assert_eq!(*enabled, expected, "{p}: {protocols:?}");
    }
    let ciphers = scan.elements("cipher");
    assert!(!ciphers.is_empty(), "{}", scan.xml);
    for c in &ciphers {
        let name = attr(c, "cipher");
        let bits: u32 = attr(c, "bits").parse().unwrap_or(0);
        assert!(bits >= 128, "{name}: {bits} bits");
        let aead = name.contains("GCM")
            || name.contains("CHACHA20-POLY1305")
            || name.contains("CHACHA20_POLY1305");
        assert!(aead, "{name}: not an AEAD cipher");
        assert!(
            name.starts_with("TLS_") || name.starts_with("ECDHE-"),
            "{name}: no forward secrecy"
        );
    }
    let preferred: Vec<_> = ciphers
        .iter()
        .filter(|c| attr(c, "status") == "preferred")
        .map(|c| attr(c, "sslversion"))
        .collect();
    assert!(preferred.contains(&"TLSv1.3"), "{preferred:?}");
    for r in scan.elements("renegotiation") {
        assert_eq!(attr(&r, "supported"), "0", "renegotiation: {r:?}");
    }
    let heartbleed = scan.elements("heartbleed");
    assert!(!heartbleed.is_empty());
    for h in heartbleed {
        assert_eq!(attr(&h, "vulnerable"), "0", "{h:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslscan_finds_only_modern_protocols_and_aead_ciphers() {
    let model = Backend::model().await;
    let pki = Pki::new(&["localhost"]);
    let gw = TestGateway::start(&service_toml(&pki, "", &[model.addr])).await;
    let tls = gw.tls.expect("tls");
    let scan = tokio::task::spawn_blocking(move || Scan::run(tls))
        .await
        .expect("join");
    audit(&scan, true);
    gw.stop().await;

    let toml = service_toml(&pki, "", &[model.addr]).replace(
        "[[tls.certificates]]",
        "[tls]\nmin_version = \"1.3\"\n\n[[tls.certificates]]",
    );
    let gw = TestGateway::start(&toml).await;
    let tls = gw.tls.expect("tls");
    let scan = tokio::task::spawn_blocking(move || Scan::run(tls))
        .await
        .expect("join");
    audit(&scan, false);
    gw.stop().await;
}
