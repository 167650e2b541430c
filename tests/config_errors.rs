//! Bad configuration files through the real binary: each rule broken once gives a clear message
//! naming the field, exit code 64, and nothing bound. "Nothing bound" is proven by holding the
//! configured TLS port ourselves: had the binary tried to bind first it would fail with a bind
//! error (exit 1), not 64 — the control case checks exactly that.

mod common;

use std::process::Command;

use common::Pki;

struct Case {
    name: &'static str,
    /// Replacement applied to the valid base config: (from, to).
    edit: (&'static str, &'static str),
    field: &'static str,
    message: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "unknown field",
        edit: ("[limits]", "[limits]\nmax_body = 5"),
        field: "line",
        message: "unknown field `max_body`",
    },
    Case {
        name: "bad address",
        edit: ("admin = \"127.0.0.1:0\"", "admin = \"localhost:x\""),
        field: "listen.admin",
        message: "is not an IP:port address",
    },
    Case {
        name: "no serving listener",
        edit: ("tls = \"__TLS__\"", ""),
        field: "listen",
        message: "no serving listener",
    },
    Case {
        name: "body limit",
        edit: ("max_body_bytes = 1000", "max_body_bytes = 104857601"),
        field: "limits.max_body_bytes",
        message: "allowed 1..=104857600",
    },
    Case {
        name: "header limit",
        edit: ("max_body_bytes = 1000", "max_header_bytes = 100"),
        field: "limits.max_header_bytes",
        message: "allowed 8192..=1048576",
    },
    Case {
        name: "busy poll range",
        edit: ("[limits]", "[runtime]\nbusy_poll_us = 20000\n[limits]"),
        field: "runtime.busy_poll_us",
        message: "allowed 0..=10000 (default 0)",
    },
    Case {
        name: "busy poll without the one-worker runtime",
        edit: ("[limits]", "[runtime]\nbusy_poll_us = 300\n[limits]"),
        field: "runtime.busy_poll_us",
        message: "TOKIO_WORKER_THREADS=1",
    },
    Case {
        name: "tls version",
        edit: ("min_version = \"1.2\"", "min_version = \"1.1\""),
        field: "tls.min_version",
        message: "allowed \"1.2\" (default) or \"1.3\"",
    },
    Case {
        name: "missing cert file",
        edit: ("cert = \"", "cert = \"/nonexistent/"),
        field: "tls.certificates[0]",
        message: "cannot read /nonexistent/",
    },
    Case {
        name: "scoring timeout",
        edit: ("scoring_timeout_ms = 1000", "scoring_timeout_ms = 300001"),
        field: "services[0].scoring_timeout_ms",
        message: "allowed 1..=300000 (default 60000)",
    },
    Case {
        name: "replica concurrency",
        edit: (
            "scoring_timeout_ms = 1000",
            "replica_max_concurrent_requests = 0",
        ),
        field: "services[0].replica_max_concurrent_requests",
        message: "allowed 1..=1000",
    },
    Case {
        name: "wait time",
        edit: (
            "scoring_timeout_ms = 1000",
            "max_request_wait_time = 300001",
        ),
        field: "services[0].max_request_wait_time",
        message: "allowed 0..=300000 (default 500)",
    },
    Case {
        name: "both auth modes",
        edit: (
            "scoring_timeout_ms = 1000",
            "token_auth_enabled = true\nauth_enabled = true",
        ),
        field: "services[0].token_auth_enabled",
        message: "cannot set both token_auth_enabled and auth_enabled",
    },
    Case {
        name: "key auth without key",
        edit: ("primary_key = \"config-test-key-0123456789\"", ""),
        field: "services[0].primary_key",
        message: "needs a primary_key",
    },
    Case {
        name: "short key",
        edit: (
            "primary_key = \"config-test-key-0123456789\"",
            "primary_key = \"short\"",
        ),
        field: "services[0].primary_key",
        message: "at least 16",
    },
    Case {
        name: "token without table",
        edit: (
            "primary_key = \"config-test-key-0123456789\"",
            "token_auth_enabled = true",
        ),
        field: "services[0].token",
        message: "needs a [services.token] table",
    },
    Case {
        name: "service name",
        edit: ("name = \"iris\"", "name = \"Iris_Service\""),
        field: "services[0].name",
        message: "only lowercase letters, digits and '-'",
    },
    Case {
        name: "service name length",
        edit: ("name = \"iris\"", "name = \"ab\""),
        field: "services[0].name",
        message: "3 to 32 characters",
    },
    Case {
        name: "percent sum",
        edit: (
            "replicas = [\"127.0.0.1:9\"]",
            "replicas = [\"127.0.0.1:9\"]\n[[services.versions]]\nname = \"green\"\ntraffic_percentile = 50\nreplicas = [\"127.0.0.1:9\"]",
        ),
        field: "services[0].versions",
        message: "add up to 110",
    },
    Case {
        name: "no default among several",
        edit: (
            "replicas = [\"127.0.0.1:9\"]",
            "replicas = [\"127.0.0.1:9\"]\n[[services.versions]]\nname = \"green\"\nreplicas = [\"127.0.0.1:9\"]",
        ),
        field: "services[0].versions",
        message: "none has is_default = true",
    },
    Case {
        name: "percentile range",
        edit: ("traffic_percentile = 60", "traffic_percentile = 101"),
        field: "services[0].versions[0].traffic_percentile",
        message: "allowed 0..=100",
    },
    Case {
        name: "replica address",
        edit: (
            "replicas = [\"127.0.0.1:9\"]",
            "replicas = [\"scoring-pod\"]",
        ),
        field: "services[0].versions[0].replicas[0]",
        message: "is not an IP:port address",
    },
    Case {
        name: "no replicas",
        edit: ("replicas = [\"127.0.0.1:9\"]", "replicas = []"),
        field: "services[0].versions[0].replicas",
        message: "at least one replica",
    },
    Case {
        name: "upstream protocol",
        edit: (
            "replicas = [\"127.0.0.1:9\"]",
            "replicas = [\"127.0.0.1:9\"]\nprotocol = \"h3\"",
        ),
        field: "services[0].versions[0].protocol",
        message: "allowed \"http1\" (default) or \"h2c\"",
    },
];

fn base(pki: &Pki, tls: &str) -> String {
    format!(
        r#"
[listen]
tls = "{tls}"
admin = "127.0.0.1:0"

[tls]
min_version = "1.2"

{certs}
[limits]
max_body_bytes = 1000

[[services]]
name = "iris"
primary_key = "config-test-key-0123456789"
scoring_timeout_ms = 1000

[[services.versions]]
name = "blue"
traffic_percentile = 60
replicas = ["127.0.0.1:9"]
"#,
        certs = pki.toml(),
    )
}

fn run_serve(dir: &std::path::Path, text: &str) -> (Option<i32>, String) {
    let path = dir.join("scoregate.toml");
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_scoregate"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env_remove("TOKIO_WORKER_THREADS")
        .output()
        .expect("run scoregate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn each_broken_rule_exits_64_naming_the_field_before_binding() {
    let pki = Pki::new(&["localhost"]);
    let dir = tempfile::tempdir().expect("tempdir");
    // We hold the TLS port, so any attempt to bind it would fail with exit 1.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let tls = held.local_addr().expect("addr").to_string();
    let valid = base(&pki, &tls);

    // Control: the valid config reaches the bind step and fails there, naming the listener.
    let (code, err) = run_serve(dir.path(), &valid);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("listen.tls: cannot listen on {tls}")),
        "{err}"
    );

    let mut failures = Vec::new();
    for case in CASES {
        let (from, to) = case.edit;
        let from = from.replace("__TLS__", &tls);
        assert!(
            valid.contains(&from),
            "case {:?}: base config lacks {from:?}",
            case.name
        );
        let text = valid.replacen(&from, to, 1);
        let (code, err) = run_serve(dir.path(), &text);
        let ok = code == Some(64)
            && err.contains("invalid configuration")
            && err.contains(case.field)
            && err.contains(case.message)
            && !err.contains("listening")
            && !err.contains("cannot listen");
        if !ok {
            failures.push(format!("{}: exit {code:?}\n{err}", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
    drop(held);
}

#[test]
fn all_problems_are_reported_at_once() {
    let pki = Pki::new(&["localhost"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let text = base(&pki, "127.0.0.1:0")
        .replace(
            "scoring_timeout_ms = 1000",
            "scoring_timeout_ms = 0\nmax_request_wait_time = 999999",
        )
        .replace("name = \"blue\"", "name = \"x\"");
    let (code, err) = run_serve(dir.path(), &text);
    assert_eq!(code, Some(64));
    assert!(err.contains("invalid configuration (3 problems)"), "{err}");
}

#[test]
#[cfg(feature = "peer-tests")] // the real openssl encrypts a key
fn certificate_problems_are_config_errors() {
    let a = Pki::new(&["localhost"]);
    let b = Pki::new(&["localhost"]);
    let dir = tempfile::tempdir().expect("tempdir");
    // Key of another certificate.
    let mismatched = base(&a, "127.0.0.1:0").replace(&a.key(), &b.key());
    let (code, err) = run_serve(dir.path(), &mismatched);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("does not match the certificate"), "{err}");
    // Passphrase-protected key (encrypted by the real openssl).
    let enc = dir.path().join("enc.pem");
    let st = Command::new("openssl")
        .args([
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:secret",
            "-in",
        ])
        .arg(a.key())
        .arg("-out")
        .arg(&enc)
        .status()
        .expect("openssl runs");
    assert!(st.success());
    let encrypted = base(&a, "127.0.0.1:0").replace(&a.key(), &enc.display().to_string());
    let (code, err) = run_serve(dir.path(), &encrypted);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("passphrase-protected keys are not supported"),
        "{err}"
    );
    // No certificate at all with a TLS listener.
    let none = base(&a, "127.0.0.1:0").replace(
        &format!("cert = \"{}\"\nkey = \"{}\"", a.cert(), a.key()),
        "",
    );
    let (code, err) = run_serve(dir.path(), &none.replace("[[tls.certificates]]", ""));
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("tls.certificates: listen.tls is set but no certificate"),
        "{err}"
    );
}

#[test]
fn check_command_and_example_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_scoregate"))
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/scoregate.example.toml"),
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (1 service, 1 certificate)"));
    let out = Command::new(env!("CARGO_BIN_EXE_scoregate"))
        .args(["check", "--config", "/nonexistent.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--config: cannot read /nonexistent.toml")
    );
}

#[test]
fn acme_settings_are_validated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = |acme: &str, http: bool| {
        format!(
            "[listen]\ntls = \"127.0.0.1:0\"\n{}\n[tls.acme]\nstate_dir = {:?}\n{acme}\n",
            if http { "http = \"127.0.0.1:0\"" } else { "" },
            dir.path().join("acme").display().to_string()
        )
    };
    let cases = [
        (
            base(
                "directory = \"http://acme.test/dir\"\nnames = [\"a.test\"]",
                true,
            ),
            "tls.acme.directory: \"http://acme.test/dir\" must be an https://",
        ),
        (
            base(
                "directory = \"https://acme.test/dir\"\nnames = [\"a.test\"]\nleaf_domain_label = \"x\"",
                true,
            ),
            "tls.acme: set exactly one of names",
        ),
        (
            base(
                "directory = \"https://acme.test/dir\"\nleaf_domain_label = \"myiris\"",
                true,
            ),
            "tls.acme.region: leaf_domain_label needs region",
        ),
        (
            base(
                "directory = \"https://acme.test/dir\"\nleaf_domain_label = \"My_Iris\"\nregion = \"westeurope\"",
                true,
            ),
            "tls.acme.leaf_domain_label",
        ),
        (
            base(
                "directory = \"https://acme.test/dir\"\nnames = [\"a.test\"]",
                false,
            ),
            "tls.acme.challenge: http-01 is answered on the plain listener",
        ),
        (
            base(
                "directory = \"https://acme.test/dir\"\nnames = [\"a.test\"]\nrenew_fraction = 1.5",
                true,
            ),
            "tls.acme.renew_fraction: 1.5 is out of range",
        ),
        (
            base(
                "directory = \"https://acme.test/dir\"\nnames = [\"a.test\"]\nchallenge = \"dns-01\"",
                true,
            ),
            "tls.acme.challenge: \"dns-01\" is not supported",
        ),
    ];
    for (text, message) in cases {
        let (code, err) = run_serve(dir.path(), &text);
        assert_eq!(code, Some(64), "{text}\n{err}");
        assert!(err.contains(message), "expected {message:?} in:\n{err}");
    }
}

#[test]
fn kubernetes_backed_settings_need_a_kubernetes_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = |extra: &str| {
        format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n\n[[services]]\nname = \"iris\"\n{extra}\n\n[[services.versions]]\nname = \"blue\"\nreplicas = [\"127.0.0.1:9\"]\n"
        )
    };
    let (code, err) = run_serve(dir.path(), &service("auth_secret = \"iris-keys\""));
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("kubernetes: services with auth_secret"),
        "{err}"
    );
    let (code, err) = run_serve(
        dir.path(),
        &service("auth_secret = \"iris-keys\"\nprimary_key = \"0123456789abcdef0\""),
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("services[0].auth_secret: keys come either from auth_secret"),
        "{err}"
    );
    let autoscaled = service("primary_key = \"0123456789abcdef0\"")
        + "\n[services.versions.autoscale]\ndeployment = \"iris-blue\"\nmax_replicas = 0\n";
    let (code, err) = run_serve(dir.path(), &autoscaled);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("kubernetes: versions with [services.versions.autoscale]"),
        "{err}"
    );
    assert!(err.contains("max_replicas: 0 is out of range"), "{err}");
}
