//! One ACME order, start to finish: account, order for the names, challenges answered by the
//! gateway itself, finalize with our own rcgen CSR (fresh ECDSA P-256 key), fetch the chain.

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};

use super::challenge::Challenges;
use super::{AcmeError, ChallengeKind};

/// Issued material, PEM.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

pub async fn issue(
    account: &Account,
    names: &[String],
    kind: ChallengeKind,
    challenges: &Challenges,
    timeout: Duration,
) -> Result<Issued, AcmeError> {
    let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let result = async {
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(AcmeError::Authorization(format!("{other:?}"))),
            }
            let ty = match kind {
                ChallengeKind::Http01 => ChallengeType::Http01,
                ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
            };
            let mut ch = a
                .challenge(ty)
                .ok_or(AcmeError::NoChallenge(kind.as_str()))?;
            let ka = ch.key_authorization();
            match kind {
                ChallengeKind::Http01 => challenges.put_http(&ch.token, ka.as_str()),
                ChallengeKind::TlsAlpn01 => {
                    let name = ch.identifier().to_string();
                    challenges.put_alpn(&name, ka.digest().as_ref())?
                }
            }
            ch.set_ready().await?;
        }
        let policy = RetryPolicy::new()
            .initial_delay(Duration::from_millis(100))
            .timeout(timeout);
        let status = order.poll_ready(&policy).await?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::Order(format!("{status:?}")));
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key)?;
        order.finalize_csr(csr.der()).await?;
        let chain_pem = order.poll_certificate(&policy).await?;
        Ok(Issued {
            chain_pem,
            key_pem: key.serialize_pem(),
        })
    }
    .await;
    challenges.clear();
    result
}
