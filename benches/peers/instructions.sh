#!/usr/bin/env bash
# Instructions per proxied request, the yardstick for CPU work on this noisy machine (no hardware
# counters in the VM, req/s moving ±10% between runs): scoregate (`$SCOREGATE_BIN`, else this tree's
# release build) under callgrind serves N1 and
# then N2 keep-alive TLS requests (h2load --h1, 8 connections) in two fresh processes; the
# difference over N2 - N1 is one request's cost, startup and handshakes cancelled out. Prints the
# total and the functions that cost most per request.
#
#   benches/peers/instructions.sh [N1=2000] [N2=6000] [TOP=25]
#   PROTO=h2 benches/peers/instructions.sh ...   # over HTTP/2 instead (10 streams a connection)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
N1="${1:-2000}"
N2="${2:-6000}"
TOP="${3:-25}"
. "$ROOT/benches/peers/common.sh"
install_missing nginx:nginx-light h2load:nghttp2-client valgrind:valgrind openssl:openssl
(cd "$ROOT" && cargo build --release -q)

bench_workdir

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
BACKEND=$(free_port)
backend_conf "$BACKEND" "$W" >"$W/backend.conf"
nginx -c "$W/backend.conf" -p "$W" &
PIDS+=($!)
wait_port "$BACKEND"
printf '%s' '{"data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}' >"$W/body.json"

# Total instructions of a fresh scoregate that serves $1 requests, its profile in $2.
serve() {
  local p
  p=$(free_port)
  scoregate_toml "$p" "$W/cert.pem" "$W/key.pem" "$BACKEND" "$KEY" >"$W/sg.toml"
  RUST_LOG=warn TOKIO_WORKER_THREADS=1 valgrind -q --tool=callgrind --callgrind-out-file="$2" \
    "${SCOREGATE_BIN:-$ROOT/target/release/scoregate}" serve --config "$W/sg.toml" 2>"$W/valgrind.err" &
  local sg=$!
  PIDS+=("$sg")
  wait_port "$p" 600 || { cat "$W/valgrind.err" >&2; return 1; }
  local mode=(--h1)
  [ "${PROTO:-h1}" = h2 ] && mode=(-m 10)
  h2load -n "$1" -c 8 -t 1 "${mode[@]}" -d "$W/body.json" -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' "https://127.0.0.1:$p/api/v1/service/iris/score" >"$W/h2load.txt"
  grep -q "$1 succeeded" "$W/h2load.txt" || { cat "$W/h2load.txt" >&2; return 1; }
  kill -TERM "$sg"
  wait "$sg" || true
}
serve "$N1" "$W/a.out"
serve "$N2" "$W/b.out"
python3 - "$W/a.out" "$W/b.out" "$((N2 - N1))" "$TOP" <<'PY'
import re, subprocess, sys
def profile(path):
    out = subprocess.run(["callgrind_annotate", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    cost = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(?:\?\?\?:|\S+\.(?:c|S|h|rs):)?(.*?)(?: \[.*\])?$", line)
        if m and "PROGRAM TOTALS" not in line:
            cost[m.group(2)] = cost.get(m.group(2), 0) + int(m.group(1).replace(",", ""))
    return cost
a, b = profile(sys.argv[1]), profile(sys.argv[2])
n, top = int(sys.argv[3]), int(sys.argv[4])
per = {k: (b.get(k, 0) - a.get(k, 0)) / n for k in set(a) | set(b)}
print(f"instructions per request: {sum(per.values()):,.0f}")
for name, ir in sorted(per.items(), key=lambda kv: -kv[1])[:top]:
    print(f"{ir:9,.0f}  {name[:120]}")
PY
