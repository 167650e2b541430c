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
# Loads: keep-alive HTTP/1.1 (wrk, 64 connections), HTTP/2 (h2load, 16 connections x 10 streams),
# full TLS 1.3 handshakes (ECDSA P-256 and RSA-2048) and resumed ones (benches/handshakes.rs, a
# new connection per request, 32 at a time), latency at a fixed 2,000 req/s of scoring POSTs over
# 8 keep-alive connections, HTTP/1.1 and HTTP/2, minus the same load sent directly to the backend,
# and the same POSTs from h2load on 16 connections x 125 req/s (bursty, the bursts h2load's own:
# see h2load_rate in common.sh; again with a thread per connection and with one thread whose
# connections open 1 ms apart, both giving every target the same bursts; totals; HTTP/1.1 also with
# scoregate at Azure ML's default `replica_max_concurrent_requests = 1`, where the requests of a
# burst wait in its queue for the one replica slot; the other rows lift the limit, as nginx and
# haproxy have none) (LAT_ROUNDS=3 rounds per repetition, in turn: each target, haproxy with `busy-polling`,
# scoregate with `[runtime] busy_poll_us = $BUSY_POLL_US` (default 1000), the direct baseline;
# with each process's CPU during the load and idle after it), RSS per idle TLS connection (1,000
# held open, after the handshake and after one POST), syscalls per proxied request (strace -c -f
# on the serving process, 20,000 requests).
# Then the same scoring POSTs interleaved (mix.sh, MIX_REPS=10 repetitions of 5 s, HTTP/1.1 and
# HTTP/2, with a second scoregate process of the same build as the method's own noise; MIX_REPS=0
# skips it): every target's aligned bursts of 16 at 2,000 req/s in one period, so the host's
# moments fall on all of them alike — the latency rows whose ratio one run can be trusted with.
# Every process it starts is stopped by PID; every loop is bounded.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
REPS="${1:-3}"
SECS="${2:-10}"
export BUSY_POLL_US="${BUSY_POLL_US:-1000}"
OUT="$ROOT/benches/peers"

. "$ROOT/benches/peers/common.sh"
install_missing nginx:nginx-light haproxy:haproxy wrk:wrk h2load:nghttp2-client taskset:util-linux \
  openssl:openssl strace:strace
(cd "$ROOT" && cargo build --release -q)
HS="$(cd "$ROOT" && cargo bench --bench handshakes --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)"
case "$HS" in /*) ;; *) HS="$ROOT/$HS" ;; esac
[ -x "$HS" ] || { echo "benches/handshakes did not build" >&2; exit 1; }

bench_workdir

ec_cert "$W"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$W/rsa-key.pem" -out "$W/rsa-cert.pem" 2>/dev/null
# The backend: nginx on core 1, answering every request with the same ~200-byte JSON.
start_backend "$W"



URL_PATH=/api/v1/service/iris/score
scoring_load "$W"

# CPU time (clock ticks) process $1 has used so far; 0 without a pid.
cpu_ticks() { { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null; } || echo 0; }
TCK=$(getconf CLK_TCK)
# One latency row of results.jsonl: target, address, load mode, serving pid or "" (uses $rep and
# $round). With a pid, also the process's CPU during the load and in the second after it (idle).
latency() {
  local c0 c1 c2 t0 t1 t2 out
  c0=$(cpu_ticks "$4"); t0=$(date +%s%N)
  out=$(taskset -c 1 "$HS" "$2" "$SECS" 8 "$3" "$URL_PATH" "$KEY" 2000)
  c1=$(cpu_ticks "$4"); t1=$(date +%s%N)
  sleep 1
  c2=$(cpu_ticks "$4"); t2=$(date +%s%N)
  python3 -c '
import json, sys
d = json.loads(sys.argv[1])
a = [int(x) for x in sys.argv[5:]]
print(json.dumps({"rep": int(sys.argv[2]), "round": int(sys.argv[3]), "target": sys.argv[4],
                  "lat_p50_us": d["p50_us"], "lat_p99_us": d["p99_us"], "hs_errors": d["errors"],
                  "cpu_pct": round((a[1] - a[0]) / a[3] / ((a[5] - a[4]) / 1e9) * 100, 1),
                  "idle_cpu_pct": round((a[2] - a[1]) / a[3] / ((a[6] - a[5]) / 1e9) * 100, 1)}))' \
    "$out" "$rep" "$round" "$1" "$c0" "$c1" "$c2" "$TCK" "$t0" "$t1" "$t2" | tee -a "$OUT/results.jsonl"
}

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
    addr="127.0.0.1:$port"
    full=$(taskset -c 1 "$HS" "$addr" "$SECS" 32 full "$URL_PATH" "$KEY")
    # 8 at a time: the rustls client keeps 8 tickets per server, so more would fall back to full.
    resumed=$(taskset -c 1 "$HS" "$addr" "$SECS" 8 resumed "$URL_PATH" "$KEY")
    # RSS per idle TLS connection: 1,000 held open after a full handshake each, then 1,000 after
    # a full handshake and one scoring POST each (what a scoring client's connection holds).
    idle_rss() { # mode -> "rss_before rss_after open"
      local r0 r1 open IDLE
      r0=$(rss_kb "$SERVING_PID")
      taskset -c 1 "$HS" "$addr" 8 1000 "$1" "$URL_PATH" "$KEY" >"$W/idle.out" &
      IDLE=$!; PIDS+=("$IDLE")
      for _ in $(seq 1 200); do grep -q open "$W/idle.out" 2>/dev/null && break; sleep 0.1; done
      sleep 1
      r1=$(rss_kb "$SERVING_PID")
      open=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["open"])' "$W/idle.out" 2>/dev/null || echo 0)
      wait "$IDLE" 2>/dev/null || true
      sleep 1
      echo "$r0 $r1 $open"
    }
    read -r rss0 rss1 idle_open < <(idle_rss idle)
    # A fresh process for the second count: what the first freed stays in its allocator, and
    # the second would reuse it and read near 0.
    stop_target
    port=$(free_port)
    start_target "$t" "$port"
    url="https://127.0.0.1:$port$URL_PATH"
    addr="127.0.0.1:$port"
    read -r prss0 prss1 post_open < <(idle_rss idle-post)
    # Syscalls per proxied request.
    timeout 60 strace -c -f -q -p "$SERVING_PID" -o "$W/strace.txt" &
    ST=$!; PIDS+=("$ST"); sleep 0.5
    taskset -c 1 h2load -n 20000 -c 64 -t 1 --h1 -d "$W/body.json" \
      -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$url" >"$W/h2load-strace.txt" 2>&1 || true
    kill -INT "$ST" 2>/dev/null || true; wait "$ST" 2>/dev/null || true
    calls=$(awk '$1 ~ /^[0-9.]+$/ && $NF != "total" {c += $4} END {print c+0}' "$W/strace.txt")
    stop_target
    # Full handshakes with RSA-2048.
    port=$(free_port)
    start_target "$t" "$port" rsa-
    rsa=$(taskset -c 1 "$HS" "127.0.0.1:$port" "$SECS" 32 full "$URL_PATH" "$KEY")
    stop_target
    python3 - "$rep" "$t" "$ka_rps" "$ka_err" "$h2_rps" "$h2_fail" "$h2_non2xx" "$full" "$resumed" "$rss0" "$rss1" "$idle_open" "${calls:-0}" "$rsa" "$prss0" "$prss1" "$post_open" <<'PY' | tee -a "$OUT/results.jsonl"
import json, sys
a = sys.argv[1:]
full, resumed, rsa = (json.loads(x) for x in (a[7], a[8], a[13]))
open_ = int(a[11]) or 1
print(json.dumps({"rep": int(a[0]), "target": a[1], "keepalive_rps": float(a[2] or 0),
    "keepalive_errors": int(a[3]), "h2_rps": float(a[4] or 0), "h2_failed": int(a[5] or 0),
    "h2_non2xx": int(a[6] or 0), "full_hs": full["rps"], "rsa_full_hs": rsa["rps"],
    "resumed_hs": resumed["rps"], "resumed_share": round(resumed["resumed"] / max(resumed["requests"], 1), 3),
    "rss_per_idle_conn_kb": round((int(a[10]) - int(a[9])) / open_, 2), "idle_open": int(a[11]),
    "rss_per_idle_post_conn_kb": round((int(a[15]) - int(a[14])) / (int(a[16]) or 1), 2),
    "idle_post_open": int(a[16]),
    "syscalls_per_req": round(int(a[12]) / 20000, 2),
    "hs_errors": full["errors"] + resumed["errors"] + rsa["errors"]}))
PY
  done
  # Latency is a small difference of two noisy figures, so it is measured in LAT_ROUNDS rounds
  # that alternate the targets and end with the same open-loop load sent straight to the backend
  # (plain HTTP): "added" is a target's figure minus the direct one of the same round, and the
  # repetition's value is the median over its rounds.
  # Then haproxy with its `busy-polling` and scoregate with `runtime.busy_poll_us`: CPU for
  # latency, each process's CPU measured during the load and in the idle second after it.
  for round in $(seq 1 "${LAT_ROUNDS:-3}"); do
    for t in "${order[@]}" haproxy-busy scoregate-busy scoregate-limit1; do
      port=$(free_port)
      start_target "$t" "$port"
      taskset -c 1 "$HS" "127.0.0.1:$port" 1 8 rate-tls "$URL_PATH" "$KEY" 2000 >/dev/null   # warm-up
      # scoregate at Azure ML's default replica limit (1): only issue 24's h2load load, below.
      [ "$t" = scoregate-limit1 ] || latency "$t" "127.0.0.1:$port" rate-tls "$SERVING_PID"
      # The same scoring load over HTTP/2 (TLS, ALPN h2, one stream at a time per connection).
      case $t in *-busy|*-limit1) ;; *) latency "$t-h2" "127.0.0.1:$port" rate-h2 "$SERVING_PID" ;; esac
      # The same POSTs from h2load (issue 24's case): 16 connections, each on its own 125 req/s
      # clock, so they arrive in bursts; HTTP/1.1 and HTTP/2.
      case $t in *-busy) ;; *-limit1)
        h2load_rate "$OUT/results.jsonl" "$rep" "$round" "scoregate-limit1-h2l" "https://127.0.0.1:$port$URL_PATH" --h1 ;;
      *)
        h2load_rate "$OUT/results.jsonl" "$rep" "$round" "$t-h2l" "https://127.0.0.1:$port$URL_PATH" --h1
        h2load_rate "$OUT/results.jsonl" "$rep" "$round" "$t-h2l-h2" "https://127.0.0.1:$port$URL_PATH"
        # The same with a thread (an event loop) per connection: each connection on its own clock,
        # the same bursts for every TLS target (see h2load_rate in common.sh).
        H2LOAD_THREADS=16 h2load_rate "$OUT/results.jsonl" "$rep" "$round" "$t-h2l-t16" "https://127.0.0.1:$port$URL_PATH" --h1
        # The issue's one h2load thread with the connections opened 1 ms apart: no two share a
        # clock, so every target gets the same small bursts (see h2load_rate).
        H2LOAD_STAGGER=1 h2load_rate "$OUT/results.jsonl" "$rep" "$round" "$t-h2l-stg" "https://127.0.0.1:$port$URL_PATH" --h1
        H2LOAD_STAGGER=1 h2load_rate "$OUT/results.jsonl" "$rep" "$round" "$t-h2l-stg-h2" "https://127.0.0.1:$port$URL_PATH" ;;
      esac
      stop_target
    done
    latency direct "127.0.0.1:$BACKEND" rate-plain ""
    h2load_rate "$OUT/results.jsonl" "$rep" "$round" direct-h2l "http://127.0.0.1:$BACKEND$URL_PATH" --h1
    H2LOAD_THREADS=16 h2load_rate "$OUT/results.jsonl" "$rep" "$round" direct-h2l-t16 "http://127.0.0.1:$BACKEND$URL_PATH" --h1
    H2LOAD_STAGGER=1 h2load_rate "$OUT/results.jsonl" "$rep" "$round" direct-h2l-stg "http://127.0.0.1:$BACKEND$URL_PATH" --h1
  done
done

# The interleaved latency rows (see mix.sh): a process of their own, after every target above
# has stopped.
rm -f "$OUT/mix-h1.json" "$OUT/mix-h2.json"
if [ "${MIX_REPS:-10}" -gt 0 ]; then
  for proto in h1 h2; do
    PROTO=$proto MIX_JSON="$OUT/mix-$proto.json" "$ROOT/benches/peers/mix.sh" "${MIX_REPS:-10}" 5 \
      "haproxy nginx scoregate" same >"$W/mix-$proto.txt" 2>&1 || { cat "$W/mix-$proto.txt" >&2; exit 1; }
  done
fi

python3 - "$OUT" <<'PY'
import json, statistics, sys, datetime, platform, os
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/results.jsonl")]
lat_rows = [r for r in rows if "round" in r]
rows = [r for r in rows if "round" not in r]
reps = sorted({r["rep"] for r in rows})
def get(rep, t, k):
    return next((r[k] for r in rows if r["rep"] == rep and r["target"] == t and k in r), None)
# Latency: added over the direct baseline of the same round, median over a repetition's rounds.
def lat(rep, t):
    return [x for x in lat_rows if x["rep"] == rep and x["target"] == t]
for r in rows:
    for variant, prefix in (("", ""), ("-busy", "busy_"), ("-h2", "h2_")):
        mine = lat(r["rep"], r["target"] + variant)
        for k in ("lat_p50_us", "lat_p99_us"):
            base = {d["round"]: d[k] for d in lat(r["rep"], "direct")}
            added = [max(x[k] - base[x["round"]], 1) for x in mine if x["round"] in base]
            if added:
                r[prefix + "added_" + k] = statistics.median(added)
        for k in ("cpu_pct", "idle_cpu_pct"):
            v = [x[k] for x in mine if k in x]
            if v:
                r[prefix + k] = statistics.median(v)
    # h2load's bursts: totals (the direct baseline pays the same bursts on one core and can be
    # slower than a proxied run, so "added" would be negative).
    for variant, prefix in (("-h2l", "h2l_"), ("-h2l-h2", "h2l_h2_"), ("-limit1-h2l", "limit1_h2l_"),
                            ("-h2l-t16", "h2lt_"), ("-h2l-stg", "h2ls_"), ("-h2l-stg-h2", "h2ls_h2_")):
        mine = lat(r["rep"], r["target"] + variant)
        for k in ("lat_p50_us", "lat_p99_us", "burst_p50"):
            v = [x[k] for x in mine if k in x]
            if v:
                r[prefix + k] = statistics.median(v)
    # With a thread per connection, or the connections opened apart, the bursts are the same for
    # every target (and for the direct baseline, HTTP/1.1 for both protocols: the backend has no
    # HTTP/2), so "added" means what it says again.
    for variant, direct, prefix in (("-h2l-t16", "direct-h2l-t16", "h2lt_"),
                                    ("-h2l-stg", "direct-h2l-stg", "h2ls_"),
                                    ("-h2l-stg-h2", "direct-h2l-stg", "h2ls_h2_")):
        mine = lat(r["rep"], r["target"] + variant)
        for k in ("lat_p50_us", "lat_p99_us"):
            base = {d["round"]: d[k] for d in lat(r["rep"], direct)}
            added = [max(x[k] - base[x["round"]], 1) for x in mine if x["round"] in base]
            if added:
                r[prefix + "added_" + k] = statistics.median(added)
metrics = [  # key, label, higher is better, format
    ("keepalive_rps", "keep-alive TLS HTTP/1.1 req/s (wrk -c64)", True, "{:,.0f}"),
    ("h2_rps", "HTTP/2 req/s (h2load -c16 -m10)", True, "{:,.0f}"),
    ("full_hs", "full TLS 1.3 handshakes/s, ECDSA P-256 (new connection per request)", True, "{:,.0f}"),
    ("rsa_full_hs", "full TLS 1.3 handshakes/s, RSA-2048", True, "{:,.0f}"),
    ("resumed_hs", "resumed handshakes/s", True, "{:,.0f}"),
    ("added_lat_p50_us", "latency added at 2,000 req/s, p50 (µs)", False, "{:,.0f}"),
    ("added_lat_p99_us", "latency added at 2,000 req/s, p99 (µs)", False, "{:,.0f}"),
    ("h2_added_lat_p50_us", "HTTP/2: latency added at 2,000 req/s, p50 (µs)", False, "{:,.0f}"),
    ("h2_added_lat_p99_us", "HTTP/2: latency added at 2,000 req/s, p99 (µs)", False, "{:,.0f}"),
    ("h2l_lat_p50_us", "h2load 16 conns x 125 req/s POST, HTTP/1.1, p50 total (µs)", False, "{:,.0f}"),
    ("h2l_lat_p99_us", "h2load 16 conns x 125 req/s POST, HTTP/1.1, p99 total (µs)", False, "{:,.0f}"),
    ("h2l_h2_lat_p50_us", "h2load 16 conns x 125 req/s POST, HTTP/2, p50 total (µs)", False, "{:,.0f}"),
    ("h2l_h2_lat_p99_us", "h2load 16 conns x 125 req/s POST, HTTP/2, p99 total (µs)", False, "{:,.0f}"),
    ("h2l_burst_p50", "h2load HTTP/1.1: requests per burst, median (set by h2load's event loop, see below)", None, "{:,.0f}"),
    ("h2lt_lat_p50_us", "h2load, a thread per connection, HTTP/1.1, p50 total (µs)", False, "{:,.0f}"),
    ("h2lt_lat_p99_us", "h2load, a thread per connection, HTTP/1.1, p99 total (µs)", False, "{:,.0f}"),
    ("h2lt_added_lat_p50_us", "h2load, a thread per connection, HTTP/1.1, p50 added (µs)", False, "{:,.0f}"),
    ("h2lt_added_lat_p99_us", "h2load, a thread per connection, HTTP/1.1, p99 added (µs)", False, "{:,.0f}"),
    ("h2lt_burst_p50", "h2load, a thread per connection: requests per burst, median", None, "{:,.0f}"),
    ("h2ls_added_lat_p50_us", "h2load, connections opened 1 ms apart, HTTP/1.1, p50 added (µs)", False, "{:,.0f}"),
    ("h2ls_added_lat_p99_us", "h2load, connections opened 1 ms apart, HTTP/1.1, p99 added (µs)", False, "{:,.0f}"),
    ("h2ls_h2_added_lat_p50_us", "h2load, connections opened 1 ms apart, HTTP/2, p50 added (µs)", False, "{:,.0f}"),
    ("h2ls_h2_added_lat_p99_us", "h2load, connections opened 1 ms apart, HTTP/2, p99 added (µs)", False, "{:,.0f}"),
    ("h2ls_lat_p50_us", "h2load, connections opened 1 ms apart, HTTP/1.1, p50 total (µs)", False, "{:,.0f}"),
    ("h2ls_lat_p99_us", "h2load, connections opened 1 ms apart, HTTP/1.1, p99 total (µs)", False, "{:,.0f}"),
    ("h2ls_h2_lat_p50_us", "h2load, connections opened 1 ms apart, HTTP/2, p50 total (µs)", False, "{:,.0f}"),
    ("h2ls_h2_lat_p99_us", "h2load, connections opened 1 ms apart, HTTP/2, p99 total (µs)", False, "{:,.0f}"),
    ("h2ls_burst_p50", "h2load, connections opened 1 ms apart: requests per burst, median", None, "{:,.0f}"),
    ("limit1_h2l_lat_p50_us", "the same, HTTP/1.1, p50 total, scoregate at Azure ML's default replica limit of 1 (µs)", False, "{:,.0f}"),
    ("limit1_h2l_lat_p99_us", "the same, HTTP/1.1, p99 total, scoregate at Azure ML's default replica limit of 1 (µs)", False, "{:,.0f}"),
    ("cpu_pct", "proxy CPU at 2,000 req/s (% of its core)", False, "{:,.0f}"),
    ("busy_added_lat_p50_us", "with busy polling: latency added at 2,000 req/s, p50 (µs)", False, "{:,.0f}"),
    ("busy_added_lat_p99_us", "with busy polling: latency added at 2,000 req/s, p99 (µs)", False, "{:,.0f}"),
    ("busy_cpu_pct", "with busy polling: proxy CPU at 2,000 req/s (%)", False, "{:,.0f}"),
    ("busy_idle_cpu_pct", "with busy polling: proxy CPU with no traffic (%)", False, "{:,.0f}"),
    ("rss_per_idle_conn_kb", "RSS per idle TLS connection (KiB, 1,000 open)", False, "{:,.1f}"),
    ("rss_per_idle_post_conn_kb", "RSS per idle TLS connection after one POST (KiB, 1,000 open)", False, "{:,.1f}"),
    ("syscalls_per_req", "syscalls per proxied request (strace -c)", False, "{:,.2f}"),
]
# The limit-1 rows compare with the peers' own h2load rows (they have no such limit).
PEER_KEY = {"limit1_h2l_lat_p50_us": "h2l_lat_p50_us", "limit1_h2l_lat_p99_us": "h2l_lat_p99_us"}
def ratios(k, higher):
    res = []
    if higher is None:  # a description of the load, not a figure to win on
        return res
    for rep in reps:
        pk = PEER_KEY.get(k, k)
        peers = [v for v in (get(rep, "nginx", pk), get(rep, "haproxy", pk)) if v is not None]
        sg = get(rep, "scoregate", k)
        if not peers or sg is None:
            continue
        best = max(peers) if higher else min(peers)
        if best > 0:
            res.append(sg / best)
    return res
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
lines = [f"# Peer comparison — {datetime.date.today()} on {cpu}, {os.cpu_count()} cores", "",
         "Each target alone on core 0 (1 worker), the load generators and the backend on core 1. Median (min–max) of "
         f"{len(reps)} repetitions; ratio = scoregate / better peer of the same repetition (higher is better for "
         "rates, lower for latency, memory and syscalls).", "",
         "| metric | nginx | haproxy | scoregate | ratio (median, min–max) |", "|---|---|---|---|---|"]
for k, name, higher, fmt in metrics:
    cells = []
    for t in ("nginx", "haproxy", "scoregate"):
        v = [r[k] for r in rows if r["target"] == t and k in r]
        cells.append(f"{fmt.format(statistics.median(v))} ({fmt.format(min(v))}–{fmt.format(max(v))})" if v else "—")
    r = ratios(k, higher)
    cells.append(f"{statistics.median(r):.2f}× ({min(r):.2f}–{max(r):.2f})" if r else "—")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
# The interleaved rows: every target's bursts in one period (mix.sh). Per repetition, "added" is
# a target's figure minus the direct one of the same repetition; pooled, over every request of
# every repetition. "scoregate again" is a second process of the same build: the method's noise.
mix_lines = []
for proto, label in (("h1", "HTTP/1.1"), ("h2", "HTTP/2")):
    try:
        m = json.load(open(f"{out}/mix-{proto}.json"))
    except FileNotFoundError:
        continue
    T = m["targets"]
    d = T["direct"]
    def added(t, k):
        return [max(v - b, 1) for v, b in zip(T[t][k], d[k])]
    def cell(v, fmt="{:,.0f}"):
        return f"{fmt.format(statistics.median(v))} ({fmt.format(min(v))}–{fmt.format(max(v))})"
    for k, what in (("p50_us", "p50"), ("p99_us", "p99")):
        A = {t: added(t, k) for t in ("nginx", "haproxy", "scoregate", "scoregate-base")}
        best = [min(a, b) for a, b in zip(A["nginx"], A["haproxy"])]
        r = [s / b for s, b in zip(A["scoregate"], best)]
        again = [s / b for s, b in zip(A["scoregate-base"], best)]
        mix_lines.append(f"| interleaved, {label}: latency added at 2,000 req/s, {what} (µs) | "
                         + " | ".join(cell(A[t]) for t in ("nginx", "haproxy", "scoregate"))
                         + f" | {statistics.median(r):.2f}× ({min(r):.2f}–{max(r):.2f}); "
                         f"scoregate again {statistics.median(again):.2f}× |")
    for k, what in (("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")):
        P = {t: T[t]["pooled"][k] - d["pooled"][k] for t in T}
        best = min(P["nginx"], P["haproxy"])
        ratio = f"{P['scoregate'] / best:.2f}×; scoregate again {P['scoregate-base'] / best:.2f}×" if best > 0 else "—"
        mix_lines.append(f"| interleaved, {label}: latency added, {what} over every request pooled (µs) | "
                         + " | ".join(f"{P[t]:,}" for t in ("nginx", "haproxy", "scoregate"))
                         + f" | {ratio} |")
# After the other latency rows.
at = next(i for i, l in enumerate(lines) if l.startswith("| proxy CPU at 2,000"))
lines[at:at] = mix_lines
lines += ["", "Busy-polling rows: haproxy with `busy-polling` (nginx has no such option) and scoregate with "
          f"`[runtime] busy_poll_us = {os.environ.get('BUSY_POLL_US', '1000')}`, the same latency load; CPU "
          "is the serving process's, during the load and in the idle second after it."]
if mix_lines:
    lines += ["", "Interleaved rows (`benches/peers/mix.sh`): issue 24's scoring POSTs at 2,000 req/s per target "
              "(16 keep-alive connections, aligned bursts of 16) to every target at once, their bursts "
              "offset within one 8 ms period so each meets the host's moments alike, the direct baseline "
              "one of the targets; per repetition (5 s each, the targets' order in the period drawn afresh) and over every "
              "request pooled. \"scoregate again\" is a second scoregate process of the same binary in the "
              "same run, against the same better peer: how far the method itself moves a ratio."]
direct_h2l = [r for r in lat_rows if r["target"] == "direct-h2l"]
if direct_h2l:
    lines += ["", "h2load rows: the load of the independent run of issue 24 (h2load --rps 125 on 16 "
              "connections: 2,000 req/s in bursts of up to 16); totals, since the direct baseline "
              f"(p50 {statistics.median(r['lat_p50_us'] for r in direct_h2l):,.0f} µs, p99 "
              f"{statistics.median(r['lat_p99_us'] for r in direct_h2l):,.0f} µs, the backend and "
              "h2load sharing core 1) is often slower than a proxied run. How many requests share a "
              "burst is not the same for every target: h2load (one thread, libev) arms each "
              "connection's 10 ms request timer from the event loop's cached time of the iteration "
              "that finished its handshake, so all the connections whose handshakes end in one "
              "iteration share one clock for the whole run — a target that finishes the 16 "
              "handshakes before h2load looks gets one burst of 15-16, a slower one two to four "
              "smaller ones. The rows with a thread per connection (`h2load -t 16`) give every "
              "connection its own clock: the same bursts for every TLS target; so do the rows "
              "with the connections opened 1 ms apart (one thread, `-r 1 --rate-period 1ms`)."]
direct = [r for r in lat_rows if r["target"] == "direct"]
if direct:
    lines += ["", "Direct to the backend at 2,000 req/s (the baseline): p50 "
              f"{statistics.median(r['lat_p50_us'] for r in direct):,.0f} µs, p99 "
              f"{statistics.median(r['lat_p99_us'] for r in direct):,.0f} µs."]
share = {t: statistics.median([r["resumed_share"] for r in rows if r["target"] == t and "resumed_share" in r] or [0])
         for t in ("nginx", "haproxy", "scoregate")}
lines += ["", "Share of connections actually resumed in the resumed run: " +
          ", ".join(f"{t} {v:.0%}" for t, v in share.items()) + "."]
errors = sum(json.load(open(f"{out}/mix-{p}.json"))["errors"] for p in ("h1", "h2")
             if os.path.exists(f"{out}/mix-{p}.json"))
errors += sum(r.get("keepalive_errors", 0) + r.get("h2_failed", 0) + r.get("h2_non2xx", 0) + r.get("hs_errors", 0)
             + r.get("non200", 0) for r in rows + lat_rows)
lines += ["", f"Errors in all runs: {errors}."]
open(f"{out}/results.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
