//! `[runtime] busy_poll_us` through the real binary on the one-worker runtime: requests are served
//! over HTTP/1.1 and HTTP/2 while the worker polls, the polling shows in
//! `scoregate_busy_poll_rounds_total`, and once traffic stops it stops: no round and (almost) no
//! CPU in the idle second that follows. Without the one-worker runtime the setting is refused.

mod common;

use std::time::Duration;

use common::*;

const SCORE: &str = "/api/v1/service/iris/score";

fn busy_toml(pki: &Pki, replica: std::net::SocketAddr, us: u64) -> String {
    service_toml(pki, "", &[replica]).replace(
        "[[services]]",
        &format!("[runtime]\nbusy_poll_us = {us}\n\n[[services]]"),
    )
}

/// The process's CPU time so far, in clock ticks (utime + stime from /proc/PID/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which ends with the last ')'): state is field 3, so utime
    // (14) and stime (15) are the 12th and 13th after it.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

async fn rounds(c: &reqwest::Client, admin: std::net::SocketAddr) -> u64 {
    let text = c
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    text.lines()
        .find_map(|l| l.strip_prefix("scoregate_busy_poll_rounds_total "))
        .unwrap_or_else(|| panic!("no busy poll counter in\n{text}"))
        .trim()
        .parse()
        .expect("count")
}

#[tokio::test]
async fn busy_polling_serves_then_stops_with_the_traffic() {
    let model = Backend::model().await;
    let pki = Pki::new(&["localhost"]);
    let gw = ServeProcess::start(
        &busy_toml(&pki, model.addr, 5_000),
        "info",
        &[("TOKIO_WORKER_THREADS", "1")],
    );
    assert!(gw.log().contains("busy polling on"), "{}", gw.log());
    let (tls, admin) = (gw.tls.expect("tls"), gw.admin.expect("admin"));
    let url = format!("https://localhost:{}{SCORE}", tls.port());
    let plain = reqwest::Client::new();
    let before = rounds(&plain, admin).await;

    // Traffic: both protocols, a request every few milliseconds (within the 5 ms budget).
    let h1 = client(&pki.ca_pem).http1_only().build().expect("h1");
    let h2 = client(&pki.ca_pem).build().expect("h2");
    for i in 0..100 {
        let c = if i % 2 == 0 { &h1 } else { &h2 };
        let r = post(c, &url, Some(KEY), ROWS).await;
        let version = r.version();
        assert_eq!(r.status(), 200, "request {i} ({version:?})");
        let want = if i % 2 == 0 {
            reqwest::Version::HTTP_11
        } else {
            reqwest::Version::HTTP_2
        };
        assert_eq!(version, want, "request {i}");
        assert!(r.text().await.expect("body").contains("predictions"));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let during = rounds(&plain, admin).await;
    assert!(
        during > before,
        "the worker never polled under traffic: {before} -> {during}"
    );

    // No traffic (the admin listener's scrapes are not client traffic): well past the budget,
    // nothing polls and nothing burns CPU.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let settled = rounds(&plain, admin).await;
    let (t0, c0) = (std::time::Instant::now(), cpu_ticks(gw.pid()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle, c1) = (t0.elapsed(), cpu_ticks(gw.pid()));
    let after = rounds(&plain, admin).await;
    println!(
        "rounds: {before} before, {during} after 100 requests, {settled} -> {after} around an idle {idle:?} using {} CPU ticks",
        c1 - c0
    );
    assert_eq!(after, settled, "still polling with no traffic");
    // USER_HZ is 100 on Linux: a polling worker would use ~100 ticks a second, a parked one ~0.
    assert!(c1 - c0 <= 5, "{} CPU ticks in an idle {idle:?}", c1 - c0);
}

#[test]
fn busy_polling_needs_the_one_worker_runtime() {
    let pki = Pki::new(&["localhost"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("scoregate.toml");
    std::fs::write(
        &path,
        busy_toml(&pki, "127.0.0.1:9".parse().expect("addr"), 100),
    )
    .expect("write");
    for (workers, code) in [
        (None, Some(64)),
        (Some("2"), Some(64)),
        (Some("1"), Some(0)),
    ] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_scoregate"));
        cmd.args(["check", "--config"]).arg(&path);
        match workers {
            Some(n) => cmd.env("TOKIO_WORKER_THREADS", n),
            None => cmd.env_remove("TOKIO_WORKER_THREADS"),
        };
        let out = cmd.output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), code, "workers {workers:?}: {err}");
        if code == Some(64) {
            assert!(err.contains("runtime.busy_poll_us"), "{err}");
            assert!(err.contains("TOKIO_WORKER_THREADS=1"), "{err}");
        }
    }
}
