#!/usr/bin/env bash
# Benchmark 2: unique questions (nothing cacheable). Throughput is min(offered load,
# max_concurrency / latency, quota) and the simulator's in-flight peak never exceeds
# max_concurrency. Open-loop load for DURATION (default 20) s each, simulator at 2.8 s:
#   2a. 20 req/s offered, concurrency 100     -> bound by the offered load: 20/s
#   2b. 60 req/s offered, concurrency 100     -> bound by the semaphore: 100 / 2.8 s = 35.7/s
#   2c. 20 req/s offered, quota 300 RPM       -> bound by the quota: 300 calls in any minute,
#                                                the excess refused at once with 503
source "$(dirname "$0")/common.sh"
build_release
DURATION=${DURATION:-20}

run_case() { # NAME RATE
    local name=$1 rate=$2
    log "+ learning-chat-loadtest open-loop --url $SVC_URL --rate $rate --duration $DURATION --questions unique --sim-url $SIM_URL"
    loadtest open-loop --url "$SVC_URL" --rate "$rate" --duration "$DURATION" --questions unique \
        --sim-url "$SIM_URL" --summary-json "$OUT/$name.json" >"$OUT/$name.txt" 2>"$OUT/$name.progress"
    cat "$OUT/$name.txt"
    local f="$OUT/$name.json" timeline
    timeline=$(sim_timeline_rate)
    fact "$name.offered_per_s" "$rate"
    fact "$name.requests" "$(json "$f" requests)"
    fact "$name.ok" "$(json "$f" ok)"
    fact "$name.failures" "$(json "$f" failures)"
    fact "$name.upstream_calls" "$(json "$f" upstream.requests)"
    fact "$name.upstream_rate_per_s" "${timeline% *}"
    fact "$name.upstream_max_in_60s" "${timeline#* }"
    fact "$name.upstream_in_flight_peak" "$(json "$f" upstream.in_flight_peak)"
    fact "$name.p50_ms" "$(json "$f" latency_ms.p50)"
    fact "$name.p99_ms" "$(json "$f" latency_ms.p99)"
}

log "== 2. unique questions, simulator 2.8 s"
start_sim --preset seed
start_service LEARNING_CHAT_UPSTREAM__MAX_CONCURRENCY=100
run_case 02a-offered 20
run_case 02b-semaphore 60
stop "$SVC_PID"
start_service LEARNING_CHAT_UPSTREAM__MAX_CONCURRENCY=100 LEARNING_CHAT_UPSTREAM__RPM=300
run_case 02c-quota 20
