//! Waiting for an attachment to serve: the gateway Deployment's replicas ready and the load
//! balancer's address, with progress as `kubectl rollout status` gives it — a line when the state
//! changes and at least every 10 s, saying what is still missing and why, read from the gateway
//! Pods (not created, not scheduled, image pull failing, crashing, readiness probe failing) and
//! their Warning Events.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod, Service};
use kube::Api;
use kube::api::ListParams;

use super::cluster::Cluster;
use super::render;
use super::{ControlError, Env, Wait};

/// A progress line at least this often while waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Once the replicas are ready, how long a LoadBalancer Service may go without any sign of a
/// load-balancer controller (a cloud's emits `EnsuringLoadBalancer` within seconds) before the
/// wait concludes there is none and points at the NodePort instead.
const NO_LB_CONTROLLER_AFTER: Duration = Duration::from_secs(20);

/// What the rollout looks like now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollout {
    pub desired: i32,
    pub ready: i32,
    pub updated: i32,
    /// The load balancer's IP or host name.
    pub address: Option<String>,
    /// Set when no load-balancer controller acted on the Service: where to reach it instead.
    pub node_port: Option<NodePort>,
}

/// The gateway Service's NodePort and the nodes' addresses: the way in when no load balancer
/// exists (a cluster without a cloud provider).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePort {
    pub port: i32,
    pub nodes: Vec<String>,
}

impl Rollout {
    pub fn done(&self) -> bool {
        self.ready >= self.desired && self.updated >= self.desired && self.address.is_some()
    }
}

pub async fn rollout(c: &Cluster, ns: &str) -> Result<Rollout, ControlError> {
    let d = Api::<Deployment>::namespaced(c.client.clone(), ns)
        .get_opt(render::GATEWAY)
        .await
        .map_err(ControlError::kube("reading the gateway Deployment"))?;
    let s = Api::<Service>::namespaced(c.client.clone(), ns)
        .get_opt(render::GATEWAY)
        .await
        .map_err(ControlError::kube("reading the gateway Service"))?;
    let (desired, ready, updated) = d
        .map(|d| {
            let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let st = d.status.unwrap_or_default();
            (
                desired,
                st.ready_replicas.unwrap_or(0),
                st.updated_replicas.unwrap_or(0),
            )
        })
        .unwrap_or_default();
    let address = s
        .and_then(|s| s.status)
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .and_then(|i| i.into_iter().next())
        .and_then(|i| i.ip.or(i.hostname));
    Ok(Rollout {
        desired,
        ready,
        updated,
        address,
        node_port: None,
    })
}

/// The replicas are ready but no address came: is any load-balancer controller at work on the
/// Service (an Event about a load balancer)? If none, the NodePort and the nodes' addresses.
async fn without_load_balancer(c: &Cluster, ns: &str) -> Option<NodePort> {
    let events = Api::<Event>::namespaced(c.client.clone(), ns)
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=Service,involvedObject.name={}",
            render::GATEWAY
        )))
        .await
        .ok()?;
    if events.items.iter().any(|e| {
        e.reason
            .as_deref()
            .is_some_and(|r| r.contains("LoadBalancer"))
    }) {
        return None;
    }
    let svc = Api::<Service>::namespaced(c.client.clone(), ns)
        .get_opt(render::GATEWAY)
        .await
        .ok()??;
    let port = svc.spec?.ports?.into_iter().find_map(|p| p.node_port)?;
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(c.client.clone())
        .list(&ListParams::default())
        .await
        .ok()?
        .items
        .into_iter()
        .flat_map(|n| n.status.and_then(|s| s.addresses).unwrap_or_default())
        .filter(|a| a.type_ == "ExternalIP" || a.type_ == "InternalIP")
        .map(|a| a.address)
        .collect();
    Some(NodePort { port, nodes })
}

/// Why the rollout is not done: one phrase per gateway Pod that is not ready, and for the
/// address. Best effort: an API error here only leaves the reason out.
pub async fn missing(c: &Cluster, ns: &str, compute: &str, r: &Rollout) -> Vec<String> {
    let mut out = Vec::new();
    let lp = ListParams::default().labels(&render::pod_label_selector(compute));
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns)
        .list(&lp)
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let events = Api::<Event>::namespaced(c.client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    if r.ready < r.desired {
        if pods.is_empty() {
            out.push(format!(
                "no gateway Pod exists yet (the Deployment controller creates them: see \
                 `kubectl -n {ns} describe deployment {}`)",
                render::GATEWAY
            ));
        }
        for p in &pods {
            if let Some(why) = pod_problem(p, &events) {
                let name = p.metadata.name.as_deref().unwrap_or("?");
                out.push(format!("Pod {name}: {why}"));
            }
        }
    }
    if r.address.is_none() {
        out.push(format!(
            "the load balancer has no address yet (the cloud provider assigns it to Service \
             {ns}/{}; `kubectl -n {ns} describe service {}` shows its Events)",
            render::GATEWAY,
            render::GATEWAY
        ));
    }
    out
}

/// What keeps a Pod from being ready, from its status and its latest Warning Event.
fn pod_problem(p: &Pod, events: &[Event]) -> Option<String> {
    let st = p.status.as_ref();
    let ready = st
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if ready {
        return None;
    }
    let warning = latest_warning(p, events);
    let scheduled = st
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled");
    if let Some(c) = scheduled.filter(|c| c.status != "True") {
        return Some(format!(
            "not scheduled: {}",
            c.message
                .clone()
                .or(warning)
                .unwrap_or_else(|| "no node fits it".into())
        ));
    }
    if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none() {
        return Some(match warning {
            Some(w) => format!("waiting for a node: {w}"),
            None => "waiting for the scheduler to place it".into(),
        });
    }
    for cs in st
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
    {
        if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.clone().unwrap_or_default();
            let what = match reason.as_str() {
                "ErrImagePull" | "ImagePullBackOff" => "image pull failing",
                "CrashLoopBackOff" => "container keeps exiting",
                "CreateContainerConfigError" => "container configuration invalid",
                _ => "container waiting",
            };
            let detail = w.message.clone().or(warning).unwrap_or_default();
            let exit = cs
                .last_state
                .as_ref()
                .and_then(|l| l.terminated.as_ref())
                .map(|t| format!(" (last exit code {})", t.exit_code))
                .unwrap_or_default();
            return Some(
                format!("{what} ({reason}){exit}: {detail}")
                    .trim_end_matches(": ")
                    .to_string(),
            );
        }
        if cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some() && !cs.ready {
            return Some(format!(
                "running, not ready: {}",
                warning.unwrap_or_else(|| "the readiness probe has not passed yet".into())
            ));
        }
    }
    Some(match warning {
        Some(w) => format!("starting: {w}"),
        None => format!(
            "starting ({})",
            st.and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Pending".into())
        ),
    })
}

/// The newest Warning Event about Pod `p`, as "Reason: message".
fn latest_warning(p: &Pod, events: &[Event]) -> Option<String> {
    let name = p.metadata.name.as_deref()?;
    events
        .iter()
        .filter(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.involved_object.kind.as_deref() == Some("Pod")
                && e.involved_object.name.as_deref() == Some(name)
                && e.reason.as_deref().is_some_and(blocks)
        })
        .max_by_key(|e| {
            e.last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or(e.event_time.as_ref().map(|t| t.0))
        })
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.as_deref().unwrap_or("Warning"),
                e.message.as_deref().unwrap_or("").trim()
            )
        })
}

/// Whether a Warning Event's reason keeps a Pod from starting or being ready (others, such as
/// `MissingClusterDNS`, are noise while waiting).
fn blocks(reason: &str) -> bool {
    reason.starts_with("Failed")
        || matches!(
            reason,
            "BackOff" | "Unhealthy" | "NetworkNotReady" | "ErrImageNeverPull" | "InspectFailed"
        )
}

/// Wait until every replica is ready and the load balancer has an address: a progress line when
/// the state changes and at least every 10 s (elapsed time, what is awaited, what is missing);
/// on timeout, the last state and what to look at.
pub async fn wait_ready(
    c: &Cluster,
    ns: &str,
    compute: &str,
    wait: Wait,
    env: &Env,
) -> Result<Rollout, ControlError> {
    let start = Instant::now();
    let mut last: Option<(Rollout, Vec<String>)> = None;
    let mut said = Instant::now();
    let mut ready_since: Option<Instant> = None;
    loop {
        let mut r = rollout(c, ns).await?;
        let replicas_ready = r.ready >= r.desired && r.updated >= r.desired;
        if !replicas_ready {
            ready_since = None;
        } else if r.address.is_none()
            && ready_since.get_or_insert_with(Instant::now).elapsed() >= NO_LB_CONTROLLER_AFTER
            && let Some(np) = without_load_balancer(c, ns).await
        {
            env.step(format_args!(
                "  replicas ready {}/{}; no load balancer controller acted on Service {ns}/{} in \
                 {} s (no load balancer Event): this cluster has no cloud load balancer. The \
                 gateway is reachable on NodePort {} of every node ({}); with TLS, resolve the \
                 certificate's name to a node address ({} s)",
                r.ready,
                r.desired,
                render::GATEWAY,
                NO_LB_CONTROLLER_AFTER.as_secs(),
                np.port,
                np.nodes.join(", "),
                start.elapsed().as_secs()
            ));
            r.node_port = Some(np);
            return Ok(r);
        }
        if r.done() {
            env.step(format_args!(
                "  replicas ready {}/{}, load balancer address: {} ({} s)",
                r.ready,
                r.desired,
                r.address.as_deref().unwrap_or("?"),
                start.elapsed().as_secs()
            ));
            return Ok(r);
        }
        let why = missing(c, ns, compute, &r).await;
        let changed = last.as_ref() != Some(&(r.clone(), why.clone()));
        if changed || said.elapsed() >= PROGRESS_EVERY {
            env.step(format_args!(
                "  waiting ({} s of at most {} s): replicas ready {}/{}, load balancer address: {}{}",
                start.elapsed().as_secs(),
                wait.timeout.as_secs(),
                r.ready,
                r.desired,
                r.address.as_deref().unwrap_or("pending"),
                if changed { "" } else { " (no change)" }
            ));
            if changed {
                for w in &why {
                    env.step(format_args!("    - {w}"));
                }
            }
            said = Instant::now();
        }
        if start.elapsed() >= wait.timeout {
            return Err(ControlError::Timeout(format!(
                "timed out after {} s waiting for the gateway: {}/{} replicas ready, load balancer \
                 address {}{}. The objects are applied and the compute is recorded; run \
                 `scoregate status {compute}` to follow it, or `scoregate detach {compute}` to \
                 remove it.",
                wait.timeout.as_secs(),
                r.ready,
                r.desired,
                r.address.as_deref().unwrap_or("pending"),
                if why.is_empty() {
                    String::new()
                } else {
                    format!("; missing: {}", why.join("; "))
                }
            )));
        }
        last = Some((r, why));
        tokio::time::sleep(wait.poll).await;
    }
}
