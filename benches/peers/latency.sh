#!/usr/bin/env bash
# The latency a scoring POST pays at a moderate fixed rate, scoregate against nginx and haproxy,
# with the load generator of the independent run (issue 24): h2load, 16 keep-alive connections at
# 125 req/s each (2,000 req/s in all, open loop: `--rps`), every request a 56-byte JSON POST to
# /api/v1/service/iris/score, HTTP/1.1 (`--h1`) and HTTP/2 (one stream at a time per connection),
# each target alone on core 0 (one worker / one tokio thread), h2load and the backend on core 1.
# "Added" is a target's p50/p99 (from h2load's per-request log) minus the same load sent straight
# to the backend in the same round.
#
#   [PROTOS="h1 h2"] benches/peers/latency.sh [ROUNDS=3] [SECONDS=10] [TARGETS="nginx haproxy scoregate"]
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

bench_workdir
ec_cert "$W"
start_backend "$W"
scoring_load "$W"
URL_PATH=/api/v1/service/iris/score
RESULTS="$W/results.jsonl"
: >"$RESULTS"

# run ROUND NAME URL [h2load options...]: one fixed-rate load, one JSON line.
run() { h2load_rate "$RESULTS" 0 "$@"; }

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
    stop_target
  done
  run "$round" direct "http://127.0.0.1:$BACKEND$URL_PATH" --h1
done

python3 - "$RESULTS" "${TARGETS[@]}" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
targets = sys.argv[2:]
direct = {r["round"]: r for r in rows if r["target"] == "direct"}
def added(name, k):
    v = [r[k] - direct[r["round"]][k] for r in rows if r["target"] == name]
    return statistics.median(v) if v else None
print(f"direct p50 {statistics.median(r['lat_p50_us'] for r in direct.values()):.0f} µs, "
      f"p99 {statistics.median(r['lat_p99_us'] for r in direct.values()):.0f} µs")
for proto, suffix in (("HTTP/1.1", ""), ("HTTP/2", "-h2")):
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
