//! The answer the gateway gives: its own, or a replica's with the gateway's headers added — raw
//! when the replica spoke HTTP/1.1. (The client's request head is `request::ClientHead`.)

use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::ProxyBody;
use crate::http1::raw::RawHeaders;
use crate::request::headers::{MODEL_DEPLOYMENT, REQUEST_ID};

/// The gateway's answer: its own (a map), or a replica's.
pub struct Answer {
    pub status: StatusCode,
    pub headers: AnswerHeaders,
    pub body: ProxyBody,
}

pub enum AnswerHeaders {
    Map(HeaderMap),
    /// An HTTP/1.1 replica's headers (hop-by-hop ones already gone), passed through with the
    /// gateway's request id and deployment name in place of any the replica sent.
    Raw {
        replica: RawHeaders,
        request_id: HeaderValue,
        deployment: Option<HeaderValue>,
    },
}

impl crate::http1::response::HeaderSource for AnswerHeaders {
    fn for_each(&self, f: impl FnMut(&[u8], &[u8])) {
        AnswerHeaders::for_each(self, f);
    }
}

impl AnswerHeaders {
    /// Whether a replica header gives way to one the gateway sets.
    fn replaced(name: &[u8], deployment: bool) -> bool {
        name.eq_ignore_ascii_case(REQUEST_ID.as_str().as_bytes())
            || (deployment && name.eq_ignore_ascii_case(MODEL_DEPLOYMENT.as_str().as_bytes()))
    }

    /// Every header, the gateway's last.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &[u8])) {
        match self {
            AnswerHeaders::Map(map) => {
                for (n, v) in map {
                    f(n.as_str().as_bytes(), v.as_bytes());
                }
            }
            AnswerHeaders::Raw {
                replica,
                request_id,
                deployment,
            } => {
                for (n, v) in replica.iter() {
                    if !Self::replaced(n, deployment.is_some()) {
                        f(n, v);
                    }
                }
                f(REQUEST_ID.as_str().as_bytes(), request_id.as_bytes());
                if let Some(d) = deployment {
                    f(MODEL_DEPLOYMENT.as_str().as_bytes(), d.as_bytes());
                }
            }
        }
    }

    pub fn into_map(self) -> HeaderMap {
        match self {
            AnswerHeaders::Map(map) => map,
            AnswerHeaders::Raw {
                replica,
                request_id,
                deployment,
            } => {
                let has = deployment.is_some();
                let mut map = replica.to_map(2, |n| Self::replaced(n, has));
                map.insert(REQUEST_ID, request_id);
                if let Some(d) = deployment {
                    map.insert(MODEL_DEPLOYMENT, d);
                }
                map
            }
        }
    }
}

impl Answer {
    pub fn from_response(r: Response<ProxyBody>) -> Self {
        let (parts, body) = r.into_parts();
        Answer {
            status: parts.status,
            headers: AnswerHeaders::Map(parts.headers),
            body,
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let mut r = Response::new(self.body);
        *r.status_mut() = self.status;
        *r.headers_mut() = self.headers.into_map();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::raw::tests::parsed;

    #[test]
    fn raw_answers_put_the_gateways_ids_in_place_of_the_replicas() {
        let raw = parsed(
            b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nX-Ms-Request-Id: theirs\r\nAzureml-Model-Deployment: theirs\r\n\r\n",
            false,
        );
        for deployment in [None, Some(HeaderValue::from_static("blue"))] {
            let h = AnswerHeaders::Raw {
                replica: raw.clone(),
                request_id: HeaderValue::from_static("ours"),
                deployment: deployment.clone(),
            };
            let mut seen = Vec::new();
            h.for_each(|n, v| {
                seen.push(format!(
                    "{}={}",
                    String::from_utf8_lossy(n).to_lowercase(),
                    String::from_utf8_lossy(v)
                ))
            });
            let map = h.into_map();
            let mut from_map: Vec<_> = map
                .iter()
                .map(|(n, v)| format!("{n}={}", v.to_str().expect("ascii")))
                .collect();
            let mut sorted = seen.clone();
            sorted.sort();
            from_map.sort();
            assert_eq!(sorted, from_map, "both views agree");
            assert!(seen.contains(&"x-ms-request-id=ours".to_string()));
            assert!(
                !seen
                    .iter()
                    .any(|s| s.ends_with("=theirs") && s.starts_with("x-ms"))
            );
            let dep = seen
                .iter()
                .find(|s| s.starts_with("azureml-model-deployment="))
                .cloned();
            assert_eq!(
                dep.as_deref(),
                Some(if deployment.is_some() {
                    "azureml-model-deployment=blue"
                } else {
                    "azureml-model-deployment=theirs"
                })
            );
        }
    }
}
