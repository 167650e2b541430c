//! gRPC through the gateway, against real peers: grpcio clients and a grpcio server (raw-bytes
//! service `test.Echo`: a 100-message server stream, a bidirectional stream, sleeps and
//! errors), and the Open Inference Protocol over gRPC with Triton's client
//! (`tritonclient.grpc`) to KServe's model server. Over TLS (ALPN h2) with key auth to h2c
//! replicas; the service named by the `scoregate-service` metadata. The gateway's own refusals
//! are trailers-only gRPC answers the client libraries read as the documented codes.
#![cfg(feature = "peer-tests")]

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_streams_both_ways_with_trailers_and_refusals_are_grpc_codes() {
    let echo_port = free_port();
    let mut echo = PeerProcess::start("grpc_replica.py", &["--port", &echo_port.to_string()]);
    let (kserve, ks_http, ks_grpc) = kserve_iris().await;
    let start = Instant::now();
    while !std::fs::read_to_string(&echo.log)
        .unwrap_or_default()
        .contains("serving")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "grpc replica:\n{}",
            echo.log_text()
        );
        if let Ok(Some(s)) = echo.child.try_wait() {
            panic!("grpc replica exited ({s}):\n{}", echo.log_text());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let demo = Backend::model().await;
    // A replica deaf to gRPC deadlines (hyper over h2c, answering after 2 s whatever the call's
    // `grpc-timeout`): only the gateway's own deadline can end a call to it early.
    let deaf = Backend::fixed("", Duration::from_secs(2)).await;
    let pki = Pki::new(&["localhost"]);
    let service = |name: &str, extra: &str, protocol: &str, port: u16| {
        format!(
            "[[services]]\nname = \"{name}\"\nprimary_key = \"{KEY}\"\nreplica_max_concurrent_requests = 16\n{extra}\n\n[[services.versions]]\nname = \"main\"\nprotocol = \"{protocol}\"\nreplicas = [\"127.0.0.1:{port}\"]\n"
        )
    };
    let toml = [
        format!(
            "[listen]\ntls = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n{}",
            pki.toml()
        ),
        service("echo", "", "h2c", echo_port),
        service("slow", "scoring_timeout_ms = 300", "h2c", echo_port),
        service(
            "single",
            "replica_max_concurrent_requests = 1\nmax_request_wait_time = 0",
            "h2c",
            echo_port,
        )
        .replace("replica_max_concurrent_requests = 16\n", ""),
        service("iris", "", "http1", ks_http),
        service("iris-grpc", "", "h2c", ks_grpc),
        service("demo", "", "h2c", demo.addr.port()),
        service("deaf", "", "h2c", deaf.addr.port()),
    ]
    .join("\n");
    let gw = TestGateway::start(&toml).await;
    let target = format!("localhost:{}", gw.tls.expect("tls").port());
    let ca = pki.ca_path().display().to_string();
    let args = [
        "--target",
        &target,
        "--ca",
        &ca,
        "--key",
        KEY,
        "--triton",
        "iris-grpc,demo",
    ]
    .map(String::from);
    let r = run_peer_json("grpc_client.py", &args, Duration::from_secs(120)).await;

    // A server stream of 100 messages arrives complete, with its trailers and status.
    let c = &r["count"];
    assert_eq!(c["n"], 100, "{r}");
    assert_eq!(
        (c["first"].as_str(), c["last"].as_str()),
        (Some("msg-0"), Some("msg-99")),
        "{r}"
    );
    assert_eq!(c["code"], "OK", "{r}");
    assert_eq!(c["trailing"]["x-count"], "100", "{r}");
    // Both ways at once: each message sent only after the previous echo came back.
    let c = &r["chat"];
    assert_eq!(
        c["received"],
        serde_json::json!(["echo-m0", "echo-m1", "echo-m2", "echo-m3", "echo-m4"]),
        "{r}"
    );
    assert_eq!(
        (c["code"].as_str(), c["trailing"]["x-echoed"].as_str()),
        (Some("OK"), Some("5")),
        "{r}"
    );
    // The replica's own status passes through.
    let e = &r["replica_error"];
    assert_eq!(
        (e["code"].as_str(), e["details"].as_str()),
        (Some("NOT_FOUND"), Some("no such thing")),
        "{r}"
    );
    // The gateway's refusals, as grpcio reads them.
    for (k, code, says) in [
        ("no_key", "UNAUTHENTICATED", "missing Authorization header"),
        ("wrong_key", "UNAUTHENTICATED", "invalid key"),
        (
            "unknown_service",
            "NOT_FOUND",
            "service \"nope\" does not exist",
        ),
        ("no_service", "UNIMPLEMENTED", "no such endpoint"),
        (
            "http1_version",
            "FAILED_PRECONDITION",
            "gRPC needs protocol = \"h2c\"",
        ),
        (
            "scoring_timeout",
            "DEADLINE_EXCEEDED",
            "timed out after 300 ms",
        ),
        (
            "saturated",
            "UNAVAILABLE",
            "Too many requests for service single",
        ),
    ] {
        let e = &r[k];
        assert_eq!(e["code"], code, "{k}: {r}");
        let details = e["details"].as_str().unwrap_or_default();
        assert!(details.contains(says), "{k}: {r}");
    }
    let pushback = r["saturated"]["trailing"]["grpc-retry-pushback-ms"].as_str();
    assert!(
        pushback.is_some_and(|ms| ms.parse::<u64>().is_ok_and(|ms| ms >= 1)),
        "{r}"
    );

    // Open Inference Protocol over gRPC: Triton's client to KServe's gRPC server and to the
    // demo model (which `scoregate demo` serves).
    for service in ["iris-grpc", "demo"] {
        let t = &r[format!("triton/{service}")];
        assert_eq!(t["live"]["ok"], true, "{service}: {r}");
        assert_eq!(t["model_ready"]["ok"], true, "{service}: {r}");
        assert_eq!(
            t["infer"]["ok"],
            serde_json::json!([0.0, 0.9054]),
            "{service}: {r}"
        );
        assert_eq!(
            t["no_key"]["status"], "StatusCode.UNAUTHENTICATED",
            "{service}: {r}"
        );
    }
    // KServe's model declares no inputs; the demo's declares its [N, 4] tensor.
    assert_eq!(
        r["triton/demo"]["metadata"]["ok"],
        serde_json::json!([["-1", "4"]]),
        "{r}"
    );

    // `grpc-timeout` shortens the scoring timeout: a call with 200 ms to a replica that takes 2 s
    // and ignores deadlines ends in DEADLINE_EXCEEDED from the gateway at 200 ms (reqwest over
    // HTTP/2, which sets no deadline of its own).
    let c = client(&pki.ca_pem)
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let call = |service: &'static str| {
        let c = c.clone();
        let url = format!("https://{target}/test.Echo/Sleep");
        async move {
            let t0 = Instant::now();
            let resp = c
                .post(url)
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("grpc-timeout", "200m")
                .header("scoregate-service", service)
                .bearer_auth(KEY)
                .body([&[0u8, 0, 0, 0, 4][..], b"2000"].concat())
                .send()
                .await
                .expect("grpc over reqwest");
            let took = t0.elapsed();
            assert_eq!(resp.status(), 200, "{service}");
            assert_eq!(
                resp.headers()["grpc-status"],
                "4",
                "{service}: {:?}",
                resp.headers()
            );
            assert!(
                took < Duration::from_millis(1500),
                "{service}: answered after {took:?}"
            );
            let message = resp.headers()["grpc-message"].to_str().expect("ascii");
            message.to_string()
        }
    };
    let message = call("deaf").await;
    assert!(message.contains("timed out after 200 ms"), "{message}");
    // The deadline goes on to the replica with the call: a gRPC server ends it itself at the
    // same 200 ms, so whichever timer fires first answers (grpcio's "Deadline Exceeded" or the
    // gateway's message) — the call ends at 200 ms either way.
    let message = call("echo").await;
    assert!(
        message.contains("timed out after 200 ms") || message == "Deadline Exceeded",
        "{message}"
    );

    // Every call counted by its final status: the replica's trailers and the gateway's own
    // ("" for a call that named no service the gateway has).
    let m = gw.metrics().await;
    for (service, code, at_least) in [
        ("echo", "0", 2),
        ("echo", "5", 1),
        ("echo", "16", 2),
        ("echo", "4", 1),
        ("deaf", "4", 1),
        ("", "5", 1),
        ("", "12", 1),
        ("slow", "4", 1),
        ("single", "14", 1),
        ("iris", "9", 1),
        ("iris-grpc", "0", 4),
        ("demo", "0", 4),
    ] {
        let series =
            format!("scoregate_grpc_responses_total{{code=\"{code}\",service=\"{service}\"}}");
        assert!(counter(&m, &series) >= at_least, "{series}\n{m}");
    }
    assert!(
        counter(
            &m,
            r#"scoregate_requests_by_protocol_total{protocol="grpc"}"#
        ) >= 10
    );
    gw.stop().await;
    drop((echo, kserve, deaf));
}
