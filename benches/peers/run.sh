#!/usr/bin/env bash
# The peer comparison: scoregate vs nginx and haproxy as TLS-terminating reverse proxies, each
# alone on core 0 (one worker / one tokio thread), the load generator and the backend on core 1,
# the same ECDSA P-256 certificate, the same backend (nginx `return 200` with a ~200-byte JSON),
# keep-alive to the backend everywhere. Repetitions alternate the targets; every figure is also a
# ratio to the better peer of the same repetition.
#
#   benches/peers/run.sh [REPETITIONS=3] [SECONDS=10]
#
# Writes benches/peers/results.md (the table, with date and machine) and results.jsonl.
# Measured today: keep-alive HTTP/1.1 (wrk, 64 connections) and HTTP/2 (h2load, 16 connections
# x 10 streams). Every process it starts is stopped by PID; every loop is bounded.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
REPS="${1:-3}"
SECS="${2:-10}"
OUT="$ROOT/benches/peers"

need=()
for c in nginx:nginx-light haproxy:haproxy wrk:wrk h2load:nghttp2-client taskset:util-linux openssl:openssl; do
  command -v "${c%%:*}" >/dev/null || need+=("${c#*:}")
done
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
(cd "$ROOT" && cargo build --release -q)

W="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() { for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; return 1; }

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
BODY='{"predictions":[{"label":"virginica","probability":0.9054},{"label":"not-virginica","probability":0.0012}],"model":"iris","version":"blue","took_ms":0.21,"request":"bench"}'
KEY="bench-key-0123456789abcdef"
BACKEND=$(free_port)

# The backend: nginx on core 1, answering every request with the same ~200-byte JSON.
mkdir -p "$W/backend"
cat >"$W/backend/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $W/backend/nginx.pid; error_log stderr error;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$BACKEND; location / { default_type application/json; return 200 '$BODY'; } } }
CONF
taskset -c 1 nginx -c "$W/backend/nginx.conf" -p "$W/backend" &
PIDS+=($!)
wait_port "$BACKEND"

start_target() { # name port -> pid in TARGET_PID
  local name=$1 port=$2 d="$W/$1"
  mkdir -p "$d"
  case $name in
    nginx)
      cat >"$d/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $d/nginx.pid; error_log stderr error;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000;
  upstream be { server 127.0.0.1:$BACKEND; keepalive 128; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$port ssl http2;
    ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem; ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
      taskset -c 0 nginx -c "$d/nginx.conf" -p "$d" & ;;
    haproxy)
      cat "$W/cert.pem" "$W/key.pem" >"$d/both.pem"
      cat >"$d/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 8192
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:$port ssl crt $d/both.pem alpn h2,http/1.1
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:$BACKEND
CONF
      taskset -c 0 haproxy -f "$d/haproxy.cfg" -db & ;;
    scoregate)
      cat >"$d/scoregate.toml" <<CONF
[listen]
tls = "127.0.0.1:$port"
[[tls.certificates]]
cert = "$W/cert.pem"
key = "$W/key.pem"
[[services]]
name = "iris"
primary_key = "$KEY"
replica_max_concurrent_requests = 1000
[[services.versions]]
name = "blue"
replicas = ["127.0.0.1:$BACKEND"]
CONF
      RUST_LOG=warn,rustls=error TOKIO_WORKER_THREADS=1 taskset -c 0 "$ROOT/target/release/scoregate" serve --config "$d/scoregate.toml" & ;;
  esac
  TARGET_PID=$!
  PIDS+=("$TARGET_PID")
  wait_port "$port"
}

URL_PATH=/api/v1/service/iris/score
cat >"$W/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
LUA
printf '%s' '{"data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}' >"$W/body.json"

: >"$OUT/results.jsonl"
targets=(nginx haproxy scoregate)
for rep in $(seq 1 "$REPS"); do
  # Alternate the order each repetition.
  order=("${targets[@]:$(( (rep-1) % 3 ))}" "${targets[@]:0:$(( (rep-1) % 3 ))}")
  for t in "${order[@]}"; do
    port=$(free_port)
    start_target "$t" "$port"
    url="https://127.0.0.1:$port$URL_PATH"
    taskset -c 1 wrk -t1 -c64 -d2s -s "$W/post.lua" "$url" >/dev/null 2>&1 || true   # warm-up
    ka=$(taskset -c 1 wrk -t1 -c64 -d"${SECS}s" -s "$W/post.lua" "$url" 2>&1)
    ka_rps=$(awk '/Requests\/sec/ {print $2}' <<<"$ka")
    ka_err=$(awk '/Non-2xx|Socket errors/ {e=1} END {print e+0}' <<<"$ka")
    h2=$(taskset -c 1 h2load -c 16 -m 10 -t 1 -D "$SECS" -d "$W/body.json" \
      -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$url" 2>&1)
    h2_rps=$(awk '/^finished in/ {print $4}' <<<"$h2")
    h2_fail=$(awk '/^requests:/ {print $10+$12+$14}' <<<"$h2")
    h2_non2xx=$(awk '/^status codes:/ {print $5+$7+$9}' <<<"$h2")
    printf '{"rep":%d,"target":"%s","keepalive_rps":%s,"keepalive_errors":%s,"h2_rps":%s,"h2_failed":%s,"h2_non2xx":%s}\n' \
      "$rep" "$t" "${ka_rps:-0}" "$ka_err" "${h2_rps:-0}" "${h2_fail:-0}" "${h2_non2xx:-0}" | tee -a "$OUT/results.jsonl"
    kill "$TARGET_PID" 2>/dev/null || true
    wait "$TARGET_PID" 2>/dev/null || true
  done
done

python3 - "$OUT" <<'PY'
import json, statistics, sys, datetime, platform, os
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/results.jsonl")]
def col(t, k): return [r[k] for r in rows if r["target"] == t]
def ratios(k):
    res = []
    for rep in sorted({r["rep"] for r in rows}):
        by = {r["target"]: r[k] for r in rows if r["rep"] == rep}
        best = max(by.get("nginx", 0), by.get("haproxy", 0))
        if best: res.append(by["scoregate"] / best)
    return res
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
lines = [f"# Peer comparison — {datetime.date.today()} on {cpu}, {os.cpu_count()} cores", "",
         "Each target alone on core 0 (1 worker), wrk/h2load and the backend on core 1. Median (min–max) of "
         f"{len({r['rep'] for r in rows})} repetitions; ratio = scoregate / better of nginx and haproxy, same repetition.", "",
         "| metric | nginx | haproxy | scoregate | ratio (median, min–max) |", "|---|---|---|---|---|"]
for k, name in [("keepalive_rps", "keep-alive TLS HTTP/1.1 req/s (wrk -c64)"), ("h2_rps", "HTTP/2 req/s (h2load -c16 -m10)")]:
    cells = []
    for t in ("nginx", "haproxy", "scoregate"):
        v = col(t, k)
        cells.append(f"{statistics.median(v):,.0f} ({min(v):,.0f}–{max(v):,.0f})" if v else "—")
    r = ratios(k)
    cells.append(f"{statistics.median(r):.2f}× ({min(r):.2f}–{max(r):.2f})" if r else "—")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
errors = sum(r["keepalive_errors"] + r["h2_failed"] + r["h2_non2xx"] for r in rows)
lines += ["", f"Errors in all runs: {errors}.", "",
          "Not measured yet (issue 6): full and resumed handshake rates, latency added at 2k req/s, RSS per idle "
          "connection, syscalls per request."]
open(f"{out}/results.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
