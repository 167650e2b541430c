//! Answers to ACME challenges while an order is open: HTTP-01 key authorizations served at
//! `/.well-known/acme-challenge/<token>`, and TLS-ALPN-01 certificates (RFC 8737) handed out by
//! the TLS resolver to clients that offer only the `acme-tls/1` protocol.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::sign::CertifiedKey;

/// The ALPN protocol of TLS-ALPN-01 validation.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// The path prefix of HTTP-01 validation.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Pending challenge answers. Read on the rare challenge path only, never on scoring requests.
#[derive(Debug, Default)]
pub struct Challenges {
    http: RwLock<HashMap<String, String>>,
    alpn: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn put_http(&self, token: &str, key_authorization: &str) {
        if let Ok(mut m) = self.http.write() {
            m.insert(token.to_string(), key_authorization.to_string());
        }
    }

    /// The key authorization for an HTTP-01 token.
    pub fn http(&self, token: &str) -> Option<String> {
        self.http.read().ok()?.get(token).cloned()
    }

    /// The HTTP-01 answer for a request path: `None` when the path is not a challenge path,
    /// `Some(None)` for an unknown token, `Some(Some(key_authorization))` for a pending one.
    pub fn answer_path(&self, path: &str) -> Option<Option<String>> {
        path.strip_prefix(HTTP01_PREFIX)
            .map(|token| self.http(token))
    }

    /// Build and keep the RFC 8737 certificate for `name` (acmeIdentifier = SHA-256 digest of
    /// the key authorization).
    pub fn put_alpn(&self, name: &str, digest: &[u8]) -> Result<(), rcgen::Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
        let cert = params.self_signed(&key)?;
        let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signing = crate::tls::provider()
            .key_provider
            .load_private_key(der)
            .map_err(|_| rcgen::Error::KeyGenerationUnavailable)?;
        let ck = Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing));
        if let Ok(mut m) = self.alpn.write() {
            m.insert(name.to_ascii_lowercase(), ck);
        }
        Ok(())
    }

    pub fn alpn(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn.read().ok()?.get(name).cloned()
    }

    /// Forget every answer (after an order ends).
    pub fn clear(&self) {
        if let Ok(mut m) = self.http.write() {
            m.clear();
        }
        if let Ok(mut m) = self.alpn.write() {
            m.clear();
        }
    }
}
