//! Configuration reload for `serve --config`: on SIGHUP, and when the file's contents change
//! (checked every `tls.reload_poll_ms`, re-read after `tls.reload_debounce_ms` so a half-written
//! file is not judged). The whole file is validated again; an invalid one is refused with its
//! errors and the running configuration stays. A valid one replaces the services (routes, auth,
//! limits per service, versions, weights, replicas) in one route-table swap: requests in flight
//! finish on the table they started with, none is dropped. Sections that need new sockets or a
//! new TLS setup (`listen`, `tls`, `limits`, `kubernetes`) are kept as they were, with a warning
//! naming them (certificate *files* are reloaded on their own).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;


use crate::discovery::RouteSources;
use tokio_util::sync::CancellationToken;

/// Sections read once at start.
const RESTART_SECTIONS: [&str; 6] = [
    "listen",
    "tls",
    "limits",
    "runtime",
    "access_log",
    "kubernetes",
];

pub(super) struct Reloader {
    pub path: PathBuf,
    pub sources: Arc<RouteSources>,
    pub poll: Duration,
    pub debounce: Duration,
}

fn sections(text: &str) -> Option<toml::Table> {
    text.parse::<toml::Table>().ok()
}

impl Reloader {
    pub(super) async fn run(self, stop: CancellationToken) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes only");
                None
            }
        };
        // `seen`: the last contents judged (a refused file is not judged again until it changes,
        // or SIGHUP); `applied`: the contents the running services came from.
        let mut seen = tokio::fs::read(&self.path).await.unwrap_or_default();
        let mut applied = seen.clone();
        loop {
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            let trigger = tokio::select! {
                _ = hangup => "SIGHUP",
                _ = tokio::time::sleep(self.poll) => "file changed",
                _ = stop.cancelled() => return,
            };
            if trigger != "SIGHUP" {
                match tokio::fs::read(&self.path).await {
                    Ok(b) if b != seen => tokio::time::sleep(self.debounce).await,
                    _ => continue,
                }
            }
            let text = match tokio::fs::read(&self.path).await {
                Ok(t) => t,
                Err(e) => {
                    self.refuse(trigger, &format!("cannot read the file: {e}"));
                    continue;
                }
            };
            if self.apply(&applied, &text, trigger) {
                applied.clone_from(&text);
            }
            seen = text;
        }
    }

    fn refuse(&self, trigger: &str, errors: &dyn std::fmt::Display) {
        let reloads = &self.sources.metrics().discovery.config_reloads;
        reloads.with_label_values(&["file", "rejected"]).inc();
        tracing::error!(path = %self.path.display(), trigger, errors = %errors, "configuration refused; the running configuration stays");
    }

    /// Validate `text` (the file's contents, read once) and swap the services in; whether it was
    /// applied.
    fn apply(&self, applied: &[u8], text: &[u8], trigger: &str) -> bool {
        let config = match crate::config::from_file_bytes(text, &self.path) {
            Ok(c) => c,
            Err(e) => {
                self.refuse(trigger, &e);
                return false;
            }
        };
        let path = self.path.display().to_string();
        let (old, new) = (
            sections(&String::from_utf8_lossy(applied)),
            sections(&String::from_utf8_lossy(text)),
        );
        let kept: Vec<&str> = RESTART_SECTIONS
            .into_iter()
            .filter(|s| {
                old.as_ref().and_then(|t| t.get(*s)) != new.as_ref().and_then(|t| t.get(*s))
            })
            .collect();
        if !kept.is_empty() {
            tracing::warn!(
                path,
                sections = ?kept,
                "these sections changed but are read at start only; restart to apply them"
            );
        }
        let n = config.services.len();
        self.sources.set_file_services(config.services);
        let reloads = &self.sources.metrics().discovery.config_reloads;
        reloads.with_label_values(&["file", "ok"]).inc();
        tracing::info!(path, trigger, services = n, "configuration reloaded");
        true
    }
}
