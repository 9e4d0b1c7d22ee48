#!/usr/bin/env bash
# Benchmark 7: conversations (issue 10). 1000 learners, each holding conversations of 3-8
# questions (Zipf first questions over the shipped bank, all five tutors, generic follow-ups sent
# with the conversation_id), 5-15 s think time, for RUN_TIME (default 60) s after the ramp-up;
# the simulator at the seed's 2.8 s; conversations in a private redis-server on a free port.
# Records p99, failures, model calls per answer, Redis memory per conversation, server RSS.
source "$(dirname "$0")/common.sh"
build_release
USERS=${USERS:-1000}
RUN_TIME=${RUN_TIME:-60}
# upstream.max_concurrency of the service (default: the service's own, 100).
MAX_CONCURRENCY=${MAX_CONCURRENCY:-100}

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$OUT" >"$OUT/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
for _ in $(seq 1 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
done
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
mem() { rcli info memory | awk -F: '/^used_memory:/ { print $2 }' | tr -d '\r'; }

log "== 7. conversations: $USERS users, 3-8 questions each, 5-15 s think time, simulator 2.8 s"
start_sim --preset seed
start_service REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    LEARNING_CHAT_UPSTREAM__MAX_CONCURRENCY="$MAX_CONCURRENCY"
for _ in $(seq 1 100); do
    curl -sf "$SVC_URL/ready" | grep -q '"redis":"up"' && break
    sleep 0.1
done
before=$(mem)
name=07-conversations-c$MAX_CONCURRENCY
log "+ learning-chat-loadtest --host $SVC_URL --users $USERS --increase-rate 50 --run-time ${RUN_TIME}s --questions zipf --agents all --conversation 3-8"
loadtest --host "$SVC_URL" --users "$USERS" --increase-rate 50 --run-time "${RUN_TIME}s" \
    --sim-url "$SIM_URL" --questions zipf --agents all --conversation 3-8 \
    --summary-json "$OUT/$name.json" --report-file "$OUT/$name-goose.html" \
    >"$OUT/$name.txt" 2>"$OUT/$name.progress"
sed -n '/=== learning-chat load test report/,$p' "$OUT/$name.txt"
after=$(mem)
# Exact per-key figures: the answer cache shares this Redis, so used_memory alone overstates.
conversations=0
turns=0
bytes=0
for key in $(rcli --scan --pattern 'learning-chat:conversation:*'); do
    conversations=$((conversations + 1))
    turns=$((turns + $(rcli llen "$key") - 1))
    bytes=$((bytes + $(rcli memory usage "$key" samples 0)))
done
index_bytes=$(rcli memory usage learning-chat:conversations:active samples 0)
f="$OUT/$name.json"
fact "$name.requests" "$(json "$f" requests)"
fact "$name.failures" "$(json "$f" failures)"
fact "$name.p50_ms" "$(json "$f" latency_ms.p50)"
fact "$name.p99_ms" "$(json "$f" latency_ms.p99)"
fact "$name.cache_hit_ratio" "$(json "$f" cache_hit_ratio)"
fact "$name.conversations_started" "$(json "$f" extra.conversations_started)"
fact "$name.follow_ups" "$(json "$f" extra.follow_ups)"
fact "$name.follow_ups_ok" "$(json "$f" extra.follow_ups_ok)"
fact "$name.upstream_calls" "$(json "$f" upstream.requests)"
fact "$name.model_calls_per_answer" "$(json "$f" extra.model_calls_per_answer)"
fact "$name.redis_conversations" "$conversations"
fact "$name.redis_turns" "$turns"
fact "$name.redis_used_memory_delta_bytes" "$((after - before))"
fact "$name.redis_conversation_bytes" "$bytes"
fact "$name.redis_index_bytes" "${index_bytes:-0}"
fact "$name.redis_bytes_per_conversation" "$(( (bytes + ${index_bytes:-0}) / (conversations > 0 ? conversations : 1) ))"
fact "$name.service_vmhwm_kib" "$(kib VmHWM "$SVC_PID")"
stop "$SVC_PID"
