//! Upstream replicas of one service version: a bounded, deadline-aware wait for a free replica
//! slot ([`ReplicaSet::acquire`]), the choice of replica (power of two choices over peak-EWMA cost,
//! among replicas under their concurrency limit), and pooled connections (`replica`).

mod ewma;
mod h1;
mod outlier;
mod replica;
mod reply;
pub mod shares;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::config::{Protocol, ServiceSettings};
use crate::request::forward::Forward;
pub use crate::request::forward::UpstreamBody;
use crate::request::{ClientBody, ClientHead};
pub use outlier::Outcome;
pub use replica::{ClientBodyError, Failure, Replica, UpstreamError};
pub use reply::{Reply, ReplyHeaders, ResponseBody};
pub use shares::{ShareView, Shares};

/// A request on its way to a replica: the client's head and body and what forwarding adds.
/// The replica client encodes it for the replica's protocol once the replica is known (a raw
/// head with its whole body straight from the bytes that arrived, for HTTP/1.1).
#[derive(Debug)]
pub struct Outgoing {
    pub head: ClientHead,
    pub body: ClientBody,
    pub forward: Forward,
    /// It may go to a replica again after it may have reached one ([`replayable`]).
    pub replayable: bool,
}

impl Outgoing {
    /// A simple request as the fast path takes it from `wire` (head and whole body), from a
    /// loopback client, with the request id `request_id` (for the replica client's tests and
    /// fuzz targets).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn from_wire(wire: &[u8], request_id: &str, replayable: bool) -> Outgoing {
        use crate::http1::request::{Take, take_request};
        let Take::Request { head, body, .. } =
            take_request(&mut bytes::BytesMut::from(wire), 64 * 1024, 64 * 1024)
        else {
            panic!("not a simple request: {:?}", String::from_utf8_lossy(wire));
        };
        Outgoing {
            head: ClientHead::Raw(head),
            body: ClientBody::Whole(body),
            forward: Forward {
                path: Some("/score".into()),
                client: std::net::Ipv4Addr::LOCALHOST.into(),
                tls: false,
                drop_authorization: false,
                request_id: http::HeaderValue::from_str(request_id).expect("a request id"),
                max_body: 64 * 1024,
                hop: None,
            },
            replayable,
        }
    }
}

/// Whether a request may go to a replica again after it may have reached it. RFC 9110 §9.2.2:
/// a client must not automatically retry a non-idempotent request; like Go's `net/http`, the
/// client's `Idempotency-Key` (or `X-Idempotency-Key`) says that repeating it is safe. A scoring
/// `POST` is neither by default: a model that may have run is never run again.
pub fn replayable(method: &http::Method, has_header: impl Fn(&http::HeaderName) -> bool) -> bool {
    method.is_idempotent() || has_header(&IDEMPOTENCY_KEY) || has_header(&X_IDEMPOTENCY_KEY)
}

pub static IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");
pub static X_IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("x-idempotency-key");

/// Why no replica slot was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saturated {
    /// The gateway's own queue for this version is full: rejected without waiting.
    Gateway,
    /// Every replica stayed busy for the whole `max_request_wait_time`.
    Replicas,
    /// The version has no ready replica at all (discovery found none).
    NoReplicas,
    /// While the request waited, this gateway's share of the version went to other gateways
    /// (a member joined): it is theirs to serve now.
    Moved,
}

/// The replicas of one version and the queue in front of them. The replica list can change
/// under load ([`ReplicaSet::update`], fed by discovery): replicas that stay keep their slot
/// counters, removed ones finish their in-flight requests and get no new ones. So can this
/// gateway's share of each replica's limit ([`Shares`]), when several gateways serve them.
#[derive(Debug)]
pub struct ReplicaSet {
    replicas: ArcSwap<Vec<Arc<Replica>>>,
    protocol: Protocol,
    /// `replica_max_concurrent_requests`: the limit of each replica over all gateways.
    limit: u32,
    /// One permit per slot this gateway may use (the sum of its replicas' limits); FIFO waiters.
    slots: Arc<Semaphore>,
    /// Permits to retire as leases end, after capacity shrank under busy replicas.
    excess: AtomicUsize,
    shares: Arc<Shares>,
    /// The epoch of `shares` the replicas' limits follow.
    applied: AtomicU64,
    update_lock: Mutex<()>,
    /// Wakes the waiters when this gateway's share of the version drops to nothing.
    moved: tokio::sync::Notify,
    queued: AtomicU32,
    max_queued: u32,
    max_wait: Duration,
    outlier: outlier::Policy,
    /// Replicas out for a while after consecutive failures. Discovery's list is always the
    /// served replicas plus these: `update` forgets an ejected replica it no longer lists.
    ejected: Mutex<Vec<Arc<Replica>>>,
}

/// A granted slot on one replica; dropping it frees the slot.
#[derive(Debug)]
pub struct Lease {
    pub replica: Arc<Replica>,
    set: Arc<ReplicaSet>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.replica.in_flight.fetch_sub(1, Ordering::AcqRel);
        let retire = self
            .set
            .excess
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if retire && let Some(p) = self.permit.take() {
            p.forget();
        }
    }
}

/// How the permits change when replicas' limits change: per replica, the slots above a lowered
/// limit retire now when free and as their leases end when busy; a raised limit first takes back
/// busy slots that were waiting to retire.
#[derive(Debug, Default)]
struct Resize {
    add: usize,
    cancel: usize,
    retire_now: usize,
    retire_later: usize,
}

impl Resize {
    fn replica(&mut self, busy: u32, from: u32, to: u32) {
        let (busy, from, to) = (busy as usize, from as usize, to as usize);
        let (over_before, over_after) = (busy.saturating_sub(from), busy.saturating_sub(to));
        if to >= from {
            let cancel = over_before - over_after;
            self.cancel += cancel;
            self.add += to - from - cancel;
        } else {
            let newly_over = over_after - over_before;
            self.retire_later += newly_over;
            self.retire_now += from - to - newly_over;
        }
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
    pub fn new(
        addrs: &[SocketAddr],
        protocol: Protocol,
        settings: &ServiceSettings,
        shares: &Arc<Shares>,
    ) -> Arc<Self> {
        let limit = settings.replica_max_concurrent_requests;
        let (epoch, view) = shares.load();
        let replicas: Vec<_> = addrs
            .iter()
            .map(|a| Arc::new(Replica::new(*a, protocol, view.limit(*a, limit, None))))
            .collect();
        let capacity: usize = replicas.iter().map(|r| r.limit() as usize).sum();
        Arc::new(ReplicaSet {
            outlier: outlier::Policy::from_settings(settings),
            ejected: Mutex::new(Vec::new()),
            replicas: ArcSwap::from_pointee(replicas),
            protocol,
            limit,
            slots: Arc::new(Semaphore::new(capacity)),
            excess: AtomicUsize::new(0),
            shares: shares.clone(),
            applied: AtomicU64::new(epoch),
            update_lock: Mutex::new(()),
            moved: tokio::sync::Notify::new(),
            queued: AtomicU32::new(0),
            max_queued: settings.max_queued_requests,
            max_wait: settings.max_request_wait_time,
        })
    }

    /// Whether this set was built for these per-replica settings (so it can be reused).
    pub fn compatible(&self, protocol: Protocol, settings: &ServiceSettings) -> bool {
        self.protocol == protocol
            && self.limit == settings.replica_max_concurrent_requests
            && self.max_queued == settings.max_queued_requests
            && self.max_wait == settings.max_request_wait_time
            && self.outlier == outlier::Policy::from_settings(settings)
    }

    pub fn replicas(&self) -> Arc<Vec<Arc<Replica>>> {
        self.replicas.load_full()
    }

    /// Replace the replica list: kept addresses keep their `Replica` (slot counters, pooled
    /// connections, latency); capacity follows the number of replicas.
    pub fn update(&self, addrs: &[SocketAddr]) {
        let Ok(_guard) = self.update_lock.lock() else {
            return;
        };
        let Ok(mut ejected) = self.ejected.lock() else {
            return;
        };
        // An ejected replica that discovery dropped is forgotten; one it keeps stays out.
        ejected.retain(|r| addrs.contains(&r.addr));
        let old = self.replicas.load_full();
        let served: Vec<SocketAddr> = addrs
            .iter()
            .filter(|a| !ejected.iter().any(|r| r.addr == **a))
            .copied()
            .collect();
        drop(ejected);
        if old.len() == served.len() && old.iter().zip(&served).all(|(r, a)| r.addr == *a) {
            return;
        }
        let view = self.shares.view();
        let next: Vec<Arc<Replica>> = served
            .iter()
            .map(|a| {
                old.iter().find(|r| r.addr == *a).cloned().unwrap_or_else(|| {
                    let limit = view.limit(*a, self.limit, None);
                    Arc::new(Replica::new(*a, self.protocol, limit))
                })
            })
            .collect();
        self.swap(&old, next);
    }

    /// Serve `next` instead of `old`, moving the permits with the replicas (caller holds
    /// `update_lock`): a removed replica's free slots retire now, its busy ones when their
    /// leases end; one coming back from an ejection gets its share under the current view.
    fn swap(&self, old: &[Arc<Replica>], next: Vec<Arc<Replica>>) {
        let view = self.shares.view();
        let mut plan = Resize::default();
        for r in next.iter().filter(|r| !old.iter().any(|o| Arc::ptr_eq(o, r))) {
            let limit = view.limit(r.addr, self.limit, Some(r.limit()));
            r.limit.store(limit, Ordering::Release);
            plan.replica(r.in_flight(), 0, limit);
        }
        for r in old
            .iter()
            .filter(|o| !next.iter().any(|r| Arc::ptr_eq(o, r)))
        {
            plan.replica(r.in_flight(), r.limit(), 0);
        }
        self.replicas.store(Arc::new(next));
        self.apply(plan);
    }

    /// Follow the current [`Shares`] view when it changed since the last look: each served
    /// replica's limit becomes this gateway's share of it, and the permits follow.
    pub fn reshare(&self) {
        let epoch = self.shares.epoch();
        if self.applied.load(Ordering::Acquire) == epoch {
            return;
        }
        let Ok(_guard) = self.update_lock.lock() else {
            return;
        };
        let (epoch, view) = self.shares.load();
        let mut plan = Resize::default();
        let (mut before, mut after) = (0u32, 0u32);
        for r in self.replicas.load().iter() {
            let from = r.limit();
            let to = view.limit(r.addr, self.limit, Some(from));
            r.limit.store(to, Ordering::Release);
            plan.replica(r.in_flight(), from, to);
            (before, after) = (before + from, after + to);
        }
        self.apply(plan);
        self.applied.store(epoch, Ordering::Release);
        if before > 0 && after == 0 {
            self.moved.notify_waiters();
        }
    }

    /// Move the permits as `plan` says (caller holds `update_lock`).
    fn apply(&self, plan: Resize) {
        if plan.cancel > 0 {
            let _ = self
                .excess
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some(n.saturating_sub(plan.cancel))
                });
        }
        self.slots.add_permits(plan.add);
        let forgotten = self.slots.forget_permits(plan.retire_now);
        self.excess.fetch_add(
            plan.retire_later + (plan.retire_now - forgotten),
            Ordering::AcqRel,
        );
    }

    /// The slots this gateway may use now (its share of every served replica).
    pub fn local_capacity(&self) -> usize {
        self.reshare();
        self.replicas.load().iter().map(|r| r.limit() as usize).sum()
    }

    /// Whether every served replica's in-flight requests fit this gateway's current limit on
    /// it (after a view lowered them, once the requests above it ended).
    pub fn within_limits(&self) -> bool {
        self.reshare();
        self.applied.load(Ordering::Acquire) == self.shares.epoch()
            && self
                .replicas
                .load()
                .iter()
                .all(|r| r.in_flight() <= r.limit())
    }

    /// The whole limit of each replica (over all gateways).
    pub fn replica_limit(&self) -> u32 {
        self.limit
    }

    /// A slot on the replica at `addr` now, without waiting; `None` when it is at its limit
    /// or not served.
    pub fn try_acquire_on(self: &Arc<Self>, addr: SocketAddr) -> Option<Lease> {
        self.reshare();
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        let replica = self
            .replicas
            .load()
            .iter()
            .find(|r| r.addr == addr)
            .filter(|r| r.try_claim())
            .cloned()?;
        Some(Lease {
            replica,
            set: self.clone(),
            permit: Some(permit),
        })
    }

    /// Requests waiting for a slot right now.
    pub fn queued(&self) -> u32 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Wait (at most `max_request_wait_time`, FIFO) for a free slot, then pick the replica.
    /// A waiter whose deadline passes is removed from the queue and never sent.
    /// Returns the lease and how long the request queued.
    pub async fn acquire(self: &Arc<Self>) -> Result<(Lease, Duration), Saturated> {
        self.acquire_avoiding(None).await
    }

    /// [`ReplicaSet::acquire`] that gives up with [`Saturated::Moved`] when this gateway's share
    /// of the version drops to nothing while the request waits (it can be handed to the
    /// gateway that has it now instead of waiting out its deadline here).
    pub async fn acquire_or_moved(self: &Arc<Self>) -> Result<(Lease, Duration), Saturated> {
        self.acquire_inner(None, true).await
    }

    /// [`ReplicaSet::acquire`], on another replica than `avoid` when there is another (a request
    /// that could not reach `avoid` goes elsewhere).
    pub async fn acquire_avoiding(
        self: &Arc<Self>,
        avoid: Option<SocketAddr>,
    ) -> Result<(Lease, Duration), Saturated> {
        self.acquire_inner(avoid, false).await
    }

    async fn acquire_inner(
        self: &Arc<Self>,
        avoid: Option<SocketAddr>,
        wake_on_move: bool,
    ) -> Result<(Lease, Duration), Saturated> {
        if self.replicas.load().is_empty() {
            return Err(Saturated::NoReplicas);
        }
        self.reshare();
        // The clock is read only once the request has to wait: the common case reads none.
        let mut start: Option<Instant> = None;
        loop {
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
                    let since = *start.get_or_insert_with(Instant::now);
                    let remaining = self.max_wait.saturating_sub(since.elapsed());
                    let moved = async {
                        if wake_on_move {
                            self.moved.notified().await;
                        } else {
                            std::future::pending::<()>().await;
                        }
                    };
                    tokio::select! {
                        r = tokio::time::timeout(remaining, self.slots.clone().acquire_owned()) => match r {
                            Ok(Ok(p)) => p,
                            _ => return Err(Saturated::Replicas),
                        },
                        () = moved => return Err(Saturated::Moved),
                    }
                }
            };
            if let Some(replica) = self.claim(avoid) {
                let lease = Lease {
                    replica,
                    set: self.clone(),
                    permit: Some(permit),
                };
                return Ok((lease, start.map_or(Duration::ZERO, |s| s.elapsed())));
            }
            // The replica list changed under us (a busy replica was removed): try again.
            drop(permit);
            let since = *start.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.max_wait {
                return Err(Saturated::Replicas);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Claim a slot on a replica under its limit: the cheaper of two random picks by
    /// peak-EWMA cost, else the first free one from a random start.
    fn claim(&self, avoid: Option<SocketAddr>) -> Option<Arc<Replica>> {
        let replicas = self.replicas.load();
        if let Some(avoid) = avoid
            && replicas.len() > 1
        {
            let others: Vec<Arc<Replica>> = replicas
                .iter()
                .filter(|r| r.addr != avoid)
                .cloned()
                .collect();
            return Self::pick(&others);
        }
        Self::pick(&replicas)
    }

    fn pick(replicas: &[Arc<Replica>]) -> Option<Arc<Replica>> {
        let n = replicas.len();
        if n >= 2 {
            let a = fastrand::usize(..n);
            let b = (a + 1 + fastrand::usize(..n - 1)) % n;
            let (ra, rb) = (&replicas[a], &replicas[b]);
            let (first, second) = if ra.cost() <= rb.cost() {
                (ra, rb)
            } else {
                (rb, ra)
            };
            for r in [first, second] {
                if r.try_claim() {
                    return Some(r.clone());
                }
            }
        }
        let start = fastrand::usize(..n.max(1));
        (0..n)
            .map(|i| &replicas[(start + i) % n])
            .find(|r| r.try_claim())
            .cloned()
    }
}

#[cfg(test)]
#[path = "set_tests.rs"]
mod tests;
