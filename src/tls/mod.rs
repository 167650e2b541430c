//! TLS termination. A [`CertStore`] is one immutable snapshot (SNI name -> certificate); the
//! [`Resolver`] reads it through a single `ArcSwap` load per handshake, so a new store can be
//! swapped in ([`CertHandle::store`]) without touching listeners or taking a lock. Each
//! connection runs on rustls's unbuffered API ([`accept`], [`TlsStream`]): the gateway owns the
//! record buffers and frees them while the connection is idle.

mod load;
mod manager;
mod selfsigned;
mod stream;
mod validate;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::acme::Challenges;
use crate::acme::challenge::ACME_TLS_ALPN;

pub use load::{
    LoadedCert, MAX_PEM_FILE_BYTES, TlsError, load_pem_files, load_pem_pair, read_pem_file,
};
pub use manager::{CertManager, CertSource, SlotConfig};
pub use selfsigned::{DevCa, Leaf, SelfSigned, leaf_params};
pub use stream::{TlsStream, accept};
pub use validate::{Policy, name_matches, roots_from_pem, validate};

/// The one crypto provider of the process (aws-lc-rs).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server's provider: AES-128-GCM suites first and the server's order wins. TLS 1.3's
/// key schedule then runs on SHA-256 (hardware-accelerated) instead of SHA-384, which made up
/// ~18% of a resumed handshake's CPU in the profile; AES-128-GCM is TLS 1.3's mandatory suite
/// and Go's and Caddy's first choice too.
fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite as C;
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        C::TLS13_AES_128_GCM_SHA256
        | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        _ => 1,
    });
    Arc::new(p)
}

/// Install aws-lc-rs as the process default; harmless when already installed.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Certificates by name. Exact names first, then `*.suffix` wildcards (one label), else the
/// default (the first certificate configured), as a browser-facing server would.
#[derive(Debug, Clone)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl CertStore {
    /// Build a store; the first certificate is the default for clients without a matching SNI.
    /// `None` for an empty list.
    pub fn new<'a>(certs: impl IntoIterator<Item = &'a LoadedCert>) -> Option<Self> {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        for c in certs {
            default.get_or_insert_with(|| c.key.clone());
            for name in &c.names {
                let name = name.to_ascii_lowercase();
                if let Some(suffix) = name.strip_prefix("*.") {
                    wildcard
                        .entry(suffix.to_string())
                        .or_insert_with(|| c.key.clone());
                } else {
                    exact.entry(name).or_insert_with(|| c.key.clone());
                }
            }
        }
        Some(CertStore {
            exact,
            wildcard,
            default: default?,
        })
    }

    /// The certificate for an SNI name (or the default).
    pub fn resolve(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        if let Some(name) = sni {
            // rustls hands SNI over lowercased already.
            if let Some(k) = self.exact.get(name) {
                return k.clone();
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(k) = self.wildcard.get(parent)
            {
                return k.clone();
            }
        }
        self.default.clone()
    }
}

/// The swappable cell holding the served certificates.
#[derive(Debug, Clone)]
pub struct CertHandle(Arc<ArcSwap<CertStore>>);

impl CertHandle {
    pub fn new(store: CertStore) -> Self {
        CertHandle(Arc::new(ArcSwap::from_pointee(store)))
    }

    /// The certificate for an SNI name in the current snapshot (one lock-free load).
    pub fn resolve(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        self.0.load().resolve(sni)
    }

    /// Replace the served certificates; handshakes after this see the new store.
    pub fn store(&self, store: CertStore) {
        self.0.store(Arc::new(store));
    }
}

/// rustls resolver: one lock-free snapshot load per handshake. TLS-ALPN-01 validation
/// handshakes (ALPN `acme-tls/1` only) get the ACME challenge certificate instead.
#[derive(Debug)]
pub struct Resolver {
    certs: CertHandle,
    challenges: Option<Arc<Challenges>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(ch) = &self.challenges
            && let Some(mut alpn) = hello.alpn()
            && alpn.any(|p| p == ACME_TLS_ALPN)
        {
            return hello.server_name().and_then(|n| ch.alpn(n));
        }
        Some(self.certs.resolve(hello.server_name()))
    }
}

/// The rustls server configuration: TLS 1.3 (+ 1.2 unless disabled), ALPN h2 then http/1.1,
/// stateless session tickets and a session cache for resumption.
pub fn server_config(
    certs: CertHandle,
    allow_tls12: bool,
    challenges: Option<Arc<Challenges>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let versions: &[&rustls::SupportedProtocolVersion] = if allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut cfg = ServerConfig::builder_with_provider(server_provider())
        .with_protocol_versions(versions)
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver {
            certs,
            challenges: challenges.clone(),
        }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if challenges.is_some() {
        // Only ever chosen by a validator that offers nothing else.
        cfg.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    cfg.ignore_client_order = true;
    cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(TlsError::Rustls)?;
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
    Ok(Arc::new(cfg))
}
