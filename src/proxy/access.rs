//! The access log (`[access_log] enabled = true`; off by default): one event per request under
//! the target `scoregate::access`, written by the process's log subscriber (text, or one JSON
//! object with `--log-format json`) and filtered like any target (`RUST_LOG`). Emitted when the
//! answer is done: the replica's body sent in full (or broken off), or the gateway's own error.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::HeaderValue;

/// What the log line needs besides the answer's status; carried with a replica's streamed
/// answer (boxed, and only when the access log is on).
#[derive(Debug)]
pub(crate) struct Record {
    pub request_id: HeaderValue,
    pub client: SocketAddr,
    pub start: Instant,
    /// Until the replica's response head (model time); `None` when no replica answered.
    pub upstream: Option<Duration>,
    /// Response body bytes sent to the client.
    pub bytes: u64,
}

impl Record {
    pub(crate) fn log(&self, service: &str, version: &str, status: u16) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        tracing::info!(
            target: "scoregate::access",
            request_id = self.request_id.to_str().unwrap_or_default(),
            client = %self.client.ip(),
            service,
            version,
            status,
            bytes = self.bytes,
            upstream_ms = self.upstream.map(ms),
            total_ms = ms(self.start.elapsed()),
            "access"
        );
    }
}
