//! OpenAI-compatible endpoints through the gateway, with the real `openai` Python client
//! (httpx, HTTP/1.1 and HTTP/2) and an OpenAI-compatible replica on the serving stack vLLM and
//! KServe use (FastAPI on uvicorn, Starlette's streaming responses): routing by the body's
//! `model`, server-sent events passed chunk by chunk as the replica sends them, a client's
//! hang-up ending the replica's request, a stalled stream cut off after
//! `stream_idle_timeout_ms`, and the gateway's refusals as the client library reads them.
#![cfg(feature = "peer-tests")]

mod common;

use std::time::Duration;

use common::*;

fn events(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The time of the replica's event `kind` for request `id`.
fn event_time(ev: &[serde_json::Value], kind: &str, id: &str) -> Option<f64> {
    ev.iter()
        .find(|e| e["event"] == kind && e["id"] == id)
        .and_then(|e| e["t"].as_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_streams_chunk_by_chunk_hangups_cancel_and_refusals_read_by_the_client() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let ev_path = dir.path().join("events.jsonl");
    let mut replica = PeerProcess::start(
        "openai_replica.py",
        &[
            "--port",
            &port.to_string(),
            "--events",
            &ev_path.display().to_string(),
        ],
    );
    replica
        .wait_http_ok(
            &format!("http://127.0.0.1:{port}/health"),
            Duration::from_secs(60),
        )
        .await;
    let pki = Pki::new(&["localhost"]);
    let service = |name: &str, key: &str, extra: &str| {
        format!(
            "[[services]]\nname = \"{name}\"\nprimary_key = \"{key}\"\nreplica_max_concurrent_requests = 8\n{extra}\n\n[[services.versions]]\nname = \"main\"\nreplicas = [\"127.0.0.1:{port}\"]\n"
        )
    };
    let toml = format!(
        "[listen]\ntls = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n{}\n{}\n{}\n{}",
        pki.toml(),
        service("chat", KEY, ""),
        service("embed", KEY2, ""),
        service("slow", KEY, "stream_idle_timeout_ms = 500"),
    );
    let gw = TestGateway::start(&toml).await;
    let base = gw.https("/v1");
    let ca = pki.ca_path().display().to_string();
    for proto in ["h1", "h2"] {
        let mut args = [
            "--base",
            &base,
            "--ca",
            &ca,
            "--key",
            KEY,
            "--embed-key",
            KEY2,
        ]
        .map(String::from)
        .to_vec();
        if proto == "h2" {
            args.push("--http2".into());
        }
        let r = run_peer_json("openai_client.py", &args, Duration::from_secs(120)).await;
        // Give the replica a moment to log the hang-up and the cut-off.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let ev = events(&ev_path);

        // Streamed: every chunk, and each as the replica sent it — the first reached the
        // client before the replica had produced the rest (nine more, 200 ms apart).
        let s = &r["stream"];
        let text: String = (0..10).map(|i| format!("tok{i} ")).collect();
        assert_eq!(s["text"], text.as_str(), "{proto}: {r}");
        let arrivals: Vec<f64> = s["arrivals"]
            .as_array()
            .expect("arrivals")
            .iter()
            .filter_map(|t| t.as_f64())
            .collect();
        assert_eq!(arrivals.len(), 10, "{proto}: {r}");
        let done = event_time(&ev, "done", &format!("stream-{proto}"))
            .unwrap_or_else(|| panic!("the replica finished the stream: {ev:?}"));
        assert!(
            arrivals[0] < done - 1.0,
            "{proto}: first chunk at {} but the replica finished at {done}",
            arrivals[0]
        );
        assert!(
            arrivals[9] - arrivals[0] > 1.4,
            "{proto}: chunks arrived together, not as sent: {arrivals:?}"
        );
        assert_eq!(r["whole"], "tok0 tok1 tok2 ", "{proto}: {r}");
        assert_eq!(r["completion_stream"], "tok0 tok1 tok2 ", "{proto}: {r}");
        assert_eq!(
            r["embeddings"],
            serde_json::json!([[2.0, 1.0, 0.0, -1.0], [3.0, 1.0, 0.0, -1.0]]),
            "{proto}: {r}"
        );
        // The gateway's refusals, as the client library reads them: (exception, status, a
        // piece of the message).
        for (k, class, status, says) in [
            (
                "unknown_model",
                "NotFoundError",
                404,
                "\"nope\" does not exist",
            ),
            ("wrong_key", "AuthenticationError", 401, "invalid key"),
            (
                "other_services_key",
                "AuthenticationError",
                401,
                "invalid key",
            ),
            ("no_model", "BadRequestError", 400, "no \"model\""),
        ] {
            let e = &r[k];
            assert_eq!(e["raised"], class, "{proto} {k}: {r}");
            assert_eq!(e["status"], status, "{proto} {k}: {r}");
            let message = e["message"].as_str().unwrap_or_default();
            assert!(message.contains(says), "{proto} {k}: {r}");
        }

        // The client hung up after the first chunk of fifty, the next due 3 s later: the
        // replica's request ended (its generator cancelled) within a second — the gateway saw
        // the hang-up itself, not at its next write.
        let closed = r["hangup"]["closed"].as_f64().expect("closed");
        let id = format!("hangup-{proto}");
        let cancelled = event_time(&ev, "cancelled", &id)
            .unwrap_or_else(|| panic!("{proto}: the replica's request was not cancelled: {ev:?}"));
        assert!(
            cancelled - closed < 1.0,
            "{proto}: cancelled {:.3} s after the hang-up",
            cancelled - closed
        );
        assert!(
            event_time(&ev, "done", &id).is_none(),
            "{proto}: the replica finished anyway"
        );
        let chunks = ev
            .iter()
            .filter(|e| e["event"] == "chunk" && e["id"] == id.as_str())
            .count();
        assert!(
            chunks < 10,
            "{proto}: {chunks} chunks produced for a client that left"
        );

        // A replica silent for longer than the service's 500 ms: the stream was cut after its
        // first chunk, the client saw it end early, the replica's request was ended.
        let cut = &r["idle_cut"];
        assert_eq!(cut["chunks"], 1, "{proto}: {r}");
        assert!(
            cut["raised"].is_string(),
            "{proto}: the cut stream read as complete: {r}"
        );
        let id = format!("idle-{proto}");
        assert!(
            event_time(&ev, "cancelled", &id).is_some(),
            "{proto}: {ev:?}"
        );
    }
    // curl's request takes the HTTP/1.1 fast path (head and body in one write; httpx writes
    // them apart and hyper serves it): `curl -N` hangs up after 1 s, the next chunk due at 3 s.
    let body = r#"{"model":"chat","stream":true,"max_tokens":20,"messages":[]}"#;
    let out = std::process::Command::new("curl")
        .args(["--http1.1", "-sN", "--max-time", "1", "--cacert", &ca])
        .args(["-H", &format!("Authorization: Bearer {KEY}")])
        .args([
            "-H",
            "Content-Type: application/json",
            "-H",
            "x-chunk-delay-ms: 3000",
        ])
        .args(["-H", "x-ms-request-id: hangup-curl", "--data-binary", body])
        .arg(gw.https("/v1/chat/completions"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("data: ").count(),
        1,
        "one chunk before the hang-up: {text}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ev = events(&ev_path);
    let start = event_time(&ev, "start", "hangup-curl").expect("started");
    let cancelled = event_time(&ev, "cancelled", "hangup-curl")
        .unwrap_or_else(|| panic!("curl's hang-up did not end the replica's request: {ev:?}"));
    assert!(
        cancelled - start < 1.5,
        "cancelled {:.3} s after the start (the hang-up was at 1 s)",
        cancelled - start
    );

    // Streams' time to first byte is measured. Requests for a configured service counted as
    // openai: per run the stream, the whole answer, the completion, the embeddings, the other
    // service's key, the hang-up and the cut stream (7; the unknown model, the wrong key and the
    // missing model name no service), and curl's.
    let m = gw.metrics().await;
    let ttfb = counter(
        &m,
        r#"scoregate_stream_first_byte_seconds_count{service="chat",version="main"}"#,
    );
    assert!(
        ttfb >= 2 * 3,
        "streamed answers with a first byte: {ttfb}\n{m}"
    );
    assert_eq!(
        counter(
            &m,
            r#"scoregate_requests_by_protocol_total{protocol="openai"}"#
        ),
        2 * 7 + 1,
        "{m}"
    );
    gw.stop().await;
    drop(replica);
}
