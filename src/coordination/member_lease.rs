//! What a member Lease says, as this gateway reads it, and the names the group's Leases take.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

use super::membership::{LEAVING, LOAD, PEER, RELEASED, VIEW};

/// What this gateway last saw of another member's Lease.
#[derive(Debug)]
pub(super) struct Seen {
    pub(super) peer: Option<SocketAddr>,
    pub(super) view: String,
    pub(super) released: String,
    pub(super) load: HashMap<(String, String), (u32, u32)>,
    pub(super) renew: Option<Timestamp>,
    pub(super) duration: Duration,
    /// It drains: no hand-overs to it, but its slots are its own until its Lease is gone.
    pub(super) leaving: bool,
    /// When its renewal (or anything it says) last changed, by this gateway's clock: a member
    /// is live for its duration after that (clock skew between nodes does not matter).
    pub(super) observed: Instant,
}

impl Seen {
    pub(super) fn from_lease(lease: &Lease, default_duration: Duration) -> Option<(String, Seen)> {
        let spec = lease.spec.as_ref()?;
        let id = spec.holder_identity.clone()?;
        let a = lease.metadata.annotations.clone().unwrap_or_default();
        let load = a
            .get(LOAD)
            .and_then(|l| serde_json::from_str::<BTreeMap<String, (u32, u32)>>(l).ok())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| {
                let (s, ver) = k.split_once('/')?;
                Some(((s.to_string(), ver.to_string()), v))
            })
            .collect();
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(default_duration, Duration::from_secs);
        Some((
            id,
            Seen {
                peer: a.get(PEER).and_then(|p| p.parse().ok()),
                view: a.get(VIEW).cloned().unwrap_or_default(),
                released: a.get(RELEASED).cloned().unwrap_or_default(),
                load,
                renew: spec.renew_time.as_ref().map(|t| t.0),
                duration,
                leaving: a.get(LEAVING).is_some_and(|v| v == "true"),
                observed: Instant::now(),
            },
        ))
    }

    /// Whether it was renewed more than its duration ago by the wall clock (a Lease left by a
    /// gateway that is gone, seen for the first time).
    pub(super) fn stale(&self, after: Duration) -> bool {
        self.renew.is_none_or(|t| {
            let age = Timestamp::now().duration_since(t);
            age.as_secs() > i64::try_from(after.as_secs()).unwrap_or(i64::MAX)
        })
    }
}

/// A Lease name from the group and the identity: lower-case, DNS-safe, at most 253 characters.
pub fn lease_name(group: &str, identity: &str) -> String {
    let id: String = identity
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut name = format!("{group}-gw-{}", id.trim_matches(|c| c == '-' || c == '.'));
    name.truncate(253);
    name.trim_end_matches(['-', '.']).to_string()
}

/// A short id of a member list (the same on every gateway for the same members).
pub(super) fn view_id(ids: &[String]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, ids.join("\n").as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_dns_safe() {
        assert_eq!(lease_name("scoregate", "gw-0"), "scoregate-gw-gw-0");
        assert_eq!(
            lease_name("scoregate", "Azureml_FE.pod/1"),
            "scoregate-gw-azureml-fe.pod-1"
        );
        assert!(lease_name("g", &"x".repeat(400)).len() <= 253);
    }

    #[test]
    fn view_ids_name_the_member_list() {
        let a = view_id(&["a".into(), "b".into()]);
        assert_eq!(a, view_id(&["a".into(), "b".into()]));
        assert_ne!(a, view_id(&["a".into(), "c".into()]));
        assert_eq!(a.len(), 16);
    }
}
