# Shared helpers of the bench/*.sh scripts (sourced, not run). Everything listens on 127.0.0.1
# only, on free ports; every process started here is stopped on exit.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/release"
# The server under test; bench/ab.sh points it at another build to compare two commits.
SVC_BIN="${SVC_BIN:-$BIN/learning-chat}"
# Where results go: bench/out/<run>/ (git-ignored); run-all.sh sets one directory for all.
OUT="${BENCH_OUT:-$ROOT/bench/out/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"

# 1000+ sockets per process on each side of every hop.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] || continue
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    PIDS=()
}
trap cleanup EXIT

log() { printf '%s\n' "$*" >&2; }

# need_wrk: wrk drives benchmarks 3 and 6; installs the Debian package when it is missing, and
# writes $OUT/post.lua, the request they send: the seed's question to the math tutor.
need_wrk() {
    cat >"$OUT/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"message": "What is 2+2?"}'
LUA
    command -v wrk >/dev/null && return 0
    log "wrk not found: installing the Debian package"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null 2>&1 \
        || { $sudo apt-get update >/dev/null && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null; } \
        || { log "cannot install wrk: apt-get install wrk"; exit 1; }
}

# Builds the release binaries unless BENCH_SKIP_BUILD=1 (run-all.sh builds once).
build_release() {
    if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
        log "== cargo build --release --workspace"
        (cd "$ROOT" && cargo build --release --workspace 2>&1 | tail -1)
    fi
    for b in learning-chat gemini-sim learning-chat-loadtest hello-ceiling; do
        [ -x "$BIN/$b" ] || { log "missing $BIN/$b: build first"; exit 1; }
    done
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_http URL: up to 30 s for a 2xx.
wait_http() {
    local _
    for _ in $(seq 1 300); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.1
    done
    log "no answer from $1"
    return 1
}

# start_sim ARGS...: gemini-sim on a free port; sets SIM_PORT, SIM_URL, SIM_PID.
start_sim() {
    SIM_PORT=$(free_port)
    "$BIN/gemini-sim" --bind "127.0.0.1:$SIM_PORT" --log-every-s 3600 "$@" >"$OUT/sim-$SIM_PORT.log" 2>&1 &
    SIM_PID=$!
    PIDS+=("$SIM_PID")
    SIM_URL="http://127.0.0.1:$SIM_PORT"
    wait_http "$SIM_URL/healthz"
}

# start_service [ENV=VALUE...]: learning-chat on a free port against the simulator; sets
# SVC_PORT, SVC_URL, SVC_PID and SVC_METRICS_URL (its metrics listener, on a free port of its own:
# the default one may be taken by another server here). Extra LEARNING_CHAT_* settings come as
# arguments.
start_service() {
    SVC_PORT=$(free_port)
    local metrics_port
    metrics_port=$(free_port)
    SVC_METRICS_URL="http://127.0.0.1:$metrics_port"
    env GEMINI_API_KEY=bench GEMINI_BASE_URL="$SIM_URL" LEARNING_CHAT_UPSTREAM__RPM=0 \
        LEARNING_CHAT_METRICS__BIND="127.0.0.1:$metrics_port" "$@" \
        "$SVC_BIN" serve --bind "127.0.0.1:$SVC_PORT" >"$OUT/service-$SVC_PORT.log" 2>&1 &
    SVC_PID=$!
    PIDS+=("$SVC_PID")
    SVC_URL="http://127.0.0.1:$SVC_PORT"
    wait_http "$SVC_URL/health"
}

# start_otlp_sink: the local OTLP sink (bench/otlp_sink.py) on a free port; sets SINK_PORT and
# TRACE_ENV, the service's settings to export its traces there at 1% sampling.
start_otlp_sink() {
    SINK_PORT=$(free_port)
    python3 "$BENCH_DIR/otlp_sink.py" "$SINK_PORT" >"$OUT/otlp-sink.log" 2>&1 &
    PIDS+=("$!")
    wait_http "http://127.0.0.1:$SINK_PORT/stats"
    TRACE_ENV=(LEARNING_CHAT_TELEMETRY__OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT"
               LEARNING_CHAT_TELEMETRY__TRACE_SAMPLE_RATIO=0.01)
}

# start_hello: the bare axum hello-world; sets HELLO_URL, HELLO_PID.
start_hello() {
    local port
    port=$(free_port)
    "$BIN/hello-ceiling" "127.0.0.1:$port" >"$OUT/hello.log" 2>&1 &
    HELLO_PID=$!
    PIDS+=("$HELLO_PID")
    HELLO_URL="http://127.0.0.1:$port"
    wait_http "$HELLO_URL/"
}

# start_proxy_nginx PORT: nginx as a plain reverse proxy (one worker, keep-alive upstream
# connections, no access log) in front of 127.0.0.1:PORT; sets NGINX_URL. The reference a
# gateway's overhead is read against (benchmark 4); installs Debian's nginx when missing.
start_proxy_nginx() {
    local nginx_bin port dir user=""
    nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
    if [ ! -x "$nginx_bin" ]; then
        log "nginx not found: installing the Debian package"
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx >/dev/null 2>&1 \
            || { log "cannot install nginx: apt-get install nginx"; exit 1; }
        nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
    fi
    port=$(free_port)
    dir="$OUT/nginx-proxy"
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && user="user root;"
    cat >"$dir/nginx.conf" <<NGINX
$user
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  upstream model { server 127.0.0.1:$1; keepalive 512; }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://model;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
    "$nginx_bin" -p "$dir" -c "$dir/nginx.conf" -g "daemon off;" >"$dir/stdout.log" 2>&1 &
    PIDS+=("$!")
    NGINX_URL="http://127.0.0.1:$port"
    wait_http "$NGINX_URL/healthz"
}

# stop PID: stops one process started here.
stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# kib FIELD PID: VmHWM / VmRSS of a process in KiB.
kib() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$2/status"; }

# fact NAME VALUE: one recorded figure, in $OUT/facts.tsv (summarize.py reads it).
fact() {
    printf '%s\t%s\n' "$1" "$2" >>"$OUT/facts.tsv"
    log "  $1 = $2"
}

# loadtest ARGS...: the load tester, its report on stdout.
loadtest() { "$BIN/learning-chat-loadtest" "$@"; }

# sim_timeline_rate: upstream calls per second over the central 90% of the simulator's arrivals,
# and the most calls in any 60 s window: "RATE MAX60".
sim_timeline_rate() {
    curl -sf "$SIM_URL/stats/timeline" | python3 -c '
import json, sys
t = json.load(sys.stdin)["arrival_ms"]
n = len(t)
if n < 20:
    print("nan", n); sys.exit()
a, b = t[int(n * 0.05)], t[int(n * 0.95) - 1]
rate = (int(n * 0.95) - 1 - int(n * 0.05)) / max((b - a) / 1000, 1e-9)
best, start = 0, 0
for end in range(n):
    while t[end] - t[start] >= 60000:
        start += 1
    best = max(best, end - start + 1)
print(f"{rate:.1f}", best)'
}

# json FILE KEY.PATH: one value of a JSON report.
json() {
    python3 -c '
import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    v = v[k] if not isinstance(v, list) else v[int(k)]
print(round(v, 3) if isinstance(v, float) else v)' "$1" "$2"
}
