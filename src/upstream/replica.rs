//! One scoring replica: its slot counter, latency estimate and pooled connections.
//! HTTP/1.1 keeps a stack of idle connections (one request each at a time); h2c shares one
//! multiplexed connection. A request on a reused connection that the replica closed while idle
//! is retried once on a fresh connection, because hyper hands back requests it never sent.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::ewma::PeakEwma;
use crate::config::Protocol;

/// What the gateway sends upstream: the client's body, capped at the body limit.
pub type UpstreamBody = http_body_util::Limited<Incoming>;

/// Idle HTTP/1.1 connections kept per replica.
const MAX_IDLE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to replica {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to replica {addr} timed out")]
    ConnectTimeout { addr: SocketAddr },
    #[error("replica {addr} closed the connection before replying")]
    Closed {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("request body exceeds the configured limit")]
    BodyTooLarge,
    #[error("replica {addr} sent an invalid response: {source}")]
    Protocol {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

#[derive(Debug)]
pub struct Replica {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    limit: u32,
    pub(super) in_flight: AtomicU32,
    latency: PeakEwma,
    /// Outlier detection: failures in a row, times ejected, when the last ejection ended.
    pub(super) failures: AtomicU32,
    pub(super) ejections: AtomicU32,
    pub(super) last_ejected: Mutex<Option<tokio::time::Instant>>,
    idle: Mutex<Vec<http1::SendRequest<UpstreamBody>>>,
    shared_h2: Mutex<Option<http2::SendRequest<UpstreamBody>>>,
}

/// A pooled HTTP/1.1 connection out for one exchange; [`Checkout::release`] returns it once the
/// response body has been read to its end. Dropped otherwise (the connection closes).
#[derive(Debug)]
pub struct Checkout(Option<http1::SendRequest<UpstreamBody>>);

impl Checkout {
    pub fn release(mut self, replica: &Replica) {
        if let Some(s) = self.0.take()
            && !s.is_closed()
            && let Ok(mut idle) = replica.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(s);
        }
    }
}

impl Replica {
    pub fn new(addr: SocketAddr, protocol: Protocol, limit: u32) -> Self {
        Replica {
            addr,
            protocol,
            limit,
            in_flight: AtomicU32::new(0),
            latency: PeakEwma::default(),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            last_ejected: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            shared_h2: Mutex::new(None),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    pub(super) fn cost(&self) -> f64 {
        self.latency.cost(self.in_flight())
    }

    pub fn observe_latency(&self, rtt: Duration) {
        self.latency.observe(rtt);
    }

    pub(super) fn try_claim(&self) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    async fn connect(&self) -> Result<TokioIo<TcpStream>, UpstreamError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout { addr: self.addr })?
            .map_err(|source| UpstreamError::Connect {
                addr: self.addr,
                source,
            })?;
        let _ = stream.set_nodelay(true);
        Ok(TokioIo::new(stream))
    }

    fn classify(&self, e: hyper::Error) -> UpstreamError {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = src {
            if s.is::<http_body_util::LengthLimitError>() {
                return UpstreamError::BodyTooLarge;
            }
            src = s.source();
        }
        if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
            UpstreamError::Closed {
                addr: self.addr,
                source: e,
            }
        } else {
            UpstreamError::Protocol {
                addr: self.addr,
                source: e,
            }
        }
    }

    /// Send one request. The URI must be origin-form for HTTP/1.1 and absolute for h2c.
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<(http::Response<Incoming>, Checkout), UpstreamError> {
        match self.protocol {
            Protocol::Http1 => self.send_http1(req).await,
            Protocol::H2c => self.send_h2(req).await.map(|r| (r, Checkout(None))),
        }
    }

    fn take_idle(&self) -> Option<http1::SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    async fn send_http1(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<(http::Response<Incoming>, Checkout), UpstreamError> {
        loop {
            let (mut sender, reused) = match self.take_idle() {
                Some(s) => (s, true),
                None => {
                    let io = self.connect().await?;
                    let (sender, conn) = http1::Builder::new()
                        .handshake(io)
                        .await
                        .map_err(|e| self.classify(e))?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    (sender, false)
                }
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(UpstreamError::Connect {
                    addr: self.addr,
                    source: std::io::ErrorKind::ConnectionAborted.into(),
                });
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Checkout(Some(sender)))),
                Err(mut e) => match e.take_message() {
                    // Never sent: the idle connection had been closed by the replica.
                    Some(back) if reused => req = back,
                    _ => return Err(self.classify(e.into_error())),
                },
            }
        }
    }

    async fn send_h2(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let existing = self
            .shared_h2
            .lock()
            .ok()
            .and_then(|g| g.as_ref().filter(|s| !s.is_closed()).cloned());
        let mut sender = match existing {
            Some(s) => s,
            None => {
                let io = self.connect().await?;
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake(io)
                    .await
                    .map_err(|e| self.classify(e))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                if let Ok(mut g) = self.shared_h2.lock() {
                    *g = Some(sender.clone());
                }
                sender
            }
        };
        sender.send_request(req).await.map_err(|e| self.classify(e))
    }
}
