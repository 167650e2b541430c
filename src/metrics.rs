//! Prometheus metrics: one [`Registry`] built at start and passed down. Label values are bounded:
//! configured service and version names, status codes, TLS versions, fixed reasons — never raw
//! paths or SNI. Per-version handles are resolved once when the route table is built.

use std::sync::OnceLock;

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::tls::LoadedCert;

/// Latency buckets from 0.5 ms to 5 min (scoring may take minutes).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];

/// Status codes whose duration handles are resolved ahead of time.
const COMMON_CODES: &[u16] = &[200, 400, 401, 404, 413, 500, 502, 503, 504];

#[derive(Debug, thiserror::Error)]
#[error("metrics registry: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    first_byte: HistogramVec,
    queue_wait: HistogramVec,
    in_flight: IntGaugeVec,
    queued: IntGaugeVec,
    ejections: IntCounterVec,
    rejected: IntCounterVec,
    retries: IntCounterVec,
    h2_abuse: IntCounterVec,
    tls_handshakes: IntCounterVec,
    /// Requests for a service, by the protocol they came in.
    pub protocols: ProtocolMetrics,
    pub connections_open: IntGauge,
    /// HTTP/1.1 connections the fast path handed to hyper.
    pub http1_general: IntCounter,
    pub certs: CertMetrics,
    pub acme: AcmeMetrics,
    pub discovery: DiscoveryMetrics,
    pub autoscale: AutoscaleMetrics,
}

/// The autoscaler's view, always exported.
#[derive(Debug, Clone)]
pub struct AutoscaleMetrics {
    utilization: GaugeVec,
    desired: IntGaugeVec,
    scaled: IntCounterVec,
    blocked: IntCounterVec,
}

impl AutoscaleMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let sv = &["service", "version"];
        let m = AutoscaleMetrics {
            utilization: GaugeVec::new(
                Opts::new(
                    "scoregate_autoscale_utilization_ratio",
                    "(busy + queued) / (replicas × max concurrent).",
                ),
                sv,
            )?,
            desired: IntGaugeVec::new(
                Opts::new(
                    "scoregate_autoscale_desired_replicas",
                    "Replicas the autoscaler recommends (after scale-down stabilization).",
                ),
                sv,
            )?,
            scaled: IntCounterVec::new(
                Opts::new(
                    "scoregate_autoscale_scale_total",
                    "Scale subresource patches applied.",
                ),
                sv,
            )?,
            blocked: IntCounterVec::new(
                Opts::new(
                    "scoregate_autoscale_blocked_total",
                    "Scaling decisions not applied, by reason (hpa, api_error).",
                ),
                &["service", "version", "reason"],
            )?,
        };
        registry.register(Box::new(m.utilization.clone()))?;
        registry.register(Box::new(m.desired.clone()))?;
        registry.register(Box::new(m.scaled.clone()))?;
        registry.register(Box::new(m.blocked.clone()))?;
        Ok(m)
    }

    pub fn observe(&self, service: &str, version: &str, utilization: f64, desired: u32) {
        self.utilization
            .with_label_values(&[service, version])
            .set(utilization);
        self.desired
            .with_label_values(&[service, version])
            .set(i64::from(desired));
    }

    pub fn scaled(&self, service: &str, version: &str) {
        self.scaled.with_label_values(&[service, version]).inc();
    }

    pub fn blocked(&self, service: &str, version: &str, reason: &str) {
        self.blocked
            .with_label_values(&[service, version, reason])
            .inc();
    }
}

/// Kubernetes discovery health: staleness is `time() - scoregate_discovery_last_event_timestamp_seconds`
/// while `scoregate_discovery_up` is 0.
#[derive(Debug, Clone)]
pub struct DiscoveryMetrics {
    pub up: IntGauge,
    pub last_event: prometheus::Gauge,
    pub watch_errors: IntCounter,
    pub rebuilds: IntCounter,
    pub config_reloads: IntCounterVec,
}

impl DiscoveryMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = DiscoveryMetrics {
            up: IntGauge::new(
                "scoregate_discovery_up",
                "1 while the EndpointSlice watch is healthy, 0 while it retries.",
            )?,
            last_event: prometheus::Gauge::new(
                "scoregate_discovery_last_event_timestamp_seconds",
                "Unix time of the last EndpointSlice event received.",
            )?,
            watch_errors: IntCounter::new(
                "scoregate_discovery_watch_errors_total",
                "EndpointSlice watch errors (retried).",
            )?,
            rebuilds: IntCounter::new(
                "scoregate_discovery_rebuilds_total",
                "Route tables rebuilt from discovery.",
            )?,
            config_reloads: IntCounterVec::new(
                Opts::new(
                    "scoregate_config_reloads_total",
                    "Service configuration updates, by source and result (ok, rejected).",
                ),
                &["source", "result"],
            )?,
        };
        registry.register(Box::new(m.up.clone()))?;
        registry.register(Box::new(m.last_event.clone()))?;
        registry.register(Box::new(m.watch_errors.clone()))?;
        registry.register(Box::new(m.rebuilds.clone()))?;
        registry.register(Box::new(m.config_reloads.clone()))?;
        Ok(m)
    }
}

/// ACME order outcomes.
#[derive(Debug, Clone)]
pub struct AcmeMetrics {
    orders: IntCounterVec,
}

impl AcmeMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let orders = IntCounterVec::new(
            Opts::new(
                "scoregate_acme_orders_total",
                "ACME orders placed, by result (ok, error).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(orders.clone()))?;
        for result in ["ok", "error"] {
            orders.with_label_values(&[result]);
        }
        Ok(AcmeMetrics { orders })
    }

    pub fn order(&self, result: &str) {
        self.orders.with_label_values(&[result]).inc();
    }
}

/// Certificate metrics, labelled by the configured certificate name (never raw SNI).
#[derive(Debug, Clone)]
pub struct CertMetrics {
    reloads: IntCounterVec,
    expiry: GaugeVec,
    not_after: GaugeVec,
    info: IntGaugeVec,
}

impl CertMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = CertMetrics {
            reloads: IntCounterVec::new(
                Opts::new(
                    "scoregate_certificate_reloads_total",
                    "Certificate candidates offered, by source and result (ok, rejected).",
                ),
                &["source", "result"],
            )?,
            expiry: GaugeVec::new(
                Opts::new(
                    "scoregate_certificate_expiry_seconds",
                    "Seconds until the served certificate expires.",
                ),
                &["name"],
            )?,
            not_after: GaugeVec::new(
                Opts::new(
                    "scoregate_certificate_not_after_timestamp_seconds",
                    "Expiry of the served certificate as a Unix timestamp.",
                ),
                &["name"],
            )?,
            info: IntGaugeVec::new(
                Opts::new(
                    "scoregate_certificate_info",
                    "The certificate being served (value 1), with its SHA-256 fingerprint.",
                ),
                &["name", "fingerprint_sha256"],
            )?,
        };
        registry.register(Box::new(m.reloads.clone()))?;
        registry.register(Box::new(m.expiry.clone()))?;
        registry.register(Box::new(m.not_after.clone()))?;
        registry.register(Box::new(m.info.clone()))?;
        Ok(m)
    }

    pub fn reload(&self, source: &str, result: &str) {
        self.reloads.with_label_values(&[source, result]).inc();
    }

    /// `cert` is now served under `name`, replacing `old`.
    pub fn served(&self, name: &str, old: Option<&LoadedCert>, cert: &LoadedCert) {
        if let Some(old) = old {
            let _ = self
                .info
                .remove_label_values(&[name, old.fingerprint_sha256.as_str()]);
        }
        self.info
            .with_label_values(&[name, cert.fingerprint_sha256.as_str()])
            .set(1);
        self.not_after
            .with_label_values(&[name])
            .set(cert.not_after_unix as f64);
    }

    pub fn expiry(&self, name: &str, seconds: i64) {
        self.expiry.with_label_values(&[name]).set(seconds as f64);
    }
}

/// Handles for one service version, resolved once.
#[derive(Debug, Clone)]
pub struct VersionMetrics {
    service: String,
    version: String,
    family: HistogramVec,
    /// Lazily resolved so that only codes that happened are exported.
    by_code: Vec<(u16, OnceLock<Histogram>)>,
    pub upstream: Histogram,
    /// Time to the first byte of a streamed body.
    pub first_byte: Histogram,
    pub queue_wait: Histogram,
    pub in_flight: IntGauge,
    pub queued: IntGauge,
    pub ejections: IntCounter,
    pub retries: Retries,
}

/// Requests sent to a replica a second time, on a new connection, because a pooled one failed.
#[derive(Debug, Clone)]
pub struct Retries {
    /// No byte of the request had left: the replica had closed the pooled connection.
    pub unsent: IntCounter,
    /// An idempotent request, or one with an idempotency key, that may have reached the replica.
    pub replayable: IntCounter,
    /// Sent to another replica: its own could not be reached (connection refused or timed out).
    pub rerouted: IntCounter,
}

impl Retries {
    /// Counters registered nowhere (unit tests of the upstream client).
    pub fn detached() -> Self {
        let c = || IntCounter::new("detached", "not exported").expect("valid metric name");
        Retries {
            unsent: c(),
            replayable: c(),
            rerouted: c(),
        }
    }
}

impl VersionMetrics {
    pub fn observe(&self, code: u16, seconds: f64) {
        let resolve = || {
            self.family.with_label_values(&[
                self.service.as_str(),
                self.version.as_str(),
                &code.to_string(),
            ])
        };
        match self.by_code.iter().find(|(c, _)| *c == code) {
            Some((_, h)) => h.get_or_init(resolve).observe(seconds),
            None => resolve().observe(seconds),
        }
    }
}

/// `scoregate_requests_by_protocol_total{protocol}`, each series resolved once and exported
/// from the start.
#[derive(Debug, Clone)]
pub struct ProtocolMetrics {
    /// Azure ML's `/api/v1/service/<name>/...`.
    pub azureml: IntCounter,
    /// The Open Inference Protocol's REST API, `/v2/models/<name>/...`.
    pub v2: IntCounter,
    /// OpenAI-compatible `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`.
    pub openai: IntCounter,
    /// gRPC calls.
    pub grpc: IntCounter,
    /// `scoregate_grpc_responses_total{service,code}`.
    grpc_status: IntCounterVec,
}

impl ProtocolMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let family = IntCounterVec::new(
            Opts::new(
                "scoregate_requests_by_protocol_total",
                "Requests for a service by the protocol they came in: azureml (/api/v1/service/<name>/...), v2 (Open Inference Protocol REST, /v2/models/<name>/...), openai (/v1/chat/completions, /v1/completions, /v1/embeddings, routed by the body's model), grpc (content-type application/grpc).",
            ),
            &["protocol"],
        )?;
        registry.register(Box::new(family.clone()))?;
        let grpc_status = IntCounterVec::new(
            Opts::new(
                "scoregate_grpc_responses_total",
                "gRPC calls by the grpc-status they ended with (the replica's trailers, or the gateway's own trailers-only refusal), by service (\"\" when none was found).",
            ),
            &["service", "code"],
        )?;
        registry.register(Box::new(grpc_status.clone()))?;
        Ok(ProtocolMetrics {
            azureml: family.with_label_values(&["azureml"]),
            v2: family.with_label_values(&["v2"]),
            openai: family.with_label_values(&["openai"]),
            grpc: family.with_label_values(&["grpc"]),
            grpc_status,
        })
    }

    /// Count a gRPC call that ended with `code`.
    pub fn grpc_status(&self, service: &str, code: u32) {
        // The 17 codes of the gRPC spec as labels, without formatting one per call.
        const CODES: [&str; 17] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
            "16",
        ];
        let owned;
        let label = match CODES.get(code as usize) {
            Some(c) => *c,
            None => {
                owned = code.to_string();
                &owned
            }
        };
        self.grpc_status.with_label_values(&[service, label]).inc();
    }

    /// The counter of a protocol label (`routing::Endpoint::protocol`).
    pub fn of(&self, protocol: &str) -> &IntCounter {
        match protocol {
            "v2" => &self.v2,
            "openai" => &self.openai,
            "grpc" => &self.grpc,
            _ => &self.azureml,
        }
    }
}

/// TLS handshake counters, resolved once.
#[derive(Debug, Clone)]
pub struct HandshakeMetrics {
    pub tls13: IntCounter,
    pub tls12: IntCounter,
    pub failed: IntCounter,
    pub timed_out: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let hist = |name: &str, help: &str, labels: &[&str]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
        };
        let m = Metrics {
            request_duration: hist(
                "scoregate_request_duration_seconds",
                "Time from request received to response body sent, by service, version and status code.",
                &["service", "version", "code"],
            )?,
            upstream_duration: hist(
                "scoregate_upstream_duration_seconds",
                "Time the scoring replica took to return response headers (model time).",
                &["service", "version"],
            )?,
            first_byte: hist(
                "scoregate_stream_first_byte_seconds",
                "Time from sending a request to a replica to the first byte of its streamed response body (server-sent events, chunked or large answers; small ones are read whole and not counted).",
                &["service", "version"],
            )?,
            queue_wait: hist(
                "scoregate_queue_wait_seconds",
                "Time a request waited for a free replica slot.",
                &["service", "version"],
            )?,
            in_flight: IntGaugeVec::new(
                Opts::new(
                    "scoregate_requests_in_flight",
                    "Requests being served by a replica.",
                ),
                &["service", "version"],
            )?,
            queued: IntGaugeVec::new(
                Opts::new(
                    "scoregate_requests_queued",
                    "Requests waiting for a free replica slot.",
                ),
                &["service", "version"],
            )?,
            ejections: IntCounterVec::new(
                Opts::new(
                    "scoregate_replica_ejections_total",
                    "Replicas taken out of service by outlier detection (consecutive transport failures).",
                ),
                &["service", "version"],
            )?,
            rejected: IntCounterVec::new(
                Opts::new(
                    "scoregate_requests_rejected_total",
                    "Requests answered by the gateway itself with an error, by reason.",
                ),
                &["service", "reason"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "scoregate_upstream_retries_total",
                    "Requests sent again, by reason: unsent (a pooled connection was closed before any byte left), replayable (idempotent, or with an idempotency key), rerouted (to another replica: the first could not be reached).",
                ),
                &["service", "version", "reason"],
            )?,
            h2_abuse: IntCounterVec::new(
                Opts::new(
                    "scoregate_http2_abuse_total",
                    "HTTP/2 connections closed with ENHANCE_YOUR_CALM, by kind (continuation_flood, header_block_size, empty_data, rapid_reset).",
                ),
                &["kind"],
            )?,
            tls_handshakes: IntCounterVec::new(
                Opts::new(
                    "scoregate_tls_handshakes_total",
                    "TLS handshakes by protocol version and result.",
                ),
                &["version", "result"],
            )?,
            protocols: ProtocolMetrics::new(&registry)?,
            connections_open: IntGauge::new(
                "scoregate_connections_open",
                "Client connections currently open on the serving listeners.",
            )?,
            http1_general: IntCounter::new(
                "scoregate_http1_general_path_connections_total",
                "HTTP/1.1 connections the fast path handed to the general one (hyper) for the rest of their life: a chunked body, one slower than header_read_timeout_ms or over 64 KiB, Expect, an upgrade, HTTP/1.0, a malformed request.",
            )?,
            certs: CertMetrics::new(&registry)?,
            acme: AcmeMetrics::new(&registry)?,
            discovery: DiscoveryMetrics::new(&registry)?,
            autoscale: AutoscaleMetrics::new(&registry)?,
            registry,
        };
        m.registry.register(Box::new(m.request_duration.clone()))?;
        m.registry.register(Box::new(m.upstream_duration.clone()))?;
        m.registry.register(Box::new(m.first_byte.clone()))?;
        m.registry.register(Box::new(m.queue_wait.clone()))?;
        m.registry.register(Box::new(m.in_flight.clone()))?;
        m.registry.register(Box::new(m.queued.clone()))?;
        m.registry.register(Box::new(m.ejections.clone()))?;
        m.registry.register(Box::new(m.rejected.clone()))?;
        m.registry.register(Box::new(m.retries.clone()))?;
        m.registry.register(Box::new(m.h2_abuse.clone()))?;
        // Exported at 0 from the start: an absent series reads as "unknown", not "none".
        for kind in [
            "continuation_flood",
            "header_block_size",
            "empty_data",
            "rapid_reset",
        ] {
            m.h2_abuse.with_label_values(&[kind]);
        }
        m.registry.register(Box::new(m.tls_handshakes.clone()))?;
        m.registry.register(Box::new(m.connections_open.clone()))?;
        m.registry.register(Box::new(m.http1_general.clone()))?;
        Ok(m)
    }

    pub fn version(&self, service: &str, version: &str) -> VersionMetrics {
        let sv = [service, version];
        VersionMetrics {
            service: service.to_string(),
            version: version.to_string(),
            family: self.request_duration.clone(),
            by_code: COMMON_CODES.iter().map(|c| (*c, OnceLock::new())).collect(),
            upstream: self.upstream_duration.with_label_values(&sv),
            first_byte: self.first_byte.with_label_values(&sv),
            queue_wait: self.queue_wait.with_label_values(&sv),
            in_flight: self.in_flight.with_label_values(&sv),
            queued: self.queued.with_label_values(&sv),
            ejections: self.ejections.with_label_values(&sv),
            retries: Retries {
                unsent: self
                    .retries
                    .with_label_values(&[service, version, "unsent"]),
                replayable: self
                    .retries
                    .with_label_values(&[service, version, "replayable"]),
                rerouted: self
                    .retries
                    .with_label_values(&[service, version, "rerouted"]),
            },
        }
    }

    pub fn handshakes(&self) -> HandshakeMetrics {
        HandshakeMetrics {
            tls13: self.tls_handshakes.with_label_values(&["1.3", "ok"]),
            tls12: self.tls_handshakes.with_label_values(&["1.2", "ok"]),
            failed: self.tls_handshakes.with_label_values(&["none", "error"]),
            timed_out: self.tls_handshakes.with_label_values(&["none", "timeout"]),
        }
    }

    /// Count a request the gateway answered itself. `service` must be a configured name or "".
    pub fn reject(&self, service: &str, reason: &'static str) {
        self.rejected.with_label_values(&[service, reason]).inc();
    }

    /// Count an HTTP/2 connection closed for abuse; `kind` is one of a fixed set.
    pub fn h2_abuse(&self, kind: &'static str) {
        self.h2_abuse.with_label_values(&[kind]).inc();
    }

    /// The exposition text for `/metrics`.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
