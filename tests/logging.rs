//! What `scoregate serve` writes to a pipe (every pod's `kubectl logs`): text without colour codes
//! and each error's causes once; with `--log-format json` (or `SCOREGATE_LOG_FORMAT=json`) one
//! JSON object per line, the request id a field of its own.

mod common;

use common::*;

/// A service whose only replica refuses connections (port 9 on loopback: nothing listens), so a
/// request fails with a logged cause.
fn unreachable_replica(pki: &Pki) -> String {
    service_toml(pki, "", &["127.0.0.1:9".parse().expect("addr")])
}

async fn fail_one(gw: &ServeProcess, pki: &Pki, request_id: &str) {
    let c = client(&pki.ca_pem).build().expect("client");
    let url = format!(
        "https://localhost:{}/api/v1/service/iris/score",
        gw.tls.expect("tls").port()
    );
    let r = c
        .post(&url)
        .bearer_auth(KEY)
        .header("x-ms-request-id", request_id)
        .body(ROWS)
        .send()
        .await
        .expect("an answer");
    expect_error(r, 502, "replica_unreachable").await;
}

#[tokio::test]
async fn text_logs_to_a_pipe_have_no_colour_and_each_cause_once() {
    let pki = Pki::new(&["localhost"]);
    let gw = ServeProcess::start(&unreachable_replica(&pki), "info", &[]);
    fail_one(&gw, &pki, "text-log-check-1").await;
    let log = gw.wait_log("request failed", std::time::Duration::from_secs(10));
    assert!(!log.contains('\u{1b}'), "no ANSI escapes on a pipe:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("request failed"))
        .expect("the failure is logged");
    assert!(line.contains("text-log-check-1"), "{line}");
    // The operating system's words for ECONNREFUSED, as the gateway's error carries them.
    let cause = "Connection refused (os error 111)";
    assert_eq!(
        line.matches(cause).count(),
        1,
        "the cause is printed once: {line}"
    );
    assert_eq!(
        line.matches("cannot connect to replica").count(),
        1,
        "{line}"
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_request_id_as_a_field() {
    let pki = Pki::new(&["localhost"]);
    let toml = unreachable_replica(&pki);
    // The option, and the environment variable a Deployment sets.
    let by_flag = ServeProcess::start_with(&toml, "info", &[], &["--log-format", "json"]);
    let by_env = ServeProcess::start(&toml, "info", &[("SCOREGATE_LOG_FORMAT", "json")]);
    for (how, gw) in [
        ("--log-format", &by_flag),
        ("SCOREGATE_LOG_FORMAT", &by_env),
    ] {
        let id = format!("json-log-check-{}", how.len());
        fail_one(gw, &pki, &id).await;
        let log = gw.wait_log("request failed", std::time::Duration::from_secs(10));
        let events: Vec<serde_json::Value> = log
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{how}: not JSON ({e}): {l}"))
            })
            .collect();
        assert!(
            events.iter().all(|e| e["level"].is_string()
                && e["timestamp"].is_string()
                && e["message"].is_string()),
            "{how}: every event has level, timestamp and message:\n{log}"
        );
        let failed = events
            .iter()
            .find(|e| e["message"] == "request failed")
            .expect("the failure is logged");
        assert_eq!(failed["request_id"], id.as_str(), "{how}: {failed}");
        assert_eq!(failed["service"], "iris", "{how}: {failed}");
        assert_eq!(failed["reason"], "replica_unreachable", "{how}: {failed}");
        assert_eq!(failed["level"], "WARN", "{how}: {failed}");
    }
}

/// `[access_log] enabled = true`: one `scoregate::access` event per request, for a replica's
/// answer (with its model time and the bytes the client received) and for the gateway's own
/// refusal; none when it is off (the default).
#[tokio::test]
async fn the_access_log_has_one_event_per_request_and_is_off_by_default() {
    let pki = Pki::new(&["localhost"]);
    let model = Backend::model().await;
    let base = service_toml(&pki, "", &[model.addr]);
    for enabled in [true, false] {
        let toml = if enabled {
            format!("{base}\n[access_log]\nenabled = true\n")
        } else {
            base.clone()
        };
        let gw = ServeProcess::start(&toml, "info", &[("SCOREGATE_LOG_FORMAT", "json")]);
        let c = client(&pki.ca_pem).build().expect("client");
        let url = format!(
            "https://localhost:{}/api/v1/service/iris/score",
            gw.tls.expect("tls").port()
        );
        let send = |key: &'static str, id: &'static str| {
            c.post(&url)
                .bearer_auth(key)
                .header("x-ms-request-id", id)
                .body(ROWS)
                .send()
        };
        let ok = send(KEY, "access-ok").await.expect("answer");
        assert_eq!(ok.status(), 200);
        let ok_len = ok.bytes().await.expect("body").len() as u64;
        let refused = send("not-the-key-000000000000", "access-401")
            .await
            .expect("answer");
        assert_eq!(refused.status(), 401);
        let refused_len = refused.bytes().await.expect("body").len() as u64;
        // A marker request after them: once its line is there, theirs are too.
        let _ = send(KEY, "access-last").await.expect("answer");
        if !enabled {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            assert!(
                !gw.log().contains("scoregate::access"),
                "off by default:\n{}",
                gw.log()
            );
            continue;
        }
        let log = gw.wait_log("access-last", std::time::Duration::from_secs(10));
        let access: Vec<serde_json::Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["target"] == "scoregate::access")
            .collect();
        assert_eq!(access.len(), 3, "one event per request:\n{log}");
        let (ok, refused) = (&access[0], &access[1]);
        assert_eq!(ok["request_id"], "access-ok", "{ok}");
        assert_eq!(
            (ok["status"].as_u64(), ok["bytes"].as_u64()),
            (Some(200), Some(ok_len)),
            "{ok}"
        );
        assert_eq!(
            (&ok["service"], &ok["version"]),
            (&"iris".into(), &"blue".into())
        );
        assert_eq!(ok["client"], "127.0.0.1", "{ok}");
        let (upstream, total) = (ok["upstream_ms"].as_f64(), ok["total_ms"].as_f64());
        assert!(
            upstream.zip(total).is_some_and(|(u, t)| u > 0.0 && t >= u),
            "model time within the total: {ok}"
        );
        assert_eq!(refused["request_id"], "access-401", "{refused}");
        assert_eq!(
            (refused["status"].as_u64(), refused["bytes"].as_u64()),
            (Some(401), Some(refused_len)),
            "{refused}"
        );
        assert!(refused["upstream_ms"].is_null(), "no replica: {refused}");
        assert!(refused["timestamp"].is_string(), "{refused}");
    }
}
