#!/usr/bin/env bash
# Benchmark 12: streamed answers (issue 11, POST /api/v1/agents/math/stream) at 1000 learners:
# time to first token (TTFT: the first `delta` event, measured by `learning-chat-loadtest
# --stream`) for cache hits, coalesced and fresh questions, and upstream calls per distinct
# question (gemini-sim's /stats). Simulator: the seed's 2.8 s to the first chunk, then chunks of
# 8 tokens every 50 ms (the 120-token answer: 15 chunks, about 0.7 s more).
#   12a. cache hits: USERS learners (5-15 s think time, spawned at 50/s, RUN_TIME s) ask the
#        seed's question, already answered once (the endpoint probe below warms the cache).
#   12b. coalesced: COUNT learners ask the same new question at the same instant: one upstream
#        stream, every learner gets its words (the late ones replayed, then live).
#   12c. fresh: USERS learners (as 12a) ask questions nobody asked before.
# Targets: 12a TTFT p50 in single milliseconds and 0 upstream calls; 12b 1 upstream call and TTFT
# p99 within a second of the simulator's first chunk (< 3.8 s); 12c 1 upstream call per question,
# TTFT close to the model's 2.8 s, zero failures.
# Bounded: two goose runs of 20 s spawn + RUN_TIME (default 40) s each, one burst; about 2.5 min.
source "$(dirname "$0")/common.sh"
build_release
USERS=${USERS:-1000}
COUNT=${COUNT:-1000}
RUN_TIME=${RUN_TIME:-40}
FIRST_CHUNK_MS=2800

log "== 12. streamed answers: TTFT for cache hits, coalesced and fresh questions"
start_sim --preset seed --chunk-tokens 8 --chunk-delay-ms 50
start_service

# The stream endpoint must exist (issue 11): a service without it answers 404. The probe asks the
# seed's question once, which also puts its answer in the cache for 12a.
probe=$(curl -s -o "$OUT/12-probe.txt" -w '%{http_code}' --max-time 60 -N -X POST \
    -H 'content-type: application/json' -H 'accept: text/event-stream' \
    -d '{"message": "What is 2+2?"}' "$SVC_URL/api/v1/agents/math/stream" || true)
if [ "$probe" = 404 ]; then
    log "ERROR: POST /api/v1/agents/math/stream answered 404: this learning-chat has no streaming"
    log "endpoint (issue 11). Benchmark 12 needs a build with it."
    exit 1
fi
if [ "$probe" != 200 ] || ! grep -q '^event: done' "$OUT/12-probe.txt"; then
    log "ERROR: the stream endpoint probe answered HTTP $probe without an 'event: done':"
    head -c 2000 "$OUT/12-probe.txt" >&2 || true
    exit 1
fi

# goose_case NAME QUESTIONS: USERS streaming learners for RUN_TIME s.
goose_case() {
    local name=$1 questions=$2
    log "+ learning-chat-loadtest --stream --host $SVC_URL --users $USERS --increase-rate 50 --run-time ${RUN_TIME}s --questions $questions --sim-url $SIM_URL"
    # goose stops itself after RUN_TIME; the timeout is only a hang guard.
    timeout $((RUN_TIME + 180)) "$BIN/learning-chat-loadtest" --stream --host "$SVC_URL" \
        --users "$USERS" --increase-rate 50 --run-time "${RUN_TIME}s" --questions "$questions" \
        --sim-url "$SIM_URL" --summary-json "$OUT/$name.json" \
        >"$OUT/$name.txt" 2>"$OUT/$name.progress"
    sed -n '/=== learning-chat load test report/,$p' "$OUT/$name.txt"
}

# per_question FILE DISTINCT: upstream calls / distinct questions asked.
per_question() {
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print(round(r["upstream"]["requests"] / max(int(sys.argv[2]), 1), 3))' "$1" "$2"
}

# common_facts NAME: what every case records.
common_facts() {
    local name=$1 f="$OUT/$1.json"
    fact "$name.requests" "$(json "$f" requests)"
    fact "$name.ok" "$(json "$f" ok)"
    fact "$name.failures" "$(json "$f" failures)"
    fact "$name.ttft_p50_ms" "$(json "$f" stream.ttft_ms.p50)"
    fact "$name.ttft_p99_ms" "$(json "$f" stream.ttft_ms.p99)"
    fact "$name.total_p50_ms" "$(json "$f" stream.total_ms.p50)"
    fact "$name.total_p99_ms" "$(json "$f" stream.total_ms.p99)"
    fact "$name.upstream_calls" "$(json "$f" upstream.requests)"
    fact "$name.stream_errors" "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["stream"]["errors_by_code"])' "$f")"
}

goose_case 12a-cached fixed
common_facts 12a-cached
fact "12a-cached.cached_ttft_p50_ms" "$(json "$OUT/12a-cached.json" stream.by_source.cached.ttft_ms.p50)"
fact "12a-cached.cached_ttft_p99_ms" "$(json "$OUT/12a-cached.json" stream.by_source.cached.ttft_ms.p99)"
fact "12a-cached.cache_hit_ratio" "$(json "$OUT/12a-cached.json" cache_hit_ratio)"
fact "12a-cached.upstream_calls_per_distinct_question" "$(per_question "$OUT/12a-cached.json" 1)"

log "+ learning-chat-loadtest burst --stream --url $SVC_URL --count $COUNT --mode identical --sim-url $SIM_URL"
timeout 300 "$BIN/learning-chat-loadtest" burst --stream --url "$SVC_URL" --count "$COUNT" \
    --mode identical --sim-url "$SIM_URL" --summary-json "$OUT/12b-coalesced.json" \
    | tee "$OUT/12b-coalesced.txt"
common_facts 12b-coalesced
fact "12b-coalesced.time_to_answer_all_ms" "$(json "$OUT/12b-coalesced.json" extra.time_to_answer_all_ms)"
fact "12b-coalesced.ttft_p99_after_first_chunk_ms" \
    "$(python3 -c "print(round($(json "$OUT/12b-coalesced.json" stream.ttft_ms.p99) - $FIRST_CHUNK_MS, 1))")"
fact "12b-coalesced.upstream_calls_per_distinct_question" "$(per_question "$OUT/12b-coalesced.json" 1)"

goose_case 12c-fresh unique
common_facts 12c-fresh
fact "12c-fresh.fresh_ttft_p50_ms" "$(json "$OUT/12c-fresh.json" stream.by_source.fresh.ttft_ms.p50)"
fact "12c-fresh.fresh_ttft_p99_ms" "$(json "$OUT/12c-fresh.json" stream.by_source.fresh.ttft_ms.p99)"
# Every question of 12c is new: distinct questions = requests sent.
fact "12c-fresh.upstream_calls_per_distinct_question" \
    "$(per_question "$OUT/12c-fresh.json" "$(json "$OUT/12c-fresh.json" requests)")"
fact "12.service_vmhwm_kib" "$(kib VmHWM "$SVC_PID")"
