//! Several gateways acting as one router (README "Running several gateway replicas").
//!
//! Each gateway holds a Lease of its own, labelled with its group, renewed at a third of its
//! duration; its annotations carry the gateway's peer address, the member view it acts on, the
//! view it has released (its requests in flight fit its share of that view) and its load. The
//! members are the Leases this gateway has seen change within their duration ([`membership`]).
//! From the members, every gateway computes the same shares of every replica's limit
//! (`upstream::shares`), lowers its own at once on a change and raises them only when every other
//! member released the new view, so the sum over gateways never exceeds the limit. A request
//! that lands on a gateway with no share of its version goes, once, to a gateway that has one,
//! over that gateway's peer port with a proof under the attachment's key ([`proof`]).

mod member_lease;
pub mod membership;
mod metrics;
pub mod proof;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio_util::sync::CancellationToken;

use crate::config::{CoordinationSettings, ServiceSettings};
use crate::upstream::shares::owners;
use crate::upstream::{Lease, ReplicaSet, ShareView, Shares};
pub use metrics::{CoordinationMetrics, State};
pub use proof::ProofError;

/// Requests one gateway may have in flight at another at once (a hop is bounded like client
/// traffic: past this, the request is served here or refused).
const PEER_CONCURRENCY: u32 = 4096;

/// Who the members are, as this gateway last saw them.
#[derive(Debug, Default)]
pub struct Members {
    /// Sorted member ids; `me` indexes this gateway.
    pub ids: Arc<[String]>,
    pub me: usize,
    /// Each member's peer address (`None` for this gateway or an unreadable annotation).
    pub peers: Vec<Option<SocketAddr>>,
    /// The other members' busy and queued requests, by (service, version), summed.
    pub others_load: HashMap<(String, String), (u32, u32)>,
    /// While the view is not settled here: the members of the last view it settled on. A slot
    /// that changes hands is usable by nobody until the view settles (the new owner raises only
    /// then), so hand-overs prefer the slots a member holds in both views.
    pub before: Option<Arc<[String]>>,
}

/// Each member's slots of `set`'s replicas in the view `ids`; with `before` (the last settled
/// view), only the slots a member holds in both (a slot in transit counts for nobody).
fn slot_weights(set: &ReplicaSet, ids: &[String], before: Option<&[String]>) -> Vec<u32> {
    let limit = set.replica_limit();
    // Each member's place in `before`, looked up once.
    let then: Option<Vec<Option<usize>>> =
        before.map(|b| ids.iter().map(|m| b.iter().position(|x| x == m)).collect());
    let mut weights = vec![0u32; ids.len()];
    for r in set.replicas().iter() {
        let now = owners(r.addr, limit, ids);
        let old = before.map(|b| owners(r.addr, limit, b));
        for (i, (w, c)) in weights.iter_mut().zip(now).enumerate() {
            *w += match (&then, &old) {
                (Some(then), Some(old)) => then[i].map_or(0, |j| c.min(old[j])),
                _ => c,
            };
        }
    }
    weights
}

/// This gateway's part in the group: its view of the members, its shares, the hop to the others.
pub struct Coordinator {
    pub settings: CoordinationSettings,
    keys: proof::Keys,
    pub shares: Arc<Shares>,
    members: ArcSwap<Members>,
    /// Pooled connections to the other members' peer ports.
    peers: Arc<ReplicaSet>,
    pub metrics: CoordinationMetrics,
    ready: tokio::sync::watch::Sender<bool>,
    /// Set when the gateway drains: its Lease says it is leaving (the others stop handing
    /// requests to it) and the loop deletes the Lease once nothing is in flight or queued here.
    leave: CancellationToken,
    /// Cancelled once the Lease is gone (or the loop ended).
    left: CancellationToken,
    running: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    pub fn new(settings: CoordinationSettings, metrics: CoordinationMetrics) -> Arc<Self> {
        let me = settings.identity.clone();
        // Until the first view settles this gateway uses no slot of its own.
        let shares = Shares::new(ShareView::Members {
            members: vec![me.clone()].into(),
            me: 0,
            settled: false,
        });
        let peer_settings = ServiceSettings {
            replica_max_concurrent_requests: PEER_CONCURRENCY,
            max_request_wait_time: std::time::Duration::ZERO,
            outlier_consecutive_failures: 0,
            ..ServiceSettings::default()
        };
        metrics.set_state(State::Joining);
        Arc::new(Coordinator {
            keys: proof::Keys::new(&settings.peer_key),
            settings,
            shares,
            members: ArcSwap::from_pointee(Members {
                ids: vec![me].into(),
                ..Members::default()
            }),
            peers: ReplicaSet::new(
                &[],
                crate::config::Protocol::Http1,
                &peer_settings,
                &Shares::whole(),
            ),
            metrics,
            ready: tokio::sync::watch::channel(false).0,
            leave: CancellationToken::new(),
            left: CancellationToken::new(),
            running: Mutex::new(None),
        })
    }

    pub fn id(&self) -> &str {
        &self.settings.identity
    }

    pub fn members(&self) -> Arc<Members> {
        self.members.load_full()
    }

    fn set_members(&self, members: Members) {
        let addrs: Vec<SocketAddr> = members.peers.iter().flatten().copied().collect();
        self.peers.update(&addrs);
        self.members.store(Arc::new(members));
    }

    /// Resolves once this gateway first settled a view or fell back (its shares are known).
    pub async fn ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// The other members' load on a version (for the autoscaler's leader).
    pub fn others_load(&self, service: &str, version: &str) -> (u32, u32) {
        self.members
            .load()
            .others_load
            .get(&(service.to_string(), version.to_string()))
            .copied()
            .unwrap_or((0, 0))
    }

    /// A slot at another member that owns part of `set`'s replicas (other than the one at
    /// `avoid`), to hand a request to for its `hops`-th hand-over, and the proof it carries. `None`: no other member owns
    /// any, or none can take it now.
    pub fn hand_over(
        &self,
        set: &ReplicaSet,
        service: &str,
        request_id: &HeaderValue,
        avoid: Option<SocketAddr>,
        hops: u8,
    ) -> Option<(Lease, HeaderValue)> {
        if hops > proof::MAX_HOPS {
            return None;
        }
        let members = self.members.load();
        let n = members.ids.len();
        if n < 2 {
            return None;
        }
        let usable = |before: Option<&[String]>| {
            let mut weights = slot_weights(set, &members.ids, before);
            weights[members.me] = 0;
            for (w, p) in weights.iter_mut().zip(members.peers.iter()) {
                if p.is_none() || *p == avoid {
                    *w = 0;
                }
            }
            weights
        };
        // The slots usable now first; when every one is in transit, their new owners (who
        // take them first once the view settles).
        let mut weights = usable(members.before.as_deref());
        let mut total: u32 = weights.iter().sum();
        if total == 0 && members.before.is_some() {
            weights = usable(None);
            total = weights.iter().sum();
        }
        if total == 0 {
            return None;
        }
        // A member in proportion to its slots, then the others in turn if it is at its cap.
        let mut roll = fastrand::u32(..total);
        let first = weights
            .iter()
            .position(|w| {
                if roll < *w {
                    true
                } else {
                    roll -= w;
                    false
                }
            })
            .unwrap_or(0);
        let lease = (0..n)
            .map(|i| (first + i) % n)
            .filter(|i| weights[*i] > 0)
            .find_map(|i| self.peers.try_acquire_on(members.peers[i]?))?;
        let proof = self.keys.sign(self.id(), hops, request_id, service)?;
        Some((lease, proof))
    }

    /// Check a handed-over request's proof.
    pub fn verify(
        &self,
        proof: Option<&[u8]>,
        request_id: &HeaderValue,
        service: &str,
    ) -> Result<(String, u8), ProofError> {
        self.keys.verify(proof, request_id, service)
    }

    /// Start the membership loop (once a Kubernetes client exists).
    pub fn start(
        self: &Arc<Self>,
        client: kube::Client,
        routes: crate::routing::RouteHandle,
        peer_port: u16,
    ) {
        let left = self.left.clone();
        let run = membership::run(client, self.clone(), routes, peer_port, self.leave.clone());
        let task = tokio::spawn(async move {
            run.await;
            left.cancel();
        });
        if let Ok(mut r) = self.running.lock() {
            *r = Some(task);
        }
    }

    /// Leave the group as the gateway drains: the Lease says so at once (the others stop
    /// handing requests here; they still may not take this gateway's slots), and it is deleted
    /// once nothing is in flight or queued here (then the others take the slots at once instead
    /// of after the Lease duration). Resolves when the Lease is gone, within `within`.
    pub async fn leave(&self, within: std::time::Duration) {
        self.leave.cancel();
        let started = self.running.lock().is_ok_and(|r| r.is_some());
        if !started {
            return;
        }
        if tokio::time::timeout(within, self.left.cancelled())
            .await
            .is_err()
        {
            tracing::warn!("the drain ended with requests still in flight; the member Lease expires on its own");
            if let Some(task) = self.running.lock().ok().and_then(|mut r| r.take()) {
                task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn slots_in_transit_weigh_nothing_until_the_view_settles() {
        let addrs: Vec<SocketAddr> = (0..200u16)
            .map(|i| SocketAddr::from(([10, 0, 0, 1], 5000 + i)))
            .collect();
        let settings = ServiceSettings {
            replica_max_concurrent_requests: 1,
            ..ServiceSettings::default()
        };
        let set = ReplicaSet::new(
            &addrs,
            crate::config::Protocol::Http1,
            &settings,
            &Shares::whole(),
        );
        let before = ids(&["gw-a", "gw-b", "gw-c"]);
        let now = ids(&["gw-a", "gw-b", "gw-c", "gw-d"]);
        let all = slot_weights(&set, &now, None);
        assert_eq!(all.iter().sum::<u32>(), 200);
        let stable = slot_weights(&set, &now, Some(&before));
        // The joining member has no usable slot; every other keeps exactly the replicas it owned
        // before and still owns.
        assert_eq!(stable[3], 0);
        let moved = addrs
            .iter()
            .filter(|a| owners(**a, 1, &now)[3] == 1)
            .count() as u32;
        assert!((25..=75).contains(&moved), "{moved} of 200 moved");
        assert_eq!(stable.iter().sum::<u32>(), 200 - moved);
        for i in 0..3 {
            assert_eq!(stable[i], all[i], "member {i} lost nothing but to gw-d");
        }
        // A member that left: its slots are in transit, the others' stay.
        let after_leave = ids(&["gw-a", "gw-c"]);
        let stable = slot_weights(&set, &after_leave, Some(&before));
        let kept: u32 = addrs
            .iter()
            .map(|a| owners(*a, 1, &before))
            .map(|o| o[0] + o[2])
            .sum();
        assert_eq!(stable.iter().sum::<u32>(), kept);
    }
}
