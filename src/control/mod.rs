//! The control module: `attach`, `detach`, `update`, `status` and the certificate lifecycle
//! (`cert set|export|status|renew|disable`) of a Kubernetes cluster, in the role of Azure ML's
//! `AksCompute.attach_configuration / enable_ssl / detach / update`.
//!
//! - [`spec`] — the attachment (purpose, load balancer, TLS mode) and the pure option checks with
//!   Azure's messages;
//! - [`render`] — the objects an attachment consists of, rendered from it alone;
//! - [`cluster`] — the kube side: version, capacity, marker, server-side apply, prune;
//! - [`rollout`] — waiting for the gateway to serve, saying what is missing;
//! - [`registry`] — the workspace: a file of attached computes;
//! - [`commands`] — attach/detach/update/status; [`cert`] — the certificate commands;
//! - [`output`] — `--output table|json|yaml`.
//!
//! Everything is checked before the cluster is touched; objects are applied with one field
//! manager, so a failed run is reported object by object and a re-run converges.

pub mod cert;
pub mod cluster;
pub mod commands;
pub mod output;
pub mod registry;
pub mod render;
pub mod rollout;
pub mod spec;

use std::path::PathBuf;
use std::time::Duration;

pub use spec::{Attachment, LoadBalancerType, OptionError, Purpose, TlsMode, TlsOptions};

/// Kubernetes minor versions attach supports (the API server's `/version`).
pub const SUPPORTED_VERSIONS: &[(u32, u32)] = &[(1, 30), (1, 31), (1, 32), (1, 33), (1, 34)];

/// Where a command finds the workspace and the cluster, and how it reports progress.
#[derive(Debug, Clone)]
pub struct Env {
    /// The workspace registry file.
    pub workspace: PathBuf,
    /// Overrides the registry's kubeconfig (attach: the cluster to attach).
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// Progress lines on stderr.
    pub progress: bool,
    pub supported_versions: Vec<(u32, u32)>,
}

impl Env {
    pub fn step(&self, msg: impl std::fmt::Display) {
        if self.progress {
            eprintln!("{msg}");
        }
    }
}

/// How long attach/update wait for the rollout and the load balancer address.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    pub enabled: bool,
    pub timeout: Duration,
    pub poll: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Bad options: nothing was touched (exit 64).
    #[error("{}", list(.0))]
    Options(Vec<OptionError>),
    /// The cluster or workspace does not allow it; nothing was changed.
    #[error("{0}")]
    Refused(String),
    #[error("workspace {path}: {source}")]
    Registry {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("workspace {path} is not a scoregate workspace file: {source}")]
    RegistryFormat {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Connect(#[source] crate::discovery::DiscoveryError),
    /// No usable kubeconfig for a recorded compute: which flag to pass.
    #[error("{hint}")]
    Unreachable {
        hint: String,
        #[source]
        source: crate::discovery::DiscoveryError,
    },
    /// The API server's answer in words (its message, reason and code), not a debug dump; the
    /// `kube::Error` is kept for callers (not a `source`: its text would repeat the message).
    #[error("{action}: {}", kube_message(.error))]
    Kube { action: String, error: kube::Error },
    /// Some objects were applied before one failed; a re-run converges.
    #[error(
        "applying {failed} failed: {}\napplied before the failure: {}\nnothing was rolled back; fix the cause and run the same command again (it converges)",
        kube_message(.error),
        if .applied.is_empty() { "nothing".to_string() } else { .applied.join(", ") }
    )]
    Partial {
        applied: Vec<String>,
        failed: String,
        error: kube::Error,
    },
    #[error("{0}")]
    Timeout(String),
    /// Ctrl-C while waiting: what state was left and how to go on (exit 130).
    #[error("{0}")]
    Interrupted(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A kube error as a sentence: for an API answer its message, reason and HTTP code.
pub(crate) fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => {
            let reason = if s.reason.is_empty() {
                String::new()
            } else {
                format!("{}, ", s.reason)
            };
            format!("{} ({reason}HTTP {})", s.message, s.code)
        }
        other => crate::report::ErrorChain(other).to_string(),
    }
}

fn list(errs: &[OptionError]) -> String {
    errs.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A destructive step: confirmed by `yes`, else asked on the terminal; refused (exit 64, nothing
/// touched) when there is no terminal to ask.
pub(crate) fn confirm(what: &str, yes: bool) -> Result<(), ControlError> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(ControlError::Options(vec![OptionError {
            field: "--yes".into(),
            message: format!("{what} Pass --yes to confirm."),
        }]));
    }
    eprint!("{what} Continue? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = stdin.lock().read_line(&mut answer);
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(ControlError::Refused(
            "not confirmed; nothing was changed".into(),
        ))
    }
}

/// Run `wait` until it ends or Ctrl-C (SIGINT) arrives; then `state` says what was left.
pub(crate) async fn interruptible<T>(
    wait: impl std::future::Future<Output = Result<T, ControlError>>,
    state: impl FnOnce() -> String,
) -> Result<T, ControlError> {
    tokio::select! {
        r = wait => r,
        _ = tokio::signal::ctrl_c() => Err(ControlError::Interrupted(format!("interrupted: {}", state()))),
    }
}

impl ControlError {
    pub(crate) fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ControlError {
        let action = action.into();
        move |error| ControlError::Kube { action, error }
    }

    /// Exit code: 64 for bad options (nothing touched), 130 when interrupted, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ControlError::Options(_) => 64,
            ControlError::Interrupted(_) => 130,
            _ => 1,
        }
    }
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC; civil-from-days, H. Hinnant).
pub fn utc(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc(1_795_824_576), "2026-11-28T00:09:36Z");
        assert_eq!(super::utc(951_782_400), "2000-02-29T00:00:00Z");
    }
}
