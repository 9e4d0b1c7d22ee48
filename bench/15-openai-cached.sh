#!/usr/bin/env bash
# Benchmark 15: cached answers through the OpenAI-compatible API (POST /v1/chat/completions)
# against the native endpoint (POST /api/v1/agents/math), same server, same question, same run.
#
# The OpenAI endpoint is a translation over the native one's engine call: this shows what the
# translation (a larger body to read, OpenAI's answer shape, the key admitted in the handler)
# costs the cheapest request. Profiles (PROFILES, default both): defaults (memory stores, auth
# off) and keys (Redis + auth.mode = "required", one key without limits: the shipped profile).
#
# Each round (ROUNDS, default 3) starts one server per profile, fills the cache with one native
# question, then runs wrk -t1 -c64 (CONNECTIONS) for DURATION (default 10) s after a 2 s warm-up
# against each endpoint, in alternating order, with Accept-Encoding: gzip. Facts: req/s, p50,
# p99, non-2xx of both and their ratio (OpenAI / native); the table (median of the rounds) is
# printed at the end with the load average. Target (issue 25): ratio >= 0.9, 0 non-2xx, and no
# model call beyond the one that filled the cache.
source "$(dirname "$0")/common.sh"
build_release
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
PROFILES=${PROFILES:-defaults keys}
need_wrk   # and writes $OUT/post.lua (the native request)
log "== 15. cached answers: OpenAI-compatible vs native (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
fact "15.loadavg_start" "$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' '/')"

sed 's|^wrk.body|wrk.headers["Accept-Encoding"] = "gzip"\nwrk.body|' "$OUT/post.lua" >"$OUT/native.lua"
cat >"$OUT/openai.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept-Encoding"] = "gzip"
wrk.body = '{"model": "math", "messages": [{"role": "user", "content": "What is 2+2?"}]}'
LUA

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    >"$OUT/redis.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
PEPPER=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
KEYS_ENV=(REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
          LEARNING_CHAT_AUTH__MODE=required
          LEARNING_CHAT_AUTH__PEPPER="$PEPPER"
          LEARNING_CHAT_DATABASE__URL="sqlite://$OUT/records.db")
SECRET=$(env "${KEYS_ENV[@]}" "$BIN/learning-chat" keys create --name bench | awk '/^secret:/ {print $2}')
for script in native openai; do
    sed "s|^wrk.body|wrk.headers[\"Authorization\"] = \"Bearer $SECRET\"\nwrk.body|" \
        "$OUT/$script.lua" >"$OUT/$script-key.lua"
done

start_sim --preset seed

wrk_run() { # NAME URL SCRIPT
    local name=$1 url=$2 script=$3
    wrk -t1 -c"$CONNECTIONS" -d2s -s "$script" "$url" >/dev/null
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$script" "$url" >"$OUT/$name.txt"
    fact "$name.requests_per_s" "$(awk '/^Requests\/sec:/ {print $2}' "$OUT/$name.txt")"
    fact "$name.p50" "$(awk '$1 == "50%" {print $2}' "$OUT/$name.txt")"
    fact "$name.p99" "$(awk '$1 == "99%" {print $2}' "$OUT/$name.txt")"
    fact "$name.non_2xx" "$(awk '/Non-2xx/ {print $NF}' "$OUT/$name.txt" | grep . || echo 0)"
}

measure() { # ROUND PROFILE
    local round=$1 profile=$2 env=() suffix="" auth=()
    if [ "$profile" = keys ]; then
        env=("${KEYS_ENV[@]}"); suffix="-key"; auth=(-H "Authorization: Bearer $SECRET")
        redis-cli -p "$REDIS_PORT" flushall >/dev/null
    fi
    start_service "${env[@]}"
    # One miss fills the cache; every request after it, through either endpoint, is a hit.
    curl -sf -H 'content-type: application/json' "${auth[@]}" \
        -d '{"message": "What is 2+2?"}' "$SVC_URL/api/v1/agents/math" | grep -q '"response"'
    curl -sf -H 'content-type: application/json' "${auth[@]}" \
        -d '{"model": "math", "messages": [{"role": "user", "content": "What is 2+2?"}]}' \
        "$SVC_URL/v1/chat/completions" | grep -q '"cached":true'
    local order="native openai"
    [ $((round % 2)) = 0 ] && order="openai native"
    log "+ round $round, $profile: wrk -t1 -c$CONNECTIONS -d${DURATION}s, $order"
    for endpoint in $order; do
        local path=/api/v1/agents/math
        [ "$endpoint" = openai ] && path=/v1/chat/completions
        wrk_run "15-$profile-$endpoint-r$round" "$SVC_URL$path" "$OUT/$endpoint$suffix.lua"
    done
    stop "$SVC_PID"
    local ratio
    ratio=$(python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.3f}')" \
        "$(awk '/^Requests\/sec:/ {print $2}' "$OUT/15-$profile-openai-r$round.txt")" \
        "$(awk '/^Requests\/sec:/ {print $2}' "$OUT/15-$profile-native-r$round.txt")")
    fact "15-$profile-r$round.ratio" "$ratio"
}

for round in $(seq 1 "$ROUNDS"); do
    for profile in $PROFILES; do
        measure "$round" "$profile"
    done
done
fact "15.loadavg_end" "$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' '/')"
fact "15.upstream_calls" "$(curl -sf "$SIM_URL/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')"

python3 - "$OUT/facts.tsv" <<'PY' | tee "$OUT/15-table.md"
import collections, re, statistics, sys
facts = dict(line.rstrip("\n").split("\t", 1) for line in open(sys.argv[1]) if "\t" in line)
rows = collections.defaultdict(list)
for k in facts:
    m = re.match(r"15-(.+?)-r(\d+)\.ratio$", k)
    if m:
        rows[m[1]].append(int(m[2]))
print(f"load average {facts.get('15.loadavg_start')} -> {facts.get('15.loadavg_end')}; "
      f"model calls {facts.get('15.upstream_calls')}")
print("| profile | OpenAI / native (median) | ratios | native req/s | OpenAI req/s | p99 native / OpenAI | non-2xx |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for name, rs in rows.items():
    rs.sort()
    ratios = [float(facts[f"15-{name}-r{r}.ratio"]) for r in rs]
    rps = {e: [float(facts[f"15-{name}-{e}-r{r}.requests_per_s"]) for r in rs] for e in ("native", "openai")}
    p99 = {e: facts[f"15-{name}-{e}-r{rs[-1]}.p99"] for e in ("native", "openai")}
    bad = sum(int(facts[f"15-{name}-{e}-r{r}.non_2xx"]) for r in rs for e in ("native", "openai"))
    fmt = lambda v: f"{min(v)/1000:.1f}k-{max(v)/1000:.1f}k"
    print(f"| {name} | {statistics.median(ratios):.2f} | {' '.join(f'{x:.2f}' for x in ratios)} "
          f"| {fmt(rps['native'])} | {fmt(rps['openai'])} | {p99['native']} / {p99['openai']} | {bad} |")
PY
