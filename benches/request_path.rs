//! Micro-benchmarks of the per-request work that does not touch the network: route lookup,
//! version choice, auth, header hygiene, request ids, the certificate resolver (per handshake),
//! metrics recording, and the HTTP/1.1 fast path's request parse, the request it forwards and
//! the response head (both from raw heads).
//! Run: `cargo bench --features fuzzing --bench request_path` (it reaches the crate's internals).

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, header};
use scoregate::http1::{raw, request, response};
use scoregate::metrics::Metrics;
use scoregate::proxy::AnswerHeaders;
use scoregate::request::{forward, headers};
use scoregate::routing::{RouteTable, parse_path};

const CONFIG: &str = r#"
[listen]
http = "127.0.0.1:0"

[[services]]
name = "iris"
primary_key = "bench-key-0123456789abcdef"

[[services.versions]]
name = "blue"
traffic_percentile = 90
replicas = ["127.0.0.1:5001", "127.0.0.1:5002"]

[[services.versions]]
name = "green"
is_default = true
replicas = ["127.0.0.1:5003"]
"#;

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("iris.example.com"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("58"));
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer bench-key-0123456789abcdef"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    h.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    h
}

fn bench(c: &mut Criterion) {
    let config =
        scoregate::config::from_toml(CONFIG, Path::new(".")).expect("bench config is valid");
    let metrics = Metrics::new().expect("registry");
    let table = RouteTable::build(&config.services, &metrics);
    let hdrs = request_headers();

    c.bench_function("route_lookup_and_version_pick", |b| {
        b.iter(|| {
            let route = parse_path(black_box("/api/v1/service/iris/score")).expect("path");
            let svc = table.get(route.service).expect("service");
            black_box(svc.pick_version(None, black_box(42)).expect("version"))
        })
    });
    c.bench_function("key_auth_check", |b| {
        let svc = table.get("iris").expect("service");
        b.iter(|| {
            black_box(
                svc.auth
                    .check(black_box(
                        hdrs.get(header::AUTHORIZATION).map(HeaderValue::as_bytes),
                    ))
                    .is_ok(),
            )
        })
    });
    c.bench_function("header_hygiene", |b| {
        b.iter(|| {
            let mut h = hdrs.clone();
            headers::strip_hop_by_hop(&mut h);
            headers::set_forwarded(&mut h, "10.1.2.3".parse().expect("ip"), true);
            h.insert(
                headers::REQUEST_ID,
                headers::request_id(h.get(headers::REQUEST_ID)),
            );
            black_box(h)
        })
    });
    c.bench_function("request_id_new", |b| {
        b.iter(|| black_box(headers::new_request_id()))
    });
    // The resolver's work per handshake: one snapshot load, exact name, then wildcard, else
    // the default.
    let ca = scoregate::tls::DevCa::new("bench CA").expect("ca");
    let loaded: Vec<_> = [
        "iris.example.com",
        "*.models.example.com",
        "other.example.com",
    ]
    .iter()
    .map(|n| {
        let leaf = ca.issue(&[n.to_string()]).expect("leaf");
        scoregate::tls::load_pem_pair(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), "c", "k")
            .expect("pem")
    })
    .collect();
    let handle = scoregate::tls::CertHandle::new(
        scoregate::tls::CertStore::new(loaded.iter()).expect("store"),
    );
    c.bench_function("cert_resolve_exact", |b| {
        b.iter(|| black_box(handle.resolve(black_box(Some("other.example.com")))))
    });
    c.bench_function("cert_resolve_wildcard", |b| {
        b.iter(|| black_box(handle.resolve(black_box(Some("a.models.example.com")))))
    });
    // What wrk sends in the peer comparison, as the fast path takes it from the TLS plaintext.
    let raw = b"POST /api/v1/service/iris/score HTTP/1.1\r\nHost: 127.0.0.1:8443\r\nContent-Type: application/json\r\nAuthorization: Bearer bench-key-0123456789abcdef\r\nContent-Length: 58\r\n\r\n{\"data\": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}    ";
    let taken = request::take_request(&mut bytes::BytesMut::from(&raw[..]), 65_536, 65_536);
    assert!(
        matches!(&taken, request::Take::Request { body: Some(b), .. } if b.len() == 58),
        "{taken:?}"
    );
    c.bench_function("http1_take_request", |b| {
        b.iter(|| {
            let mut buf = bytes::BytesMut::from(&raw[..]);
            black_box(request::take_request(&mut buf, 64 * 1024, 64 * 1024))
        })
    });
    // The same request encoded for an HTTP/1.1 replica, straight from its raw head.
    if let request::Take::Request { head, body, .. } = &taken {
        let rid = headers::new_request_id();
        let f = forward::Forward {
            path: Some("/score".into()),
            client: "10.1.2.3".parse().expect("ip"),
            tls: true,
            drop_authorization: true,
            request_id: rid,
            max_body: 64 * 1024,
            hop: None,
        };
        let replica = "127.0.0.1:8080".parse().expect("addr");
        c.bench_function("http1_forward_raw", |b| {
            b.iter(|| {
                black_box(forward::encode_http1(
                    black_box(head),
                    body.as_ref(),
                    &f,
                    replica,
                ))
            })
        });
    }
    // What the peer comparison's backend (nginx) answers, passed through raw.
    let reply: &'static [u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 29 Nov 2026 05:00:00 GMT\r\nContent-Type: application/json\r\nContent-Length: 206\r\nConnection: keep-alive\r\n\r\n";
    let mut slots = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut slots);
    assert!(parsed.parse(reply).expect("reply").is_complete());
    let spans = parsed
        .headers
        .iter()
        .filter(|h| raw::role(h.name.as_bytes()) != raw::Role::Hop)
        .map(|h| raw::span(reply.as_ptr() as usize, h))
        .collect();
    let resp = AnswerHeaders::Raw {
        replica: raw::RawHeaders::new(bytes::Bytes::from_static(reply), spans),
        request_id: headers::new_request_id(),
        deployment: None,
    };
    let mut out = bytes::BytesMut::with_capacity(1024);
    c.bench_function("http1_response_head", |b| {
        b.iter(|| {
            out.clear();
            let framing = response::framing(http::StatusCode::OK, Some(206));
            response::put_head(
                &mut out,
                http::StatusCode::OK,
                black_box(&resp),
                framing,
                false,
            );
            black_box(out.len())
        })
    });
    let vm = metrics.version("iris", "blue");
    c.bench_function("metrics_record_request", |b| {
        b.iter(|| {
            vm.in_flight.inc();
            vm.queue_wait.observe(black_box(0.000_02));
            vm.upstream.observe(black_box(0.000_4));
            vm.observe(black_box(200), black_box(0.000_5));
            vm.in_flight.dec();
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
