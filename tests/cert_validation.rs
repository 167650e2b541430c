//! Every bad certificate candidate is refused with its own message while the old certificate
//! keeps serving; a good one then rotates in. Candidates arrive the way Kubernetes delivers a
//! Secret volume (the kubelet's atomic writer): both files of a candidate are written into a new
//! directory and the `..data` symlink swapped to it, so the gateway never sees half a pair and
//! each refusal is this candidate's own (two separate file writes can be judged in between on a
//! loaded machine, and that half pair is refused for its mismatch instead).
#![cfg(feature = "peer-tests")]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use scoregate::tls::{DevCa, leaf_params};

struct Bad {
    what: &'static str,
    cert: String,
    key: String,
    message: &'static str,
}

/// A Secret volume as the kubelet lays it out: `cert.pem -> ..data/cert.pem`,
/// `..data -> ..N/`, a new `..N` per candidate published by one `rename` of the symlink.
struct SecretVolume {
    dir: std::path::PathBuf,
    version: usize,
}

impl SecretVolume {
    fn new(dir: &std::path::Path, cert: &str, key: &str) -> Self {
        let mut v = SecretVolume {
            dir: dir.to_path_buf(),
            version: 0,
        };
        v.publish(cert, key);
        for name in ["cert.pem", "key.pem"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).expect("link");
        }
        v
    }

    fn publish(&mut self, cert: &str, key: &str) {
        self.version += 1;
        let data = self.dir.join(format!("..{}", self.version));
        std::fs::create_dir(&data).expect("version dir");
        std::fs::write(data.join("cert.pem"), cert).expect("cert");
        std::fs::write(data.join("key.pem"), key).expect("key");
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..{}", self.version), &tmp).expect("symlink");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
    }
}

fn openssl(args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        st.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_candidates_are_refused_and_the_old_certificate_keeps_serving() {
    let root = DevCa::new("validation root").expect("root");
    let inter = root
        .intermediate("validation intermediate")
        .expect("intermediate");
    let names = vec!["localhost".to_string()];
    let chain = |leaf: &str| format!("{leaf}{}", inter.ca_pem);
    let good = inter.issue(&names).expect("good");
    let next = inter.issue(&names).expect("next");
    let other = inter.issue(&names).expect("other");

    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    let (cert, key) = (p("cert.pem"), p("key.pem"));
    let mut volume = SecretVolume::new(dir.path(), &chain(&good.cert_pem), &good.key_pem);
    std::fs::write(p("root.pem"), &root.ca_pem).expect("root");

    let mut expired = leaf_params(&names).expect("params");
    expired.not_before = rcgen::date_time_ymd(2019, 1, 1);
    expired.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let expired = inter.issue_with(expired).expect("expired");
    let mut future = leaf_params(&names).expect("params");
    future.not_before = rcgen::date_time_ymd(2099, 1, 1);
    future.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let future = inter.issue_with(future).expect("future");
    let wrong_name = inter
        .issue(&["other.example.test".to_string()])
        .expect("wrong name");
    let foreign = DevCa::new("unrelated CA")
        .expect("foreign")
        .issue(&names)
        .expect("foreign leaf");

    let enc = p("enc.pem");
    std::fs::write(p("plain.pem"), &other.key_pem).expect("write");
    openssl(&[
        "pkcs8",
        "-topk8",
        "-v2",
        "aes-256-cbc",
        "-passout",
        "pass:secret",
        "-in",
        &p("plain.pem").display().to_string(),
        "-out",
        &enc.display().to_string(),
    ]);
    let (rsa_key, rsa_cert) = (p("rsa1024.key"), p("rsa1024.pem"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:1024",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost",
        "-days",
        "30",
        "-keyout",
        &rsa_key.display().to_string(),
        "-out",
        &rsa_cert.display().to_string(),
    ]);
    let read = |f: &std::path::Path| std::fs::read_to_string(f).expect("read");

    let truncated = chain(&other.cert_pem);
    let cases = vec![
        Bad {
            what: "wrong key",
            cert: chain(&other.cert_pem),
            key: next.key_pem.clone(),
            message: "does not match the certificate",
        },
        Bad {
            what: "expired",
            cert: chain(&expired.cert_pem),
            key: expired.key_pem.clone(),
            message: "certificate expired at",
        },
        Bad {
            what: "not yet valid",
            cert: chain(&future.cert_pem),
            key: future.key_pem.clone(),
            message: "is not valid before",
        },
        Bad {
            what: "SAN mismatch",
            cert: chain(&wrong_name.cert_pem),
            key: wrong_name.key_pem.clone(),
            message: "do not cover the configured name \"localhost\"",
        },
        Bad {
            what: "truncated PEM",
            cert: truncated[..truncated.len() / 3].to_string(),
            key: other.key_pem.clone(),
            message: "PEM",
        },
        Bad {
            what: "encrypted key",
            cert: chain(&other.cert_pem),
            key: read(&enc),
            message: "passphrase-protected keys are not supported",
        },
        Bad {
            what: "chain out of order",
            cert: format!("{}{}{}", other.cert_pem, root.ca_pem, inter.ca_pem),
            key: other.key_pem.clone(),
            message: "chain out of order",
        },
        Bad {
            what: "chain incomplete",
            cert: other.cert_pem.clone(),
            key: other.key_pem.clone(),
            message: "chain does not lead to the configured root",
        },
        Bad {
            what: "unknown issuer",
            cert: foreign.cert_pem.clone(),
            key: foreign.key_pem.clone(),
            message: "chain does not lead to the configured root",
        },
        Bad {
            what: "RSA 1024",
            cert: read(&rsa_cert),
            key: read(&rsa_key),
            message: "RSA key of 1024 bits is too weak",
        },
    ];

    let model = Backend::model().await;
    let toml = format!(
        r#"
[listen]
tls = "127.0.0.1:0"
admin = "127.0.0.1:0"

[tls]
reload_poll_ms = 20
reload_debounce_ms = 40

[[tls.certificates]]
name = "scoring"
cert = {cert:?}
key = {key:?}
cname = "localhost"
ca = {root:?}

{service}"#,
        service = iris_service(model.addr, ""),
        cert = cert.display().to_string(),
        key = key.display().to_string(),
        root = p("root.pem").display().to_string(),
    );
    let gw = TestGateway::start(&toml).await;
    let probe = gw.https("/");
    let good_fp = pem_fingerprint(&good.cert_pem);
    assert_eq!(
        served_fingerprint(&root.ca_pem, &probe)
            .await
            .expect("probe"),
        good_fp
    );

    let c = client(&root.ca_pem).build().expect("client");
    let rejected_count = || async {
        let metrics = reqwest::get(gw.admin_url("/metrics"))
            .await
            .expect("m")
            .text()
            .await
            .expect("t");
        // Absent until the first refusal: waited for below, never read as 0.
        series_value(
            &metrics,
            r#"scoregate_certificate_reloads_total{result="rejected",source="files"}"#,
        )
    };
    for (judged, case) in cases.iter().enumerate() {
        volume.publish(&case.cert, &case.key);
        let t = Instant::now();
        // Wait until this candidate has been judged (the rejected counter moves), then read why.
        while rejected_count().await.is_none_or(|n| n <= judged as u64) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{}: not refused",
                case.what
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let status: serde_json::Value = reqwest::get(gw.admin_url("/certificates"))
            .await
            .expect("admin")
            .json()
            .await
            .expect("json");
        let err = status["certificates"][0]["last_error"]
            .as_str()
            .unwrap_or("");
        assert!(
            err.contains(case.message),
            "{}: {err:?} lacks {:?}",
            case.what,
            case.message
        );
        assert_eq!(
            status["certificates"][0]["fingerprint_sha256"],
            good_fp.as_str(),
            "{}",
            case.what
        );
        // Still served to new handshakes, and requests keep succeeding.
        assert_eq!(
            served_fingerprint(&root.ca_pem, &probe)
                .await
                .expect("probe"),
            good_fp,
            "{}",
            case.what
        );
        let r = post(&c, &gw.https("/api/v1/service/iris/score"), Some(KEY), ROWS).await;
        assert_eq!(r.status(), 200, "{}", case.what);
    }
    let metrics = reqwest::get(gw.admin_url("/metrics"))
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    assert_eq!(rejected_count().await, Some(cases.len() as u64));
    assert!(
        metrics.contains(r#"scoregate_certificate_expiry_seconds{name="scoring"}"#),
        "{metrics}"
    );

    // A good candidate then rotates in.
    volume.publish(&chain(&next.cert_pem), &next.key_pem);
    let want = pem_fingerprint(&next.cert_pem);
    let t = Instant::now();
    while served_fingerprint(&root.ca_pem, &probe)
        .await
        .expect("probe")
        != want
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "good candidate not served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s: serde_json::Value = reqwest::get(gw.admin_url("/certificates"))
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    assert!(s["certificates"][0]["last_error"].is_null());
    assert_eq!(s["certificates"][0]["issuer"], "CN=validation intermediate");
    gw.stop().await;
}
