//! The proof a request handed between gateways carries (`x-scoregate-peer`): who sent it, when,
//! how many hand-overs it has had, and an HMAC-SHA256 under the attachment's peer key over
//! those, the request id and the service. A gateway's peer port serves only requests with a
//! valid proof made within [`MAX_AGE`]; a request is handed on again only when the share it was
//! waiting for moved away, and never past [`MAX_HOPS`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;

/// How old (or how far in the future, for clocks apart) a proof may be.
pub const MAX_AGE: Duration = Duration::from_secs(30);

/// Hand-overs a request may have: the first, and one more when the share it waited for at the
/// gateway it was handed to moved to another gateway meanwhile.
pub const MAX_HOPS: u8 = 2;

/// Why a handed-over request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("no x-scoregate-peer header: the peer port serves only requests handed over by another gateway")]
    Missing,
    #[error("x-scoregate-peer is malformed")]
    Malformed,
    #[error("x-scoregate-peer was made more than 30 s away from this gateway's clock")]
    Stale,
    #[error("x-scoregate-peer does not verify under this attachment's peer key")]
    BadSignature,
}

pub struct Keys {
    key: hmac::Key,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn message(from: &str, at_ms: u64, hops: u8, request_id: &[u8], service: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + from.len() + request_id.len() + service.len());
    m.extend_from_slice(b"scoregate-peer\n");
    m.extend_from_slice(from.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(at_ms.to_string().as_bytes());
    m.push(b'\n');
    m.extend_from_slice(hops.to_string().as_bytes());
    m.push(b'\n');
    m.extend_from_slice(request_id);
    m.push(b'\n');
    m.extend_from_slice(service.as_bytes());
    m
}

impl Keys {
    pub fn new(secret: &[u8]) -> Keys {
        Keys {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// `<from> <unix ms> <hops> <base64url tag>`.
    pub fn sign(
        &self,
        from: &str,
        hops: u8,
        request_id: &HeaderValue,
        service: &str,
    ) -> Option<HeaderValue> {
        let at = now_ms();
        let tag = hmac::sign(
            &self.key,
            &message(from, at, hops, request_id.as_bytes(), service),
        );
        HeaderValue::from_str(&format!(
            "{from} {at} {hops} {}",
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        ))
        .ok()
    }

    /// The sender's id and the request's hand-overs so far when `proof` is valid for this
    /// request (the tag compared in constant time).
    pub fn verify(
        &self,
        proof: Option<&[u8]>,
        request_id: &HeaderValue,
        service: &str,
    ) -> Result<(String, u8), ProofError> {
        let proof = proof.ok_or(ProofError::Missing)?;
        let text = std::str::from_utf8(proof).map_err(|_| ProofError::Malformed)?;
        let mut parts = text.split(' ');
        let (Some(from), Some(at), Some(hops), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(ProofError::Malformed);
        };
        let at: u64 = at.parse().map_err(|_| ProofError::Malformed)?;
        let hops: u8 = hops
            .parse()
            .ok()
            .filter(|h| (1..=MAX_HOPS).contains(h))
            .ok_or(ProofError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| ProofError::Malformed)?;
        if now_ms().abs_diff(at) > MAX_AGE.as_millis() as u64 {
            return Err(ProofError::Stale);
        }
        hmac::verify(
            &self.key,
            &message(from, at, hops, request_id.as_bytes(), service),
            &tag,
        )
        .map_err(|_| ProofError::BadSignature)?;
        Ok((from.to_string(), hops))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_verifies_for_its_request_only() {
        let keys = Keys::new(&[7u8; 32]);
        let rid = HeaderValue::from_static("req-1");
        let proof = keys.sign("gw-a", 1, &rid, "iris").expect("header-safe");
        assert_eq!(
            keys.verify(Some(proof.as_bytes()), &rid, "iris"),
            Ok(("gw-a".to_string(), 1))
        );
        // The hop count is covered: a request cannot be made to look fresh.
        let text = proof.to_str().expect("ascii").replacen(" 1 ", " 2 ", 1);
        assert_eq!(
            keys.verify(Some(text.as_bytes()), &rid, "iris"),
            Err(ProofError::BadSignature)
        );
        let other = HeaderValue::from_static("req-2");
        assert_eq!(
            keys.verify(Some(proof.as_bytes()), &other, "iris"),
            Err(ProofError::BadSignature)
        );
        assert_eq!(
            keys.verify(Some(proof.as_bytes()), &rid, "wine"),
            Err(ProofError::BadSignature)
        );
        assert_eq!(
            Keys::new(&[8u8; 32]).verify(Some(proof.as_bytes()), &rid, "iris"),
            Err(ProofError::BadSignature)
        );
        assert_eq!(keys.verify(None, &rid, "iris"), Err(ProofError::Missing));
        assert_eq!(
            keys.verify(Some(b"gw-a 1 1 AAAA"), &rid, "iris"),
            Err(ProofError::Stale)
        );
        assert_eq!(
            keys.verify(Some(b"gw-a"), &rid, "iris"),
            Err(ProofError::Malformed)
        );
        // The sender's id is covered too.
        let text = proof.to_str().expect("ascii").replacen("gw-a", "gw-b", 1);
        assert_eq!(
            keys.verify(Some(text.as_bytes()), &rid, "iris"),
            Err(ProofError::BadSignature)
        );
    }
}
