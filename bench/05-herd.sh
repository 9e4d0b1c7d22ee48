#!/usr/bin/env bash
# Benchmark 5: thundering herd. COUNT (default 500) identical questions, new to the service,
# released at once; simulator at 2.8 s. Target: exactly 1 upstream call.
source "$(dirname "$0")/common.sh"
build_release
COUNT=${COUNT:-500}

log "== 5. thundering herd: $COUNT identical new questions at once"
start_sim --preset seed
start_service
log "+ learning-chat-loadtest burst --url $SVC_URL --count $COUNT --mode identical --sim-url $SIM_URL"
loadtest burst --url "$SVC_URL" --count "$COUNT" --mode identical --sim-url "$SIM_URL" \
    --summary-json "$OUT/05-herd.json" | tee "$OUT/05-herd.txt"
f="$OUT/05-herd.json"
fact "05.requests" "$(json "$f" requests)"
fact "05.ok" "$(json "$f" ok)"
fact "05.upstream_calls" "$(json "$f" upstream.requests)"
fact "05.time_to_answer_all_ms" "$(json "$f" extra.time_to_answer_all_ms)"
