#!/usr/bin/env bash
# Two builds of scoregate side by side, for a change that must not cost speed: the working tree
# against BASE (a git revision, built in a worktree of its own), each alone on core 0 (one tokio
# thread), wrk/h2load/the latency client and the nginx backend on core 1, the same certificate,
# repetitions alternating the order. Per build: keep-alive HTTP/1.1 scoring POSTs (wrk, 64
# connections), HTTP/2 (h2load, 16 connections x 10 streams) and the latency added at a fixed
# 2,000 req/s over 8 keep-alive connections (p50/p99 minus the same load sent to the backend
# directly). Medians, and the working tree's ratio to BASE.
#
#   benches/peers/ab.sh BASE [REPETITIONS=3] [SECONDS=10]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
. "$ROOT/benches/peers/common.sh"
BASE="${1:?BASE: a git revision (e.g. HEAD~3)}"
REPS="${2:-3}"
SECS="${3:-10}"
install_missing nginx:nginx-light wrk:wrk h2load:nghttp2-client taskset:util-linux openssl:openssl

cleanup_extra() { cleanup_base; }
bench_workdir

# The two binaries (BASE's target dir is kept between runs), and the latency client.
build_base "$BASE"
(cd "$ROOT" && cargo build --release -q --bin scoregate)
cp "$SCOREGATE_BASE_BIN" "$W/scoregate-base"
cp "$ROOT/target/release/scoregate" "$W/scoregate-head"
HS="$(cd "$ROOT" && cargo bench --bench handshakes --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)"
case "$HS" in /*) ;; *) HS="$ROOT/$HS" ;; esac
[ -x "$HS" ] || { echo "benches/handshakes did not build" >&2; exit 1; }

ec_cert "$W"
start_backend "$W"
URL_PATH=/api/v1/service/iris/score
scoring_load "$W"

: >"$W/rows"
for rep in $(seq 1 "$REPS"); do
  order=(base head)
  [ $((rep % 2)) = 0 ] && order=(head base)
  for t in "${order[@]}"; do
    port=$(free_port)
    mkdir -p "$W/$t"
    scoregate_toml "$port" "$W/cert.pem" "$W/key.pem" "$BACKEND" "$KEY" >"$W/$t/scoregate.toml"
    RUST_LOG=error TOKIO_WORKER_THREADS=1 taskset -c 0 "$W/scoregate-$t" serve --config "$W/$t/scoregate.toml" &
    PID=$!
    PIDS+=("$PID")
    wait_port "$port"
    url="https://127.0.0.1:$port$URL_PATH"
    taskset -c 1 wrk -t1 -c64 -d2s -s "$W/post.lua" "$url" >/dev/null 2>&1 || true
    ka=$(taskset -c 1 wrk -t1 -c64 -d"${SECS}s" -s "$W/post.lua" "$url" 2>&1)
    h2=$(taskset -c 1 h2load -c 16 -m 10 -t 1 -D "$SECS" -d "$W/body.json" \
      -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$url" 2>&1)
    lat=$(taskset -c 1 "$HS" "127.0.0.1:$port" "$SECS" 8 rate-tls "$URL_PATH" "$KEY" 2000)
    kill "$PID"
    wait "$PID" 2>/dev/null || true
    direct=$(taskset -c 1 "$HS" "127.0.0.1:$BACKEND" "$SECS" 8 rate-plain "$URL_PATH" "$KEY" 2000)
    python3 - "$rep" "$t" "$ka" "$h2" "$lat" "$direct" >>"$W/rows" <<'PY'
import json, re, sys
rep, t, ka, h2, lat, direct = sys.argv[1:]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", ka).group(1))
h2rps = float(re.search(r"finished in [^,]+, ([\d.]+) req/s", h2).group(1))
lat, direct = json.loads(lat), json.loads(direct)
print(json.dumps({"rep": int(rep), "target": t, "rps": rps, "h2_rps": h2rps,
                  "p50": lat["p50_us"] - direct["p50_us"], "p99": lat["p99_us"] - direct["p99_us"]}))
PY
    tail -1 "$W/rows"
  done
done
python3 - "$W/rows" "$BASE" "$(cd "$ROOT" && git describe --always --dirty)" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda t, k: statistics.median(r[k] for r in rows if r["target"] == t)
print(f"\n| metric (median of {len(rows) // 2}) | base {sys.argv[2]} | head {sys.argv[3]} | head / base |")
print("|---|---|---|---|")
for k, name in [("rps", "keep-alive TLS POST req/s (wrk -c64)"), ("h2_rps", "HTTP/2 req/s (h2load -c16 -m10)"),
                 ("p50", "latency added at 2,000 req/s, p50 (µs)"), ("p99", "latency added at 2,000 req/s, p99 (µs)")]:
    b, h = med("base", k), med("head", k)
    print(f"| {name} | {b:,.0f} | {h:,.0f} | {h / b:.2f} |" if b else f"| {name} | {b} | {h} | - |")
PY
