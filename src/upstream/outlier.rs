//! Outlier detection (passive, like Envoy's consecutive gateway failures): a replica whose
//! exchanges fail `outlier_consecutive_failures` times in a row — connect refused or timed out,
//! reset or closed mid-exchange, an unparsable response, `scoring_timeout_ms` — is taken out of
//! the served list for `outlier_base_ejection_ms` × the number of times it was ejected (at most
//! 10×; the count restarts after ten quiet base periods). At most half of a version's replicas are
//! out at once, so a single replica is never ejected and a version never loses all its capacity
//! to ejection. A model's own 5xx answers are answers, not transport failures: they never count.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::{Lease, Replica, ReplicaSet};
use crate::config::ServiceSettings;

/// Ejection lengths grow with each ejection up to this multiple of the base.
const MAX_MULTIPLIER: u32 = 10;
/// At most this share of a version's replicas is ejected at any time.
const MAX_EJECTED_PERCENT: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Policy {
    threshold: u32,
    base: Duration,
}

impl Policy {
    pub(super) fn from_settings(s: &ServiceSettings) -> Self {
        Policy {
            threshold: s.outlier_consecutive_failures,
            base: s.outlier_base_ejection,
        }
    }
}

/// How one exchange with a replica ended, as far as its health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The response was read to its end (whatever its status code).
    Answered,
    /// A transport failure or a timeout.
    Failed,
}

/// A replica taken out of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub addr: std::net::SocketAddr,
    pub duration: Duration,
    pub ejected_now: usize,
}

impl Lease {
    /// Record how the exchange on this lease ended; returns the ejection it caused, if any.
    pub fn report(&self, outcome: Outcome) -> Option<Ejection> {
        let r = &self.replica;
        match outcome {
            Outcome::Answered => {
                r.failures.store(0, Ordering::Release);
                None
            }
            Outcome::Failed => {
                let threshold = self.set.outlier.threshold;
                let n = r.failures.fetch_add(1, Ordering::AcqRel) + 1;
                (threshold > 0 && n >= threshold)
                    .then(|| self.set.eject(r))
                    .flatten()
            }
        }
    }
}

impl ReplicaSet {
    /// Replicas ejected right now.
    pub fn ejected(&self) -> usize {
        self.ejected.lock().map(|e| e.len()).unwrap_or(0)
    }

    fn eject(self: &Arc<Self>, replica: &Arc<Replica>) -> Option<Ejection> {
        let _guard = self.update_lock.lock().ok()?;
        let mut ejected = self.ejected.lock().ok()?;
        let old = self.replicas.load_full();
        if !old.iter().any(|r| Arc::ptr_eq(r, replica)) {
            return None; // already out (or removed by discovery)
        }
        let total = old.len() + ejected.len();
        if (ejected.len() + 1) * 100 > total * MAX_EJECTED_PERCENT {
            return None;
        }
        let now = Instant::now();
        let base = self.outlier.base;
        let mut last = replica.last_ejected.lock().ok()?;
        // Quiet for ten base periods: the next ejection starts short again.
        let quiet = last.is_none_or(|t| now.duration_since(t) >= base * MAX_MULTIPLIER);
        let times = if quiet {
            1
        } else {
            (replica.ejections.load(Ordering::Acquire) + 1).min(MAX_MULTIPLIER)
        };
        replica.ejections.store(times, Ordering::Release);
        let duration = base * times;
        *last = Some(now + duration);
        drop(last);
        replica.failures.store(0, Ordering::Release);
        ejected.push(replica.clone());
        let ejected_now = ejected.len();
        drop(ejected);
        let next = old
            .iter()
            .filter(|r| !Arc::ptr_eq(r, replica))
            .cloned()
            .collect();
        self.swap(&old, next);
        let set = Arc::downgrade(self);
        let addr = replica.addr;
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            readmit(set, addr);
        });
        Some(Ejection {
            addr,
            duration,
            ejected_now,
        })
    }
}

/// The ejection is over: serve the replica again (still in `ejected` means discovery still
/// lists it).
fn readmit(set: Weak<ReplicaSet>, addr: std::net::SocketAddr) {
    let Some(set) = set.upgrade() else { return };
    let Ok(_guard) = set.update_lock.lock() else {
        return;
    };
    let Ok(mut ejected) = set.ejected.lock() else {
        return;
    };
    let Some(i) = ejected.iter().position(|r| r.addr == addr) else {
        return;
    };
    let replica = ejected.swap_remove(i);
    drop(ejected);
    let old = set.replicas.load_full();
    if !old.iter().any(|r| r.addr == addr) {
        let mut next = old.to_vec();
        next.push(replica);
        set.swap(&old, next);
        tracing::info!(replica = %addr, "replica back in service after its ejection");
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::config::Protocol;

    fn set(n: usize, threshold: u32) -> Arc<ReplicaSet> {
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 11_000 + i as u16)))
            .collect();
        let settings = ServiceSettings {
            outlier_consecutive_failures: threshold,
            outlier_base_ejection: Duration::from_secs(30),
            max_request_wait_time: Duration::from_millis(100),
            ..ServiceSettings::default()
        };
        ReplicaSet::new(&addrs, Protocol::Http1, &settings, &crate::upstream::Shares::whole())
    }

    async fn fail_until_ejected(rs: &Arc<ReplicaSet>, addr: SocketAddr) -> Option<Ejection> {
        for _ in 0..100 {
            let (lease, _) = rs.acquire().await.ok()?;
            if lease.replica.addr == addr
                && let Some(e) = lease.report(Outcome::Failed)
            {
                return Some(e);
            }
        }
        None
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_then_readmit_with_growing_backoff() {
        let rs = set(2, 3);
        let bad = rs.replicas()[0].addr;
        let e = fail_until_ejected(&rs, bad).await.expect("ejected");
        assert_eq!(e.duration, Duration::from_secs(30));
        assert_eq!(rs.replicas().len(), 1);
        assert_eq!(rs.ejected(), 1);
        for _ in 0..10 {
            let (lease, _) = rs.acquire().await.expect("the other replica serves");
            assert_ne!(
                lease.replica.addr, bad,
                "an ejected replica gets no request"
            );
        }
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(rs.replicas().len(), 2, "back after 30 s");
        assert_eq!(rs.ejected(), 0);
        // Failing again soon after: ejected for twice as long.
        let e = fail_until_ejected(&rs, bad).await.expect("ejected again");
        assert_eq!(e.duration, Duration::from_secs(60));
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(rs.replicas().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_resets_the_count_and_a_lone_replica_is_never_ejected() {
        let rs = set(2, 3);
        let (lease, _) = rs.acquire().await.expect("slot");
        for _ in 0..2 {
            assert!(lease.report(Outcome::Failed).is_none());
        }
        assert!(lease.report(Outcome::Answered).is_none());
        for _ in 0..2 {
            assert!(lease.report(Outcome::Failed).is_none(), "count restarted");
        }
        drop(lease);

        let lone = set(1, 1);
        let (lease, _) = lone.acquire().await.expect("slot");
        for _ in 0..10 {
            assert!(lease.report(Outcome::Failed).is_none());
        }
        assert_eq!(lone.replicas().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_half_are_ejected_and_zero_disables() {
        let rs = set(4, 1);
        let addrs: Vec<_> = rs.replicas().iter().map(|r| r.addr).collect();
        let mut ejected = 0;
        for a in addrs {
            if fail_until_ejected(&rs, a).await.is_some() {
                ejected += 1;
            }
        }
        assert_eq!(ejected, 2);
        assert_eq!(rs.replicas().len(), 2);

        let off = set(2, 0);
        let (lease, _) = off.acquire().await.expect("slot");
        for _ in 0..100 {
            assert!(lease.report(Outcome::Failed).is_none());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn discovery_keeps_an_ejected_replica_out_and_forgets_a_removed_one() {
        let rs = set(3, 1);
        let all: Vec<_> = rs.replicas().iter().map(|r| r.addr).collect();
        fail_until_ejected(&rs, all[0]).await.expect("ejected");
        rs.update(&all);
        assert_eq!(rs.replicas().len(), 2, "still out after a discovery update");
        rs.update(&all[1..]);
        assert_eq!(rs.ejected(), 0, "gone from discovery: forgotten");
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(
            rs.replicas().len(),
            2,
            "not re-added once discovery dropped it"
        );
    }
}
