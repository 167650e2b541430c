//! Loading certificate + key PEM material into a served [`LoadedCert`], with the checks that make a
//! bad pair fail at load time (unparsable PEM, encrypted key, key not matching the leaf).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: no PEM {expected} found; expected a file with -----BEGIN {expected}-----")]
    NoPem {
        what: String,
        expected: &'static str,
    },
    #[error("{what}: malformed PEM: {source}")]
    Pem {
        what: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error(
        "{what}: passphrase-protected keys are not supported; decrypt it first (openssl pkey -in key.pem -out plain.pem)"
    )]
    EncryptedKey { what: String },
    #[error(
        "{what}: unsupported private key (RSA, ECDSA P-256/P-384 and Ed25519 are supported): {source}"
    )]
    UnsupportedKey {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error(
        "the private key does not match the certificate's public key (leaf must come first in the chain)"
    )]
    KeyMismatch(#[source] rustls::Error),
    #[error("certificate is not valid X.509: {0}")]
    X509(String),
    #[error("the chain holds no certificate")]
    EmptyChain,
    #[error("no certificate slot {0}")]
    NoSlot(usize),
    #[error("the certificate state is unusable: a thread panicked while changing it")]
    Poisoned,
    #[error("certificate expired at {not_after}; renew it")]
    Expired { not_after: String },
    #[error("certificate is not valid before {not_before}; check the clock or wait")]
    NotYetValid { not_before: String },
    #[error("certificate names {names:?} do not cover the configured name {cname:?}")]
    NameMismatch { cname: String, names: Vec<String> },
    #[error(
        "chain out of order: certificate {index} ({subject}) is not issued by the next one ({next}); put the leaf first, then each issuer"
    )]
    ChainOrder {
        index: usize,
        subject: String,
        next: String,
    },
    #[error("chain does not lead to the configured root: {0}")]
    ChainIncomplete(#[source] rustls::Error),
    #[error("RSA key of {bits} bits is too weak; at least 2048 bits are required")]
    WeakRsa { bits: usize },
    #[error("generating a certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[source] rustls::Error),
}

impl TlsError {
    /// Whether the error is about the file named `key_name` (the private key) rather than the
    /// certificate: which option or field to name in the message.
    pub fn is_about(&self, key_name: &str) -> bool {
        match self {
            TlsError::NoPem { what, .. }
            | TlsError::Pem { what, .. }
            | TlsError::EncryptedKey { what }
            | TlsError::UnsupportedKey { what, .. } => what == key_name,
            TlsError::Read { path, .. } => path.display().to_string() == key_name,
            _ => false,
        }
    }
}

/// A served certificate: the rustls key plus what we tell operators about it.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// DNS names and IP addresses from the leaf's subjectAltName (or CN without SANs).
    pub names: Vec<String>,
    pub subject: String,
    pub issuer: String,
    pub not_after: String,
    /// Validity window as Unix seconds.
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    /// Hex SHA-256 of the leaf's DER.
    pub fingerprint_sha256: String,
}

/// PEM files (certificate chains, keys, CA bundles, JWT public keys) larger than this are refused
/// unread: no real one comes close, and `/dev/zero` must not exhaust memory.
pub const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

/// Read a PEM file of at most [`MAX_PEM_FILE_BYTES`].
pub fn read_pem_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_PEM_FILE_BYTES + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "larger than 1 MiB: not a PEM file",
        ));
    }
    Ok(out)
}

/// Load a PEM chain file (leaf first) and a PEM private key file.
pub fn load_pem_files(cert: &Path, key: &Path) -> Result<LoadedCert, TlsError> {
    let read = |p: &Path| {
        read_pem_file(p).map_err(|source| TlsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    load_pem_pair(
        &read(cert)?,
        &read(key)?,
        &cert.display().to_string(),
        &key.display().to_string(),
    )
}

/// Load in-memory PEM chain + key; `cert_name`/`key_name` only label the errors.
pub fn load_pem_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
) -> Result<LoadedCert, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: cert_name.to_string(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoPem {
            what: cert_name.to_string(),
            expected: "CERTIFICATE",
        });
    }
    // A weak RSA leaf gets its own message before the crypto library refuses its key.
    if let Ok((_, leaf)) = x509_parser::parse_x509_certificate(&chain[0])
        && let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = leaf.public_key().parsed()
        && rsa.key_size() < 2048
    {
        return Err(TlsError::WeakRsa {
            bits: rsa.key_size(),
        });
    }
    if contains(key_pem, b"ENCRYPTED PRIVATE KEY") || contains(key_pem, b"Proc-Type: 4,ENCRYPTED") {
        return Err(TlsError::EncryptedKey {
            what: key_name.to_string(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoPem {
            what: key_name.to_string(),
            expected: "PRIVATE KEY",
        },
        source => TlsError::Pem {
            what: key_name.to_string(),
            source,
        },
    })?;
    let signing = super::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::UnsupportedKey {
            what: key_name.to_string(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(TlsError::KeyMismatch)?;
    describe(Arc::new(certified))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Read names, subject, issuer, expiry and fingerprint from the leaf.
pub(crate) fn describe(key: Arc<CertifiedKey>) -> Result<LoadedCert, TlsError> {
    let leaf = key.cert.first().ok_or(TlsError::EmptyChain)?;
    let (_, x509) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| TlsError::X509(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for gn in &san.value.general_names {
            match gn {
                x509_parser::extensions::GeneralName::DNSName(n) => {
                    names.push(n.to_ascii_lowercase())
                }
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        names.extend(
            x509.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(|s| s.to_ascii_lowercase()),
        );
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf.as_ref());
    let fingerprint_sha256 = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok(LoadedCert {
        names,
        subject: x509.subject().to_string(),
        issuer: x509.issuer().to_string(),
        not_after: x509.validity().not_after.to_string(),
        not_before_unix: x509.validity().not_before.timestamp(),
        not_after_unix: x509.validity().not_after.timestamp(),
        fingerprint_sha256,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SignatureAlgorithm};

    fn pair(alg: &'static SignatureAlgorithm) -> (String, String) {
        let key = KeyPair::generate_for(alg).expect("key");
        let params = CertificateParams::new(vec!["svc.example.test".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn loads_ecdsa_ed25519_and_rsa_pairs() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ED25519,
            &rcgen::PKCS_RSA_SHA256,
        ] {
            let (cert, key) = pair(alg);
            let loaded = load_pem_pair(cert.as_bytes(), key.as_bytes(), "cert", "key")
                .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(loaded.names, vec!["svc.example.test".to_string()]);
            assert_eq!(loaded.fingerprint_sha256.len(), 64);
        }
    }

    #[test]
    fn refuses_mismatched_missing_and_encrypted_keys() {
        let (cert, _) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (_, other_key) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let e =
            load_pem_pair(cert.as_bytes(), other_key.as_bytes(), "c", "k").expect_err("mismatch");
        assert!(matches!(e, TlsError::KeyMismatch(_)), "{e}");
        let e = load_pem_pair(b"not pem", other_key.as_bytes(), "c", "k").expect_err("no cert");
        assert!(matches!(e, TlsError::NoPem { .. }), "{e}");
        let enc =
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let e = load_pem_pair(cert.as_bytes(), enc, "c", "k").expect_err("encrypted");
        assert!(
            e.to_string()
                .contains("passphrase-protected keys are not supported")
        );
    }
}
