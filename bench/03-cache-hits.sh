#!/usr/bin/env bash
# Benchmark 3: cache hits, closed loop (wrk) at 64 and 256 connections, DURATION (default 10) s
# each after a 2 s warm-up, beside the bare axum hello-world (crates/hello-ceiling) measured in the same
# run with the same requests: the machine's ceiling. Target: at least half of the ceiling.
source "$(dirname "$0")/common.sh"
build_release
DURATION=${DURATION:-10}
WRK_THREADS=${WRK_THREADS:-2}
need_wrk   # and writes $OUT/post.lua

measure() { # NAME URL CONNECTIONS
    local name=$1 url=$2 c=$3
    wrk -t"$WRK_THREADS" -c"$c" -d2s -s "$OUT/post.lua" "$url" >/dev/null
    log "+ wrk -t$WRK_THREADS -c$c -d${DURATION}s --latency -s post.lua $url"
    wrk -t"$WRK_THREADS" -c"$c" -d"${DURATION}s" --latency -s "$OUT/post.lua" "$url" | tee "$OUT/$name.txt"
    fact "$name.requests_per_s" "$(awk '/^Requests\/sec:/ {print $2}' "$OUT/$name.txt")"
    fact "$name.p50" "$(awk '$1 == "50%" {print $2}' "$OUT/$name.txt")"
    fact "$name.p99" "$(awk '$1 == "99%" {print $2}' "$OUT/$name.txt")"
    fact "$name.non_2xx" "$(awk '/Non-2xx/ {print $NF}' "$OUT/$name.txt" | grep . || echo 0)"
}

log "== 3. cache hits vs the hello-world ceiling"
start_sim --preset seed
start_service
# One miss fills the cache (2.8 s); every request after it is a hit.
curl -sf -H 'content-type: application/json' -d '{"message": "What is 2+2?"}' \
    "$SVC_URL/api/v1/agents/math" | grep -q '"response"'
start_hello
for c in 64 256; do
    measure "03-service-c$c" "$SVC_URL/api/v1/agents/math" "$c"
    measure "03-hello-c$c" "$HELLO_URL/api/v1/agents/math" "$c"
done
fact "03.upstream_calls" "$(curl -sf "$SIM_URL/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')"
