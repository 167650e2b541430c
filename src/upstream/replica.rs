//! One scoring replica: its slot counter, latency estimate and pooled connections.
//! HTTP/1.1 keeps a stack of idle connections (one request each at a time, driven inline by
//! [`super::h1`]); h2c shares one multiplexed hyper connection. An idle connection the replica
//! closed is noticed before use and dropped; a request whose write fails on a reused connection
//! is sent once more on a fresh one when the whole request is still at hand.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::ewma::PeakEwma;
use super::h1;
use super::{Outgoing, Reply, ReplyHeaders, ResponseBody, UpstreamBody};
use crate::config::Protocol;
use crate::metrics::Retries;
use crate::request::forward;
use crate::request::{ClientBody, ClientHead};

/// Idle HTTP/1.1 connections kept per replica.
const MAX_IDLE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A replica failed: it could not be reached, closed the connection, or answered something
/// that is not HTTP. Counted against it by outlier ejection.
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
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("replica {addr} sent an invalid response: {source}")]
    Protocol {
        addr: SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The client's request body failed while it was being sent: the client's doing, never the
/// replica's (no outlier ejection).
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("request body exceeds the configured limit")]
    TooLarge,
    #[error("reading the client's request body: {source}")]
    Failed {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Why a send failed, by side: the replica could not be reached before any of the request was
/// used (the request comes back whole, to go to another replica), the replica failed after, or
/// the client's body did.
#[derive(Debug)]
pub enum Failure {
    Unsent {
        error: UpstreamError,
        request: Box<Outgoing>,
    },
    Replica(UpstreamError),
    ClientBody(ClientBodyError),
}

impl From<UpstreamError> for Failure {
    fn from(e: UpstreamError) -> Self {
        Failure::Replica(e)
    }
}

#[derive(Debug)]
pub struct Replica {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    /// This gateway's limit on it: the whole `replica_max_concurrent_requests`, or its share
    /// when several gateways serve it (`shares`).
    pub(super) limit: AtomicU32,
    pub(super) in_flight: AtomicU32,
    latency: PeakEwma,
    /// Outlier detection: failures in a row, times ejected, when the last ejection ended.
    pub(super) failures: AtomicU32,
    pub(super) ejections: AtomicU32,
    pub(super) last_ejected: Mutex<Option<tokio::time::Instant>>,
    idle: Mutex<Vec<h1::Conn>>,
    shared_h2: Mutex<Option<http2::SendRequest<UpstreamBody>>>,
}

impl Replica {
    pub fn new(addr: SocketAddr, protocol: Protocol, limit: u32) -> Self {
        Replica {
            addr,
            protocol,
            limit: AtomicU32::new(limit),
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

    /// This gateway's limit on the replica now.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    pub(super) fn try_claim(&self) -> bool {
        let limit = self.limit();
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Back to the pool after a complete exchange.
    pub(super) fn put_idle(&self, conn: h1::Conn) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(conn.pooled());
        }
    }

    async fn connect(&self) -> Result<TcpStream, UpstreamError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout { addr: self.addr })?
            .map_err(|source| UpstreamError::Connect {
                addr: self.addr,
                source,
            })?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Map a hyper (h2c) error: a body over the limit, a client body failure, a connection
    /// closed, or a bad response.
    fn classify(&self, e: hyper::Error) -> Failure {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = src {
            if s.is::<http_body_util::LengthLimitError>() {
                return Failure::ClientBody(ClientBodyError::TooLarge);
            }
            src = s.source();
        }
        // The client's body failed: hyper reports a user error carrying the body's own error.
        if e.is_user() && std::error::Error::source(&e).is_some() {
            return Failure::ClientBody(ClientBodyError::Failed {
                source: Box::new(e),
            });
        }
        Failure::Replica(self.replica_error(e))
    }

    fn replica_error(&self, e: hyper::Error) -> UpstreamError {
        if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
            UpstreamError::Closed {
                addr: self.addr,
                source: Box::new(e),
            }
        } else {
            UpstreamError::Protocol {
                addr: self.addr,
                source: Box::new(e),
            }
        }
    }

    fn classify_h1(&self, e: h1::SendError) -> Failure {
        match e {
            h1::SendError::Io(e) | h1::SendError::Unsent(e) | h1::SendError::Unanswered(e) => {
                Failure::Replica(UpstreamError::Closed {
                    addr: self.addr,
                    source: Box::new(e),
                })
            }
            h1::SendError::Proto(e) => Failure::Replica(UpstreamError::Protocol {
                addr: self.addr,
                source: Box::new(e),
            }),
            h1::SendError::Body(e) if e.is::<http_body_util::LengthLimitError>() => {
                Failure::ClientBody(ClientBodyError::TooLarge)
            }
            h1::SendError::Body(source) => Failure::ClientBody(ClientBodyError::Failed { source }),
        }
    }

    /// Send one request, encoded for this replica's protocol. A request sent again on a new
    /// connection is counted in `retries`.
    pub async fn send(
        self: &Arc<Self>,
        out: Outgoing,
        retries: &Retries,
    ) -> Result<Reply, Failure> {
        match self.protocol {
            Protocol::H2c => {
                let (parts, body) = self.send_h2(out).await?.into_parts();
                Ok(Reply {
                    status: parts.status,
                    headers: ReplyHeaders::Map(parts.headers),
                    body: ResponseBody::H2(body),
                })
            }
            Protocol::Http1 => self.send_http1(out, retries).await,
        }
    }

    /// An idle connection the replica has not closed meanwhile.
    pub(super) fn take_idle(&self) -> Option<h1::Conn> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(c) = idle.pop() {
            if c.usable() {
                return Some(c);
            }
        }
        None
    }

    /// HTTP/1.1: on a pooled connection if one is usable. A pooled connection that fails is
    /// replaced by a new one for the same request only when that cannot deliver it twice: no
    /// byte of it had left ([`h1::SendError::Unsent`]), or it is replayable and no answer had
    /// begun ([`h1::SendError::Unanswered`]). Never more than once, never on a new connection.
    async fn send_http1(
        self: &Arc<Self>,
        out: Outgoing,
        retries: &Retries,
    ) -> Result<Reply, Failure> {
        // A connection first: if none can be made, nothing of the request was used.
        let mut pooled = match self.take_idle() {
            Some(conn) => Some(conn),
            None => match Box::pin(self.connect()).await {
                Ok(io) => Some(h1::Conn::new(io)),
                Err(error) => {
                    return Err(Failure::Unsent {
                        error,
                        request: Box::new(out),
                    });
                }
            },
        };
        let mut reused = pooled.as_ref().is_some_and(h1::Conn::reused);
        let replayable = out.replayable;
        let (mut encoded, method) = match (&out.head, &out.body) {
            (ClientHead::Raw(raw), ClientBody::Whole(data)) => (
                h1::Encoded::whole(forward::encode_http1(
                    raw,
                    data.as_ref(),
                    &out.forward,
                    self.addr,
                )),
                raw.method.clone(),
            ),
            _ => {
                let req = forward::into_request(
                    out.head,
                    out.body,
                    &out.forward,
                    Protocol::Http1,
                    self.addr,
                );
                h1::encode(req).await.map_err(|e| self.classify_h1(e))?
            }
        };
        // One call site for the exchange: each one would add its future to every request's.
        loop {
            let conn = match pooled.take() {
                Some(conn) => conn,
                None => {
                    reused = false;
                    h1::Conn::new(Box::pin(self.connect()).await?)
                }
            };
            match h1::exchange(conn, &mut encoded, &method, self).await {
                // The replica had closed the pooled connection: nothing of the request left.
                Err(h1::SendError::Unsent(e)) if reused && encoded.intact() => {
                    retries.unsent.inc();
                    tracing::debug!(replica = %self.addr, error = %e, "pooled connection was closed; sending on a new one");
                }
                Err(h1::SendError::Unanswered(e)) if reused && replayable && encoded.intact() => {
                    retries.replayable.inc();
                    tracing::debug!(replica = %self.addr, error = %e, "pooled connection closed before an answer; sending the replayable request again");
                }
                other => return other.map_err(|e| self.classify_h1(e)),
            }
        }
    }

    async fn send_h2(&self, out: Outgoing) -> Result<http::Response<Incoming>, Failure> {
        let existing = self
            .shared_h2
            .lock()
            .ok()
            .and_then(|g| g.as_ref().filter(|s| !s.is_closed()).cloned());
        let mut sender = match existing {
            Some(s) => s,
            // Boxed: connecting is rare, and its future would otherwise size every request's.
            None => match Box::pin(self.new_h2_connection()).await {
                Ok(s) => s,
                // No connection: the request was not used.
                Err(
                    error @ (UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. }),
                ) => {
                    return Err(Failure::Unsent {
                        error,
                        request: Box::new(out),
                    });
                }
                Err(e) => return Err(Failure::Replica(e)),
            },
        };
        let req = forward::into_request(out.head, out.body, &out.forward, Protocol::H2c, self.addr);
        sender.send_request(req).await.map_err(|e| self.classify(e))
    }

    async fn new_h2_connection(&self) -> Result<http2::SendRequest<UpstreamBody>, UpstreamError> {
        let io = TokioIo::new(self.connect().await?);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            // The handshake sends no request: any failure is the replica's.
            .map_err(|e| self.replica_error(e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        if let Ok(mut g) = self.shared_h2.lock() {
            *g = Some(sender.clone());
        }
        Ok(sender)
    }
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
