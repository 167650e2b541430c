# A real one-node Kubernetes cluster for the end-to-end tests, sourced by kube-testbed.sh (which
# sets BIN, CACHE, K8S_VERSION and the helpers). Next to etcd and kube-apiserver:
# kube-controller-manager, kube-scheduler, kubelet and kube-proxy (built from the same
# k8s.io/kubernetes module), containerd + runc from Debian, a CNI bridge for pods. Root only.
#
#   cluster-build        the binaries (cached in $BIN), the pause binary, the base images' parts
#   cluster-start DIR    start everything, state in DIR; DIR/kubeconfig, DIR/env (NODE_IP, ports)
#   cluster-status DIR   what runs, the node's readiness
#   cluster-stop DIR     stop everything, remove pods, mounts, iptables rules and links
#   cluster-image DIR    build the gateway image from the Dockerfile (buildah) and import it
#
# Addresses: the node is 10.220.255.1 on a bridge of its own (sgnode0: this kernel has no dummy
# links), pods 10.220.0.0/24 on the bridge sgcni0, Services 10.221.0.0/16. No cloud: a
# LoadBalancer Service never gets an address; the host reaches Services through NodePorts on the
# node address and pods by their IPs.

NODE_IP=10.220.255.1
POD_CIDR=10.220.0.0/24
SERVICE_CIDR=10.221.0.0/16
NODE_NAME=sgnode
PAUSE_IMAGE=registry.k8s.io/pause:3.10
DISTROLESS_IMAGE=gcr.io/distroless/cc-debian12:nonroot
# What distroless's cc image holds, from Debian's packages (glibc, libgcc, CA certificates, zone
# data, /etc/services and friends).
DISTROLESS_DEBS=(libc6 libgcc-s1 libssl3 ca-certificates tzdata base-files netbase)

cluster_packages() {
  local need=()
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  command -v buildah >/dev/null || need+=(buildah)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  command -v iptables >/dev/null || need+=(iptables)
  command -v conntrack >/dev/null || need+=(conntrack)
  command -v gcc >/dev/null || need+=(gcc libc6-dev)
  if ((${#need[@]})); then
    echo "testbed: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

cluster_build() {
  build >/dev/null
  cluster_packages
  local want=(kube-controller-manager kube-scheduler kubelet kube-proxy)
  local missing=() b
  for b in "${want[@]}"; do [ -x "$BIN/$b" ] || missing+=("$b"); done
  if ((${#missing[@]})); then
    local start=$SECONDS
    (
      cd "$CACHE/src/apiserver"
      {
        echo '//go:build tools'
        echo
        echo 'package tools'
        echo
        for b in "${want[@]}"; do echo "import _ \"k8s.io/kubernetes/cmd/$b\""; done
      } >tools_node.go
      go mod tidy >/dev/null
      for b in "${missing[@]}"; do
        go build -trimpath -ldflags=-s -o "$BIN/$b" "k8s.io/kubernetes/cmd/$b"
      done
    )
    echo "testbed: built ${missing[*]} $K8S_VERSION in $((SECONDS - start)) s" >&2
  fi
  if [ ! -x "$BIN/pause" ]; then
    # The sandbox's one process (what registry.k8s.io/pause runs): sleeps, reaps children,
    # exits on SIGINT/SIGTERM.
    cat >"$CACHE/src/pause.c" <<'C'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction q = {.sa_handler = quit}, r = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGINT, &q, NULL);
  sigaction(SIGTERM, &q, NULL);
  sigaction(SIGCHLD, &r, NULL);
  for (;;) pause();
}
C
    gcc -static -O2 -o "$BIN/pause" "$CACHE/src/pause.c"
  fi
  if [ ! -d "$CACHE/distroless" ]; then
    local debs="$CACHE/debs"
    mkdir -p "$debs" && (cd "$debs" && apt-get download -qq "${DISTROLESS_DEBS[@]}" >/dev/null)
    local root="$CACHE/distroless.tmp"
    rm -rf "$root" && mkdir -p "$root"
    local d
    for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$root"; done
    # distroless's users: root and nonroot (65532), no shell; a writable /tmp.
    mkdir -p "$root/etc" "$root/home/nonroot" "$root/tmp"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
    chmod 1777 "$root/tmp"
    chown 65532:65532 "$root/home/nonroot"
    # No shell and no package manager, as distroless: drop what the packages brought.
    rm -rf "$root/bin/sh" "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/lintian" \
      "$root/var/lib/dpkg" "$root/usr/bin/"* "$root/usr/sbin/"* "$root/sbin/"* "$root/bin/"* 2>/dev/null || true
    mv "$root" "$CACHE/distroless"
  fi
}

# The images every node needs, made locally (nothing is pulled): the sandbox image and the
# distroless base the Dockerfile's runtime stage starts from, under the names they are used by.
cluster_base_images() {
  if ! buildah inspect --type image "$PAUSE_IMAGE" >/dev/null 2>&1; then
    local c
    c=$(buildah from scratch)
    buildah copy "$c" "$BIN/pause" /pause >/dev/null
    buildah config --entrypoint '["/pause"]' --user 65535:65535 "$c"
    buildah commit -q "$c" "$PAUSE_IMAGE" >/dev/null
    buildah rm "$c" >/dev/null
  fi
  if ! buildah inspect --type image "$DISTROLESS_IMAGE" >/dev/null 2>&1; then
    local c
    c=$(buildah from scratch)
    buildah copy "$c" "$CACHE/distroless" / >/dev/null
    buildah config --user 65532:65532 --workingdir /home/nonroot --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt "$c"
    buildah commit -q "$c" "$DISTROLESS_IMAGE" >/dev/null
    buildah rm "$c" >/dev/null
  fi
}

# cluster-image DIR: the gateway image, `scoregate:0.1.0`, from the project's Dockerfile: its
# runtime stage on the local distroless base, the binary built on the host (BIN=host: the build
# stage's rust image cannot be pulled here); imported into the node's containerd.
cluster_image() {
  local dir="$1" ctx
  cluster_base_images
  (cd "$ROOT" && cargo build --release --locked -q --bin scoregate)
  ctx="$(mktemp -d)"
  mkdir -p "$ctx/target/release"
  cp "$ROOT/Dockerfile" "$ctx/"
  cp "$ROOT/target/release/scoregate" "$ctx/target/release/"
  buildah bud -q --pull=never --layers=false --build-arg BIN=host -t docker.io/library/scoregate:0.1.0 \
    -f "$ctx/Dockerfile" "$ctx" >/dev/null
  rm -rf "$ctx"
  for img in docker.io/library/scoregate:0.1.0 "$PAUSE_IMAGE"; do
    rm -f "$dir/image.tar"
    buildah push -q "$img" "oci-archive:$dir/image.tar:$img" >/dev/null
    ctr --address "$dir/containerd/containerd.sock" -n k8s.io images import --all-platforms "$dir/image.tar" >/dev/null
  done
  rm -f "$dir/image.tar"
  buildah images --format '{{.Size}}' docker.io/library/scoregate:0.1.0
}

# Wait until `$2` (a command) succeeds, at most $3 tenths of a second; $1 names what for errors.
wait_for() {
  local what="$1" cmd="$2" tries="$3" i
  for i in $(seq 1 "$tries"); do
    if eval "$cmd" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "testbed: $what not ready in time" >&2
  return 1
}

# Reads a Node as JSON: succeeds when its Ready condition is True.
node_ready() {
  python3 -c 'import json, sys
conds = json.load(sys.stdin).get("status", {}).get("conditions", [])
sys.exit(0 if any(c["type"] == "Ready" and c["status"] == "True" for c in conds) else 1)'
}

cluster_start() {
  local dir="$1"
  cluster_build
  [ "$(id -u)" = 0 ] || { echo "testbed: the cluster needs root (containerd, kubelet, iptables)" >&2; return 1; }
  mkdir -p "$dir/pki" "$dir/cni/net.d" "$dir/containerd" "$dir/kubelet" "$dir/logs"
  local pki="$dir/pki"
  # The node's address, on a link of its own, and the kernel settings pods and Services need.
  # (a bridge with no ports: the kernel may have no dummy links)
  ip link show sgnode0 >/dev/null 2>&1 || ip link add sgnode0 type bridge
  ip addr replace "$NODE_IP/32" dev sgnode0
  ip link set sgnode0 up
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
  # Certificates: a CA, the API server's (loopback, the node, the kubernetes Service's IP).
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=testbed-ca -keyout "$pki/ca-key.pem" -out "$pki/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=kube-apiserver \
    -keyout "$pki/apiserver-key.pem" -out "$pki/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:10.221.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n' \
    "$NODE_IP" >"$pki/ext.cnf"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca-key.pem" \
    -CAcreateserial -days 2 -extfile "$pki/ext.cnf" -out "$pki/apiserver.pem" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  local token ports
  token="$(openssl rand -hex 24)"
  printf '%s,testbed-admin,testbed-admin,system:masters\n' "$token" >"$pki/tokens.csv"
  chmod 600 "$pki"/*key* "$pki/tokens.csv"
  mapfile -t ports < <(free_ports 6)
  cat >"$dir/env" <<ENV
ETCD_PORT=${ports[0]}
ETCD_PEER_PORT=${ports[1]}
API_PORT=${ports[2]}
KUBELET_PORT=${ports[3]}
PROXY_HEALTHZ_PORT=${ports[4]}
PROXY_METRICS_PORT=${ports[5]}
ADMIN_TOKEN=$token
NODE_IP=$NODE_IP
ENV
  # shellcheck disable=SC1091
  . "$dir/env"
  local kc="$dir/kubeconfig"
  cat >"$kc" <<KC
apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $pki/ca.pem
users:
- name: testbed-admin
  user:
    token: $token
contexts:
- name: testbed
  context:
    cluster: testbed
    user: testbed-admin
current-context: testbed
KC
  chmod 600 "$kc"

  "$BIN/etcd" --data-dir "$dir/etcd" --name testbed \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "testbed=http://127.0.0.1:$ETCD_PEER_PORT" >"$dir/logs/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  # The API server on every address, advertising the node's: pods reach it through the
  # kubernetes Service (10.221.0.1:443) as in any cluster.
  "$BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=0.0.0.0 --advertise-address="$NODE_IP" --secure-port="$API_PORT" \
    --tls-cert-file="$pki/apiserver.pem" --tls-private-key-file="$pki/apiserver-key.pem" \
    --client-ca-file="$pki/ca.pem" \
    --token-auth-file="$pki/tokens.csv" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-node-port-range=30000-32767 \
    --kubelet-preferred-address-types=InternalIP \
    --enable-priority-and-fairness=false \
    >"$dir/logs/apiserver.log" 2>&1 &
  echo $! >"$dir/apiserver.pid"
  wait_for kube-apiserver "curl -sfk --max-time 2 -H 'Authorization: Bearer $token' https://127.0.0.1:$API_PORT/readyz" 600 || return 1

  "$BIN/kube-controller-manager" --kubeconfig="$kc" --leader-elect=false \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.pem" \
    --use-service-account-credentials=true --service-cluster-ip-range="$SERVICE_CIDR" \
    --cluster-signing-cert-file="$pki/ca.pem" --cluster-signing-key-file="$pki/ca-key.pem" \
    --bind-address=127.0.0.1 --secure-port=0 >"$dir/logs/controller-manager.log" 2>&1 &
  echo $! >"$dir/controller-manager.pid"
  "$BIN/kube-scheduler" --kubeconfig="$kc" --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port=0 >"$dir/logs/scheduler.log" 2>&1 &
  echo $! >"$dir/scheduler.pid"

  # containerd with the CRI plugin, its state in DIR; pods on a CNI bridge of their own.
  cat >"$dir/containerd/config.toml" <<TOML
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
[grpc]
  address = "$dir/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Root here lacks CAP_SYS_RESOURCE, so no process may lower its OOM score (the kubelet asks
  # -998 for sandboxes): keep every container's at least containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
TOML
  cat >"$dir/cni/net.d/10-scoregate.conflist" <<JSON
{"cniVersion": "0.4.0", "name": "scoregate-testbed", "plugins": [
  {"type": "bridge", "bridge": "sgcni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "dataDir": "$dir/cni/ipam",
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON
  containerd --config "$dir/containerd/config.toml" >"$dir/logs/containerd.log" 2>&1 &
  echo $! >"$dir/containerd.pid"
  wait_for containerd "ctr --address $dir/containerd/containerd.sock version" 300 || return 1
  cluster_image "$dir" >"$dir/image-size"

  cat >"$dir/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
containerRuntimeEndpoint: unix://$dir/containerd/containerd.sock
podCIDR: $POD_CIDR
maxPods: 60
resolvConf: /etc/resolv.conf
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
localStorageCapacityIsolation: false
serializeImagePulls: false
YAML
  "$BIN/kubelet" --config="$dir/kubelet/config.yaml" --kubeconfig="$kc" --root-dir="$dir/kubelet/root" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1 >"$dir/logs/kubelet.log" 2>&1 &
  echo $! >"$dir/kubelet.pid"
  "$BIN/kube-proxy" --kubeconfig="$kc" --proxy-mode=iptables --cluster-cidr="$POD_CIDR" \
    --hostname-override="$NODE_NAME" --nodeport-addresses="$NODE_IP/32" \
    --conntrack-max-per-core=0 --metrics-bind-address="127.0.0.1:$PROXY_METRICS_PORT" \
    --healthz-bind-address="127.0.0.1:$PROXY_HEALTHZ_PORT" \
    >"$dir/logs/kube-proxy.log" 2>&1 &
  echo $! >"$dir/kube-proxy.pid"
  wait_for "node $NODE_NAME" "curl -sfk --max-time 2 -H 'Authorization: Bearer $token' https://127.0.0.1:$API_PORT/api/v1/nodes/$NODE_NAME | node_ready" 900 || {
    tail -20 "$dir/logs/kubelet.log" >&2
    return 1
  }
  echo "$kc"
}

cluster_status() {
  local dir="$1" p
  for p in etcd apiserver controller-manager scheduler containerd kubelet kube-proxy; do
    if [ -f "$dir/$p.pid" ] && kill -0 "$(cat "$dir/$p.pid")" 2>/dev/null; then
      echo "$p: running (pid $(cat "$dir/$p.pid"))"
    else
      echo "$p: not running"
    fi
  done
}

cluster_stop() {
  local dir="$1" p
  for p in kube-proxy kubelet scheduler controller-manager; do stop_pid "$dir/$p.pid"; done
  # The pods' containers: their shims belong to this containerd's socket path.
  if [ -S "$dir/containerd/containerd.sock" ]; then
    local ctr=(ctr --address "$dir/containerd/containerd.sock" -n k8s.io)
    local t
    for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    sleep 0.5
    for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks delete -f "$t" >/dev/null 2>&1 || true; done
  fi
  stop_pid "$dir/containerd.pid"
  pkill -9 -f "containerd-shim-runc-v2 .*-address $dir/containerd/containerd.sock" 2>/dev/null || true
  stop_pid "$dir/apiserver.pid"
  stop_pid "$dir/etcd.pid"
  # Mounts left under DIR (pod volumes, sandboxes' /dev/shm, overlay roots), deepest first.
  awk -v d="$dir" '$2 ~ "^"d {print $2}' /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  ip link del sgcni0 2>/dev/null || true
  ip link del sgnode0 2>/dev/null || true
  # What the kubelet and the CNI plugins left in iptables: their jumps, then their chains.
  local table
  for table in filter nat mangle; do
    iptables -t "$table" -S 2>/dev/null | grep -E '^-A .*-j (KUBE-|CNI-)' | sed 's/^-A/-D/' |
      while read -r rule; do eval "iptables -t $table $rule" 2>/dev/null || true; done
    iptables -t "$table" -S 2>/dev/null | sed -n 's/^-N \(\(KUBE\|CNI\)-[^ ]*\)$/\1/p' |
      while read -r chain; do iptables -t "$table" -F "$chain" 2>/dev/null || true; done
    iptables -t "$table" -S 2>/dev/null | sed -n 's/^-N \(\(KUBE\|CNI\)-[^ ]*\)$/\1/p' |
      while read -r chain; do iptables -t "$table" -X "$chain" 2>/dev/null || true; done
  done
}
