//! Everything the gateway logs in this test binary, at `debug` (and `trace` for scoregate), kept in
//! memory so a test can assert what never appears in it.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    pub fn text(&self) -> String {
        self.0
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

/// Install (once per test binary) the capturing subscriber; the shared buffer.
pub fn capture_logs() -> LogBuffer {
    static BUF: OnceLock<LogBuffer> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = LogBuffer::default();
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug,scoregate=trace"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        buf
    })
    .clone()
}

/// The pieces of a secret worth looking for: the whole value, and for PEM or long base64 text
/// every 24-character window of its body lines (a log line quoting any part of a key is a leak).
pub fn secret_fragments(secret: &str) -> Vec<String> {
    let body: String = secret
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let mut out = vec![secret.trim().to_string()];
    let chars: Vec<char> = body.chars().collect();
    out.extend(
        chars
            .chunks(24)
            .filter(|c| c.len() == 24)
            .map(|c| c.iter().collect()),
    );
    out
}

/// Panic when any fragment of `secret` appears in `log`.
pub fn assert_not_logged(log: &str, secret: &str, what: &str) {
    for f in secret_fragments(secret) {
        assert!(
            !log.contains(&f),
            "{what} appears in the log (fragment {f:?})"
        );
    }
}
