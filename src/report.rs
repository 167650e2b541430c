//! Errors as people read them: the whole `source()` chain on one line, each cause once.
//!
//! Many of the crate's error messages name their cause (`cannot connect to replica …: Connection
//! refused`) and also return it from `source()`, and wrappers (`GatewayError::Upstream`) repeat
//! their inner error's message: printed naively, a chain says the same thing two or three times.

use std::error::Error;
use std::fmt;

/// Display an error with its `source()` chain, `: `-separated, leaving out a cause whose message
/// is already part of what was printed before it.
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.0.to_string();
        let mut src = self.0.source();
        while let Some(s) = src {
            let cause = s.to_string();
            if !cause.is_empty() && !text.contains(&cause) {
                text.push_str(": ");
                text.push_str(&cause);
            }
            src = s.source();
        }
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::error::GatewayError;
    use crate::upstream::UpstreamError;

    #[test]
    fn each_cause_is_printed_once() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let reason = refused.to_string();
        let e = GatewayError::Upstream(UpstreamError::Connect {
            addr: "127.0.0.1:9".parse().expect("addr"),
            source: refused,
        });
        let text = ErrorChain(&e).to_string();
        assert_eq!(
            text,
            format!("cannot connect to replica 127.0.0.1:9: {reason}")
        );
        assert_eq!(text.matches(&reason).count(), 1, "{text}");
    }

    #[test]
    fn a_cause_not_in_the_message_is_added() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading the configuration")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(
            ErrorChain(&e).to_string(),
            "reading the configuration: disk on fire"
        );
    }
}
