//! How much of each replica's `replica_max_concurrent_requests` this gateway may use when
//! several gateways serve the same replicas (the `coordination` module decides the view; this
//! is the arithmetic every gateway does the same way, so they agree without a message).
//!
//! A replica with limit L has L slots. The members are ordered per replica by a rendezvous
//! hash of (replica, member) and slot j goes to the member at position j mod M: every member
//! gets ⌊L/M⌋ or ⌈L/M⌉ slots of every replica, a limit below M gives one slot to each of the
//! first L members of that replica's order, and the shares of one replica depend on nothing but
//! the replica, L and the member ids (so gateways that discovered replicas at different moments
//! still agree).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

/// The view a gateway applies to its replica limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareView {
    /// No coordination: the whole limit (one gateway).
    Whole,
    /// One of `members` (sorted ids; `me` indexes this gateway). `settled`: every other member
    /// said it keeps within its own share of this view, so this gateway may take all of its
    /// share; until then it keeps no more than it had and no more than its new share.
    Members {
        members: Arc<[String]>,
        me: usize,
        settled: bool,
    },
    /// This gateway cannot confirm its peers (its own Lease lapsed): ⌊L / members⌋ of each
    /// replica, never the whole limit.
    Fallback { members: usize },
}

/// The current [`ShareView`] and a number that changes with it, so a replica set notices a
/// new view with one atomic load.
#[derive(Debug)]
pub struct Shares {
    view: ArcSwap<ShareView>,
    epoch: AtomicU64,
}

impl Shares {
    pub fn new(view: ShareView) -> Arc<Self> {
        Arc::new(Shares {
            view: ArcSwap::from_pointee(view),
            epoch: AtomicU64::new(1),
        })
    }

    /// The whole limit, always (no coordination).
    pub fn whole() -> Arc<Self> {
        Self::new(ShareView::Whole)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The view and its epoch (the epoch read first: a view newer than its epoch is applied
    /// again on the next look, never missed).
    pub fn load(&self) -> (u64, Arc<ShareView>) {
        let epoch = self.epoch();
        (epoch, self.view.load_full())
    }

    pub fn store(&self, view: ShareView) {
        self.view.store(Arc::new(view));
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub fn view(&self) -> Arc<ShareView> {
        self.view.load_full()
    }
}

impl ShareView {
    /// This gateway's limit on `replica` (whose whole limit is `limit`), given the limit it
    /// applies now (`None`: a replica it has not served yet).
    pub fn limit(&self, replica: SocketAddr, limit: u32, current: Option<u32>) -> u32 {
        match self {
            ShareView::Whole => limit,
            ShareView::Members {
                members,
                me,
                settled,
            } => {
                let share = share_of(replica, limit, members, *me);
                if *settled {
                    share
                } else {
                    share.min(current.unwrap_or(0))
                }
            }
            ShareView::Fallback { members } => limit / (*members).max(1) as u32,
        }
    }
}

/// Slots of `replica` per member (indexes of `members`): ⌊L/M⌋ or ⌈L/M⌉ each, the extra ones to
/// the first members of the replica's rendezvous order.
pub fn owners(replica: SocketAddr, limit: u32, members: &[String]) -> Vec<u32> {
    let m = members.len();
    if m == 0 {
        return Vec::new();
    }
    let mut counts = vec![limit / m as u32; m];
    let extra = (limit % m as u32) as usize;
    for &i in order(replica, members).iter().take(extra) {
        counts[i] += 1;
    }
    counts
}

/// `members[me]`'s slots of `replica`.
pub fn share_of(replica: SocketAddr, limit: u32, members: &[String], me: usize) -> u32 {
    owners(replica, limit, members).get(me).copied().unwrap_or(0)
}

/// Member indexes by descending rendezvous score for `replica` (ties by id).
fn order(replica: SocketAddr, members: &[String]) -> Vec<usize> {
    let key = replica.to_string();
    let mut idx: Vec<(u64, usize)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (score(&key, m), i))
        .collect();
    idx.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| members[a.1].cmp(&members[b.1])));
    idx.into_iter().map(|(_, i)| i).collect()
}

/// A hash every gateway computes the same (FNV-1a, then a 64-bit finalizer to spread it).
fn score(replica: &str, member: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in replica.bytes().chain([0u8]).chain(member.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("gw-{i}")).collect()
    }

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], 5000 + i))
    }

    #[test]
    fn shares_partition_every_limit_and_stay_balanced() {
        for m in 1..=7 {
            let members = ids(m);
            for limit in 0..=9u32 {
                for r in 0..20 {
                    let c = owners(addr(r), limit, &members);
                    assert_eq!(c.iter().sum::<u32>(), limit, "m={m} L={limit}");
                    let (lo, hi) = (c.iter().min().copied(), c.iter().max().copied());
                    assert!(hi.unwrap_or(0) - lo.unwrap_or(0) <= 1, "{c:?}");
                }
            }
        }
    }

    #[test]
    fn limit_one_spreads_replicas_over_members() {
        let members = ids(3);
        let mut per_member = [0u32; 3];
        for r in 0..300 {
            let c = owners(addr(r), 1, &members);
            for (i, n) in c.iter().enumerate() {
                per_member[i] += n;
            }
        }
        for n in per_member {
            assert!((70..=130).contains(&n), "{per_member:?}");
        }
    }

    #[test]
    fn every_gateway_computes_the_same_owner_whatever_the_order_it_lists_members_in() {
        let a = ids(4);
        let mut b = a.clone();
        b.reverse();
        for r in 0..50 {
            let ca = owners(addr(r), 1, &a);
            let cb = owners(addr(r), 1, &b);
            for (i, id) in a.iter().enumerate() {
                let j = b.iter().position(|x| x == id).expect("same members");
                assert_eq!(ca[i], cb[j]);
            }
        }
    }

    #[test]
    fn a_member_leaving_moves_only_its_own_limit_one_slots() {
        let all = ids(5);
        let rest: Vec<String> = all.iter().filter(|m| *m != "gw-2").cloned().collect();
        for r in 0..100 {
            let before = owners(addr(r), 1, &all);
            let after = owners(addr(r), 1, &rest);
            let owner_before = before.iter().position(|c| *c == 1).expect("one owner");
            if all[owner_before] != "gw-2" {
                let owner_after = after.iter().position(|c| *c == 1).expect("one owner");
                assert_eq!(rest[owner_after], all[owner_before], "replica {r} moved");
            }
        }
    }

    #[test]
    fn an_unsettled_view_keeps_no_more_than_before_nor_than_the_new_share() {
        let members: Arc<[String]> = ids(2).into();
        let settled = ShareView::Members {
            members: members.clone(),
            me: 0,
            settled: true,
        };
        let unsettled = ShareView::Members {
            members,
            me: 0,
            settled: false,
        };
        let r = addr(1);
        assert_eq!(settled.limit(r, 4, None), 2);
        assert_eq!(unsettled.limit(r, 4, None), 0, "a replica not served yet");
        assert_eq!(unsettled.limit(r, 4, Some(4)), 2, "down to the new share");
        assert_eq!(unsettled.limit(r, 4, Some(1)), 1, "never up before settled");
        assert_eq!(ShareView::Fallback { members: 3 }.limit(r, 4, Some(4)), 1);
        assert_eq!(ShareView::Fallback { members: 3 }.limit(r, 1, Some(1)), 0);
        assert_eq!(ShareView::Whole.limit(r, 4, Some(0)), 4);
    }
}
