//! The demo model behind an OpenAI-compatible `POST /v1/chat/completions`, so the gateway's
//! OpenAI route and its streaming can be tried on `scoregate demo`: the last user message's four
//! measurements get a one-sentence answer, streamed word by word as server-sent events (50 ms
//! apart, as a language model produces tokens) when `"stream": true`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::model::predict;

/// The gap between two streamed words.
const WORD_GAP: Duration = Duration::from_millis(50);

/// A streamed answer: chunks as the producing task sends them; it ends when the task does.
#[derive(Debug)]
pub struct ChatStream(mpsc::Receiver<Bytes>);

impl Body for ChatStream {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// The answer's words for a chat request body.
pub fn answer(body: &Value) -> String {
    let said = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| {
            m.iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let numbers: Vec<f64> = said
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.parse().ok())
        .collect();
    match numbers[..] {
        [a, b, c, d, ..] => {
            let p = (predict(&[a, b, c, d]) * 1e4).round() / 1e4;
            let label = if p >= 0.5 { "is" } else { "is not" };
            format!("With P(virginica) = {p}, this iris {label} Iris virginica.")
        }
        _ => "Send four measurements in cm (sepal length, sepal width, petal length, petal width), e.g. 6.7 3.0 5.2 2.3."
            .to_string(),
    }
}

/// A whole `chat.completion` object for `body`.
pub fn completion(body: &Value) -> Value {
    let text = answer(body);
    json!({
        "id": "chatcmpl-demo",
        "object": "chat.completion",
        "model": body.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{ "index": 0, "finish_reason": "stop",
                      "message": { "role": "assistant", "content": text } }],
        "usage": { "prompt_tokens": 0, "completion_tokens": text.split(' ').count(),
                   "total_tokens": text.split(' ').count() },
    })
}

/// The answer as server-sent events, word by word, then `data: [DONE]`. Producing stops when
/// the reader goes away.
pub fn stream(body: &Value) -> ChatStream {
    let text = answer(body);
    let model = body.get("model").cloned().unwrap_or(Value::Null);
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let words: Vec<&str> = text.split_inclusive(' ').collect();
        for (i, w) in words.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(WORD_GAP).await;
            }
            let chunk = json!({
                "id": "chatcmpl-demo",
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{ "index": 0, "delta": { "content": w },
                              "finish_reason": if i + 1 == words.len() { json!("stop") } else { Value::Null } }],
            });
            if tx
                .send(Bytes::from(format!("data: {chunk}\n\n")))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    ChatStream(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_the_measurements_of_the_last_user_message() {
        let body = json!({"messages": [
            {"role": "user", "content": "5.1 3.5 1.4 0.2"},
            {"role": "assistant", "content": "..."},
            {"role": "user", "content": "and 6.7, 3.0, 5.2, 2.3?"},
        ]});
        assert_eq!(
            answer(&body),
            "With P(virginica) = 0.9054, this iris is Iris virginica."
        );
        assert!(answer(&json!({"messages": []})).starts_with("Send four measurements"));
    }

    #[tokio::test]
    async fn streams_word_by_word_then_done() {
        use http_body_util::BodyExt;
        let body =
            json!({"model": "iris", "messages": [{"role": "user", "content": "6.7 3.0 5.2 2.3"}]});
        let mut s = stream(&body);
        let mut text = String::new();
        let mut chunks = 0;
        while let Some(f) = s.frame().await {
            let data = f.expect("infallible").into_data().expect("data");
            let line = std::str::from_utf8(&data).expect("utf-8").to_string();
            if line.starts_with("data: [DONE]") {
                break;
            }
            chunks += 1;
            let v: Value =
                serde_json::from_str(line.trim_start_matches("data: ").trim()).expect("json");
            text.push_str(
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .expect("content"),
            );
        }
        assert_eq!(text, answer(&body));
        assert_eq!(chunks, text.split(' ').count());
    }
}
