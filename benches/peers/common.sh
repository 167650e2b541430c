# Shared by run.sh and instructions.sh (sourced).

KEY="bench-key-0123456789abcdef"
# scoregate's per-replica limit in the peer runs: nginx and haproxy queue nothing, so by default
# neither does scoregate here. `REPLICA_LIMIT=1` runs it with Azure ML's default (one request at
# a time per replica; the rest wait in the gateway's queue).
REPLICA_LIMIT="${REPLICA_LIMIT:-1000}"
# The backend's answer: a ~200-byte scoring JSON.
BODY='{"predictions":[{"label":"virginica","probability":0.9054},{"label":"not-virginica","probability":0.0012}],"model":"iris","version":"blue","took_ms":0.21,"request":"bench"}'

# bench_workdir: a scratch directory in W and a list PIDS of the processes to stop, both undone
# on exit (every PID stopped, then killed if it lingers; `cleanup_extra`, when the script defines
# one, run before the directory goes).
bench_workdir() {
  W="$(mktemp -d)"
  PIDS=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  if declare -F cleanup_extra >/dev/null; then cleanup_extra; fi
  rm -rf "$W"
}

# build_base REV: scoregate at git revision REV, built in a worktree of its own ($W/base, removed
# on exit) into target/ab-base (kept between runs); sets SCOREGATE_BASE_BIN (start_target's
# scoregate-base). After bench_workdir.
build_base() {
  (cd "$ROOT" && git worktree add -q --detach "$W/base" "$1")
  (cd "$W/base" && CARGO_TARGET_DIR="$ROOT/target/ab-base" cargo build --release -q --bin scoregate)
  SCOREGATE_BASE_BIN="$ROOT/target/ab-base/release/scoregate"
}
cleanup_base() { [ -d "$W/base" ] && (cd "$ROOT" && git worktree remove --force "$W/base" 2>/dev/null) || true; }

# install_missing COMMAND:DEBIAN_PACKAGE...: apt-get installs the packages whose command is missing.
install_missing() {
  local need=() c
  for c in "$@"; do
    command -v "${c%%:*}" >/dev/null || need+=("${c#*:}")
  done
  if ((${#need[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
# wait_port PORT [TRIES=100]: 50 ms apart.
wait_port() { for _ in $(seq 1 "${2:-100}"); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; return 1; }

# The backend, nginx answering every request with $BODY: backend_conf PORT DIR (its pid file's).
backend_conf() {
  cat <<CONF
worker_processes 1; daemon off; pid $2/nginx.pid; error_log stderr error;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$1; location / { default_type application/json; return 200 '$BODY'; } } }
CONF
}

# The benchmark's scoregate config: scoregate_toml PORT CERT KEY BACKEND_PORT API_KEY
scoregate_toml() {
  cat <<CONF
[listen]
tls = "127.0.0.1:$1"
[[tls.certificates]]
cert = "$2"
key = "$3"
[[services]]
name = "iris"
primary_key = "$5"
replica_max_concurrent_requests = $REPLICA_LIMIT
[[services.versions]]
name = "blue"
replicas = ["127.0.0.1:$4"]
CONF
}

# The ECDSA P-256 certificate every target serves: ec_cert DIR (writes DIR/cert.pem, DIR/key.pem).
ec_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$1/key.pem" -out "$1/cert.pem" 2>/dev/null
}

# The backend, nginx on core 1 answering every request with $BODY: start_backend DIR. Sets BACKEND
# (its port) and adds its pid to PIDS.
start_backend() {
  BACKEND=$(free_port)
  mkdir -p "$1/backend"
  backend_conf "$BACKEND" "$1/backend" >"$1/backend/nginx.conf"
  taskset -c 1 nginx -c "$1/backend/nginx.conf" -p "$1/backend" &
  PIDS+=($!)
  wait_port "$BACKEND"
}

# The scoring load's request: scoring_load DIR writes DIR/post.lua (wrk) and DIR/body.json (h2load).
scoring_load() {
  local body='{"data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}'
  cat >"$1/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
LUA
  printf '%s' "$body" >"$1/body.json"
}

# start_target NAME PORT [CERT_PREFIX]: nginx, haproxy, haproxy-busy, scoregate, scoregate-busy,
# scoregate-limit1 or scoregate-base (the binary in $SCOREGATE_BASE_BIN; scoregate's is
# $SCOREGATE_BIN, default target/release) alone on core 0, TLS on PORT with
# $W/${prefix}cert.pem, proxying to the backend on $BACKEND.
# Sets TARGET_PID and SERVING_PID (the process that serves: nginx's worker). Needs W, ROOT, KEY,
# BACKEND, PIDS (and BUSY_POLL_US for scoregate-busy).
start_target() { # name port [cert prefix] -> pid in TARGET_PID, serving pid in SERVING_PID
  local name=$1 port=$2 c=${3:-} d="$W/$1"

  mkdir -p "$d"
  case $name in
    nginx)
      cat >"$d/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $d/nginx.pid; error_log stderr error;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000;
  upstream be { server 127.0.0.1:$BACKEND; keepalive 128; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$port ssl http2;
    ssl_certificate $W/${c}cert.pem; ssl_certificate_key $W/${c}key.pem; ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
      taskset -c 0 nginx -c "$d/nginx.conf" -p "$d" & ;;
    haproxy|haproxy-busy)
      cat "$W/${c}cert.pem" "$W/${c}key.pem" >"$d/both.pem"
      cat >"$d/haproxy.cfg" <<CONF
global
  nbthread 1
$([ "$name" = haproxy-busy ] && echo "  busy-polling")
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
    scoregate|scoregate-busy|scoregate-limit1|scoregate-base)
      if [ "$name" = scoregate-limit1 ]; then # Azure ML's default: one request at a time per replica
        REPLICA_LIMIT=1 scoregate_toml "$port" "$W/${c}cert.pem" "$W/${c}key.pem" "$BACKEND" "$KEY" >"$d/scoregate.toml"
      else
        scoregate_toml "$port" "$W/${c}cert.pem" "$W/${c}key.pem" "$BACKEND" "$KEY" >"$d/scoregate.toml"
      fi
      if [ "$name" = scoregate-busy ]; then
        printf '[runtime]\nbusy_poll_us = %s\n' "$BUSY_POLL_US" >>"$d/scoregate.toml"
      fi
      local bin="${SCOREGATE_BIN:-$ROOT/target/release/scoregate}"
      [ "$name" = scoregate-base ] && bin="${SCOREGATE_BASE_BIN:?scoregate-base: SCOREGATE_BASE_BIN, the binary to compare with}"
      RUST_LOG=warn,rustls=error TOKIO_WORKER_THREADS=1 taskset -c 0 "$bin" serve --config "$d/scoregate.toml" & ;;
  esac
  TARGET_PID=$!
  PIDS+=("$TARGET_PID")
  wait_port "$port"
  SERVING_PID=$TARGET_PID
  if [ "$name" = nginx ]; then # the worker serves; the master only supervises
    for _ in $(seq 1 50); do SERVING_PID=$(pgrep -P "$TARGET_PID" | head -1) && [ -n "$SERVING_PID" ] && break; sleep 0.05; done
  fi
}
stop_target() { kill "$TARGET_PID" 2>/dev/null || true; wait "$TARGET_PID" 2>/dev/null || true; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# h2load_rate OUT_JSONL REP ROUND NAME URL [h2load options...]: the scoring POST at a fixed
# 2,000 req/s (16 keep-alive connections x 125 req/s, h2load --rps: open loop), h2load on core 1;
# p50/p99 from h2load's per-request log (after a 0.5 s warm-up: a new connection's first
# requests are several times slower at every target), and the median burst a request came in.
# One JSON line to OUT_JSONL and stdout. Needs W, KEY, SECS.
# Bursts: h2load's --rps timer fires every 10 ms (its floor; 1 or 2 requests a tick at 125/s) and
# is armed with libev's cached loop time of the iteration that completed the connection's
# handshake (ev_timer_again), so connections whose handshakes end in one loop iteration share one
# clock for the whole run. With one thread (the issue's command) that depends on the target: a
# target that finishes all 16 handshakes before h2load reads the first gets one burst of 15-16
# every tick, a slower one 3-4 bursts (measured: median burst scoregate 12-15, nginx 6-12, haproxy
# 5-12). H2LOAD_THREADS=16 gives each connection its own loop and clock: the same bursts (2-3) for
# every TLS target. H2LOAD_STAGGER=1 keeps the issue's one thread but opens the connections 1 ms
# apart (`-r 1 --rate-period 1ms`, which needs `-n` instead of `-D`: 2,000 x (SECS + 0.5)
# requests, the first 0.5 s left out here), so each handshake ends in an iteration of its own:
# bursts of 3-4 within 500 µs for every target (measured), as from independent clients.
h2load_rate() {
  local out=$1 rep=$2 round=$3 name=$4 url=$5 span skip=0
  shift 5
  span=(-D "$SECS" --warm-up-time 500ms)
  if [ -n "${H2LOAD_STAGGER:-}" ]; then
    span=(-r 1 --rate-period 1ms -n $((2000 * SECS + 1000)))
    skip=500000
  fi
  rm -f "$W/h2l.tsv"
  taskset -c 1 h2load -c 16 -t "${H2LOAD_THREADS:-1}" --rps 125 "${span[@]}" -d "$W/body.json" --log-file "$W/h2l.tsv" \
    -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$@" "$url" >"$W/h2l.txt" 2>&1 || true
  # H2LOAD_LOGS=DIR keeps each run's per-request log (start µs, status, µs) as DIR/NAME.ROUND.REP.tsv.
  if [ -n "${H2LOAD_LOGS:-}" ]; then mkdir -p "$H2LOAD_LOGS" && cp "$W/h2l.tsv" "$H2LOAD_LOGS/$name.$round.$rep.tsv"; fi
  python3 - "$rep" "$round" "$name" "$W/h2l.tsv" "$skip" <<'PY' | tee -a "$out"
import json, sys
rows = [f for f in (line.split("\t") for line in open(sys.argv[4])) if len(f) >= 3]
# Requests that started in the first SKIP µs (the warm-up h2load cannot skip itself) left out.
begin = min((int(f[0]) for f in rows), default=0) + int(sys.argv[5])
lat, bad, starts = [], 0, []
for f in rows:
    if int(f[0]) >= begin:
        bad += f[1] != "200"
        lat.append(int(f[2]))
        starts.append(int(f[0]))
# Burst sizes: requests sent within 500 µs of a burst's first (how many connections share a
# clock depends on the target: see above).
starts.sort()
bursts, first = [], None
for t in starts:
    if first is None or t - first > 500:
        bursts.append(0)
        first = t
    bursts[-1] += 1
lat.sort()
q = lambda v, p: v[min(len(v) - 1, int(p * len(v)))] if v else 0
weighted = sorted(b for b in bursts for _ in range(b))  # the burst a request came in
print(json.dumps({"rep": int(sys.argv[1]), "round": int(sys.argv[2]), "target": sys.argv[3],
                  "kind": "h2load", "requests": len(lat), "non200": bad,
                  "lat_p50_us": q(lat, 0.50), "lat_p99_us": q(lat, 0.99),
                  "burst_p50": q(weighted, 0.50)}))
PY
}
