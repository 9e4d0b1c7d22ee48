#!/usr/bin/env bash
# Benchmark 7: 1000 learners (5-15 s think time, the seed's profile) who all ask questions nobody
# asked before (nothing cacheable), simulator at the seed's 2.8 s with no quota of its own.
# Offered load: about 1000 / (10 s + 2.8 s) = 78 questions/s, which needs about 220 model calls
# in flight (Little's law). USERS learners spawned at 50/s, then RUN_TIME (default 60) s.
#   07a. max_concurrency 100 and rpm 0: the old constant bound -> 100 / 2.8 s = 35.7/s at most
#   07b. default concurrency settings, rpm 0 (unlimited, as the simulator): limit = ceiling
#   07c. default concurrency settings, rpm 6000 (a quota above the ~4700 RPM offered): the limit
#        derived from the quota and the observed latency (6000 / 60 x 2.8 s x 2 = 560)
# Targets for 07b/07c: zero failures, throughput = the offered rate, p99 = the model's 2.8 s.
source "$(dirname "$0")/common.sh"
build_release
USERS=${USERS:-1000}
RUN_TIME=${RUN_TIME:-60}

# gauge NAME: one unlabelled gauge of the running service, from its metrics listener.
gauge() {
    curl -sf "$METRICS_URL/metrics" | awk -v m="$1" '$1 == m { print $2 }'
}

run_case() { # NAME ENV=VALUE...
    local name=$1
    shift
    METRICS_PORT=$(free_port)
    METRICS_URL="http://127.0.0.1:$METRICS_PORT"
    start_service LEARNING_CHAT_METRICS__BIND="127.0.0.1:$METRICS_PORT" "$@"
    curl -sf -X POST "$SIM_URL/stats/reset" >/dev/null
    log "+ ($*) learning-chat-loadtest --host $SVC_URL --users $USERS --increase-rate 50 --run-time ${RUN_TIME}s --questions unique --sim-url $SIM_URL"
    # goose stops itself after RUN_TIME; the timeout is only a hang guard.
    timeout $((RUN_TIME + 180)) "$BIN/learning-chat-loadtest" --host "$SVC_URL" --users "$USERS" \
        --increase-rate 50 --run-time "${RUN_TIME}s" --questions unique --sim-url "$SIM_URL" \
        --summary-json "$OUT/$name.json" --report-file "$OUT/$name-goose.html" \
        >"$OUT/$name.txt" 2>"$OUT/$name.progress"
    sed -n '/=== learning-chat load test report/,$p' "$OUT/$name.txt"
    local f="$OUT/$name.json" timeline
    timeline=$(sim_timeline_rate)
    fact "$name.settings" "$*"
    fact "$name.requests" "$(json "$f" requests)"
    fact "$name.requests_per_s" "$(json "$f" requests_per_s)"
    fact "$name.ok" "$(json "$f" ok)"
    fact "$name.failures" "$(json "$f" failures)"
    fact "$name.p50_ms" "$(json "$f" latency_ms.p50)"
    fact "$name.p95_ms" "$(json "$f" latency_ms.p95)"
    fact "$name.p99_ms" "$(json "$f" latency_ms.p99)"
    fact "$name.max_ms" "$(json "$f" latency_ms.max)"
    fact "$name.upstream_calls" "$(json "$f" upstream.requests)"
    fact "$name.upstream_rate_per_s" "${timeline% *}"
    fact "$name.upstream_in_flight_peak" "$(json "$f" upstream.in_flight_peak)"
    fact "$name.concurrency_limit" "$(gauge learning_chat_upstream_concurrency_limit)"
    fact "$name.latency_estimate_s" "$(gauge learning_chat_upstream_latency_estimate_seconds)"
    fact "$name.service_vmhwm_kib" "$(kib VmHWM "$SVC_PID")"
    stop "$SVC_PID"
}

log "== 7. $USERS learners, distinct questions, 5-15 s think time, simulator 2.8 s"
start_sim --preset seed
run_case 07a-constant-100 LEARNING_CHAT_UPSTREAM__MAX_CONCURRENCY=100
run_case 07b-default-unlimited
run_case 07c-default-rpm6000 LEARNING_CHAT_UPSTREAM__RPM=6000
