//! Upstream replicas of one service version: a bounded, deadline-aware wait for a free replica
//! slot ([`ReplicaSet::acquire`]), the choice of replica (power of two choices over peak-EWMA cost,
//! among replicas under their concurrency limit), and pooled connections ([`replica`]).

mod ewma;
mod replica;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::config::{Protocol, ServiceSettings};
pub use replica::{Checkout, Replica, UpstreamBody, UpstreamError};

/// Why no replica slot was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saturated {
    /// The gateway's own queue for this version is full: rejected without waiting.
    Gateway,
    /// Every replica stayed busy for the whole `max_request_wait_time`.
    Replicas,
}

/// The replicas of one version and the queue in front of them.
#[derive(Debug)]
pub struct ReplicaSet {
    replicas: Vec<Arc<Replica>>,
    /// One permit per replica slot (replicas × `replica_max_concurrent_requests`); FIFO waiters.
    slots: Arc<Semaphore>,
    queued: AtomicU32,
    max_queued: u32,
    max_wait: Duration,
}

/// A granted slot on one replica; dropping it frees the slot.
#[derive(Debug)]
pub struct Lease {
    pub replica: Arc<Replica>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.replica.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a waiting request for as long as it waits.
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ReplicaSet {
    pub fn new(addrs: &[SocketAddr], protocol: Protocol, settings: &ServiceSettings) -> Self {
        let limit = settings.replica_max_concurrent_requests;
        let replicas: Vec<_> = addrs
            .iter()
            .map(|a| Arc::new(Replica::new(*a, protocol, limit)))
            .collect();
        let capacity = replicas.len() * limit as usize;
        ReplicaSet {
            replicas,
            slots: Arc::new(Semaphore::new(capacity)),
            queued: AtomicU32::new(0),
            max_queued: settings.max_queued_requests,
            max_wait: settings.max_request_wait_time,
        }
    }

    pub fn replicas(&self) -> &[Arc<Replica>] {
        &self.replicas
    }

    /// Requests waiting for a slot right now.
    pub fn queued(&self) -> u32 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Wait (at most `max_request_wait_time`, FIFO) for a free slot, then pick the replica.
    /// A waiter whose deadline passes is removed from the queue and never sent.
    /// Returns the lease and how long the request queued.
    pub async fn acquire(&self) -> Result<(Lease, Duration), Saturated> {
        let start = Instant::now();
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => return Err(Saturated::Replicas),
            Err(TryAcquireError::NoPermits) => {
                if self.max_wait.is_zero() {
                    return Err(Saturated::Replicas);
                }
                if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                    return Err(Saturated::Gateway);
                }
                let _waiting = Waiting(&self.queued);
                let remaining = self.max_wait.saturating_sub(start.elapsed());
                match tokio::time::timeout(remaining, self.slots.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => return Err(Saturated::Replicas),
                }
            }
        };
        let replica = self.claim();
        Ok((
            Lease {
                replica,
                _permit: permit,
            },
            start.elapsed(),
        ))
    }

    /// Claim a slot on a replica under its limit. The caller holds a permit, and every claimed
    /// slot is backed by a permit, so some replica has room; p2c picks the cheaper of two.
    fn claim(&self) -> Arc<Replica> {
        let n = self.replicas.len();
        if n >= 2 {
            let a = fastrand::usize(..n);
            let b = (a + 1 + fastrand::usize(..n - 1)) % n;
            let (ra, rb) = (&self.replicas[a], &self.replicas[b]);
            let (first, second) = if ra.cost() <= rb.cost() {
                (ra, rb)
            } else {
                (rb, ra)
            };
            for r in [first, second] {
                if r.try_claim() {
                    return r.clone();
                }
            }
        }
        loop {
            let start = fastrand::usize(..n.max(1));
            for i in 0..n {
                let r = &self.replicas[(start + i) % n];
                if r.try_claim() {
                    return r.clone();
                }
            }
            // A slot freed behind our scan while others were claimed ahead of it: scan again.
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize, limit: u32, wait_ms: u64, max_queued: u32) -> ReplicaSet {
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16)))
            .collect();
        let settings = ServiceSettings {
            replica_max_concurrent_requests: limit,
            max_request_wait_time: Duration::from_millis(wait_ms),
            max_queued_requests: max_queued,
            ..ServiceSettings::default()
        };
        ReplicaSet::new(&addrs, Protocol::Http1, &settings)
    }

    #[tokio::test(start_paused = true)]
    async fn waits_fifo_then_times_out_as_replicas_saturated() {
        let rs = set(1, 1, 500, 10);
        let (held, waited) = rs.acquire().await.expect("first slot is free");
        assert_eq!(waited, Duration::ZERO);
        let err = rs
            .acquire()
            .await
            .expect_err("second must wait and time out");
        assert_eq!(err, Saturated::Replicas);
        assert_eq!(rs.queued(), 0, "the expired waiter left the queue");
        drop(held);
        assert!(rs.acquire().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_is_gateway_saturation() {
        let rs = Arc::new(set(1, 1, 10_000, 1));
        let _held = rs.acquire().await.expect("free");
        let rs2 = rs.clone();
        let waiter = tokio::spawn(async move { rs2.acquire().await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert_eq!(rs.queued(), 1);
        assert_eq!(rs.acquire().await.err(), Some(Saturated::Gateway));
        waiter.abort();
    }

    #[tokio::test]
    async fn never_exceeds_per_replica_limit() {
        let rs = set(3, 2, 1000, 100);
        let mut leases = Vec::new();
        for _ in 0..6 {
            leases.push(rs.acquire().await.expect("capacity 6").0);
        }
        for r in rs.replicas() {
            assert_eq!(r.in_flight(), 2);
        }
        drop(leases);
        for r in rs.replicas() {
            assert_eq!(r.in_flight(), 0);
        }
    }
}
