//! TLS handshake load for the peer comparison (benches/peers/run.sh): every request on a new
//! TLS connection — full handshakes (no session resumption at all: wrk with `Connection: close`
//! resumes sessions, so it cannot measure these) or resumed ones (TLS 1.3 tickets / TLS 1.2
//! session ids kept by the client).
//!
//!   cargo bench --bench handshakes -- ADDR SECONDS CONCURRENCY full|resumed [PATH] [KEY]
//!   … ADDR SECONDS CONNECTIONS idle     hold CONNECTIONS TLS connections open (the RSS test);
//!                                       prints `{"open": N}` once they are all up
//!   … ADDR SECONDS CONNECTIONS idle-post PATH KEY
//!                                       the same, each after one scoring POST answered 200 on it
//!   … ADDR SECONDS CONNECTIONS rate-tls|rate-plain|rate-h2 PATH KEY RATE
//!                                       open-loop keep-alive load at RATE req/s (HTTP/1.1 over
//!                                       TLS or plain, or HTTP/2 over TLS one stream at a time
//!                                       per connection); latency from each request's scheduled
//!                                       time (no coordinated omission): p50, p99, p99.9 in µs
//!   … ADDR SECONDS CONNECTIONS burst-tls|burst-plain PATH KEY RATE
//!                                       the same with every connection on one clock: all their
//!                                       requests due at once (h2load's `--rps` bursts, but the
//!                                       same for every target: h2load starts each connection's
//!                                       clock when its handshake ends, so its bursts depend on
//!                                       how fast the target shakes hands)
//!   … tls:ADDR,h2:ADDR,plain:ADDR,… SECONDS CONNECTIONS burst-mix PATH KEY RATE
//!                                       `burst-*` against every target at once, each at RATE
//!                                       with CONNECTIONS, their clocks offset by an equal share
//!                                       of the period: one host, the same moment's noise for
//!                                       all, bursts that never overlap; a line per target
//!                                       (with each burst's first answer and turnaround), and
//!                                       with BURST_MIX_LATENCIES=DIR every latency to DIR
//!
//! The rate modes load for half a second before SECONDS of recording (see `recorded_window`).
//! Prints one JSON line. Without arguments (as `cargo test --all-targets` runs it) it checks
//! its HTTP/2 client's encodings (`h2_client::self_check`) and does nothing else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "handshakes/h2_client.rs"]
mod h2_client;

/// The peers serve a throwaway self-signed certificate: trust what they send (the handshake's
/// cost for the server is the same).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    // Signatures are not checked either: the load generator must not be the bottleneck (an
    // ECDSA verification costs the client more than the signature costs the server).
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn one(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    request: &[u8],
) -> Result<bool, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let resumed = matches!(
        tls.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    tls.write_all(request).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(1024);
    // `Connection: close`: the response ends when the server closes.
    match tls.read_to_end(&mut buf).await {
        Ok(_) => {}
        // Some servers close without close_notify; the response is complete when it is there.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e.to_string()),
    }
    if buf.starts_with(b"HTTP/1.1 200") {
        Ok(resumed)
    } else {
        Err(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(40)])
        ))
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.len() < 4 {
        // As `cargo test --all-targets` runs it: the HTTP/2 client's encodings checked.
        h2_client::self_check();
        return;
    }
    if args[3] == "burst-mix" {
        let secs: u64 = args[1].parse().expect("SECONDS");
        let conns: usize = args[2].parse().expect("CONNECTIONS");
        let rate: u64 = args.get(6).and_then(|r| r.parse().ok()).expect("RATE");
        return burst_mix(&args[0], secs, conns, &args[4], &args[5], rate);
    }
    let addr: SocketAddr = args[0].parse().expect("ADDR as ip:port");
    let secs: u64 = args[1].parse().expect("SECONDS");
    let conc: usize = args[2].parse().expect("CONCURRENCY");
    match args[3].as_str() {
        "idle" => return idle(addr, secs, conc, None),
        "idle-post" => {
            let req = request(&args[4], Some(&args[5]), false);
            return idle(addr, secs, conc, Some(req));
        }
        "rate-h2" => {
            let rate: u64 = args.get(6).and_then(|r| r.parse().ok()).expect("RATE");
            return rate_h2(addr, secs, conc, &args[4], &args[5], rate);
        }
        mode @ ("rate-tls" | "rate-plain" | "burst-tls" | "burst-plain") => {
            let rate: u64 = args.get(6).and_then(|r| r.parse().ok()).expect("RATE");
            let req = request(&args[4], Some(&args[5]), false);
            let tls = mode.ends_with("-tls");
            return rate_mode(addr, secs, conc, tls, req, rate, mode.starts_with("burst"));
        }
        _ => {}
    }
    let full = match args[3].as_str() {
        "full" => true,
        "resumed" => false,
        other => panic!("mode {other:?}: full, resumed, idle, idle-post, rate-*, burst-*"),
    };
    let path = args.get(4).cloned().unwrap_or_else(|| "/".into());
    let key = args.get(5).cloned();
    let request = String::from_utf8(request(&path, key.as_deref(), true)).expect("utf-8");
    let connector = connector(!full);
    let rt = runtime();
    let (done, errors, resumed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..conc {
            let (connector, request) = (connector.clone(), request.clone().into_bytes());
            let (done, errors, resumed, first_error) = (
                done.clone(),
                errors.clone(),
                resumed.clone(),
                first_error.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    match one(&connector, addr, &request).await {
                        Ok(r) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            if r {
                                resumed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut f) = first_error.lock() {
                                f.get_or_insert(e);
                            }
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "{{\"mode\":\"{}\",\"requests\":{n},\"errors\":{},\"seconds\":{elapsed:.2},\"rps\":{:.0},\"resumed\":{}}}",
        if full { "full" } else { "resumed" },
        errors.load(Ordering::Relaxed),
        n as f64 / elapsed,
        resumed.load(Ordering::Relaxed)
    );
    if let Ok(f) = first_error.lock()
        && let Some(e) = f.as_ref()
    {
        eprintln!("first error: {e}");
    }
}

/// The scoring request's JSON body (56 bytes), as the peer scripts send it.
const BODY: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}"#;

fn request(path: &str, key: Option<&str>, close: bool) -> Vec<u8> {
    let body = BODY;
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if close {
        r += "Connection: close\r\n";
    }
    if let Some(k) = key {
        r += &format!("Authorization: Bearer {k}\r\n");
    }
    r += "\r\n";
    r += body;
    r.into_bytes()
}

fn client_config(resume: bool) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

fn connector(resume: bool) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(client_config(resume))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Open `n` TLS connections (full handshakes), each after one `post` answered 200 when given;
/// say so, hold them for `secs`.
fn idle(addr: SocketAddr, secs: u64, n: usize, post: Option<Vec<u8>>) {
    let connector = connector(false);
    runtime().block_on(async {
        let mut held = Vec::with_capacity(n);
        let mut errors = 0;
        for _ in 0..n {
            let r = async {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
                let mut tls = connector.connect(name, tcp).await?;
                if let Some(req) = &post {
                    tls.write_all(req).await?;
                    if !read_response_async(&mut tls).await? {
                        return Err(std::io::Error::other("not a 200"));
                    }
                }
                Ok::<_, std::io::Error>(tls)
            }
            .await;
            match r {
                Ok(c) => held.push(c),
                Err(_) => errors += 1,
            }
        }
        println!(
            "{{\"mode\":\"idle\",\"open\":{},\"errors\":{errors}}}",
            held.len()
        );
        tokio::time::sleep(Duration::from_secs(secs)).await;
        drop(held);
    });
}

/// Read one HTTP/1.1 response with a Content-Length body; whether it was a 200.
async fn read_response_async<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> std::io::Result<bool> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Ok(head.starts_with("http/1.1 200"));
            }
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Read one HTTP/1.1 response with a Content-Length body; whether it was a 200.
fn read_response<S: std::io::Read>(s: &mut S, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(head.starts_with("http/1.1 200"));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Open-loop keep-alive load: `conns` connections share `rate` req/s; each request's latency is
/// measured from when it was due, so a stall counts for every request it delays. One OS thread
/// per connection with blocking I/O: `thread::sleep` wakes within the kernel's timer slack
/// (~50 µs), where tokio's timer has 1 ms granularity.
fn rate_mode(
    addr: SocketAddr,
    secs: u64,
    conns: usize,
    tls: bool,
    req: Vec<u8>,
    rate: u64,
    aligned: bool,
) {
    let load = Load::new(req, conns, rate, secs);
    let per_conn = load.per_conn;
    let t0 = Instant::now() + Duration::from_millis(200);
    let handles: Vec<_> = (0..conns)
        .map(|i| {
            // Spread evenly, or (`burst-*`) all on one clock: every connection's request
            // due at the same instant, the same bursts whatever the target.
            let phase = if aligned {
                0.0
            } else {
                i as f64 / conns as f64
            };
            load.conn(addr, tls, t0 + per_conn.mul_f64(phase))
        })
        .collect();
    print_rate(handles, if tls { "true" } else { "false" }, "");
}

/// `burst-mix`: the aligned bursts against several targets at once, their clocks offset by an
/// equal share of the period (target k of n bursts k/n of a period after the first), so every
/// target meets the same host, the same moment's noise, and no two bursts overlap. Targets are
/// `tls:IP:PORT` (HTTP/1.1 over TLS), `h2:IP:PORT` (HTTP/2 over TLS, one stream at a time per
/// connection) or `plain:IP:PORT`, comma-separated; one line per target.
fn burst_mix(targets: &str, secs: u64, conns: usize, path: &str, key: &str, rate: u64) {
    let targets: Vec<(&str, SocketAddr)> = targets
        .split(',')
        .map(|t| match t.split_once(':') {
            Some((kind @ ("tls" | "plain" | "h2"), a)) => (kind, a.parse().expect("KIND:IP:PORT")),
            _ => panic!("target {t:?}: tls:IP:PORT, plain:IP:PORT or h2:IP:PORT"),
        })
        .collect();
    let load = Load::new(request(path, Some(key), false), conns, rate, secs);
    let h2 = H2Load::new(path, key, conns, rate, secs);
    let per_conn = load.per_conn;
    let t0 = Instant::now() + Duration::from_millis(300);
    let n = targets.len() as f64;
    let all: Vec<_> = targets
        .iter()
        .enumerate()
        .map(|(k, &(kind, addr))| {
            let start = t0 + per_conn.mul_f64(k as f64 / n);
            (0..conns)
                .map(|_| match kind {
                    "h2" => h2.conn(addr, start),
                    _ => load.conn(addr, kind == "tls", start),
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for ((kind, addr), handles) in targets.iter().zip(all) {
        let tls = match *kind {
            "h2" => "\"h2\"",
            "tls" => "true",
            _ => "false",
        };
        let (per_conn, errors) = join(handles);
        let (first, turnaround) = bursts(&per_conn);
        let extra = format!(
            ",\"target\":\"{kind}:{addr}\"{}",
            burst_fields(&first, &turnaround)
        );
        let lat = print_line(per_conn.concat(), errors, tls, &extra);
        keep_latencies(kind, *addr, &lat, &turnaround);
    }
}

/// The rate modes' load: the request, sent every `per_conn` on each connection for `secs`.
struct Load {
    config: Arc<ClientConfig>,
    req: Vec<u8>,
    per_conn: Duration,
    secs: u64,
}

impl Load {
    /// `conns` connections sharing `rate` requests per second.
    fn new(req: Vec<u8>, conns: usize, rate: u64, secs: u64) -> Load {
        Load {
            config: client_config(true),
            req,
            per_conn: period(conns, rate),
            secs,
        }
    }

    /// One keep-alive connection: a request due every `per_conn` from `start`, each latency
    /// from its due time. Its latencies and an error count.
    fn conn(
        &self,
        addr: SocketAddr,
        tls: bool,
        start: Instant,
    ) -> std::thread::JoinHandle<(Vec<u32>, u64)> {
        let (config, req, per_conn, secs) = (
            self.config.clone(),
            self.req.clone(),
            self.per_conn,
            self.secs,
        );
        std::thread::spawn(move || -> (Vec<u32>, u64) {
            let Some(mut stream) = connect(addr, tls.then_some(config)) else {
                return (Vec::new(), 1);
            };
            let mut buf = Vec::with_capacity(1024);
            paced(start, secs, per_conn, || {
                stream.write_all(&req).is_ok()
                    && matches!(read_response(&mut stream, &mut buf), Ok(true))
            })
        })
    }
}

/// How often each of `conns` connections sends for `rate` requests per second in all.
fn period(conns: usize, rate: u64) -> Duration {
    Duration::from_secs_f64(conns as f64 / rate as f64)
}

/// A TCP connection to `addr` (no Nagle), over TLS when given a client configuration.
fn connect(addr: SocketAddr, tls: Option<Arc<ClientConfig>>) -> Option<Box<dyn ReadWrite>> {
    let tcp = std::net::TcpStream::connect(addr).ok()?;
    let _ = tcp.set_nodelay(true);
    let Some(config) = tls else {
        return Some(Box::new(tcp));
    };
    let name = ServerName::try_from("localhost").ok()?;
    let conn = rustls::ClientConnection::new(config, name).ok()?;
    Some(Box::new(rustls::StreamOwned::new(conn, tcp)))
}

/// The open loop of one connection: `one` request due every `per_conn` from `start` (the
/// thread's own sleep: tokio's timer ticks in whole milliseconds and would wake up to one late,
/// and that lateness would count as latency), each latency from its due time; the first half
/// second sent but not recorded (see [`recorded_window`]). Its latencies and an error count: the
/// first failed request ends it.
fn paced(
    start: Instant,
    secs: u64,
    per_conn: Duration,
    mut one: impl FnMut() -> bool,
) -> (Vec<u32>, u64) {
    let (recorded, end) = recorded_window(start, secs);
    let (mut due, mut lat) = (start, Vec::new());
    while due < end {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if !one() {
            return (lat, 1);
        }
        if due >= recorded {
            lat.push(due.elapsed().as_micros() as u32);
        }
        due += per_conn;
    }
    (lat, 0)
}

/// The rate modes' first half second on fresh connections is sent but not recorded: the first
/// bursts after the handshakes ran 3–20× the steady turnaround for every target (the client's
/// threads and the targets' new connections warming up), about 50 of a repetition's 10,000
/// requests — half of what decides its p99. When the recording starts and when the load ends.
fn recorded_window(start: Instant, secs: u64) -> (Instant, Instant) {
    const WARM_UP: Duration = Duration::from_millis(500);
    (start + WARM_UP, start + WARM_UP + Duration::from_secs(secs))
}

/// The rate modes' line from their connections' threads (latencies and an error count each):
/// request count, errors, p50/p99/p99.9 in µs. The latencies, sorted.
fn print_rate(
    handles: Vec<std::thread::JoinHandle<(Vec<u32>, u64)>>,
    tls: &str,
    extra: &str,
) -> Vec<u32> {
    let (per_conn, errors) = join(handles);
    print_line(per_conn.concat(), errors, tls, extra)
}

/// Every connection's latencies, in order, and the errors of all.
fn join(handles: Vec<std::thread::JoinHandle<(Vec<u32>, u64)>>) -> (Vec<Vec<u32>>, u64) {
    let (mut per_conn, mut errors) = (Vec::new(), 0);
    for h in handles {
        if let Ok((l, e)) = h.join() {
            per_conn.push(l);
            errors += e;
        }
    }
    (per_conn, errors)
}

fn quantile(sorted: &[u32], p: f64) -> u32 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

fn print_line(mut lat: Vec<u32>, errors: u64, tls: &str, extra: &str) -> Vec<u32> {
    lat.sort_unstable();
    println!(
        "{{\"mode\":\"rate\",\"tls\":{tls}{extra},\"requests\":{},\"errors\":{errors},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{}}}",
        lat.len(),
        quantile(&lat, 0.5),
        quantile(&lat, 0.99),
        quantile(&lat, 0.999)
    );
    lat
}

/// With every connection on one clock, request `i` of each connection is burst `i`: each burst's
/// first answer (its fastest request) and its turnaround (its slowest), in burst order.
fn bursts(per_conn: &[Vec<u32>]) -> (Vec<u32>, Vec<u32>) {
    let n = per_conn.iter().map(Vec::len).min().unwrap_or(0);
    (0..n)
        .map(|i| {
            let b = per_conn.iter().map(|c| c[i]);
            (b.clone().min().unwrap_or(0), b.max().unwrap_or(0))
        })
        .unzip()
}

/// The bursts' first answer p50 and turnaround p50 and p99, as JSON fields.
fn burst_fields(first: &[u32], turnaround: &[u32]) -> String {
    let (mut first, mut last) = (first.to_vec(), turnaround.to_vec());
    first.sort_unstable();
    last.sort_unstable();
    format!(
        ",\"burst_first_p50_us\":{},\"burst_last_p50_us\":{},\"burst_last_p99_us\":{}",
        quantile(&first, 0.5),
        quantile(&last, 0.5),
        quantile(&last, 0.99)
    )
}

/// `burst-mix` with `BURST_MIX_LATENCIES=DIR`: every latency (µs, one per line) appended to
/// `DIR/KIND_PORT`, so that repetitions can be pooled: a p99 over 10 repetitions rests on the
/// 1,000 slowest of 100,000 requests, where one repetition's rests on 100 of 10,000 and one slow
/// moment of the host, landing on one target's bursts, decides it. And each burst's turnaround
/// (its slowest request), in burst order, to `DIR/KIND_PORT.bursts`: burst `i` of every target
/// falls in the same 8 ms period, so a slow burst can be matched with the other targets'.
fn keep_latencies(kind: &str, addr: SocketAddr, lat: &[u32], turnaround: &[u32]) {
    let Some(dir) = std::env::var_os("BURST_MIX_LATENCIES") else {
        return;
    };
    let base = std::path::Path::new(&dir).join(format!("{kind}_{}", addr.port()));
    for (path, values) in [
        (base.clone(), lat),
        (base.with_extension("bursts"), turnaround),
    ] {
        let text: String = values.iter().map(|l| format!("{l}\n")).collect();
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
        if let Err(e) = written {
            eprintln!("{}: {e}", path.display());
            std::process::exit(1);
        }
    }
}

/// `rate_mode` over HTTP/2 (TLS, ALPN h2): each connection a thread, one scoring POST at a time
/// on it.
fn rate_h2(addr: SocketAddr, secs: u64, conns: usize, path: &str, key: &str, rate: u64) {
    let load = H2Load::new(path, key, conns, rate, secs);
    let t0 = Instant::now() + Duration::from_millis(300);
    let handles: Vec<_> = (0..conns)
        .map(|i| load.conn(addr, t0 + load.per_conn.mul_f64(i as f64 / conns as f64)))
        .collect();
    print_rate(handles, "\"h2\"", "");
}

/// `rate_h2`'s load: one scoring POST at a time per HTTP/2 connection (TLS, ALPN h2), each
/// connection a thread with blocking I/O and [`h2_client::H2Client`], as [`Load`] over HTTP/1.1.
struct H2Load {
    config: Arc<ClientConfig>,
    path: String,
    auth: String,
    per_conn: Duration,
    secs: u64,
}

impl H2Load {
    fn new(path: &str, key: &str, conns: usize, rate: u64, secs: u64) -> H2Load {
        let mut config = (*client_config(true)).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        H2Load {
            config: Arc::new(config),
            path: path.to_string(),
            auth: format!("Bearer {key}"),
            per_conn: period(conns, rate),
            secs,
        }
    }

    /// One connection: a request due every `per_conn` from `start`, each latency from its due
    /// time. Its latencies and an error count.
    fn conn(&self, addr: SocketAddr, start: Instant) -> std::thread::JoinHandle<(Vec<u32>, u64)> {
        let (config, path, auth) = (self.config.clone(), self.path.clone(), self.auth.clone());
        let (per_conn, secs) = (self.per_conn, self.secs);
        std::thread::spawn(move || -> (Vec<u32>, u64) {
            let Some(mut client) = connect(addr, Some(config))
                .and_then(|tls| h2_client::H2Client::new(tls, &path, &auth, BODY.as_bytes()).ok())
            else {
                return (Vec::new(), 1);
            };
            paced(start, secs, per_conn, || matches!(client.post(), Ok(true)))
        })
    }
}

trait ReadWrite: std::io::Read + std::io::Write + Send {}
impl<T: std::io::Read + std::io::Write + Send> ReadWrite for T {}
