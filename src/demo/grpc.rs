//! The demo model over the Open Inference Protocol's gRPC API (`inference.GRPCInferenceService`:
//! ServerLive, ServerReady, ModelReady, ModelMetadata, ModelInfer), unary calls on the same h2c
//! listener as its REST API. The messages are the protocol's (`grpc_service.proto` of KServe and
//! Triton), with the fields the demo uses; unknown fields are skipped, as protobuf does.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use hyper::body::{Body, Frame, SizeHint};
use prost::Message;

use super::v2::{INPUT, OUTPUT};

/// The service's path prefix.
pub const PREFIX: &str = "/inference.GRPCInferenceService/";

#[derive(Clone, PartialEq, Message)]
struct Live {
    #[prost(bool, tag = "1")]
    live: bool,
}

#[derive(Clone, PartialEq, Message)]
struct Ready {
    #[prost(bool, tag = "1")]
    ready: bool,
}

#[derive(Clone, PartialEq, Message)]
struct ModelRef {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    version: String,
}

#[derive(Clone, PartialEq, Message)]
struct TensorMetadata {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    datatype: String,
    #[prost(int64, repeated, tag = "3")]
    shape: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct ModelMetadataResponse {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, repeated, tag = "2")]
    versions: Vec<String>,
    #[prost(string, tag = "3")]
    platform: String,
    #[prost(message, repeated, tag = "4")]
    inputs: Vec<TensorMetadata>,
    #[prost(message, repeated, tag = "5")]
    outputs: Vec<TensorMetadata>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorContents {
    #[prost(float, repeated, tag = "6")]
    fp32: Vec<f32>,
    #[prost(double, repeated, tag = "7")]
    fp64: Vec<f64>,
}

#[derive(Clone, PartialEq, Message)]
struct InputTensor {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    datatype: String,
    #[prost(int64, repeated, tag = "3")]
    shape: Vec<i64>,
    #[prost(message, optional, tag = "5")]
    contents: Option<TensorContents>,
}

#[derive(Clone, PartialEq, Message)]
struct ModelInferRequest {
    #[prost(string, tag = "1")]
    model_name: String,
    #[prost(string, tag = "2")]
    model_version: String,
    #[prost(string, tag = "3")]
    id: String,
    #[prost(message, repeated, tag = "5")]
    inputs: Vec<InputTensor>,
    #[prost(bytes = "vec", repeated, tag = "7")]
    raw_input_contents: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct ModelInferResponse {
    #[prost(string, tag = "1")]
    model_name: String,
    #[prost(string, tag = "2")]
    model_version: String,
    #[prost(string, tag = "3")]
    id: String,
    /// `InferOutputTensor`: the same first three fields as `TensorMetadata`.
    #[prost(message, repeated, tag = "5")]
    outputs: Vec<TensorMetadata>,
    #[prost(bytes = "vec", repeated, tag = "6")]
    raw_output_contents: Vec<Vec<u8>>,
}

/// gRPC status codes the demo answers with.
const INVALID_ARGUMENT: u32 = 3;
const UNIMPLEMENTED: u32 = 12;

/// A unary gRPC answer: one message (or none), then the trailers.
#[derive(Debug)]
pub struct GrpcReply {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for GrpcReply {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(d) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn status(code: u32, message: &str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from(code));
    if let Ok(m) = HeaderValue::from_str(message) {
        t.insert("grpc-message", m);
    }
    t
}

fn reply(data: Option<Bytes>, trailers: HeaderMap) -> Response<GrpcReply> {
    let mut r = Response::new(GrpcReply {
        data,
        trailers: Some(trailers),
    });
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    r
}

/// The one message of a unary call's body (`0`, 4-byte length, message); `None`: not one.
fn message(mut body: Bytes) -> Option<Bytes> {
    if body.len() < 5 || body[0] != 0 {
        return None;
    }
    body.advance(1);
    let n = body.get_u32() as usize;
    (body.len() == n).then_some(body)
}

fn framed<M: Message>(m: &M) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + m.encoded_len());
    out.put_u8(0);
    out.put_u32(m.encoded_len() as u32);
    m.encode(&mut out).expect("BytesMut grows");
    out.freeze()
}

/// Answer the call `method` (the path after [`PREFIX`]) with request body `body`.
pub fn call(method: &str, body: Bytes) -> Response<GrpcReply> {
    let Some(msg) = message(body) else {
        return reply(
            None,
            status(INVALID_ARGUMENT, "expected one uncompressed message"),
        );
    };
    let ok = |data: Bytes| reply(Some(data), status(0, ""));
    match method {
        "ServerLive" => ok(framed(&Live { live: true })),
        "ServerReady" | "ModelReady" => ok(framed(&Ready { ready: true })),
        "ModelMetadata" => {
            let name = ModelRef::decode(msg).map(|m| m.name).unwrap_or_default();
            ok(framed(&ModelMetadataResponse {
                name,
                versions: vec!["1".into()],
                platform: "scoregate-demo".into(),
                inputs: vec![TensorMetadata {
                    name: INPUT.into(),
                    datatype: "FP32".into(),
                    shape: vec![-1, 4],
                }],
                outputs: vec![TensorMetadata {
                    name: OUTPUT.into(),
                    datatype: "FP32".into(),
                    shape: vec![-1],
                }],
            }))
        }
        "ModelInfer" => match infer(msg) {
            Ok(r) => ok(framed(&r)),
            Err(m) => reply(None, status(INVALID_ARGUMENT, &m)),
        },
        other => reply(
            None,
            status(
                UNIMPLEMENTED,
                &format!("the demo model has no method {other}"),
            ),
        ),
    }
}

fn infer(msg: Bytes) -> Result<ModelInferResponse, String> {
    let req =
        ModelInferRequest::decode(msg).map_err(|e| format!("not a ModelInferRequest: {e}"))?;
    let input = req
        .inputs
        .first()
        .ok_or("expected one input tensor [N, 4]")?;
    let [rows, 4] = input.shape[..] else {
        return Err(format!("shape {:?}: expected [N, 4]", input.shape));
    };
    let rows = usize::try_from(rows).map_err(|_| "a negative row count".to_string())?;
    // Raw little-endian contents (what Triton's client sends), else the typed contents.
    let values: Vec<f64> = match (req.raw_input_contents.first(), &input.contents) {
        (Some(raw), _) if input.datatype == "FP32" => raw
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        (Some(raw), _) if input.datatype == "FP64" => raw
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .collect(),
        (None, Some(c)) if !c.fp32.is_empty() => c.fp32.iter().map(|v| f64::from(*v)).collect(),
        (None, Some(c)) => c.fp64.clone(),
        _ => {
            return Err(format!(
                "datatype {:?}: expected FP32 or FP64",
                input.datatype
            ));
        }
    };
    let raw: Vec<u8> = super::v2::predict_rows(rows as u64, &values)?
        .into_iter()
        .flat_map(|p| (p as f32).to_le_bytes())
        .collect();
    Ok(ModelInferResponse {
        model_name: req.model_name,
        model_version: "1".into(),
        id: req.id,
        outputs: vec![TensorMetadata {
            name: OUTPUT.into(),
            datatype: "FP32".into(),
            shape: vec![rows as i64],
        }],
        raw_output_contents: vec![raw],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, Message)]
    struct Empty {}

    fn body_of(r: Response<GrpcReply>) -> (Option<Bytes>, HeaderMap) {
        let b = r.into_body();
        (b.data, b.trailers.expect("trailers"))
    }

    #[test]
    fn infers_raw_fp32_rows() {
        let raw: Vec<u8> = [5.1f32, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let req = ModelInferRequest {
            model_name: "iris".into(),
            id: "x".into(),
            inputs: vec![InputTensor {
                name: INPUT.into(),
                datatype: "FP32".into(),
                shape: vec![2, 4],
                contents: None,
            }],
            raw_input_contents: vec![raw],
            ..Default::default()
        };
        let (data, trailers) = body_of(call("ModelInfer", framed(&req)));
        assert_eq!(trailers["grpc-status"], "0");
        let resp = ModelInferResponse::decode(message(data.expect("data")).expect("framed"))
            .expect("response");
        let p: Vec<f32> = resp.raw_output_contents[0]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(p, vec![0.0, 0.9054]);
        assert_eq!(resp.id, "x");
    }

    #[test]
    fn refuses_bad_calls_with_grpc_codes() {
        let (_, t) = body_of(call("ModelInfer", Bytes::from_static(b"\x01\0\0\0\0")));
        assert_eq!(t["grpc-status"], "3");
        let (_, t) = body_of(call("Nope", framed(&Empty {})));
        assert_eq!(t["grpc-status"], "12");
        let bad = ModelInferRequest {
            inputs: vec![InputTensor {
                shape: vec![1, 3],
                datatype: "FP32".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (_, t) = body_of(call("ModelInfer", framed(&bad)));
        assert_eq!(t["grpc-status"], "3");
        assert!(
            t["grpc-message"]
                .to_str()
                .expect("ascii")
                .contains("[N, 4]")
        );
    }
}
