//! The process shutdown signal: SIGTERM (Kubernetes) or SIGINT (Ctrl-C).

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            // Without signal handlers, fall back to Ctrl-C only.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
