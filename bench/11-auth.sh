#!/usr/bin/env bash
# Benchmark 11: what API keys cost a cache hit. Closed loop (wrk, 256 connections, DURATION s
# each after a 2 s warm-up) against the same service with `auth.mode = "off"` and with
# `required` (one key from the file store, no per-key limits; every request is hashed with the
# pepper and looked up through the 1 s key cache), in alternating rounds so both see the same
# machine. Reports requests/s and p50/p99 of each.
source "$(dirname "$0")/common.sh"
build_release
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
WRK_THREADS=${WRK_THREADS:-2}
need_wrk   # and writes $OUT/post.lua

measure() { # NAME SCRIPT
    local name=$1 script=$2
    wrk -t"$WRK_THREADS" -c256 -d2s -s "$script" "$SVC_URL/api/v1/agents/math" >/dev/null
    log "+ wrk -t$WRK_THREADS -c256 -d${DURATION}s --latency -s $(basename "$script") (auth $name)"
    wrk -t"$WRK_THREADS" -c256 -d"${DURATION}s" --latency -s "$script" "$SVC_URL/api/v1/agents/math" \
        | tee "$OUT/$name.txt"
    fact "$name.requests_per_s" "$(awk '/^Requests\/sec:/ {print $2}' "$OUT/$name.txt")"
    fact "$name.p50" "$(awk '$1 == "50%" {print $2}' "$OUT/$name.txt")"
    fact "$name.p99" "$(awk '$1 == "99%" {print $2}' "$OUT/$name.txt")"
    fact "$name.non_2xx" "$(awk '/Non-2xx/ {print $NF}' "$OUT/$name.txt" | grep . || echo 0)"
}

log "== 11. API keys on the cache-hit path"
start_sim --preset seed
# A fresh pepper per run: a fixed one written here would be a shipped secret, which the service
# refuses (config/placeholders.rs).
PEPPER=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
AUTH_ENV=(LEARNING_CHAT_AUTH__MODE=required
          LEARNING_CHAT_AUTH__PEPPER="$PEPPER"
          LEARNING_CHAT_DATABASE__URL="sqlite://$OUT/records.db")
secret=$(env "${AUTH_ENV[@]}" "$BIN/learning-chat" keys create --name bench \
    | awk '/^secret:/ {print $2}')
[ -n "$secret" ] || { log "keys create printed no secret"; exit 1; }
sed "s|^wrk.body|wrk.headers[\"Authorization\"] = \"Bearer $secret\"\nwrk.body|" \
    "$OUT/post.lua" >"$OUT/post-key.lua"

for round in $(seq 1 "$ROUNDS"); do
    start_service
    curl -sf -H 'content-type: application/json' -d '{"message": "What is 2+2?"}' \
        "$SVC_URL/api/v1/agents/math" | grep -q '"response"'
    measure "11-off-r$round" "$OUT/post.lua"
    stop "$SVC_PID"
    start_service "${AUTH_ENV[@]}"
    curl -sf -H 'content-type: application/json' -H "Authorization: Bearer $secret" \
        -d '{"message": "What is 2+2?"}' "$SVC_URL/api/v1/agents/math" | grep -q '"response"'
    measure "11-key-r$round" "$OUT/post-key.lua"
    stop "$SVC_PID"
done
