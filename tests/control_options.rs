//! The control CLI's option checks, as a black box: every rule once, with Azure's messages
//! where Azure has one, exit 64, and no cluster touched (the kubeconfig does not even exist).

mod common;

use std::path::Path;

use common::scoregate as cli;
use scoregate::tls::DevCa;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn options_are_checked_before_any_cluster_is_touched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path().join("ws.json");
    // A kubeconfig that does not exist: the options fail first, with exit 64.
    let base = [
        "--kubeconfig",
        "/nonexistent/kubeconfig",
        "--workspace",
        s(&ws),
    ];
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "attach",
                "ab",
                "--no-ssl",
                "--load-balancer",
                "InternalLoadBalancer",
            ],
            "compute name: must be 3 to 24 characters long",
        ),
        (
            &[
                "attach",
                "9lives-",
                "--no-ssl",
                "--load-balancer",
                "InternalLoadBalancer",
            ],
            "compute name: must start with a letter",
        ),
        (
            &[
                "attach",
                "9lives-",
                "--no-ssl",
                "--load-balancer",
                "InternalLoadBalancer",
            ],
            "compute name: must end with a letter or digit",
        ),
        (
            &[
                "attach",
                "a_b_c",
                "--no-ssl",
                "--load-balancer",
                "InternalLoadBalancer",
            ],
            "may contain only letters, digits and '-'",
        ),
        (
            &["attach", "aks1", "--no-ssl", "--load-balancer", "Public"],
            "Invalid configuration. Load balancer type should be either \"PublicIp\" or \"InternalLoadBalancer\".",
        ),
        (
            &["attach", "aks1", "--no-ssl", "--subnet", "mine"],
            "Invalid configuration, load balancer subnet can be changed from default when load balancer type is \"InternalLoadBalancer\".",
        ),
        (
            &["attach", "aks1", "--ssl-cname", "a.example.com"],
            "Invalid configuration, not all ssl information provided. To enable SSL validation please provide the cname, cert pem file, and key pem file.",
        ),
        (
            &[
                "attach",
                "aks1",
                "--leaf-domain-label",
                "mymodel",
                "--no-ssl",
            ],
            "Choose one TLS mode",
        ),
        (
            &["attach", "aks1", "--leaf-domain-label", "mymodel"],
            "--leaf-domain-label needs --region",
        ),
        (
            &[
                "attach",
                "aks1",
                "--leaf-domain-label",
                "My_Model",
                "--region",
                "westeurope",
            ],
            "is not a valid DNS label",
        ),
        (&["attach", "aks1"], "choose a TLS mode"),
        (
            &["attach", "aks1", "--no-ssl"],
            "TLS can be turned off only behind an InternalLoadBalancer",
        ),
        (
            &[
                "attach",
                "aks1",
                "--no-ssl",
                "--purpose",
                "Prod",
                "--load-balancer",
                "InternalLoadBalancer",
            ],
            "Cluster purpose should be either \"FastProd\" or \"DevTest\"",
        ),
    ];
    for (args, want) in cases {
        let mut all = args.to_vec();
        all.extend(base);
        let o = cli(&all);
        assert_eq!(o.code, 64, "{args:?}: {}{}", o.stdout, o.stderr);
        assert!(
            o.stderr.contains(want),
            "{args:?}: want {want:?} in:\n{}",
            o.stderr
        );
    }
    // A certificate that does not cover the cname, and a passphrase-protected key.
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::new("options CA").expect("ca");
    let leaf = ca.issue(&["other.example.com".to_string()]).expect("leaf");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &leaf.cert_pem).expect("w");
    std::fs::write(&key, &leaf.key_pem).expect("w");
    let o = cli(&[
        &[
            "attach",
            "aks1",
            "--ssl-cname",
            "scoring.example.com",
            "--ssl-cert-pem-file",
            s(&cert),
            "--ssl-key-pem-file",
            s(&key),
        ][..],
        &base[..],
    ]
    .concat());
    assert_eq!(o.code, 64, "{}", o.stderr);
    assert!(o.stderr.contains("scoring.example.com"), "{}", o.stderr);
    let enc = dir.path().join("enc-key.pem");
    std::fs::write(
        &enc,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .expect("w");
    let o = cli(&[
        &[
            "attach",
            "aks1",
            "--ssl-cname",
            "other.example.com",
            "--ssl-cert-pem-file",
            s(&cert),
            "--ssl-key-pem-file",
            s(&enc),
        ][..],
        &base[..],
    ]
    .concat());
    assert_eq!(o.code, 64, "{}", o.stderr);
    assert!(
        o.stderr.contains("--ssl-key-pem-file: ")
            && o.stderr
                .contains("passphrase-protected keys are not supported"),
        "the key's own flag is named: {}",
        o.stderr
    );
    assert!(!o.stderr.contains("--ssl-cert-pem-file:"), "{}", o.stderr);
    assert!(!ws.exists(), "nothing recorded");
}

/// Every hint names a command that works. Each `scoregate …` command quoted in the control
/// module's messages parses (placeholders filled in); and the flags the plaintext refusal
/// suggests get `attach` past its option checks (it then fails on the missing cluster: exit 1).
#[test]
fn every_suggested_command_parses() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src/control");
    let mut hints = Vec::new();
    for entry in std::fs::read_dir(src).expect("src/control") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        // Messages, not doc comments.
        let text: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        // Messages wrap with `\` continuations: join them first.
        let text = text.replace("\\\n", " ");
        let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for quoted in text.split('`').skip(1).step_by(2) {
            if quoted.starts_with("scoregate ") {
                hints.push(quoted.to_string());
            }
        }
    }
    assert!(hints.len() >= 10, "found {} hints: {hints:?}", hints.len());
    let broken: Vec<String> = hints
        .iter()
        .filter_map(|hint| {
            let filled = hint
                .replace("{compute}", "aks1")
                .replace("{}", "aks1")
                .replace("{c}", "aks1")
                .replace("COMPUTE", "aks1")
                .replace('…', "x");
            let args: Vec<&str> = filled.split_whitespace().collect();
            <scoregate::cli::Cli as clap::Parser>::try_parse_from(&args)
                .err()
                .map(|e| format!("{hint:?}: {}", e.kind()))
        })
        .collect();
    assert!(
        broken.is_empty(),
        "hints that are not commands: {broken:#?}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path().join("ws.json");
    let base = [
        "--kubeconfig",
        "/nonexistent/kubeconfig",
        "--workspace",
        s(&ws),
    ];
    let refused = cli(&[&["attach", "aks1", "--no-ssl"][..], &base[..]].concat());
    assert_eq!(refused.code, 64, "{}", refused.stderr);
    for (flag, args) in [
        (
            "--allow-public-plaintext",
            &["--allow-public-plaintext"][..],
        ),
        (
            "--load-balancer InternalLoadBalancer",
            &["--load-balancer", "InternalLoadBalancer"][..],
        ),
    ] {
        assert!(
            refused.stderr.contains(flag),
            "{flag} suggested: {}",
            refused.stderr
        );
        let o = cli(&[&["attach", "aks1", "--no-ssl"][..], args, &base[..]].concat());
        assert_eq!(
            o.code, 1,
            "{flag} accepted, then the missing cluster: {}",
            o.stderr
        );
        assert!(o.stderr.contains("/nonexistent/kubeconfig"), "{}", o.stderr);
    }
}

/// One exit-code scheme: 0 success and --help/--version, 64 any command-line or option error
/// (clap's own included), 1 refused or failed at run time.
#[test]
fn exit_codes_follow_one_scheme() {
    for (args, code) in [
        (&["--help"][..], 0),
        (&["--version"][..], 0),
        (&["attach", "--help"][..], 0),
        (&[][..], 64),
        (&["attach"][..], 64),
        (&["attach", "aks1", "--no-such-flag"][..], 64),
        (&["status"][..], 64),
        (&["serve"][..], 64),
        (&["--log-format", "xml", "status", "aks1"][..], 64),
        (&["demo", "--listen", "not-an-address"][..], 64),
        (
            &[
                "status",
                "aks1",
                "--workspace",
                "/nonexistent/ws.json",
                "--kubeconfig",
                "/nonexistent/kc",
            ][..],
            1,
        ),
    ] {
        let o = cli(args);
        assert_eq!(o.code, code, "{args:?}: {}{}", o.stdout, o.stderr);
    }
}

/// `attach --dry-run` prints manifests as YAML unless told otherwise.
#[test]
fn a_dry_run_prints_yaml_by_default() {
    let base = [
        "attach",
        "aks1",
        "--no-ssl",
        "--load-balancer",
        "InternalLoadBalancer",
        "--dry-run",
        "--kubeconfig",
        "/nonexistent/kubeconfig",
    ];
    let o = cli(&base);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout
            .starts_with("---\napiVersion: v1\nkind: Namespace\n"),
        "{}",
        &o.stdout[..200.min(o.stdout.len())]
    );
    assert!(
        o.stdout.lines().all(|l| l.len() < 300),
        "no line is a table row thousands wide"
    );
    let json = cli(&[&base[..], &["-o", "json"]].concat());
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON when asked");
    assert_eq!(v["kind"], "List");
}

/// `cert export` never overwrites key files unless told to, and checks before touching anything.
#[test]
fn cert_export_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("key.pem");
    std::fs::write(&key, "my own key").expect("w");
    let o = cli(&[
        "cert",
        "export",
        "aks1",
        "--dir",
        s(dir.path()),
        "--kubeconfig",
        "/nonexistent/kubeconfig",
    ]);
    assert_eq!(o.code, 64, "{}", o.stderr);
    assert!(o.stderr.contains("--force"), "{}", o.stderr);
    assert!(
        o.stderr.contains(&key.display().to_string()),
        "{}",
        o.stderr
    );
    assert_eq!(std::fs::read_to_string(&key).expect("r"), "my own key");
}

/// A compute recorded without a kubeconfig, and none given: the message says which flag to pass.
#[test]
fn status_without_a_kubeconfig_names_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path().join("ws.json");
    std::fs::write(
        &ws,
        r#"{"workspace": "default", "computes": {"aks1": {"server": "https://10.0.0.1", "namespace": "scoregate", "attached_at": 1}}}"#,
    )
    .expect("w");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_scoregate"))
        .args(["status", "aks1", "--workspace", s(&ws)])
        .env_remove("KUBECONFIG")
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("pass --kubeconfig FILE"), "{err}");
}
