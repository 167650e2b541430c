//! A development CA and a leaf it signs (rcgen), as mkcert does: clients trust `ca_pem` and the
//! gateway serves the leaf. Used by `scoregate demo` and `tls.self_signed`.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::{LoadedCert, TlsError, load_pem_pair};

/// Generated development material, all PEM.
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
    /// A fresh CA ("scoregate development CA") and an ECDSA P-256 leaf for `names`
    /// (DNS names or IP addresses).
    pub fn generate(names: &[String]) -> Result<Self, TlsError> {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "scoregate development CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
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
        let leaf = params.signed_by(&leaf_key, &issuer)?;
        Ok(SelfSigned {
            ca_pem: ca_cert.pem(),
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
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
