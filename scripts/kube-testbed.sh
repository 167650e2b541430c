#!/usr/bin/env bash
# The Kubernetes test bed: the real kube-apiserver (k8s.io/kubernetes v1.33) and etcd (v3.5),
# built from Go modules into a git-ignored cache, started on 127.0.0.1 with free ports.
#
#   scripts/kube-testbed.sh build            build once into .cache/testbed/bin (reused when present)
#   scripts/kube-testbed.sh start DIR        start etcd + apiserver, state and kubeconfig in DIR
#   scripts/kube-testbed.sh stop-apiserver DIR | start-apiserver DIR   (outage tests)
#   scripts/kube-testbed.sh stop DIR         stop both (by PID)
#   scripts/kube-testbed.sh h2spec           build h2spec (the HTTP/2 conformance suite) once and
#                                            print its path (tests/h2_server.rs runs it)
#   scripts/kube-testbed.sh cluster-build | cluster-start DIR | cluster-status DIR | cluster-stop DIR
#                                            a real one-node cluster: kubelet, containerd, real pods
#                                            (scripts/testbed-cluster.sh; root)
#
# DIR/kubeconfig authenticates as a cluster admin with a static token; DIR/env has the ports.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# Outside the work tree so every clone on a machine reuses one build (the Go caches help too).
CACHE="${SCOREGATE_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/scoregate/testbed}"
BIN="$CACHE/bin"
K8S_VERSION=v1.33.13
STAGING_VERSION=v0.33.13
ETCD_VERSION=v3.5.35

H2SPEC_VERSION=v2.2.1+incompatible

# h2spec (github.com/summerwind/h2spec): the HTTP/2 conformance suite, a real HTTP/2 peer.
h2spec() {
  if [ ! -x "$BIN/h2spec" ]; then
    mkdir -p "$BIN"
    GOBIN="$BIN" GOFLAGS=-mod=mod go install "github.com/summerwind/h2spec/cmd/h2spec@$H2SPEC_VERSION" >&2
  fi
  echo "$BIN/h2spec"
}

build() {
  h2spec >/dev/null
  if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/etcd" ]; then
    echo "testbed: reusing $BIN"
    return
  fi
  local start=$SECONDS src="$CACHE/src"
  mkdir -p "$src/apiserver" "$src/etcd" "$BIN"
  # kube-apiserver: k8s.io/kubernetes points its staging modules at v0.0.0; pin each to its release.
  (
    cd "$src/apiserver"
    [ -f go.mod ] || go mod init scoregate.local/testbed-apiserver >/dev/null 2>&1
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    local gomod
    gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
    grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging' "$gomod" | awk '{print $1}' | while read -r m; do
      go mod edit -replace="$m=$m@$STAGING_VERSION"
    done
    cat > tools.go <<'GO'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
GO
    go mod tidy >/dev/null
    go build -trimpath -ldflags=-s -o "$BIN/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
  )
  # etcd: a tiny main around etcdmain (Debian's etcd 3.4 is older than the API server supports).
  (
    cd "$src/etcd"
    [ -f go.mod ] || go mod init scoregate.local/testbed-etcd >/dev/null 2>&1
    cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    go mod tidy >/dev/null
    go build -trimpath -ldflags=-s -o "$BIN/etcd" .
  )
  echo "testbed: built kube-apiserver $K8S_VERSION and etcd $ETCD_VERSION in $((SECONDS - start)) s"
}

# free_ports N: N distinct free loopback ports, one per line (all held open until each is
# known, so two calls can never hand out the same port, as separate ones could).
free_ports() {
  python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

start_apiserver() {
  local dir="$1"
  # shellcheck disable=SC1091
  . "$dir/env"
  "$BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
    --tls-cert-file="$dir/pki/apiserver.pem" --tls-private-key-file="$dir/pki/apiserver-key.pem" \
    --token-auth-file="$dir/pki/tokens.csv" \
    --authorization-mode=RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$dir/pki/sa.pub" \
    --service-account-signing-key-file="$dir/pki/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --disable-admission-plugins=ServiceAccount \
    --enable-priority-and-fairness=false \
    >"$dir/apiserver.log" 2>&1 &
  echo $! >"$dir/apiserver.pid"
  local i
  for i in $(seq 1 600); do
    if curl -sk --max-time 2 -H "Authorization: Bearer $ADMIN_TOKEN" \
      "https://127.0.0.1:$API_PORT/readyz" 2>/dev/null | grep -q '^ok$'; then
      return 0
    fi
    if ! kill -0 "$(cat "$dir/apiserver.pid")" 2>/dev/null; then
      echo "testbed: kube-apiserver exited; see $dir/apiserver.log" >&2
      tail -20 "$dir/apiserver.log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "testbed: kube-apiserver not ready within 60 s" >&2
  return 1
}

start() {
  local dir="$1"
  build >/dev/null
  mkdir -p "$dir/pki"
  local pki="$dir/pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=testbed-ca -keyout "$pki/ca-key.pem" -out "$pki/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=kube-apiserver \
    -keyout "$pki/apiserver-key.pem" -out "$pki/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n' >"$pki/ext.cnf"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca-key.pem" \
    -CAcreateserial -days 2 -extfile "$pki/ext.cnf" -out "$pki/apiserver.pem" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  local token
  token="$(openssl rand -hex 24)"
  printf '%s,testbed-admin,testbed-admin,system:masters\n' "$token" >"$pki/tokens.csv"
  chmod 600 "$pki"/*key* "$pki/tokens.csv"
  local ports
  mapfile -t ports < <(free_ports 3)
  cat >"$dir/env" <<ENV
ETCD_PORT=${ports[0]}
ETCD_PEER_PORT=${ports[1]}
API_PORT=${ports[2]}
ADMIN_TOKEN=$token
ENV
  # shellcheck disable=SC1091
  . "$dir/env"
  "$BIN/etcd" --data-dir "$dir/etcd" --name testbed \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "testbed=http://127.0.0.1:$ETCD_PEER_PORT" \
    >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  start_apiserver "$dir"
  cat >"$dir/kubeconfig" <<KC
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
  chmod 600 "$dir/kubeconfig"
  echo "$dir/kubeconfig"
}

stop_pid() {
  local f="$1"
  [ -f "$f" ] || return 0
  local pid
  pid="$(cat "$f")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

# The real one-node cluster (kubelet, containerd, real pods) for the end-to-end tests.
# shellcheck source=scripts/testbed-cluster.sh
. "$ROOT/scripts/testbed-cluster.sh"

case "${1:-}" in
  build) build ;;
  cluster-build) cluster_build ;;
  cluster-start) cluster_start "${2:?DIR}" ;;
  cluster-status) cluster_status "${2:?DIR}" ;;
  cluster-stop) cluster_stop "${2:?DIR}" ;;
  cluster-image) cluster_image "${2:?DIR}" ;;
  h2spec) h2spec ;;
  start) start "${2:?DIR}" ;;
  start-apiserver) start_apiserver "${2:?DIR}" ;;
  stop-apiserver) stop_pid "${2:?DIR}/apiserver.pid" ;;
  stop) stop_pid "${2:?DIR}/apiserver.pid"; stop_pid "${2:?DIR}/etcd.pid" ;;
  *) sed -n '2,15p' "$0"; exit 64 ;;
esac
