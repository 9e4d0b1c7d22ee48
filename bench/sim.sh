#!/usr/bin/env bash
# Benchmarks the gemini-sim binary on this machine, loopback only:
#   (a) zero-latency generateContent throughput (wrk, 64 connections, 15 s);
#   (b) 10,000 concurrent requests held at the seed preset (2.8 s each): in-flight peak and the
#       simulator's peak RSS (VmHWM).
# Prints raw figures; bench/RESULTS-sim.md records a run. Takes about 1.5 minutes.
#
# Env: CARGO_TARGET_DIR (where the release build goes), DURATION (s, default 15),
#      CONNECTIONS (default 64), HELD (default 10000), WRK_THREADS (default 1).
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-15}
CONNECTIONS=${CONNECTIONS:-64}
HELD=${HELD:-10000}
WRK_THREADS=${WRK_THREADS:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN="$TARGET_DIR/release/gemini-sim"

if ! command -v wrk >/dev/null; then
    echo "wrk not found: installing it (Debian package)" >&2
    apt-get install -y wrk >/dev/null
fi

# 10,000 sockets on each side need more than the usual 1024 descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "== build"
cargo build --release -p gemini-sim 2>&1 | tail -1

WORK=$(mktemp -d)
SIM_PID=""
cleanup() {
    if [ -n "$SIM_PID" ] && kill -0 "$SIM_PID" 2>/dev/null; then
        kill "$SIM_PID"
        wait "$SIM_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

BODY='{"systemInstruction":{"parts":[{"text":"You are a patient maths tutor for secondary school students."}]},"contents":[{"role":"user","parts":[{"text":"How do I solve a quadratic equation by completing the square?"}]}],"generationConfig":{"temperature":0.7,"maxOutputTokens":1024}}'
printf '%s' "$BODY" >"$WORK/body.json"
cat >"$WORK/generate.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-goog-api-key"] = "bench-key"
wrk.body = '$BODY'
LUA

# Starts the simulator on a free loopback port (port 0, address read back from its log).
start_sim() {
    : >"$WORK/sim.log"
    "$BIN" --bind 127.0.0.1:0 --log-every-s 5 "$@" >"$WORK/sim.log" 2>&1 &
    SIM_PID=$!
    for _ in $(seq 1 100); do
        ADDR=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/sim.log" | grep -o 'addr=127\.0\.0\.1:[0-9]*' | head -1 | cut -d= -f2 || true)
        [ -n "$ADDR" ] && return 0
        sleep 0.1
    done
    echo "simulator did not start:" >&2
    cat "$WORK/sim.log" >&2
    exit 1
}

stop_sim() {
    kill "$SIM_PID"
    wait "$SIM_PID" 2>/dev/null || true
    SIM_PID=""
}

peak_rss() {
    grep -E 'VmHWM|VmRSS' "/proc/$SIM_PID/status" | tr -s ' \t' ' ' | paste -sd ' '
}

stats_field() {
    curl -s "http://$ADDR/stats" | python3 -c "import json,sys; s=json.load(sys.stdin); print(' '.join(f'{k}={s[k]}' for k in sys.argv[1:]))" "$@"
}

echo
echo "== machine"
echo "nproc: $(nproc)"
grep -m1 'model name' /proc/cpuinfo
echo "kernel: $(uname -r)"
echo "load average before the run: $(cut -d" " -f1-3 /proc/loadavg) (other work on the box skews the figures)"
echo "wrk: $(wrk --version 2>&1 | head -1)"

echo
echo "== (a) zero-latency generateContent throughput"
start_sim
URL="http://$ADDR/v1beta/models/gemini-2.5-flash:generateContent"
curl -s -o /dev/null -w "warm-up status %{http_code}\n" -H 'x-goog-api-key: bench-key' -d @"$WORK/body.json" "$URL"
echo "+ wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s --latency -s generate.lua $URL"
wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$WORK/generate.lua" "$URL"
echo "sim stats: $(stats_field requests ok rate_limited errors in_flight_peak)"
echo "sim memory: $(peak_rss)"
stop_sim

echo
echo "== (b) $HELD concurrent requests held at the seed preset (2.8 s)"
start_sim --preset seed
URL="http://$ADDR/v1beta/models/gemini-2.5-flash:generateContent"
echo "sim memory idle: $(peak_rss)"
# Every connection sends a request, waits 2.8 s for it, and sends the next one, so about
# $HELD requests are in flight at once for the whole run.
echo "+ wrk -t2 -c$HELD -d20s --timeout 15s --latency -s generate.lua $URL"
wrk -t2 -c"$HELD" -d20s --timeout 15s --latency -s "$WORK/generate.lua" "$URL"
echo "sim stats: $(stats_field requests ok rate_limited errors cancelled in_flight_peak)"
echo "sim memory: $(peak_rss)"
stop_sim
