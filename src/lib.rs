//! scoregate: a TLS-terminating inference gateway for model scoring endpoints, in the role of
//! Azure ML's `azureml-fe` router.
//!
//! The library's API is what the binary and an embedding program need: [`config`] (parse and
//! validate), [`App`] and [`run`] (build before any bind, serve, drain), [`Listeners`],
//! [`tls`] (certificate loading, the development CA), [`metrics`], [`control`] (attach,
//! detach, update, status, the certificate lifecycle), [`demo`], [`cli`]. Everything else is
//! internal: `cargo doc --document-private-items` shows it, and the `fuzzing` feature opens
//! the wire code to the fuzz targets and the request-path benchmark.
//!
//! # Layout
//! The request path, top to bottom; a module imports only from the layers below it.
//! - `server` — listeners, the accept loops (connection cap), TLS handshakes, idle timeout
//!   and drain; per connection, HTTP/2 (ALPN `h2` or the h2c preface) to the gateway's own
//!   HTTP/2 server (`server::h2`: frames, HPACK, flow control, abuse limits), HTTP/1.1 to the
//!   fast path (simple requests taken from the plaintext, answered in one write) that hands any
//!   other request to hyper.
//! - `proxy` — `proxy::Gateway::serve`, the protocol-neutral request path: route, auth,
//!   admission, queue, send, answer; one error → HTTP mapping; the access log.
//! - `routing` — the route table snapshot (service → versions → replicas), traffic split.
//!   `upstream` — replica slots, the deadline-aware queue, p2c + peak-EWMA choice, outlier
//!   ejection, the replica clients (an inline HTTP/1.1 client, hyper's for h2c) and their pools.
//! - `request` — a client's request as every layer holds it (head, body, the HTTP/2 stream
//!   inbox), the header rules, and what a replica receives (`request::forward`).
//! - `http1` — HTTP/1.1 on the wire for both sides: raw heads, framing, the server's request
//!   taking and response heads, the replica client's encoder and decoder.
//!
//! Beside the request path:
//! - `app` — the composition root: `App::build` from a validated config before any bind,
//!   [`run`] starts the background tasks, serves, drains.
//! - [`config`] — the TOML file, parsed and validated in one pass into an immutable `Config`.
//! - [`tls`] — certificate snapshot (SNI → key) behind one `ArcSwap`, the rustls resolver,
//!   PEM loading with checks, self-signed development material, and the server's TLS stream on
//!   rustls's unbuffered API (record buffers owned here and freed while a connection is idle).
//! - `acme` — certificates by ACME (instant-acme): orders, HTTP-01/TLS-ALPN-01 answers,
//!   renewal schedule with backoff, account and certificate storage.
//! - `discovery` — the kube client and the watchers feeding the snapshots (TLS Secret,
//!   EndpointSlices, the services ConfigMap, key Secrets).
//! - `coordination` — several gateways as one: member Leases, shares of every replica's
//!   limit, requests handed to the gateway that has a slot (over the peer port, with a proof).
//! - `autoscale` — replica recommendations (Azure ML's formula), scale patches by the Lease
//!   holder.
//! - `auth` — key auth (constant time) and JWT token auth per service.
//! - `admin` — `/metrics`, `/healthz`, `/readyz`, `/config`, `/certificates`.
//! - [`metrics`] — the Prometheus registry and pre-resolved handles.
//! - [`busy_poll`] — optional busy polling of the event loop.
//! - [`control`] — attach/detach/update/status and the certificate lifecycle of a cluster
//!   (server-side apply, marker, workspace registry).
//! - [`demo`] — `scoregate demo` and its sample model replica.
//! - [`cli`], [`report`], [`shutdown`], `fsutil` — the command line, errors printed with
//!   their causes once, SIGTERM/SIGINT, atomic state-file writes (keys 0600).

/// Modules that are the crate's internals: public only with the `fuzzing` feature, which the fuzz
/// targets and the request-path benchmark enable to drive the wire code directly.
macro_rules! internal {
    ($($(#[$attr:meta])* $m:ident),* $(,)?) => {
        $(
            $(#[$attr])*
            #[cfg(feature = "fuzzing")]
            pub mod $m;
            $(#[$attr])*
            #[cfg(not(feature = "fuzzing"))]
            mod $m;
        )*
    };
}

pub mod busy_poll;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod metrics;
pub mod report;
pub mod shutdown;
pub mod tls;

internal!(
    acme,
    admin,
    app,
    auth,
    autoscale,
    coordination,
    discovery,
    fsutil,
    http1,
    proxy,
    request,
    routing,
    server,
    upstream,
);

pub use app::{App, run};
pub use server::{BoundAddrs, Listeners, ServerError};
/// How the gateways of a group split each replica's limit: slots of a replica per member, the
/// same arithmetic on every gateway (tools and tests that reason about a group's slots use it).
pub use upstream::shares::owners;
