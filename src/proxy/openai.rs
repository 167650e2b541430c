//! OpenAI-compatible endpoints (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`):
//! the service is the body's `model`, so the body is read (within the body limit) before the
//! request is routed, and goes on whole.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};

use super::{ClientBody, GatewayError};
use crate::auth::AuthError;
use crate::routing::RouteTable;
use crate::upstream::ClientBodyError;

/// Before a body is read to find its service: the credential must be one that some service
/// takes (the service's own check follows once the body named it). So a client with no valid
/// key cannot make the gateway buffer bodies; the refusal is the first service's.
pub fn precheck(routes: &RouteTable, authorization: Option<&[u8]>) -> Result<(), AuthError> {
    let mut first = None;
    for s in routes.services() {
        match s.auth.check(authorization) {
            Ok(()) => return Ok(()),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    Err(first.unwrap_or(AuthError::Missing))
}

/// Read `body` (at most `limit` bytes) and find the model it names: `(model, body)`.
pub async fn read_model(body: ClientBody, limit: u64) -> Result<(String, Bytes), GatewayError> {
    let bytes = match body {
        ClientBody::Whole(b) => b.unwrap_or_default(),
        other => Limited::new(other, usize::try_from(limit).unwrap_or(usize::MAX))
            .collect()
            .await
            .map_err(|e| {
                GatewayError::ClientBody(
                    if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                        ClientBodyError::TooLarge
                    } else {
                        ClientBodyError::Failed { source: e }
                    },
                )
            })?
            .to_bytes(),
    };
    if bytes.len() as u64 > limit {
        return Err(GatewayError::ClientBody(ClientBodyError::TooLarge));
    }
    let model = model_of(&bytes).map_err(GatewayError::OpenAiModel)?;
    Ok((model, bytes))
}

/// The `model` of a JSON object body; else why not.
fn model_of(body: &[u8]) -> Result<String, &'static str> {
    #[derive(serde::Deserialize)]
    struct Named {
        model: Option<serde_json::Value>,
    }
    let named: Named = serde_json::from_slice(body)
        .map_err(|_| "the body is not a JSON object; send {\"model\": \"<service>\", ...}")?;
    match named.model {
        Some(serde_json::Value::String(m)) if !m.is_empty() => Ok(m),
        Some(_) => Err("\"model\" is not a non-empty string; it names the service"),
        None => Err("the body has no \"model\"; it names the service"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_model_or_says_what_is_wrong() {
        assert_eq!(
            model_of(br#"{"model":"chat","messages":[],"stream":true}"#),
            Ok("chat".into())
        );
        assert!(model_of(b"not json").expect_err("json").contains("JSON object"));
        assert!(model_of(br#"{"messages":[]}"#).expect_err("none").contains("no \"model\""));
        assert!(model_of(br#"{"model":""}"#).expect_err("empty").contains("non-empty"));
        assert!(model_of(br#"{"model":7}"#).expect_err("number").contains("non-empty"));
        assert!(model_of(br#"[1]"#).is_err());
    }

    #[tokio::test]
    async fn refuses_a_body_over_the_limit() {
        let big = Bytes::from(format!(r#"{{"model":"m","x":"{}"}}"#, "a".repeat(100)));
        let r = read_model(ClientBody::Whole(Some(big)), 50).await;
        assert!(matches!(
            r,
            Err(GatewayError::ClientBody(ClientBodyError::TooLarge))
        ));
    }
}
