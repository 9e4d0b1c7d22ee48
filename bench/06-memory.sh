#!/usr/bin/env bash
# Benchmark 6: memory. Peak RSS (VmHWM) of the service with 1000 concurrent connections open:
# (a) CONNECTIONS (default 1000) distinct questions at once, simulator at 2.8 s and
#     max_concurrency raised to match, so 1000 client connections and 1000 model calls are open
#     together; (b) then wrk holding 1000 keep-alive connections of cache hits for 10 s.
# Target: under 64 MB.
source "$(dirname "$0")/common.sh"
build_release
CONNECTIONS=${CONNECTIONS:-1000}

log "== 6. memory with $CONNECTIONS connections open"
start_sim --preset seed
start_service LEARNING_CHAT_UPSTREAM__MAX_CONCURRENCY="$CONNECTIONS"
fact "06.idle_vmrss_kib" "$(kib VmRSS "$SVC_PID")"
log "+ learning-chat-loadtest burst --url $SVC_URL --count $CONNECTIONS --mode unique --sim-url $SIM_URL"
loadtest burst --url "$SVC_URL" --count "$CONNECTIONS" --mode unique --sim-url "$SIM_URL" \
    --summary-json "$OUT/06-burst.json" | tee "$OUT/06-burst.txt"
fact "06.burst_ok" "$(json "$OUT/06-burst.json" ok)"
fact "06.burst_upstream_in_flight_peak" "$(json "$OUT/06-burst.json" upstream.in_flight_peak)"
fact "06.after_burst_vmhwm_kib" "$(kib VmHWM "$SVC_PID")"
cat >"$OUT/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"message": "What is 2+2?"}'
LUA
curl -sf -H 'content-type: application/json' -d '{"message": "What is 2+2?"}' "$SVC_URL/api/v1/agents/math" >/dev/null
log "+ wrk -t2 -c$CONNECTIONS -d10s -s post.lua $SVC_URL/api/v1/agents/math"
wrk -t2 -c"$CONNECTIONS" -d10s -s "$OUT/post.lua" "$SVC_URL/api/v1/agents/math" | tee "$OUT/06-wrk.txt"
fact "06.vmhwm_kib" "$(kib VmHWM "$SVC_PID")"
fact "06.vmrss_after_kib" "$(kib VmRSS "$SVC_PID")"
