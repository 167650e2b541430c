//! The certificate pipeline: a source offers candidate PEM material -> load + [`validate`] ->
//! a new immutable [`CertStore`] -> `ArcSwap::store`. A candidate that fails never replaces the
//! served certificate; the failure is logged (never key material), counted and shown on the
//! admin port. The file source polls cert + key and only offers a pair after both files have
//! stayed unchanged for the debounce interval, so a half-written pair is never loaded.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::{CertHandle, CertStore, LoadedCert, Policy, TlsError, load_pem_pair, validate};
use crate::metrics::CertMetrics;
use tokio_util::sync::CancellationToken;

/// Where a certificate slot's material comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    SelfSigned,
    /// Issued by the ACME loop (`acme`); starts on the stored or a placeholder certificate.
    Acme,
    /// A Kubernetes Secret, watched (`discovery::secret`); not ready until it arrives.
    Secret {
        namespace: String,
        name: String,
    },
}

impl CertSource {
    pub fn label(&self) -> &'static str {
        match self {
            CertSource::Files { .. } => "files",
            CertSource::SelfSigned => "self_signed",
            CertSource::Acme => "acme",
            CertSource::Secret { .. } => "secret",
        }
    }
}

/// One configured certificate: its name (the metrics label), source, policy and first material.
#[derive(Debug, Clone)]
pub struct SlotConfig {
    pub name: String,
    pub source: CertSource,
    pub policy: Policy,
    pub initial: LoadedCert,
}

#[derive(Debug)]
struct Slot {
    cfg: SlotConfig,
    current: LoadedCert,
    reloaded_at: SystemTime,
    last_error: Option<String>,
    /// Serving a placeholder until the source delivers its first good material.
    awaiting_first: bool,
}

#[derive(Debug)]
pub struct CertManager {
    handle: CertHandle,
    slots: Mutex<Vec<Slot>>,
    metrics: CertMetrics,
}

impl CertManager {
    /// `None` when no certificate is configured.
    pub fn new(slots: Vec<SlotConfig>, metrics: CertMetrics) -> Option<Arc<Self>> {
        let store = CertStore::new(slots.iter().map(|s| &s.initial))?;
        let now = SystemTime::now();
        let slots: Vec<Slot> = slots
            .into_iter()
            .map(|cfg| Slot {
                current: cfg.initial.clone(),
                awaiting_first: matches!(cfg.source, CertSource::Secret { .. }),
                cfg,
                reloaded_at: now,
                last_error: None,
            })
            .collect();
        for s in &slots {
            metrics.served(&s.cfg.name, None, &s.current);
        }
        Some(Arc::new(CertManager {
            handle: CertHandle::new(store),
            slots: Mutex::new(slots),
            metrics,
        }))
    }

    pub fn handle(&self) -> CertHandle {
        self.handle.clone()
    }

    /// Validate candidate material for slot `slot`; when it passes, serve it from now on.
    pub fn offer(
        &self,
        slot: usize,
        cert_pem: &[u8],
        key_pem: &[u8],
        source: &'static str,
    ) -> Result<(), TlsError> {
        let mut slots = self.slots.lock().map_err(|_| TlsError::Poisoned)?;
        let Some(s) = slots.get_mut(slot) else {
            return Err(TlsError::NoSlot(slot));
        };
        let label = (s.cfg.name.clone(), "cert.pem", "key.pem");
        let candidate = load_pem_pair(cert_pem, key_pem, label.1, label.2)
            .and_then(|c| validate(&c, &s.cfg.policy, SystemTime::now()).map(|()| c));
        match candidate {
            Ok(c) => {
                let old = std::mem::replace(&mut s.current, c);
                s.reloaded_at = SystemTime::now();
                s.last_error = None;
                s.awaiting_first = false;
                self.metrics.served(&s.cfg.name, Some(&old), &s.current);
                let fingerprint = s.current.fingerprint_sha256.clone();
                let name = s.cfg.name.clone();
                if let Some(store) = CertStore::new(slots.iter().map(|s| &s.current)) {
                    self.handle.store(store);
                }
                self.metrics.reload(source, "ok");
                tracing::info!(certificate = %name, source, fingerprint_sha256 = %fingerprint, "certificate rotated");
                Ok(())
            }
            Err(e) => {
                s.last_error = Some(e.to_string());
                self.metrics.reload(source, "rejected");
                tracing::warn!(certificate = %s.cfg.name, source, error = %e, "certificate candidate refused; the current one stays in service");
                Err(e)
            }
        }
    }

    /// Record a candidate refused before it could be parsed (e.g. a Secret without the keys).
    pub fn refuse(&self, slot: usize, source: &'static str, reason: String) {
        self.metrics.reload(source, "rejected");
        tracing::warn!(source, error = %reason, "certificate candidate refused; the current one stays in service");
        if let Ok(mut slots) = self.slots.lock()
            && let Some(s) = slots.get_mut(slot)
        {
            s.last_error = Some(reason);
        }
    }

    /// True once every source has delivered good material (a Secret-backed slot starts false).
    pub fn ready(&self) -> bool {
        self.slots
            .lock()
            .map(|s| s.iter().all(|s| !s.awaiting_first))
            .unwrap_or(false)
    }

    /// `(slot, pick(source))` for every slot whose source `pick` selects.
    fn slots_from<T>(&self, pick: impl Fn(&CertSource) -> Option<T>) -> Vec<(usize, T)> {
        self.slots
            .lock()
            .map(|slots| {
                slots
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| pick(&s.cfg.source).map(|t| (i, t)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The Secret-backed slots: (slot, namespace, name).
    pub fn secret_slots(&self) -> Vec<(usize, String, String)> {
        self.slots_from(|src| match src {
            CertSource::Secret { namespace, name } => Some((namespace.clone(), name.clone())),
            _ => None,
        })
        .into_iter()
        .map(|(i, (ns, name))| (i, ns, name))
        .collect()
    }

    /// Whether slot `slot` currently serves the certificate with this fingerprint.
    pub fn serves(&self, slot: usize, fingerprint_sha256: &str) -> bool {
        self.slots
            .lock()
            .ok()
            .and_then(|s| {
                s.get(slot)
                    .map(|s| s.current.fingerprint_sha256 == fingerprint_sha256)
            })
            .unwrap_or(false)
    }

    /// Refresh the seconds-until-expiry gauges (called before each scrape).
    pub fn refresh_expiry(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if let Ok(slots) = self.slots.lock() {
            for s in slots.iter() {
                self.metrics
                    .expiry(&s.cfg.name, s.current.not_after_unix - now);
            }
        }
    }

    /// What `/certificates` shows.
    pub fn status(&self) -> serde_json::Value {
        let Ok(slots) = self.slots.lock() else {
            return serde_json::json!({ "certificates": [] });
        };
        let list: Vec<_> = slots
            .iter()
            .map(|s| {
                let c = &s.current;
                serde_json::json!({
                    "name": s.cfg.name,
                    "source": s.cfg.source.label(),
                    "subject": c.subject,
                    "names": c.names,
                    "issuer": c.issuer,
                    "not_after": c.not_after,
                    "fingerprint_sha256": c.fingerprint_sha256,
                    "reloaded_at_unix": s.reloaded_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                    "last_error": s.last_error,
                })
            })
            .collect();
        serde_json::json!({ "certificates": list })
    }

    fn file_slots(&self) -> Vec<(usize, PathBuf, PathBuf)> {
        self.slots_from(|src| match src {
            CertSource::Files { cert, key } => Some((cert.clone(), key.clone())),
            _ => None,
        })
        .into_iter()
        .map(|(i, (cert, key))| (i, cert, key))
        .collect()
    }

    /// Poll every file-backed slot until `stop` turns true.
    pub async fn watch_files(
        self: Arc<Self>,
        poll: Duration,
        debounce: Duration,
        stop: CancellationToken,
    ) {
        let files = self.file_slots();
        if files.is_empty() {
            return;
        }
        let mut state: Vec<FileWatch> = Vec::new();
        for (i, cert, key) in files {
            let applied = read_pair(&cert, &key).await.map(|(c, k)| digest(&c, &k));
            state.push(FileWatch {
                slot: i,
                cert,
                key,
                applied,
                rejected: None,
                pending: None,
            });
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = stop.cancelled() => return,
            }
            for w in &mut state {
                w.tick(&self, debounce).await;
            }
        }
    }
}

struct FileWatch {
    slot: usize,
    cert: PathBuf,
    key: PathBuf,
    applied: Option<[u8; 32]>,
    rejected: Option<[u8; 32]>,
    pending: Option<([u8; 32], Instant)>,
}

impl FileWatch {
    async fn tick(&mut self, manager: &CertManager, debounce: Duration) {
        // A file missing mid-rename is simply not ready yet.
        let Some((cert, key)) = read_pair(&self.cert, &self.key).await else {
            return;
        };
        let h = digest(&cert, &key);
        if Some(h) == self.applied || Some(h) == self.rejected {
            self.pending = None;
            return;
        }
        match self.pending {
            Some((p, since)) if p == h => {
                if since.elapsed() >= debounce {
                    self.pending = None;
                    match manager.offer(self.slot, &cert, &key, "files") {
                        Ok(()) => self.applied = Some(h),
                        Err(_) => self.rejected = Some(h),
                    }
                }
            }
            _ => self.pending = Some((h, Instant::now())),
        }
    }
}

/// Both files, each capped like every PEM read ([`super::read_pem_file`]): a rotation to an
/// oversized file is skipped, never read into memory.
async fn read_pair(cert: &std::path::Path, key: &std::path::Path) -> Option<(Vec<u8>, Vec<u8>)> {
    let (cert, key) = (cert.to_path_buf(), key.to_path_buf());
    tokio::task::spawn_blocking(move || {
        Some((
            super::read_pem_file(&cert).ok()?,
            super::read_pem_file(&key).ok()?,
        ))
    })
    .await
    .ok()
    .flatten()
}

fn digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(cert);
    ctx.update(&[0]);
    ctx.update(key);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}
