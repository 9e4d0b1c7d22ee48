#!/usr/bin/env bash
# Benchmark 1: the seed guide's locust profile on ONE server: 1000 users spawned at 50/s, 5-15 s
# think time, POST /api/v1/agents/math {"message": "What is 2+2?"}, for RUN_TIME (default 90) s
# after ramp-up; the simulator at the seed's fixed 2.8 s. Then the same crowd asking Zipf-
# distributed questions from the shipped bank across all five tutors (ZIPF_RUN_TIME, default 60 s;
# 0 skips it), on a fresh server.
# Targets: zero failures; p99 within the upstream latency + 50 ms.
source "$(dirname "$0")/common.sh"
build_release
USERS=${USERS:-1000}
RUN_TIME=${RUN_TIME:-90}
ZIPF_RUN_TIME=${ZIPF_RUN_TIME:-60}

run_profile() { # NAME RUN_TIME ARGS...
    local name=$1 run_time=$2
    shift 2
    start_service
    log "+ learning-chat-loadtest --host $SVC_URL --users $USERS --increase-rate 50 --run-time ${run_time}s --sim-url $SIM_URL $*"
    loadtest --host "$SVC_URL" --users "$USERS" --increase-rate 50 --run-time "${run_time}s" \
        --sim-url "$SIM_URL" --summary-json "$OUT/$name.json" --report-file "$OUT/$name-goose.html" \
        "$@" >"$OUT/$name.txt" 2>"$OUT/$name.progress"
    sed -n '/=== learning-chat load test report/,$p' "$OUT/$name.txt"
    local f="$OUT/$name.json"
    fact "$name.requests" "$(json "$f" requests)"
    fact "$name.requests_per_s" "$(json "$f" requests_per_s)"
    fact "$name.failures" "$(json "$f" failures)"
    fact "$name.p50_ms" "$(json "$f" latency_ms.p50)"
    fact "$name.p95_ms" "$(json "$f" latency_ms.p95)"
    fact "$name.p99_ms" "$(json "$f" latency_ms.p99)"
    fact "$name.max_ms" "$(json "$f" latency_ms.max)"
    fact "$name.cache_hit_ratio" "$(json "$f" cache_hit_ratio)"
    fact "$name.upstream_calls" "$(json "$f" upstream.requests)"
    fact "$name.service_vmhwm_kib" "$(kib VmHWM "$SVC_PID")"
    stop "$SVC_PID"
}

log "== 1. seed profile: $USERS users, 50/s, 5-15 s think time, 'What is 2+2?', simulator 2.8 s"
start_sim --preset seed
run_profile 01-seed "$RUN_TIME"
if [ "$ZIPF_RUN_TIME" != 0 ]; then
    log "== 1b. same crowd, Zipf questions over the shipped bank, all five tutors"
    run_profile 01b-zipf "$ZIPF_RUN_TIME" --questions zipf --agents all
fi
