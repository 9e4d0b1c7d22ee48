#!/usr/bin/env bash
# Benchmark 4: the gateway's overhead. Simulator at a fixed 50 ms; RATE (default 2000) req/s open
# loop for DURATION (default 10) s after a 2 s warm-up, unique questions and no quota so every
# request goes upstream; p50/p99 through the service minus p50/p99 straight to the simulator,
# both measured in this run. max_concurrency is raised so the semaphore (100 = exactly
# 2000/s x 50 ms) does not queue. Target: p99 overhead under 1 ms.
source "$(dirname "$0")/common.sh"
build_release
RATE=${RATE:-2000}
DURATION=${DURATION:-10}

log "== 4. gateway overhead at $RATE req/s, simulator 50 ms"
start_sim --latency-ms 50
start_service LEARNING_CHAT_UPSTREAM__MAX_CONCURRENCY=2000
log "+ learning-chat-loadtest open-loop --target gemini --url $SIM_URL --rate $RATE --duration $DURATION --warmup 2"
loadtest open-loop --target gemini --url "$SIM_URL" --rate "$RATE" --duration "$DURATION" --warmup 2 \
    --summary-json "$OUT/04-direct.json" >"$OUT/04-direct.txt" 2>"$OUT/04-direct.progress"
cat "$OUT/04-direct.txt"
log "+ learning-chat-loadtest open-loop --url $SVC_URL --rate $RATE --duration $DURATION --warmup 2 --questions unique --sim-url $SIM_URL"
loadtest open-loop --url "$SVC_URL" --rate "$RATE" --duration "$DURATION" --warmup 2 --questions unique \
    --sim-url "$SIM_URL" --summary-json "$OUT/04-service.json" >"$OUT/04-service.txt" 2>"$OUT/04-service.progress"
cat "$OUT/04-service.txt"
for side in direct service; do
    f="$OUT/04-$side.json"
    fact "04-$side.requests" "$(json "$f" requests)"
    fact "04-$side.failures" "$(json "$f" failures)"
    fact "04-$side.requests_per_s" "$(json "$f" requests_per_s)"
    fact "04-$side.p50_ms" "$(json "$f" latency_ms.p50)"
    fact "04-$side.p99_ms" "$(json "$f" latency_ms.p99)"
    fact "04-$side.generator_max_lag_ms" "$(json "$f" extra.generator_max_lag_ms)"
done
fact "04-service.upstream_calls" "$(json "$OUT/04-service.json" upstream.requests)"
python3 - "$OUT/04-direct.json" "$OUT/04-service.json" <<'PY' | while read -r k v; do fact "$k" "$v"; done
import json, sys
d, s = (json.load(open(p))["latency_ms"] for p in sys.argv[1:])
print("04.overhead_p50_ms", round(s["p50"] - d["p50"], 3))
print("04.overhead_p99_ms", round(s["p99"] - d["p99"], 3))
PY
