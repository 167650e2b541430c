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
        o.stderr
            .contains("passphrase-protected keys are not supported"),
        "{}",
        o.stderr
    );
    assert!(!ws.exists(), "nothing recorded");
}
