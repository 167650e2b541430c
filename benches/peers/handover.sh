#!/usr/bin/env bash
# What several gateways acting as one cost at steady state (README "Running several gateway
# replicas"): open-loop scoring POSTs at RATE req/s on 16 keep-alive connections (plain HTTP,
# benches/handshakes rate-plain, latency from each request's scheduled time), the backend nginx
# answering ~200 bytes, its limit 1 (one slot: the requests wait for it in turn, the same way in
# every case), measured in turn, ROUNDS times:
#   alone   one gateway without [coordination];
#   owner   two gateways in a group (members from Leases on the real kube-apiserver test bed),
#           the load sent to the one that owns the slot;
#   handed  the same group, the load sent to the other one: every request handed over once;
#   direct  the backend itself.
# The gateways run on core 0, the load and the backend on core 1.
#
#   benches/peers/handover.sh [ROUNDS=3] [SECONDS=5] [RATE=1000]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
ROUNDS="${1:-3}"
SECS="${2:-5}"
RATE="${3:-1000}"
. "$ROOT/benches/peers/common.sh"
install_missing nginx:nginx-light taskset:util-linux
(cd "$ROOT" && cargo build --release -q)
HS="$(cd "$ROOT" && cargo bench --bench handshakes --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)"
case "$HS" in /*) ;; *) HS="$ROOT/$HS" ;; esac
[ -x "$HS" ] || { echo "benches/handshakes did not build" >&2; exit 1; }

cleanup_extra() { "$ROOT/scripts/kube-testbed.sh" stop "$W/tb" >/dev/null 2>&1 || true; }
bench_workdir
mkdir -p "$W/tb"
"$ROOT/scripts/kube-testbed.sh" start "$W/tb" >/dev/null
start_backend "$W"
head -c 32 /dev/urandom >"$W/peer.key"

# gateway NAME [group]: a gateway on core 0 (in the group when given); sets HTTP_PORT and
# ADMIN_PORT.
gateway() {
  local d="$W/$1"; mkdir -p "$d"
  HTTP_PORT=$(free_port); ADMIN_PORT=$(free_port)
  cat >"$d/scoregate.toml" <<CONF
[listen]
http = "127.0.0.1:$HTTP_PORT"
admin = "127.0.0.1:$ADMIN_PORT"
CONF
  if [ -n "${2:-}" ]; then
    cat >>"$d/scoregate.toml" <<CONF
peer = "127.0.0.1:$(free_port)"
[kubernetes]
kubeconfig = "$W/tb/kubeconfig"
identity = "$1"
[coordination]
group = "$2"
peer_key_file = "$W/peer.key"
CONF
  fi
  cat >>"$d/scoregate.toml" <<CONF
[[services]]
name = "iris"
primary_key = "$KEY"
replica_max_concurrent_requests = 1
max_request_wait_time = 5000
[[services.versions]]
name = "blue"
replicas = ["127.0.0.1:$BACKEND"]
CONF
  RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c 0 "$ROOT/target/release/scoregate" serve --config "$d/scoregate.toml" 2>"$d/log" &
  PIDS+=($!)
  wait_port "$HTTP_PORT"; wait_port "$ADMIN_PORT"
}

# ready ADMIN_PORT: wait until the gateway's first view settled.
ready() {
  for _ in $(seq 1 200); do
    curl -s "http://127.0.0.1:$1/metrics" | grep -q '^scoregate_coordination_state{state="coordinated"} 1' && return 0
    sleep 0.05
  done
  echo "gateway on admin port $1 did not settle" >&2; return 1
}

share() { curl -s "http://127.0.0.1:$1/metrics" | awk '/^scoregate_coordination_share_slots/ {print $2}'; }

gateway alone; ALONE=$HTTP_PORT
gateway gw-a bench; A_HTTP=$HTTP_PORT; A_ADMIN=$ADMIN_PORT
gateway gw-b bench; B_HTTP=$HTTP_PORT; B_ADMIN=$ADMIN_PORT
ready "$A_ADMIN"; ready "$B_ADMIN"
sleep 1
if [ "$(share "$A_ADMIN")" = 1 ]; then OWNER=$A_HTTP; OTHER=$B_HTTP; else OWNER=$B_HTTP; OTHER=$A_HTTP; fi

URL_PATH=/api/v1/service/iris/score
: >"$W/rows"
for round in $(seq 1 "$ROUNDS"); do
  for t in alone owner handed direct; do
    case $t in
      alone) addr="127.0.0.1:$ALONE"; path=$URL_PATH ;;
      owner) addr="127.0.0.1:$OWNER"; path=$URL_PATH ;;
      handed) addr="127.0.0.1:$OTHER"; path=$URL_PATH ;;
      direct) addr="127.0.0.1:$BACKEND"; path=/score ;;
    esac
    out=$(taskset -c 1 "$HS" "$addr" "$SECS" 16 rate-plain "$path" "$KEY" "$RATE")
    echo "$round $t $out" | tee -a "$W/rows"
  done
done
python3 - "$W/rows" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    rnd, t, js = line.split(" ", 2)
    rows.setdefault(t, []).append(json.loads(js))
def med(t, k): return statistics.median(r[k] for r in rows[t])
print("| target | p50 (µs) | p99 (µs) | errors |")
print("|---|---|---|---|")
for t in ("direct", "alone", "owner", "handed"):
    print(f"| {t} | {med(t, 'p50_us'):,.0f} | {med(t, 'p99_us'):,.0f} | {sum(r['errors'] for r in rows[t])} |")
print(f"\nthe hop (handed - owner): p50 {med('handed','p50_us') - med('owner','p50_us'):+,.0f} µs, "
      f"p99 {med('handed','p99_us') - med('owner','p99_us'):+,.0f} µs; "
      f"coordination without a hop (owner - alone): p50 {med('owner','p50_us') - med('alone','p50_us'):+,.0f} µs")
PY
