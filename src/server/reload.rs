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

use tokio::sync::watch;

use crate::discovery::RouteSources;

/// Sections read once at start.
const RESTART_SECTIONS: [&str; 4] = ["listen", "tls", "limits", "kubernetes"];

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
    pub(super) async fn run(self, mut stop: watch::Receiver<bool>) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes only");
                None
            }
        };
        let mut running = tokio::fs::read(&self.path).await.unwrap_or_default();
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
                _ = stop.wait_for(|s| *s) => return,
            };
            let changed = |b: &Vec<u8>| *b != running;
            if trigger != "SIGHUP" {
                match tokio::fs::read(&self.path).await {
                    Ok(b) if changed(&b) => tokio::time::sleep(self.debounce).await,
                    _ => continue,
                }
            }
            let text = tokio::fs::read(&self.path).await.unwrap_or_default();
            self.apply(&running, &text, trigger);
            // A refused file is not retried until it changes again (or SIGHUP).
            running = text;
        }
    }

    fn apply(&self, running: &[u8], text: &[u8], trigger: &str) {
        let reloads = &self.sources.metrics().discovery.config_reloads;
        let path = self.path.display().to_string();
        let config = match crate::config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                reloads.with_label_values(&["file", "rejected"]).inc();
                tracing::error!(path, trigger, errors = %e, "configuration refused; the running configuration stays");
                return;
            }
        };
        let (old, new) = (
            sections(&String::from_utf8_lossy(running)),
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
        reloads.with_label_values(&["file", "ok"]).inc();
        tracing::info!(path, trigger, services = n, "configuration reloaded");
    }
}
