#!/usr/bin/env bash
# The access log's cost: keep-alive TLS req/s (wrk, 64 connections, scoring POSTs) of nginx and
# scoregate, each with its access log off and on (written to a file: nginx's default format
# unbuffered, scoregate's `[access_log] enabled = true` on stderr redirected, text and JSON), each
# alone on core 0, the load and the backend on core 1, repetitions alternating the order.
#
#   benches/peers/access_log.sh [REPETITIONS=3] [SECONDS=10]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
REPS="${1:-3}"
SECS="${2:-10}"
. "$ROOT/benches/peers/common.sh"
install_missing nginx:nginx-light wrk:wrk taskset:util-linux openssl:openssl
(cd "$ROOT" && cargo build --release -q)

bench_workdir
ec_cert "$W"
start_backend "$W"
scoring_load "$W"

# start NAME PORT: nginx-off nginx-on scoregate-off scoregate-on scoregate-json
start() {
  local d="$W/$1"; mkdir -p "$d"; rm -f "$d/access.log"
  case $1 in
    nginx-*)
      local log="off"; [ "$1" = nginx-on ] && log="$d/access.log"
      cat >"$d/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $d/nginx.pid; error_log stderr error;
events { worker_connections 8192; }
http { access_log $log; keepalive_requests 1000000;
  upstream be { server 127.0.0.1:$BACKEND; keepalive 128; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$2 ssl; ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
      taskset -c 0 nginx -c "$d/nginx.conf" -p "$d" & ;;
    scoregate-*)
      scoregate_toml "$2" "$W/cert.pem" "$W/key.pem" "$BACKEND" "$KEY" >"$d/scoregate.toml"
      [ "$1" != scoregate-off ] && printf '[access_log]\nenabled = true\n' >>"$d/scoregate.toml"
      local fmt=text; [ "$1" = scoregate-json ] && fmt=json
      RUST_LOG=warn,scoregate::access=info,rustls=error TOKIO_WORKER_THREADS=1 SCOREGATE_LOG_FORMAT=$fmt \
        taskset -c 0 "$ROOT/target/release/scoregate" serve --config "$d/scoregate.toml" 2>"$d/access.log" & ;;
  esac
  PID=$!; PIDS+=("$PID")
  wait_port "$2"
}

targets=(nginx-off nginx-on scoregate-off scoregate-on scoregate-json)
: >"$W/rows"
for rep in $(seq 1 "$REPS"); do
  n=${#targets[@]}
  order=("${targets[@]:$(( (rep-1) % n ))}" "${targets[@]:0:$(( (rep-1) % n ))}")
  for t in "${order[@]}"; do
    port=$(free_port)
    start "$t" "$port"
    url="https://127.0.0.1:$port/api/v1/service/iris/score"
    taskset -c 1 wrk -t1 -c64 -d2s -s "$W/post.lua" "$url" >/dev/null 2>&1 || true
    out=$(taskset -c 1 wrk -t1 -c64 -d"${SECS}s" -s "$W/post.lua" "$url" 2>&1)
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    lines=0; [ -f "$W/$t/access.log" ] && lines=$(wc -l <"$W/$t/access.log")
    kill "$PID"; wait "$PID" 2>/dev/null || true
    echo "$rep $t $rps $lines" | tee -a "$W/rows"
  done
done
python3 - "$W/rows" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for rep, t, rps, lines in rows:
    by.setdefault(t, {})[int(rep)] = float(rps)
def med(t): return statistics.median(by[t].values())
print("| target | req/s (median) | with the log / without (same repetitions) |")
print("|---|---|---|")
for t in ("nginx-off", "nginx-on", "scoregate-off", "scoregate-on", "scoregate-json"):
    base = t.split("-")[0] + "-off"
    r = statistics.median(by[t][k] / by[base][k] for k in by[t])
    print(f"| {t} | {med(t):,.0f} | {r:.3f} |")
PY
