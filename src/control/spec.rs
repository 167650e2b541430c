//! What an attachment is (purpose, load balancer, TLS mode) and the pure checks of the
//! operator's options, with Azure ML's messages where Azure has one (behaviours §1).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Let's Encrypt's production directory, the default for `--leaf-domain-label`.
pub const DEFAULT_ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Azure's default subnet name for an internal load balancer.
pub const DEFAULT_SUBNET: &str = "aks-subnet";
/// FastProd needs this many vCPUs in the cluster.
pub const FASTPROD_MIN_VCPUS: u64 = 12;
/// DevTest is recommended at least this many.
pub const DEVTEST_MIN_VCPUS: u64 = 2;

pub const MSG_LB_TYPE: &str = "Invalid configuration. Load balancer type should be either \"PublicIp\" or \"InternalLoadBalancer\".";
pub const MSG_LB_SUBNET: &str = "Invalid configuration, load balancer subnet can be changed from default when load balancer type is \"InternalLoadBalancer\".";
pub const MSG_SSL_INCOMPLETE: &str = "Invalid configuration, not all ssl information provided. To enable SSL validation please provide the cname, cert pem file, and key pem file.";
pub const MSG_RENEW_NO_LABEL: &str = "Invalid configuration. When renew is set the cluster should have the leaf domain label set for SSL.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    FastProd,
    DevTest,
}

impl Purpose {
    pub fn parse(s: &str) -> Result<Purpose, String> {
        match s {
            "FastProd" => Ok(Purpose::FastProd),
            "DevTest" => Ok(Purpose::DevTest),
            other => Err(format!(
                "Invalid configuration. Cluster purpose should be either \"FastProd\" or \"DevTest\" (got {other:?})."
            )),
        }
    }

    /// Gateway replicas: one for DevTest, three for FastProd.
    pub fn replicas(self) -> i32 {
        match self {
            Purpose::FastProd => 3,
            Purpose::DevTest => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::FastProd => "FastProd",
            Purpose::DevTest => "DevTest",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadBalancerType {
    PublicIp,
    InternalLoadBalancer,
}

impl LoadBalancerType {
    pub fn parse(s: &str) -> Result<LoadBalancerType, String> {
        match s {
            "PublicIp" => Ok(LoadBalancerType::PublicIp),
            "InternalLoadBalancer" => Ok(LoadBalancerType::InternalLoadBalancer),
            _ => Err(MSG_LB_TYPE.to_string()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalancerType::PublicIp => "PublicIp",
            LoadBalancerType::InternalLoadBalancer => "InternalLoadBalancer",
        }
    }
}

/// How the endpoint is secured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum TlsMode {
    /// The operator's certificate, kept in the TLS Secret; clients use `cname`.
    Custom {
        cname: String,
    },
    /// ACME certificate for `<label><suffix>.<region>.cloudapp.azure.com`; the suffix is kept
    /// so renewals and updates keep the name.
    Auto {
        label: String,
        suffix: String,
        region: String,
        directory: String,
    },
    Disabled,
}

impl TlsMode {
    pub fn label(&self) -> &'static str {
        match self {
            TlsMode::Custom { .. } => "custom",
            TlsMode::Auto { .. } => "auto",
            TlsMode::Disabled => "disabled",
        }
    }

    /// The host name clients use, when TLS is on.
    pub fn host(&self) -> Option<String> {
        match self {
            TlsMode::Custom { cname } => Some(cname.clone()),
            TlsMode::Auto {
                label,
                suffix,
                region,
                ..
            } => Some(format!("{label}{suffix}.{region}.cloudapp.azure.com")),
            TlsMode::Disabled => None,
        }
    }
}

/// One attachment: what `attach` installed, recorded in the cluster's marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub compute: String,
    pub workspace: String,
    pub namespace: String,
    pub purpose: Purpose,
    pub load_balancer: LoadBalancerType,
    /// Internal load balancer subnet (`None`: Azure's default).
    pub subnet: Option<String>,
    pub tls: TlsMode,
    pub image: String,
    /// Unix seconds.
    pub attached_at: u64,
    /// Whether attach created the namespace (detach then removes it when nothing else is in it).
    pub created_namespace: bool,
}

/// One refused option: the flag and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for OptionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every broken rule of the compute name, one message each (behaviours §1.1).
pub fn compute_name_errors(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let n = name.chars().count();
    if !(3..=24).contains(&n) {
        out.push(format!("must be 3 to 24 characters long; {name:?} has {n}"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        out.push(format!(
            "may contain only letters, digits and '-'; {name:?} contains {bad:?}"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        out.push(format!("must start with a letter; {name:?} does not"));
    }
    if !name.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        out.push(format!(
            "must end with a letter or digit; {name:?} does not"
        ));
    }
    out
}

/// The TLS options as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub cname: Option<String>,
    pub leaf_domain_label: Option<String>,
    pub region: Option<String>,
    pub acme_directory: Option<String>,
    pub no_ssl: bool,
}

impl TlsOptions {
    pub fn is_empty(&self) -> bool {
        self.cert_file.is_none()
            && self.key_file.is_none()
            && self.cname.is_none()
            && self.leaf_domain_label.is_none()
            && self.region.is_none()
            && self.acme_directory.is_none()
            && !self.no_ssl
    }
}

/// A PEM chain and its key, as stored in the Secret.
pub type PemPair = (Vec<u8>, Vec<u8>);

/// A TLS mode chosen and checked, with the certificate to store for `Custom`.
#[derive(Debug, Clone)]
pub struct ChosenTls {
    pub mode: TlsMode,
    /// PEM chain and key for the Secret (custom mode only).
    pub pem: Option<PemPair>,
    pub summary: Option<crate::tls::LoadedCert>,
}

/// Resolve exactly one TLS mode. `keep_suffix` is the stored suffix of the same label (renewals
/// and updates keep the name).
pub fn choose_tls(
    o: &TlsOptions,
    keep_suffix: Option<(&str, &str)>,
    errs: &mut Vec<OptionError>,
) -> Option<ChosenTls> {
    let mut push = |field: &str, message: String| {
        errs.push(OptionError {
            field: field.into(),
            message,
        })
    };
    let custom_given = o.cert_file.is_some() || o.key_file.is_some() || o.cname.is_some();
    let auto_given = o.leaf_domain_label.is_some();
    let modes = [custom_given, auto_given, o.no_ssl]
        .iter()
        .filter(|b| **b)
        .count();
    if modes == 0 {
        push(
            "tls",
            "choose a TLS mode: --ssl-cert-pem-file + --ssl-key-pem-file + --ssl-cname (your \
             certificate), --leaf-domain-label + --region (ACME certificate), or --no-ssl"
                .into(),
        );
        return None;
    }
    if modes > 1 {
        push(
            "tls",
            "Invalid configuration. Choose one TLS mode: custom certificate files (--ssl-*), \
             --leaf-domain-label, or --no-ssl; they cannot be combined."
                .into(),
        );
        return None;
    }
    if !auto_given && (o.region.is_some() || o.acme_directory.is_some()) {
        push(
            "--region",
            "--region and --acme-directory only apply with --leaf-domain-label".into(),
        );
    }
    if o.no_ssl {
        return Some(ChosenTls {
            mode: TlsMode::Disabled,
            pem: None,
            summary: None,
        });
    }
    if auto_given {
        let label = o.leaf_domain_label.clone().unwrap_or_default();
        let before = errs.len();
        if !crate::config::validate::tls::valid_dns_label(&label) {
            errs.push(OptionError {
                field: "--leaf-domain-label".into(),
                message: format!(
                    "{label:?} is not a valid DNS label: 1 to 57 lowercase letters, digits or '-', \
                     starting with a letter"
                ),
            });
        }
        let region = match &o.region {
            Some(r) if crate::config::validate::tls::valid_dns_label(r) => r.clone(),
            Some(r) => {
                errs.push(OptionError {
                    field: "--region".into(),
                    message: format!("{r:?} is not an Azure region name, e.g. \"westeurope\""),
                });
                String::new()
            }
            None => {
                errs.push(OptionError {
                    field: "--region".into(),
                    message: "--leaf-domain-label needs --region (e.g. westeurope): the name is \
                              <label><6 characters>.<region>.cloudapp.azure.com"
                        .into(),
                });
                String::new()
            }
        };
        let directory = o
            .acme_directory
            .clone()
            .unwrap_or_else(|| DEFAULT_ACME_DIRECTORY.into());
        if !directory.starts_with("https://") {
            errs.push(OptionError {
                field: "--acme-directory".into(),
                message: format!("{directory:?} must be an https:// ACME directory URL"),
            });
        }
        if errs.len() > before {
            return None;
        }
        let suffix = match keep_suffix {
            Some((l, s)) if l == label => s.to_string(),
            _ => random_suffix(),
        };
        return Some(ChosenTls {
            mode: TlsMode::Auto {
                label,
                suffix,
                region,
                directory,
            },
            pem: None,
            summary: None,
        });
    }
    let (Some(cert), Some(key), Some(cname)) = (&o.cert_file, &o.key_file, &o.cname) else {
        push("--ssl-cname", MSG_SSL_INCOMPLETE.into());
        return None;
    };
    checked_pair(
        cert,
        key,
        cname,
        ("--ssl-cert-pem-file", "--ssl-key-pem-file"),
        errs,
    )
    .map(|(pem, summary)| ChosenTls {
        mode: TlsMode::Custom {
            cname: cname.clone(),
        },
        pem: Some(pem),
        summary: Some(summary),
    })
}

/// Load and validate a certificate pair for `cname` (the certificate issue's checks: parse,
/// passphrase-protected keys, key/leaf match, validity, name coverage, chain order, RSA size).
pub fn checked_pair(
    cert: &std::path::Path,
    key: &std::path::Path,
    cname: &str,
    flags: (&str, &str),
    errs: &mut Vec<OptionError>,
) -> Option<(PemPair, crate::tls::LoadedCert)> {
    let read =
        |p: &std::path::Path, field: &str, errs: &mut Vec<OptionError>| match std::fs::read(p) {
            Ok(b) => Some(b),
            Err(e) => {
                errs.push(OptionError {
                    field: field.into(),
                    message: format!("cannot read {}: {e}", p.display()),
                });
                None
            }
        };
    let c = read(cert, flags.0, errs);
    let k = read(key, flags.1, errs);
    let (c, k) = (c?, k?);
    let key_name = key.display().to_string();
    let loaded = match crate::tls::load_pem_pair(&c, &k, &cert.display().to_string(), &key_name) {
        Ok(l) => l,
        Err(e) => {
            // Named against the option that holds the file at fault.
            let field = if e.is_about(&key_name) {
                flags.1
            } else {
                flags.0
            };
            errs.push(OptionError {
                field: field.into(),
                message: format!("{e}"),
            });
            return None;
        }
    };
    let policy = crate::tls::Policy {
        cname: Some(cname.to_string()),
        roots: None,
    };
    if let Err(e) = crate::tls::validate(&loaded, &policy, std::time::SystemTime::now()) {
        errs.push(OptionError {
            field: flags.0.into(),
            message: format!("{e}"),
        });
        return None;
    }
    Some(((c, k), loaded))
}

/// The load balancer options, with Azure's two messages.
pub fn choose_load_balancer(
    lb: Option<&str>,
    subnet: Option<&str>,
    current: Option<(LoadBalancerType, Option<String>)>,
    errs: &mut Vec<OptionError>,
) -> Option<(LoadBalancerType, Option<String>)> {
    let kind = match lb {
        Some(s) => match LoadBalancerType::parse(s) {
            Ok(k) => k,
            Err(m) => {
                errs.push(OptionError {
                    field: "--load-balancer".into(),
                    message: m,
                });
                return None;
            }
        },
        None => current
            .as_ref()
            .map(|c| c.0)
            .unwrap_or(LoadBalancerType::PublicIp),
    };
    let subnet = match (subnet, kind) {
        (Some(s), LoadBalancerType::PublicIp) if s != DEFAULT_SUBNET => {
            errs.push(OptionError {
                field: "--subnet".into(),
                message: MSG_LB_SUBNET.into(),
            });
            return None;
        }
        (Some(s), LoadBalancerType::InternalLoadBalancer) => {
            if !valid_subnet(s) {
                errs.push(OptionError {
                    field: "--subnet".into(),
                    message: format!(
                        "{s:?} is not a subnet name: 1 to 80 letters, digits, '-', '_' or '.'"
                    ),
                });
                return None;
            }
            Some(s.to_string())
        }
        (None, LoadBalancerType::InternalLoadBalancer) => current
            .filter(|c| c.0 == LoadBalancerType::InternalLoadBalancer)
            .and_then(|c| c.1),
        _ => None,
    };
    Some((kind, subnet))
}

fn valid_subnet(s: &str) -> bool {
    (1..=80).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn random_suffix() -> String {
    std::iter::repeat_with(|| {
        let c = fastrand::u8(..36);
        char::from(if c < 10 { b'0' + c } else { b'a' + c - 10 })
    })
    .take(6)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_name_rules_each_have_a_message() {
        assert!(compute_name_errors("aks-prod1").is_empty());
        assert_eq!(compute_name_errors("ab").len(), 1);
        assert_eq!(compute_name_errors("a".repeat(25).as_str()).len(), 1);
        let e = compute_name_errors("1a_b-");
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].contains("only letters, digits and '-'"));
        assert!(e[1].contains("start with a letter"));
        assert!(e[2].contains("end with a letter or digit"));
    }

    #[test]
    fn load_balancer_messages_are_azures() {
        let mut errs = Vec::new();
        assert!(choose_load_balancer(Some("Public"), None, None, &mut errs).is_none());
        assert_eq!(errs[0].message, MSG_LB_TYPE);
        errs.clear();
        assert!(choose_load_balancer(None, Some("mine"), None, &mut errs).is_none());
        assert_eq!(errs[0].message, MSG_LB_SUBNET);
        errs.clear();
        let (k, s) = choose_load_balancer(Some("InternalLoadBalancer"), None, None, &mut errs)
            .expect("internal");
        assert_eq!((k, s), (LoadBalancerType::InternalLoadBalancer, None));
    }

    #[test]
    fn tls_modes_are_exclusive_and_complete() {
        let mut errs = Vec::new();
        let o = TlsOptions {
            cname: Some("a.example".into()),
            ..Default::default()
        };
        assert!(choose_tls(&o, None, &mut errs).is_none());
        assert_eq!(errs[0].message, MSG_SSL_INCOMPLETE);
        errs.clear();
        let o = TlsOptions {
            leaf_domain_label: Some("mymodel".into()),
            region: Some("westeurope".into()),
            ..Default::default()
        };
        let t = choose_tls(&o, Some(("mymodel", "abc123")), &mut errs).expect("auto");
        assert_eq!(
            t.mode.host().as_deref(),
            Some("mymodelabc123.westeurope.cloudapp.azure.com")
        );
        let o = TlsOptions {
            no_ssl: true,
            leaf_domain_label: Some("x".into()),
            ..Default::default()
        };
        assert!(choose_tls(&o, None, &mut errs).is_none());
    }
}
