#!/usr/bin/env bash
# Benchmark 3: cache hits (the cheapest request, 98.7% of the seed profile's) in every production
# profile, each measured beside the bare axum hello-world (crates/hello-ceiling) in the same
# round with the same requests: the machine's ceiling, so the ratio holds on a busy machine.
#
# Profiles (PROFILES, default all): defaults (memory stores, auth off); redis (REDIS_URL set);
# keys (Redis + auth.mode = "required", one key without limits: the shipped compose / Kubernetes
# profile); limits (Redis + a key with rpm and tokens/day limits). TRACING=1 (default) also runs
# each with OTLP export at 1% sampling to a local sink (bench/otlp_sink.py).
#
# Each round (ROUNDS, default 3) runs every profile once: wrk -t1 -c64 (CONNECTIONS), DURATION
# (default 10) s after a 2 s warm-up, POST "What is 2+2?" with Accept-Encoding: gzip, then the
# hello-world the same way. Facts: req/s, p50, p99, non-2xx of both, and their ratio; the table
# (median ratio of the rounds) is printed at the end with the load average.
# WORKERS=N runs both servers with N runtime worker threads (default: one per core each). On a
# 2-core machine that wrk shares, WORKERS=1 gives each server one core of its own and wrk the
# other: no server thread is preempted by wrk, so the ratio is the two servers' CPU per request
# and the p99s are free of run-queue waits (bench/RESULTS.md, run 21).
# Targets (issue 24): defaults >= 0.85, redis >= 0.80, keys >= 0.75, limits >= 0.60, tracing at
# 1% within 5% of the same profile without; p99 within 2x the hello-world's, 0 non-2xx.
source "$(dirname "$0")/common.sh"
build_release
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
PROFILES=${PROFILES:-defaults redis keys limits}
TRACING=${TRACING:-1}
WORKERS=${WORKERS:-}
WORKER_ENV=()
if [ -n "$WORKERS" ]; then
    WORKER_ENV=(LEARNING_CHAT_SERVER__WORKER_THREADS="$WORKERS")
fi
need_wrk   # and writes $OUT/post.lua
sed 's|^wrk.body|wrk.headers["Accept-Encoding"] = "gzip"\nwrk.body|' "$OUT/post.lua" >"$OUT/post-gzip.lua"
log "== 3. cache hits by profile vs the hello-world ceiling (load average: $(cut -d' ' -f1-3 /proc/loadavg)${WORKERS:+, $WORKERS worker thread(s) each})"
fact "03.loadavg_start" "$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' '/')"
fact "03.workers" "${WORKERS:-one per core}"

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    >"$OUT/redis.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
REDIS_ENV=(REDIS_URL="redis://127.0.0.1:$REDIS_PORT")

start_otlp_sink

# Keys in a records database of this run, with a fresh pepper (a fixed one written here would
# be a shipped secret, which the service refuses).
PEPPER=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
AUTH_ENV=(LEARNING_CHAT_AUTH__MODE=required
          LEARNING_CHAT_AUTH__PEPPER="$PEPPER"
          LEARNING_CHAT_DATABASE__URL="sqlite://$OUT/records.db")
new_key() { # ARGS... of `keys create`; prints the secret
    env "${AUTH_ENV[@]}" "$BIN/learning-chat" keys create --name bench "$@" \
        | awk '/^secret:/ {print $2}'
}
with_key() { # SECRET OUT.lua
    sed "s|^wrk.body|wrk.headers[\"Authorization\"] = \"Bearer $1\"\nwrk.body|" \
        "$OUT/post-gzip.lua" >"$2"
}
with_key "$(new_key)" "$OUT/post-key.lua"
with_key "$(new_key --rpm 10000000 --tokens-per-day 1000000000)" "$OUT/post-limits.lua"

start_sim --preset seed
if [ -n "$WORKERS" ]; then
    # tokio's own variable: hello-ceiling has no setting of its own.
    TOKIO_WORKER_THREADS=$WORKERS start_hello
else
    start_hello
fi

wrk_run() { # NAME URL SCRIPT
    local name=$1 url=$2 script=$3
    wrk -t1 -c"$CONNECTIONS" -d2s -s "$script" "$url" >/dev/null
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$script" "$url" >"$OUT/$name.txt"
    fact "$name.requests_per_s" "$(awk '/^Requests\/sec:/ {print $2}' "$OUT/$name.txt")"
    fact "$name.p50" "$(awk '$1 == "50%" {print $2}' "$OUT/$name.txt")"
    fact "$name.p99" "$(awk '$1 == "99%" {print $2}' "$OUT/$name.txt")"
    fact "$name.non_2xx" "$(awk '/Non-2xx/ {print $NF}' "$OUT/$name.txt" | grep . || echo 0)"
}

measure() { # ROUND PROFILE TRACED
    local round=$1 profile=$2 traced=$3 script="$OUT/post-gzip.lua" env=("${WORKER_ENV[@]}")
    case $profile in
        defaults) ;;
        redis) env+=("${REDIS_ENV[@]}") ;;
        keys) env+=("${REDIS_ENV[@]}" "${AUTH_ENV[@]}"); script="$OUT/post-key.lua" ;;
        limits) env+=("${REDIS_ENV[@]}" "${AUTH_ENV[@]}"); script="$OUT/post-limits.lua" ;;
        *) log "unknown profile $profile"; exit 2 ;;
    esac
    local name="03-$profile"
    if [ "$traced" = 1 ]; then
        env+=("${TRACE_ENV[@]}")
        name="$name-traced"
    fi
    redis-cli -p "$REDIS_PORT" flushall >/dev/null
    start_service "${env[@]}"
    # One miss fills the cache; every request after it is a hit.
    local auth
    auth=$(awk -F'"' '/Authorization/ {print $4}' "$script")
    curl -sf -H 'content-type: application/json' ${auth:+-H "Authorization: $auth"} \
        -d '{"message": "What is 2+2?"}' "$SVC_URL/api/v1/agents/math" | grep -q '"response"'
    log "+ round $round, $name: wrk -t1 -c$CONNECTIONS -d${DURATION}s, then the hello-world"
    wrk_run "$name-r$round" "$SVC_URL/api/v1/agents/math" "$script"
    stop "$SVC_PID"
    wrk_run "$name-hello-r$round" "$HELLO_URL/api/v1/agents/math" "$script"
    local ratio
    ratio=$(python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.3f}')" \
        "$(awk '/^Requests\/sec:/ {print $2}' "$OUT/$name-r$round.txt")" \
        "$(awk '/^Requests\/sec:/ {print $2}' "$OUT/$name-hello-r$round.txt")")
    fact "$name-r$round.ratio" "$ratio"
}

for round in $(seq 1 "$ROUNDS"); do
    for profile in $PROFILES; do
        measure "$round" "$profile" 0
        [ "$TRACING" = 1 ] && measure "$round" "$profile" 1
    done
done
fact "03.loadavg_end" "$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' '/')"
fact "03.upstream_calls" "$(curl -sf "$SIM_URL/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')"

python3 - "$OUT/facts.tsv" <<'PY' | tee "$OUT/03-table.md"
import collections, re, statistics, sys
facts = dict(line.rstrip("\n").split("\t", 1) for line in open(sys.argv[1]) if "\t" in line)
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)$", v or "")
    return float(m[1]) * {"us": 0.001, "ms": 1, "s": 1000}[m[2]] if m else float("nan")
rows = collections.defaultdict(list)
for k, v in facts.items():
    m = re.match(r"03-(.+?)-r(\d+)\.ratio$", k)
    if m:
        rows[m[1]].append(int(m[2]))
print(f"load average {facts.get('03.loadavg_start')} -> {facts.get('03.loadavg_end')}, "
      f"worker threads: {facts.get('03.workers', 'one per core')}")
print("| profile | ratio (median) | ratios | req/s | p99 / hello p99 | non-2xx |")
print("| --- | --- | --- | --- | --- | --- |")
for name in rows:
    rs = sorted(rows[name])
    ratios = [float(facts[f"03-{name}-r{r}.ratio"]) for r in rs]
    rps = [float(facts[f"03-{name}-r{r}.requests_per_s"]) for r in rs]
    p99 = [ms(facts[f"03-{name}-r{r}.p99"]) / ms(facts[f"03-{name}-hello-r{r}.p99"]) for r in rs]
    bad = sum(int(facts[f"03-{name}-r{r}.non_2xx"]) for r in rs)
    print(f"| {name} | {statistics.median(ratios):.2f} | {' '.join(f'{x:.2f}' for x in ratios)} "
          f"| {min(rps)/1000:.1f}k-{max(rps)/1000:.1f}k | {max(p99):.1f}x | {bad} |")
PY
