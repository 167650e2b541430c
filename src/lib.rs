//! scoregate: a TLS-terminating inference gateway for model scoring endpoints, in the role of
//! Azure ML's `azureml-fe` router.
//!
//! # Layout
//! - [`config`] — the TOML file, parsed and validated in one pass into an immutable `Config`.
//! - [`acme`] — certificates by ACME (instant-acme): orders, HTTP-01/TLS-ALPN-01 answers,
//!   renewal schedule with backoff, account and certificate storage, leaf domain labels.
//! - [`discovery`] — the kube client and the watchers feeding the snapshots (TLS Secret).
//! - [`fsutil`] — atomic state-file writes with permissions (keys 0600).
//! - [`tls`] — certificate snapshot (SNI -> key) behind one `ArcSwap`, the rustls resolver,
//!   PEM loading with checks, self-signed development material.
//! - [`routing`] — the route table snapshot (service -> versions -> replicas), traffic split.
//! - [`autoscale`] — replica recommendations (Azure ML's formula), scale patches by the Lease holder.
//! - [`auth`] — key auth (constant time) and JWT token auth per service.
//! - [`upstream`] — replica slots, the deadline-aware queue, p2c + peak-EWMA choice, outlier
//!   ejection, pooled connections: an inline HTTP/1.1 client, hyper's for h2c.
//! - [`proxy`] — the request path, header hygiene, one error -> HTTP mapping.
//! - [`server`] — listeners, TLS handshakes, an HTTP/1.1 fast path (simple requests parsed from
//!   the TLS plaintext, answered in one write) that hands anything else to hyper-util's auto
//!   h1/h2 connection, the idle timeout, configuration reload (SIGHUP, file change), graceful
//!   drain.
//! - [`admin`] — `/metrics`, `/healthz`, `/readyz`, `/config`, `/certificates`.
//! - [`metrics`] — the Prometheus registry and pre-resolved handles.
//! - [`report`] — errors printed with their causes, each cause once.
//! - [`demo`] — `scoregate demo` and its sample model replica.
//! - [`shutdown`] — SIGTERM/SIGINT.
//! - [`control`] — attach/detach/update/status and the certificate lifecycle of a cluster
//!   (server-side apply, marker, workspace registry).
//! - [`cli`] — the command line.

pub mod acme;
pub mod admin;
pub mod auth;
pub mod autoscale;
pub mod busy_poll;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod discovery;
pub mod fsutil;
pub mod http1;
pub mod metrics;
pub mod proxy;
pub mod report;
pub mod request;
pub mod routing;
pub mod server;
pub mod shutdown;
pub mod tls;
pub mod upstream;

pub use server::{App, Listeners, run};
