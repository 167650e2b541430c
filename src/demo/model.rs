//! The demo's scoring replica: a real (small) model behind the same contract as an Azure ML
//! scoring container — `POST /score` with `{"data": [[...], ...]}`, `GET /swagger.json` — and
//! the Open Inference Protocol's REST API ([`super::v2`]) and gRPC API ([`super::grpc`]), and
//! an OpenAI-compatible chat ([`super::chat`]).
//! The model is a fixed binary logistic regression over the four iris measurements
//! (sepal length, sepal width, petal length, petal width, in cm) that tells Iris virginica apart.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Weights for (sepal length, sepal width, petal length, petal width) and the intercept.
const WEIGHTS: [f64; 4] = [-0.39, -0.51, 2.93, 2.42];
const INTERCEPT: f64 = -14.4;
const MAX_BODY: usize = 16 * 1024 * 1024;

/// P(virginica) for one row of four measurements.
pub fn predict(row: &[f64; 4]) -> f64 {
    let z: f64 = INTERCEPT + row.iter().zip(WEIGHTS).map(|(x, w)| x * w).sum::<f64>();
    1.0 / (1.0 + (-z).exp())
}

/// Score a request body: `{"data": [[f64; 4], ...]}` -> `{"predictions": [...]}`.
pub fn score(body: &[u8]) -> Result<serde_json::Value, String> {
    #[derive(serde::Deserialize)]
    struct Input {
        data: Vec<[f64; 4]>,
    }
    let input: Input = serde_json::from_slice(body).map_err(|e| {
        format!("expected {{\"data\": [[sepal_length, sepal_width, petal_length, petal_width], ...]}}: {e}")
    })?;
    let predictions: Vec<_> = input
        .data
        .iter()
        .map(|row| {
            let p = predict(row);
            serde_json::json!({
                "label": if p >= 0.5 { "virginica" } else { "not-virginica" },
                "probability": (p * 1e4).round() / 1e4,
            })
        })
        .collect();
    Ok(serde_json::json!({ "predictions": predictions }))
}

const SWAGGER: &str = r#"{"swagger":"2.0","info":{"title":"iris","description":"P(Iris virginica) from four measurements in cm","version":"1.0"},"schemes":["https"],"consumes":["application/json"],"produces":["application/json"],"paths":{"/score":{"post":{"summary":"Score rows","parameters":[{"name":"body","in":"body","required":true,"schema":{"type":"object","properties":{"data":{"type":"array","items":{"type":"array","minItems":4,"maxItems":4,"items":{"type":"number"}}}},"example":{"data":[[5.1,3.5,1.4,0.2],[6.7,3.0,5.2,2.3]]}}}],"responses":{"200":{"description":"predictions","schema":{"type":"object","properties":{"predictions":{"type":"array","items":{"type":"object","properties":{"label":{"type":"string"},"probability":{"type":"number"}}}}}}}}}}}}"#;

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// An answer of the demo model: JSON, a gRPC call's message and trailers, or a streamed chat.
type DemoBody = Either<Full<Bytes>, Either<super::grpc::GrpcReply, super::chat::ChatStream>>;

async fn handle(req: Request<Incoming>) -> Response<DemoBody> {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    if let (true, Some(method)) = (grpc, req.uri().path().strip_prefix(super::grpc::PREFIX)) {
        let method = method.to_string();
        let body = Limited::new(req.into_body(), MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return super::grpc::call(&method, body).map(|b| Either::Right(Either::Left(b)));
    }
    if req.method() == Method::POST && req.uri().path() == "/v1/chat/completions" {
        let body: serde_json::Value = match Limited::new(req.into_body(), MAX_BODY).collect().await
        {
            Ok(b) => serde_json::from_slice(&b.to_bytes()).unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        if body.get("stream").and_then(serde_json::Value::as_bool) == Some(true) {
            let mut r = Response::new(Either::Right(Either::Right(super::chat::stream(&body))));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/event-stream"),
            );
            return r;
        }
        return json(StatusCode::OK, super::chat::completion(&body).to_string()).map(Either::Left);
    }
    handle_json(req).await.map(Either::Left)
}

async fn handle_json(req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/score") => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({"error": format!("cannot read body: {e}")}).to_string(),
                    );
                }
            };
            match score(&body) {
                Ok(v) => json(StatusCode::OK, v.to_string()),
                Err(m) => json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({ "error": m }).to_string(),
                ),
            }
        }
        (&Method::GET, "/swagger.json") => json(StatusCode::OK, SWAGGER.to_string()),
        (&Method::GET, "/v2/health/live" | "/v2/health/ready") => {
            json(StatusCode::OK, r#"{"live":true,"ready":true}"#.to_string())
        }
        (m, path) if super::v2::call(path).is_some() => {
            let call = super::v2::call(path);
            match (m, call) {
                (&Method::GET, Some(super::v2::Call::Metadata(name))) => {
                    json(StatusCode::OK, super::v2::metadata(name).to_string())
                }
                (&Method::GET, Some(super::v2::Call::Ready(name))) => json(
                    StatusCode::OK,
                    serde_json::json!({ "name": name, "ready": true }).to_string(),
                ),
                (&Method::POST, Some(super::v2::Call::Infer(name))) => {
                    let name = name.to_string();
                    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(e) => {
                            return json(
                                StatusCode::BAD_REQUEST,
                                serde_json::json!({"error": format!("cannot read body: {e}")})
                                    .to_string(),
                            );
                        }
                    };
                    match super::v2::infer(&name, &body) {
                        Ok(v) => json(StatusCode::OK, v.to_string()),
                        Err(m) => json(
                            StatusCode::BAD_REQUEST,
                            serde_json::json!({ "error": m }).to_string(),
                        ),
                    }
                }
                _ => json(
                    StatusCode::METHOD_NOT_ALLOWED,
                    r#"{"error":"method not allowed"}"#.to_string(),
                ),
            }
        }
        (&Method::GET, "/") => json(StatusCode::OK, r#"{"status":"healthy"}"#.to_string()),
        _ => json(
            StatusCode::NOT_FOUND,
            r#"{"error":"not found"}"#.to_string(),
        ),
    }
}

/// Serve the model on `listener` (HTTP/1.1 and h2c) until `stop` resolves.
pub async fn serve(listener: TcpListener, stop: impl Future<Output = ()>) {
    serve_named(listener, None, stop).await
}

/// The response header naming the replica that answered (`scoregate sample-replica --name`).
pub const REPLICA_HEADER: &str = "x-scoregate-replica";

/// [`serve`], adding [`REPLICA_HEADER`] with `name` to every answer when given.
pub async fn serve_named(
    listener: TcpListener,
    name: Option<String>,
    stop: impl Future<Output = ()>,
) {
    let name = name.and_then(|n| http::HeaderValue::from_str(&n).ok());
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = &mut stop => return,
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        let svc = service_fn(move |req| {
            let name = name.clone();
            async move {
                let mut resp = handle(req).await;
                if let Some(n) = name {
                    resp.headers_mut().insert(REPLICA_HEADER, n);
                }
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_the_three_species() {
        let setosa = predict(&[5.1, 3.5, 1.4, 0.2]);
        let versicolor = predict(&[5.9, 2.8, 4.3, 1.3]);
        let virginica = predict(&[6.5, 3.0, 5.5, 2.0]);
        assert!(setosa < 0.01, "{setosa}");
        assert!(versicolor < 0.5, "{versicolor}");
        assert!(virginica > 0.8, "{virginica}");
    }

    #[test]
    fn rejects_malformed_input_with_the_expected_shape() {
        let err = score(br#"{"data": [[1, 2, 3]]}"#).expect_err("three columns");
        assert!(err.contains("sepal_length"), "{err}");
        let ok = score(br#"{"data": [[6.7, 3.0, 5.2, 2.3]]}"#).expect("valid");
        assert_eq!(ok["predictions"][0]["label"], "virginica");
    }
}
