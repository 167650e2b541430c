//! The membership loop: this gateway's Lease (written first, then renewed at a third of its
//! duration and whenever what it says changes), a watch on the group's Leases, and, every tick,
//! the view: who the members are, whether this gateway has released it, whether every other
//! member has (then it is settled), or whether this gateway lost its own Lease (fallback).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::member_lease::{Seen, lease_name, view_id};
use super::{Coordinator, Members, State};
use crate::routing::RouteHandle;
use crate::upstream::ShareView;

pub const GROUP_LABEL: &str = "scoregate.io/group";
pub(super) const PEER: &str = "scoregate.io/peer";
pub(super) const VIEW: &str = "scoregate.io/view";
pub(super) const RELEASED: &str = "scoregate.io/released";
pub(super) const LOAD: &str = "scoregate.io/load";
pub(super) const LEAVING: &str = "scoregate.io/leaving";
/// How often the view is looked at (local work only; the API is written on change or renewal).
const TICK: Duration = Duration::from_millis(100);
/// How long hand-overs sent before the others saw this gateway leave may take to arrive (they
/// act on a Lease change at once), and how often a leaving gateway looks whether it is done.
const LEAVING_GRACE: Duration = Duration::from_millis(50);
const LEAVING_POLL: Duration = Duration::from_millis(5);
/// A member Lease not renewed for this long is deleted by whichever gateway sees it.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// What this gateway's Lease says besides its renewal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Said {
    view: String,
    released: String,
    leaving: bool,
}

struct Loop {
    api: Api<Lease>,
    coord: Arc<Coordinator>,
    routes: RouteHandle,
    name: String,
    peer: String,
    duration: Duration,
    seen: HashMap<String, Seen>,
    /// The member ids of the current view (sorted) and whether it is settled.
    view: Vec<String>,
    settled: bool,
    /// The members of the last view this gateway settled on.
    last_settled: Arc<[String]>,
    /// What the Lease said at the last successful write, and when that write started.
    said: Option<Said>,
    written: Option<Instant>,
    fallback: bool,
    retry_at: Instant,
    /// Draining: the Lease says so; deleted once [`Loop::drained`].
    leaving: bool,
    /// When a Lease write first failed since the last success.
    write_blind: Option<Instant>,
    /// When the watch first failed since it last listed.
    watch_blind: Option<Instant>,
    /// Since when this gateway may have missed renewals (the earlier of the two, kept until
    /// both recovered): nobody expires for not being seen after it.
    blind_since: Option<Instant>,
}

pub async fn run(
    client: kube::Client,
    coord: Arc<Coordinator>,
    routes: RouteHandle,
    peer_port: u16,
    leave: CancellationToken,
) {
    let s = &coord.settings;
    let api: Api<Lease> = Api::namespaced(client, &s.namespace);
    let mut lp = Loop {
        name: lease_name(&s.group, &s.identity),
        peer: SocketAddr::new(s.advertise_ip, peer_port).to_string(),
        duration: s.lease_duration,
        api: api.clone(),
        view: vec![s.identity.clone()],
        coord: coord.clone(),
        routes,
        seen: HashMap::new(),
        settled: false,
        last_settled: Arc::from([]),
        said: None,
        written: None,
        fallback: false,
        retry_at: Instant::now(),
        leaving: false,
        write_blind: None,
        watch_blind: None,
        blind_since: None,
    };
    // The Lease first, then the list: of two gateways starting together, at least one sees
    // the other before it settles alone.
    let first = Said {
        view: view_id(&lp.view),
        ..Said::default()
    };
    loop {
        if lp.write(&first).await {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = leave.cancelled() => return,
        }
    }
    tracing::info!(lease = %lp.name, group = %s.group, peer = %lp.peer, "joined the gateway group");
    let selector = format!("{GROUP_LABEL}={}", s.group);
    let mut events = watcher::watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    let mut listed = false;
    let mut initial: HashMap<String, Seen> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(Event::Init)) => initial.clear(),
                Some(Ok(Event::InitApply(l))) => {
                    if let Some((id, seen)) = Seen::from_lease(&l, lp.duration) {
                        initial.insert(id, seen);
                    }
                }
                Some(Ok(Event::InitDone)) => {
                    for (id, mut seen) in initial.drain() {
                        // Seen before with the same renewal: keep when it was observed.
                        if let Some(old) = lp.seen.get(&id)
                            && old.renew == seen.renew
                        {
                            seen.observed = old.observed;
                        } else if seen.stale(seen.duration) {
                            seen.observed = Instant::now() - seen.duration - TICK;
                        }
                        lp.seen.insert(id, seen);
                    }
                    listed = true;
                    lp.watch_blind = None;
                }
                // A member's change is acted on at once (a settle waits for one write and one
                // event per member, not for ticks).
                Some(Ok(Event::Apply(l))) => {
                    lp.observe(&l);
                    if listed {
                        lp.step().await;
                    }
                }
                Some(Ok(Event::Delete(l))) => {
                    if let Some(id) = l.spec.as_ref().and_then(|s| s.holder_identity.clone()) {
                        lp.seen.remove(&id);
                    }
                    if listed {
                        lp.step().await;
                    }
                }
                Some(Err(e)) => {
                    // Renewals may have been missed: nobody expires for not being seen now.
                    tracing::debug!(error = %e, "member Lease watch");
                    lp.watch_blind.get_or_insert_with(Instant::now);
                }
                None => return,
            },
            _ = tick.tick() => {
                if listed {
                    lp.step().await;
                }
            }
            // Leaving: look every few milliseconds whether the last request here ended.
            _ = tokio::time::sleep(LEAVING_POLL), if lp.leaving => {}
            _ = leave.cancelled(), if !lp.leaving => {
                tracing::info!("draining: leaving the gateway group once nothing is in flight here");
                lp.leaving = true;
            }
        }
        if lp.leaving && lp.drained() {
            lp.leave().await;
            return;
        }
    }
}

impl Loop {
    fn observe(&mut self, lease: &Lease) {
        let Some((id, mut seen)) = Seen::from_lease(lease, self.duration) else {
            return;
        };
        if let Some(old) = self.seen.get(&id)
            && old.renew == seen.renew
            && old.view == seen.view
            && old.released == seen.released
        {
            seen.observed = old.observed;
        }
        self.seen.insert(id, seen);
    }

    /// One look at the members; writes the Lease when due or when what it says changed.
    async fn step(&mut self) {
        let now = Instant::now();
        let me = self.coord.id().to_string();
        // While this gateway cannot write its Lease or watch the others it may miss their
        // renewals: the members stay those that were live when it went blind (its fallback
        // share is ⌊L / members⌋ of the group as it was, never the whole limit of a group of
        // one), and once it sees again they count as renewed then.
        let blind = match (self.write_blind, self.watch_blind) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match (blind, self.blind_since) {
            (Some(b), since) => self.blind_since = Some(since.map_or(b, |s| s.min(b))),
            (None, Some(since)) => {
                self.blind_since = None;
                for s in self.seen.values_mut() {
                    if since.saturating_duration_since(s.observed) < s.duration {
                        s.observed = now;
                    }
                }
            }
            (None, None) => {}
        }
        let horizon = self.blind_since.map_or(now, |b| b.min(now));
        let live = |s: &Seen| horizon.saturating_duration_since(s.observed) < s.duration;
        let mut ids: Vec<String> = self
            .seen
            .iter()
            .filter(|(id, s)| **id != me && live(s) && !s.leaving)
            .map(|(id, _)| id.clone())
            .chain([me.clone()])
            .collect();
        ids.sort();
        ids.dedup();
        let id = view_id(&ids);
        if ids != self.view {
            tracing::info!(members = ?ids, view = %id, "gateway group changed");
            self.view = ids.clone();
            self.settled = false;
            self.store_view();
        }
        let mut want = Said {
            view: id.clone(),
            released: String::new(),
            leaving: self.leaving,
        };
        // Released: every request in flight here fits this gateway's share of the view (the
        // same write says the view, so a raise anywhere comes after this Lease says it).
        if self.within_limits() {
            want.released = id.clone();
        }
        let due = self
            .written
            .is_none_or(|w| now.duration_since(w) >= self.duration / 3);
        if (due || self.said.as_ref() != Some(&want)) && now >= self.retry_at {
            if !self.write(&want).await {
                self.retry_at = Instant::now() + Duration::from_millis(500);
            } else if self.fallback {
                tracing::info!("member Lease renewed again; leaving the fallback share");
                self.fallback = false;
                self.settled = false;
                self.store_view();
                return;
            }
        }
        let lapsed = self
            .written
            .is_none_or(|w| Instant::now().duration_since(w) >= self.duration);
        if lapsed && !self.fallback {
            tracing::warn!(members = self.view.len(), "cannot renew the member Lease: the others may take this gateway's slots; falling back to limit / members per replica");
            self.fallback = true;
            self.coord.shares.store(ShareView::Fallback {
                members: self.view.len(),
            });
            self.coord.metrics.set_state(State::Fallback);
            self.coord.ready.send_replace(true);
            self.within_limits();
        }
        if !self.settled && !self.fallback && self.said.as_ref().is_some_and(|s| s.view == id) {
            // Every other live Lease, a leaving one too (its slots are its own until it is
            // gone).
            let others_released = self
                .seen
                .iter()
                .filter(|(m, s)| **m != me && live(s))
                .all(|(_, s)| s.view == id && s.released == id);
            if others_released {
                self.settled = true;
                self.last_settled = self.view.clone().into();
                self.store_view();
                let slots = self.local_slots();
                tracing::info!(members = self.view.len(), view = %id, slots, "gateway group settled");
            }
        }
        self.publish_members(&me);
        self.forget_stale().await;
    }

    /// The current view into the shares (and the state metric).
    fn store_view(&self) {
        // The members first: a request woken because its share moved away is handed over by
        // the members it then reads.
        self.publish_members(self.coord.id());
        let me = self.coord.id();
        let members: Arc<[String]> = self.view.clone().into();
        let idx = members.iter().position(|m| m == me).unwrap_or(0);
        if !self.fallback {
            self.coord.shares.store(ShareView::Members {
                members,
                me: idx,
                settled: self.settled,
            });
            let m = &self.coord.metrics;
            m.set_state(if self.settled {
                State::Coordinated
            } else if self.coord.ready.borrow().to_owned() {
                State::Settling
            } else {
                State::Joining
            });
            m.members.set(i64::try_from(self.view.len()).unwrap_or(i64::MAX));
            if self.settled {
                self.coord.ready.send_replace(true);
            }
        }
        // The share metrics follow at once.
        self.within_limits();
    }

    /// Every version's requests in flight fit this gateway's limits (and the share metric).
    fn within_limits(&self) -> bool {
        let table = self.routes.load();
        let mut ok = true;
        for svc in table.services() {
            for v in &svc.versions {
                ok &= v.replicas.within_limits();
                self.coord
                    .metrics
                    .share(&svc.name, &v.name, v.replicas.local_capacity());
            }
        }
        ok
    }

    /// This gateway's slots over every version (its shares, as the replica sets apply them).
    fn local_slots(&self) -> usize {
        let table = self.routes.load();
        table
            .services()
            .flat_map(|s| s.versions.iter())
            .map(|v| v.replicas.local_capacity())
            .sum()
    }

    /// The members for the hop and the autoscaler.
    fn publish_members(&self, me: &str) {
        let ids: Arc<[String]> = self.view.clone().into();
        let mut others_load: HashMap<(String, String), (u32, u32)> = HashMap::new();
        for id in ids.iter().filter(|m| *m != me) {
            if let Some(s) = self.seen.get(id) {
                for (k, (b, q)) in &s.load {
                    let e = others_load.entry(k.clone()).or_default();
                    e.0 += b;
                    e.1 += q;
                }
            }
        }
        let peers = ids
            .iter()
            .map(|m| {
                (m != me)
                    .then(|| self.seen.get(m).and_then(|s| s.peer))
                    .flatten()
            })
            .collect();
        self.coord.set_members(Members {
            me: ids.iter().position(|m| m == me).unwrap_or(0),
            ids,
            peers,
            others_load,
            before: (!self.settled && !self.fallback).then(|| self.last_settled.clone()),
        });
    }

    /// This gateway's busy and queued requests per version, for the others' autoscaler.
    fn load(&self) -> String {
        let table = self.routes.load();
        let mut load = BTreeMap::new();
        for svc in table.services() {
            for v in &svc.versions {
                let busy: u32 = v.replicas.replicas().iter().map(|r| r.in_flight()).sum();
                let queued = v.replicas.queued();
                if busy + queued > 0 {
                    load.insert(format!("{}/{}", svc.name, v.name), (busy, queued));
                }
            }
        }
        serde_json::to_string(&load).unwrap_or_default()
    }

    /// Apply this gateway's Lease (server-side apply: no read first); true when it landed.
    async fn write(&mut self, said: &Said) -> bool {
        let started = Instant::now();
        let s = &self.coord.settings;
        let annotations = BTreeMap::from([
            (PEER.to_string(), self.peer.clone()),
            (VIEW.to_string(), said.view.clone()),
            (RELEASED.to_string(), said.released.clone()),
            (LOAD.to_string(), self.load()),
            (LEAVING.to_string(), said.leaving.to_string()),
        ]);
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(s.namespace.clone()),
                labels: Some(BTreeMap::from([(GROUP_LABEL.to_string(), s.group.clone())])),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(s.identity.clone()),
                lease_duration_seconds: Some(
                    i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX),
                ),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..Default::default()
            }),
        };
        let params = PatchParams::apply("scoregate-coordination").force();
        match self
            .api
            .patch(&self.name, &params, &Patch::Apply(&lease))
            .await
        {
            Ok(_) => {
                self.write_blind = None;
                tracing::debug!(lease = %self.name, view = %said.view, released = %said.released, "member Lease written");
                self.said = Some(said.clone());
                self.written = Some(started);
                true
            }
            Err(e) => {
                self.write_blind.get_or_insert(started);
                self.coord.metrics.lease_errors.inc();
                tracing::warn!(error = %e, lease = %self.name, "cannot write the member Lease");
                false
            }
        }
    }

    /// Leaving, the Lease says so (for [`LEAVING_GRACE`] at least, so hand-overs sent before the
    /// others saw it have arrived) and nothing is in flight or queued here.
    fn drained(&self) -> bool {
        if !self.said.as_ref().is_some_and(|s| s.leaving)
            || self.written.is_none_or(|w| w.elapsed() < LEAVING_GRACE)
        {
            return false;
        }
        let table = self.routes.load();
        table.services().flat_map(|s| s.versions.iter()).all(|v| {
            v.replicas.queued() == 0 && v.replicas.replicas().iter().all(|r| r.in_flight() == 0)
        })
    }

    /// Delete this gateway's Lease: the others take its slots at once.
    async fn leave(&mut self) {
        match self.api.delete(&self.name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(lease = %self.name, "left the gateway group"),
            Err(e) => {
                tracing::warn!(error = %e, lease = %self.name, "cannot delete the member Lease; the others take its slots when it expires")
            }
        }
    }

    /// Delete member Leases nobody renewed for [`FORGET_AFTER`] (gateways gone for good).
    async fn forget_stale(&mut self) {
        let gone: Vec<String> = self
            .seen
            .iter()
            .filter(|(_, s)| s.stale(FORGET_AFTER))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.seen.remove(&id);
            let name = lease_name(&self.coord.settings.group, &id);
            if let Err(e) = self.api.delete(&name, &DeleteParams::default()).await {
                tracing::debug!(error = %e, lease = %name, "stale member Lease");
            }
        }
    }
}
