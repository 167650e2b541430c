//! `attach`, `detach`, `update` and `status`: check everything, then touch the cluster.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::cluster::{self, Cluster};
use super::registry::{Entry, Workspace};
use super::render;
use super::rollout;
use super::spec::{self, ChosenTls, OptionError};
use super::{Attachment, ControlError, Env, Purpose, TlsMode, TlsOptions, Wait};

/// What attach sets and update may change; `None`/empty: the default (attach) or unchanged
/// (update).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub purpose: Option<String>,
    pub load_balancer: Option<String>,
    pub subnet: Option<String>,
    pub tls: TlsOptions,
    pub image: Option<String>,
}

/// `scoregate attach` as options.
#[derive(Debug, Clone)]
pub struct AttachOptions {
    pub compute: String,
    pub settings: Settings,
    pub namespace: Option<String>,
    /// Allow plain HTTP behind a public load balancer.
    pub allow_public_plaintext: bool,
    pub wait: Wait,
    /// Print the objects instead of touching the cluster (no Secret: it would hold the key).
    pub dry_run: bool,
}

/// `scoregate update` as options: only what is given changes.
#[derive(Debug, Clone)]
pub struct UpdateOptions {
    pub compute: String,
    pub settings: Settings,
    /// Allow plain HTTP behind a public load balancer.
    pub allow_public_plaintext: bool,
    /// Confirmed: drop the TLS Secret when the change removes it.
    pub yes: bool,
    pub wait: Wait,
}

/// `--purpose`, with Azure's message when it is neither value.
fn parse_purpose(s: &str, errs: &mut Vec<OptionError>) -> Option<Purpose> {
    Purpose::parse(s)
        .map_err(|message| {
            errs.push(OptionError {
                field: "--purpose".into(),
                message,
            })
        })
        .ok()
}

fn refuse_options(errs: Vec<OptionError>) -> Result<(), ControlError> {
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ControlError::Options(errs))
    }
}

/// Plain HTTP in front of the internet sends scoring keys in clear text: refused unless asked.
fn check_plaintext(a: &Attachment, allowed: bool, errs: &mut Vec<OptionError>) {
    if a.tls == TlsMode::Disabled && a.load_balancer == spec::LoadBalancerType::PublicIp && !allowed
    {
        errs.push(OptionError {
            field: "--no-ssl".into(),
            message: "TLS can be turned off only behind an InternalLoadBalancer: on a PublicIp \
                      endpoint scoring keys would cross the internet in clear text. Use \
                      --load-balancer InternalLoadBalancer, or --allow-public-plaintext to do it anyway"
                .into(),
        });
    }
}

/// The cluster's capacity against the purpose: refused below FastProd's minimum, else one
/// verdict line (a warning below DevTest's recommendation).
async fn check_capacity(c: &Cluster, purpose: Purpose) -> Result<String, ControlError> {
    let (vcpus, nodes) = cluster::vcpus(c).await?;
    match purpose {
        Purpose::FastProd if vcpus < spec::FASTPROD_MIN_VCPUS => {
            Err(ControlError::Refused(format!(
                "Cluster purpose FastProd needs at least {} vCPUs; the cluster has {vcpus} on {nodes} \
             schedulable node(s). Add nodes (e.g. 3 × 4-vCPU VMs), or attach with --purpose DevTest.",
                spec::FASTPROD_MIN_VCPUS
            )))
        }
        Purpose::DevTest if vcpus < spec::DEVTEST_MIN_VCPUS => Ok(format!(
            "  warning: {vcpus} vCPUs on {nodes} schedulable node(s), below the {} recommended \
             for DevTest; attaching anyway (the gateway pod may stay Pending until a node fits it)",
            spec::DEVTEST_MIN_VCPUS
        )),
        _ => Ok(format!(
            "  {vcpus} vCPUs on {nodes} schedulable node(s): enough for {}",
            purpose.as_str()
        )),
    }
}

/// The objects that must stay (the Secret of a custom mode stays even when not re-rendered).
fn keep_set(a: &Attachment, objects: &[Value]) -> BTreeSet<String> {
    let mut keep: BTreeSet<String> = objects.iter().map(cluster::describe).collect();
    keep.insert(format!("Secret/{}/{}", a.namespace, render::PEER_SECRET));
    if matches!(a.tls, TlsMode::Custom { .. }) {
        keep.insert(format!("Secret/{}/{}", a.namespace, render::TLS_SECRET));
    }
    keep
}

/// The scoring endpoint users call: through the load balancer, or the NodePort when the
/// cluster has no load balancer.
pub fn endpoint(a: &Attachment, r: Option<&rollout::Rollout>) -> String {
    let scheme = if a.tls == TlsMode::Disabled {
        "http"
    } else {
        "https"
    };
    let path = "/api/v1/service/<service-name>/score";
    if let Some(np) = r.and_then(|r| {
        r.address
            .is_none()
            .then_some(r.node_port.as_ref())
            .flatten()
    }) {
        // With TLS the certificate names the host: the name, resolved to a node's address.
        let node = np.nodes.first().map_or("<node address>", String::as_str);
        let host = a.tls.host().unwrap_or_else(|| node.to_string());
        return format!("{scheme}://{host}:{}{path}", np.port);
    }
    let host = a
        .tls
        .host()
        .or_else(|| r.and_then(|r| r.address.clone()))
        .unwrap_or_else(|| "<load balancer address>".into());
    format!("{scheme}://{host}{path}")
}

fn report(a: &Attachment, workspace: &str, r: Option<&rollout::Rollout>) -> Value {
    json!({
        "compute": a.compute,
        "workspace": workspace,
        "namespace": a.namespace,
        "purpose": a.purpose.as_str(),
        "load_balancer": a.load_balancer.as_str(),
        "subnet": a.subnet,
        "tls": a.tls.label(),
        "host": a.tls.host(),
        "replicas_ready": r.map(|r| format!("{}/{}", r.ready, r.desired)),
        "address": r.and_then(|r| r.address.clone()),
        "node_port": r.and_then(|r| r.node_port.as_ref()).map(|n| n.port),
        "node_addresses": r.and_then(|r| r.node_port.as_ref()).map(|n| n.nodes.clone()),
        "endpoint": endpoint(a, r),
    })
}

/// Apply the objects, prune what the attachment no longer needs, record the marker.
async fn apply_phase(
    c: &Cluster,
    a: &Attachment,
    pem: Option<&spec::PemPair>,
    env: &Env,
) -> Result<(Vec<String>, Vec<String>), ControlError> {
    let objects = render::objects(a, pem);
    env.step(format_args!(
        "[1/3] applying {} objects (field manager {})",
        objects.len(),
        render::MANAGER
    ));
    let applied = cluster::apply_all(c, &objects, env).await?;
    // After the objects (the gateway pods wait for it to mount): an operator whose apply fails
    // hears about that first.
    cluster::ensure_peer_secret(c, a, env).await?;
    let removed = cluster::prune(c, &a.compute, &a.namespace, &keep_set(a, &objects), env).await?;
    cluster::write_marker(c, a).await?;
    Ok((applied, removed))
}

async fn wait_phase(
    c: &Cluster,
    a: &Attachment,
    wait: Wait,
    env: &Env,
) -> Result<Option<rollout::Rollout>, ControlError> {
    if !wait.enabled {
        // Not waiting, but say what is there now (an update keeps its address).
        return rollout::rollout(c, &a.namespace).await.map(Some);
    }
    env.step("[2/3] waiting for the gateway replicas and [3/3] the load balancer address");
    let compute = &a.compute;
    super::interruptible(
        rollout::wait_ready(c, &a.namespace, compute, wait, env),
        || {
            format!(
                "the objects are applied and compute {compute} is recorded in the workspace; \
                 the gateway keeps rolling out without this command. Follow it with `scoregate \
                 status {compute}`, or remove it with `scoregate detach {compute}`"
            )
        },
    )
    .await
    .map(Some)
}

/// Attach a cluster: check options, the workspace, the cluster (version, capacity, marker),
/// then apply, record and wait.
pub async fn attach(o: AttachOptions, env: &Env) -> Result<Value, ControlError> {
    let mut errs: Vec<OptionError> = spec::compute_name_errors(&o.compute)
        .into_iter()
        .map(|message| OptionError {
            field: "compute name".into(),
            message,
        })
        .collect();
    let set = &o.settings;
    let purpose = parse_purpose(set.purpose.as_deref().unwrap_or("FastProd"), &mut errs);
    let lb = spec::choose_load_balancer(
        set.load_balancer.as_deref(),
        set.subnet.as_deref(),
        None,
        &mut errs,
    );
    let tls = spec::choose_tls(&set.tls, None, &mut errs);
    let namespace = o
        .namespace
        .clone()
        .unwrap_or_else(|| render::DEFAULT_NAMESPACE.into());
    if let Err(e) = crate::config::validate_service_name(&namespace) {
        errs.push(OptionError {
            field: "--namespace".into(),
            message: format!("{namespace:?} is not a namespace name: {e}"),
        });
    }
    let mut ws = Workspace::load(&env.workspace)?;
    let (Some(purpose), Some((load_balancer, subnet)), Some(ChosenTls { mode, pem, .. })) =
        (purpose, lb, tls)
    else {
        return Err(ControlError::Options(errs));
    };
    let mut a = Attachment {
        compute: o.compute.clone(),
        workspace: ws.workspace.clone(),
        namespace,
        purpose,
        load_balancer,
        subnet,
        tls: mode,
        image: set
            .image
            .clone()
            .unwrap_or_else(|| render::DEFAULT_IMAGE.into()),
        attached_at: super::now_unix(),
        created_namespace: false,
    };
    check_plaintext(&a, o.allow_public_plaintext, &mut errs);
    refuse_options(errs)?;
    if o.dry_run {
        let mut items = vec![render::namespace(&a)];
        items.extend(render::objects(&a, None));
        return Ok(json!({"apiVersion": "v1", "kind": "List", "items": items}));
    }
    if let Some(e) = ws.computes.get(&o.compute) {
        return Err(ControlError::Refused(format!(
            "Compute {:?} already exists in workspace {:?} (cluster {}, namespace {}). Choose \
             another name, or detach it first: scoregate detach {}",
            o.compute, ws.workspace, e.server, e.namespace, o.compute
        )));
    }

    let c = cluster::connect(env.kubeconfig.as_deref(), env.context.as_deref()).await?;
    env.step(format_args!("cluster {}", c.server));
    let (major, minor, git) = cluster::server_version(&c).await?;
    cluster::check_version((major, minor), &git, &env.supported_versions)?;
    env.step(format_args!(
        "  Kubernetes {major}.{minor} ({git}): supported"
    ));
    env.step(check_capacity(&c, purpose).await?);
    if let Some(m) = cluster::read_marker(&c).await? {
        return Err(ControlError::Refused(format!(
            "This cluster is already attached as compute {:?} of workspace {:?} (namespace {}, \
             since {}). One cluster serves one attachment: detach it first (scoregate detach {}) \
             or attach another cluster.",
            m.compute,
            m.workspace,
            m.namespace,
            super::utc(m.attached_at),
            m.compute
        )));
    }
    a.created_namespace =
        super::interruptible(cluster::ensure_namespace(&c, &a, o.wait, env), || {
            format!(
                "nothing was applied and compute {} is not recorded; run the same attach again",
                a.compute
            )
        })
        .await?;
    let (applied, _) = apply_phase(&c, &a, pem.as_ref(), env).await?;
    // Recorded before waiting: the attachment exists from here on (a timeout leaves it listed).
    let (kubeconfig, context) =
        cluster::config_source(env.kubeconfig.as_deref(), env.context.as_deref());
    ws.computes.insert(
        a.compute.clone(),
        Entry {
            kubeconfig,
            context,
            server: c.server.clone(),
            namespace: a.namespace.clone(),
            attached_at: a.attached_at,
        },
    );
    ws.save(&env.workspace)?;
    let rollout = wait_phase(&c, &a, o.wait, env).await?;
    let mut out = report(&a, &ws.workspace, rollout.as_ref());
    out["applied"] = json!(applied);
    env.step(format_args!(
        "scoring endpoint: {}",
        out["endpoint"].as_str().unwrap_or_default()
    ));
    Ok(out)
}

/// The registry entry (if any) and a connection: flags first, then what the entry recorded.
pub async fn locate(
    compute: &str,
    env: &Env,
) -> Result<(Workspace, Option<Entry>, Cluster), ControlError> {
    let ws = Workspace::load(&env.workspace)?;
    let entry = ws.computes.get(compute).cloned();
    if entry.is_none() && env.kubeconfig.is_none() && env.context.is_none() {
        return Err(ControlError::Refused(format!(
            "compute {compute:?} is not in workspace {:?} ({}); attach it with `scoregate attach \
             {compute}`, or name its cluster with --kubeconfig/--context",
            ws.workspace,
            env.workspace.display()
        )));
    }
    let kubeconfig = env
        .kubeconfig
        .clone()
        .or_else(|| entry.as_ref().and_then(|e| e.kubeconfig.clone()));
    let context = env
        .context
        .clone()
        .or_else(|| entry.as_ref().and_then(|e| e.context.clone()));
    let c = cluster::connect(kubeconfig.as_deref(), context.as_deref())
        .await
        .map_err(|e| match e {
            ControlError::Connect(source) => ControlError::Unreachable {
                hint: match (&kubeconfig, &entry) {
                    (None, _) => format!(
                        "no kubeconfig names the cluster of compute {compute:?} (none was \
                         recorded when it was attached, none is given); pass --kubeconfig FILE \
                         (and --context NAME)"
                    ),
                    (Some(p), _) => format!(
                        "cannot use kubeconfig {} for compute {compute:?}; pass --kubeconfig \
                         FILE (and --context NAME) naming its cluster",
                        p.display()
                    ),
                },
                source,
            },
            other => other,
        })?;
    Ok((ws, entry, c))
}

/// The marker of `compute`, refusing a cluster attached under another name.
pub async fn attachment(compute: &str, c: &Cluster) -> Result<Attachment, ControlError> {
    match cluster::read_marker(c).await? {
        Some(a) if a.compute == compute => Ok(a),
        Some(a) => Err(ControlError::Refused(format!(
            "the cluster at {} is attached as compute {:?}, not {compute:?}",
            c.server, a.compute
        ))),
        None => Err(ControlError::Refused(format!(
            "compute {compute:?} is not attached to the cluster at {} (no marker \
             {}/{}); attach it with `scoregate attach {compute}`",
            c.server,
            render::MARKER_NAMESPACE,
            render::MARKER
        ))),
    }
}

/// Detach: remove what attach installed (by ownership label), the marker and the registry
/// entry. Never the cluster, its nodes or the scoring workloads; harmless to repeat.
pub async fn detach(compute: &str, env: &Env) -> Result<Value, ControlError> {
    let (mut ws, entry, c) = match locate(compute, env).await {
        Ok(x) => x,
        Err(ControlError::Refused(_)) => {
            env.step(format_args!(
                "compute {compute:?}: nothing to remove (not in the workspace)"
            ));
            return Ok(json!({"compute": compute, "removed": [], "namespace_deleted": false}));
        }
        Err(e) => return Err(e),
    };
    let marker = cluster::read_marker(&c).await?;
    if let Some(m) = marker.as_ref().filter(|m| m.compute != compute) {
        return Err(ControlError::Refused(format!(
            "the cluster at {} is attached as compute {:?}, not {compute:?}; nothing removed",
            c.server, m.compute
        )));
    }
    let namespace = marker
        .as_ref()
        .map(|m| m.namespace.clone())
        .or_else(|| entry.as_ref().map(|e| e.namespace.clone()))
        .unwrap_or_else(|| render::DEFAULT_NAMESPACE.into());
    env.step(format_args!(
        "detaching compute {compute} (namespace {namespace})"
    ));
    let mut removed = cluster::prune(&c, compute, &namespace, &BTreeSet::new(), env).await?;
    if cluster::delete_marker(&c).await? {
        removed.push(format!(
            "ConfigMap/{}/{}",
            render::MARKER_NAMESPACE,
            render::MARKER
        ));
    }
    let mut namespace_deleted = false;
    if marker.as_ref().is_some_and(|m| m.created_namespace) {
        namespace_deleted = cluster::delete_namespace_if_empty(&c, &namespace, compute).await?;
        if namespace_deleted {
            removed.push(format!("Namespace/{namespace}"));
        } else {
            env.step(format_args!(
                "  kept Namespace/{namespace}: other objects live in it"
            ));
        }
    }
    if ws.computes.remove(compute).is_some() {
        ws.save(&env.workspace)?;
        env.step(format_args!(
            "  removed {compute} from workspace {}",
            ws.workspace
        ));
    }
    if removed.is_empty() {
        env.step("  nothing left to remove");
    }
    Ok(json!({"compute": compute, "removed": removed, "namespace_deleted": namespace_deleted}))
}

/// Change purpose, load balancer or TLS mode in place; the running gateways pick up a new
/// Secret by their watch and a new config by a rolling update (no downtime: maxUnavailable 0).
pub async fn update(o: UpdateOptions, env: &Env) -> Result<Value, ControlError> {
    let (ws, _, c) = locate(&o.compute, env).await?;
    let current = attachment(&o.compute, &c).await?;
    let mut errs = Vec::new();
    let mut a = current.clone();
    let set = &o.settings;
    if let Some(p) = set
        .purpose
        .as_deref()
        .and_then(|p| parse_purpose(p, &mut errs))
    {
        a.purpose = p;
    }
    if let Some((lb, subnet)) = spec::choose_load_balancer(
        set.load_balancer.as_deref(),
        set.subnet.as_deref(),
        Some((current.load_balancer, current.subnet.clone())),
        &mut errs,
    ) {
        a.load_balancer = lb;
        a.subnet = subnet;
    }
    let mut pem = None;
    if !set.tls.is_empty() {
        let keep = match &current.tls {
            TlsMode::Auto { label, suffix, .. } => Some((label.as_str(), suffix.as_str())),
            _ => None,
        };
        if let Some(t) = spec::choose_tls(&set.tls, keep, &mut errs) {
            a.tls = t.mode;
            pem = t.pem;
        }
    }
    if let Some(image) = &set.image {
        a.image = image.clone();
    }
    check_plaintext(&a, o.allow_public_plaintext, &mut errs);
    refuse_options(errs)?;
    if a == current && pem.is_none() {
        env.step(format_args!("compute {}: nothing to change", a.compute));
        return Ok(report(&a, &ws.workspace, None));
    }
    // Leaving a custom certificate deletes its Secret, the only copy the cluster has of the key.
    if matches!(current.tls, TlsMode::Custom { .. }) && !matches!(a.tls, TlsMode::Custom { .. }) {
        super::confirm(
            &format!(
                "This deletes Secret {}/{} (your certificate and its private key); keep a copy \
                 first with `scoregate cert export {} --dir DIR`.",
                a.namespace,
                render::TLS_SECRET,
                a.compute
            ),
            o.yes,
        )?;
    }
    if a.purpose != current.purpose {
        env.step(check_capacity(&c, a.purpose).await?);
    }
    let mut changes = Vec::new();
    for (what, old, new) in [
        (
            "purpose",
            current.purpose.as_str().to_string(),
            a.purpose.as_str().to_string(),
        ),
        ("load balancer", lb_label(&current), lb_label(&a)),
        ("TLS", tls_label(&current.tls), tls_label(&a.tls)),
        ("image", current.image.clone(), a.image.clone()),
    ] {
        if old != new {
            changes.push(format!("{what} {old} → {new}"));
        }
    }
    if pem.is_some() && changes.iter().all(|c| !c.starts_with("TLS")) {
        changes.push("new certificate".into());
    }
    env.step(format_args!(
        "updating compute {}: {}",
        a.compute,
        changes.join(", ")
    ));
    let (applied, removed) = apply_phase(&c, &a, pem.as_ref(), env).await?;
    let rollout = wait_phase(&c, &a, o.wait, env).await?;
    let mut out = report(&a, &ws.workspace, rollout.as_ref());
    out["applied"] = json!(applied);
    out["removed"] = json!(removed);
    Ok(out)
}

/// Attachment, purpose, load balancer type and address, TLS mode, replicas.
pub async fn status(compute: &str, env: &Env) -> Result<Value, ControlError> {
    let (ws, _, c) = locate(compute, env).await?;
    let a = attachment(compute, &c).await?;
    let r = rollout::rollout(&c, &a.namespace).await?;
    let mut out = report(&a, &ws.workspace, Some(&r));
    out["cluster"] = json!(c.server);
    out["attached_at"] = json!(super::utc(a.attached_at));
    out["image"] = json!(a.image);
    Ok(out)
}

fn lb_label(a: &Attachment) -> String {
    match &a.subnet {
        Some(subnet) => format!("{} ({subnet})", a.load_balancer.as_str()),
        None => a.load_balancer.as_str().to_string(),
    }
}

fn tls_label(t: &TlsMode) -> String {
    match t.host() {
        Some(h) => format!("{} ({h})", t.label()),
        None => t.label().to_string(),
    }
}
