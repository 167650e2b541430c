//! The replica set: the queue, the per-replica limits, and this gateway's shares of them.
use super::*;

fn set(n: usize, limit: u32, wait_ms: u64, max_queued: u32) -> Arc<ReplicaSet> {
    let addrs: Vec<SocketAddr> = (0..n)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16)))
        .collect();
    let settings = ServiceSettings {
        replica_max_concurrent_requests: limit,
        max_request_wait_time: Duration::from_millis(wait_ms),
        max_queued_requests: max_queued,
        ..ServiceSettings::default()
    };
    ReplicaSet::new(&addrs, Protocol::Http1, &settings, &Shares::whole())
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
    let rs = set(1, 1, 10_000, 1);
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
    for r in rs.replicas().iter() {
        assert_eq!(r.in_flight(), 2);
    }
    drop(leases);
    for r in rs.replicas().iter() {
        assert_eq!(r.in_flight(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn shares_follow_the_view_and_rise_only_once_settled() {
    let members: Arc<[String]> = vec!["a".to_string(), "b".to_string()].into();
    let view = |me: usize, settled: bool| ShareView::Members {
        members: members.clone(),
        me,
        settled,
    };
    let settings = ServiceSettings {
        replica_max_concurrent_requests: 4,
        max_request_wait_time: Duration::from_millis(100),
        ..ServiceSettings::default()
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], 7000));
    // Two gateways' sets: their shares of the one replica partition its limit.
    let sets: Vec<_> = (0..2)
        .map(|me| {
            let shares = Shares::new(view(me, true));
            (ReplicaSet::new(&[addr], Protocol::Http1, &settings, &shares), shares)
        })
        .collect();
    assert_eq!(sets[0].0.local_capacity() + sets[1].0.local_capacity(), 4);
    assert_eq!(sets[0].0.local_capacity(), 2);
    // Gateway 0 alone, unsettled view from the whole limit: keeps what it had.
    let (rs, shares) = &sets[0];
    let (a, _) = rs.acquire().await.expect("slot");
    let (b, _) = rs.acquire().await.expect("slot");
    assert_eq!(rs.acquire().await.err(), Some(Saturated::Replicas));
    // A third member joins: the share drops to 1 (4 / 3, the extra elsewhere or here).
    let three: Arc<[String]> = vec!["a".into(), "b".into(), "c".into()].into();
    shares.store(ShareView::Members {
        members: three.clone(),
        me: 0,
        settled: false,
    });
    let share = shares::share_of(addr, 4, &three, 0) as usize;
    assert_eq!(rs.local_capacity(), share.min(2), "down at once, never up");
    assert_eq!(rs.within_limits(), share >= 2, "busy above the new share");
    drop((a, b));
    assert!(rs.within_limits());
    shares.store(ShareView::Fallback { members: 3 });
    assert_eq!(rs.local_capacity(), 1, "fallback: 4 / 3");
    shares.store(ShareView::Members {
        members: three.clone(),
        me: 0,
        settled: false,
    });
    assert_eq!(rs.local_capacity(), 1.min(share), "unsettled after the fallback");
    shares.store(ShareView::Members {
        members: three.clone(),
        me: 0,
        settled: true,
    });
    assert_eq!(rs.local_capacity(), share);
    // The permits follow the limits: exactly the share can be taken.
    let mut held = Vec::new();
    for _ in 0..rs.local_capacity() {
        held.push(rs.acquire().await.expect("within the share"));
    }
    assert_eq!(rs.acquire().await.err(), Some(Saturated::Replicas));
}

#[tokio::test(start_paused = true)]
async fn a_waiter_learns_at_once_that_the_share_moved_away() {
    let addr = SocketAddr::from(([127, 0, 0, 1], 7001));
    let me: Arc<[String]> = vec!["a".to_string()].into();
    let shares = Shares::new(ShareView::Members {
        members: me,
        me: 0,
        settled: true,
    });
    let settings = ServiceSettings {
        replica_max_concurrent_requests: 1,
        max_request_wait_time: Duration::from_secs(10),
        ..ServiceSettings::default()
    };
    let rs = ReplicaSet::new(&[addr], Protocol::Http1, &settings, &shares);
    let (held, _) = rs.acquire().await.expect("the one slot");
    let waiter = {
        let rs = rs.clone();
        tokio::spawn(async move { rs.acquire_or_moved().await.map(|_| ()) })
    };
    tokio::task::yield_now().await;
    // A member joins and owns the one slot: this gateway's share drops to nothing.
    let two: Arc<[String]> = vec!["a".to_string(), "b".to_string()].into();
    let mine = shares::share_of(addr, 1, &two, 0);
    let me = if mine == 0 { 0 } else { 1 };
    shares.store(ShareView::Members {
        members: two,
        me,
        settled: false,
    });
    rs.reshare();
    let got = tokio::time::timeout(Duration::from_millis(1), waiter)
        .await
        .expect("woken at once, not after max_request_wait_time")
        .expect("task");
    assert_eq!(got, Err(Saturated::Moved));
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn replicas_can_change_while_busy() {
    let rs = set(2, 1, 100, 10);
    let (a, _) = rs.acquire().await.expect("slot");
    let (b, _) = rs.acquire().await.expect("slot");
    let kept = a.replica.addr;
    // Remove the replica b is using, add a new one.
    let new = SocketAddr::from(([127, 0, 0, 1], 20_000));
    rs.update(&[kept, new]);
    let (c, _) = rs.acquire().await.expect("the new replica is free");
    assert_eq!(c.replica.addr, new);
    // b's replica is gone; when b ends its permit retires instead of adding capacity.
    drop(b);
    assert_eq!(
        rs.acquire().await.err(),
        Some(Saturated::Replicas),
        "capacity is 2, both busy"
    );
    drop(a);
    assert!(rs.acquire().await.is_ok());
    rs.update(&[]);
    assert_eq!(rs.acquire().await.err(), Some(Saturated::NoReplicas));
    drop(c);
}
