#!/usr/bin/env bash
# Benchmark 13: the byte budgets. Peak RSS (VmHWM from /proc/PID/status) of ONE server with
# neither Redis nor a records database (everything it keeps is in its own memory, bounded by
# cache.max_bytes, conversation.max_memory_bytes, admission.limit_windows_max_bytes, ...), a
# fresh process for each case:
#   13a. the seed profile (benchmark 1): USERS (default 1000) learners spawned at 50/s, 5-15 s
#        think time, "What is 2+2?", for SEED_RUN_TIME (default 90) s; simulator at the seed's
#        2.8 s;
#   13b. cached answers at full speed for CACHED_RUN_TIME (default 600) s: wrk, CONNECTIONS
#        (default 256) keep-alive connections, "What is 2+2?" (every answer after the first a
#        cache hit);
#   13c. distinct questions at full speed for DISTINCT_RUN_TIME (default 120) s (0 skips it):
#        wrk with a new question each request against a fast simulator, so the answer cache,
#        the coalescing map and the conversation store fill to their budgets.
# After each case the bytes-held gauges of /metrics are recorded next to the peak RSS.
# Target: peak RSS <= 64 MB in every case.
# Builds only what it runs: cargo build --release -p learning-chat -p learning-chat-loadtest
# -p gemini-sim (BENCH_SKIP_BUILD=1 skips it).
source "$(dirname "$0")/common.sh"
USERS=${USERS:-1000}
SEED_RUN_TIME=${SEED_RUN_TIME:-90}
CACHED_RUN_TIME=${CACHED_RUN_TIME:-600}
DISTINCT_RUN_TIME=${DISTINCT_RUN_TIME:-120}
CONNECTIONS=${CONNECTIONS:-256}
WRK_THREADS=${WRK_THREADS:-2}
TARGET_KIB=$((64 * 1024))

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    log "== cargo build --release -p learning-chat -p learning-chat-loadtest -p gemini-sim"
    (cd "$ROOT" && cargo build --release -p learning-chat -p learning-chat-loadtest -p gemini-sim 2>&1 | tail -1)
fi
for b in learning-chat gemini-sim learning-chat-loadtest; do
    [ -x "$BIN/$b" ] || { log "missing $BIN/$b: build first"; exit 1; }
done
need_wrk   # and writes $OUT/post.lua

# The service with no Redis and no database, whatever the environment says (`database.url`
# only where the server has a records database to turn off).
NO_DB=()
if env LEARNING_CHAT_DATABASE__URL=none "$SVC_BIN" check-config >/dev/null 2>&1; then
    NO_DB=(LEARNING_CHAT_DATABASE__URL=none)
fi
start_memory_service() {
    start_service REDIS_URL= REDIS_HOST= LEARNING_CHAT_REDIS__URL= "${NO_DB[@]}" "$@"
}

# gauges NAME: the bytes-held gauges of the running service, as facts NAME.<gauge>.
gauges() {
    local name=$1 metrics
    metrics=$(curl -sf "$SVC_METRICS_URL/metrics" || true)
    for g in learning_chat_cache_bytes learning_chat_cache_entries learning_chat_refusals_bytes \
        learning_chat_coalesce_bytes learning_chat_conversations_memory_bytes \
        learning_chat_conversations_active learning_chat_limit_windows_bytes; do
        fact "$name.${g#learning_chat_}" \
            "$(printf '%s\n' "$metrics" | awk -v g="$g" '$1 == g || index($1, g "{") == 1 { print $2; exit }' | grep . || echo 0)"
    done
}

# verdict NAME PID: the peak RSS of PID as a fact, and whether it is within the target.
verdict() {
    local name=$1 pid=$2 hwm
    hwm=$(kib VmHWM "$pid")
    fact "$name.vmhwm_kib" "$hwm"
    fact "$name.within_64mb" "$([ "$hwm" -le "$TARGET_KIB" ] && echo yes || echo NO)"
}

log "== 13. byte budgets: peak RSS without Redis and without a database (target <= 64 MB)"

log "-- 13a. seed profile: $USERS users, 50/s, 5-15 s think time, simulator 2.8 s, ${SEED_RUN_TIME} s"
start_sim --preset seed
start_memory_service
fact "13.idle_vmrss_kib" "$(kib VmRSS "$SVC_PID")"
log "+ learning-chat-loadtest --host $SVC_URL --users $USERS --increase-rate 50 --run-time ${SEED_RUN_TIME}s --sim-url $SIM_URL"
loadtest --host "$SVC_URL" --users "$USERS" --increase-rate 50 --run-time "${SEED_RUN_TIME}s" \
    --sim-url "$SIM_URL" --summary-json "$OUT/13a-seed.json" --report-file "$OUT/13a-seed-goose.html" \
    >"$OUT/13a-seed.txt" 2>"$OUT/13a-seed.progress"
sed -n '/=== learning-chat load test report/,$p' "$OUT/13a-seed.txt"
fact "13a.requests" "$(json "$OUT/13a-seed.json" requests)"
fact "13a.failures" "$(json "$OUT/13a-seed.json" failures)"
gauges 13a
verdict 13a "$SVC_PID"
stop "$SVC_PID"

log "-- 13b. cached answers at full speed: wrk -c$CONNECTIONS for ${CACHED_RUN_TIME} s"
start_memory_service
curl -sf -H 'content-type: application/json' -d '{"message": "What is 2+2?"}' \
    "$SVC_URL/api/v1/agents/math" | grep -q '"response"'
log "+ wrk -t$WRK_THREADS -c$CONNECTIONS -d${CACHED_RUN_TIME}s -s post.lua $SVC_URL/api/v1/agents/math"
wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${CACHED_RUN_TIME}s" --timeout 10s -s "$OUT/post.lua" \
    "$SVC_URL/api/v1/agents/math" | tee "$OUT/13b-wrk.txt"
fact "13b.requests" "$(awk '/requests in/ {print $1}' "$OUT/13b-wrk.txt")"
fact "13b.requests_per_s" "$(awk '/^Requests\/sec:/ {print $2}' "$OUT/13b-wrk.txt")"
fact "13b.non_2xx" "$(awk '/Non-2xx/ {print $NF}' "$OUT/13b-wrk.txt" | grep . || echo 0)"
gauges 13b
verdict 13b "$SVC_PID"
stop "$SVC_PID"
stop "$SIM_PID"

if [ "$DISTINCT_RUN_TIME" != 0 ]; then
    log "-- 13c. distinct questions at full speed: wrk -c$CONNECTIONS for ${DISTINCT_RUN_TIME} s, simulator 20 ms"
    start_sim --latency-ms 20
    start_memory_service LEARNING_CHAT_UPSTREAM__MAX_CONCURRENCY=256
    cat >"$OUT/distinct.lua" <<'LUA'
-- A new question with every request (a per-thread counter and a random thread tag).
local counter = 0
local tag = tostring(math.random(1, 1e9))
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
    counter = counter + 1
    local message = "Distinct question " .. tag .. "-" .. counter .. ": explain it with an example, please."
    return wrk.format(nil, nil, nil, '{"message": "' .. message .. '"}')
end
LUA
    log "+ wrk -t$WRK_THREADS -c$CONNECTIONS -d${DISTINCT_RUN_TIME}s -s distinct.lua $SVC_URL/api/v1/agents/math"
    wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DISTINCT_RUN_TIME}s" --timeout 10s -s "$OUT/distinct.lua" \
        "$SVC_URL/api/v1/agents/math" | tee "$OUT/13c-wrk.txt"
    fact "13c.requests" "$(awk '/requests in/ {print $1}' "$OUT/13c-wrk.txt")"
    fact "13c.requests_per_s" "$(awk '/^Requests\/sec:/ {print $2}' "$OUT/13c-wrk.txt")"
    fact "13c.non_2xx" "$(awk '/Non-2xx/ {print $NF}' "$OUT/13c-wrk.txt" | grep . || echo 0)"
    gauges 13c
    verdict 13c "$SVC_PID"
    stop "$SVC_PID"
fi
