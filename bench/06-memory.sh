#!/usr/bin/env bash
# Benchmark 6: memory. Peak RSS (VmHWM from /proc/PID/status) of the service, a fresh process for
# each case, with CONNECTIONS (default 1000) concurrent connections open:
#   6a. wrk keeping 1000 keep-alive connections busy with cache hits for 10 s (default config);
#   6b. 1000 identical new questions at once: 1000 connections waiting on one model call
#       (default config, simulator 2.8 s);
#   6c. worst case: 1000 distinct questions at once with max_concurrency raised to 1000, so 1000
#       client connections AND 1000 model calls (1000 upstream connections) are open together.
# The hello-world under 6a's load gives the framework's own per-connection baseline.
# (Benchmark 1 records the service's peak RSS under the seed's 1000 mostly idle users.)
# Target: under 64 MB.
source "$(dirname "$0")/common.sh"
build_release
CONNECTIONS=${CONNECTIONS:-1000}
need_wrk   # and writes $OUT/post.lua

log "== 6. memory with $CONNECTIONS connections open"
start_sim --preset seed

log "-- 6a. $CONNECTIONS busy keep-alive connections (cache hits)"
start_service
fact "06.idle_vmrss_kib" "$(kib VmRSS "$SVC_PID")"
curl -sf -H 'content-type: application/json' -d '{"message": "What is 2+2?"}' "$SVC_URL/api/v1/agents/math" >/dev/null
log "+ wrk -t2 -c$CONNECTIONS -d10s -s post.lua $SVC_URL/api/v1/agents/math"
wrk -t2 -c"$CONNECTIONS" -d10s -s "$OUT/post.lua" "$SVC_URL/api/v1/agents/math" | tee "$OUT/06a-wrk.txt"
fact "06a.vmhwm_kib" "$(kib VmHWM "$SVC_PID")"
stop "$SVC_PID"

start_hello
wrk -t2 -c"$CONNECTIONS" -d10s -s "$OUT/post.lua" "$HELLO_URL/api/v1/agents/math" >"$OUT/06a-hello-wrk.txt"
fact "06a.hello_vmhwm_kib" "$(kib VmHWM "$HELLO_PID")"
stop "$HELLO_PID"

log "-- 6b. $CONNECTIONS connections waiting on one model call"
start_service
log "+ learning-chat-loadtest burst --url $SVC_URL --count $CONNECTIONS --mode identical --sim-url $SIM_URL"
loadtest burst --url "$SVC_URL" --count "$CONNECTIONS" --mode identical --sim-url "$SIM_URL" \
    --summary-json "$OUT/06b-burst.json" | tee "$OUT/06b-burst.txt"
fact "06b.ok" "$(json "$OUT/06b-burst.json" ok)"
fact "06b.vmhwm_kib" "$(kib VmHWM "$SVC_PID")"
stop "$SVC_PID"

log "-- 6c. $CONNECTIONS connections, each with its own model call in flight"
start_service LEARNING_CHAT_UPSTREAM__MAX_CONCURRENCY="$CONNECTIONS"
log "+ learning-chat-loadtest burst --url $SVC_URL --count $CONNECTIONS --mode unique --sim-url $SIM_URL"
loadtest burst --url "$SVC_URL" --count "$CONNECTIONS" --mode unique --sim-url "$SIM_URL" \
    --summary-json "$OUT/06c-burst.json" | tee "$OUT/06c-burst.txt"
fact "06c.ok" "$(json "$OUT/06c-burst.json" ok)"
fact "06c.upstream_in_flight_peak" "$(json "$OUT/06c-burst.json" upstream.in_flight_peak)"
fact "06c.vmhwm_kib" "$(kib VmHWM "$SVC_PID")"
