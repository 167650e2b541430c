#!/usr/bin/env bash
# Issue 24's scoring POSTs at 2,000 req/s (16 keep-alive connections, aligned bursts of 16)
# against every target AT ONCE: one client (benches/handshakes.rs `burst-mix`) bursts at each
# target in turn, their clocks offset by an equal share of the 8 ms period, so the targets meet
# the same host at the same moments and their bursts do not overlap. Run one after another
# (latency.sh), a target's p50 swings ±30% with the host's neighbours from one run to the next;
# interleaved, the p50 ratio between two targets stays within about ±6% repetition after
# repetition (p99 still swings: one slow moment decides it).
# Every target alone on core 0 (one worker, one tokio thread), the client and the nginx backend on
# core 1; the direct baseline (plain, to the backend) is one of the interleaved targets. The order
# of the targets in the period is drawn afresh every repetition (seeded: the same on every run).
#
#   [PROTO=h1|h2] benches/peers/mix.sh [REPETITIONS=10] [SECONDS=5] [TARGETS="haproxy nginx scoregate"] [BASE]
#
# PROTO=h2: HTTP/2 to every proxy (one stream at a time per connection); the direct baseline stays
# HTTP/1.1 (the backend speaks nothing else).
# BASE (a git revision): also that build of scoregate (`scoregate-base`, built in a worktree of
# its own as ab.sh does), for a change's A/B under the same bursts.
# Prints a JSON line per target per repetition (each after half a second of load not recorded),
# then medians and per-repetition ratios (to the better peer and to each peer), each burst's first
# answer and turnaround, p50/p99/p99.9 over every repetition's requests pooled (the steadier
# reading of a p99), and how many of each target's slowest bursts the host's slow moments explain.
# A BASE of HEAD runs the same build twice: their spread is the method's own noise (BASE=same: the
# binary just built, in a second process, without building a worktree).
# MIX_JSON=FILE also writes the figures as one JSON object (per target: each repetition's p50/p99
# total and the pooled p50/p99/p99.9; errors), which run.sh puts in the peer table.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
REPS="${1:-10}"
SECS="${2:-5}"
read -r -a TARGETS <<<"${3:-haproxy nginx scoregate}"
BASE="${4:-}"
case "${PROTO:=h1}" in
  h1) KIND=tls ;;
  h2) KIND=h2 ;;
  *) echo "PROTO=$PROTO: h1 (HTTP/1.1 over TLS, the default) or h2 (HTTP/2 over TLS)" >&2; exit 64 ;;
esac
. "$ROOT/benches/peers/common.sh"
install_missing nginx:nginx-light haproxy:haproxy taskset:util-linux openssl:openssl
(cd "$ROOT" && cargo build --release -q --bin scoregate)
HS="$(cd "$ROOT" && cargo bench --bench handshakes --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)"
case "$HS" in /*) ;; *) HS="$ROOT/$HS" ;; esac
[ -x "$HS" ] || { echo "benches/handshakes did not build" >&2; exit 1; }

cleanup_extra() { cleanup_base; }
bench_workdir
if [ "$BASE" = same ]; then # the same binary in a second process: the method's own noise
  SCOREGATE_BASE_BIN="$ROOT/target/release/scoregate"
  TARGETS+=(scoregate-base)
elif [ -n "$BASE" ]; then
  build_base "$BASE"
  TARGETS+=(scoregate-base)
fi
ec_cert "$W"
start_backend "$W"
scoring_load "$W"
URL_PATH=/api/v1/service/iris/score

specs=()
for t in "${TARGETS[@]}"; do
  port=$(free_port)
  start_target "$t" "$port"
  specs+=("$KIND:127.0.0.1:$port")
  echo "$KIND:127.0.0.1:$port $t" >>"$W/names"
done
specs+=("plain:127.0.0.1:$BACKEND")
echo "plain:127.0.0.1:$BACKEND direct" >>"$W/names"
# spec_order R: the targets in repetition R's order, a permutation drawn with R as its seed. Where
# a target's bursts fall in the period — right after whose — shifts its latencies by a few per
# cent; a rotation would keep every target behind the same one in every repetition (a second
# copy of scoregate placed after the first read 0.02-0.26x lower on 9 of 10 rows), so each
# repetition draws who follows whom afresh, the same draws on every run.
spec_order() {
  python3 -c 'import random, sys; a = sys.argv[2:]; random.Random(int(sys.argv[1])).shuffle(a); print(",".join(a))' \
    "$1" "${specs[@]}"
}

taskset -c 1 "$HS" "$(spec_order 0)" 2 16 burst-mix "$URL_PATH" "$KEY" 2000 >/dev/null # warm-up
mkdir "$W/lat" # every latency of every repetition, per target (pooled below)
for rep in $(seq 1 "$REPS"); do
  BURST_MIX_LATENCIES="$W/lat" taskset -c 1 "$HS" "$(spec_order "$rep")" "$SECS" 16 burst-mix "$URL_PATH" "$KEY" 2000 | sed "s/^{/{\"rep\":$rep,/"
done | tee "$W/rows"

python3 - "$W/rows" "$W/names" "$PROTO" "$W/lat" "${MIX_JSON:-}" <<'PY'
import json, statistics as st, sys
names = dict(l.split() for l in open(sys.argv[2]))
rows = [json.loads(l) for l in open(sys.argv[1])]
errors = sum(r["errors"] for r in rows)
reps = sorted({r["rep"] for r in rows})
def get(t, k):
    return {r["rep"]: r[k] for r in rows if names[r["target"]] == t}
peers = [t for t in names.values() if t not in ("direct", "scoregate", "scoregate-base")]
print(f"\n{len(reps)} repetitions, {len(rows) // max(len(reps), 1)} targets interleaved "
      f"({sys.argv[3]}), errors {errors}")
for k in ("p50_us", "p99_us"):
    d = get("direct", k)
    med = ", ".join(f"{t} {st.median(get(t, k).values()):.0f}" for t in names.values())
    print(f"{k} total (median): {med}")
    for t in peers:
        print(f"  {t}: added {st.median(v - d[i] for i, v in get(t, k).items()):+.0f} µs")
    # Against the better of two peers each repetition, a third target exactly as fast as both
    # would be lower in only a third of the repetitions; against each peer alone, in half.
    pairs = [("scoregate", "the better peer")] + [("scoregate", t) for t in peers] + [
        ("scoregate", "scoregate-base")]
    for a, b in pairs:
        A = get(a, k)
        if b == "the better peer":
            if not peers:
                continue
            B = {i: min(get(t, k)[i] for t in peers) for i in reps}
        else:
            B = get(b, k)
        if not A or not B:
            continue
        tot = [A[i] / B[i] for i in reps]
        add = [(A[i] - d[i]) / (B[i] - d[i]) for i in reps if B[i] - d[i] > 0]
        ratio = f"{st.median(add):.2f}x" if add else "n/a"
        print(f"  {a} / {b}: total {st.median(tot):.3f} ({min(tot):.2f}-{max(tot):.2f}, "
              f"lower in {sum(x < 1 for x in tot)} of {len(tot)}); added "
              f"{st.median(v - d[i] for i, v in A.items()):+.0f} µs, {ratio}")

# A burst's first answer (its fastest request) and its turnaround (its slowest), medians over the
# repetitions of each repetition's p50/p99 over its bursts.
for k, label in (("burst_first_p50_us", "first answer p50"), ("burst_last_p50_us", "turnaround p50"),
                 ("burst_last_p99_us", "turnaround p99")):
    cells = ", ".join(f"{t} {st.median(get(t, k).values()):.0f}" for t in names.values())
    print(f"burst {label} µs (median): {cells}")

# Pooled: every repetition's requests together, per target. A repetition's p99 is its 100
# slowest of 10,000 requests, and one slow moment of the host, landing on one target's bursts,
# decides it; pooled, the slow moments spread over the targets as they come.
import os
pooled, turn = {}, {}
for target, name in names.items():
    kind, _, port = target.split(":")
    with open(os.path.join(sys.argv[4], f"{kind}_{port}")) as f:
        pooled[name] = sorted(int(l) for l in f)
    with open(os.path.join(sys.argv[4], f"{kind}_{port}.bursts")) as f:
        turn[name] = [int(l) for l in f]
def q(v, p):
    return v[min(int(len(v) * p), len(v) - 1)]
print(f"pooled over {len(reps)} repetitions ({len(pooled['direct'])} requests per target):")
for p, label in ((0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")):
    d = q(pooled["direct"], p)
    cells = ", ".join(f"{t} {q(v, p)} (+{q(v, p) - d})" for t, v in pooled.items() if t != "direct")
    line = f"  {label} µs total (added): {cells}, direct {d}"
    if "scoregate" in pooled and peers:
        best = min(q(pooled[t], p) for t in peers)
        s = q(pooled["scoregate"], p)
        added = f"{(s - d) / (best - d):.2f}x" if best > d else "n/a"
        line += f"; scoregate / the better peer: total {s / best:.3f}, added {added}"
    if "scoregate-base" in pooled and "scoregate" in pooled:
        b = q(pooled["scoregate-base"], p)
        line += f"; scoregate / scoregate-base: total {q(pooled['scoregate'], p) / b:.3f}"
    print(line)

if len(sys.argv) > 5 and sys.argv[5]:
    with open(sys.argv[5], "w") as f:
        json.dump({"proto": sys.argv[3], "errors": errors, "reps": len(reps),
                   "targets": {t: {"p50_us": [get(t, "p50_us")[i] for i in reps],
                                   "p99_us": [get(t, "p99_us")[i] for i in reps],
                                   "pooled": {label: q(v, p) for p, label in
                                              ((0.5, "p50_us"), (0.99, "p99_us"), (0.999, "p999_us"))}}
                               for t, v in pooled.items()}}, f)

# Whose slow moments: each target's slowest 1% of bursts (turnaround), and how many of them came
# within a period of a slow burst (over twice its median) of another target: shared, the host's.
if errors:  # a connection that failed ended early: its repetition's bursts no longer line up
    sys.exit(0)
n = min(len(v) for v in turn.values())
med = {t: st.median(v[:n]) for t, v in turn.items()}
def slow_near(t, i):
    return turn[t][max(0, i - 1):i + 2] and max(turn[t][max(0, i - 1):i + 2]) > 2 * med[t]
print(f"slowest 1% of {n} bursts per target, shared with another target's slow burst:")
for t, v in turn.items():
    thr = sorted(v[:n])[int(n * 0.99)]
    slow = [i for i in range(n) if v[i] >= thr]
    shared = sum(any(slow_near(o, i) for o in turn if o != t) for i in slow)
    print(f"  {t}: {shared} of {len(slow)} ({100 * shared / max(len(slow), 1):.0f}%), turnaround >= {thr} µs")
PY
