#!/usr/bin/env bash
# Benchmark 14: refusals at once under a quota (issue 29). 500 learners holding conversations of
# 3-6 questions (Zipf first questions over the shipped bank, all five tutors, follow-ups sent with
# the conversation_id), 2-5 s think time, for RUN_TIME (default 60) s after the ramp-up, against
# the default quota (upstream.rpm = 1000, the simulator enforcing the same) with the simulator at
# the seed's 2.8 s. Demand is several times the quota, so many questions must be refused: the
# figures are how soon a refusal comes back (p99 of the failed requests), how long the answered
# ones took, the refusals by reason, and that the upstream never answered 429.
# REDIS=1 runs the server with a Redis of its own (the quota's window then lives in Redis, and
# refusals rest on the last refusal and the queue's wake-up, not on the window itself).
# A/B: BEFORE=/path/to/old/learning-chat bench/ab.sh 14 (or SVC_BIN=... for one side).
source "$(dirname "$0")/common.sh"
build_release
USERS=${USERS:-500}
RUN_TIME=${RUN_TIME:-60}
RPM=${RPM:-1000}

log "== 14. quota refusals: $USERS users, 3-6 questions each, 2-5 s think, quota $RPM RPM, simulator 2.8 s"
start_sim --preset seed --rpm "$RPM"
METRICS_PORT=$(free_port)
redis_env=()
name=14-quota-refusals
if [ "${REDIS:-0}" = 1 ]; then
    REDIS_PORT=$(free_port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        >"$OUT/redis.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis_env=(REDIS_URL="redis://127.0.0.1:$REDIS_PORT")
    name=14-quota-refusals-redis
fi
start_service LEARNING_CHAT_UPSTREAM__RPM="$RPM" LEARNING_CHAT_METRICS__BIND="127.0.0.1:$METRICS_PORT" \
    "${redis_env[@]}"
log "+ learning-chat-loadtest --host $SVC_URL --users $USERS --increase-rate 50 --run-time ${RUN_TIME}s --questions zipf --agents all --conversation 3-6 --wait 2-5"
loadtest --host "$SVC_URL" --users "$USERS" --increase-rate 50 --run-time "${RUN_TIME}s" \
    --sim-url "$SIM_URL" --questions zipf --agents all --conversation 3-6 --wait 2-5 \
    --summary-json "$OUT/$name.json" --report-file "$OUT/$name-goose.html" \
    >"$OUT/$name.txt" 2>"$OUT/$name.progress"
sed -n '/=== learning-chat load test report/,$p' "$OUT/$name.txt"
metrics=$(curl -sf "http://127.0.0.1:$METRICS_PORT/metrics")
shed() {
    printf '%s\n' "$metrics" | awk -v r="reason=\"$1\"" \
        '$1 ~ /^learning_chat_requests_shed_total/ && index($1, r) { s += $2 } END { print s + 0 }'
}
f="$OUT/$name.json"
fact "$name.requests" "$(json "$f" requests)"
fact "$name.ok" "$(json "$f" ok)"
fact "$name.failures" "$(json "$f" failures)"
fact "$name.status_503" "$(json "$f" failures_by_status.503)"
fact "$name.p50_ms" "$(json "$f" latency_ms.p50)"
fact "$name.p90_ms" "$(json "$f" latency_ms.p90)"
fact "$name.p99_ms" "$(json "$f" latency_ms.p99)"
fact "$name.ok_p50_ms" "$(json "$f" ok_latency_ms.p50)"
fact "$name.ok_p99_ms" "$(json "$f" ok_latency_ms.p99)"
fact "$name.failed_p50_ms" "$(json "$f" failed_latency_ms.p50)"
fact "$name.failed_p99_ms" "$(json "$f" failed_latency_ms.p99)"
fact "$name.cache_hit_ratio" "$(json "$f" cache_hit_ratio)"
fact "$name.upstream_calls" "$(json "$f" upstream.requests)"
fact "$name.upstream_429" "$(json "$f" upstream.rate_limited)"
for reason in queue_full queue_timeout queue_wait quota; do
    fact "$name.shed_$reason" "$(shed "$reason")"
done
read -r rate max60 < <(sim_timeline_rate)
fact "$name.upstream_calls_per_s" "$rate"
fact "$name.upstream_busiest_60s" "$max60"
fact "$name.load_average" "$(cut -d' ' -f1-3 /proc/loadavg)"
stop "$SVC_PID"
