#!/usr/bin/env bash
# Benchmark 4: the gateway's overhead. Simulator at a fixed 50 ms; RATE (default 2000) req/s open
# loop for DURATION (default 10) s after a 2 s warm-up, unique questions and no quota so every
# request goes upstream; p50/p99 through the service minus p50/p99 straight to the simulator,
# both measured in this run, alternating for ROUNDS (default 3) rounds so drift in the machine's
# load hits both sides alike. max_concurrency is raised so the semaphore (100 = exactly
# 2000/s x 50 ms) does not queue. Target: p99 overhead under 1 ms (issue 24: under 0.5 ms).
#
# The machine's floor: each round also sends the same load through nginx (one worker, keep-alive
# to the simulator), a C reverse proxy that only forwards. Its overhead over the direct side is
# what one more loopback hop and one more process on these cores cost, with no gateway work at
# all; the service's overhead beyond nginx's is the gateway's own. SVC_ENV="K=V ..." passes extra
# LEARNING_CHAT_* settings to the service (e.g. LEARNING_CHAT_SERVER__WORKER_THREADS=1).
source "$(dirname "$0")/common.sh"
build_release
RATE=${RATE:-2000}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
read -r -a SVC_EXTRA <<<"${SVC_ENV:-}"

log "== 4. gateway overhead at $RATE req/s, simulator 50 ms, $ROUNDS rounds"
start_sim --latency-ms 50
start_service LEARNING_CHAT_UPSTREAM__MAX_CONCURRENCY=2000 "${SVC_EXTRA[@]}"
start_proxy_nginx "$SIM_PORT"
for round in $(seq 1 "$ROUNDS"); do
    log "+ [round $round] learning-chat-loadtest open-loop --target gemini --url $SIM_URL --rate $RATE --duration $DURATION --warmup 2"
    loadtest open-loop --target gemini --url "$SIM_URL" --rate "$RATE" --duration "$DURATION" --warmup 2 \
        --progress-every 0 --summary-json "$OUT/04-direct-$round.json" | tee "$OUT/04-direct-$round.txt"
    log "+ [round $round] the same through nginx: --url $NGINX_URL"
    loadtest open-loop --target gemini --url "$NGINX_URL" --rate "$RATE" --duration "$DURATION" --warmup 2 \
        --progress-every 0 --summary-json "$OUT/04-nginx-$round.json" | tee "$OUT/04-nginx-$round.txt"
    log "+ [round $round] learning-chat-loadtest open-loop --url $SVC_URL --rate $RATE --duration $DURATION --warmup 2 --questions unique --sim-url $SIM_URL"
    loadtest open-loop --url "$SVC_URL" --rate "$RATE" --duration "$DURATION" --warmup 2 --questions unique \
        --progress-every 0 --sim-url "$SIM_URL" --summary-json "$OUT/04-service-$round.json" | tee "$OUT/04-service-$round.txt"
    for side in direct nginx service; do
        f="$OUT/04-$side-$round.json"
        fact "04-$side-$round.requests" "$(json "$f" requests)"
        fact "04-$side-$round.failures" "$(json "$f" failures)"
        fact "04-$side-$round.p50_ms" "$(json "$f" latency_ms.p50)"
        fact "04-$side-$round.p99_ms" "$(json "$f" latency_ms.p99)"
        fact "04-$side-$round.generator_max_lag_ms" "$(json "$f" extra.generator_max_lag_ms)"
    done
    # Warm-up requests included: the simulator's counters are reset before the warm-up.
    fact "04-service-$round.upstream_calls" "$(json "$OUT/04-service-$round.json" upstream.requests)"
    python3 - "$OUT/04-direct-$round.json" "$OUT/04-nginx-$round.json" "$OUT/04-service-$round.json" <<'PY' | while read -r k v; do fact "$k-$round" "$v"; done
import json, sys
d, n, s = (json.load(open(p))["latency_ms"] for p in sys.argv[1:])
print("04.overhead_p50_ms", round(s["p50"] - d["p50"], 3))
print("04.overhead_p99_ms", round(s["p99"] - d["p99"], 3))
print("04.nginx_overhead_p50_ms", round(n["p50"] - d["p50"], 3))
print("04.nginx_overhead_p99_ms", round(n["p99"] - d["p99"], 3))
PY
done
