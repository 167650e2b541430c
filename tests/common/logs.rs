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

/// Length of the pieces of a secret looked for: long enough never to occur by chance, short
/// enough that a log line quoting part of a key line (or a key split over lines) is caught.
const WINDOW: usize = 24;

/// The pieces of a secret worth looking for: the whole value, and every `WINDOW`-character
/// window of its body (PEM armour lines left out, the body lines joined), at every offset.
pub fn secret_fragments(secret: &str) -> Vec<String> {
    let body: String = secret
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let mut out = vec![secret.trim().to_string()];
    let chars: Vec<char> = body.chars().collect();
    out.extend(chars.windows(WINDOW).map(|w| w.iter().collect()));
    out
}

/// Panic when the whole of `secret`, or any window of it, appears in `log`.
pub fn assert_not_logged(log: &str, secret: &str, what: &str) {
    let fragments = secret_fragments(secret);
    let (whole, windows) = fragments
        .split_first()
        .expect("the whole secret comes first");
    assert!(!log.contains(whole.as_str()), "{what} appears in the log");
    // One pass over the log's windows against the set of the secret's (a key has ~1,600).
    let wanted: std::collections::HashSet<&[u8]> = windows.iter().map(|f| f.as_bytes()).collect();
    if let Some(found) = log.as_bytes().windows(WINDOW).find(|w| wanted.contains(w)) {
        panic!(
            "{what} appears in the log (fragment {:?})",
            String::from_utf8_lossy(found)
        );
    }
}
