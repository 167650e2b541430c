//! Per-service authentication: key auth (primary + secondary, compared in constant time) or
//! token auth (a JWT checked for signature, expiry and audience). Both read
//! `Authorization: Bearer <key-or-token>`.

use jsonwebtoken::Validation;
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;

pub enum Auth {
    None,
    Key {
        primary: Vec<u8>,
        secondary: Option<Vec<u8>>,
    },
    Token {
        key: jsonwebtoken::DecodingKey,
        validation: Box<Validation>,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.mode())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization header; send 'Authorization: Bearer <key>'")]
    Missing,
    #[error("Authorization header must be 'Bearer <key-or-token>'")]
    Malformed,
    #[error("invalid key")]
    InvalidKey,
    #[error("token has expired")]
    TokenExpired,
    #[error("invalid token: {0}")]
    InvalidToken(String),
}

impl AuthError {
    /// Machine-readable reason for the JSON body and the metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "auth_missing",
            AuthError::Malformed => "auth_malformed",
            AuthError::InvalidKey => "auth_invalid_key",
            AuthError::TokenExpired => "auth_token_expired",
            AuthError::InvalidToken(_) => "auth_invalid_token",
        }
    }
}

impl Auth {
    pub fn from_config(c: &AuthConfig) -> Self {
        match c {
            AuthConfig::None => Auth::None,
            // Keys not read yet: an empty key never matches a presented (non-empty) one.
            AuthConfig::SecretRef { .. } => Auth::Key {
                primary: Vec::new(),
                secondary: None,
            },
            AuthConfig::Key { primary, secondary } => Auth::Key {
                primary: primary.as_bytes().to_vec(),
                secondary: secondary.as_ref().map(|s| s.as_bytes().to_vec()),
            },
            AuthConfig::Token(t) => {
                let mut v = Validation::new(t.algorithm);
                v.set_audience(&[&t.audience]);
                if let Some(iss) = &t.issuer {
                    v.set_issuer(&[iss]);
                }
                v.set_required_spec_claims(&["exp", "aud"]);
                v.leeway = 30;
                Auth::Token {
                    key: t.key.clone(),
                    validation: Box::new(v),
                }
            }
        }
    }

    pub fn mode(&self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::Key { .. } => "key",
            Auth::Token { .. } => "token",
        }
    }

    /// Whether the `Authorization` header is the gateway's own secret (not forwarded upstream).
    pub fn consumes_header(&self) -> bool {
        matches!(self, Auth::Key { .. })
    }

    /// Check the request's `Authorization` value (`None`: it sent none).
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), AuthError> {
        if let Auth::None = self {
            return Ok(());
        }
        let value = authorization.ok_or(AuthError::Missing)?;
        let presented = bearer(value).ok_or(AuthError::Malformed)?;
        match self {
            Auth::None => Ok(()),
            Auth::Key { primary, secondary } => {
                // Evaluate both comparisons so timing does not tell which key matched.
                let p = primary.as_slice().ct_eq(presented);
                let s = match secondary {
                    Some(s) => s.as_slice().ct_eq(presented),
                    None => subtle::Choice::from(0),
                };
                if bool::from(p | s) {
                    Ok(())
                } else {
                    Err(AuthError::InvalidKey)
                }
            }
            Auth::Token { key, validation } => {
                let token = std::str::from_utf8(presented).map_err(|_| AuthError::Malformed)?;
                jsonwebtoken::decode::<serde_json::Value>(token, key, validation)
                    .map(|_| ())
                    .map_err(|e| match e.kind() {
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                            AuthError::TokenExpired
                        }
                        kind => AuthError::InvalidToken(format!("{kind:?}")),
                    })
            }
        }
    }
}

/// The credential of `Bearer <credential>` (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    if value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") {
        let c = value[7..].trim_ascii();
        (!c.is_empty()).then_some(c)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> Option<&[u8]> {
        Some(v.as_bytes())
    }

    #[test]
    fn key_auth_accepts_either_key_only() {
        let a = Auth::from_config(&AuthConfig::Key {
            primary: "primary-key-0123456789".into(),
            secondary: Some("secondary-key-0123456789".into()),
        });
        assert_eq!(a.check(headers("Bearer primary-key-0123456789")), Ok(()));
        assert_eq!(a.check(headers("bearer secondary-key-0123456789")), Ok(()));
        assert_eq!(
            a.check(headers("Bearer primary-key-012345678")),
            Err(AuthError::InvalidKey)
        );
        assert_eq!(a.check(headers("Basic abc")), Err(AuthError::Malformed));
        assert_eq!(a.check(None), Err(AuthError::Missing));
    }

    #[test]
    fn token_auth_checks_signature_expiry_and_audience() {
        use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, encode};
        let secret = b"0123456789abcdef0123456789abcdef";
        let a = Auth::from_config(&AuthConfig::Token(crate::config::TokenConfig {
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(secret),
            audience: "scoring".into(),
            issuer: None,
        }));
        let now = jsonwebtoken::get_current_timestamp();
        let tok = |aud: &str, exp: u64, key: &[u8]| {
            let claims = serde_json::json!({"aud": aud, "exp": exp, "sub": "x"});
            encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(key),
            )
            .expect("encode")
        };
        let ok = tok("scoring", now + 600, secret);
        assert_eq!(a.check(headers(&format!("Bearer {ok}"))), Ok(()));
        let expired = tok("scoring", now - 600, secret);
        assert_eq!(
            a.check(headers(&format!("Bearer {expired}"))),
            Err(AuthError::TokenExpired)
        );
        let wrong_aud = tok("other", now + 600, secret);
        assert!(matches!(
            a.check(headers(&format!("Bearer {wrong_aud}"))),
            Err(AuthError::InvalidToken(_))
        ));
        let forged = tok("scoring", now + 600, b"another-secret-another-secret-xx");
        assert!(matches!(
            a.check(headers(&format!("Bearer {forged}"))),
            Err(AuthError::InvalidToken(_))
        ));
    }
}
