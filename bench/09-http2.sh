#!/usr/bin/env bash
# Benchmark 8: cache hits over HTTP/2 next to HTTP/1.1, h2load for both (same tool, same
# request): one connection with 256 concurrent streams (h2c prior knowledge, then TLS with ALPN
# h2), and 256 HTTP/1.1 connections with one request each in flight. DURATION (default 10) s each
# after a 2 s warm-up. Percentiles come from h2load's per-request log (it prints none itself).
source "$(dirname "$0")/common.sh"
DURATION=${DURATION:-10}
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release -p learning-chat -p gemini-sim 2>&1 | tail -1)
fi
for b in learning-chat gemini-sim; do
    [ -x "$BIN/$b" ] || { log "missing $BIN/$b: build first"; exit 1; }
done
if ! command -v h2load >/dev/null; then
    log "h2load not found: installing Debian's nghttp2-client"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y nghttp2-client >/dev/null \
        || { log "cannot install h2load: apt-get install nghttp2-client"; exit 1; }
fi
printf '{"message": "What is 2+2?"}' >"$OUT/body.json"

measure() { # NAME URL H2LOAD-ARGS...
    local name=$1 url=$2
    shift 2
    local args=(-D "$DURATION" --warm-up-time=2 -d "$OUT/body.json"
        -H 'content-type: application/json' "$@")
    log "+ h2load ${args[*]} $url"
    rm -f "$OUT/$name.log"
    h2load "${args[@]}" --log-file="$OUT/$name.log" "$url" | tee "$OUT/$name.txt"
    fact "$name.requests_per_s" "$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$OUT/$name.txt")"
    fact "$name.non_2xx" "$(awk '/^status codes:/ {gsub(",", "", $5); gsub(",", "", $7); gsub(",", "", $9); print $5 + $7 + $9}' "$OUT/$name.txt")"
    # Log lines: start (µs since epoch), status, duration (µs).
    read -r p50 p99 n < <(python3 - "$OUT/$name.log" <<'PY'
import sys
d = sorted(int(line.split()[2]) for line in open(sys.argv[1]) if line.strip())
q = lambda p: d[min(len(d) - 1, int(len(d) * p))] / 1000
print(f"{q(0.50):.2f}ms {q(0.99):.2f}ms {len(d)}")
PY
)
    fact "$name.p50" "$p50"
    fact "$name.p99" "$p99"
    fact "$name.logged_requests" "$n"
}

log "== 8. cache hits over HTTP/2 and HTTP/1.1"
start_sim --preset seed
start_service
curl -sf -H 'content-type: application/json' -d '{"message": "What is 2+2?"}' \
    "$SVC_URL/api/v1/agents/math" | grep -q '"response"'
measure "08-h2c-c1-m256" "$SVC_URL/api/v1/agents/math" -c 1 -m 256
measure "08-h1-c256" "$SVC_URL/api/v1/agents/math" --h1 -c 256 -m 1
stop "$SVC_PID"

# The same over TLS terminated by the service (a throwaway self-signed certificate).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=localhost -keyout "$OUT/tls.key" -out "$OUT/tls.crt" 2>/dev/null
start_service_tls() {
    SVC_PORT=$(free_port)
    env GEMINI_API_KEY=bench GEMINI_BASE_URL="$SIM_URL" LEARNING_CHAT_UPSTREAM__RPM=0 \
        LEARNING_CHAT_METRICS__BIND="127.0.0.1:$(free_port)" \
        LEARNING_CHAT_SERVER__TLS_CERT="$OUT/tls.crt" LEARNING_CHAT_SERVER__TLS_KEY="$OUT/tls.key" \
        "$SVC_BIN" serve --bind "127.0.0.1:$SVC_PORT" >"$OUT/service-tls-$SVC_PORT.log" 2>&1 &
    SVC_PID=$!
    PIDS+=("$SVC_PID")
    SVC_URL="https://127.0.0.1:$SVC_PORT"
    local _
    for _ in $(seq 1 300); do
        curl -skf -o /dev/null "$SVC_URL/health" && return 0
        sleep 0.1
    done
    log "no answer from $SVC_URL"
    return 1
}
start_service_tls
curl -skf -H 'content-type: application/json' -d '{"message": "What is 2+2?"}' \
    "$SVC_URL/api/v1/agents/math" | grep -q '"response"'
measure "08-h2-tls-c1-m256" "$SVC_URL/api/v1/agents/math" -c 1 -m 256
measure "08-h1-tls-c256" "$SVC_URL/api/v1/agents/math" --h1 -c 256 -m 1
fact "08.upstream_calls" "$(curl -sf "$SIM_URL/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')"
