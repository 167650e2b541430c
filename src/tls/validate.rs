//! Checks a candidate certificate must pass before it may replace the served one: validity
//! window, the configured name covered (SAN, one-label wildcards), chain in order (each
//! certificate signed by the next), complete up to a configured root when one is given, and
//! RSA keys of at least 2048 bits. Parsing, encrypted keys and key/leaf mismatch are checked
//! earlier, when the PEM is loaded ([`super::load_pem_pair`]).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::public_key::PublicKey;

use super::{LoadedCert, TlsError};

const MIN_RSA_BITS: usize = 2048;

/// What a certificate slot requires of its candidates.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The name clients use (e.g. Azure's `cname`); must be covered by the leaf.
    pub cname: Option<String>,
    /// Trust anchors the chain must lead to, when configured.
    pub roots: Option<Arc<RootCertStore>>,
}

/// Does `pattern` (a SAN entry, possibly `*.suffix`) cover `name`? Wildcards cover exactly one
/// leftmost label (RFC 6125 §6.4.3), never the bare suffix.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == name,
    }
}

/// Run every check; the first failure is returned.
pub fn validate(cert: &LoadedCert, policy: &Policy, now: SystemTime) -> Result<(), TlsError> {
    let now_unix = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let chain = &cert.key.cert;
    let parsed: Vec<_> = chain
        .iter()
        .map(|der| {
            x509_parser::parse_x509_certificate(der)
                .map(|(_, c)| c)
                .map_err(|e| TlsError::X509(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let leaf = parsed.first().ok_or(TlsError::EmptyChain)?;
    if now_unix > cert.not_after_unix {
        return Err(TlsError::Expired {
            not_after: cert.not_after.clone(),
        });
    }
    if now_unix < cert.not_before_unix {
        return Err(TlsError::NotYetValid {
            not_before: leaf.validity().not_before.to_string(),
        });
    }
    if let Some(cname) = &policy.cname
        && !cert.names.iter().any(|n| name_matches(n, cname))
    {
        return Err(TlsError::NameMismatch {
            cname: cname.clone(),
            names: cert.names.clone(),
        });
    }
    if let Ok(PublicKey::RSA(rsa)) = leaf.public_key().parsed()
        && rsa.key_size() < MIN_RSA_BITS
    {
        return Err(TlsError::WeakRsa {
            bits: rsa.key_size(),
        });
    }
    for (i, pair) in parsed.windows(2).enumerate() {
        let (child, issuer) = (&pair[0], &pair[1]);
        if child.issuer() != issuer.subject()
            || child.verify_signature(Some(issuer.public_key())).is_err()
        {
            return Err(TlsError::ChainOrder {
                index: i,
                subject: child.subject().to_string(),
                next: issuer.subject().to_string(),
            });
        }
    }
    if let Some(roots) = &policy.roots {
        let verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), super::provider())
                .build()
                .map_err(|e| TlsError::ChainIncomplete(rustls::Error::General(e.to_string())))?;
        let name = policy
            .cname
            .clone()
            .or_else(|| cert.names.first().cloned())
            .unwrap_or_default();
        let server_name = ServerName::try_from(name.replace('*', "wildcard"))
            .map_err(|e| TlsError::ChainIncomplete(rustls::Error::General(e.to_string())))?;
        let intermediates: Vec<CertificateDer<'static>> = chain.iter().skip(1).cloned().collect();
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now_unix.max(0) as u64));
        verifier
            .verify_server_cert(&chain[0], &intermediates, &server_name, &[], at)
            .map_err(TlsError::ChainIncomplete)?;
    }
    Ok(())
}

/// Trust anchors from a PEM bundle.
pub fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, TlsError> {
    use rustls_pki_types::pem::PemObject;
    let mut store = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(pem) {
        let der = der.map_err(|source| TlsError::Pem {
            what: "root bundle".into(),
            source,
        })?;
        store
            .add(der)
            .map_err(|e| TlsError::X509(format!("root certificate: {e}")))?;
    }
    if store.is_empty() {
        return Err(TlsError::NoPem {
            what: "root bundle".into(),
            expected: "CERTIFICATE",
        });
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn wildcards_cover_one_label_only() {
        assert!(name_matches("iris.example.com", "IRIS.example.com"));
        assert!(name_matches("*.example.com", "iris.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("iris.example.com", "other.example.com"));
    }
}
