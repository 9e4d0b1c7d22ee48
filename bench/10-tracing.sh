#!/usr/bin/env bash
# Benchmark 8: the cost of OpenTelemetry traces on cache hits (the cheapest request, so the one
# where span overhead shows most): wrk at 256 connections, DURATION (default 10) s each after a
# 2 s warm-up, with export off, on at 1% sampling and on at 100%. The spans go to a local OTLP/HTTP
# sink (bench/otlp_sink.py) that reads and counts each export and answers 200.
source "$(dirname "$0")/common.sh"
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release -p learning-chat -p gemini-sim 2>&1 | tail -1)
fi
for b in learning-chat gemini-sim; do
    [ -x "$BIN/$b" ] || { log "missing $BIN/$b: build first"; exit 1; }
done
DURATION=${DURATION:-10}
WRK_THREADS=${WRK_THREADS:-2}
need_wrk

start_otlp_sink

run() { # NAME [ENV=VALUE...]
    local name=$1
    shift
    start_service "$@"
    curl -sf -H 'content-type: application/json' -d '{"message": "What is 2+2?"}' \
        "$SVC_URL/api/v1/agents/math" | grep -q '"response"'
    wrk -t"$WRK_THREADS" -c256 -d2s -s "$OUT/post.lua" "$SVC_URL/api/v1/agents/math" >/dev/null
    log "+ $name: wrk -t$WRK_THREADS -c256 -d${DURATION}s --latency -s post.lua"
    wrk -t"$WRK_THREADS" -c256 -d"${DURATION}s" --latency -s "$OUT/post.lua" \
        "$SVC_URL/api/v1/agents/math" | tee "$OUT/$name.txt"
    fact "$name.requests_per_s" "$(awk '/^Requests\/sec:/ {print $2}' "$OUT/$name.txt")"
    fact "$name.p50" "$(awk '$1 == "50%" {print $2}' "$OUT/$name.txt")"
    fact "$name.p99" "$(awk '$1 == "99%" {print $2}' "$OUT/$name.txt")"
    fact "$name.non_2xx" "$(awk '/Non-2xx/ {print $NF}' "$OUT/$name.txt" | grep . || echo 0)"
    stop "$SVC_PID"
    fact "$name.sink_exports" "$(curl -sf "http://127.0.0.1:$SINK_PORT/stats")"
}

log "== 8. tracing overhead on cache hits, 256 connections"
start_sim --preset seed
run 08-off
run 08-sampled-1pct LEARNING_CHAT_TELEMETRY__OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" \
    LEARNING_CHAT_TELEMETRY__TRACE_SAMPLE_RATIO=0.01
run 08-sampled-100pct LEARNING_CHAT_TELEMETRY__OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" \
    LEARNING_CHAT_TELEMETRY__TRACE_SAMPLE_RATIO=1.0
