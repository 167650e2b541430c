//! Several gateways acting as one (README "Running several gateway replicas"): three
//! `scoregate serve` processes on loopback, members of one group through Leases on the real
//! kube-apiserver, in front of one model replica that records how many requests it runs at once
//! and every request id it was sent.
//! - limit 1 and limit 4: the model never runs more than its limit, whatever gateway the
//!   clients use; the queue deadline still answers 503 when the model is saturated; throughput
//!   is within 10 % of one gateway alone (the model's time bounds both);
//! - a request on the peer port without a valid proof is refused;
//! - the gateway owning the slot is killed: its share returns to the others within the Lease
//!   duration (measured), and no request reaches the model twice;
//! - a slot in transit (a member joined and took it, the view not settled yet) leaves the
//!   other slot serving: hand-overs go to the member whose slot did not move;
//! - the autoscaler's leader sums the members' load: three gateways each carrying a third of a
//!   load recommend what one carrying all of it does, and only the leader patches the scale.
#![cfg(feature = "peer-tests")]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

#[path = "coordination/support.rs"]
mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_hold_the_replica_limit_together() {
    let _serial = SERIAL.lock().await;
    let tb = Testbed::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_file(dir.path());
    for (limit, clients) in [(1u32, 6usize), (4, 12)] {
        let model = Model::start(MODEL_TIME).await;
        let models = [model.backend.addr];
        let setup = |group: &'static str| Setup {
            tb: &tb,
            key_file: &key,
            group,
            models: &models,
            lease_ms: LEASE_MS,
            limit,
            wait_ms: 1000,
            extra: "",
        };
        let run = Duration::from_secs(4);

        // One gateway alone: the baseline.
        let (single_group, trio_group) = if limit == 1 {
            ("alone-1", "trio-1")
        } else {
            ("alone-4", "trio-4")
        };
        let alone = setup(single_group).start(1).await;
        let base = load(&score_urls(&alone), clients, run, single_group).await;
        drop(alone);
        assert!(base.codes.is_empty(), "limit {limit} alone: {base:?}");
        assert!(
            model.max() <= limit,
            "alone: model ran {} at once",
            model.max()
        );

        // Three gateways, the clients spread over them.
        let trio = setup(trio_group).start(3).await;
        let shares: Vec<u64> = {
            let mut v = Vec::new();
            for g in &trio {
                v.push(share(&metrics(g).await));
            }
            v
        };
        assert_eq!(
            shares.iter().sum::<u64>(),
            u64::from(limit),
            "the shares partition the limit: {shares:?}\n{}\n{}\n{}",
            trio[0].log(),
            trio[1].log(),
            trio[2].log()
        );
        model.reset_max();
        let urls = score_urls(&trio);
        let three = load(&urls, clients, run, trio_group).await;
        let max = model.max();
        println!(
            "limit {limit}: shares {shares:?}; one gateway {} ok in {run:?}, three gateways {} ok ({:.2}x); model ran at most {max} at once",
            base.ok,
            three.ok,
            three.ok as f64 / base.ok as f64
        );
        assert!(three.codes.is_empty(), "limit {limit}, three: {three:?}");
        assert!(max <= limit, "limit {limit}: the model ran {max} at once");
        assert!(
            three.ok as f64 >= 0.9 * base.ok as f64,
            "limit {limit}: three gateways {} vs one {}",
            three.ok,
            base.ok
        );
        if limit == 1 {
            // Two of the three own no slot: their requests went to the owner.
            let mut sent = 0;
            let mut received = 0;
            for g in &trio {
                let m = metrics(g).await;
                sent += series_value(
                    &m,
                    r#"scoregate_coordination_handed_over_total{direction="sent",service="iris"}"#,
                )
                .unwrap_or(0);
                received += series_value(
                    &m,
                    r#"scoregate_coordination_handed_over_total{direction="received",service="iris"}"#,
                )
                .unwrap_or(0);
            }
            assert!(
                sent > 0 && sent == received,
                "sent {sent}, received {received}"
            );
            // The other protocols' routes are handed over too: the v2 path names the service,
            // the OpenAI body does (read again at the owner, where the client's key is not).
            let http = reqwest::Client::new();
            for g in &trio {
                let base = format!("http://{}", g.http.expect("http"));
                for (path, body) in [
                    ("/v2/models/iris/infer", r#"{"inputs":[]}"#),
                    ("/v1/chat/completions", r#"{"model":"iris","messages":[]}"#),
                ] {
                    let r = http
                        .post(format!("{base}{path}"))
                        .bearer_auth(KEY)
                        .body(body)
                        .send()
                        .await
                        .expect("request");
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    assert_eq!(status, 200, "{path} at {base}: {text}");
                }
            }
            let mut sent_after = 0;
            for g in &trio {
                sent_after += series_value(
                    &metrics(g).await,
                    r#"scoregate_coordination_handed_over_total{direction="sent",service="iris"}"#,
                )
                .unwrap_or(0);
            }
            assert!(
                sent_after >= sent + 4,
                "the two gateways without a share handed both over: {sent} -> {sent_after}"
            );
            // The peer port serves only requests with a valid proof.
            let peer = trio[0].peer.expect("peer port");
            for proof in [None, Some("trio-1-1 1 AAAA"), Some("x")] {
                let mut req = http
                    .post(format!("http://{peer}/api/v1/service/iris/score"))
                    .body("{}");
                if let Some(p) = proof {
                    req = req.header("x-scoregate-peer", p);
                }
                let r = req.send().await.expect("peer port");
                expect_error(r, 401, "peer_unauthorized").await;
            }
        }

        // Saturated: the queue deadline still answers 503 (reason: the replicas).
        model.reset_max();
        let clients = 60 * limit as usize;
        let burst = load(
            &urls,
            clients,
            Duration::from_millis(2500),
            &format!("{trio_group}-b"),
        )
        .await;
        let saturated = burst
            .codes
            .get("503 replicas_saturated")
            .copied()
            .unwrap_or(0);
        println!(
            "limit {limit}, {clients} clients: {} ok, {:?}",
            burst.ok, burst.codes
        );
        assert!(saturated > 0, "no queue-deadline 503: {:?}", burst.codes);
        assert!(
            burst.codes.keys().all(|c| c == "503 replicas_saturated"),
            "{:?}",
            burst.codes
        );
        model.assert_within(limit);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_gateways_share_returns_within_the_lease() {
    let _serial = SERIAL.lock().await;
    let tb = Testbed::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_file(dir.path());
    let model = Model::start(MODEL_TIME).await;
    let setup = Setup {
        tb: &tb,
        key_file: &key,
        group: "kill",
        models: &[model.backend.addr],
        lease_ms: LEASE_MS,
        limit: 1,
        wait_ms: 1000,
        extra: "",
    };
    let mut gws = setup.start(3).await;
    let mut owner = None;
    for (i, g) in gws.iter().enumerate() {
        if share(&metrics(g).await) == 1 {
            owner = Some(i);
        }
    }
    let owner = owner.expect("one gateway owns the slot");
    let mut victim = gws.remove(owner);
    let urls = score_urls(&gws);
    let clients = tokio::spawn(async move { load(&urls, 4, Duration::from_secs(9), "k").await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    victim.child.kill().expect("kill the owner");
    let _ = victim.child.wait();
    // The slot moves to one of the two others once the owner's Lease expired.
    let returned = loop {
        let mut total = 0;
        for g in &gws {
            total += share(&metrics(g).await);
        }
        if total == 1 {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "the share did not return"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let tally = clients.await.expect("load");
    let kill_at = Duration::from_secs(2);
    let first_ok_after = tally
        .answers
        .iter()
        .filter(|(t, s)| *t > kill_at + returned && *s == 200)
        .map(|(t, _)| *t)
        .min()
        .expect("answers after the share returned");
    let failed_after = tally
        .answers
        .iter()
        .filter(|(t, s)| *t > kill_at + returned + Duration::from_millis(500) && *s != 200)
        .count();
    println!(
        "owner killed: share back after {returned:?} (Lease {LEASE_MS} ms); first 200 after it at {:?}; {} ok, {:?} before the share returned",
        first_ok_after.saturating_sub(kill_at),
        tally.ok,
        tally.codes
    );
    assert!(
        returned <= Duration::from_millis(LEASE_MS + 1500),
        "share returned after {returned:?}"
    );
    assert_eq!(
        failed_after, 0,
        "failures after the share returned: {:?}",
        tally.codes
    );
    for code in tally.codes.keys() {
        assert!(
            code.starts_with("503 ") || code.starts_with("502 "),
            "unexpected answer {code}"
        );
    }
    model.assert_within(1);

    // Drained instead (SIGTERM): the owner leaves the group once nothing is in flight there,
    // and the other gateway takes the slot at once, with no failed request.
    let mut owner = None;
    for (i, g) in gws.iter().enumerate() {
        if share(&metrics(g).await) == 1 {
            owner = Some(i);
        }
    }
    let owner = owner.expect("one of the two owns the slot");
    let mut leaving = gws.remove(owner);
    let urls = score_urls(&gws);
    let clients = tokio::spawn(async move { load(&urls, 4, Duration::from_secs(5), "d").await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let drained = Instant::now();
    leaving.signal("TERM");
    let moved = loop {
        if share(&metrics(&gws[0]).await) == 1 {
            break drained.elapsed();
        }
        assert!(
            drained.elapsed() < Duration::from_secs(10),
            "the share did not move:\n{}",
            leaving.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let tally = clients.await.expect("load");
    assert_eq!(
        leaving.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        leaving.log()
    );
    println!(
        "owner drained: share moved after {moved:?}; {} ok, {:?}",
        tally.ok, tally.codes
    );
    assert!(
        tally.codes.is_empty(),
        "failed during the drain: {:?}",
        tally.codes
    );
    assert!(
        moved < Duration::from_millis(LEASE_MS),
        "a drained gateway's share moves before its Lease would expire: {moved:?}"
    );
    model.assert_within(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_autoscaler_leader_sums_the_members_load() {
    let _serial = SERIAL.lock().await;
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::api::{Api, PostParams};

    let tb = Testbed::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_file(dir.path());
    let client = tb.client().await;
    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    // 18 clients on a replica of limit 4 whose answers take 200 ms: busy + queued = 18, so
    // ceil(18 / (0.7 × 4)) = 7 replicas.
    let model = Model::start(Duration::from_millis(200)).await;
    let mut seen = Vec::new();
    for (group, n) in [("as-alone", 1usize), ("as-trio", 3)] {
        deployments
            .create(&PostParams::default(), &deployment("default", group))
            .await
            .expect("create the Deployment");
        let extra = format!(
            "\n[services.versions.autoscale]\ndeployment = \"{group}\"\nnamespace = \"default\"\nmax_replicas = 10\nscale_down_window_ms = 30000\n"
        );
        let setup = Setup {
            tb: &tb,
            key_file: &key,
            group,
            models: &[model.backend.addr],
            lease_ms: LEASE_MS,
            limit: 4,
            wait_ms: 10_000,
            extra: &extra,
        };
        let gws = setup.start(n).await;
        let urls = score_urls(&gws);
        let clients =
            tokio::spawn(async move { load(&urls, 18, Duration::from_secs(8), group).await });
        let t = Instant::now();
        let replicas = loop {
            let d = deployments.get(group).await.expect("get");
            let r = d.spec.and_then(|s| s.replicas).unwrap_or(0);
            if r >= 7 || t.elapsed() > Duration::from_secs(7) {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let tally = clients.await.expect("load");
        let mut desired = Vec::new();
        let mut patched = Vec::new();
        for g in &gws {
            let m = metrics(g).await;
            desired.push(
                series_value(
                    &m,
                    r#"scoregate_autoscale_desired_replicas{service="iris",version="blue"}"#,
                )
                .unwrap_or(0),
            );
            patched.push(
                series_value(
                    &m,
                    r#"scoregate_autoscale_scale_total{service="iris",version="blue"}"#,
                )
                .unwrap_or(0),
            );
        }
        println!(
            "{n} gateway(s): Deployment scaled to {replicas}; desired per gateway {desired:?}; scale patches per gateway {patched:?}; {} ok {:?}",
            tally.ok, tally.codes
        );
        assert!(tally.codes.is_empty(), "{:?}", tally.codes);
        assert_eq!(
            patched.iter().filter(|p| **p > 0).count(),
            1,
            "one gateway, the leader, patches the scale: {patched:?}"
        );
        seen.push(replicas);
    }
    assert_eq!(seen, vec![7, 7], "one gateway and three compute the same");
    assert!(model.max() <= 4, "the model ran {} at once", model.max());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_api_server_each_gateway_falls_back_to_a_safe_share() {
    let _serial = SERIAL.lock().await;
    let tb = Testbed::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_file(dir.path());
    let model = Model::start(MODEL_TIME).await;
    let setup = Setup {
        tb: &tb,
        key_file: &key,
        group: "outage",
        models: &[model.backend.addr],
        lease_ms: LEASE_MS,
        limit: 4,
        wait_ms: 1000,
        extra: "",
    };
    let gws = setup.start(3).await;
    let urls = score_urls(&gws);
    let clients = tokio::spawn(async move { load(&urls, 12, Duration::from_secs(12), "o").await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    tb.stop_apiserver();
    let stopped = Instant::now();
    // Once its own Lease lapsed, each gateway uses ⌊4 / 3⌋ = 1 slot and says so.
    for g in &gws {
        wait_series(g, r#"scoregate_coordination_state{state="fallback"}"#, 1).await;
        assert_eq!(share(&metrics(g).await), 1, "{}", g.log());
    }
    let fell_back = stopped.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    tb.start_apiserver();
    let restarted = Instant::now();
    for g in &gws {
        wait_series(g, r#"scoregate_coordination_state{state="coordinated"}"#, 1).await;
    }
    let back = restarted.elapsed();
    let tally = clients.await.expect("load");
    let mut shares = Vec::new();
    for g in &gws {
        shares.push(share(&metrics(g).await));
    }
    println!(
        "API server stopped: fallback after {fell_back:?}; restarted: coordinated again after {back:?}, shares {shares:?}; {} ok, {:?}; the model ran at most {} at once",
        tally.ok,
        tally.codes,
        model.max()
    );
    assert_eq!(shares.iter().sum::<u64>(), 4, "{shares:?}");
    assert!(tally.ok > 0);
    model.assert_within(4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_joining_and_leaving_under_load_fail_no_request() {
    let _serial = SERIAL.lock().await;
    let tb = Testbed::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_file(dir.path());
    let model = Model::start(Duration::from_millis(2)).await;
    let setup = Setup {
        tb: &tb,
        key_file: &key,
        group: "roll",
        models: &[model.backend.addr],
        lease_ms: LEASE_MS,
        limit: 1,
        wait_ms: 500,
        extra: "",
    };
    let mut gws = setup.start(3).await;
    // The clients use the first gateway only; the two others are replaced one at a time (a new
    // one joins, then an old one drains), as a rolling restart does.
    let urls = score_urls(&gws[..1]);
    let clients = tokio::spawn(async move { load(&urls, 8, Duration::from_secs(14), "r").await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    for round in 0..4 {
        let toml = setup.toml(&format!("roll-new-{round}"));
        let fresh = ServeProcess::start(&toml, "scoregate=info,scoregate::coordination=debug", &[]);
        wait_series(
            &fresh,
            r#"scoregate_coordination_state{state="coordinated"}"#,
            1,
        )
        .await;
        gws.push(fresh);
        let mut old = gws.remove(1);
        old.signal("TERM");
        assert_eq!(
            old.wait_exit(Duration::from_secs(10)),
            Some(0),
            "{}",
            old.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let tally = clients.await.expect("load");
    println!(
        "4 members replaced under load: {} ok, {:?}",
        tally.ok, tally.codes
    );
    if !tally.codes.is_empty() {
        for g in &gws {
            println!("{}", g.log());
        }
    }
    assert!(tally.codes.is_empty(), "{:?}", tally.codes);
    model.assert_within(1);
}

/// Member ids `[a, b, s, n]` such that of the replicas `m1`, `m2` (limit 1), `a` owns `m1` and
/// `b` owns `m2` among `[a, b, s]`, and once `n` joins, `n` owns `m1` and `b` still owns `m2`.
fn transit_layout(group: &str, m1: SocketAddr, m2: SocketAddr) -> [String; 4] {
    let owner = |r: SocketAddr, ids: &[String]| {
        let c = scoregate::owners(r, 1, ids);
        ids[c.iter().position(|n| *n == 1).expect("one owner")].clone()
    };
    for i in 0..10_000 {
        let ids: [String; 4] = ["a", "b", "s", "n"].map(|x| format!("{group}-{x}{i}"));
        let three = ids[..3].to_vec();
        let four = ids.to_vec();
        if owner(m1, &three) == ids[0]
            && owner(m2, &three) == ids[1]
            && owner(m1, &four) == ids[3]
            && owner(m2, &four) == ids[1]
        {
            return ids;
        }
    }
    panic!("no layout among 10,000 names");
}

/// A member joins and takes one of two slots while the view cannot settle (a third member is
/// stopped, its Lease still live): the moved slot is usable by nobody until then, and the
/// gateway that gave it up hands every request to the member whose slot did not move, not to
/// the new owner, where it would wait out its deadline. Every request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_in_transit_leaves_the_other_serving() {
    let _serial = SERIAL.lock().await;
    let tb = Testbed::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_file(dir.path());
    let (m1, m2) = (
        Model::start(Duration::from_millis(2)).await,
        Model::start(Duration::from_millis(2)).await,
    );
    let models = [m1.backend.addr, m2.backend.addr];
    // Long enough that the stopped member stays live for the whole run below.
    let lease_ms = 12_000;
    let setup = Setup {
        tb: &tb,
        key_file: &key,
        group: "transit",
        models: &models,
        limit: 1,
        wait_ms: 500,
        lease_ms,
        extra: "",
    };
    let [a, b, s, n] = transit_layout("transit", models[0], models[1]);
    let start = |id: &str| {
        ServeProcess::start(
            &setup.toml(id),
            "scoregate=info,scoregate::coordination=debug",
            &[],
        )
    };
    let (ga, gb, gs) = (start(&a), start(&b), start(&s));
    for g in [&ga, &gb, &gs] {
        wait_series(g, "scoregate_coordination_members", 3).await;
        wait_series(g, r#"scoregate_coordination_state{state="coordinated"}"#, 1).await;
    }
    // The gateways' own arithmetic agrees with the layout: a and b own a slot each, s none.
    let owned = [
        share(&metrics(&ga).await),
        share(&metrics(&gb).await),
        share(&metrics(&gs).await),
    ];
    assert_eq!(owned, [1, 1, 0], "slots of a, b, s");
    let stopped = Instant::now();
    gs.signal("STOP");
    let gn = start(&n);
    wait_series(&ga, "scoregate_coordination_members", 4).await;
    wait_series(
        &ga,
        "scoregate_coordination_share_slots{service=\"iris\",version=\"blue\"}",
        0,
    )
    .await;
    let urls = score_urls(std::slice::from_ref(&ga));
    let tally = load(&urls, 8, Duration::from_secs(3), "t").await;
    let ma = metrics(&ga).await;
    let (mb, mn) = (metrics(&gb).await, metrics(&gn).await);
    let still_live = stopped.elapsed() < Duration::from_millis(lease_ms * 2 / 3);
    gs.signal("CONT");
    println!(
        "slot in transit for the whole run: {} ok, {:?}; handed by a: {:?}, received by b: {:?}, by n: {:?}",
        tally.ok,
        tally.codes,
        series_value(
            &ma,
            r#"scoregate_coordination_handed_over_total{direction="sent",service="iris"}"#
        ),
        series_value(
            &mb,
            r#"scoregate_coordination_handed_over_total{direction="received",service="iris"}"#
        ),
        series_value(
            &mn,
            r#"scoregate_coordination_handed_over_total{direction="received",service="iris"}"#
        ),
    );
    // The run was inside the transit: the stopped member's Lease was live throughout, no
    // gateway settled the four-member view and a kept no slot of its own.
    assert!(still_live, "the stopped member's Lease may have lapsed");
    assert_eq!(
        series_value(&ma, r#"scoregate_coordination_state{state="settling"}"#),
        Some(1),
        "a's view is not settled"
    );
    assert_eq!(share(&ma), 0);
    assert_eq!(
        share(&mn),
        0,
        "n cannot use its slot before the view settles"
    );
    assert!(tally.codes.is_empty(), "failed: {:?}", tally.codes);
    assert!(tally.ok > 100, "{} answered", tally.ok);
    let received_b = series_value(
        &mb,
        r#"scoregate_coordination_handed_over_total{direction="received",service="iris"}"#,
    )
    .unwrap_or(0);
    assert!(
        received_b >= tally.ok,
        "every request went to b ({received_b} of {})",
        tally.ok
    );
    let received_n = series_value(
        &mn,
        r#"scoregate_coordination_handed_over_total{direction="received",service="iris"}"#,
    )
    .unwrap_or(0);
    assert_eq!(received_n, 0, "nothing was handed to the slot's new owner");
    assert!(
        m1.ids
            .lock()
            .expect("ids")
            .keys()
            .all(|id| !id.starts_with("t-")),
        "the moved slot's replica got no request during the transit"
    );
    m1.assert_within(1);
    m2.assert_within(1);
}
