//! Certificates by ACME (RFC 8555) with instant-acme: the account key is persisted, one order at
//! a time is placed for the configured names, the gateway answers HTTP-01 on its plain listener
//! or TLS-ALPN-01 on its TLS listener, the issued chain goes through the same validation as every
//! other candidate ([`crate::tls::CertManager::offer`]) and is stored. Renewal starts when the
//! remaining lifetime falls below `max(renew_before, renew_fraction × lifetime)`; failures retry
//! with exponential backoff while the current certificate keeps serving.

pub mod challenge;
mod order;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{Account, AccountCredentials, NewAccount};

pub use challenge::Challenges;

use crate::metrics::AcmeMetrics;
use crate::tls::{CertManager, LoadedCert, TlsError, load_pem_files};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    Http01,
    TlsAlpn01,
}

impl ChallengeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// Validated `[tls.acme]` settings.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    pub directory: String,
    pub names: Vec<String>,
    pub contact: Vec<String>,
    pub state_dir: PathBuf,
    /// PEM root trusted for the directory's HTTPS (a private CA, pebble).
    pub root_ca: Option<PathBuf>,
    pub challenge: ChallengeKind,
    pub renew_fraction: f64,
    pub renew_before: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub order_timeout: Duration,
}

impl AcmeSettings {
    pub fn cert_path(&self) -> PathBuf {
        self.state_dir.join("cert.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.state_dir.join("key.pem")
    }

    fn account_path(&self) -> PathBuf {
        self.state_dir.join("account.json")
    }

    /// The stored certificate, when there is one that loads.
    pub fn stored(&self) -> Option<LoadedCert> {
        load_pem_files(&self.cert_path(), &self.key_path()).ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("building the CSR or challenge certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("stored ACME account is unreadable: {0}")]
    Account(#[source] serde_json::Error),
    #[error("the server offered no {0} challenge")]
    NoChallenge(&'static str),
    #[error("authorization is {0}, not pending")]
    Authorization(String),
    #[error("order ended {0}, not ready")]
    Order(String),
    #[error("the issued certificate was refused: {0}")]
    Rejected(#[source] TlsError),
}

impl AcmeError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AcmeError + '_ {
        move |source| AcmeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How long until a certificate valid `not_before..not_after` (Unix seconds) is due for renewal
/// at `now`: when the remaining lifetime is at most `max(before, fraction × lifetime)`.
pub fn renewal_wait(
    not_before: i64,
    not_after: i64,
    now: i64,
    fraction: f64,
    before: Duration,
) -> Duration {
    let lifetime = (not_after - not_before).max(0) as f64;
    let threshold = (lifetime * fraction).max(before.as_secs_f64());
    let renew_at = not_after as f64 - threshold;
    let wait = renew_at - now as f64;
    if wait <= 0.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(wait)
    }
}

/// `<label><6 characters>.<region>.cloudapp.azure.com`; the 6 characters are generated once per
/// label and kept in `state_dir`, so renewals and restarts keep the name.
pub fn leaf_domain_name(state_dir: &Path, label: &str, region: &str) -> Result<String, AcmeError> {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Stored {
        label: String,
        suffix: String,
    }
    let path = state_dir.join("leaf_domain.json");
    let existing = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Stored>(&b).ok())
        .filter(|s| s.label == label);
    let suffix = match existing {
        Some(s) => s.suffix,
        None => {
            let suffix: String = std::iter::repeat_with(|| {
                let c = fastrand::u8(..36);
                char::from(if c < 10 { b'0' + c } else { b'a' + c - 10 })
            })
            .take(6)
            .collect();
            std::fs::create_dir_all(state_dir).map_err(AcmeError::io(state_dir))?;
            let body = serde_json::to_vec(&Stored {
                label: label.to_string(),
                suffix: suffix.clone(),
            })
            .map_err(AcmeError::Account)?;
            crate::fsutil::write_atomic(&path, &body, 0o644).map_err(AcmeError::io(&path))?;
            suffix
        }
    };
    Ok(format!("{label}{suffix}.{region}.cloudapp.azure.com"))
}

/// Runs the order/renewal loop for one certificate slot.
pub struct AcmeManager {
    pub settings: AcmeSettings,
    pub challenges: Arc<Challenges>,
    pub certs: Arc<CertManager>,
    pub slot: usize,
    pub metrics: AcmeMetrics,
}

impl AcmeManager {
    async fn account(&self) -> Result<Account, AcmeError> {
        let s = &self.settings;
        let builder = || match &s.root_ca {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        };
        let path = s.account_path();
        if let Ok(bytes) = std::fs::read(&path) {
            let creds: AccountCredentials =
                serde_json::from_slice(&bytes).map_err(AcmeError::Account)?;
            return Ok(builder()?.from_credentials(creds).await?);
        }
        let contact: Vec<&str> = s.contact.iter().map(String::as_str).collect();
        let (account, creds) = builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                s.directory.clone(),
                None,
            )
            .await?;
        std::fs::create_dir_all(&s.state_dir).map_err(AcmeError::io(&s.state_dir))?;
        let body = serde_json::to_vec(&creds).map_err(AcmeError::Account)?;
        crate::fsutil::write_atomic(&path, &body, 0o600).map_err(AcmeError::io(&path))?;
        tracing::info!(directory = %s.directory, "ACME account created");
        Ok(account)
    }

    /// Time until the served ACME certificate is due (zero when none was issued yet).
    fn due_in(&self) -> Duration {
        let s = &self.settings;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        match s.stored() {
            Some(c) if self.certs.serves(self.slot, &c.fingerprint_sha256) => renewal_wait(
                c.not_before_unix,
                c.not_after_unix,
                now,
                s.renew_fraction,
                s.renew_before,
            ),
            _ => Duration::ZERO,
        }
    }

    async fn order_once(&self, account: &mut Option<Account>) -> Result<(), AcmeError> {
        if account.is_none() {
            *account = Some(self.account().await?);
        }
        let Some(acc) = account.as_ref() else {
            return Ok(());
        };
        let s = &self.settings;
        let issued = order::issue(
            acc,
            &s.names,
            s.challenge,
            &self.challenges,
            s.order_timeout,
        )
        .await?;
        self.certs
            .offer(
                self.slot,
                issued.chain_pem.as_bytes(),
                issued.key_pem.as_bytes(),
                "acme",
            )
            .map_err(AcmeError::Rejected)?;
        let (cert, key) = (s.cert_path(), s.key_path());
        std::fs::create_dir_all(&s.state_dir).map_err(AcmeError::io(&s.state_dir))?;
        crate::fsutil::write_atomic(&key, issued.key_pem.as_bytes(), 0o600)
            .map_err(AcmeError::io(&key))?;
        crate::fsutil::write_atomic(&cert, issued.chain_pem.as_bytes(), 0o644)
            .map_err(AcmeError::io(&cert))?;
        Ok(())
    }

    /// Order when due, renew before expiry, back off on failure; one order in flight at most.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = self.settings.retry_initial;
        let mut account = None;
        loop {
            let wait = self.due_in();
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait.min(Duration::from_secs(3600))) => continue,
                    _ = stop.cancelled() => return,
                }
            }
            let started = std::time::Instant::now();
            let pause = match self.order_once(&mut account).await {
                Ok(()) => {
                    self.metrics.order("ok");
                    tracing::info!(names = ?self.settings.names, seconds = started.elapsed().as_secs_f64(), "ACME certificate issued");
                    backoff = self.settings.retry_initial;
                    self.settings.retry_initial
                }
                Err(e) => {
                    self.metrics.order("error");
                    tracing::warn!(names = ?self.settings.names, error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "ACME order failed; the current certificate stays in service");
                    if matches!(e, AcmeError::Account(_)) {
                        account = None;
                    }
                    let p = backoff;
                    backoff = (backoff * 2).min(self.settings.retry_max);
                    p
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn renews_lets_encrypt_certificates_at_thirty_days_left() {
        let before = Duration::from_secs(30 * DAY as u64);
        let wait = renewal_wait(0, 90 * DAY, 10 * DAY, 1.0 / 3.0, before);
        assert_eq!(wait.as_secs() as i64, 50 * DAY);
        assert_eq!(
            renewal_wait(0, 90 * DAY, 61 * DAY, 1.0 / 3.0, before),
            Duration::ZERO
        );
    }

    #[test]
    fn long_certificates_renew_at_a_third_of_their_lifetime() {
        let five_years = 5 * 365 * DAY;
        let wait = renewal_wait(
            0,
            five_years,
            0,
            1.0 / 3.0,
            Duration::from_secs(30 * DAY as u64),
        );
        assert_eq!(wait.as_secs() as i64, five_years - five_years / 3);
        assert_eq!(
            renewal_wait(0, five_years, 0, 1.0, Duration::ZERO),
            Duration::ZERO
        );
    }

    #[test]
    fn leaf_domain_suffix_is_kept_for_the_same_label() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = leaf_domain_name(dir.path(), "myiris", "westeurope").expect("name");
        let b = leaf_domain_name(dir.path(), "myiris", "westeurope").expect("name");
        assert_eq!(a, b);
        assert!(
            a.starts_with("myiris") && a.ends_with(".westeurope.cloudapp.azure.com"),
            "{a}"
        );
        assert_eq!(
            a.len(),
            "myiris".len() + 6 + ".westeurope.cloudapp.azure.com".len()
        );
        let c = leaf_domain_name(dir.path(), "other", "westeurope").expect("name");
        assert!(c.starts_with("other"));
    }
}
