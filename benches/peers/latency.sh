#!/usr/bin/env bash
# The latency a scoring POST pays at a moderate fixed rate, scoregate against nginx and haproxy,
# with the load generator of the independent run (issue 24): h2load, 16 keep-alive connections at
# 125 req/s each (2,000 req/s in all, open loop: `--rps`), every request a 56-byte JSON POST to
# /api/v1/service/iris/score, HTTP/1.1 (`--h1`) and HTTP/2 (one stream at a time per connection),
# each target alone on core 0 (one worker / one tokio thread), h2load and the backend on core 1.
# "Added" is a target's p50/p99 (from h2load's per-request log) minus the same load sent straight
# to the backend in the same round.
#
#   [PROTOS="h1 h2 burst h1-t16 h1-stagger"] benches/peers/latency.sh [ROUNDS=3] [SECONDS=10] [TARGETS="nginx haproxy scoregate"]
#
# PROTOS=burst adds the same rate with all 16 connections on one clock (benches/handshakes.rs
# `burst-tls`): the same bursts of 16 for every target, where h2load's depend on the target's
# handshake speed. PROTOS=h1-stagger: the issue's one h2load thread with the connections opened
# 1 ms apart, so no two share a clock (bursts of 3-4 for every target; see h2load_rate).
# REPLICA_LIMIT=1 runs scoregate at Azure ML's default limit (see common.sh).
#
# Prints one JSON line per run and a summary (medians over the rounds, ratios to the better peer).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
ROUNDS="${1:-3}"
SECS="${2:-10}"
read -r -a TARGETS <<<"${3:-nginx haproxy scoregate}"
. "$ROOT/benches/peers/common.sh"
install_missing nginx:nginx-light haproxy:haproxy h2load:nghttp2-client taskset:util-linux openssl:openssl
(cd "$ROOT" && cargo build --release -q)
HS="$(cd "$ROOT" && cargo bench --bench handshakes --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)"
case "$HS" in /*) ;; *) HS="$ROOT/$HS" ;; esac

bench_workdir
ec_cert "$W"
start_backend "$W"
scoring_load "$W"
URL_PATH=/api/v1/service/iris/score
RESULTS="$W/results.jsonl"
: >"$RESULTS"

# run ROUND NAME URL [h2load options...]: one fixed-rate load, one JSON line.
run() { h2load_rate "$RESULTS" 0 "$@"; }
# burst ROUND NAME ADDR MODE: the same rate from benches/handshakes.rs with all 16 connections on
# one clock (`burst-tls`/`burst-plain`): bursts of 16 for every target. h2load's connections share
# a clock when their handshakes end in one iteration of its event loop, so its bursts grow with
# the target's handshake speed (see h2load_rate in common.sh; PROTOS=h1-t16 runs h2load with a
# thread per connection, every connection on its own clock).
burst() {
  local out
  out=$(taskset -c 1 "$HS" "$3" "$SECS" 16 "$4" "$URL_PATH" "$KEY" 2000)
  python3 -c 'import json, sys; d = json.loads(sys.argv[1]); print(json.dumps({"rep": 0,
    "round": int(sys.argv[2]), "target": sys.argv[3], "kind": "burst", "requests": d["requests"],
    "non200": d["errors"], "lat_p50_us": d["p50_us"], "lat_p99_us": d["p99_us"]}))' \
    "$out" "$1" "$2" | tee -a "$RESULTS"
}

for round in $(seq 1 "$ROUNDS"); do
  n=${#TARGETS[@]}
  order=("${TARGETS[@]:$(( (round-1) % n ))}" "${TARGETS[@]:0:$(( (round-1) % n ))}")
  for t in "${order[@]}"; do
    port=$(free_port)
    start_target "$t" "$port"
    url="https://127.0.0.1:$port$URL_PATH"
    taskset -c 1 h2load -c 16 -t 1 --rps 125 -D 2 --h1 -d "$W/body.json" \
      -H "Authorization: Bearer $KEY" "$url" >/dev/null 2>&1 || true   # warm-up
    case " ${PROTOS:-h1 h2} " in *" h1 "*) run "$round" "$t" "$url" --h1 ;; esac
    case " ${PROTOS:-h1 h2} " in *" h2 "*) run "$round" "$t-h2" "$url" ;; esac
    case " ${PROTOS:-h1 h2} " in *" h1-t16 "*) H2LOAD_THREADS=16 run "$round" "$t-t16" "$url" --h1 ;; esac
    case " ${PROTOS:-h1 h2} " in *" h1-stagger "*) H2LOAD_STAGGER=1 run "$round" "$t-stg" "$url" --h1 ;; esac
    case " ${PROTOS:-h1 h2} " in *" burst "*) burst "$round" "$t-burst" "127.0.0.1:$port" burst-tls ;; esac
    stop_target
  done
  run "$round" direct "http://127.0.0.1:$BACKEND$URL_PATH" --h1
  case " ${PROTOS:-h1 h2} " in *" h1-t16 "*) H2LOAD_THREADS=16 run "$round" direct-t16 "http://127.0.0.1:$BACKEND$URL_PATH" --h1 ;; esac
  case " ${PROTOS:-h1 h2} " in *" h1-stagger "*) H2LOAD_STAGGER=1 run "$round" direct-stg "http://127.0.0.1:$BACKEND$URL_PATH" --h1 ;; esac
  case " ${PROTOS:-h1 h2} " in *" burst "*) burst "$round" direct-burst "127.0.0.1:$BACKEND" burst-plain ;; esac
done

python3 - "$RESULTS" "${TARGETS[@]}" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
targets = sys.argv[2:]
baselines = {s: {r["round"]: r for r in rows if r["target"] == "direct" + s}
             for s in ("", "-burst", "-t16", "-stg")}
print(f"direct p50 {statistics.median(r['lat_p50_us'] for r in baselines[''].values()):.0f} µs, "
      f"p99 {statistics.median(r['lat_p99_us'] for r in baselines[''].values()):.0f} µs")
for proto, suffix in (("HTTP/1.1", ""), ("HTTP/2", "-h2"), ("aligned bursts of 16, HTTP/1.1", "-burst"),
                      ("h2load -t 16 (a clock per connection), HTTP/1.1", "-t16"),
                      ("h2load, connections opened 1 ms apart, HTTP/1.1", "-stg")):
    direct = baselines[suffix if suffix in baselines else ""]
    bursts = ", ".join(f"{t} {statistics.median(r['burst_p50'] for r in rows if r['target'] == t + suffix):.0f}"
                       for t in targets + ["direct"]
                       if any(r["target"] == t + suffix and "burst_p50" in r for r in rows))
    if bursts:
        print(f"{proto}: requests per burst (median) {bursts}")
    def added(name, k):
        v = [r[k] - direct[r["round"]][k] for r in rows if r["target"] == name and r["round"] in direct]
        return statistics.median(v) if v else None
    for k in ("lat_p50_us", "lat_p99_us"):
        vals = {t: added(t + suffix, k) for t in targets}
        peers = [v for t, v in vals.items() if t != "scoregate" and v is not None]
        best = min(peers) if peers else None
        cells = ", ".join(f"{t} {v:+.0f}" for t, v in vals.items() if v is not None)
        ratio = f" -> scoregate {vals['scoregate'] / best:.2f}x the better peer" \
            if best and best > 0 and vals.get("scoregate") is not None else ""
        # Totals, and scoregate's total over the better peer's, round by round (a ratio of
        # totals stays meaningful when a proxy's burst handling beats the direct baseline).
        per = []
        for rnd in sorted(direct):
            got = {r["target"]: r[k] for r in rows if r["round"] == rnd}
            p = [got[t + suffix] for t in targets if t != "scoregate" and t + suffix in got]
            if p and "scoregate" + suffix in got:
                per.append(got["scoregate" + suffix] / min(p))
        tot = ", ".join(f"{t} {statistics.median(r[k] for r in rows if r['target'] == t + suffix):.0f}"
                        for t in targets if any(r["target"] == t + suffix for r in rows))
        rr = f"; total/better peer per round: median {statistics.median(per):.2f}x " \
             f"({min(per):.2f}-{max(per):.2f})" if per else ""
        if not any(r["target"] == "scoregate" + suffix for r in rows):
            continue
        print(f"{proto} {k}: added {cells}{ratio}; total {tot}{rr}")
PY
