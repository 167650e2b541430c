//! When a request goes to a replica a second time. The replica runs on a thread and runtime of its
//! own, and the test blocks its own thread while the replica closes a pooled connection: the
//! gateway's event loop has not seen the close when the next request takes the connection, as
//! in the race these rules are for (a replica closing an idle connection just as it is reused).

use std::sync::mpsc;
use std::time::Duration;

use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::metrics::Retries;

/// What the replica does with the connection after answering its first request.
#[derive(Clone, Copy, Debug)]
enum Then {
    /// Close it while idle with a reset (SO_LINGER 0).
    ResetIdle,
    /// Close it while idle, gracefully (FIN).
    CloseIdle,
    /// Read the next request whole, then reset it (a model process killed while scoring).
    ResetAfterReading,
}

struct Script {
    addr: SocketAddr,
    /// Tell the replica to close the idle connection; it answers when it has.
    go: mpsc::Sender<()>,
    done: mpsc::Receiver<()>,
    /// The request id of every request the replica read in full, in order.
    seen: mpsc::Receiver<String>,
}

impl Script {
    /// Close the pooled connection now, and give the close time to reach the gateway's socket
    /// without letting the gateway's runtime run (this thread blocks).
    fn close_idle(&self) {
        self.go.send(()).expect("replica alive");
        self.done.recv().expect("replica closed it");
        std::thread::sleep(Duration::from_millis(50));
    }

    fn deliveries(&self) -> Vec<String> {
        self.seen.try_iter().collect()
    }
}

/// Read one request (head and a `content-length` body); its request id, or `None` at EOF.
async fn read_request(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let field = |name: &str| {
                head.lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            };
            let len: usize = field("content-length:").map_or(0, |v| v.parse().unwrap_or(0));
            if buf.len() >= end + 4 + len {
                buf.drain(..end + 4 + len);
                return Some(field("x-ms-request-id:").unwrap_or_default());
            }
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

fn replica(then: Then) -> Script {
    let (go_tx, go_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let (seen_tx, seen_rx) = mpsc::channel();
    let (addr_tx, addr_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            addr_tx.send(listener.local_addr().expect("addr")).ok();
            // The first connection: one answer, then the scripted end.
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = Vec::new();
            let id = read_request(&mut s, &mut buf).await.expect("first request");
            seen_tx.send(id).ok();
            s.write_all(OK).await.expect("answer");
            match then {
                Then::ResetIdle | Then::CloseIdle => {
                    // Blocks this runtime, the replica's own: nothing else runs on it.
                    let _ = go_rx.recv();
                    if matches!(then, Then::ResetIdle) {
                        s.set_zero_linger().expect("linger");
                    }
                    drop(s);
                    done_tx.send(()).ok();
                }
                Then::ResetAfterReading => {
                    if let Some(id) = read_request(&mut s, &mut buf).await {
                        seen_tx.send(id).ok();
                    }
                    s.set_zero_linger().expect("linger");
                    drop(s);
                }
            }
            // Every later connection answers everything.
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen_tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(id) = read_request(&mut s, &mut buf).await {
                        seen.send(id).ok();
                        if s.write_all(OK).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    });
    let addr = addr_rx.recv().expect("replica listening");
    Script {
        addr,
        go: go_tx,
        done: done_rx,
        seen: seen_rx,
    }
}

fn request(method: Method, id: &str, key: bool) -> Outgoing {
    let key = if key { "idempotency-key: k-1\r\n" } else { "" };
    let body = if method == Method::POST { "{}" } else { "" };
    let raw = format!(
        "{method} /score HTTP/1.1\r\nhost: r\r\n{key}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let replayable = super::super::replayable(&method, |h| {
        !key.is_empty() && *h == super::super::IDEMPOTENCY_KEY
    });
    Outgoing::from_wire(raw.as_bytes(), id, replayable)
}

/// The tests run on a current-thread runtime: while the test thread blocks, nothing polls its
/// event loop, so a pooled connection's close goes unseen until it is used.
async fn send(r: &Arc<Replica>, out: Outgoing, retries: &Retries) -> Result<Reply, UpstreamError> {
    r.send(out, retries).await.map_err(|f| match f {
        Failure::Unsent { error, .. } | Failure::Replica(error) => error,
        Failure::ClientBody(e) => panic!("the test's body cannot fail: {e}"),
    })
}

fn replica_client(s: &Script) -> Arc<Replica> {
    Arc::new(Replica::new(s.addr, Protocol::Http1, 10))
}

#[tokio::test]
async fn a_pooled_connection_reset_while_idle_is_replaced_for_a_post() {
    let s = replica(Then::ResetIdle);
    let r = replica_client(&s);
    let retries = Retries::detached();
    let first = send(&r, request(Method::POST, "a", false), &retries).await;
    assert_eq!(first.expect("first answered").status, 200);
    s.close_idle();
    let second = send(&r, request(Method::POST, "b", false), &retries).await;
    assert_eq!(
        second.expect("sent again on a new connection").status,
        200,
        "no byte of the POST had left: the reset connection refused the first write"
    );
    assert_eq!(
        s.deliveries(),
        ["a", "b"],
        "each request reached the replica once"
    );
    assert_eq!((retries.unsent.get(), retries.replayable.get()), (1, 0));
}

#[tokio::test]
async fn a_pooled_connection_closed_while_idle_is_replaced_only_for_replayable_requests() {
    for (method, key, again) in [
        (Method::GET, false, true),
        (Method::POST, true, true),
        (Method::POST, false, false),
    ] {
        let s = replica(Then::CloseIdle);
        let r = replica_client(&s);
        let retries = Retries::detached();
        let first = send(&r, request(Method::POST, "a", false), &retries).await;
        assert_eq!(first.expect("first answered").status, 200);
        s.close_idle();
        // The write is taken (the replica only half-closed), then the connection ends unanswered:
        // from here that looks like a replica that read the request and died.
        let second = send(&r, request(method.clone(), "b", key), &retries).await;
        let case = format!("{method} with an idempotency key: {key}");
        if again {
            assert_eq!(second.expect(&case).status, 200, "{case}");
            assert_eq!(s.deliveries(), ["a", "b"], "{case}");
            assert_eq!((retries.unsent.get(), retries.replayable.get()), (0, 1));
        } else {
            let e = second.expect_err(&case);
            assert!(matches!(e, UpstreamError::Closed { .. }), "{case}: {e}");
            assert_eq!(s.deliveries(), ["a"], "{case}");
            assert_eq!((retries.unsent.get(), retries.replayable.get()), (0, 0));
        }
    }
}

#[tokio::test]
async fn a_post_the_replica_read_before_resetting_is_not_sent_again() {
    for key in [false, true] {
        let s = replica(Then::ResetAfterReading);
        let r = replica_client(&s);
        let retries = Retries::detached();
        let first = send(&r, request(Method::POST, "a", false), &retries).await;
        assert_eq!(first.expect("first answered").status, 200);
        let second = send(&r, request(Method::POST, "b", key), &retries).await;
        // Wait for the replica's thread to report what it read (it may trail the gateway).
        let mut seen = Vec::new();
        while let Ok(id) = s.seen.recv_timeout(Duration::from_millis(300)) {
            seen.push(id);
        }
        if key {
            assert_eq!(second.expect("replayable").status, 200);
            assert_eq!(
                seen,
                ["a", "b", "b"],
                "the client's key allowed a second delivery"
            );
            assert_eq!(retries.replayable.get(), 1);
        } else {
            let e = second.expect_err("not sent again");
            assert!(matches!(e, UpstreamError::Closed { .. }), "{e}");
            assert_eq!(
                seen,
                ["a", "b"],
                "the POST reached the replica exactly once"
            );
            assert_eq!((retries.unsent.get(), retries.replayable.get()), (0, 0));
        }
    }
}

/// A replica that cannot be reached gives the request back untouched, to go elsewhere.
#[tokio::test]
async fn an_unreachable_replica_gives_the_request_back() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let r = Arc::new(Replica::new(addr, Protocol::Http1, 10));
    match r
        .send(request(Method::POST, "x", false), &Retries::detached())
        .await
    {
        Err(Failure::Unsent { error, request }) => {
            assert!(matches!(error, UpstreamError::Connect { .. }), "{error}");
            assert!(
                matches!(
                    (&request.head, &request.body),
                    (ClientHead::Raw(h), ClientBody::Whole(Some(b))) if h.method == Method::POST && &b[..] == b"{}"
                ),
                "the whole request comes back"
            );
        }
        other => panic!("expected the request back: {other:?}"),
    }
}
