//! Development certificates (rcgen), as mkcert does: a [`DevCa`] whose root clients trust, and
//! leaves it signs. Used by `scoregate demo`, `tls.self_signed` and the tests.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::{LoadedCert, TlsError, load_pem_pair};

/// A development certificate authority (ECDSA P-256).
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM: what clients trust (or what a leaf's chain continues with when
    /// this is an intermediate).
    pub ca_pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevCa { .. }")
    }
}

/// A leaf issued by a [`DevCa`], PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Leaf { .. }")
    }
}

/// Development certificates are valid from a day ago (clock skew) for `days` more: a leaf for 365
/// days in all (Mozilla's "intermediate" profile allows at most 366), a development CA for ten
/// years — not rcgen's 1975–4096.
fn validity(p: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(days);
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    validity(&mut p, 3650);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// Leaf parameters for `names` (DNS names or IP addresses), server auth.
pub fn leaf_params(names: &[String]) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map(String::as_str).unwrap_or("localhost"),
    );
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, 364);
    Ok(params)
}

impl DevCa {
    /// A new self-signed root named `cn`.
    pub fn new(cn: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params(cn);
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            issuer: Issuer::new(params, key),
            ca_pem: cert.pem(),
        })
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, cn: &str) -> Result<DevCa, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params(cn);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(DevCa {
            issuer: Issuer::new(params, key),
            ca_pem: cert.pem(),
        })
    }

    /// A leaf for `names`.
    pub fn issue(&self, names: &[String]) -> Result<Leaf, TlsError> {
        self.issue_with(leaf_params(names)?)
    }

    /// A leaf from explicit parameters (validity windows, names), with a fresh P-256 key.
    pub fn issue_with(&self, params: CertificateParams) -> Result<Leaf, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Generated development material, all PEM: a fresh CA and one leaf.
pub struct SelfSigned {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SelfSigned { .. }")
    }
}

impl SelfSigned {
    /// A fresh CA ("scoregate development CA") and an ECDSA P-256 leaf for `names`.
    pub fn generate(names: &[String]) -> Result<Self, TlsError> {
        let ca = DevCa::new("scoregate development CA")?;
        let leaf = ca.issue(names)?;
        Ok(SelfSigned {
            ca_pem: ca.ca_pem,
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
        })
    }

    pub fn certified_key(&self) -> Result<LoadedCert, TlsError> {
        load_pem_pair(
            self.cert_pem.as_bytes(),
            self.key_pem.as_bytes(),
            "self-signed certificate",
            "self-signed key",
        )
    }
}
