//! The admin listener (plain HTTP, keep it private): `/metrics` (Prometheus text), `/healthz`
//! (the process is up), `/readyz` (serving and not draining), `/config` (effective limits and
//! per-service settings, never keys), `/certificates` (what is being served).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::config::Limits;
use crate::metrics::Metrics;
use crate::routing::RouteHandle;
use crate::tls::CertManager;

#[derive(Debug)]
pub struct AdminState {
    ready: AtomicBool,
    metrics: Metrics,
    routes: RouteHandle,
    certs: Option<Arc<CertManager>>,
    limits: Limits,
}

impl AdminState {
    pub fn new(
        metrics: Metrics,
        routes: RouteHandle,
        certs: Option<Arc<CertManager>>,
        limits: Limits,
    ) -> Self {
        AdminState {
            ready: AtomicBool::new(false),
            metrics,
            routes,
            certs,
            limits,
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Serving, not draining, and every certificate source has delivered.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.certs.as_ref().is_none_or(|c| c.ready())
    }

    fn certificates(&self) -> serde_json::Value {
        match &self.certs {
            Some(c) => c.status(),
            None => serde_json::json!({ "certificates": [] }),
        }
    }

    pub fn handle(&self, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        match req.uri().path() {
            "/metrics" => {
                if let Some(c) = &self.certs {
                    c.refresh_expiry();
                }
                let mut r = Response::new(Full::new(Bytes::from(self.metrics.render())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.is_ready() => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready (starting or draining)\n",
            ),
            "/config" => {
                let mut v = self.routes.load().describe();
                v["limits"] = serde_json::to_value(&self.limits).unwrap_or_default();
                json(v)
            }
            "/certificates" => json(self.certificates()),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /metrics, /healthz, /readyz, /config, /certificates\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

fn json(v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Serve the admin endpoints until the task is aborted: they keep answering during the drain,
/// so `/readyz` reports it.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        let svc = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(state.handle(&req)) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
